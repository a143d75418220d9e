//! The `kinko` binary as a process: dev mode, restarts, the production form configured by
//! `KINKO_*`, TLS only, certificate reload, the connection cap, graceful shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use kinko_client::Error;
use kinko_client::{Client, Method};
use kinko_e2e::{
    assert_consistent_after_crash, assert_no_secret_in_logs, binary, clear_kinko_env, eventually,
    logs_under, output, write_certificate, write_until_killed, Kinko,
};
use serde_json::{json, Map, Value};

fn data(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

#[tokio::test]
async fn dev_server_serves_https_and_a_restart_keeps_secrets_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("e2e-root-token"));
    assert_eq!(
        server.banner_value("Root token: ").as_deref(),
        Some("e2e-root-token")
    );
    assert!(server.banner_value("Recovery key: ").is_some());
    assert!(server.addr.starts_with("https://127.0.0.1:"));
    let root = server.client(Some("e2e-root-token"));
    assert_eq!(root.health().await.unwrap(), 200);
    root.kv_write("secret", "app/db", &data(&[("password", "pw-e2e")]), None)
        .await
        .unwrap();
    root.policy_write(
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let app_token = root
        .token_create(&["app"], Some("1h"))
        .await
        .unwrap()
        .client_token;

    let status = server.terminate();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");

    let again = Kinko::dev(dir.path(), None);
    assert!(
        again
            .banner
            .iter()
            .any(|l| l.contains("printed at first start")),
        "{:?}",
        again.banner
    );
    assert!(
        again.banner_value("Recovery key: ").is_none(),
        "secrets are printed only once"
    );
    let app = again.client(Some(&app_token));
    let secret = app
        .kv_read("secret", "app/db", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.data["password"], "pw-e2e");
    let denied = app
        .kv_write("secret", "app/db", &data(&[("password", "x")]), None)
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(403));
    // One log per process: the restart did not truncate the first server's log (which
    // handled the writes), and the check reads both.
    let logs = logs_under(dir.path());
    assert_eq!(
        logs.len(),
        2,
        "{:?}",
        logs.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    assert!(
        logs.iter().all(|(_, text)| !text.is_empty()),
        "a log is empty"
    );
    assert_no_secret_in_logs(dir.path(), &["pw-e2e", &app_token]);
}

#[tokio::test]
async fn the_client_refuses_a_server_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("root-t"));
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = write_certificate(other.path(), "stranger");
    let client = Client::builder(&server.addr)
        .ca_pem(std::fs::read(other_ca).unwrap())
        .build()
        .unwrap();
    let error = client.health().await.unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error}");
}

#[tokio::test]
async fn plain_http_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("root-t"));
    let port = server.addr.rsplit(':').next().unwrap();
    let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("initialized"),
        "no API answer over plain HTTP"
    );
}

