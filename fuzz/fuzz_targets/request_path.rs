//! Request paths as they arrive (`/v1/...`, percent-encoded): the one canonical form the
//! policy check and the handler both take must never hold a dot segment, an empty segment, a
//! control character or an encoded slash, and must be stable when parsed again.
#![no_main]

use kinko_server::path::LogicalPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(raw) else {
        return;
    };
    let list = flags & 1 == 1;
    let Ok(path) = LogicalPath::from_request(raw, list) else {
        return;
    };
    let text = path.as_str();
    assert!(
        !text.chars().any(char::is_control),
        "control character in {text:?}"
    );
    let trimmed = path.trimmed();
    if !trimmed.is_empty() {
        for segment in trimmed.split('/') {
            assert!(!segment.is_empty(), "empty segment in {text:?}");
            assert!(segment != "." && segment != "..", "dot segment in {text:?}");
        }
    }
    assert_eq!(path.is_list(), list);
    if list {
        assert!(text.is_empty() || text.ends_with('/'), "{text:?}");
    } else {
        assert!(!text.ends_with('/'), "{text:?}");
    }
    // Canonical: the decoded form validates as it is and gives the same path again.
    let again = LogicalPath::new(text, list).expect("a canonical path validates");
    assert_eq!(again, path);
});
