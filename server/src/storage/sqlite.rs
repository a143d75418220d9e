//! The embedded default backend: one SQLite file in WAL mode (rusqlite, bundled SQLite).
//!
//! Writes go through one connection in `BEGIN IMMEDIATE` transactions; reads use a small pool
//! of their own connections, so readers never wait on the writer (WAL) or on each other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{
    immediate_children, validate_transaction, Entry, Op, Precondition, Storage, StorageError,
};

const READERS: usize = 4;

pub struct SqliteStorage {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

fn unavailable(error: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("sqlite: {error}"))
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StorageError> {
    let connection = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(unavailable)?;
    Ok(connection)
}

impl SqliteStorage {
    /// Opens (creating if needed, mode 0600) the database file.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let writer = open(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        restrict_permissions(path);
        // FULL keeps every acknowledged write through power loss; secrets are worth the fsync.
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS items (
                     key TEXT PRIMARY KEY NOT NULL,
                     value BLOB NOT NULL,
                     version INTEGER NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(unavailable)?;
        let readers = (0..READERS)
            .map(|_| open(path, OpenFlags::SQLITE_OPEN_READ_ONLY))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteStorage {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Mutex::new(readers)),
            path: path.to_owned(),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().expect("reader pool poisoned").pop();
            let connection = match pooled {
                Some(c) => c,
                None => open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
            };
            let result = work(&connection);
            let mut pool = readers.lock().expect("reader pool poisoned");
            if pool.len() < READERS {
                pool.push(connection);
            }
            result
        })
        .await
        .map_err(unavailable)?
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) {}

/// The smallest string greater than every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[async_trait]
impl Storage for SqliteStorage {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let key = key.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT value, version FROM items WHERE key = ?1")
                .and_then(|mut s| {
                    s.query_row(params![key], |row| {
                        Ok(Entry {
                            value: row.get(0)?,
                            version: row.get::<_, i64>(1)? as u64,
                        })
                    })
                    .optional()
                })
                .map_err(unavailable)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = prefix.to_owned();
        self.read(move |c| {
            let mut statement = c
                .prepare_cached("SELECT key FROM items WHERE key >= ?1 AND key < ?2 ORDER BY key")
                .map_err(unavailable)?;
            let keys = statement
                .query_map(params![prefix, prefix_end(&prefix)], |row| {
                    row.get::<_, String>(0)
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(unavailable)?;
            Ok(immediate_children(&prefix, keys.iter().map(String::as_str)))
        })
        .await
    }

    async fn transact(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        validate_transaction(&ops)?;
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = writer.lock().expect("writer poisoned");
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            for op in &ops {
                let key = op.key();
                let current: Option<i64> = tx
                    .prepare_cached("SELECT version FROM items WHERE key = ?1")
                    .and_then(|mut s| s.query_row(params![key], |row| row.get(0)).optional())
                    .map_err(unavailable)?;
                let precondition = match op {
                    Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
                };
                let holds = match precondition {
                    Precondition::None => true,
                    Precondition::Absent => current.is_none(),
                    Precondition::Version(v) => current == Some(v as i64),
                };
                if !holds {
                    return Err(StorageError::Conflict { key: key.to_owned() });
                }
                match op {
                    Op::Put { key, value, .. } => tx
                        .prepare_cached("INSERT OR REPLACE INTO items (key, value, version) VALUES (?1, ?2, ?3)")
                        .and_then(|mut s| s.execute(params![key, value, current.unwrap_or(0) + 1]))
                        .map_err(unavailable)?,
                    Op::Delete { key, .. } => tx
                        .prepare_cached("DELETE FROM items WHERE key = ?1")
                        .and_then(|mut s| s.execute(params![key]))
                        .map_err(unavailable)?,
                };
            }
            tx.commit().map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("kinko.db")).unwrap();
        super::super::conformance::run_all(Arc::new(storage)).await;
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        {
            let storage = SqliteStorage::open(&path).unwrap();
            storage
                .put("a", b"1".to_vec(), Precondition::Absent)
                .await
                .unwrap();
        }
        let storage = SqliteStorage::open(&path).unwrap();
        assert_eq!(
            storage.get("a").await.unwrap(),
            Some(Entry {
                value: b"1".to_vec(),
                version: 1
            })
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