/// A TLS client that completes the handshake with the server on `port` and then says nothing.
fn quiet_tls_client(
    port: &str,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let mut tcp = std::net::TcpStream::connect(format!("127.0.0.1:{port}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(tls, tcp))
}

/// Whether the server closes `stream` before `deadline`.
fn closed_by(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    deadline: std::time::Instant,
) -> bool {
    let mut buf = [0u8; 512];
    while std::time::Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn quiet_tls_clients_beyond_the_connection_cap_are_refused_then_timed_out() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certificate(dir.path(), "server");
    let cap = 8;
    let vars = vec![
        ("KINKO_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("KINKO_TLS_CERT_FILE", cert.display().to_string()),
        ("KINKO_TLS_KEY_FILE", key.display().to_string()),
        (
            "KINKO_SQLITE_PATH",
            dir.path().join("kinko.db").display().to_string(),
        ),
        (
            "KINKO_SEAL_KEY_FILE",
            dir.path().join("seal.key").display().to_string(),
        ),
        ("KINKO_MAX_CONNECTIONS", cap.to_string()),
    ];
    let server = Kinko::production(&vars, &ca, dir.path());
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&ca).unwrap();
    for der in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
        roots.add(der.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // Quiet clients that completed TLS hold every connection slot...
    let opened = std::time::Instant::now();
    let mut quiet: Vec<_> = (0..cap)
        .map(|_| quiet_tls_client(&port, &config).unwrap())
        .collect();
    // ...so one more is closed at once, not queued.
    let refused = std::time::Instant::now();
    assert!(quiet_tls_client(&port, &config).is_err(), "over the cap");
    assert!(
        refused.elapsed() < Duration::from_secs(3),
        "refused at once"
    );
    // The first-request timer (10 s from accept) closes them, and clients are served again.
    let deadline = opened + kinko_tls::serve::FIRST_REQUEST_TIMEOUT + Duration::from_secs(10);
    for stream in &mut quiet {
        assert!(
            closed_by(stream, deadline),
            "a quiet TLS connection is closed"
        );
    }
    assert_eq!(server.client(None).health().await.unwrap(), 501);
}

#[test]
fn production_form_names_the_missing_or_wrong_variable() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "KINKO_TLS_CERT_FILE"),
        (&[("KINKO_TLS_CERT_FILE", "/x.crt")], "KINKO_TLS_KEY_FILE"),
        (
            &[
                ("KINKO_TLS_CERT_FILE", "/x.crt"),
                ("KINKO_TLS_KEY_FILE", "/x.key"),
                ("KINKO_LISTEN_ADDR", "nowhere"),
            ],
            "KINKO_LISTEN_ADDR",
        ),
        (
            &[
                ("KINKO_TLS_CERT_FILE", "/x.crt"),
                ("KINKO_TLS_KEY_FILE", "/x.key"),
                ("KINKO_SQLITE_PATH", "/tmp/x.db"),
                ("KINKO_SEAL", "shamir"),
            ],
            "KINKO_SEAL",
        ),
    ];
    for (vars, named) in cases {
        let mut command = std::process::Command::new(binary("kinko"));
        command.arg("server");
        clear_kinko_env(&mut command);
        command.env("KINKO_LOG", "error");
        for (k, v) in vars {
            command.env(k, v);
        }
        let output = output(&mut command);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(named), "{named} named in: {stderr}");
    }
}

#[tokio::test]
async fn production_form_initialises_once_and_auto_unseals_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certificate(dir.path(), "server");
    let vars = vec![
        ("KINKO_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("KINKO_TLS_CERT_FILE", cert.display().to_string()),
        ("KINKO_TLS_KEY_FILE", key.display().to_string()),
        (
            "KINKO_SQLITE_PATH",
            dir.path().join("data/kinko.db").display().to_string(),
        ),
        (
            "KINKO_SEAL_KEY_FILE",
            dir.path().join("data/seal.key").display().to_string(),
        ),
        ("KINKO_CLUSTER_NAME", "e2e".to_owned()),
    ];
    let server = Kinko::production(&vars, &ca, dir.path());
    let anonymous = server.client(None);
    assert_eq!(anonymous.health().await.unwrap(), 501, "not initialised");
    let init = server.initialize().await;
    let root_token = init["root_token"].as_str().unwrap().to_owned();
    assert_eq!(init["recovery_keys"].as_array().unwrap().len(), 3);
    let root = server.client(Some(&root_token));
    root.request(
        Method::POST,
        "sys/mounts/secret",
        Some(&json!({ "type": "kv-v2" })),
    )
    .await
    .unwrap();
    root.kv_write("secret", "db", &data(&[("password", "prod-pw")]), None)
        .await
        .unwrap();
    assert!(server.terminate().success());

    let restarted = Kinko::production(&vars, &ca, dir.path());
    let client = restarted.client(Some(&root_token));
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.health().await.ok() == Some(200)
        })
        .await
    );
    assert_eq!(
        client
            .kv_read("secret", "db", None)
            .await
            .unwrap()
            .unwrap()
            .data["password"],
        "prod-pw"
    );
    assert_eq!(client.seal_status().await.unwrap()["cluster_name"], "e2e");
    let again = client
        .request(Method::PUT, "sys/init", Some(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(400));
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certificate(dir.path(), "first");
    let vars = vec![
        ("KINKO_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("KINKO_TLS_CERT_FILE", cert.display().to_string()),
        ("KINKO_TLS_KEY_FILE", key.display().to_string()),
        (
            "KINKO_SQLITE_PATH",
            dir.path().join("kinko.db").display().to_string(),
        ),
        (
            "KINKO_SEAL_KEY_FILE",
            dir.path().join("seal.key").display().to_string(),
        ),
    ];
    let server = Kinko::production(&vars, &ca, dir.path());
    assert_eq!(server.client(None).health().await.unwrap(), 501);
    let (second_ca, second_cert, second_key) = write_certificate(dir.path(), "second");
    std::fs::copy(&second_key, &key).unwrap();
    std::fs::copy(&second_cert, &cert).unwrap();
    let renewed = Client::builder(&server.addr)
        .ca_pem(std::fs::read(&second_ca).unwrap())
        .build()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            renewed.health().await.ok() == Some(501)
        })
        .await,
        "the new certificate is served"
    );
    let old = Client::builder(&server.addr)
        .ca_pem(std::fs::read(&ca).unwrap())
        .build()
        .unwrap();
    assert!(
        old.health().await.is_err(),
        "the old certificate is no longer served"
    );
}

