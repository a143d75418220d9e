//! Audit devices (I/O): the `file` and `stdout` sinks, the device table under the barrier
//! (`core/audit`, re-read like the mount tables so every replica audits), and the fail-closed
//! write: an entry counts as recorded when at least one enabled device wrote it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::Salt;
use crate::encrypted::{EncryptedStorage, Write};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::retry::{on_conflict, settle};
use crate::secret::Key256;
use crate::storage::Precondition;

pub const TABLE_PATH: &str = "core/audit";

/// Bumped by SIGHUP: every file device reopens its path before its next write (logrotate
/// renames the file, then signals).
static REOPEN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every file device to reopen its file (called on SIGHUP).
pub fn reopen_files() {
    REOPEN_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// One enabled device as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `name/` form.
    pub path: String,
    /// `file` or `stdout`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub options: BTreeMap<String, String>,
    /// The HMAC salt, hex (the table is under the barrier).
    salt: String,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

enum Sink {
    File(FileSink),
    Stdout,
}

/// A file device's writer: one thread per device owns the file and writes the queued lines of
/// concurrent requests with one `write` per batch (fewer syscalls under load), then tells each
/// request whether its line is written. A line nobody waits for yet (a read's request entry)
/// is queued without waking the thread: it goes out with the next line someone waits for, or
/// within [`FLUSH_EVERY`]. The thread ends when the device is dropped.
struct FileSink {
    queue: Arc<Queue>,
}

struct Queue {
    state: std::sync::Mutex<QueueState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    lines: Vec<Pending>,
    stopped: bool,
}

struct Pending {
    line: Vec<u8>,
    written: tokio::sync::oneshot::Sender<Result<(), std::io::ErrorKind>>,
}

/// The longest a queued line nobody waits for stays unwritten.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread's file: the open file and the reopen generation it was opened at.
struct OpenFile {
    path: PathBuf,
    mode: u32,
    file: Option<std::fs::File>,
    generation: u64,
}

impl FileSink {
    /// Opens for appending a regular file (created with `mode`, and set to it): not through a
    /// symlink, and never blocking on a FIFO.
    fn open(path: &std::path::Path, mode: u32) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        if metadata.permissions().mode() & 0o777 != mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(file)
    }

    fn start(open: OpenFile) -> std::io::Result<FileSink> {
        let queue = Arc::new(Queue {
            state: std::sync::Mutex::new(QueueState::default()),
            ready: std::sync::Condvar::new(),
        });
        let writer_queue = queue.clone();
        std::thread::Builder::new()
            .name("kinko-audit".into())
            .spawn(move || FileSink::writer(open, &writer_queue))?;
        Ok(FileSink { queue })
    }

    fn writer(mut open: OpenFile, queue: &Queue) {
        let mut buffer = Vec::new();
        loop {
            let batch = {
                let mut state = queue.state.lock().expect("audit queue poisoned");
                while state.lines.is_empty() && !state.stopped {
                    state = queue
                        .ready
                        .wait_timeout(state, FLUSH_EVERY)
                        .expect("audit queue poisoned")
                        .0;
                }
                if state.lines.is_empty() {
                    return; // stopped, and nothing left
                }
                std::mem::take(&mut state.lines)
            };
            buffer.clear();
            for pending in &batch {
                buffer.extend_from_slice(&pending.line);
            }
            let result = open.write(&buffer).map_err(|e| e.kind());
            for pending in batch {
                let _ = pending.written.send(result);
            }
        }
    }

    /// Queues `line`; with `wake`, the writer writes it (and whatever is queued) now.
    fn submit(&self, line: Vec<u8>, wake: bool) -> Written {
        let (written, done) = tokio::sync::oneshot::channel();
        let mut state = self.queue.state.lock().expect("audit queue poisoned");
        state.lines.push(Pending { line, written });
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
        Written::Waiting(done)
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.queue
            .state
            .lock()
            .expect("audit queue poisoned")
            .stopped = true;
        self.queue.ready.notify_one();
    }
}

/// One device's answer for one line: known at once (stdout) or when its writer has written.
enum Written {
    Done(std::io::Result<()>),
    Waiting(tokio::sync::oneshot::Receiver<Result<(), std::io::ErrorKind>>),
}

impl Written {
    async fn result(self) -> std::io::Result<()> {
        match self {
            Written::Done(result) => result,
            Written::Waiting(done) => match done.await {
                Ok(result) => result.map_err(std::io::Error::from),
                Err(_) => Err(std::io::Error::other("the audit writer has stopped")),
            },
        }
    }
}

