//! Storage: the physical backend contract (versioned items, conditional writes, small atomic
//! transactions, immediate-children listing) and its backends. Values arrive already encrypted
//! by the barrier; a backend never sees plaintext.

/// The suite every backend must pass; compiled for tests only (`--features conformance`).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "aws")]
pub mod dynamodb;
mod item_cache;
pub mod sqlite;

use async_trait::async_trait;

/// Most operations one transaction may hold (DynamoDB allows 100; we stay portable).
pub const MAX_TRANSACTION_OPS: usize = 25;
/// Largest value a backend must accept (DynamoDB's item limit is 400 KB including key names).
pub const MAX_VALUE_BYTES: usize = 380 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// Starts at 1 and grows by one on every put, and a key deleted and written again goes on
    /// from where it stopped (the backend keeps a tombstone), so a version never repeats and a
    /// `Version(n)` read before a delete cannot match the re-created key (no ABA).
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Writes nothing: the transaction applies only if `key` satisfies `precondition`
    /// (`Absent` or `Version`), e.g. "the parent token still exists at the version read".
    Check {
        key: String,
        precondition: Precondition,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Check { key, .. } => key,
        }
    }

    pub fn precondition(&self) -> Precondition {
        match self {
            Op::Put { precondition, .. }
            | Op::Delete { precondition, .. }
            | Op::Check { precondition, .. } => *precondition,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    /// A precondition did not hold; nothing of the transaction was applied.
    #[error("conditional write failed on {key}")]
    Conflict { key: String },
    #[error("value for {key} is {size} bytes, over the storage limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid storage request: {0}")]
    Invalid(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Short name shown in `sys/seal-status` (`storage_type`).
    fn kind(&self) -> &'static str;

    /// The longest value at `key` that a read gets as cheaply as a small one (SQLite: without
    /// an overflow page). Callers that may store extra bytes in an item, to spare a second
    /// read, stay under it; a backend that does not say keeps no such copies.
    fn one_read_value_limit(&self, _key: &str) -> usize {
        0
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError>;

    /// The immediate children of `prefix`, sorted: `a` for `prefix + "a"`, `b/` when keys exist
    /// below `prefix + "b/"`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;

    /// Applies every op or none. At most [`MAX_TRANSACTION_OPS`] ops, each key at most once.
    async fn transact(&self, ops: Vec<Op>) -> Result<(), StorageError>;

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        precondition: Precondition,
    ) -> Result<(), StorageError> {
        self.transact(vec![Op::Put {
            key: key.to_owned(),
            value,
            precondition,
        }])
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.transact(vec![Op::Delete {
            key: key.to_owned(),
            precondition: Precondition::None,
        }])
        .await
    }
}

/// Checks what every backend must refuse, before it touches anything.
pub fn validate_transaction(ops: &[Op]) -> Result<(), StorageError> {
    if ops.is_empty() || ops.len() > MAX_TRANSACTION_OPS {
        return Err(StorageError::Invalid(format!(
            "a transaction holds 1 to {MAX_TRANSACTION_OPS} operations, got {}",
            ops.len()
        )));
    }
    let mut keys: Vec<&str> = ops.iter().map(Op::key).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(StorageError::Invalid(
            "a transaction names the same key twice".into(),
        ));
    }
    for op in ops {
        if op.key().is_empty() || op.key().ends_with('/') {
            return Err(StorageError::Invalid(format!(
                "keys are not empty and do not end with '/' (listings use that for folders): {:?}",
                op.key()
            )));
        }
        if matches!(
            op,
            Op::Check {
                precondition: Precondition::None,
                ..
            }
        ) {
            return Err(StorageError::Invalid(format!(
                "a check of {:?} needs a precondition",
                op.key()
            )));
        }
        if let Op::Put { key, value, .. } = op {
            if value.len() > MAX_VALUE_BYTES {
                return Err(StorageError::TooLarge {
                    key: key.clone(),
                    size: value.len(),
                    limit: MAX_VALUE_BYTES,
                });
            }
        }
    }
    Ok(())
}
