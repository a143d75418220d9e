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

/// A file device's writer. A request that queues a line it waits for, finding no one
/// writing, becomes the writer: it writes every queued line with one `write_all`, and goes on
/// until it finds the queue empty (lines of concurrent requests go out together, and no thread
/// hop sits on the path of a request on a quiet server). A request that finds a writer at work
/// leaves its line to it and awaits the answer. A line nobody waits for yet (a read's request
/// entry) is queued without a write: it goes out with the next line someone waits for, or
/// within about [`FLUSH_EVERY`] from the device's flush thread, which ends when the device is
/// dropped.
///
/// The write is a blocking `write(2)` on a runtime worker: into the page cache it takes a few
/// microseconds, less than a hop to another thread. On storage that stalls (a hung network
/// mount) only the one writer per device blocks its worker; the others' requests wait at most
/// [`WRITE_TIMEOUT`] and fail closed.
struct FileSink {
    shared: Arc<Shared>,
}

struct Shared {
    queue: std::sync::Mutex<QueueState>,
    file: std::sync::Mutex<OpenFile>,
    /// Wakes the flush thread to stop.
    stop: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    /// The queued lines, end to end.
    lines: Vec<u8>,
    /// One per queued line: told how its write went.
    waiters: Vec<Waiter>,
    stopped: bool,
    /// Someone is writing the queue; only that writer touches the file.
    writing: bool,
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), std::io::ErrorKind>>;

thread_local! {
    /// Where a line is built before it is copied into a device's queue, reused so that building
    /// allocates nothing: a line is over a KiB, and each allocation that size had glibc
    /// consolidate its small-block bins (`malloc_consolidate`, seen in perf).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Builds a line in this thread's scratch buffer and hands it to `take`.
fn with_line<T>(build: impl FnOnce(&mut Vec<u8>), take: impl FnOnce(&[u8]) -> T) -> T {
    SCRATCH.with_borrow_mut(|line| {
        line.clear();
        build(line);
        let taken = take(line);
        // A line of unusual size (a large body) is not kept for the rest of the thread.
        line.clear();
        line.shrink_to(KEPT_SCRATCH_BYTES);
        taken
    })
}

const KEPT_SCRATCH_BYTES: usize = 16 * 1024;

/// How often the flush thread writes the lines nobody waits for.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a request waits for a device to answer for its line before it counts the device
/// as failed (a stalled disk fails requests closed instead of holding them forever).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The file: the open file and the reopen generation it was opened at.
struct OpenFile {
    path: PathBuf,
    mode: u32,
    file: Option<std::fs::File>,
    generation: u64,
    /// The queue's spare buffers, swapped with its own at each batch (kept empty between
    /// batches), so that queueing and writing allocate nothing.
    buffer: Vec<u8>,
    waiters: Vec<Waiter>,
    /// The file's length as this writer knows it, and how far blocks are reserved past it.
    length: u64,
    reserved_to: u64,
    /// A write failed part-way through a line (a full disk): the next write ends it first.
    torn: bool,
}

/// The write buffer's capacity kept between batches, and its waiters'.
const KEPT_BUFFER_BYTES: usize = 256 * 1024;
const KEPT_WAITERS: usize = 1024;

/// Blocks reserved ahead of the file's end (`fallocate` with `FALLOC_FL_KEEP_SIZE`; the size
/// seen by readers and logrotate is unchanged). Appending ~1 KiB lines to blocks not yet
/// allocated cost ext4 on this project's benchmark machine (Linux 6.18) 3.6 ns per byte,
/// mostly zeroing (`zero_user_segments`), against 1.4 ns into reserved blocks: it was the
/// largest single cost of auditing a read.
const RESERVE_AHEAD: u64 = 8 << 20;

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
        let shared = Arc::new(Shared {
            queue: std::sync::Mutex::new(QueueState::default()),
            file: std::sync::Mutex::new(open),
            stop: std::sync::Condvar::new(),
        });
        let flusher = shared.clone();
        std::thread::Builder::new()
            .name("kinko-audit".into())
            .spawn(move || flusher.flush_thread())?;
        Ok(FileSink { shared })
    }

    /// Queues the line `build` writes; with `wake`, it is written now (by this call, or by the
    /// writer at work).
    fn submit(&self, build: impl FnOnce(&mut Vec<u8>), wake: bool) -> Written {
        let (written, done) = tokio::sync::oneshot::channel();
        with_line(build, |line| {
            let mut state = self.shared.queue.lock().expect("audit queue poisoned");
            state.lines.extend_from_slice(line);
            state.waiters.push(written);
        });
        if wake {
            self.shared.write_queued();
        }
        Written::Waiting(done)
    }
}

