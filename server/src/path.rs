//! Request-path parsing: one decoded, validated form used both for the policy check and for the
//! handler, so that `..`, `%2e%2e`, `//` and friends can never mean one thing to one and another
//! thing to the other.

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_SEGMENT_BYTES: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path is not under /v1/")]
    NotApi,
    #[error("path contains an encoded '/' (%2F), which is not allowed")]
    EncodedSlash,
    #[error("path is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("a path segment is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
}

/// The canonical logical path of one request (`secret/data/app`, without `/v1/`): decoded and
/// validated once at the entry, and the only path type that the policy check
/// ([`crate::policy::Acl::allows`]) and the handlers take, so that the two can never disagree
/// about which path a request names.
///
/// Canonical means: a `LIST` path always ends in `/` (as Vault appends it before the ACL
/// check) and every other path never does, so `PUT sys/policy/admin/` *is* `sys/policy/admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalPath {
    path: String,
    list: bool,
}

impl LogicalPath {
    /// Parses the raw URI path (`/v1/secret/data/app`) of a request that lists (`list`) or not.
    pub fn from_request(raw: &str, list: bool) -> Result<LogicalPath, PathError> {
        LogicalPath::canonical(parse_request_path(raw)?, list)
    }

    /// Validates an already decoded logical path (`secret/data/app`).
    pub fn new(logical: &str, list: bool) -> Result<LogicalPath, PathError> {
        validate_logical_path(logical)?;
        LogicalPath::canonical(logical.to_owned(), list)
    }

    fn canonical(mut path: String, list: bool) -> Result<LogicalPath, PathError> {
        if list {
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
        } else {
            while path.ends_with('/') {
                path.pop();
            }
        }
        Ok(LogicalPath { path, list })
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// Whether this is a `LIST` path (and so ends in `/`).
    pub fn is_list(&self) -> bool {
        self.list
    }

    /// The path without its trailing `/`, for routing (`sys/policies/acl/` lists `acl`).
    pub fn trimmed(&self) -> &str {
        self.path.strip_suffix('/').unwrap_or(&self.path)
    }
}

impl std::fmt::Display for LogicalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// Turns the raw URI path (`/v1/secret/data/app`) into the logical path (`secret/data/app`).
/// A trailing `/` is kept: it is meaningful for `LIST`.
fn parse_request_path(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix("/v1/").ok_or(PathError::NotApi)?;
    if rest.len() > MAX_PATH_BYTES * 3 {
        return Err(PathError::TooLong);
    }
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSlash);
    }
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| PathError::BadEncoding)?;
    validate_logical_path(&decoded)?;
    Ok(decoded.into_owned())
}

/// Checks a decoded logical path (also used for paths that arrive inside JSON bodies).
pub fn validate_logical_path(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlCharacter);
    }
    if path.contains('\\') {
        return Err(PathError::EncodedSlash);
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    if body.is_empty() {
        return if path.is_empty() {
            Ok(())
        } else {
            Err(PathError::EmptySegment)
        };
    }
    for segment in body.split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(PathError::SegmentTooLong),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths_end_in_a_slash_and_others_never_do() {
        let canonical = |raw, list| LogicalPath::from_request(raw, list).unwrap();
        assert_eq!(
            canonical("/v1/sys/policy/admin/", false).as_str(),
            "sys/policy/admin"
        );
        assert_eq!(
            canonical("/v1/sys/policy/admin", false).as_str(),
            "sys/policy/admin"
        );
        assert_eq!(
            canonical("/v1/secret/metadata/private", true).as_str(),
            "secret/metadata/private/"
        );
        assert_eq!(
            canonical("/v1/secret/metadata/private/", true).as_str(),
            "secret/metadata/private/"
        );
        assert_eq!(
            canonical("/v1/secret/metadata/private/", true).trimmed(),
            "secret/metadata/private"
        );
        assert_eq!(canonical("/v1/", false).as_str(), "");
        assert_eq!(canonical("/v1/", true).as_str(), "");
    }

    #[test]
    fn accepts_ordinary_paths_and_keeps_trailing_slash() {
        assert_eq!(
            parse_request_path("/v1/secret/data/app").unwrap(),
            "secret/data/app"
        );
        assert_eq!(
            parse_request_path("/v1/secret/metadata/").unwrap(),
            "secret/metadata/"
        );
        assert_eq!(
            parse_request_path("/v1/secret/data/with%20space").unwrap(),
            "secret/data/with space"
        );
        assert_eq!(
            parse_request_path("/v1/secret/data/日本").unwrap(),
            "secret/data/日本"
        );
    }

    #[test]
    fn rejects_traversal_in_every_spelling() {
        for raw in [
            "/v1/secret/data/../sys/policy",
            "/v1/secret/data/%2e%2e/x",
            "/v1/secret/data/%2E%2E/x",
            "/v1/secret/data/.%2e/x",
            "/v1/secret/./data",
            "/v1/secret/data/..",
        ] {
            assert_eq!(parse_request_path(raw), Err(PathError::DotSegment), "{raw}");
        }
        assert_eq!(
            parse_request_path("/v1/secret//data"),
            Err(PathError::EmptySegment)
        );
        assert_eq!(parse_request_path("//v1/secret"), Err(PathError::NotApi));
        assert_eq!(
            parse_request_path("/v1//secret"),
            Err(PathError::EmptySegment)
        );
        assert_eq!(
            parse_request_path("/v1/secret/data%2fx"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            parse_request_path("/v1/secret/data%5c..%5cx"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            parse_request_path("/v1/secret\\..\\x"),
            Err(PathError::EncodedSlash)
        );
    }

    #[test]
    fn rejects_control_characters_bad_utf8_and_oversize() {
        assert_eq!(
            parse_request_path("/v1/secret/data/a%00b"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            parse_request_path("/v1/secret/data/a%0Ab"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            parse_request_path("/v1/secret/data/%ff"),
            Err(PathError::BadEncoding)
        );
        let long_segment = format!("/v1/secret/data/{}", "a".repeat(10_000));
        assert_eq!(parse_request_path(&long_segment), Err(PathError::TooLong));
        let segment = format!("/v1/secret/data/{}", "a".repeat(600));
        assert_eq!(parse_request_path(&segment), Err(PathError::SegmentTooLong));
        assert_eq!(parse_request_path("/v2/secret"), Err(PathError::NotApi));
    }
}
