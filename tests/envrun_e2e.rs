//! envrun as a process against a real `kinko server --dev`: variables reach the program,
//! argv and exit codes pass through, references resolve, failures stop the start, supervise
//! mode forwards signals and restarts on change. envrun's own output never holds a value.

#[path = "../server/tests/k8s/mod.rs"]
mod k8s;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kinko_e2e::{binary, enable_kubernetes_auth, output, Kinko, Spawned};
use serde_json::{json, Map, Value};

const ROOT: &str = "envrun-root";
const PASSWORD: &str = "pw-5f1c9e-do-not-print";
const API_KEY: &str = "ak-77aa31-do-not-print";

struct Setup {
    server: Kinko,
    dir: tempfile::TempDir,
}

fn secret(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(&dir.path().join("kinko"), Some(ROOT));
    let root = server.client(Some(ROOT));
    root.kv_write(
        "secret",
        "app/db",
        &secret(&[("password", PASSWORD), ("user", "app")]),
        None,
    )
    .await
    .unwrap();
    root.kv_write("secret", "app/api", &secret(&[("api-key", API_KEY)]), None)
        .await
        .unwrap();
    Setup { server, dir }
}

impl Setup {
    fn out(&self) -> PathBuf {
        self.dir.path().join("child.out")
    }

    fn envrun(&self, token: &str) -> Command {
        let mut command = Command::new(binary("envrun"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("KINKO_ADDR", &self.server.addr)
            .env("KINKO_CACERT", &self.server.ca)
            .env("KINKO_TOKEN", token)
            .env("OUT", self.out())
            .stdin(Stdio::null());
        command
    }

    fn child_output(&self) -> String {
        std::fs::read_to_string(self.out()).unwrap_or_default()
    }
}

/// Runs and checks that envrun's own stdout and stderr never carry a secret value.
fn run(command: &mut Command) -> Output {
    let output = output(command);
    assert_no_values(&output);
    output
}

fn assert_no_values(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        for value in [PASSWORD, API_KEY, ROOT] {
            assert!(!text.contains(value), "envrun printed a secret: {text}");
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The child's variables, without those the shell sets for itself.
fn env_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            !["PWD=", "SHLVL=", "_="]
                .iter()
                .any(|shell| l.starts_with(shell))
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn secrets_reach_the_program_and_control_variables_do_not() {
    let s = setup().await;
    let output = run(s.envrun(ROOT).args([
        "--secret",
        "secret/app/db",
        "--upcase",
        "--",
        "sh",
        "-c",
        "env > \"$OUT\"",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let env = s.child_output();
    let lines = env_lines(&env);
    assert!(
        lines.contains(&format!("SECRET_APP_DB_PASSWORD={PASSWORD}").as_str()),
        "{env}"
    );
    assert!(lines.contains(&"SECRET_APP_DB_USER=app"));
    assert!(
        lines.iter().any(|l| l.starts_with("PATH=")),
        "inherited variables are kept"
    );
    for control in ["KINKO_TOKEN", "KINKO_ADDR", "KINKO_CACERT"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{control}="))),
            "{control} leaked to the program"
        );
    }

    // --pristine: not even PATH or $OUT is inherited, so the script names both itself.
    let script = format!("/usr/bin/env > {}", s.out().display());
    let output = run(s.envrun(ROOT).args([
        "--secret",
        "secret/app/db",
        "--no-prefix-path",
        "--prefix",
        "db_",
        "--upcase",
        "--secret",
        "secret/app/api#api-key=API_KEY",
        "--pristine",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = s.child_output();
    let mut expected = [
        format!("API_KEY={API_KEY}"),
        format!("DB_PASSWORD={PASSWORD}"),
        "DB_USER=app".to_owned(),
    ];
    expected.sort();
    assert_eq!(
        env_lines(&printed),
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "--pristine: only the secrets"
    );
}

#[tokio::test]
async fn argv_exit_codes_signals_and_pid_are_the_programs_own() {
    let s = setup().await;
    let script = r#"for a in "$@"; do printf '[%s]' "$a"; done > "$OUT""#;
    let args = ["a b", "c'd", "\"e\"", "$HOME", "*", "; rm -rf /", ""];
    let output = run(s
        .envrun(ROOT)
        .args(["--secret", "secret/app/db", "--", "sh", "-c", script, "sh"])
        .args(args));
    assert!(output.status.success());
    assert_eq!(
        s.child_output(),
        "[a b][c'd][\"e\"][$HOME][*][; rm -rf /][]"
    );

    let output =
        run(s
            .envrun(ROOT)
            .args(["--secret", "secret/app/db", "--", "sh", "-c", "exit 42"]));
    assert_eq!(output.status.code(), Some(42));

    use std::os::unix::process::ExitStatusExt;
    let output = run(s.envrun(ROOT).args([
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]));
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGTERM),
        "the signal that ended the program ends envrun's process"
    );

    let child = Spawned::spawn(s.envrun(ROOT).args([
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        "echo $$ > \"$OUT\"",
    ]));
    let pid = child.pid();
    let output = child.finish(kinko_e2e::COMMAND_TIMEOUT);
    assert!(output.status.success());
    assert_eq!(
        s.child_output().trim(),
        pid.to_string(),
        "exec: the program runs as envrun's own PID"
    );

    let output =
        run(s
            .envrun(ROOT)
            .args(["--secret", "secret/app/db", "--", "/nonexistent/program"]));
    assert_eq!(output.status.code(), Some(127));
}

#[tokio::test]
async fn kinko_references_in_inherited_variables_resolve() {
    let s = setup().await;
    let root = s.server.client(Some(ROOT));
    root.kv_write(
        "secret",
        "app/db",
        &secret(&[("password", "second-version"), ("user", "app")]),
        None,
    )
    .await
    .unwrap();
    let output = run(s
        .envrun(ROOT)
        .env("DB_PASS", "kinko:secret/app/db#password")
        .env("OLD_PASS", "kinko:secret/app/db#password#1")
        .env("PLAIN", "kinko-is-not-a-reference")
        .args(["--", "sh", "-c", "env > \"$OUT\""]));
    assert!(output.status.success(), "{}", stderr(&output));
    let env = s.child_output();
    let lines = env_lines(&env);
    assert!(lines.contains(&"DB_PASS=second-version"));
    assert!(lines.contains(&format!("OLD_PASS={PASSWORD}").as_str()));
    assert!(lines.contains(&"PLAIN=kinko-is-not-a-reference"));
}

#[tokio::test]
async fn failures_stop_the_start_and_name_the_path() {
    let s = setup().await;
    let marker = "touch \"$OUT\"";
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--secret", "secret/app/missing"],
            "secret/app/missing",
            "not found",
        ),
        (
            vec!["--secret", "secret/app/db#nokey"],
            "secret/app/db",
            "no key",
        ),
        (
            vec![
                "--secret",
                "secret/app/db",
                "--no-prefix-path",
                "--secret",
                "secret/app/db#user",
            ],
            "secret/app/db",
            "set by both",
        ),
        (
            vec!["--secret", "secret/app/api", "--no-prefix-path"],
            "api-key",
            "not a valid name",
        ),
        (vec!["--secret", "nowhere/app"], "nowhere/app", "not found"),
    ];
    for (args, names, reason) in cases {
        let _ = std::fs::remove_file(s.out());
        let output = run(s.envrun(ROOT).args(&args).args(["--", "sh", "-c", marker]));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.contains(names) && message.contains(reason),
            "{args:?}: {message}"
        );
        assert!(message.contains("not started"));
        assert!(!s.out().exists(), "{args:?}: the program must not run");
    }
    let root = s.server.client(Some(ROOT));
    root.policy_write(
        "api-only",
        r#"path "secret/data/app/api" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let limited = root
        .token_create(&["api-only"], Some("10m"))
        .await
        .unwrap()
        .client_token;
    let output = run(s.envrun(&limited).args([
        "--secret",
        "secret/app/api#api-key=API_KEY",
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        marker,
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("permission denied"),
        "{}",
        stderr(&output)
    );
    assert!(!s.out().exists(), "no start with a partial environment");

    let output = run(s.envrun("kks.wrong-token").args([
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        marker,
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("permission denied (HTTP 403)"),
        "{}",
        stderr(&output)
    );

    let mut unreachable = s.envrun(ROOT);
    unreachable.env("KINKO_ADDR", "https://127.0.0.1:9").args([
        "--retry",
        "2",
        "--timeout",
        "20s",
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        marker,
    ]);
    let output = run(&mut unreachable);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("secret/app/db") && message.contains("cannot reach"),
        "{message}"
    );
    assert_eq!(message.matches("retrying").count(), 2, "{message}");
    assert!(!s.out().exists());
}

#[tokio::test]
async fn dry_run_prints_names_only() {
    let s = setup().await;
    let output = run(s
        .envrun(ROOT)
        .env("REF", "kinko:secret/app/api#api-key")
        .args(["--dry-run", "--secret", "secret/app/db", "--upcase"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "REF\nSECRET_APP_DB_PASSWORD\nSECRET_APP_DB_USER\n"
    );
    let help = run(Command::new(binary("envrun")).arg("--help"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--secret"));
}

// Multi-threaded: the TokenReview endpoint runs in this test's runtime while the test blocks
// on envrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_from_a_service_account_token_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = setup().await;
    let api = k8s::TokenReviewServer::start("reviewer").await;
    let root = s.server.client(Some(ROOT));
    root.policy_write(
        "app",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let role = json!({ "bound_service_account_names": ["app"], "bound_service_account_namespaces": ["prod"],
                       "audience": k8s::AUDIENCE, "token_policies": ["app"] });
    enable_kubernetes_auth(&root, &api.url, &api.ca_pem, "reviewer", "app", role).await;
    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("prod", "app"));
    api.allow(&jwt, "prod", "app", &[k8s::AUDIENCE]);
    let token_file = s.dir.path().join("sa-token");
    std::fs::write(&token_file, &jwt).unwrap();

    let mut command = s.envrun("");
    command
        .env_remove("KINKO_TOKEN")
        .args(["--k8s-role", "app", "--k8s-token-path"])
        .arg(&token_file);
    let output = run(command.args([
        "--secret",
        "secret/app/db#password=DB_PASSWORD",
        "--",
        "sh",
        "-c",
        "env > \"$OUT\"",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(env_lines(&s.child_output()).contains(&format!("DB_PASSWORD={PASSWORD}").as_str()));
    assert!(!String::from_utf8_lossy(&output.stderr).contains(&jwt));

    let mut wrong = s.envrun("");
    wrong
        .env_remove("KINKO_TOKEN")
        .args(["--k8s-role", "other", "--k8s-token-path"])
        .arg(&token_file);
    let output = run(wrong.args(["--secret", "secret/app/db", "--", "true"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("invalid role name"),
        "{}",
        stderr(&output)
    );
}

fn wait_for_file(path: &Path, predicate: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if predicate(&std::fs::read_to_string(path).unwrap_or_default()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test]
async fn supervise_forwards_signals_passes_exit_codes_and_restarts_on_change() {
    let s = setup().await;
    let output = run(s.envrun(ROOT).args([
        "--supervise",
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]));
    assert_eq!(output.status.code(), Some(3));
    let output = run(s.envrun(ROOT).args([
        "--supervise",
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        "kill -KILL $$",
    ]));
    assert_eq!(output.status.code(), Some(128 + 9));

    // The program logs each start with the password it got, and each HUP it receives.
    let script = r#"echo "start $SECRET_APP_DB_PASSWORD" >> "$OUT"; trap 'echo hup >> "$OUT"' HUP; trap 'echo term >> "$OUT"; exit 0' TERM; while :; do sleep 0.1; done"#;
    let child = Spawned::spawn(
        s.envrun(ROOT)
            .args([
                "--supervise",
                "--watch",
                "1s",
                "--on-change",
                "restart",
                "--upcase",
                "--secret",
                "secret/app/db",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert!(wait_for_file(&s.out(), |t| t.contains(&format!("start {PASSWORD}"))));
    child.signal(libc::SIGHUP);
    assert!(
        wait_for_file(&s.out(), |t| t.contains("hup")),
        "SIGHUP reached the program"
    );

    let root = s.server.client(Some(ROOT));
    root.kv_write(
        "secret",
        "app/db",
        &secret(&[("password", "rotated-pw"), ("user", "app")]),
        None,
    )
    .await
    .unwrap();
    assert!(
        wait_for_file(&s.out(), |t| t.contains("start rotated-pw")),
        "restarted with the new secret: {}",
        s.child_output()
    );
    assert!(
        s.child_output().contains("term"),
        "the old program was stopped with SIGTERM first"
    );

    child.signal(libc::SIGTERM);
    let output = child.finish(Duration::from_secs(30));
    assert_eq!(
        output.status.code(),
        Some(0),
        "exits with the program's own code after forwarding TERM"
    );
    assert_no_values(&output);
    let errors = stderr(&output);
    assert!(
        errors.contains("secrets changed; restarting") && !errors.contains("rotated-pw"),
        "{errors}"
    );
}

/// Resumes a process stopped with SIGSTOP when dropped, also when the test fails.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        // SAFETY: signalling the test's own server by its pid.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A re-fetch that hangs (the server stopped: the kernel still accepts connections, nothing
/// answers until the per-request timeout and then `--timeout`) holds back neither a forwarded
/// signal nor noticing that the program exited.
#[tokio::test]
async fn supervise_forwards_signals_while_a_refetch_hangs() {
    let s = setup().await;
    let script = r#"trap 'echo term >> "$OUT"; exit 7' TERM; echo started >> "$OUT"; while :; do sleep 0.1; done"#;
    let mut child = Spawned::spawn(
        s.envrun(ROOT)
            .args([
                "--supervise",
                "--watch",
                "1s",
                "--timeout",
                "60s",
                "--secret",
                "secret/app/db",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert!(wait_for_file(&s.out(), |t| t.contains("started")));
    let stopped = Stopped::stop(s.server.pid());
    // A tick (every 1 s) has started a re-fetch by now, and it hangs on the stopped server.
    std::thread::sleep(Duration::from_millis(2500));
    let sent = std::time::Instant::now();
    child.signal(libc::SIGTERM);
    let status = child.wait_within(Duration::from_secs(5));
    let took = sent.elapsed();
    drop(stopped);
    assert!(
        s.child_output().contains("term"),
        "SIGTERM reached the program: {}",
        s.child_output()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "envrun exits with the program's code at once, not after the re-fetch ({took:?})"
    );
    let output = child.finish(Duration::from_secs(5));
    assert_no_values(&output);
}

/// A failed test leaves nothing running: dropping a `Spawned` while the test unwinds kills
/// envrun and the program it supervises.
#[tokio::test]
async fn a_failed_supervise_test_leaves_no_process_behind() {
    let s = setup().await;
    let script = r#"echo $$ > "$OUT"; while :; do sleep 0.1; done"#;
    let envrun = Spawned::spawn(s.envrun(ROOT).args([
        "--supervise",
        "--secret",
        "secret/app/db",
        "--",
        "sh",
        "-c",
        script,
    ]));
    let envrun_pid = envrun.pid();
    assert!(wait_for_file(&s.out(), |t| t.ends_with('\n')));
    let program_pid: i32 = s.child_output().trim().parse().unwrap();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _owned = envrun;
        panic!("a supervise test fails");
    }));
    assert!(failed.is_err());
    for pid in [envrun_pid, program_pid] {
        assert!(
            wait_for_file(Path::new("/dev/null"), |_| !running(pid)),
            "process {pid} outlived the failed test"
        );
    }
}

/// A command that hangs fails the test at its deadline, naming the command and what it
/// printed, and neither it nor what it started is left running.
#[test]
fn a_hung_command_fails_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleeper.pid");
    let started = std::time::Instant::now();
    let failed = std::panic::catch_unwind(|| {
        kinko_e2e::output_within(
            Command::new("sh").arg("-c").arg(format!(
                "sleep 1000 & echo $! > {}; echo printed-before-the-hang; wait",
                pid_file.display()
            )),
            Duration::from_secs(1),
        )
    });
    assert!(started.elapsed() < Duration::from_secs(15));
    let message = failed.expect_err("the deadline fails the test");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("did not finish within 1s")
            && message.contains("sleep 1000")
            && message.contains("printed-before-the-hang"),
        "{message}"
    );
    let sleeper: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for_file(Path::new("/dev/null"), |_| !running(sleeper)),
        "the command's own child was killed too"
    );
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The static envrun alone in an otherwise empty root directory (what a scratch image holds,
/// plus the /etc/hosts and /etc/resolv.conf that the kubelet mounts into every container):
/// it resolves the server's name, verifies TLS, fetches, and execs.
#[tokio::test]
async fn the_static_binary_works_in_an_empty_root() {
    let binary = std::env::var("KINKO_ENVRUN_STATIC").expect(
        "KINKO_ENVRUN_STATIC is not set: run ./scripts/test, which builds the static envrun",
    );
    let s = setup().await;
    let root = s.dir.path().join("scratch");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(&binary, root.join("envrun")).unwrap();
    std::fs::copy(&s.server.ca, root.join("ca.pem")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost kinko.test\n").unwrap();
    std::fs::write(
        root.join("etc/resolv.conf"),
        "nameserver 127.0.0.1\noptions ndots:1\n",
    )
    .unwrap();
    let port = s.server.addr.rsplit(':').next().unwrap();
    let in_root = |args: &[&str]| {
        let mut command = Command::new(kinko_e2e::tool("chroot"));
        command
            .arg(&root)
            .arg("/envrun")
            .args(args)
            .env_clear()
            .env("KINKO_ADDR", format!("https://localhost:{port}"))
            .env("KINKO_CACERT", "/ca.pem")
            .env("KINKO_TOKEN", ROOT)
            .stdin(Stdio::null());
        command
    };
    let output = run(&mut in_root(&[
        "--dry-run",
        "--upcase",
        "--secret",
        "secret/app/db",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "SECRET_APP_DB_PASSWORD\nSECRET_APP_DB_USER\n"
    );
    let output = run(&mut in_root(&[
        "--secret",
        "secret/app/db",
        "--",
        "/envrun",
        "--version",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("envrun "),
        "exec works without a shell or libc"
    );
    assert!(
        readelf_has_no_interpreter(Path::new(&binary)),
        "the binary is static"
    );
}

fn readelf_has_no_interpreter(binary: &Path) -> bool {
    let output = output(Command::new("readelf").arg("-l").arg(binary));
    output.status.success() && !String::from_utf8_lossy(&output.stdout).contains("INTERP")
}
