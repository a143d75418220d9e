//! Sealed values end to end: `kinko seal` offline with a saved key file (checked against the
//! pinned fingerprint), `kinko sealed inspect`, and envrun in a "Pod" resolving the value by a
//! Kubernetes login — for the variable it was sealed for only.

#[path = "../server/tests/k8s/mod.rs"]
mod k8s;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use kinko_client::Method;
use kinko_e2e::{binary, enable_kubernetes_auth, output, Kinko};
use serde_json::json;

const SECRET: &str = "sealed-e2e-hunter2";

fn seal(dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(binary("kinko"))
        .arg("seal")
        .args(args)
        .current_dir(dir)
        .env_remove("KINKO_ADDR")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A "Pod" of `payments/payments-api`: Kubernetes auth on `server` (role `payments`, reviewed
/// by the returned TokenReview endpoint, which must stay alive) and the Pod's token file.
async fn payments_pod(
    server: &Kinko,
    root_token: &str,
    dir: &std::path::Path,
) -> (k8s::TokenReviewServer, std::path::PathBuf) {
    let api = k8s::TokenReviewServer::start("reviewer").await;
    let root = server.client(Some(root_token));
    let role = json!({ "bound_service_account_names": ["payments-api"], "bound_service_account_namespaces": ["payments"],
                       "audience": k8s::AUDIENCE, "token_policies": ["default"] });
    enable_kubernetes_auth(&root, &api.url, &api.ca_pem, "reviewer", "payments", role).await;
    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("payments", "payments-api"));
    api.allow(&jwt, "payments", "payments-api", &[k8s::AUDIENCE]);
    let token_file = dir.join("sa-token");
    std::fs::write(&token_file, &jwt).unwrap();
    (api, token_file)
}

/// envrun in that Pod with `env` (and nothing else inherited), its program writing its
/// environment to `out`.
fn envrun_in_pod(
    server: &Kinko,
    token_file: &std::path::Path,
    out: &std::path::Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Output {
    let mut command = Command::new(binary("envrun"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("KINKO_ADDR", &server.addr)
        .env("KINKO_CACERT", &server.ca)
        .env("OUT", out)
        .envs(env)
        .args(["--k8s-role", "payments", "--k8s-token-path"])
        .arg(token_file)
        .args(["--", "sh", "-c", "env > \"$OUT\""]);
    output(&mut command)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_offline_by_the_cli_and_resolved_by_envrun_for_its_variable_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(&dir.path().join("server"), Some("sealed-root"));
    let anonymous = server.client(None);
    let keys = anonymous
        .request(Method::GET, "sealed/keys", None)
        .await
        .unwrap()
        .unwrap();
    let fingerprint = keys["data"]["fingerprint"].as_str().unwrap().to_owned();
    let key = anonymous
        .request(Method::GET, "sealed/keys/payments/payments-api", None)
        .await
        .unwrap()
        .unwrap();
    let repo = dir.path().join("repo");
    let app = repo.join("apps/payments");
    std::fs::create_dir_all(&app).unwrap();
    let key_file = repo.join("payments-api.key.json");
    std::fs::write(&key_file, serde_json::to_vec(&key).unwrap()).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let binding = [
        "--namespace",
        "payments",
        "--service-account",
        "payments-api",
        "--name",
        "DB_PASSWORD",
        "--key",
        key_arg,
    ];

    // No pin anywhere: refused.
    let unpinned = seal(&app, &binding, SECRET);
    assert!(!unpinned.status.success());
    assert!(
        text(&unpinned.stderr).contains("no pinned signing key"),
        "{}",
        text(&unpinned.stderr)
    );

    // Pinned in .kinko.yaml two directories up; the value comes from stdin.
    std::fs::write(
        repo.join(".kinko.yaml"),
        format!("signing_key_fingerprint: {fingerprint}\n"),
    )
    .unwrap();
    let sealed = seal(&app, &binding, &format!("{SECRET}\n"));
    assert!(sealed.status.success(), "{}", text(&sealed.stderr));
    let value = text(&sealed.stdout).trim().to_owned();
    assert!(value.starts_with("kinko:sealed:v1:"));
    assert!(!text(&sealed.stdout).contains(SECRET) && !text(&sealed.stderr).contains(SECRET));

    let inspect = output(Command::new(binary("kinko")).args(["sealed", "inspect", &value]));
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    let lines = text(&inspect.stdout);
    for line in [
        "namespace: payments",
        "service_account: payments-api",
        "name: DB_PASSWORD",
        "epoch: 1",
        "kem: X-Wing",
    ] {
        assert!(lines.lines().any(|l| l == line), "{line} in {lines}");
    }
    assert!(
        lines.contains(&format!("plaintext_bytes: {}", SECRET.len())),
        "one trailing newline dropped: {lines}"
    );
    assert!(lines.contains(keys["data"]["cluster_id"].as_str().unwrap()));

    // A wrong pin, a forged signature, a key for another binding: the CLI refuses.
    let wrong_pin = seal(
        &app,
        &[
            &binding[..],
            &["--fingerprint", &format!("sha256:{}", "0".repeat(64))],
        ]
        .concat(),
        SECRET,
    );
    assert!(!wrong_pin.status.success());
    assert!(
        text(&wrong_pin.stderr).contains("not by the pinned"),
        "{}",
        text(&wrong_pin.stderr)
    );
    let mut forged = key.clone();
    let other_key = anonymous
        .request(Method::GET, "sealed/keys/payments/other", None)
        .await
        .unwrap()
        .unwrap();
    forged["data"]["document"] = other_key["data"]["document"].clone();
    let forged_file = repo.join("forged.json");
    std::fs::write(&forged_file, serde_json::to_vec(&forged).unwrap()).unwrap();
    let mut forged_args = binding.to_vec();
    forged_args[7] = forged_file.to_str().unwrap();
    let refused = seal(&app, &forged_args, SECRET);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("signature"),
        "{}",
        text(&refused.stderr)
    );
    let mut other_args = binding.to_vec();
    other_args[3] = "other";
    let mismatch = seal(&app, &other_args, SECRET);
    assert!(!mismatch.status.success());
    assert!(
        text(&mismatch.stderr).contains("not payments/other"),
        "{}",
        text(&mismatch.stderr)
    );

    // envrun in a Pod of payments/payments-api resolves it for DB_PASSWORD only.
    let (_api, token_file) = payments_pod(&server, "sealed-root", dir.path()).await;
    let out = dir.path().join("child.out");
    let envrun = |variable: &str| {
        envrun_in_pod(
            &server,
            &token_file,
            &out,
            [(variable.to_owned(), value.clone())],
        )
    };
    let ok = envrun("DB_PASSWORD");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(
        env.lines().any(|l| l == format!("DB_PASSWORD={SECRET}")),
        "{env}"
    );
    std::fs::remove_file(&out).unwrap();

    // The same value under another variable name: fail closed, naming the variable only.
    let moved = envrun("OTHER_VAR");
    assert!(!moved.status.success());
    let stderr = text(&moved.stderr);
    assert!(stderr.contains("OTHER_VAR"), "{stderr}");
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(&value),
        "{stderr}"
    );
    assert!(!out.exists(), "the program did not start");
}

/// `kinko ARGS` in `dir` against `server` (address and CA; a token when given), nothing else
/// inherited from the environment.
fn kinko_cli(dir: &std::path::Path, server: &Kinko, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("kinko"));
    kinko_e2e::clear_kinko_env(&mut command);
    for name in [
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_CACERT",
        "BAO_ADDR",
        "BAO_TOKEN",
    ] {
        command.env_remove(name);
    }
    command
        .args(args)
        .current_dir(dir)
        .env("KINKO_ADDR", &server.addr)
        .env("KINKO_CACERT", &server.ca);
    if let Some(token) = token {
        command.env("KINKO_TOKEN", token);
    }
    output(&mut command)
}

const MANIFEST: &str = "\
# payments-api: the database password is sealed; LOG_LEVEL is not a secret.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payments-api
  namespace: payments   # the namespace is part of the binding
spec:
  replicas: 2
  selector: {matchLabels: {app: payments-api}}
  template:
    metadata:
      labels: {app: payments-api}
      annotations:
        kinko.io/inject: \"true\"
    spec:
      serviceAccountName: payments-api
      containers:
        - name: api
          image: registry.example/payments-api:1.4.2
          env:
            - name: LOG_LEVEL
              value: info
            - name: DB_PASSWORD  # rotated 2026-11
              value: kinko:plain:manifest-e2e-pw
            - name: API_KEY
              value: \"kinko:plain:manifest-e2e-key\"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: untouched, namespace: payments}
data: {note: \"no marker here: only env values are sealed\"}
";

fn env_values(manifest: &str) -> Vec<(String, String)> {
    kinko_server::sealed::manifest::sites(manifest)
        .unwrap()
        .into_iter()
        .map(|site| match site.content {
            kinko_server::sealed::manifest::Content::Sealed(v) => (site.name, v),
            kinko_server::sealed::manifest::Content::Plain(_) => {
                panic!("{} still plain", site.name)
            }
        })
        .collect()
}

fn changed_lines(before: &str, after: &str) -> Vec<usize> {
    assert_eq!(before.lines().count(), after.lines().count());
    before
        .lines()
        .zip(after.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(n, _)| n + 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_is_sealed_in_place_rewrapped_after_rotation_and_its_pod_gets_the_values() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(&dir.path().join("server"), Some("manifest-root"));
    let anonymous = server.client(None);
    let keys = anonymous
        .request(Method::GET, "sealed/keys", None)
        .await
        .unwrap()
        .unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("apps")).unwrap();
    std::fs::write(
        repo.join(".kinko.yaml"),
        format!(
            "signing_key_fingerprint: {}\n",
            keys["data"]["fingerprint"].as_str().unwrap()
        ),
    )
    .unwrap();
    let file = repo.join("apps/deployment.yaml");
    std::fs::write(&file, MANIFEST).unwrap();

    // Online: keys fetched from the server, checked against the pin, sealed here.
    let sealed = kinko_cli(
        &repo,
        &server,
        None,
        &["seal", "--manifest", "apps/deployment.yaml"],
    );
    assert!(sealed.status.success(), "{}", text(&sealed.stderr));
    assert!(
        text(&sealed.stderr).contains("sealed 2 value(s)"),
        "{}",
        text(&sealed.stderr)
    );
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        changed_lines(MANIFEST, &first),
        [24, 26],
        "only the marked lines:\n{first}"
    );
    assert!(!first.contains("manifest-e2e-pw") && !first.contains("manifest-e2e-key"));
    assert!(first.contains(
        "            - name: DB_PASSWORD  # rotated 2026-11\n              value: kinko:sealed:v1:"
    ));
    assert!(first.contains("value: \"kinko:sealed:v1:"), "quotes kept");
    let values = env_values(&first);
    assert_eq!(
        values.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["DB_PASSWORD", "API_KEY"]
    );

    // Sealing again changes nothing: already sealed values keep their bytes.
    let again = kinko_cli(
        &repo,
        &server,
        None,
        &["seal", "--manifest", "apps/deployment.yaml"],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // Offline with a saved key file: a newly marked value is sealed, the others untouched.
    let key = anonymous
        .request(Method::GET, "sealed/keys/payments/payments-api", None)
        .await
        .unwrap()
        .unwrap();
    let key_file = repo.join("payments-api.key.json");
    std::fs::write(&key_file, serde_json::to_vec(&key).unwrap()).unwrap();
    let marked = first.replace("value: info", "value: kinko:plain:now-secret");
    std::fs::write(&file, &marked).unwrap();
    let mut offline = Command::new(binary("kinko"));
    kinko_e2e::clear_kinko_env(&mut offline);
    offline.env_remove("VAULT_ADDR").current_dir(&repo).args([
        "seal",
        "--manifest",
        "apps/deployment.yaml",
        "--key",
        "payments-api.key.json",
    ]);
    let offline = output(&mut offline);
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    let second = std::fs::read_to_string(&file).unwrap();
    assert_eq!(changed_lines(&marked, &second), [22]);
    assert_eq!(env_values(&second)[1..], values[..]);

    // A marked value outside a container's env is refused and the file left as it was.
    let stray = format!(
        "{second}---\nkind: ConfigMap\nmetadata: {{name: x}}\ndata: {{a: \"kinko:plain:x\"}}\n"
    );
    std::fs::write(&file, &stray).unwrap();
    let refused = kinko_cli(
        &repo,
        &server,
        None,
        &["seal", "--manifest", "apps/deployment.yaml"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("outside a container's env"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stray);
    std::fs::write(&file, &second).unwrap();

    // The Pod (envrun with its Kubernetes login) gets every plaintext.
    let (_api, token_file) = payments_pod(&server, "manifest-root", dir.path()).await;
    let out = dir.path().join("child.out");
    let pod_env = |manifest: &str| {
        let run = envrun_in_pod(&server, &token_file, &out, env_values(manifest));
        assert!(run.status.success(), "{}", text(&run.stderr));
        std::fs::read_to_string(&out).unwrap()
    };
    let env = pod_env(&second);
    for line in [
        "DB_PASSWORD=manifest-e2e-pw",
        "API_KEY=manifest-e2e-key",
        "LOG_LEVEL=now-secret",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in {env}");
    }

    // After a rotation: rewrap moves every value to the new epoch, same bindings; the file
    // changes only on those lines, and the Pod still gets the same plaintexts.
    let no_token = kinko_cli(&repo, &server, None, &["sealed", "rotate"]);
    assert!(!no_token.status.success());
    let rotated = kinko_cli(&repo, &server, Some("manifest-root"), &["sealed", "rotate"]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let rewrap = kinko_cli(
        &repo,
        &server,
        Some("manifest-root"),
        &["sealed", "rewrap", "--manifest", "apps/deployment.yaml"],
    );
    assert!(rewrap.status.success(), "{}", text(&rewrap.stderr));
    let third = std::fs::read_to_string(&file).unwrap();
    assert_eq!(changed_lines(&second, &third), [22, 24, 26]);
    for (name, value) in env_values(&third) {
        let header = kinko_server::sealed::decode(&value).unwrap().header;
        assert_eq!((header.name.as_str(), header.epoch), (name.as_str(), 2));
        assert_eq!(
            (header.namespace.as_str(), header.service_account.as_str()),
            ("payments", "payments-api")
        );
    }
    let env = pod_env(&third);
    assert!(
        env.lines().any(|l| l == "DB_PASSWORD=manifest-e2e-pw"),
        "{env}"
    );
    // Rewrapping a current manifest changes nothing.
    let idle = kinko_cli(
        &repo,
        &server,
        Some("manifest-root"),
        &["sealed", "rewrap", "--manifest", "apps/deployment.yaml"],
    );
    assert!(idle.status.success(), "{}", text(&idle.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), third);

    // Through a symlink (a kustomize base shared by overlays): the real file is sealed, the
    // link stays a link, and no temporary file is left behind.
    std::fs::create_dir_all(repo.join("base")).unwrap();
    std::fs::write(repo.join("base/shared.yaml"), MANIFEST).unwrap();
    std::os::unix::fs::symlink("../base/shared.yaml", repo.join("apps/link.yaml")).unwrap();
    let linked = kinko_cli(
        &repo,
        &server,
        None,
        &["seal", "--manifest", "apps/link.yaml"],
    );
    assert!(linked.status.success(), "{}", text(&linked.stderr));
    let shared = std::fs::read_to_string(repo.join("base/shared.yaml")).unwrap();
    assert!(!shared.contains("kinko:plain:"), "{shared}");
    assert!(std::fs::symlink_metadata(repo.join("apps/link.yaml"))
        .unwrap()
        .file_type()
        .is_symlink());
    for folder in ["apps", "base"] {
        let names: Vec<_> = std::fs::read_dir(repo.join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "left behind in {folder}: {names:?}");
    }
    kinko_e2e::assert_no_secret_in_logs(
        dir.path(),
        &["manifest-e2e-pw", "manifest-e2e-key", "now-secret"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_initialises_reports_rotates_and_moves_the_sealing_key_to_another_cluster()
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = kinko_e2e::write_certificate(dir.path(), "server");
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
    let new = Kinko::production(&vars, &ca, &dir.path().join("new"));
    let here = dir.path();

    let status = kinko_cli(here, &new, None, &["status"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status.stderr));
    assert!(
        text(&status.stdout)
            .lines()
            .any(|l| l == "initialized: false"),
        "{}",
        text(&status.stdout)
    );
    let init = kinko_cli(
        here,
        &new,
        None,
        &[
            "operator",
            "init",
            "--recovery-shares",
            "3",
            "--recovery-threshold",
            "2",
        ],
    );
    assert!(init.status.success(), "{}", text(&init.stderr));
    let printed = text(&init.stdout);
    assert_eq!(
        printed
            .lines()
            .filter(|l| l.starts_with("Recovery key "))
            .count(),
        3,
        "{printed}"
    );
    let root = printed
        .lines()
        .find_map(|l| l.strip_prefix("Root token: "))
        .unwrap()
        .to_owned();
    let init_again = kinko_cli(here, &new, None, &["operator", "init"]);
    assert!(!init_again.status.success());
    assert!(
        text(&init_again.stderr).contains("already initialized"),
        "{}",
        text(&init_again.stderr)
    );
    let mut ready = false;
    for _ in 0..50 {
        let status = kinko_cli(here, &new, None, &["status"]);
        if status.status.success() {
            assert!(text(&status.stdout).lines().any(|l| l == "sealed: false"));
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "unsealed after init");
    let rotate = kinko_cli(here, &new, Some(&root), &["operator", "rotate"]);
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    assert!(
        text(&rotate.stdout).contains("term 2"),
        "{}",
        text(&rotate.stdout)
    );

    // A value sealed by another cluster opens here once its sealing key is imported.
    let old = Kinko::dev(&dir.path().join("old"), Some("old-root"));
    let old_root = old.client(Some("old-root"));
    let value = old_root
        .request(
            Method::POST,
            "sealed/encrypt",
            Some(&json!({ "namespace": "payments", "service_account": "payments-api", "name": "DB_PASSWORD",
                          "plaintext": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "moved-pw") })),
        )
        .await
        .unwrap()
        .unwrap()["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_pin = old
        .client(None)
        .request(Method::GET, "sealed/keys", None)
        .await
        .unwrap()
        .unwrap()["data"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let import_key = kinko_cli(
        here,
        &new,
        Some(&root),
        &["operator", "sealing-key", "import-key"],
    );
    assert!(import_key.status.success(), "{}", text(&import_key.stderr));
    std::fs::write(here.join("import-key.json"), &import_key.stdout).unwrap();
    let pin = new
        .client(None)
        .request(Method::GET, "sealed/keys", None)
        .await
        .unwrap()
        .unwrap()["data"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = kinko_cli(
        here,
        &old,
        Some("old-root"),
        &[
            "operator",
            "sealing-key",
            "export",
            "--import-key",
            "import-key.json",
            "--fingerprint",
            &format!("sha256:{}", "1".repeat(64)),
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("not by the pinned"),
        "{}",
        text(&wrong.stderr)
    );
    let export = kinko_cli(
        here,
        &old,
        Some("old-root"),
        &[
            "operator",
            "sealing-key",
            "export",
            "--import-key",
            "import-key.json",
            "--fingerprint",
            &pin,
        ],
    );
    assert!(export.status.success(), "{}", text(&export.stderr));
    std::fs::write(here.join("bundle"), &export.stdout).unwrap();
    let rewrap_before = kinko_cli(here, &new, Some(&root), &["sealed", "rewrap", &value]);
    assert!(
        !rewrap_before.status.success(),
        "not importable before the import"
    );
    let import = kinko_cli(
        here,
        &new,
        Some(&root),
        &[
            "operator",
            "sealing-key",
            "import",
            "--from-file",
            "bundle",
            "--fingerprint",
            &old_pin,
        ],
    );
    assert!(import.status.success(), "{}", text(&import.stderr));

    // In a manifest, values of the other cluster stay unless moved explicitly.
    let manifest = MANIFEST
        .replace("kinko:plain:manifest-e2e-pw", &value)
        .replace("\"kinko:plain:manifest-e2e-key\"", "plain-config");
    std::fs::write(here.join("deployment.yaml"), &manifest).unwrap();
    let kept = kinko_cli(
        here,
        &new,
        Some(&root),
        &["sealed", "rewrap", "--manifest", "deployment.yaml"],
    );
    assert!(kept.status.success(), "{}", text(&kept.stderr));
    assert!(
        text(&kept.stderr).contains("--move-imported"),
        "{}",
        text(&kept.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(here.join("deployment.yaml")).unwrap(),
        manifest
    );
    let moved_file = kinko_cli(
        here,
        &new,
        Some(&root),
        &[
            "sealed",
            "rewrap",
            "--manifest",
            "deployment.yaml",
            "--move-imported",
        ],
    );
    assert!(moved_file.status.success(), "{}", text(&moved_file.stderr));
    let after = std::fs::read_to_string(here.join("deployment.yaml")).unwrap();
    assert_eq!(changed_lines(&manifest, &after), [24]);
    let rewrap = kinko_cli(here, &new, Some(&root), &["sealed", "rewrap", &value]);
    assert!(rewrap.status.success(), "{}", text(&rewrap.stderr));
    let moved = text(&rewrap.stdout).trim().to_owned();
    let inspect = kinko_cli(here, &new, None, &["sealed", "inspect", &moved]);
    let new_id = new.client(None).seal_status().await.unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text(&inspect.stdout)
            .lines()
            .any(|l| l == format!("cluster_id: {new_id}")),
        "{}",
        text(&inspect.stdout)
    );
    assert!(text(&inspect.stdout)
        .lines()
        .any(|l| l == "name: DB_PASSWORD"));
    let compare = new
        .client(Some(&root))
        .request(
            Method::POST,
            "sealed/compare",
            Some(&json!({ "ciphertext": value, "plaintext": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "moved-pw") })),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(compare["data"]["match"], json!(true));
    let old_id = old.client(None).seal_status().await.unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let remove = kinko_cli(
        here,
        &new,
        Some(&root),
        &["operator", "sealing-key", "remove", &old_id],
    );
    assert!(remove.status.success(), "{}", text(&remove.stderr));
    let after_removal = kinko_cli(here, &new, Some(&root), &["sealed", "rewrap", &value]);
    assert!(
        !after_removal.status.success(),
        "the old cluster's values no longer open"
    );
    kinko_e2e::assert_no_secret_in_logs(dir.path(), &["moved-pw", &root]);
}