impl OpenFile {
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let generation = REOPEN_GENERATION.load(Ordering::Relaxed);
        if self.file.is_none() || self.generation != generation {
            // A failed reopen leaves no file: the next write tries again.
            self.file = None;
            self.generation = generation;
            self.file = Some(FileSink::open(&self.path, self.mode)?);
        }
        let file = self.file.as_mut().expect("opened above");
        // Whole lines in one write: with O_APPEND, lines never interleave.
        file.write_all(lines)
    }
}

/// An enabled device, ready to write.
pub struct Device {
    pub config: DeviceConfig,
    pub salt: Salt,
    sink: Sink,
}

/// Options a device takes; anything else (Vault's `log_raw`, `hmac_accessor`, `format`, …) is
/// refused rather than silently ignored.
const KNOWN_OPTIONS: [&str; 2] = ["file_path", "mode"];

impl Device {
    /// Opens a device; with `must_open`, a file that cannot be opened now is an error (enable),
    /// else the device is kept and retries on its next write (a replica loading the table must
    /// fail its requests closed, not drop the device).
    fn open(config: DeviceConfig, must_open: bool) -> Result<Device> {
        if let Some(unknown) = config
            .options
            .keys()
            .find(|k| !KNOWN_OPTIONS.contains(&k.as_str()))
        {
            return Err(Error::BadRequest(format!(
                "audit device option {unknown:?} is not supported: kinko takes file_path and mode"
            )));
        }
        let key = hex::decode(&config.salt)
            .ok()
            .and_then(|bytes| Key256::from_slice(&bytes))
            .ok_or_else(|| Error::Internal(format!("audit device {}: bad salt", config.path)))?;
        let sink = match config.kind.as_str() {
            "stdout" => Sink::Stdout,
            "file" => {
                let path = config.options.get("file_path").ok_or_else(|| {
                    Error::bad_request("a file audit device needs options.file_path")
                })?;
                if path == "stdout" {
                    Sink::Stdout
                } else {
                    let mode = match config.options.get("mode") {
                        None => 0o600,
                        Some(mode) => u32::from_str_radix(mode, 8)
                            .ok()
                            .filter(|m| *m <= 0o777)
                            .ok_or_else(|| {
                                Error::bad_request("options.mode must be octal, e.g. \"0600\"")
                            })?,
                    };
                    let path = PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(Error::bad_request("options.file_path must be absolute"));
                    }
                    let file = match FileSink::open(&path, mode) {
                        Ok(file) => Some(file),
                        Err(error) if must_open => {
                            return Err(Error::BadRequest(format!(
                                "cannot open the audit file {}: {error}",
                                path.display()
                            )))
                        }
                        Err(error) => {
                            tracing::error!(path = %path.display(), %error,
                                "cannot open an audit file; requests fail until it can be written");
                            None
                        }
                    };
                    let open = OpenFile {
                        path,
                        mode,
                        file,
                        generation: REOPEN_GENERATION.load(Ordering::Relaxed),
                    };
                    Sink::File(FileSink::start(open).map_err(|e| {
                        Error::Internal(format!("cannot start the audit writer: {e}"))
                    })?)
                }
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown audit device type {other:?}: kinko has \"file\" and \"stdout\""
                )))
            }
        };
        Ok(Device {
            salt: Salt::new(key),
            sink,
            config,
        })
    }

    fn submit(&self, line: Vec<u8>, wake: bool) -> Written {
        match &self.sink {
            Sink::File(file) => file.submit(line, wake),
            Sink::Stdout => Written::Done(std::io::stdout().lock().write_all(&line)),
        }
    }
}

/// The enabled devices of this replica.
#[derive(Default)]
pub struct AuditDevices {
    devices: RwLock<Arc<Vec<Arc<Device>>>>,
    /// Serialises reload, enable and disable, so the refresh never swaps in a list older than
    /// a change made here.
    changes: tokio::sync::Mutex<()>,
}

impl AuditDevices {
    pub async fn load(store: &EncryptedStorage) -> Result<AuditDevices> {
        let devices = AuditDevices::default();
        devices.reload(store).await?;
        Ok(devices)
    }

    /// The devices now: a request writes both its entries to the same set.
    pub fn current(&self) -> Arc<Vec<Arc<Device>>> {
        self.devices.read().expect("audit table poisoned").clone()
    }

