//! Wall-clock helpers: Unix seconds for arithmetic, RFC 3339 (nanoseconds, `Z`) for the API.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn now_unix() -> i64 {
    now().unix_timestamp()
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("UTC timestamps always format")
}

pub fn rfc3339_unix(seconds: i64) -> String {
    rfc3339(from_unix(seconds))
}

pub fn from_unix(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// [`rfc3339`] appended to `out`, without a `String` of its own.
pub fn write_rfc3339(out: &mut Vec<u8>, at: OffsetDateTime) {
    at.format_into(out, &Rfc3339)
        .expect("UTC timestamps always format");
}

pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}
