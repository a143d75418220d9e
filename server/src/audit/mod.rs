//! Audit entries (pure): the Vault-shaped JSON line written for every request and every
//! response, with every sensitive string replaced by `hmac-sha256:<hex>` under a device's salt.
//! [`device`] opens and writes the devices and keeps their table (`core/audit`).
//!
//! What is hashed: the client token and its accessor; every string anywhere in the request's
//! body and the response's `data` and `auth` (secret values, JWTs, sealed values, issued
//! tokens); nothing of it reaches a device in the clear. What is not: the path, the operation,
//! policies, the token's metadata and display name, error messages (which never carry values),
//! numbers and booleans — as Vault writes them.

pub mod device;

use hmac::{KeyInit, Mac};
use serde_json::{json, Map, Value};

use crate::secret::Key256;
use crate::tokens::TokenEntry;

/// A device's HMAC key: under the barrier with the device table, so hashes are stable across
/// restarts and replicas, and only the server (or `sys/audit-hash`) can produce them.
pub struct Salt {
    key: Key256,
    /// The HMAC keyed once; each hash clones it.
    keyed: hmac::Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt([REDACTED])")
    }
}

impl Salt {
    pub fn new(key: Key256) -> Salt {
        let keyed = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose())
            .expect("HMAC takes any key length");
        Salt { key, keyed }
    }

    pub fn expose(&self) -> &Key256 {
        &self.key
    }

    /// `hmac-sha256:<hex>` of `text`, as Vault writes hashed values.
    pub fn hash(&self, text: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(text.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// `value` with every string (at any depth) hashed; keys, numbers and booleans kept.
    pub fn hash_strings(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.hash(text)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.hash_strings(v)).collect())
            }
            Value::Object(fields) => Value::Object(self.hash_fields(fields)),
            other => other.clone(),
        }
    }

    fn hash_fields(&self, fields: &Map<String, Value>) -> Map<String, Value> {
        fields
            .iter()
            .map(|(k, v)| (k.clone(), self.hash_strings(v)))
            .collect()
    }
}

/// What is known of a request when its entries are written.
pub struct RequestRecord<'a> {
    pub id: &'a str,
    /// Vault's operation names: `read`, `list`, `update`, `delete`, `patch`.
    pub operation: &'static str,
    /// The logical path, below `/v1/`.
    pub path: &'a str,
    pub mount_type: &'static str,
    pub remote: Option<std::net::SocketAddr>,
    /// The token as presented (hashed in the entry).
    pub client_token: Option<&'a str>,
    /// The authenticated token's entry, when the token was valid.
    pub token: Option<&'a TokenEntry>,
    pub body: Option<&'a Map<String, Value>>,
}

/// What the response was, as sent.
pub struct ResponseRecord<'a> {
    pub status: u16,
    /// The JSON body sent, if any (`data`, `auth`, `errors` are read from it).
    pub body: Option<&'a Value>,
}

fn auth_block(salt: &Salt, token: Option<&TokenEntry>, client_token: Option<&str>) -> Value {
    let Some(entry) = token else {
        // No token (a login, init) or one that did not authenticate: Vault writes the object.
        return json!({
            "client_token": client_token.map(|t| salt.hash(t)).unwrap_or_default(),
            "accessor": "",
            "display_name": "",
            "policies": [],
            "token_policies": [],
            "metadata": {},
            "entity_id": "",
            "token_type": "",
        });
    };
    json!({
        "client_token": client_token.map(|t| salt.hash(t)).unwrap_or_default(),
        "accessor": salt.hash(&entry.accessor),
        "display_name": entry.display_name,
        "policies": entry.policies,
        "token_policies": entry.policies,
        "metadata": entry.meta,
        "entity_id": "",
        "token_type": "service",
        "token_ttl": entry.creation_ttl,
        "token_issue_time": crate::clock::rfc3339_unix(entry.creation_time),
    })
}

fn request_block(salt: &Salt, record: &RequestRecord<'_>) -> Value {
    let mut block = json!({
        "id": record.id,
        "operation": record.operation,
        "mount_type": record.mount_type,
        "client_token": record.client_token.map(|t| salt.hash(t)).unwrap_or_default(),
        "client_token_accessor": record.token.map(|t| salt.hash(&t.accessor)).unwrap_or_default(),
        "namespace": { "id": "root" },
        "path": record.path,
        "remote_address": record.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
        "remote_port": record.remote.map_or(0, |a| a.port()),
    });
    if let Some(body) = record.body.filter(|b| !b.is_empty()) {
        block["data"] = Value::Object(salt.hash_fields(body));
    }
    block
}