impl Shared {
    /// Writes what is queued until the queue is empty, unless someone is writing already.
    ///
    /// No line is left behind: a writer stops only when it finds the queue empty, and clears
    /// `writing` under the same lock, so a line queued after that finds no writer and its
    /// caller becomes one.
    fn write_queued(&self) {
        let mut state = self.queue.lock().expect("audit queue poisoned");
        if state.writing || state.waiters.is_empty() {
            return;
        }
        state.writing = true;
        drop(state);
        // Only the writer takes the file's lock, so it is never contended; always before the
        // queue's, never while holding it.
        let mut file = self.file.lock().expect("audit file poisoned");
        let mut state = self.queue.lock().expect("audit queue poisoned");
        loop {
            if state.waiters.is_empty() {
                state.writing = false;
                return;
            }
            let mut lines = std::mem::take(&mut file.buffer);
            let mut waiters = std::mem::take(&mut file.waiters);
            std::mem::swap(&mut state.lines, &mut lines);
            std::mem::swap(&mut state.waiters, &mut waiters);
            drop(state);
            let result = file.write(&lines).map_err(|e| e.kind());
            for waiter in waiters.drain(..) {
                let _ = waiter.send(result);
            }
            // A batch of unusual size (large bodies) is not kept for the rest of the process.
            lines.clear();
            lines.shrink_to(KEPT_BUFFER_BYTES);
            waiters.shrink_to(KEPT_WAITERS);
            file.buffer = lines;
            file.waiters = waiters;
            state = self.queue.lock().expect("audit queue poisoned");
        }
    }

    /// Writes lines nobody waits for every [`FLUSH_EVERY`]; the rest when stopped.
    fn flush_thread(&self) {
        loop {
            let stopped = {
                let state = self.queue.lock().expect("audit queue poisoned");
                let (state, _) = self
                    .stop
                    .wait_timeout_while(state, FLUSH_EVERY, |s| !s.stopped)
                    .expect("audit queue poisoned");
                state.stopped
            };
            self.write_queued();
            if stopped {
                return;
            }
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .expect("audit queue poisoned")
            .stopped = true;
        self.shared.stop.notify_one();
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
            Written::Waiting(done) => match tokio::time::timeout(WRITE_TIMEOUT, done).await {
                Ok(Ok(result)) => result.map_err(std::io::Error::from),
                Ok(Err(_)) => Err(std::io::Error::other("the audit device was closed")),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the audit device did not write within {} s",
                        WRITE_TIMEOUT.as_secs()
                    ),
                )),
            },
        }
    }
}

impl OpenFile {
    /// `file` already open, or `None` to open it at the first write. Nothing is reserved yet,
    /// so the first write reads the file's real length.
    fn new(path: PathBuf, mode: u32, file: Option<std::fs::File>) -> OpenFile {
        OpenFile {
            path,
            mode,
            file,
            generation: REOPEN_GENERATION.load(Ordering::Relaxed),
            buffer: Vec::new(),
            waiters: Vec::new(),
            length: 0,
            reserved_to: 0,
            torn: false,
        }
    }

    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let generation = REOPEN_GENERATION.load(Ordering::Relaxed);
        if self.file.is_none() || self.generation != generation {
            // A failed reopen leaves no file: the next write tries again.
            self.file = None;
            self.generation = generation;
            self.file = Some(FileSink::open(&self.path, self.mode)?);
            self.reserved_to = 0;
            self.torn = false;
        }
        let file = self.file.as_mut().expect("opened above");
        if self.length + lines.len() as u64 > self.reserved_to {
            // Once per reservation: the real end, in case another appender (or a
            // copytruncate) moved it.
            self.length = file.metadata().map_or(self.length, |m| m.len());
            self.reserved_to = reserve(file, self.length);
        }
        let appended = append(file, lines, &mut self.torn);
        self.length += appended.as_ref().map_or_else(|(n, _)| *n, |n| *n) as u64;
        appended.map(|_| ()).map_err(|(_, error)| error)
    }
}

/// Appends whole lines in one write (with O_APPEND, lines never interleave); answers how many
/// bytes reached the file, also when it fails. A write that stops inside a line (a disk that
/// filled up) leaves `torn` set, and the next append first ends that fragment, so that it
/// costs one unparsable line, not the entry written after it as well.
fn append(
    out: &mut impl std::io::Write,
    lines: &[u8],
    torn: &mut bool,
) -> Result<usize, (usize, std::io::Error)> {
    let mut appended = 0;
    if *torn {
        out.write_all(b"\n").map_err(|error| (0, error))?;
        appended = 1;
        *torn = false;
    }
    let mut written = 0;
    while written < lines.len() {
        let error = match out.write(&lines[written..]) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => error,
        };
        *torn = written > 0 && lines[written - 1] != b'\n';
        return Err((appended + written, error));
    }
    Ok(appended + written)
}

