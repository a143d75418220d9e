//! End-to-end harness: starts the real `kinko` binary as a process on a free loopback port,
//! learns its address from its first stdout line, and stops it by its own process id.
//! Every other process a test starts is a [`Spawned`]: waited for with a deadline, and killed
//! with its whole process group when it is dropped, also while a failed test unwinds.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a command a test runs to completion (envrun, bao, `kinko operator`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A binary of this workspace, built into the same target directory as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run ./scripts/test (it builds the binaries before the tests)",
        path.display()
    );
    path
}

/// A tool the test command installs (the OpenBao CLI): `$KINKO_TEST_TOOLS/<name>`, else `PATH`.
pub fn tool(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("KINKO_TEST_TOOLS") {
        let path = Path::new(&dir).join(name);
        if path.exists() {
            return path;
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run ./scripts/test, which installs it into target/tools"
            )
        })
}

pub struct Kinko {
    child: Child,
    pub addr: String,
    pub ca: PathBuf,
    /// Everything the server printed to stdout before it was ready.
    pub banner: Vec<String>,
    stderr: PathBuf,
}

impl Kinko {
    /// `kinko server --dev` in `data_dir` on a free port.
    pub fn dev(data_dir: &Path, root_token: Option<&str>) -> Kinko {
        Kinko::dev_with_env(data_dir, root_token, &[])
    }

    /// [`Kinko::dev`] with extra environment variables (`KINKO_LOG`, `KINKO_LOG_FORMAT`).
    pub fn dev_with_env(data_dir: &Path, root_token: Option<&str>, env: &[(&str, &str)]) -> Kinko {
        let mut command = Command::new(binary("kinko"));
        command.envs(env.iter().copied());
        command
            .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(token) = root_token {
            command.env("KINKO_DEV_ROOT_TOKEN", token);
        }
        Kinko::spawn(
            command,
            data_dir,
            "export VAULT_ADDR",
            data_dir.join("ca.pem"),
        )
    }

    /// `kinko server` configured only by the given `KINKO_*` variables.
    pub fn production(vars: &[(&str, String)], ca: &Path, log_dir: &Path) -> Kinko {
        let mut command = Command::new(binary("kinko"));
        command.arg("server");
        clear_kinko_env(&mut command);
        for (name, value) in vars {
            command.env(name, value);
        }
        Kinko::spawn(command, log_dir, "kinko listening on", ca.to_owned())
    }

    fn spawn(mut command: Command, log_dir: &Path, ready_line: &str, ca: PathBuf) -> Kinko {
        std::fs::create_dir_all(log_dir).expect("log directory");
        let (stderr, log) = new_log(log_dir);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start kinko");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut banner = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(ready_line);
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kinko did not become ready within {STARTUP_TIMEOUT:?}; stdout {banner:?}; stderr:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            }
        }
        let addr = banner
            .iter()
            .find_map(|l| l.strip_prefix("kinko listening on "))
            .expect("address line")
            .to_owned();
        Kinko {
            child,
            addr,
            ca,
            banner,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self, token: Option<&str>) -> kinko_client::Client {
        let mut builder = kinko_client::Client::builder(&self.addr)
            .ca_pem(std::fs::read(&self.ca).expect("CA file"));
        if let Some(token) = token {
            builder = builder.token(token);
        }
        builder.build().expect("client")
    }

    /// `PUT sys/init` with 3 recovery shares, threshold 2; returns the answer.
    pub async fn initialize(&self) -> serde_json::Value {
        self.client(None)
            .request(
                kinko_client::Method::PUT,
                "sys/init",
                Some(&serde_json::json!({ "recovery_shares": 3, "recovery_threshold": 2 })),
            )
            .await
            .expect("sys/init")
            .expect("sys/init answers with the root token")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn banner_value(&self, prefix: &str) -> Option<String> {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
    }

    /// SIGKILL: the process gets no chance to finish anything (a crash, an OOM kill).
    pub fn kill_hard(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Sends SIGTERM to this process and waits (bounded) for it to exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kinko did not exit within 40 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kinko {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A log file of its own for one server process: `kinko-<test pid>-<n>.stderr`, created only if
/// it does not exist yet, so a second server or a restart never truncates an earlier log.
fn new_log(dir: &Path) -> (PathBuf, std::fs::File) {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("kinko-{}-{n}.stderr", std::process::id()));
        match std::fs::File::create_new(&path) {
            Ok(file) => return (path, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", path.display()),
        }
    }
}

/// Every server log below `root` (each process the test started there has its own file).
pub fn logs_under(root: &Path) -> Vec<(PathBuf, String)> {
    let mut logs = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                dirs.push(path);
            } else if name.starts_with("kinko-") && name.ends_with(".stderr") {
                let text = std::fs::read_to_string(&path).unwrap();
                logs.push((path, text));
            }
        }
    }
    logs.sort();
    logs
}

