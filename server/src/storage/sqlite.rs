//! The embedded default backend: one SQLite file in WAL mode (rusqlite, bundled SQLite).
//!
//! Writes go to one writer thread that commits them in groups: it takes every transaction
//! waiting in its queue, applies each inside its own savepoint (a failed precondition rolls back
//! only that transaction), commits once with `synchronous=FULL`, and then answers each caller.
//! Concurrent writers so share one fsync instead of queueing for one each, and no write is
//! acknowledged before it is durable. Reads use a small pool of their own connections, so
//! readers never wait on the writer (WAL) or on each other. A thread checkpoints the WAL once a
//! second without blocking anyone, and the writer starts it over past its size limit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::item_cache::{ItemCache, Lookup, Settled};
use super::{validate_transaction, Entry, Op, Precondition, Storage, StorageError};

mod page_cache;

const READERS: usize = 4;
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long opening the database waits for another process to release it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most transactions one group commit takes.
const MAX_GROUP: usize = 256;
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The WAL's size past which the writer checkpoints all of it and starts it over. Under a
/// steady load some reader is always on the WAL, so SQLite never starts it over by itself and
/// it grows without bound (8.5 GB during bench/scale.sh's fill, before this limit).
const WAL_LIMIT_BYTES: u64 = 64 << 20;
/// Items kept in memory as stored ([`ItemCache`]): exact, because this process is the only
/// writer of the file (`unix-excl`).
const ITEM_CACHE_BYTES: usize = 4 << 20;

struct WriteRequest {
    ops: Vec<Op>,
    done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
}

/// A handle on one database file. Every handle on one file in this process shares one
/// [`Database`] (one writer thread, one reader pool, one item cache): that, with `unix-excl`
/// keeping other processes out, is what keeps the item cache exact where one process opens the
/// same file more than once (the tests that run several replicas on one database).
pub struct SqliteStorage {
    db: Arc<Database>,
}

/// The databases open in this process, by the file's identity (device and inode: a symlink or
/// a second path to the file is the same database; an open file's inode is not reused). An
/// entry stays until its database has closed (its threads joined, its connections closed), so
/// that the file is opened again only then.
static OPEN: Mutex<Vec<(FileId, std::sync::Weak<Database>)>> = Mutex::new(Vec::new());
/// Signalled when a database has closed and left [`OPEN`].
static CLOSED: std::sync::Condvar = std::sync::Condvar::new();

type FileId = (u64, u64);

/// The identity of the file at `path`, if there is one. It stats, never opens, the file: closing
/// a descriptor of a locked database file would drop this process's lock on it.
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

struct Database {
    /// Its entry in [`OPEN`].
    id: Option<FileId>,
    /// Dropped first when the database closes: it ends the writer's queue.
    writes: Option<std::sync::mpsc::Sender<WriteRequest>>,
    /// Dropped with `writes`: it ends the checkpoint thread.
    stop_checkpoints: Option<std::sync::mpsc::Sender<()>>,
    /// Joined when the database closes, so that no write queued before (whose caller gave up
    /// waiting) commits after the file is opened again with a new item cache.
    threads: Vec<std::thread::JoinHandle<()>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// The database's page size (fixed when it was created).
    page_size: usize,
    items: Arc<ItemCache>,
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.writes.take());
        drop(self.stop_checkpoints.take());
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a sqlite thread panicked");
            }
        }
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(id, db)| Some(*id) != self.id || db.strong_count() > 0);
        CLOSED.notify_all();
    }
}

fn unavailable(error: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("sqlite: {error}"))
}

/// Every connection uses SQLite's `unix-excl` VFS: the first one locks the file against other
/// processes, and the connections of this process then coordinate in memory (the WAL index on
/// the heap, no `-shm` file), instead of two `fcntl` calls per read and a `futex` whenever two
/// workers reached the shared-memory lock at once. One process per database is the design
/// anyway (the embedded store is single-node); a second one is refused at open.
fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StorageError> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if !page_cache::install() {
        WARNED.call_once(|| {
            tracing::warn!(
                "SQLite was initialised before kinko's page cache wrapper: commits scan the page cache"
            )
        });
    }
    // Each connection is used by one thread at a time (the writer, the checkpointer, a reader
    // taken from the pool), so SQLite's per-connection mutex would only cost.
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection =
        Connection::open_with_flags_and_vfs(path, flags, "unix-excl").map_err(unavailable)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    Ok(connection)
}

