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

/// A file device's writer: one thread per device owns the file and writes the lines of
/// concurrent requests with one `write` per batch (fewer syscalls under load), then tells each
/// request whether its line is written. The thread ends when the device is dropped.
struct FileSink {
    queue: std::sync::mpsc::Sender<Pending>,
}

struct Pending {
    line: Vec<u8>,
    written: tokio::sync::oneshot::Sender<Result<(), std::io::ErrorKind>>,
}

/// The writer thread's file: the open file and the reopen generation it was opened at.
struct OpenFile {
    path: PathBuf,
    mode: u32,
    file: Option<std::fs::File>,
    generation: u64,
}

/// Lines written with one `write` at most.
const MAX_BATCH: usize = 256;

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
        let (queue, lines) = std::sync::mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("kinko-audit".into())
            .spawn(move || FileSink::writer(open, lines))?;
        Ok(FileSink { queue })
    }

    fn writer(mut open: OpenFile, lines: std::sync::mpsc::Receiver<Pending>) {
        let mut buffer = Vec::new();
        while let Ok(first) = lines.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match lines.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
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

    async fn write(&self, line: Vec<u8>) -> std::io::Result<()> {
        let (written, done) = tokio::sync::oneshot::channel();
        let sent = self.queue.send(Pending { line, written });
        if sent.is_err() {
            return Err(std::io::Error::other("the audit writer has stopped"));
        }
        match done.await {
            Ok(result) => result.map_err(std::io::Error::from),
            Err(_) => Err(std::io::Error::other("the audit writer has stopped")),
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

    async fn write(&self, line: Vec<u8>) -> std::io::Result<()> {
        match &self.sink {
            Sink::File(file) => file.write(line).await,
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
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

/// Writes one entry (built per device: each has its own salt) to every device. Recorded when
/// at least one device wrote it; otherwise the request must not be served.
pub async fn record(devices: &[Arc<Device>], build: impl Fn(&Salt) -> Vec<u8>) -> Result<()> {
    let mut written = false;
    for device in devices {
        match device.write(build(&device.salt)).await {
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
    if written || devices.is_empty() {
        Ok(())
    } else {
        Err(Error::Internal(
            "no audit device could record the request; it was not served".into(),
        ))
    }
}
