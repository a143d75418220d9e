//! kinko-spec: what to fetch from kinko, without I/O — `--secret` specs
//! (`PATH`, `PATH#KEY[#VERSION][=NAME]`), `kinko:` references in variables, the naming rules
//! (prefix, upcase, sanitize, path prefix) and their command-line flags, role names, and the
//! final environment with its conflicts detected.
//!
//! Shared by envrun (which parses its command line with it) and kinko-injector (which checks a
//! Pod's annotations with it and writes the same flags into the Pod), so both read one grammar.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "--secret {0:?}: expected PATH, PATH#KEY, PATH#KEY#VERSION, optionally followed by =NAME"
    )]
    BadSecret(String),
    #[error("{secret}: key {key:?} gives the variable name {name:?}, which is not a valid name; use --sanitize or PATH#KEY=NAME")]
    BadName {
        secret: String,
        key: String,
        name: String,
    },
    #[error("variable {name} is set by both {first} and {second}; use --allow-override to let the later win")]
    Conflict {
        name: String,
        first: String,
        second: String,
    },
    #[error("variable {variable}: {reason}")]
    BadReference { variable: String, reason: String },
}

/// One secret to fetch: a KV v2 path, optionally one key of it at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub path: String,
    pub key: Option<String>,
    pub version: Option<u64>,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(key) = &self.key {
            write!(f, "#{key}")?;
        }
        if let Some(version) = self.version {
            write!(f, "#{version}")?;
        }
        Ok(())
    }
}

/// A `--secret` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub secret: SecretRef,
    /// `=NAME`: exactly this variable name.
    pub name: Option<String>,
}

fn parse_ref(text: &str) -> Option<SecretRef> {
    let mut parts = text.split('#');
    let path = parts.next()?.trim_matches('/');
    if path.is_empty()
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    let key = parts.next().map(str::to_owned);
    if key.as_deref() == Some("") {
        return None;
    }
    let version = match parts.next() {
        None => None,
        Some(v) => Some(v.parse::<u64>().ok().filter(|v| *v > 0)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(SecretRef {
        path: path.to_owned(),
        key,
        version,
    })
}

pub fn parse_secret_spec(text: &str) -> Result<SecretSpec, SpecError> {
    let bad = || SpecError::BadSecret(text.to_owned());
    // `=NAME` names one key, so it must follow `#KEY`; a bare `PATH=NAME` is a mistake.
    let (reference, name) = match text.rsplit_once('=') {
        Some((reference, name)) if reference.contains('#') => (reference, Some(name.to_owned())),
        Some(_) => return Err(bad()),
        None => (text, None),
    };
    let secret = parse_ref(reference).ok_or_else(bad)?;
    if name.is_some() && secret.key.is_none() {
        return Err(bad());
    }
    if let Some(name) = &name {
        if !is_valid_name(name) {
            return Err(bad());
        }
    }
    Ok(SecretSpec { secret, name })
}

/// What an inherited variable's value asks to be replaced by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Secret(SecretRef),
    Sealed(String),
}

pub const SEALED_PREFIX: &str = "kinko:sealed:v1:";

/// `kinko:PATH#KEY[#VERSION]` or `kinko:sealed:v1:...`; `None` for ordinary values.
pub fn parse_reference(variable: &str, value: &str) -> Result<Option<Reference>, SpecError> {
    if value.starts_with(SEALED_PREFIX) {
        return Ok(Some(Reference::Sealed(value.to_owned())));
    }
    let Some(rest) = value.strip_prefix("kinko:") else {
        return Ok(None);
    };
    match parse_ref(rest) {
        Some(secret) if secret.key.is_some() => Ok(Some(Reference::Secret(secret))),
        _ => Err(SpecError::BadReference {
            variable: variable.to_owned(),
            reason: "a kinko: reference must be kinko:PATH#KEY or kinko:PATH#KEY#VERSION".into(),
        }),
    }
}

pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[derive(Debug, Clone, Default)]
pub struct Naming {
    pub prefix: String,
    pub upcase: bool,
    pub sanitize: bool,
    /// Without it, a whole-path secret's keys are named `<path>_<key>` (as envconsul does).
    pub no_prefix_path: bool,
}

impl Naming {
    /// The variable for `key` of a secret fetched by `spec`.
    pub fn name_for(&self, spec: &SecretSpec, key: &str) -> Result<String, SpecError> {
        if let Some(name) = &spec.name {
            return Ok(name.clone());
        }
        let base = if self.no_prefix_path || spec.secret.key.is_some() {
            key.to_owned()
        } else {
            format!("{}_{key}", spec.secret.path.replace('/', "_"))
        };
        let mut name = format!("{}{base}", self.prefix);
        if self.upcase {
            name = name.to_uppercase();
        }
        if is_valid_name(&name) {
            Ok(name)
        } else if self.sanitize {
            Ok(sanitize(&name))
        } else {
            Err(SpecError::BadName {
                secret: spec.secret.to_string(),
                key: key.to_owned(),
                name,
            })
        }
    }
}

impl Naming {
    /// The envrun flags that give this naming (the inverse of [`parse_naming_flags`]).
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if !self.prefix.is_empty() {
            flags.push("--prefix".to_owned());
            flags.push(self.prefix.clone());
        }
        if self.upcase {
            flags.push("--upcase".to_owned());
        }
        if self.sanitize {
            flags.push("--sanitize".to_owned());
        }
        if self.no_prefix_path {
            flags.push("--no-prefix-path".to_owned());
        }
        flags
    }
}