/// A pooled reader. Opened read-write but refusing writes: a read-only handle would lock the
/// file through `fcntl` on every transaction, which `unix-excl` spares only writable ones.
fn open_reader(path: &Path) -> Result<Connection, StorageError> {
    let connection = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    connection
        .execute_batch("PRAGMA query_only = ON")
        .map_err(unavailable)?;
    Ok(connection)
}

impl SqliteStorage {
    /// Opens (creating if needed, mode 0600) the database file, or shares this process's open
    /// database of that file.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        SqliteStorage::open_with(path, WAL_LIMIT_BYTES, ITEM_CACHE_BYTES)
    }

    fn open_with(
        path: &Path,
        wal_limit: u64,
        item_cache_bytes: usize,
    ) -> Result<SqliteStorage, StorageError> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = file_id(path) {
            loop {
                match open.iter().find(|(open_id, _)| *open_id == id) {
                    None => break,
                    Some((_, db)) => match db.upgrade() {
                        Some(db) => return Ok(SqliteStorage { db }),
                        // Closing: wait until it has.
                        None => open = CLOSED.wait(open).unwrap_or_else(|p| p.into_inner()),
                    },
                }
            }
        }
        // Created 0600 before SQLite opens it; SQLite gives its -wal file the database file's
        // mode, so it is private from its first byte too.
        create_private_file(path)?;
        let id = file_id(path);
        let db = Arc::new(Database::open(path, id, wal_limit, item_cache_bytes)?);
        if let Some(id) = id {
            open.push((id, Arc::downgrade(&db)));
        }
        Ok(SqliteStorage { db })
    }
}

