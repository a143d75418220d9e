//! ACL policies: parse Vault HCL/JSON policies and decide, without I/O, what a set of them allows.
//!
//! Semantics follow Vault: deny by default; capabilities granted to the same path pattern by
//! several policies are merged and `deny` there overrides everything; for a request the single
//! most specific matching pattern decides. `*` is a prefix glob and only allowed as the last
//! character; `+` matches exactly one path segment.

use crate::path::LogicalPath;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
}

impl Capability {
    fn bit(self) -> u16 {
        1 << self as u16
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Patch => "patch",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
            Capability::Deny => "deny",
        }
    }

    fn parse(name: &str) -> Option<Capability> {
        Some(match name {
            "create" => Capability::Create,
            "read" => Capability::Read,
            "update" => Capability::Update,
            "patch" => Capability::Patch,
            "delete" => Capability::Delete,
            "list" => Capability::List,
            "sudo" => Capability::Sudo,
            "deny" => Capability::Deny,
            _ => return None,
        })
    }

    pub const ALL: [Capability; 8] = [
        Capability::Create,
        Capability::Read,
        Capability::Update,
        Capability::Patch,
        Capability::Delete,
        Capability::List,
        Capability::Sudo,
        Capability::Deny,
    ];
}

/// A set of capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps(u16);

impl Caps {
    pub fn of(list: &[Capability]) -> Caps {
        Caps(list.iter().fold(0, |acc, c| acc | c.bit()))
    }

    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    /// What the set effectively grants: nothing when it holds `deny`.
    pub fn effective(self) -> Caps {
        if self.contains(Capability::Deny) {
            Caps::of(&[Capability::Deny])
        } else {
            self
        }
    }

    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .iter()
            .filter(|c| self.contains(**c))
            .map(|c| c.name())
            .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("failed to parse policy: {0}")]
    Syntax(String),
    #[error("path {0:?}: '*' is only allowed as the last character")]
    MisplacedGlob(String),
    #[error("path {0:?}: unknown capability {1:?}")]
    UnknownCapability(String, String),
    #[error("path {0:?}: {1:?} is not supported by kinko; refusing rather than ignoring it")]
    UnsupportedAttribute(String, String),
    #[error("path {0:?}: needs a capabilities list")]
    MissingCapabilities(String),
    #[error("policy name {0:?} is invalid: use letters, digits, '-', '_', '.' (at most 128)")]
    BadName(String),
    #[error("the root policy cannot be written, changed or deleted")]
    Root,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub caps: Caps,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub text: String,
    pub rules: Vec<Rule>,
}

pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName(name.to_owned()))
    }
}

/// Parses a policy in Vault HCL, or in its JSON form when the text starts with `{`.
pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
    let paths = path_attributes(&document(text)?)?;
    let mut rules = Vec::with_capacity(paths.len());
    for (pattern, attributes) in paths {
        let glob_at = pattern.find('*');
        if glob_at.is_some_and(|at| at != pattern.len() - 1) {
            return Err(PolicyError::MisplacedGlob(pattern));
        }
        let mut caps = Caps::default();
        let mut saw_capabilities = false;
        for (key, value) in attributes {
            match key.as_str() {
                "capabilities" => {
                    saw_capabilities = true;
                    let list = value
                        .as_array()
                        .ok_or_else(|| PolicyError::MissingCapabilities(pattern.clone()))?;
                    for item in list {
                        let name = item.as_str().unwrap_or_default();
                        let capability = Capability::parse(name).ok_or_else(|| {
                            PolicyError::UnknownCapability(pattern.clone(), name.to_owned())
                        })?;
                        caps = caps.union(Caps::of(&[capability]));
                    }
                }
                // The pre-0.9 shorthand, still accepted by Vault.
                "policy" => {
                    saw_capabilities = true;
                    use Capability::*;
                    let granted = match value.as_str().unwrap_or_default() {
                        "deny" => Caps::of(&[Deny]),
                        "read" => Caps::of(&[Read, List]),
                        "write" => Caps::of(&[Create, Read, Update, Patch, Delete, List]),
                        "sudo" => Caps::of(&[Create, Read, Update, Patch, Delete, List, Sudo]),
                        other => {
                            return Err(PolicyError::UnknownCapability(
                                pattern.clone(),
                                other.to_owned(),
                            ))
                        }
                    };
                    caps = caps.union(granted);
                }
                other => {
                    return Err(PolicyError::UnsupportedAttribute(
                        pattern.clone(),
                        other.to_owned(),
                    ))
                }
            }
        }
        if !saw_capabilities {
            return Err(PolicyError::MissingCapabilities(pattern));
        }
        rules.push(Rule { pattern, caps });
    }
    Ok(Policy {
        name: name.to_owned(),
        text: text.to_owned(),
        rules,
    })
}