/// envrun's naming flags only: `--upcase`, `--sanitize`, `--no-prefix-path`, `--prefix X` (or
/// `--prefix=X`, X of `A-Z a-z 0-9 _`). Anything else is an error naming the word.
pub fn parse_naming_flags<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Naming, String> {
    let mut naming = Naming::default();
    let mut words = words.into_iter();
    let mut prefix_seen = false;
    while let Some(word) = words.next() {
        let prefix = match word {
            "--upcase" => {
                naming.upcase = true;
                continue;
            }
            "--sanitize" => {
                naming.sanitize = true;
                continue;
            }
            "--no-prefix-path" => {
                naming.no_prefix_path = true;
                continue;
            }
            "--prefix" => words
                .next()
                .ok_or_else(|| "--prefix needs a value".to_owned())?,
            other => match other.strip_prefix("--prefix=") {
                Some(value) => value,
                None => {
                    return Err(format!(
                    "{:?} is not allowed: only --upcase, --sanitize, --no-prefix-path, --prefix X",
                    shorten(other)
                ))
                }
            },
        };
        if prefix_seen {
            return Err("--prefix is given twice".to_owned());
        }
        prefix_seen = true;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "--prefix {:?}: expected 1 to 64 of A-Z, a-z, 0-9, '_'",
                shorten(prefix)
            ));
        }
        naming.prefix = prefix.to_owned();
    }
    Ok(naming)
}

/// A role (or policy) name as the server accepts it: 1 to 128 of `A-Z a-z 0-9 - _ .`, not `.`
/// or `..` (the same rule as `kinko_server::policy::validate_name`).
pub fn is_valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
}

/// At most 64 characters of `text`, for error messages about input of any size.
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The variables secrets produce, each remembering where it came from.
#[derive(Default)]
pub struct Assembled {
    values: BTreeMap<String, (String, String)>,
    allow_override: bool,
}

impl Assembled {
    pub fn new(allow_override: bool) -> Self {
        Assembled {
            values: BTreeMap::new(),
            allow_override,
        }
    }