#[tokio::test]
async fn killed_mid_write_the_embedded_store_keeps_every_key_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("crash-root"));
    let acknowledged = write_until_killed(server, "crash-root", 4, Duration::from_secs(2)).await;
    let again = Kinko::dev(dir.path(), None);
    assert_consistent_after_crash(&again.client(Some("crash-root")), &acknowledged).await;
}

/// The account the hardening tests run the server as: not root, so that `/proc` shows whether
/// the process made itself non-dumpable (its files then belong to root).
const NOBODY: u32 = 65534;

/// What the hardening tests read off a server they started as [`NOBODY`], able to dump core,
/// with `memlock` as its `RLIMIT_MEMLOCK`, then killed with `signal`.
struct Hardened {
    /// Owner of `/proc/<pid>/status` (root when `PR_SET_DUMPABLE` is 0).
    proc_owner: u32,
    /// The server's real uid, from its status file.
    uid: String,
    /// "soft hard" core-file size.
    core_limits: String,
    /// `VmLck` of the status file, in kB.
    locked_kb: u64,
    status: std::process::ExitStatus,
    cores: Vec<String>,
    stderr: String,
}

fn harden_and_kill(signal: i32, memlock: libc::rlim_t) -> Hardened {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // The server's working directory (where a core would land) is its own to write.
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut command = std::process::Command::new(kinko_e2e::binary("kinko"));
    command
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env("KINKO_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_CORE, &mut limit);
            limit.rlim_cur = limit.rlim_max; // as high as this process may go
            libc::setrlimit(libc::RLIMIT_CORE, &limit);
            let lock = libc::rlimit {
                rlim_cur: memlock,
                rlim_max: memlock,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lock) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut own = unsafe { std::mem::zeroed::<libc::rlimit>() };
    // SAFETY: reading this test process's own limit.
    unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut own) };
    assert!(
        own.rlim_max > 0,
        "this machine allows no core files at all: the test cannot tell"
    );
    let mut server = kinko_e2e::Spawned::spawn(&mut command);
    let status_file = format!("/proc/{}/status", server.pid());
    let field = |name: &str| -> String {
        std::fs::read_to_string(&status_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let core_limits = || {
        std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>()[4..6].join(" "))
            .unwrap_or_default()
    };
    // Hardened once the limits are lowered and it listens (memory is locked before both).
    let listening = dir.path().join("data").join("ca.pem");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (core_limits() != "0 0" || !listening.exists()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let hardened = (
        std::fs::metadata(&status_file)
            .map(|m| m.uid())
            .unwrap_or(u32::MAX),
        field("Uid:"),
        core_limits(),
        field("VmLck:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0),
    );
    server.signal(signal);
    // A SIGSEGV sent by kill(2) first meets Rust's stack-overflow handler, which finds no guard
    // page hit and restores the default action: the second one is what a real fault would be.
    let status = match server.wait_within(Duration::from_secs(2)) {
        Some(status) => status,
        None => {
            server.signal(signal);
            server
                .wait_within(Duration::from_secs(10))
                .expect("the server ends on the signal")
        }
    };
    let stderr =
        String::from_utf8_lossy(&server.finish(Duration::from_secs(5)).stderr).into_owned();
    let cores = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("core"))
        .collect();
    Hardened {
        proc_owner: hardened.0,
        uid: hardened.1,
        core_limits: hardened.2,
        locked_kb: hardened.3,
        status,
        cores,
        stderr,
    }
}

/// Security checklist (core dumps, ptrace): started as an unprivileged user *able* to dump
/// core, the server makes itself non-dumpable (`/proc/<pid>` then belongs to root, which also
/// keeps other processes of that user from ptrace or reading its memory) and lowers its
/// core-file limit to zero; killed by SIGABRT it leaves no core. With a memlock limit below
/// "unlimited" it says so, naming the limit, in one line.
#[test]
fn the_server_allows_itself_no_core_dump_and_an_abort_leaves_none() {
    use std::os::unix::process::ExitStatusExt;
    let run = harden_and_kill(libc::SIGABRT, 65536);
    assert!(
        run.uid.starts_with(&NOBODY.to_string()),
        "runs as nobody: {}",
        run.uid
    );
    assert_eq!(
        run.proc_owner, 0,
        "PR_SET_DUMPABLE 0: /proc/<pid> belongs to root"
    );
    assert_eq!(
        run.core_limits, "0 0",
        "soft and hard core-file limits of the server"
    );
    assert_eq!(run.status.signal(), Some(libc::SIGABRT), "{:?}", run.status);
    assert!(!run.status.core_dumped(), "the kernel reports no core dump");
    assert!(run.cores.is_empty(), "{:?}", run.cores);
    assert_eq!(run.locked_kb, 0);
    let lines: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.contains("RLIMIT_MEMLOCK"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].contains("65536 bytes"), "{}", lines[0]);
}