impl Database {
    fn open(
        path: &Path,
        id: Option<FileId>,
        wal_limit: u64,
        item_cache_bytes: usize,
    ) -> Result<Database, StorageError> {
        let writer = open(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        // The first statement takes the process's lock on the file: if another process holds
        // it, say so after a short wait (a restart's old process may still be exiting).
        writer.busy_timeout(LOCK_WAIT).map_err(unavailable)?;
        writer
            .execute_batch("PRAGMA journal_mode = WAL")
            .map_err(|error| match error.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy) => StorageError::Unavailable(format!(
                    "sqlite: {} is in use by another process; one kinko server per database \
                     (the embedded store is single-node)",
                    path.display()
                )),
                _ => unavailable(error),
            })?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        // FULL keeps every acknowledged write through power loss; secrets are worth the fsync.
        // The writer's page cache is its own (`.cargo/config.toml`), sized for the pages a
        // steady write load walks again and again (the interior pages of growing tables): under
        // a token-creation load it read 13 pages per request from the file at SQLite's 2 MiB,
        // 4 at 16 MiB (strace; 10 when all connections shared one cache).
        writer
            .execute_batch(
                "PRAGMA synchronous = FULL;
                 PRAGMA cache_size = -16384;
                 PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE IF NOT EXISTS items (
                     key TEXT PRIMARY KEY NOT NULL,
                     value BLOB NOT NULL,
                     version INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 -- The last version of each deleted key, so a re-created key goes on from it.
                 CREATE TABLE IF NOT EXISTS tombstones (
                     key TEXT PRIMARY KEY NOT NULL,
                     version INTEGER NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(unavailable)?;
        // A WAL started over keeps its file, cut back to the limit: its blocks are written
        // again in place (see `WalFile::start_over_if_too_large`).
        writer
            .execute_batch(&format!("PRAGMA journal_size_limit = {wal_limit}"))
            .map_err(unavailable)?;
        let page_size: i64 = writer
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(unavailable)?;
        let readers = (0..READERS)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        let (writes, queue) = std::sync::mpsc::channel();
        let items = Arc::new(ItemCache::new(item_cache_bytes));
        let writer = std::thread::Builder::new()
            .name("kinko-sqlite-writer".into())
            .spawn({
                let wal = WalFile::new(path, wal_limit);
                let items = items.clone();
                move || write_loop(writer, queue, wal, &items)
            })
            .map_err(unavailable)?;
        let checkpointer = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        let checkpoints = std::thread::Builder::new()
            .name("kinko-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stopped))
            .map_err(unavailable)?;
        Ok(Database {
            id,
            writes: Some(writes),
            stop_checkpoints: Some(stop_checkpoints),
            threads: vec![writer, checkpoints],
            readers: Arc::new(Mutex::new(readers)),
            path: path.to_owned(),
            page_size: page_size as usize,
            items,
        })
    }

    /// Runs a read on the calling task. A point read or prefix scan of a WAL database in the
    /// page cache takes microseconds, less than handing it to another thread and back; under
    /// load those hand-offs, not the reads, made the latency tail (see bench/RESULTS.md).
    async fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let pooled = self.readers.lock().expect("reader pool poisoned").pop();
        let connection = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let result = work(&connection);
        let mut pool = self.readers.lock().expect("reader pool poisoned");
        if pool.len() < READERS {
            pool.push(connection);
        }
        result
    }
}

/// Creates the database file with mode 0600, or narrows an existing one (and the `-wal` and
/// `-shm` files an older version left with the umask's mode) to 0600. It runs before SQLite
/// locks the file: POSIX locks belong to the process, and closing *any* descriptor of the file
/// drops them all, so nothing else in this process opens the database file once it is locked
/// (`WalFile` only stats the WAL).
#[cfg(unix)]
fn create_private_file(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", path.display())))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(unavailable(format!("cannot chmod {}: {e}", file.display())))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_file(_: &Path) -> Result<(), StorageError> {
    Ok(())
}

/// The smallest string greater than every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[async_trait]
impl Storage for SqliteStorage {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// What an `items` record keeps in its leaf: SQLite's largest local payload of an index
    /// b-tree cell (`WITHOUT ROWID` tables are index b-trees), less the key and the record's
    /// header and version column.
    fn one_read_value_limit(&self, key: &str) -> usize {
        let max_local = (self.db.page_size - 12) * 64 / 255 - 23;
        max_local.saturating_sub(key.len() + 16)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let ticket = match self.db.items.get(key) {
            Lookup::Present(entry) => return Ok(Some(entry)),
            Lookup::Deleted => return Ok(None),
            Lookup::Unknown(ticket) => ticket,
        };
        let found = self
            .db
            .read(|c| {
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
            .await?;
        if let Some(entry) = &found {
            self.db.items.keep_read(ticket, key, entry);
        }
        Ok(found)
    }

    /// Reads the folder's own keys and one key of each sub-folder: past a sub-folder's first
    /// key the scan seeks beyond the sub-folder, so what lies deeper is never read, and each
    /// child is held once.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = prefix.to_owned();
        self.db
            .read(move |c| {
                let mut statement = c
                    .prepare_cached(
                        "SELECT key FROM items WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    )
                    .map_err(unavailable)?;
                let end = prefix_end(&prefix);
                let mut children = Vec::new();
                let mut from = prefix.clone();
                loop {
                    let mut past_folder = None;
                    let mut rows = statement.query(params![from, end]).map_err(unavailable)?;
                    while let Some(row) = rows.next().map_err(unavailable)? {
                        let key = row
                            .get_ref(0)
                            .and_then(|value| value.as_str().map_err(Into::into))
                            .map_err(unavailable)?;
                        let Some(rest) = key.strip_prefix(prefix.as_str()) else {
                            continue;
                        };
                        if let Some(slash) = rest.find('/') {
                            children.push(rest[..=slash].to_owned());
                            // Every key below `name/` sorts before `name0` ('0' follows '/').
                            past_folder = Some(format!("{prefix}{}0", &rest[..slash]));
                            break;
                        }
                        if !rest.is_empty() {
                            children.push(rest.to_owned());
                        }
                    }
                    drop(rows);
                    match past_folder {
                        Some(next) => from = next,
                        None => return Ok(children),
                    }
                }
            })
            .await
    }

    async fn transact(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        validate_transaction(&ops)?;
        let (done, answer) = tokio::sync::oneshot::channel();
        let writes = self.db.writes.as_ref().expect("open until dropped");
        writes.send(WriteRequest { ops, done }).map_err(|_| {
            StorageError::Unavailable("sqlite: the writer thread has stopped".into())
        })?;
        answer.await.map_err(|_| {
            StorageError::Unavailable("sqlite: the writer thread has stopped".into())
        })?
    }
}

/// Copies the WAL back into the database once a second, off the commit path: with SQLite's
/// automatic checkpoint, the commit that crosses 1000 WAL pages pays for the whole copy, and
/// under a steady write load those commits were the latency tail.
fn checkpoint_loop(connection: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        // PASSIVE never waits for readers or the writer; what it cannot copy now waits a second.
        if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "sqlite checkpoint failed; will retry");
        }
    }
}

/// The database's `-wal` file and the size it may not stay past.
struct WalFile {
    path: PathBuf,
    limit: u64,
}

impl WalFile {
    fn new(database: &Path, limit: u64) -> WalFile {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        WalFile {
            path: path.into(),
            limit,
        }
    }