/// No log of any server the test started below `root` holds any of `values`.
pub fn assert_no_secret_in_logs(root: &Path, values: &[&str]) {
    let logs = logs_under(root);
    assert!(!logs.is_empty(), "no server logs below {}", root.display());
    for (path, text) in &logs {
        for (i, value) in values.iter().enumerate() {
            assert!(
                !text.contains(value),
                "{} holds secret #{i} of {values:?}",
                path.display()
            );
        }
    }
}

/// A process a test started, leader of a process group of its own. Dropping it (also while a
/// failed test unwinds) kills that whole group, so the process's own children (envrun's
/// program) go with it. It is reaped only after the group is killed: until then its pid, which
/// is the group's id, cannot be reused, so the kill never reaches a stranger.
pub struct Spawned {
    child: Child,
    command_line: String,
    status: Option<ExitStatus>,
    stdout: Option<mpsc::Receiver<Vec<u8>>>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
}

fn drain(stream: Option<impl Read + Send + 'static>) -> Option<mpsc::Receiver<Vec<u8>>> {
    let mut stream = stream?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    Some(rx)
}

impl Spawned {
    /// Starts `command` (its stdio as the caller set it) in a new process group.
    pub fn spawn(command: &mut Command) -> Spawned {
        let command_line = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|a| format!("{:?}", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command_line}: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Spawned {
            child,
            command_line,
            status: None,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to this process (by its own pid).
    pub fn signal(&self, signal: i32) {
        assert!(
            self.status.is_none(),
            "{} was already reaped",
            self.command_line
        );
        // SAFETY: signalling our own child, not yet reaped, by its pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Whether the process has exited, without reaping it.
    fn exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is valid; WNOWAIT leaves the zombie in place.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let found = libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            found == 0 && info.si_pid() != 0
        }
    }

    /// Kills what is left of the process group, then reaps the process.
    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // SAFETY: the group this process leads; its id stays ours until the reap below.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let status = self.child.wait().expect("reap a child");
        self.status = Some(status);
        status
    }

