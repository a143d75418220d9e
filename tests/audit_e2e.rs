//! The audit trail and observability end to end, against the binary: a file device records a
//! request and a response entry for every request (KV, token create, a Kubernetes login, a
//! denied request) with no value, token or JWT in the clear, in the file or in the server's own
//! trace-level JSON logs; `sys/audit-hash` finds a value; SIGHUP after a rename moves entries
//! to the new file; `sys/metrics` parses with the Prometheus project's parser and its
//! histograms move.

#[path = "../server/tests/k8s/mod.rs"]
mod k8s;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use kinko_client::Method;
use kinko_e2e::{enable_kubernetes_auth, eventually, logs_under, output, tool, Kinko};
use serde_json::{json, Value};

const ROOT: &str = "audit-e2e-root-token";
const VALUE: &str = "audit-e2e-secret-value-93c1";
const OTHER_VALUE: &str = "audit-e2e-second-value-27aa";
/// Sent where an error message might echo it.
const CANARY: &str = "canary-7f3e91d2";

fn entries(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect()
}

/// `[family, type, sample name, labels, value]` as the parser script prints them.
type ParsedSample = (String, String, String, HashMap<String, String>, f64);

/// `name{labels} value` samples of one family, through prometheus_client's parser.
fn parsed_samples(metrics: &str, family: &str) -> Vec<(String, f64)> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        out = []\n\
        for f in parse(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       out.append([f.name, f.type, s.name, s.labels, s.value])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(tool("python3"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused sys/metrics: {}\n{metrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<ParsedSample> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .filter(|(name, _, _, _, _)| name == family)
        .map(|(_, kind, sample, labels, value)| {
            let mut labels: Vec<_> = labels.into_iter().collect();
            labels.sort();
            let labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{kind}:{sample}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_records_every_request_without_any_secret_and_metrics_parse() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev_with_env(
        &dir.path().join("server"),
        Some(ROOT),
        &[("KINKO_LOG", "trace"), ("KINKO_LOG_FORMAT", "json")],
    );
    let root = server.client(Some(ROOT));
    let file = dir.path().join("audit/kinko-audit.log");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    root.request(
        Method::PUT,
        "sys/audit/file",
        Some(&json!({ "type": "file", "options": { "file_path": file.display().to_string() } })),
    )
    .await
    .unwrap();

    // KV writes and reads, a token, a Kubernetes login, a denied request.
    let secret = |v: &str| json!({ "data": { "password": v } });
    root.request(Method::POST, "secret/data/app/db", Some(&secret(VALUE)))
        .await
        .unwrap();
    root.request(
        Method::POST,
        "secret/data/app/other",
        Some(&secret(OTHER_VALUE)),
    )
    .await
    .unwrap();
    let read = root
        .request(Method::GET, "secret/data/app/db", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read["data"]["data"]["password"], VALUE);
    let created = root.token_create(&["default"], Some("1h")).await.unwrap();
    let api = k8s::TokenReviewServer::start("reviewer").await;
    root.policy_write(
        "app-read",
        r#"path "secret/data/app/db" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let role = json!({ "bound_service_account_names": ["api"], "bound_service_account_namespaces": ["shop"],
                       "audience": k8s::AUDIENCE, "token_policies": ["app-read"] });
    enable_kubernetes_auth(&root, &api.url, &api.ca_pem, "reviewer", "shop", role).await;
    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("shop", "api"));
    api.allow(&jwt, "shop", "api", &[k8s::AUDIENCE]);
    let login = server
        .client(None)
        .request(
            Method::POST,
            "auth/kubernetes/login",
            Some(&json!({ "role": "shop", "jwt": jwt })),
        )
        .await
        .unwrap()
        .unwrap();
    let pod_token = login["auth"]["client_token"].as_str().unwrap().to_owned();
    let denied = server
        .client(Some(&created.client_token))
        .request(Method::GET, "secret/data/app/db", None)
        .await;
    assert_eq!(denied.unwrap_err().status(), Some(403));

    // A request and a response entry for each request made after the device was enabled.
    let all = entries(&file);
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for entry in &all {
        by_id
            .entry(entry["request"]["id"].as_str().unwrap())
            .or_default()
            .push(entry["type"].as_str().unwrap());
    }
    assert!(
        by_id
            .values()
            .all(|kinds| kinds == &["request", "response"]),
        "{by_id:?}"
    );
    let paths: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "request")
        .map(|e| e["request"]["path"].as_str().unwrap())
        .collect();
    for expected in [
        "secret/data/app/db",
        "secret/data/app/other",
        "auth/token/create",
        "sys/auth/kubernetes",
        "auth/kubernetes/config",
        "auth/kubernetes/role/shop",
        "auth/kubernetes/login",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    assert_eq!(
        paths.iter().filter(|p| **p == "secret/data/app/db").count(),
        3,
        "{paths:?}"
    );
    let login_entry = all
        .iter()
        .find(|e| e["type"] == "response" && e["request"]["path"] == "auth/kubernetes/login")
        .unwrap();
    assert_eq!(login_entry["request"]["remote_address"], "127.0.0.1");
    assert!(login_entry["response"]["auth"]["client_token"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));
    let denied_entry = all
        .iter()
        .find(|e| e["type"] == "response" && e["response"]["status"] == 403)
        .unwrap();
    assert_eq!(denied_entry["error"], "permission denied");

    // The canary run: envrun fetches the value with the Pod's token into a program (which does
    // get it), and bad requests carry canaries where a careless error message would echo them.
    let envrun_out = dir.path().join("envrun-child.out");
    let mut envrun = Command::new(kinko_e2e::binary("envrun"));
    envrun
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("KINKO_ADDR", &server.addr)
        .env("KINKO_CACERT", &server.ca)
        .env("KINKO_TOKEN", &pod_token)
        .env("OUT", &envrun_out)
        .args([
            "--secret",
            "secret/app/db#password=DB_PASSWORD",
            "--",
            "sh",
            "-c",
        ])
        .arg("printf %s \"$DB_PASSWORD\" > \"$OUT\"");
    let envrun = output(&mut envrun);
    assert!(
        envrun.status.success(),
        "{}",
        String::from_utf8_lossy(&envrun.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&envrun_out).unwrap(),
        VALUE,
        "the program got it"
    );
    let mut error_bodies = Vec::new();
    for (client, method, path, body) in [
        (
            &root,
            Method::POST,
            "secret/data/app/db",
            json!({ "data": CANARY }),
        ),
        (
            &root,
            Method::POST,
            "secret/data/app/db",
            json!({ "data": { "k": CANARY }, "options": { "cas": CANARY } }),
        ),
        (
            &root,
            Method::POST,
            "auth/token/create",
            json!({ "policies": CANARY, "ttl": CANARY }),
        ),
        (
            &root,
            Method::PUT,
            "sys/policies/acl/broken",
            json!({ "policy": format!("path \"x\" {{ capabilities = [{CANARY}") }),
        ),
        (
            &root,
            Method::POST,
            "sys/audit-hash/nowhere",
            json!({ "input": CANARY }),
        ),
        (
            &server.client(None),
            Method::POST,
            "auth/kubernetes/login",
            json!({ "role": "shop", "jwt": format!("{CANARY}.{CANARY}.{CANARY}") }),
        ),
        (
            &server.client(None),
            Method::POST,
            "auth/kubernetes/login",
            json!({ "role": CANARY, "jwt": jwt }),
        ),
        (
            &server.client(None),
            Method::POST,
            "auth/kubernetes/login",
            json!({ "role": format!("{CANARY}/x {CANARY}"), "jwt": jwt }),
        ),
        (
            &root,
            Method::POST,
            "auth/token/create",
            json!({ "type": CANARY }),
        ),
        (
            &server.client(Some(&pod_token)),
            Method::POST,
            "secret/data/app/db",
            json!({ "data": { "password": CANARY } }),
        ),
        (
            &server.client(Some(CANARY)),
            Method::GET,
            "secret/data/app/db",
            Value::Null,
        ),
    ] {
        let body = (!body.is_null()).then_some(&body);
        let error = client.request(method, path, body).await.expect_err(path);
        assert!(matches!(error.status(), Some(400..=499)), "{path}: {error}");
        error_bodies.push(error.to_string());
    }

    // sys/audit-hash of a value matches the HMAC written for it.
    let hash = root
        .request(
            Method::POST,
            "sys/audit-hash/file",
            Some(&json!({ "input": VALUE })),
        )
        .await
        .unwrap()
        .unwrap()["data"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(std::fs::read_to_string(&file).unwrap().contains(&hash));

    // Nothing secret in the audit file, the server's trace-level logs, envrun's own output,
    // any error body, or the metrics. (Core files: the server allows itself none, see the
    // hardening tests in server_e2e.rs.)
    let secrets = [
        VALUE,
        OTHER_VALUE,
        ROOT,
        &created.client_token,
        &pod_token,
        &jwt,
        CANARY,
    ];
    let audit_text = std::fs::read_to_string(&file).unwrap();
    let metrics_text = root.text(Method::GET, "sys/metrics").await.unwrap().1;
    let outputs = [
        ("the audit file", audit_text),
        ("the metrics", metrics_text),
        (
            "envrun's stdout",
            String::from_utf8_lossy(&envrun.stdout).into_owned(),
        ),
        (
            "envrun's stderr",
            String::from_utf8_lossy(&envrun.stderr).into_owned(),
        ),
        ("the error bodies", error_bodies.join("\n")),
    ];
    for (what, text) in &outputs {
        for (i, value) in secrets.iter().enumerate() {
            assert!(
                !text.contains(value),
                "secret #{i} in {what}: {}",
                text.lines().find(|l| l.contains(value)).unwrap_or_default()
            );
        }
    }
    kinko_e2e::assert_no_secret_in_logs(dir.path(), &secrets);

    // The logs are JSON, and the lines of a request carry its id.
    let (_, log) = logs_under(dir.path()).pop().unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("KINKO_LOG_FORMAT=json lines are JSON"))
        .collect();
    assert!(lines.len() > 10, "trace-level logs were written");
    let login_id = login_entry["request"]["id"].as_str().unwrap();
    assert!(
        lines.iter().any(|l| l["span"]["id"] == login_id),
        "a log line inside the login request carries its id"
    );

    // logrotate: rename, SIGHUP, and the entries continue in a new file at the path.
    let rotated = dir.path().join("audit/kinko-audit.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let kill = output(Command::new("kill").args(["-HUP", &server.pid().to_string()]));
    assert!(kill.status.success());
    let before = entries(&rotated).len();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let _ = root.request(Method::GET, "secret/data/app/db", None).await;
            file.exists()
        })
        .await,
        "entries go to a new file at the device's path after SIGHUP"
    );
    assert!(entries(&file)
        .iter()
        .any(|e| e["request"]["path"] == "secret/data/app/db"));
    assert!(
        entries(&rotated).len() <= before + 4,
        "the old file stops growing"
    );

    // Metrics: the Prometheus parser reads them; the latency histogram of KV reads moves.
    let metrics = || async { root.text(Method::GET, "sys/metrics").await.unwrap().1 };
    let kv_reads = |text: &str| {
        parsed_samples(text, "kinko_http_request_duration_seconds")
            .into_iter()
            .find(|(k, _)| {
                k == "histogram:kinko_http_request_duration_seconds_count{code=2xx,route=kv/data}"
            })
            .map_or(0.0, |(_, v)| v)
    };
    let first = metrics().await;
    for _ in 0..3 {
        root.request(Method::GET, "secret/data/app/db", None)
            .await
            .unwrap();
    }
    let second = metrics().await;
    assert_eq!(kv_reads(&second), kv_reads(&first) + 3.0, "{second}");
    let audit_ok = parsed_samples(&second, "kinko_audit_writes")
        .into_iter()
        .find(|(k, _)| k.contains("result=ok"))
        .map(|(_, v)| v)
        .unwrap();
    assert!(audit_ok > 20.0, "{audit_ok}");
    for family in [
        "kinko_storage_duration_seconds",
        "kinko_keyring_term",
        "kinko_tokens_created",
        "kinko_auth_logins",
    ] {
        assert!(
            !parsed_samples(&second, family).is_empty(),
            "{family} in {second}"
        );
    }
    assert!(
        !second.contains("app/db") && !second.contains(VALUE),
        "no path or value in a label"
    );
}