    /// Past its limit, copies every frame into the database and starts the WAL over once no
    /// reader is still on it (new readers read the database file once it holds every frame).
    /// Up to twice the limit it does not wait for readers, so writes are not held up behind a
    /// long LIST, and a busy WAL is tried again after the next commit; past that, readers that
    /// overlap without a pause could keep it busy for ever, so it waits for them (and the
    /// writes wait with it). The checkpoint thread has copied all but the last second's frames
    /// already, so the copy itself is short.
    ///
    /// Started over, not truncated: the next frames overwrite the file's blocks from the start,
    /// and the first commit after each start-over cuts the file back to the limit
    /// (`journal_size_limit`: only the overshoot, usually about one group). Truncating it to
    /// nothing cost the `ftruncate` of up to twice the limit while every write waited, and then
    /// each commit's fsync allocated blocks again: KV writes were 14-22% slower with a 7x
    /// higher p99 (bench/RESULTS.md, 2026-12-07 evening).
    fn start_over_if_too_large(&self, connection: &Connection) {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size <= self.limit {
            return;
        }
        let wait = if size > 2 * self.limit {
            BUSY_TIMEOUT
        } else {
            std::time::Duration::ZERO
        };
        let started_over = connection.busy_timeout(wait).and_then(|()| {
            connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        if let Err(error) = connection.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(%error, "sqlite busy timeout not restored");
        }
        match started_over {
            Ok(0) => tracing::debug!(
                size,
                "sqlite WAL checkpointed; the next commit starts it over"
            ),
            Ok(_) => tracing::debug!(size, "sqlite WAL past its limit: a reader is still on it"),
            Err(error) => tracing::warn!(%error, size, "sqlite WAL start-over failed"),
        }
    }
}

/// Runs until every `SqliteStorage` handle is dropped.
fn write_loop(
    mut connection: Connection,
    queue: std::sync::mpsc::Receiver<WriteRequest>,
    wal: WalFile,
    items: &ItemCache,
) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let keys = || {
            group
                .iter()
                .flat_map(|request| request.ops.iter().map(Op::key))
        };
        items.pending(keys());
        let results = commit_group(&mut connection, &group);
        // Each key's state after the whole group, settled once: reads see the group's
        // outcome, never a state between two of its transactions.
        let mut settled: std::collections::HashMap<&str, Settled> =
            keys().map(|key| (key, None)).collect();
        for change in results.iter().flatten().flatten() {
            settled.insert(change.key, Some((change.version, change.value)));
        }
        items.settle(settled);
        let outcomes: Vec<_> = results.into_iter().map(|r| r.map(drop)).collect();
        for (request, outcome) in group.into_iter().zip(outcomes) {
            // The receiver may be gone (the request timed out): the write stands either way.
            let _ = request.done.send(outcome);
        }
        wal.start_over_if_too_large(&connection);
    }
}

/// What a committed op did to its key: its new version, and its value (`None`: deleted, the
/// version being its last).
struct Change<'a> {
    key: &'a str,
    version: u64,
    value: Option<&'a [u8]>,
}

/// Each request's outcome, with what it changed if it was applied.
fn commit_group<'g>(
    connection: &mut Connection,
    group: &'g [WriteRequest],
) -> Vec<Result<Vec<Change<'g>>, StorageError>> {
    let all_fail =
        |error: &dyn std::fmt::Display| group.iter().map(|_| Err(unavailable(error))).collect();
    let mut tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => return all_fail(&error),
    };
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let result = tx.savepoint().map_err(unavailable).and_then(|savepoint| {
            let changes = apply(&savepoint, &request.ops)?;
            savepoint.commit().map_err(unavailable)?;
            Ok(changes)
        });
        // A savepoint dropped without commit rolls back only its own transaction; but on some
        // errors (I/O, a full disk, memory) SQLite rolls back the whole transaction itself.
        // Then nothing of the group is committed, and the next savepoint would begin (and its
        // release commit) a transaction of its own: every request fails.
        if let Err(error) = &result {
            if tx.is_autocommit() {
                return all_fail(&format!("the transaction was rolled back: {error}"));
            }
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(error) => all_fail(&error),
    }
}

