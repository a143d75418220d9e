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

/// Turns the raw URI path (`/v1/secret/data/app`) into the logical path (`secret/data/app`).
/// A trailing `/` is kept: it is meaningful for `LIST`.
pub fn parse_request_path(raw: &str) -> Result<String, PathError> {
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