/// Reserves [`RESERVE_AHEAD`] bytes of blocks from `length` on; returns how far the file is
/// now reserved. Best effort: where the file system cannot (or has no space left), lines are
/// appended without it and the write itself reports a full disk.
#[cfg(target_os = "linux")]
fn reserve(file: &std::fs::File, length: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(length),
        libc::off_t::try_from(RESERVE_AHEAD),
    ) else {
        return u64::MAX;
    };
    // SAFETY: fallocate on an open descriptor we own; it reads no memory of ours.
    let reserved =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if reserved == 0 {
        length + RESERVE_AHEAD
    } else {
        // Not supported, or no room: try again only after this much more is appended.
        length + RESERVE_AHEAD / 8
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &std::fs::File, _length: u64) -> u64 {
    u64::MAX
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
                    Sink::File(
                        FileSink::start(OpenFile::new(path, mode, file)).map_err(|e| {
                            Error::Internal(format!("cannot start the audit flush thread: {e}"))
                        })?,
                    )
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

    fn submit(&self, build: impl FnOnce(&mut Vec<u8>), wake: bool) -> Written {
        match &self.sink {
            Sink::File(file) => file.submit(build, wake),
            Sink::Stdout => Written::Done(with_line(build, |line| {
                std::io::stdout().lock().write_all(line)
            })),
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

/// Hands one entry (built per device, from its index in `devices` and its salt) to every
/// device. With `wake`, the writers write it now; without, it goes out with the next entry
/// someone waits for (a read's request entry, confirmed together with its response entry).
pub fn submit(
    devices: &[Arc<Device>],
    build: impl Fn(usize, &Salt, &mut Vec<u8>),
    wake: bool,
) -> Recording {
    Recording {
        writes: devices
            .iter()
            .enumerate()
            .map(|(index, device)| {
                let written = device.submit(|line| build(index, &device.salt, line), wake);
                (device.clone(), written)
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: String) -> impl FnOnce(&mut Vec<u8>) {
        move |out| out.extend_from_slice(text.as_bytes())
    }

    fn sink(path: &std::path::Path) -> FileSink {
        FileSink::start(OpenFile::new(path.to_owned(), 0o600, None)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_lines_are_all_written_whole_and_each_waiter_hears_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = Arc::new(sink(&path));
        let mut tasks = Vec::new();
        for task in 0..8 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..500 {
                    // Every other line is one nobody waits for yet (a read's request entry).
                    let deferred = sink.submit(line(format!("{task}-{n}-deferred\n")), false);
                    let waited = sink.submit(line(format!("{task}-{n}\n")), true);
                    waited.result().await.unwrap();
                    deferred.result().await.unwrap();
                }
            }));
        }
        for task in tasks {
            // Well under what 500 rounds of the flush thread alone would take (25 s).
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("every waiter hears of its line")
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8 * 500 * 2);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 8 * 500 * 2, "no line twice");
    }

    /// Takes `room` bytes, then fails like a full disk.
    struct FillsUp {
        written: Vec<u8>,
        room: usize,
    }

    impl std::io::Write for FillsUp {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let n = bytes.len().min(self.room - self.written.len());
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            self.written.extend_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_short_by_a_full_disk_is_ended_before_the_next_entry() {
        let mut disk = FillsUp {
            written: Vec::new(),
            room: 20,
        };
        let mut torn = false;
        let failed = append(
            &mut disk,
            b"{\"a\":1}\n{\"cut\":\"short line\"}\n",
            &mut torn,
        );
        assert_eq!(
            failed.unwrap_err().0,
            20,
            "what reached the disk is counted"
        );
        assert!(torn);
        disk.room = 100;
        assert_eq!(append(&mut disk, b"{\"b\":2}\n", &mut torn).unwrap(), 9);
        assert!(!torn);
        let text = String::from_utf8(disk.written).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["{\"a\":1}", "{\"cut\":\"shor", "{\"b\":2}"]);
        // A failure at a line's end tears nothing.
        let mut exact = FillsUp {
            written: Vec::new(),
            room: 8,
        };
        let mut torn = false;
        assert!(append(&mut exact, b"{\"a\":1}\n{\"b\":2}\n", &mut torn).is_err());
        assert!(!torn, "the failure fell between two lines");
    }

    #[tokio::test]
    async fn blocks_are_reserved_past_the_end_without_changing_the_size_readers_see() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = sink(&path);
        sink.submit(line("one line\n".into()), true)
            .result()
            .await
            .unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), 9, "the size is what was written");
        assert!(
            metadata.blocks() * 512 >= RESERVE_AHEAD,
            "{} bytes of blocks reserved",
            metadata.blocks() * 512
        );
    }
}