/// Checks each precondition and applies the ops, inside the caller's savepoint.
fn apply<'o>(connection: &Connection, ops: &'o [Op]) -> Result<Vec<Change<'o>>, StorageError> {
    let mut changes = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        let current: Option<i64> = connection
            .prepare_cached("SELECT version FROM items WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |row| row.get(0)).optional())
            .map_err(unavailable)?;
        let holds = match op.precondition() {
            Precondition::None => true,
            Precondition::Absent => current.is_none(),
            Precondition::Version(v) => current == Some(v as i64),
        };
        if !holds {
            return Err(StorageError::Conflict {
                key: key.to_owned(),
            });
        }
        match op {
            Op::Put { key, value, .. } => {
                let last = match current {
                    Some(version) => version,
                    None => connection
                        .prepare_cached("DELETE FROM tombstones WHERE key = ?1 RETURNING version")
                        .and_then(|mut s| s.query_row(params![key], |row| row.get(0)).optional())
                        .map_err(unavailable)?
                        .unwrap_or(0),
                };
                connection
                    .prepare_cached(
                        "INSERT OR REPLACE INTO items (key, value, version) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![key, value, last + 1]))
                    .map_err(unavailable)?;
                changes.push(Change {
                    key,
                    version: (last + 1) as u64,
                    value: Some(value),
                });
            }
            Op::Delete { key, .. } => {
                if let Some(version) = current {
                    connection
                        .prepare_cached("DELETE FROM items WHERE key = ?1")
                        .and_then(|mut s| s.execute(params![key]))
                        .and_then(|_| {
                            connection
                                .prepare_cached(
                                    "INSERT OR REPLACE INTO tombstones (key, version) VALUES (?1, ?2)",
                                )
                                .and_then(|mut s| s.execute(params![key, version]))
                        })
                        .map_err(unavailable)?;
                    changes.push(Change {
                        key,
                        version: version as u64,
                        value: None,
                    });
                }
            }
            Op::Check { .. } => {}
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's own connection to the file, opened as the storage opens its connections (the
    /// page cache wrapper installed first), so that no test initialises SQLite without it.
    fn direct(path: &Path) -> Connection {
        page_cache::install();
        Connection::open(path).unwrap()
    }

    /// SQLite through the page cache wrapper, as the writer uses it: random writes that grow
    /// and rebalance the tree, in transactions of which some grow the file in a savepoint and
    /// roll it back. Rebalances parked pages, commits with nothing to drop skipped the truncate,
    /// each commit after a rolled-back growth truncated, and afterwards every key reads back its
    /// last value and SQLite finds the file whole.
    #[test]
    fn sqlite_stays_whole_through_the_page_cache_wrapper() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        drop(SqliteStorage::open(&path).unwrap());
        assert!(
            page_cache::install(),
            "SQLite was initialised before the wrapper"
        );
        // Counted on this thread: the connection is used here.
        let connection = open(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        connection
            .execute_batch("PRAGMA cache_size = -16384")
            .unwrap();
        let before = page_cache::counts::get();
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut expected = std::collections::BTreeMap::new();
        let mut grown_rounds = 0;
        let put = |key: &str, value: &[u8]| {
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO items (key, value, version) VALUES (?1, ?2, 1)",
                )
                .and_then(|mut s| s.execute(params![key, value]))
                .unwrap();
        };
        for round in 0..300 {
            connection.execute_batch("BEGIN IMMEDIATE").unwrap();
            for _ in 0..16 {
                let key = format!("k/{}", rng.gen_range(0..4000));
                let value = format!("{round}-{key}")
                    .repeat(rng.gen_range(10..40))
                    .into_bytes();
                put(&key, &value);
                expected.insert(key, value);
            }
            let mut grew = false;
            if round % 4 == 3 {
                let pages = || -> i64 {
                    connection
                        .query_row("PRAGMA page_count", [], |r| r.get(0))
                        .unwrap()
                };
                let before_growth = pages();
                connection.execute_batch("SAVEPOINT grown").unwrap();
                for n in 0..8 {
                    put(&format!("grown/{round}/{n}"), &[b'g'; 900]);
                }
                grew = pages() > before_growth;
                connection
                    .execute_batch("ROLLBACK TO grown; RELEASE grown")
                    .unwrap();
            }
            let passed = page_cache::counts::get().passed;
            connection.execute_batch("COMMIT").unwrap();
            if grew {
                grown_rounds += 1;
                assert!(
                    page_cache::counts::get().passed > passed,
                    "round {round}: the rolled-back growth was not truncated"
                );
            }
        }
        assert!(grown_rounds > 0, "no savepoint grew the file");
        let counts = page_cache::counts::get();
        assert!(counts.parked > before.parked, "no rebalance parked a page");
        assert!(
            counts.skipped > before.skipped,
            "no commit skipped the truncate"
        );
        let check: String = connection
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(connection);
        let direct = direct(&path);
        let grown: i64 = direct
            .query_row(
                "SELECT count(*) FROM items WHERE key LIKE 'grown/%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(grown, 0, "a rolled-back key is there");
        let stored: std::collections::BTreeMap<String, Vec<u8>> = direct
            .prepare("SELECT key, value FROM items")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, expected);
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("kinko.db")).unwrap();
        super::super::conformance::run_all(Arc::new(storage)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_transaction_in_a_group_leaves_the_others_applied() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("kinko.db")).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let storage = storage.clone();
                tokio::spawn(async move {
                    let valid = i % 2 == 0;
                    let precondition = if valid {
                        Precondition::Absent
                    } else {
                        Precondition::Version(99)
                    };
                    let ops = vec![
                        Op::Put {
                            key: format!("a/{i}"),
                            value: vec![1],
                            precondition,
                        },
                        Op::Put {
                            key: format!("b/{i}"),
                            value: vec![2],
                            precondition: Precondition::None,
                        },
                    ];
                    (valid, storage.transact(ops).await)
                })
            })
            .collect();
        for task in tasks {
            let (valid, result) = task.await.unwrap();
            assert_eq!(result.is_ok(), valid, "{result:?}");
        }
        for i in 0..200 {
            let present = storage.get(&format!("b/{i}")).await.unwrap().is_some();
            assert_eq!(
                present,
                i % 2 == 0,
                "transaction {i} applied all or nothing"
            );
        }
    }

    /// `.cargo/config.toml` builds SQLite without the global page-cache group (a futex on
    /// every other read when two workers met on it); a build that lost the flags fails here.
    #[test]
    fn sqlite_is_built_with_per_connection_page_caches() {
        page_cache::install();
        let connection = Connection::open_in_memory().unwrap();
        let options: Vec<String> = connection
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// A value at the limit stays in its leaf; one longer than the leaf's local payload
    /// spills into an overflow page (which every read and write of it then touches too).
    #[tokio::test]
    async fn a_value_within_the_one_read_limit_stays_in_its_leaf() {
        let overflow_pages = |path: &Path| -> i64 {
            direct(path)
                .query_row(
                    "SELECT count(*) FROM dbstat WHERE name = 'items' AND pagetype = 'overflow'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        // Long enough that the record header spends two bytes on the key's type, and written
        // past version 127 so that the version takes two bytes too.
        let key = "logical/0123456789abcdef/metadata/team/service/environment/db";
        assert!(key.len() >= 58);
        let limit = SqliteStorage::open(&path)
            .unwrap()
            .one_read_value_limit(key);
        // 4 KiB pages: an index b-tree cell keeps 1002 bytes of payload locally.
        assert_eq!(limit + key.len() + 16, 1002);
        let write = |len: usize, times: usize| {
            let path = path.clone();
            async move {
                let storage = SqliteStorage::open(&path).unwrap();
                for _ in 0..times {
                    storage
                        .put(key, vec![7; len], Precondition::None)
                        .await
                        .unwrap();
                }
            }
        };
        write(limit, 130).await;
        assert_eq!(overflow_pages(&path), 0, "{limit} bytes spilled");
        // And the limit is tight: a value at most 16 bytes longer (the record's header and
        // version, allowed for at their largest) spills.
        let mut longest_in_leaf = limit;
        while overflow_pages(&path) == 0 {
            assert!(
                longest_in_leaf <= limit + 16,
                "{longest_in_leaf} bytes still fit"
            );
            longest_in_leaf += 1;
            write(longest_in_leaf, 1).await;
        }
    }

    /// The item cache against SQLite itself, under racing readers and writers and a budget so
    /// small that it keeps starting over: every acknowledged write is what its writer reads
    /// next, no reader ever sees a key go back to an older version, writes that change nothing
    /// (a check, a failed precondition, deleting what is gone) change nothing, and at the end
    /// every key reads as SQLite has it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cached_items_are_exactly_what_sqlite_holds_while_writes_race_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        // Room for five of the six keys: it starts over whenever all six are kept.
        let storage = Arc::new(SqliteStorage::open_with(&path, WAL_LIMIT_BYTES, 400).unwrap());
        let keys: Vec<String> = (0..6).map(|k| format!("k/{k}")).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (storage, stop, keys) = (storage.clone(), stop.clone(), keys.clone());
                tokio::spawn(async move {
                    let mut seen = vec![0u64; keys.len()];
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for (i, key) in keys.iter().enumerate() {
                            if let Some(entry) = storage.get(key).await.unwrap() {
                                assert!(entry.version >= seen[i], "{key} went back in time");
                                assert_eq!(entry.value, entry.version.to_be_bytes());
                                seen[i] = entry.version;
                            }
                            reads += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    reads
                })
            })
            .collect();
        let writers: Vec<_> = keys
            .iter()
            .cloned()
            .map(|key| {
                let storage = storage.clone();
                tokio::spawn(async move {
                    for round in 1..=150u64 {
                        if round % 10 == 0 {
                            storage.delete(&key).await.unwrap();
                            assert_eq!(storage.get(&key).await.unwrap(), None, "{key} deleted");
                            // Deleting what is gone changes nothing.
                            storage.delete(&key).await.unwrap();
                            assert_eq!(storage.get(&key).await.unwrap(), None, "{key} deleted");
                            continue;
                        }
                        let current = storage.get(&key).await.unwrap().map(|e| e.version);
                        if round % 3 == 0 {
                            // A check that holds and one that fails: neither changes the key.
                            let check = |precondition| {
                                vec![Op::Check {
                                    key: key.clone(),
                                    precondition,
                                }]
                            };
                            let holds = current.map_or(Precondition::Absent, Precondition::Version);
                            storage.transact(check(holds)).await.unwrap();
                            let fails = Precondition::Version(current.unwrap_or(0) + 1000);
                            assert!(matches!(
                                storage.transact(check(fails)).await,
                                Err(StorageError::Conflict { .. })
                            ));
                            let after = storage.get(&key).await.unwrap().map(|e| e.version);
                            assert_eq!(after, current, "{key} unchanged");
                        }
                        // A value that names its own version (versions go on past a delete).
                        let next = match current {
                            Some(version) => version + 1,
                            None => round - round / 10,
                        };
                        storage
                            .put(&key, next.to_be_bytes().to_vec(), Precondition::None)
                            .await
                            .unwrap();
                        let read = storage.get(&key).await.unwrap().expect("just written");
                        assert_eq!(read.version, next, "{key}: read your write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.unwrap() > 0);
        }
        let direct = direct(&path);
        for key in &keys {
            let stored: Option<(Vec<u8>, i64)> = direct
                .query_row(
                    "SELECT value, version FROM items WHERE key = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .unwrap();
            let cached = storage.get(key).await.unwrap();
            assert_eq!(cached.map(|e| (e.value, e.version as i64)), stored, "{key}");
        }
        assert!(storage.db.items.generation() > 10, "the cache started over");
    }

    /// Two paths to one file are one database (one writer, one item cache), and opening it
    /// again keeps the process's lock on the file: nothing opens (and so, closing, unlocks) the
    /// file again. A closed one is unlocked, and opened afresh.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn every_handle_on_one_file_shares_one_database_and_its_lock() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        let first = SqliteStorage::open(&path).unwrap();
        first
            .put("a", b"1".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        let locked = || {
            let pid = std::process::id().to_string();
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.get(1) == Some(&"POSIX")
                        && fields.get(4) == Some(&pid.as_str())
                        && fields
                            .get(5)
                            .is_some_and(|id| id.ends_with(&format!(":{inode}")))
                })
        };
        assert!(locked(), "the first handle locks the file");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let second = SqliteStorage::open(&link).unwrap();
        assert!(locked(), "the second open dropped the lock");
        assert!(Arc::ptr_eq(&first.db, &second.db));
        let other = SqliteStorage::open(&dir.path().join("other.db")).unwrap();
        assert!(!Arc::ptr_eq(&first.db, &other.db));
        assert_eq!(second.get("a").await.unwrap().map(|e| e.version), Some(1));
        second
            .put("b", b"1".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(first.get("b").await.unwrap().map(|e| e.version), Some(1));
        let weak = Arc::downgrade(&first.db);
        drop((first, second));
        assert!(weak.upgrade().is_none());
        assert!(!locked(), "closed, the file is unlocked");
        let reopened = SqliteStorage::open(&path).unwrap();
        assert_eq!(reopened.get("b").await.unwrap().map(|e| e.version), Some(1));
    }

    /// Some errors (I/O, a full disk; here a trigger's `RAISE(ROLLBACK)`) make SQLite roll back
    /// the whole transaction of a group commit: then no request of the group is applied, and
    /// each hears so (a savepoint after it would have begun and committed a transaction of its
    /// own: the request after the failing one was applied and reported failed).
    #[test]
    fn a_group_whose_transaction_sqlite_rolled_back_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        drop(SqliteStorage::open(&path).unwrap());
        let mut connection = direct(&path);
        connection
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON items WHEN NEW.key = 'boom'
                 BEGIN SELECT RAISE(ROLLBACK, 'boom'); END;",
            )
            .unwrap();
        let group: Vec<WriteRequest> = ["a", "boom", "c"]
            .into_iter()
            .map(|key| WriteRequest {
                ops: vec![Op::Put {
                    key: key.into(),
                    value: vec![1],
                    precondition: Precondition::None,
                }],
                done: tokio::sync::oneshot::channel().0,
            })
            .collect();
        let results = commit_group(&mut connection, &group);
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, [true, true, true]);
        let stored: i64 = connection
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
        assert!(connection.is_autocommit());
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
            for suffix in ["", "-wal"] {
                let file = format!("{}{suffix}", path.display());
                assert_eq!(
                    std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                    0o600,
                    "{file}"
                );
            }
            // The WAL index lives in the process's memory (`unix-excl`), never in a file.
            assert!(!std::path::Path::new(&format!("{}-shm", path.display())).exists());
        }
    }

    /// Under a steady load some reader is always on the WAL, so SQLite never starts it over by
    /// itself: before the writer started it over past its limit, it grew to 8.5 GB during
    /// bench/scale.sh's fill (and to 7 MB here). Started over, it keeps its file at or above
    /// the limit (not truncated to nothing, whose `ftruncate` and block allocations made every
    /// write slower: with `TRUNCATE` the round after a truncation finds it far below).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_while_reads_never_stop() {
        const LIMIT: u64 = 256 << 10;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kinko.db");
        let storage = Arc::new(SqliteStorage::open_with(&path, LIMIT, ITEM_CACHE_BYTES).unwrap());
        let wal = WalFile::new(&path, LIMIT).path;
        for i in 0..20 {
            let key = format!("folder/{i}");
            storage
                .put(&key, vec![1; 64], Precondition::None)
                .await
                .unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Point reads without a pause, and LISTs that overlap them.
        let readers: Vec<_> = (0..3)
            .map(|reader| {
                let (storage, stop) = (storage.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if reader == 0 {
                            assert_eq!(storage.list("folder/").await.unwrap().len(), 20);
                        } else {
                            storage.get("k/1").await.unwrap();
                        }
                        reads += 1;
                        tokio::task::yield_now().await;
                    }
                    reads
                })
            })
            .collect();
        let (mut largest, mut smallest_after_limit) = (0, u64::MAX);
        for round in 0..60 {
            let writes: Vec<_> = (0..16)
                .map(|i| {
                    let storage = storage.clone();
                    tokio::spawn(async move {
                        let key = format!("k/{}", round * 16 + i);
                        storage.put(&key, vec![7; 2048], Precondition::None).await
                    })
                })
                .collect();
            for write in writes {
                write.await.unwrap().unwrap();
            }
            let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
            largest = largest.max(size);
            if largest >= LIMIT {
                smallest_after_limit = smallest_after_limit.min(size);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.unwrap() > 0, "the readers ran");
        }
        // One group's frames may land past twice the limit before the writer waits it out.
        let one_group = 16 * 2 * 4120;
        assert!(
            largest <= 2 * LIMIT + one_group,
            "the WAL reached {largest} bytes, past its limit of {LIMIT}"
        );
        assert!(
            smallest_after_limit >= LIMIT,
            "the WAL was cut to {smallest_after_limit} bytes after reaching {LIMIT}"
        );
        assert!(largest > LIMIT, "the WAL never reached its limit");
        assert_eq!(
            storage.list("k/").await.unwrap().len(),
            960,
            "no write lost"
        );
    }
}