type PathAttributes = Vec<(String, Vec<(String, Value)>)>;

/// Brackets nested deeper than this are refused before parsing: a policy nests two deep
/// (`path "p" { capabilities = [..] }`), and the HCL parser takes time exponential in the depth
/// of unclosed brackets (found by the `policy` fuzz target: 521 bytes, over 10 s).
pub const MAX_POLICY_NESTING: usize = 8;

fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// HCL and JSON policies meet in one shape: `{"path": {"<pattern>": {"capabilities": [..]}}}`.
fn document(text: &str) -> Result<Value, PolicyError> {
    if nesting_depth(text) > MAX_POLICY_NESTING {
        return Err(PolicyError::Syntax(format!(
            "brackets nested more than {MAX_POLICY_NESTING} deep"
        )));
    }
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| PolicyError::Syntax(crate::error::describe_json_error(&e)))
    } else {
        hcl::from_str(text).map_err(|e| PolicyError::Syntax(describe_hcl_error(&e)))
    }
}

/// Where and what, without the parser's snippet of the text (the text is not echoed back).
fn describe_hcl_error(error: &hcl::Error) -> String {
    match error {
        hcl::Error::Parse(parse) => format!(
            "HCL syntax error at line {}, column {}: {}",
            parse.location().line(),
            parse.location().column(),
            parse.message()
        ),
        other => other.to_string(),
    }
}

fn path_attributes(document: &Value) -> Result<PathAttributes, PolicyError> {
    let object = document
        .as_object()
        .ok_or_else(|| PolicyError::Syntax("expected path blocks".into()))?;
    let mut out = Vec::new();
    for (key, value) in object {
        if key != "path" {
            return Err(PolicyError::Syntax(format!(
                "unexpected top-level {key:?}: expected path \"<pattern>\" {{ ... }}"
            )));
        }
        let paths = value
            .as_object()
            .ok_or_else(|| PolicyError::Syntax("\"path\" needs a pattern label".into()))?;
        for (pattern, body) in paths {
            // A pattern written twice arrives as a list of bodies.
            let bodies: Vec<&Value> = match body {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for body in bodies {
                let attributes = body
                    .as_object()
                    .ok_or_else(|| PolicyError::MissingCapabilities(pattern.clone()))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                out.push((pattern.clone(), attributes));
            }
        }
    }
    Ok(out)
}

/// A compiled pattern: a literal prefix or exact path, with `+` segments.
#[derive(Debug, Clone)]
struct Pattern {
    raw: String,
    /// Everything before the first wildcard: a path must start with it to match.
    literal_prefix: String,
    glob: bool,
    segments: Vec<String>,
    plus_segments: usize,
    first_wildcard: usize,
}

impl Pattern {
    fn new(raw: &str) -> Pattern {
        let glob = raw.ends_with('*');
        let body = raw.strip_suffix('*').unwrap_or(raw);
        let segments: Vec<String> = body.split('/').map(str::to_owned).collect();
        let plus_segments = segments.iter().filter(|s| *s == "+").count();
        let first_wildcard = raw
            .split('/')
            .scan(0usize, |offset, segment| {
                let at = *offset;
                *offset += segment.len() + 1;
                Some((at, segment))
            })
            .find(|(_, s)| *s == "+")
            .map(|(at, _)| at)
            .into_iter()
            .chain(glob.then(|| raw.len() - 1))
            .min()
            .unwrap_or(raw.len());
        Pattern {
            raw: raw.to_owned(),
            literal_prefix: raw[..first_wildcard].to_owned(),
            glob,
            segments,
            plus_segments,
            first_wildcard,
        }
    }

    fn matches(&self, path: &str) -> bool {
        self.matches_parts(path, &path.split('/').collect::<Vec<_>>())
    }

    /// `parts` is `path` split at `/`, done once per check rather than once per pattern.
    fn matches_parts(&self, path: &str, parts: &[&str]) -> bool {
        if !path.starts_with(&self.literal_prefix) {
            return false;
        }
        let last = self.segments.len() - 1;
        if self.glob {
            if parts.len() < self.segments.len() {
                return false;
            }
        } else if parts.len() != self.segments.len() {
            return false;
        }
        self.segments
            .iter()
            .zip(parts)
            .enumerate()
            .all(|(i, (pattern, part))| {
                if pattern == "+" {
                    true
                } else if self.glob && i == last {
                    part.starts_with(pattern.as_str())
                } else {
                    pattern == part
                }
            })
    }

    /// Vault's precedence: a later first wildcard, no trailing glob, fewer `+`, longer, then
    /// lexically larger wins.
    fn precedence(&self, other: &Pattern) -> Ordering {
        self.first_wildcard
            .cmp(&other.first_wildcard)
            .then_with(|| other.glob.cmp(&self.glob))
            .then_with(|| other.plus_segments.cmp(&self.plus_segments))
            .then_with(|| self.raw.len().cmp(&other.raw.len()))
            .then_with(|| self.raw.cmp(&other.raw))
    }
}

/// The merged rules of a token's policies.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, Caps>,
    /// Wildcard patterns, highest precedence first.
    wildcard: Vec<(Pattern, Caps)>,
}