    /// Re-reads the table; devices whose configuration is unchanged are kept open.
    pub async fn reload(&self, store: &EncryptedStorage) -> Result<()> {
        let _changing = self.changes.lock().await;
        let (configs, _) = stored(store).await?;
        let now = self.current();
        let mut next = Vec::with_capacity(configs.len());
        for config in configs {
            match now.iter().find(|d| d.config == config) {
                Some(device) => next.push(device.clone()),
                None => match Device::open(config, false) {
                    Ok(device) => next.push(Arc::new(device)),
                    // Only a corrupt entry (a bad salt) lands here: fail closed on it too.
                    Err(error) => return Err(error),
                },
            }
        }
        *self.devices.write().expect("audit table poisoned") = Arc::new(next);
        Ok(())
    }

    pub async fn enable(
        &self,
        store: &EncryptedStorage,
        path: &str,
        kind: &str,
        description: &str,
        options: BTreeMap<String, String>,
    ) -> Result<()> {
        let config = DeviceConfig {
            path: path.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            options,
            salt: hex::encode(Key256::generate().expose()),
        };
        // Opened first: a device that cannot write is refused, not stored.
        let device = Arc::new(Device::open(config.clone(), true)?);
        let _changing = self.changes.lock().await;
        on_conflict("the audit device table", || async {
            let (mut configs, precondition) = stored(store).await?;
            if configs.iter().any(|c| c.path == config.path) {
                return Err(Error::BadRequest(format!(
                    "path already in use: {}",
                    config.path
                )));
            }
            configs.push(config.clone());
            let written = store
                .transact(vec![Write::put_json(TABLE_PATH, &configs, precondition)])
                .await;
            settle(written, ())
        })
        .await?;
        let mut next = (*self.current()).clone();
        next.push(device);
        *self.devices.write().expect("audit table poisoned") = Arc::new(next);
        Ok(())
    }

    /// `false` if no device is enabled at `path`.
    pub async fn disable(&self, store: &EncryptedStorage, path: &str) -> Result<bool> {
        let _changing = self.changes.lock().await;
        let removed = on_conflict("the audit device table", || async {
            let (mut configs, precondition) = stored(store).await?;
            let before = configs.len();
            configs.retain(|c| c.path != path);
            if configs.len() == before {
                return Ok(crate::retry::Attempt::Done(false));
            }
            let written = store
                .transact(vec![Write::put_json(TABLE_PATH, &configs, precondition)])
                .await;
            settle(written, true)
        })
        .await?;
        let next: Vec<_> = self
            .current()
            .iter()
            .filter(|d| d.config.path != path)
            .cloned()
            .collect();
        *self.devices.write().expect("audit table poisoned") = Arc::new(next);
        Ok(removed)
    }
}

async fn stored(store: &EncryptedStorage) -> Result<(Vec<DeviceConfig>, Precondition)> {
    Ok(
        match store.get_json::<Vec<DeviceConfig>>(TABLE_PATH).await? {
            Some((configs, version)) => (configs, Precondition::Version(version)),
            None => (Vec::new(), Precondition::Absent),
        },
    )
}

/// One entry handed to every device, not yet known to be written.
pub struct Recording {
    writes: Vec<(Arc<Device>, Written)>,
}

/// Hands one entry (built per device: each has its own salt) to every device. With `wake`,
/// the writers write it now; without, it goes out with the next entry someone waits for (a
/// read's request entry, confirmed together with its response entry).
pub fn submit(devices: &[Arc<Device>], build: impl Fn(&Salt) -> Vec<u8>, wake: bool) -> Recording {
    Recording {
        writes: devices
            .iter()
            .map(|device| (device.clone(), device.submit(build(&device.salt), wake)))
            .collect(),
    }
}

impl Recording {
    /// Recorded when at least one device wrote the entry; otherwise the request must not be
    /// served.
    pub async fn confirmed(self) -> Result<()> {
        let mut written = false;
        let any = !self.writes.is_empty();
        for (device, write) in self.writes {
            match write.result().await {
                Ok(()) => {
                    METRICS.audit_write(true);
                    written = true;
                }
                Err(error) => {
                    METRICS.audit_write(false);
                    tracing::error!(device = %device.config.path, %error, "audit device write failed");
                }
            }
        }
        if written || !any {
            Ok(())
        } else {
            Err(Error::Internal(
                "no audit device could record the request; it was not served".into(),
            ))
        }
    }
}