/// The entry written before a request is served.
pub fn request_entry(salt: &Salt, record: &RequestRecord<'_>, time: &str, error: &str) -> Value {
    json!({
        "time": time,
        "type": "request",
        "auth": auth_block(salt, record.token, record.client_token),
        "request": request_block(salt, record),
        "error": error,
    })
}

/// The entry written before a response is sent.
pub fn response_entry(
    salt: &Salt,
    record: &RequestRecord<'_>,
    response: &ResponseRecord<'_>,
    time: &str,
) -> Value {
    let mut block = json!({ "mount_type": record.mount_type, "status": response.status });
    let mut error = String::new();
    if let Some(body) = response.body {
        if let Some(data) = body.get("data").filter(|v| !v.is_null()) {
            block["data"] = salt.hash_strings(data);
        }
        // As Vault: the issued token and its accessor hashed; policies and metadata readable.
        if let Some(Value::Object(auth)) = body.get("auth") {
            let mut auth = auth.clone();
            for secret in ["client_token", "accessor"] {
                if let Some(Value::String(text)) = auth.get(secret) {
                    let hashed = salt.hash(text);
                    auth.insert(secret.to_owned(), Value::String(hashed));
                }
            }
            block["auth"] = Value::Object(auth);
        }
        if let Some(errors) = body.get("errors").and_then(Value::as_array) {
            error = errors
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    json!({
        "time": time,
        "type": "response",
        "auth": auth_block(salt, record.token, record.client_token),
        "request": request_block(salt, record),
        "response": block,
        "error": error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt(byte: u8) -> Salt {
        Salt::new(Key256::from_slice(&[byte; 32]).unwrap())
    }

    #[test]
    fn every_string_is_hashed_and_the_shape_kept() {
        let s = salt(1);
        let value = json!({ "data": { "password": "hunter2", "n": 3, "list": ["a", true] } });
        let hashed = s.hash_strings(&value);
        assert_eq!(hashed["data"]["n"], json!(3));
        assert_eq!(hashed["data"]["list"][1], json!(true));
        assert_eq!(hashed["data"]["password"], json!(s.hash("hunter2")));
        assert!(s.hash("hunter2").starts_with("hmac-sha256:"));
        assert_eq!(s.hash("hunter2").len(), "hmac-sha256:".len() + 64);
        assert_ne!(
            s.hash("hunter2"),
            salt(2).hash("hunter2"),
            "per-device salt"
        );
        assert!(!hashed.to_string().contains("hunter2"));
    }

    #[test]
    fn entries_have_vaults_fields_and_no_value_in_the_clear() {
        let s = salt(3);
        let body: Map<String, Value> =
            serde_json::from_value(json!({ "data": { "password": "pw-in-body" } })).unwrap();
        let record = RequestRecord {
            id: "req-1",
            operation: "update",
            path: "secret/data/app",
            mount_type: "kv",
            remote: Some("127.0.0.1:4242".parse().unwrap()),
            client_token: Some("kks.the-token"),
            token: None,
            body: Some(&body),
        };
        let request = request_entry(&s, &record, "2026-12-02T00:00:00Z", "");
        assert_eq!(request["type"], "request");
        assert_eq!(request["request"]["operation"], "update");
        assert_eq!(request["request"]["remote_address"], "127.0.0.1");
        assert_eq!(
            request["request"]["client_token"],
            json!(s.hash("kks.the-token"))
        );
        let sent = json!({ "data": { "password": "pw-in-response" }, "auth": { "client_token": "kks.new" } });
        let response = response_entry(
            &s,
            &record,
            &ResponseRecord {
                status: 200,
                body: Some(&sent),
            },
            "2026-12-02T00:00:00Z",
        );
        assert_eq!(response["response"]["status"], 200);
        assert_eq!(
            response["response"]["auth"]["client_token"],
            json!(s.hash("kks.new"))
        );
        let text = format!("{request}{response}");
        for secret in ["pw-in-body", "pw-in-response", "kks.the-token", "kks.new"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let refused = json!({ "errors": ["permission denied"] });
        let denied = response_entry(
            &s,
            &record,
            &ResponseRecord {
                status: 403,
                body: Some(&refused),
            },
            "t",
        );
        assert_eq!(denied["error"], "permission denied");
    }
}