/// A segmentation fault leaves no core either. (The locking itself, taken only when
/// `RLIMIT_MEMLOCK` is unlimited, cannot be shown here: this machine's hard limit is 8 MiB and
/// raising it needs `CAP_SYS_RESOURCE`, which the sandbox lacks.)
#[test]
fn a_segfault_leaves_no_core_either_and_the_memlock_line_names_the_limit() {
    use std::os::unix::process::ExitStatusExt;
    let mut hard = unsafe { std::mem::zeroed::<libc::rlimit>() };
    // SAFETY: reading this test process's own limit.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut hard) };
    let run = harden_and_kill(libc::SIGSEGV, hard.rlim_max);
    assert_eq!(
        run.proc_owner, 0,
        "PR_SET_DUMPABLE 0: /proc/<pid> belongs to root"
    );
    assert_eq!(run.status.signal(), Some(libc::SIGSEGV), "{:?}", run.status);
    assert!(!run.status.core_dumped(), "the kernel reports no core dump");
    assert!(run.cores.is_empty(), "{:?}", run.cores);
    if hard.rlim_max == libc::RLIM_INFINITY {
        assert!(run.locked_kb > 1000, "VmLck {} kB", run.locked_kb);
        assert!(run.stderr.contains("memory locked"), "{}", run.stderr);
    } else {
        let expected = format!("RLIMIT_MEMLOCK is {} bytes", hard.rlim_max);
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
    }
}

/// The key material of a running server, recovered the way only a holder of the seal key and
/// the storage could: the root key (unwrapped with the seal key file) and every keyring term
/// key (opened with the root key).
async fn key_material(data_dir: &std::path::Path) -> Vec<[u8; 32]> {
    use kinko_server::seal::Seal as _;
    use kinko_server::storage::Storage as _;
    // The server keeps its database locked against other processes: read a copy (nothing is
    // written meanwhile, and the copied WAL brings every committed frame with it).
    let copy = tempfile::tempdir().unwrap();
    for file in ["kinko.db", "kinko.db-wal"] {
        if data_dir.join(file).exists() {
            std::fs::copy(data_dir.join(file), copy.path().join(file)).unwrap();
        }
    }
    let storage =
        kinko_server::storage::sqlite::SqliteStorage::open(&copy.path().join("kinko.db")).unwrap();
    let get = |key: &'static str| {
        let storage = &storage;
        async move { storage.get(key).await.unwrap().expect(key).value }
    };
    let config: Value = serde_json::from_slice(&get(kinko_server::core::SEAL_CONFIG_PATH).await)
        .expect("the seal configuration");
    let cluster_id = config["cluster_id"].as_str().unwrap().to_owned();
    let seal = kinko_server::seal::FileSeal::new(&data_dir.join("seal.key"));
    let root = seal
        .unwrap(&get(kinko_server::core::ROOT_KEY_PATH).await, &cluster_id)
        .await
        .unwrap();
    let keyring = kinko_server::barrier::open_with_key(
        &root,
        &kinko_server::encrypted::keyring_aad(&cluster_id),
        &get(kinko_server::encrypted::KEYRING_PATH).await,
    )
    .unwrap();
    // `active | count | count × [term | install | reserved | key (32)]` (Keyring::to_bytes).
    let bytes = keyring.expose();
    let count = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let mut keys = vec![*root.expose()];
    for i in 0..count {
        let at = 8 + i * 52 + 20;
        keys.push(bytes[at..at + 32].try_into().unwrap());
    }
    keys
}