impl Acl {
    pub fn root() -> Acl {
        Acl {
            root: true,
            ..Acl::default()
        }
    }

    pub fn new(policies: &[Arc<Policy>]) -> Acl {
        let mut merged: HashMap<String, Caps> = HashMap::new();
        for rule in policies.iter().flat_map(|p| p.rules.iter()) {
            let entry = merged.entry(rule.pattern.clone()).or_default();
            *entry = entry.union(rule.caps);
        }
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (raw, caps) in merged {
            if raw.ends_with('*') || raw.split('/').any(|s| s == "+") {
                wildcard.push((Pattern::new(&raw), caps.effective()));
            } else {
                exact.insert(raw, caps.effective());
            }
        }
        wildcard.sort_by(|a, b| b.0.precedence(&a.0));
        Acl {
            root: false,
            exact,
            wildcard,
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The capabilities of the one rule that governs `path`.
    pub fn capabilities(&self, path: &str) -> Caps {
        if self.root {
            return Caps::of(&Capability::ALL[..7]);
        }
        if let Some(caps) = self.exact.get(path) {
            return *caps;
        }
        let parts: Vec<&str> = path.split('/').collect();
        self.wildcard
            .iter()
            .find(|(p, _)| p.matches_parts(path, &parts))
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// Whether the rule governing a request's path grants `capability` (and does not deny).
    /// As in Vault, a `LIST` path (`a/b/`) also takes an exact rule on `a/b`.
    pub fn allows(&self, path: &LogicalPath, capability: Capability) -> bool {
        let caps = match self.exact.get(path.trimmed()) {
            Some(caps) if path.is_list() && !self.exact.contains_key(path.as_str()) => *caps,
            _ => self.capabilities(path.as_str()),
        };
        !caps.contains(Capability::Deny) && caps.contains(capability)
    }

    /// Whether any rule could grant something at or below `prefix` (used to show a mount).
    pub fn grants_anything_under(&self, prefix: &str) -> bool {
        self.root
            || self.exact.iter().any(|(p, c)| {
                p.starts_with(prefix) && !c.contains(Capability::Deny) && *c != Caps::default()
            })
            || self.wildcard.iter().any(|(p, c)| {
                !c.contains(Capability::Deny)
                    && *c != Caps::default()
                    && (p.raw.starts_with(prefix)
                        || p.matches(prefix)
                        || prefix.starts_with(p.raw.trim_end_matches('*')))
            })
    }
}

/// The policy every token gets unless asked otherwise (as in Vault): manage the token itself.
pub const DEFAULT_POLICY: &str = r#"# Allow tokens to look up, renew and revoke themselves.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
"#;

#[cfg(test)]
mod tests {

    #[test]
    fn deeply_nested_brackets_are_refused_before_the_hcl_parser_sees_them() {
        // The shape the `policy` fuzz target found (unclosed arrays, one inside the next): the
        // HCL parser's time grows exponentially with their depth.
        let text = format!("n=n{}", "[773.77.7 ".repeat(12));
        assert_eq!(
            parse("p", &text).unwrap_err().to_string(),
            format!("failed to parse policy: brackets nested more than {MAX_POLICY_NESTING} deep")
        );
        let fine = r#"path "secret/*" { capabilities = ["read", "list"] }"#;
        assert!(parse("p", fine).is_ok());
    }

    use super::*;

    /// A test path: a list path when it ends in `/`.
    fn path(raw: &str) -> LogicalPath {
        LogicalPath::new(raw, raw.ends_with('/')).unwrap()
    }
    use Capability::*;

    fn acl(texts: &[&str]) -> Acl {
        let policies: Vec<Arc<Policy>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Arc::new(parse(&format!("p{i}"), t).unwrap()))
            .collect();
        Acl::new(&policies)
    }

    #[test]
    fn parses_hcl_and_json_to_the_same_rules() {
        let hcl = parse(
            "a",
            r#"path "secret/data/app/*" { capabilities = ["read", "list"] }"#,
        )
        .unwrap();
        let json = parse(
            "a",
            r#"{"path": {"secret/data/app/*": {"capabilities": ["read", "list"]}}}"#,
        )
        .unwrap();
        assert_eq!(hcl.rules, json.rules);
        assert_eq!(hcl.rules[0].caps, Caps::of(&[Read, List]));
    }

    #[test]
    fn deny_by_default() {
        let acl = acl(&[r#"path "secret/data/a" { capabilities = ["read"] }"#]);
        assert!(acl.allows(&path("secret/data/a"), Read));
        assert!(!acl.allows(&path("secret/data/a"), Update));
        assert!(!acl.allows(&path("secret/data/b"), Read));
        assert!(!acl.allows(&path("secret/data/a/b"), Read));
        assert!(!Acl::new(&[]).allows(&path("anything"), Read));
    }

    #[test]
    fn deny_wins_when_merged_on_the_same_path() {
        let acl = acl(&[
            r#"path "secret/data/*" { capabilities = ["read", "update"] }"#,
            r#"path "secret/data/*" { capabilities = ["deny"] }"#,
        ]);
        assert!(!acl.allows(&path("secret/data/x"), Read));
        assert!(!acl.allows(&path("secret/data/x"), Update));
    }

    #[test]
    fn most_specific_pattern_decides() {
        let acl = acl(&[
            r#"path "secret/*" { capabilities = ["deny"] }"#,
            r#"path "secret/data/open" { capabilities = ["read"] }"#,
            r#"path "secret/data/team/*" { capabilities = ["read", "list"] }"#,
            r#"path "secret/data/team/private*" { capabilities = ["deny"] }"#,
        ]);
        assert!(acl.allows(&path("secret/data/open"), Read));
        assert!(!acl.allows(&path("secret/data/closed"), Read));
        assert!(acl.allows(&path("secret/data/team/x"), Read));
        assert!(!acl.allows(&path("secret/data/team/private-db"), Read));
    }

    #[test]
    fn glob_is_a_prefix_and_only_allowed_last() {
        let acl = acl(&[r#"path "secret/data/ap*" { capabilities = ["read"] }"#]);
        assert!(acl.allows(&path("secret/data/app"), Read));
        assert!(acl.allows(&path("secret/data/app/deep/key"), Read));
        assert!(!acl.allows(&path("secret/data/a"), Read));
        assert_eq!(
            parse("x", r#"path "secret/*/data" { capabilities = ["read"] }"#),
            Err(PolicyError::MisplacedGlob("secret/*/data".into()))
        );
        let slash = acl_one(r#"path "secret/*" { capabilities = ["read"] }"#);
        assert!(!slash.allows(&path("secret"), Read));
        assert!(slash.allows(&path("secret/"), Read));
    }

    fn acl_one(text: &str) -> Acl {
        acl(&[text])
    }

    #[test]
    fn plus_matches_exactly_one_segment() {
        let acl = acl_one(r#"path "secret/data/+/config" { capabilities = ["read"] }"#);
        assert!(acl.allows(&path("secret/data/team-a/config"), Read));
        assert!(!acl.allows(&path("secret/data/team-a/sub/config"), Read));
        assert!(!acl.allows(&path("secret/data/config"), Read));
        let with_glob = acl_one(r#"path "secret/+/app/*" { capabilities = ["list"] }"#);
        assert!(with_glob.allows(&path("secret/metadata/app/x/y"), List));
        assert!(!with_glob.allows(&path("secret/metadata/other/x"), List));
    }

    #[test]
    fn precedence_prefers_later_wildcards_then_no_glob_then_fewer_plus() {
        let acl = acl(&[
            r#"path "secret/+/app/*" { capabilities = ["read"] }"#,
            r#"path "secret/data/+/*" { capabilities = ["deny"] }"#,
            r#"path "secret/data/app/+" { capabilities = ["update"] }"#,
        ]);
        // All three match; "secret/data/app/+" has the latest first wildcard.
        assert!(acl.allows(&path("secret/data/app/x"), Update));
        assert!(!acl.allows(&path("secret/data/app/x"), Read));
        // Only the first two match deeper paths; the second's wildcard comes later.
        assert!(!acl.allows(&path("secret/data/app/x/y"), Read));
    }

    #[test]
    fn legacy_policy_shorthand_and_errors() {
        let acl = acl_one(r#"path "secret/*" { policy = "write" }"#);
        assert!(
            acl.allows(&path("secret/data/a"), Create)
                && acl.allows(&path("secret/data/a"), Delete)
        );
        assert!(matches!(
            parse("x", r#"path "a" { capabilities = ["fly"] }"#),
            Err(PolicyError::UnknownCapability(..))
        ));
        assert!(matches!(
            parse(
                "x",
                "path \"a\" {\n capabilities = [\"read\"]\n denied_parameters = { \"k\" = [] }\n}"
            ),
            Err(PolicyError::UnsupportedAttribute(..))
        ));
        assert!(matches!(
            parse("x", r#"path "a" {}"#),
            Err(PolicyError::MissingCapabilities(..))
        ));
        assert!(matches!(
            parse("x", "path \"a\" { capabilities = [\"read\""),
            Err(PolicyError::Syntax(..))
        ));
        assert!(matches!(
            parse("x", r#"{"path": 3}"#),
            Err(PolicyError::Syntax(..))
        ));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("team-a_read.v2").is_ok());
        for bad in ["", "../x", "a/b", "white space", ".", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_acl_allows_everything_but_deny_semantics_do_not_apply() {
        let root = Acl::root();
        assert!(root.allows(&path("sys/seal"), Sudo));
        assert!(root.allows(&path("secret/data/x"), Read));
    }

    #[test]
    fn default_policy_parses() {
        let policy = parse("default", DEFAULT_POLICY).unwrap();
        let acl = Acl::new(&[Arc::new(policy)]);
        assert!(acl.allows(&path("auth/token/lookup-self"), Read));
        assert!(!acl.allows(&path("secret/data/x"), Read));
    }

    #[test]
    fn a_hundred_policies_still_pick_the_right_rule() {
        let texts: Vec<String> = (0..100)
            .map(|i| format!(r#"path "secret/data/team{i}/*" {{ capabilities = ["read"] }}"#))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let acl = acl(&refs);
        assert!(acl.allows(&path("secret/data/team42/db"), Read));
        assert!(!acl.allows(&path("secret/data/team100/db"), Read));
    }
}
