//! Vault-style durations: a number of seconds, or a Go-like string such as `"90s"`, `"1h30m"`, `"7d"`.

use serde_json::Value;

/// The longest duration accepted anywhere (100 years): keeps all time arithmetic far from overflow.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be a duration: whole seconds or a string like \"90s\", \"30m\", \"1h30m\", \"7d\" (at most 100 years)")]
pub struct DurationError;

pub fn parse_seconds(value: &Value) -> Result<u64, DurationError> {
    let seconds = match value {
        Value::Number(n) => n.as_u64().ok_or(DurationError)?,
        Value::String(s) => parse_str(s)?,
        _ => return Err(DurationError),
    };
    if seconds > MAX_SECONDS {
        return Err(DurationError);
    }
    Ok(seconds)
}

pub fn parse_str(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map_err(|_| DurationError)
            .and_then(bounded);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return Err(DurationError);
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| DurationError)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let multiplier = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(DurationError),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(amount.checked_mul(multiplier).ok_or(DurationError)?)
            .ok_or(DurationError)?;
    }
    bounded(total)
}

fn bounded(seconds: u64) -> Result<u64, DurationError> {
    if seconds > MAX_SECONDS {
        Err(DurationError)
    } else {
        Ok(seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_numbers_and_unit_strings() {
        assert_eq!(parse_seconds(&json!(30)).unwrap(), 30);
        assert_eq!(parse_seconds(&json!("45")).unwrap(), 45);
        assert_eq!(parse_seconds(&json!("90s")).unwrap(), 90);
        assert_eq!(parse_seconds(&json!("1h30m")).unwrap(), 5400);
        assert_eq!(parse_seconds(&json!("768h")).unwrap(), 768 * 3600);
        assert_eq!(parse_seconds(&json!("2d")).unwrap(), 172_800);
        assert_eq!(parse_seconds(&json!("0")).unwrap(), 0);
    }

    #[test]
    fn rejects_negative_huge_fractional_and_garbage() {
        for bad in [
            json!(-1),
            json!("-5s"),
            json!(1.5),
            json!("1.5h"),
            json!("10x"),
            json!(""),
            json!("h"),
            json!(true),
            json!(u64::MAX),
            json!("99999999999999999999h"),
            json!("999999999999d"),
        ] {
            assert_eq!(parse_seconds(&bad), Err(DurationError), "{bad}");
        }
    }
}