/// How many times either 16-byte half of each key (AES-256's first two round keys, which a key
/// expansion may leave apart) occurs in the process's writable memory (heap, stacks,
/// anonymous mappings), read through /proc/<pid>/mem as a debugger would.
fn occurrences_in_memory(pid: i32, keys: &[[u8; 32]]) -> Vec<usize> {
    use std::io::{Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = vec![0; keys.len()];
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[1].starts_with("rw") {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue; // guard pages and the like
        }
        for (key, count) in keys.iter().zip(found.iter_mut()) {
            let here = region
                .windows(16)
                .filter(|w| *w == &key[..16] || *w == &key[16..])
                .count();
            if here > 0 && std::env::var_os("KINKO_TEST_MEMORY_DEBUG").is_some() {
                let offsets: Vec<_> = region
                    .windows(16)
                    .enumerate()
                    .filter(|(_, w)| *w == &key[..16] || *w == &key[16..])
                    .map(|(i, _)| format!("{:x}", start + i as u64))
                    .collect();
                eprintln!("{here} in {line}: {offsets:?}");
            }
            *count += here;
        }
    }
    found
}

/// The embedded store is single-node: a second server on the same data directory is refused
/// at once with the reason, and the first one keeps serving.
#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let first = Kinko::dev(dir.path(), Some("first-root"));
    let client = first.client(Some("first-root"));
    client
        .kv_write("secret", "app", &data(&[("password", "one")]), None)
        .await
        .unwrap();
    let mut second = std::process::Command::new(binary("kinko"));
    clear_kinko_env(&mut second);
    second
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let refused = kinko_e2e::output_within(&mut second, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another process; one kinko server per database"),
        "{stderr}"
    );
    let read = client
        .kv_read("secret", "app", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.data["password"], "one");
}

/// Security checklist 15: sealing drops every key. The root key and the keyring's term keys are
/// found in the running server's memory while it is unsealed (the scan works), and nowhere in
/// it once `sys/seal` has answered — no copy left in freed heap, a cipher's key schedule, or a
/// task still holding the old state.
#[tokio::test]
async fn after_sys_seal_no_copy_of_the_root_key_or_the_keyring_is_left_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("memory-root"));
    let root = server.client(Some("memory-root"));
    root.kv_write("secret", "app", &data(&[("password", "memory-pw")]), None)
        .await
        .unwrap();
    assert!(root.kv_read("secret", "app", None).await.is_ok());
    let keys = key_material(dir.path()).await;
    assert!(keys.len() >= 2, "the root key and at least one term");
    let before = occurrences_in_memory(server.pid(), &keys);
    assert!(
        before.iter().all(|n| *n > 0),
        "every key is in memory while unsealed (else the scan proves nothing): {before:?}"
    );
    root.request(Method::PUT, "sys/seal", None).await.unwrap();
    let sealed = eventually(Duration::from_secs(10), || async {
        let status = server
            .client(None)
            .request(Method::GET, "sys/seal-status", None)
            .await;
        matches!(status, Ok(Some(status)) if status["sealed"] == true)
    })
    .await;
    assert!(sealed, "sealed within 10 s");
    // Each worker scrubs its stack when it next goes idle, right after answering.
    let mut after = occurrences_in_memory(server.pid(), &keys);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while after.iter().any(|n| *n > 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = occurrences_in_memory(server.pid(), &keys);
    }
    assert!(
        after.iter().all(|n| *n == 0),
        "copies left after sys/seal (root key first, then each term): {after:?}"
    );
}