    /// Waits up to `limit` for the process to exit; then kills anything it left in its group
    /// and returns its status. `None`: still running (and left running).
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while self.status.is_none() && !self.exited() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(self.kill_and_reap())
    }

    /// Waits up to `limit` for the process to exit and returns its status and what it printed
    /// on the streams the caller piped. On expiry kills the group and fails the test with the
    /// command line and the output so far.
    pub fn finish(mut self, limit: Duration) -> Output {
        let finished = self.wait_within(limit);
        let status = self.kill_and_reap();
        let collect = |stream: Option<mpsc::Receiver<Vec<u8>>>| {
            stream
                .map(|rx| rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default())
                .unwrap_or_default()
        };
        let output = Output {
            status,
            stdout: collect(self.stdout.take()),
            stderr: collect(self.stderr.take()),
        };
        if finished.is_none() {
            panic!(
                "{} did not finish within {limit:?}; killed.\nstdout:\n{}\nstderr:\n{}",
                self.command_line,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        output
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// `command.output()` with a deadline: stdin empty, stdout and stderr captured; a command
/// still running after `limit` is killed (with its process group) and fails the test.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Spawned::spawn(command).finish(limit)
}

/// [`output_within`] with [`COMMAND_TIMEOUT`].
pub fn output(command: &mut Command) -> Output {
    output_within(command, COMMAND_TIMEOUT)
}

/// Removes inherited `KINKO_*` variables so a test sees only what it sets.
pub fn clear_kinko_env(command: &mut Command) {
    for (name, _) in std::env::vars() {
        if name.starts_with("KINKO_") && name != "KINKO_TEST_TOOLS" {
            command.env_remove(name);
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 written into `dir` as ca.pem, tls.crt, tls.key.
pub fn write_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Enables `auth/kubernetes` on a server, reviewed by the TokenReview endpoint at `review_url`
/// (trusting `review_ca_pem`, authenticating as `reviewer`), with one role.
pub async fn enable_kubernetes_auth(
    root: &kinko_client::Client,
    review_url: &str,
    review_ca_pem: &str,
    reviewer: &str,
    role: &str,
    role_body: serde_json::Value,
) {
    use kinko_client::Method;
    root.request(
        Method::POST,
        "sys/auth/kubernetes",
        Some(&serde_json::json!({ "type": "kubernetes" })),
    )
    .await
    .unwrap();
    let config = serde_json::json!({
        "kubernetes_host": review_url,
        "kubernetes_ca_cert": review_ca_pem,
        "token_reviewer_jwt": reviewer,
    });
    root.request(Method::POST, "auth/kubernetes/config", Some(&config))
        .await
        .unwrap();
    root.request(
        Method::POST,
        &format!("auth/kubernetes/role/{role}"),
        Some(&role_body),
    )
    .await
    .unwrap();
}

/// A free loopback port (bound then released; the caller starts its server on it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A helper process on loopback (the AWS emulator, the fault proxy), killed by its own pid.
pub struct Helper {
    child: Child,
    pub port: u16,
}

impl Helper {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS emulator (moto, installed by ./scripts/test) on a free port, serving one request
/// at a time: see `tests/moto_serial.py` for why.
pub fn moto() -> Helper {
    python_helper("moto_serial.py", &[])
}

/// `tests/fault_proxy.py` in front of `upstream`, answering a `throttle` share of requests
/// with DynamoDB's throttling error and an `unprocessed` share of `BatchWriteItem` calls with
/// nothing processed. `port` 0 picks a free port.
pub fn fault_proxy(port: u16, upstream: u16, throttle: f64, unprocessed: f64) -> Helper {
    python_helper(
        "fault_proxy.py",
        &[
            "--port",
            &port.to_string(),
            "--upstream",
            &format!("127.0.0.1:{upstream}"),
            "--throttle",
            &throttle.to_string(),
            "--unprocessed",
            &unprocessed.to_string(),
        ],
    )
}

/// Runs one of the Python helpers beside this file and waits for its "listening on PORT".
fn python_helper(script: &str, args: &[&str]) -> Helper {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut child = Command::new(tool("python3"))
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
    let Some(port) = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
    else {
        let _ = child.kill();
        panic!(
            "{} did not start within {STARTUP_TIMEOUT:?}: {line:?} (is moto installed? ./scripts/test installs it)",
            script.display()
        );
    };
    Helper { child, port }
}

/// What a kinko process needs to reach the emulator, and nothing from the host's AWS setup.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
}

/// An in-process AWS SDK configuration pointed at the emulator.
pub async fn aws_config(endpoint: &str) -> kinko_server::aws::SdkConfig {
    kinko_server::aws::loader()
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "kinko-tests",
        ))
        .load()
        .await
}

/// Writes `crash/w<i>` from `writers` concurrent writers, each version's data `{"n": version}`,
/// until `for_how_long` has passed, then kills the server with SIGKILL mid-write. Returns the
/// last version each writer saw acknowledged.
pub async fn write_until_killed(
    server: Kinko,
    token: &str,
    writers: usize,
    for_how_long: Duration,
) -> Vec<u64> {
    let client = server.client(Some(token));
    let stop = Instant::now() + for_how_long;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acknowledged = 0;
                loop {
                    let next = acknowledged + 1;
                    let data = serde_json::json!({ "n": next.to_string() });
                    let path = format!("crash/w{writer}");
                    match client
                        .kv_write(
                            "secret",
                            &path,
                            data.as_object().unwrap(),
                            Some(acknowledged),
                        )
                        .await
                    {
                        Ok(version) => {
                            assert_eq!(version, next, "{path}: versions follow the writes");
                            acknowledged = version;
                        }
                        // The kill: every later request fails too.
                        Err(_) => return acknowledged,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(stop.saturating_duration_since(Instant::now())).await;
    server.kill_hard();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.expect("writer"));
    }
    acknowledged
}

/// After a crash: every acknowledged write is there, and every version the metadata keeps
/// reads back with its own data (metadata and version items were written together).
pub async fn assert_consistent_after_crash(client: &kinko_client::Client, acknowledged: &[u64]) {
    for (writer, acked) in acknowledged.iter().enumerate() {
        assert!(
            *acked > 0,
            "writer {writer} wrote something before the kill"
        );
        let path = format!("crash/w{writer}");
        let latest = client
            .kv_read("secret", &path, None)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{path} is gone"));
        assert!(
            latest.version == *acked || latest.version == acked + 1,
            "{path}: acknowledged {acked}, found {} (at most the one write in flight may land)",
            latest.version
        );
        let metadata = client
            .request(
                kinko_client::Method::GET,
                &format!("secret/metadata/{path}"),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        let kept = metadata["data"]["versions"].as_object().unwrap();
        assert!(kept.contains_key(&latest.version.to_string()));
        for version in kept.keys().map(|v| v.parse::<u64>().unwrap()) {
            let read = client
                .kv_read("secret", &path, Some(version))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{path} version {version} is missing"));
            assert_eq!(read.data["n"], version.to_string(), "{path} v{version}");
        }
    }
}
