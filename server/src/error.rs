//! The one error type of the server's logic; `http::respond` maps each variant to a status.

use crate::barrier::BarrierError;
use crate::seal::SealError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; the message says what, and never echoes a secret value.
    #[error("{0}")]
    BadRequest(String),
    #[error("permission denied")]
    PermissionDenied,
    /// A 403 with a specific reason (Kubernetes login: "namespace not authorized").
    #[error("{0}")]
    Forbidden(String),
    /// Vault answers an unknown path or missing item with 404 and no message.
    #[error("not found")]
    NotFound,
    #[error("unsupported operation")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A per-token rate limit was reached; the client may try again after this many seconds.
    #[error("too many requests")]
    TooManyRequests { retry_after: u64 },
    #[error("Vault is sealed")]
    Sealed,
    #[error("Vault is not initialized")]
    NotInitialized,
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    #[error("check-and-set parameter did not match the current version")]
    CasMismatch,
    #[error("check-and-set parameter required for this call")]
    CasRequired,
    /// This replica sheds load (a bounded resource is full); nothing is wrong, retry later.
    #[error("{0}")]
    Overloaded(&'static str),
    /// A backend or seal could not be reached; the request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen; details are logged, the client sees a generic line.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest(message.into())
    }
}

/// What went wrong parsing JSON, by kind and position only: serde_json's own messages quote
/// the offending value ("invalid type: string \"hunter2\" ..."), and the JSON may be a
/// decrypted secret or a request body.
pub fn describe_json_error(error: &serde_json::Error) -> String {
    let kind = match error.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    };
    format!("{kind} at line {} column {}", error.line(), error.column())
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(reason) => Error::Unavailable(reason),
            StorageError::TooLarge { size, limit, .. } => Error::PayloadTooLarge(format!(
                "value is too large to store: {size} bytes encrypted, the limit is {limit}"
            )),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<BarrierError> for Error {
    fn from(error: BarrierError) -> Self {
        Error::Internal(format!("barrier: {error}"))
    }
}

impl From<SealError> for Error {
    fn from(error: SealError) -> Self {
        match error {
            SealError::Unavailable { .. } => Error::Unavailable(error.to_string()),
            SealError::Invalid { .. } => Error::Internal(error.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_the_value() {
        let error = serde_json::from_slice::<Vec<u64>>(br#"["hunter2-canary"]"#).unwrap_err();
        assert!(
            error.to_string().contains("hunter2-canary"),
            "serde_json quotes it"
        );
        let described = describe_json_error(&error);
        assert!(!described.contains("hunter2"), "{described}");
        assert!(described.contains("invalid data at line 1"), "{described}");
    }
}
