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
    let api = k8s::TokenReviewServer::start("reviewer").await;
    let root = server.client(Some("sealed-root"));
    let role = json!({ "bound_service_account_names": ["payments-api"], "bound_service_account_namespaces": ["payments"],
                       "audience": k8s::AUDIENCE, "token_policies": ["default"] });
    enable_kubernetes_auth(&root, &api.url, &api.ca_pem, "reviewer", "payments", role).await;
    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("payments", "payments-api"));
    api.allow(&jwt, "payments", "payments-api", &[k8s::AUDIENCE]);
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, &jwt).unwrap();
    let out = dir.path().join("child.out");
    let envrun = |variable: &str| {
        let mut command = Command::new(binary("envrun"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("KINKO_ADDR", &server.addr)
            .env("KINKO_CACERT", &server.ca)
            .env("OUT", &out)
            .env(variable, &value)
            .args(["--k8s-role", "payments", "--k8s-token-path"])
            .arg(&token_file)
            .args(["--", "sh", "-c", "env > \"$OUT\""])
            .stdin(Stdio::null());
        output(&mut command)
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
