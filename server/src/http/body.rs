//! Request bodies: parsed once into a JSON object, then read field by field with errors that
//! name the field and what it must be, never the value that was sent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::duration;
use crate::error::{Error, Result};

pub struct Body(pub Map<String, Value>);

fn wrong(field: &str, expected: &str) -> Error {
    Error::BadRequest(format!("field {field:?} must be {expected}"))
}

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Map::new()));
        }
        // serde_json reports position and kind only, and stops at 128 levels of nesting.
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(Error::bad_request("request body must be a JSON object")),
            Err(e) => Err(Error::BadRequest(format!(
                "failed to parse JSON input: {}",
                crate::error::describe_json_error(&e)
            ))),
        }
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn u64(&self, field: &str) -> Result<Option<u64>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong(field, "a non-negative integer")),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| wrong(field, "a non-negative integer")),
            Some(_) => Err(wrong(field, "a non-negative integer")),
        }
    }

    pub fn bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(_) => Err(wrong(field, "a boolean")),
        }
    }

    pub fn str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong(field, "a string")),
        }
    }

    pub fn duration(&self, field: &str) -> Result<Option<u64>> {
        self.get(field)
            .map(|v| {
                duration::parse_seconds(v)
                    .map_err(|e| Error::BadRequest(format!("field {field:?} {e}")))
            })
            .transpose()
    }

    /// A list of strings, given as a JSON array or a comma-separated string (as Vault accepts).
    pub fn string_list(&self, field: &str) -> Result<Option<Vec<String>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| wrong(field, "a list of strings"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(wrong(field, "a list of strings")),
        }
    }

    pub fn u64_list(&self, field: &str) -> Result<Option<Vec<u64>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Number(n) => n
                        .as_u64()
                        .ok_or_else(|| wrong(field, "a list of non-negative integers")),
                    Value::String(s) => s
                        .parse()
                        .map_err(|_| wrong(field, "a list of non-negative integers")),
                    _ => Err(wrong(field, "a list of non-negative integers")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(Value::String(s)) => s
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse()
                        .map_err(|_| wrong(field, "a list of non-negative integers"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(wrong(field, "a list of non-negative integers")),
        }
    }

    pub fn string_map(&self, field: &str) -> Result<Option<BTreeMap<String, String>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| wrong(field, "a map of strings"))
                })
                .collect::<Result<BTreeMap<_, _>>>()
                .map(Some),
            Some(_) => Err(wrong(field, "a map of strings")),
        }
    }

    pub fn object(&self, field: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(wrong(field, "a JSON object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_never_echo_the_body() {
        let Err(Error::BadRequest(message)) = Body::parse(br#"{"data": {"password": "hunter2"#)
        else {
            panic!()
        };
        assert!(!message.contains("hunter2"));
        assert!(message.starts_with("failed to parse JSON input"));
        let Err(Error::BadRequest(message)) = Body::parse(br#"["hunter2"]"#) else {
            panic!()
        };
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn type_errors_name_the_field_not_the_value() {
        let body =
            Body::parse(br#"{"cas": "hunter2", "versions": [1, "x"], "n": -1, "big": 1e300}"#)
                .unwrap();
        let Err(Error::BadRequest(message)) = body.u64("cas") else {
            panic!()
        };
        assert!(message.contains("\"cas\"") && !message.contains("hunter2"));
        assert!(body.u64_list("versions").is_err());
        assert!(body.u64("n").is_err());
        assert!(body.u64("big").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Body::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert!(Body::parse(b"").unwrap().0.is_empty());
        assert!(Body::parse(b"  \n").unwrap().0.is_empty());
    }
}