    pub fn insert(&mut self, name: String, value: String, source: String) -> Result<(), SpecError> {
        if let Some((_, first)) = self.values.get(&name) {
            if !self.allow_override {
                return Err(SpecError::Conflict {
                    name,
                    first: first.clone(),
                    second: source,
                });
            }
        }
        self.values.insert(name, (value, source));
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn into_values(self) -> BTreeMap<String, String> {
        self.values.into_iter().map(|(k, (v, _))| (k, v)).collect()
    }
}

/// A JSON value as an environment variable: strings as they are, everything else as JSON.
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs() {
        let spec = parse_secret_spec("secret/app/db").unwrap();
        assert_eq!(
            spec.secret,
            SecretRef {
                path: "secret/app/db".into(),
                key: None,
                version: None
            }
        );
        let one = parse_secret_spec("secret/app/db#password#3=DB_PASS").unwrap();
        assert_eq!(one.secret.key.as_deref(), Some("password"));
        assert_eq!(one.secret.version, Some(3));
        assert_eq!(one.name.as_deref(), Some("DB_PASS"));
        assert_eq!(parse_secret_spec("secret/a#k").unwrap().name, None);
        for bad in [
            "",
            "#k",
            "secret/a#",
            "secret/a#k#x",
            "secret/a#k#0",
            "secret/../x#k",
            "secret/a=NAME",
            "secret/a#k=1BAD",
            "a#b#1#2",
        ] {
            assert!(parse_secret_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references() {
        assert_eq!(parse_reference("A", "plain").unwrap(), None);
        assert_eq!(
            parse_reference("A", "kinko:secret/app#token#2").unwrap(),
            Some(Reference::Secret(SecretRef {
                path: "secret/app".into(),
                key: Some("token".into()),
                version: Some(2)
            }))
        );
        assert!(matches!(
            parse_reference("A", "kinko:sealed:v1:abc").unwrap(),
            Some(Reference::Sealed(_))
        ));
        let error = parse_reference("DB", "kinko:secret/app").unwrap_err();
        assert!(error.to_string().contains("DB"));
    }

    #[test]
    fn naming_rules() {
        let whole = parse_secret_spec("secret/app/db").unwrap();
        let default = Naming::default();
        assert_eq!(
            default.name_for(&whole, "password").unwrap(),
            "secret_app_db_password"
        );
        let short = Naming {
            no_prefix_path: true,
            upcase: true,
            prefix: "app_".into(),
            ..Naming::default()
        };
        assert_eq!(short.name_for(&whole, "password").unwrap(), "APP_PASSWORD");
        let single = parse_secret_spec("secret/app/db#password").unwrap();
        assert_eq!(default.name_for(&single, "password").unwrap(), "password");
        let named = parse_secret_spec("secret/app/db#password=DB_PASS").unwrap();
        assert_eq!(
            short.name_for(&named, "password").unwrap(),
            "DB_PASS",
            "explicit names are kept exactly"
        );

        let raw = Naming {
            no_prefix_path: true,
            ..Naming::default()
        };
        let error = raw.name_for(&whole, "api-key").unwrap_err();
        assert!(
            matches!(error, SpecError::BadName { .. }),
            "invalid names are errors, never dropped"
        );
        let sanitizing = Naming {
            no_prefix_path: true,
            sanitize: true,
            ..Naming::default()
        };
        assert_eq!(sanitizing.name_for(&whole, "api-key").unwrap(), "api_key");
        assert_eq!(sanitizing.name_for(&whole, "1st").unwrap(), "_1st");
        assert_eq!(
            sanitizing.name_for(&whole, "a b;rm -rf").unwrap(),
            "a_b_rm__rf"
        );
    }

    #[test]
    fn conflicts_name_both_sources() {
        let mut env = Assembled::new(false);
        env.insert("DB".into(), "1".into(), "secret/a".into())
            .unwrap();
        let error = env
            .insert("DB".into(), "2".into(), "secret/b".into())
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("secret/a")
                && text.contains("secret/b")
                && !text.contains('1')
                && !text.contains('2')
        );
        let mut lenient = Assembled::new(true);
        lenient
            .insert("DB".into(), "1".into(), "secret/a".into())
            .unwrap();
        lenient
            .insert("DB".into(), "2".into(), "secret/b".into())
            .unwrap();
        assert_eq!(lenient.into_values()["DB"], "2");
    }

    #[test]
    fn naming_flags_round_trip() {
        let naming =
            parse_naming_flags(["--upcase", "--prefix", "APP_", "--no-prefix-path"]).unwrap();
        assert!(naming.upcase && naming.no_prefix_path && !naming.sanitize);
        assert_eq!(naming.prefix, "APP_");
        let again = parse_naming_flags(naming.to_flags().iter().map(String::as_str)).unwrap();
        assert_eq!(again.to_flags(), naming.to_flags());
        assert_eq!(
            parse_naming_flags(["--prefix=X_", "--sanitize"])
                .unwrap()
                .prefix,
            "X_"
        );
        for bad in [
            &["--pristine"][..],
            &["--allow-override"],
            &["--prefix"],
            &["--prefix", "a b"],
            &["--prefix", "$(X)"],
            &["--prefix", "A", "--prefix", "B"],
            &["--", "sh"],
            &["--token-file", "/x"],
        ] {
            assert!(parse_naming_flags(bad.iter().copied()).is_err(), "{bad:?}");
        }
        let long = "x".repeat(1 << 20);
        let error = parse_naming_flags([long.as_str()]).unwrap_err();
        assert!(error.len() < 200, "a huge word is not echoed whole");
    }

    #[test]
    fn role_names() {
        assert!(is_valid_role_name("payments-api.v2_x"));
        for bad in ["", ".", "..", "a b", "a/b", "$(X)", &"r".repeat(129)] {
            assert!(!is_valid_role_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_as_text() {
        assert_eq!(value_text(&serde_json::json!("s")), "s");
        assert_eq!(value_text(&serde_json::json!(5)), "5");
        assert_eq!(value_text(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(value_text(&serde_json::Value::Null), "");
    }
}
