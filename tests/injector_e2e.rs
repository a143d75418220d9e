//! kinko-injector end to end: the real binary over real HTTPS (a certificate made with rcgen
//! here), fed the shared AdmissionReview fixtures and malformed bodies; then the whole path —
//! the injected init container's `envrun install` and the rewritten command run as processes
//! against `kinko server --dev` with Kubernetes login through a local TokenReview endpoint.

#[path = "../server/tests/k8s/mod.rs"]
mod k8s;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kinko_e2e::{
    binary, clear_kinko_env, enable_kubernetes_auth, output, write_certificate, Kinko,
    STARTUP_TIMEOUT,
};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/admission"
);

fn fixture(name: &str) -> Value {
    let path = format!("{FIXTURES}/{name}");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

/// `kinko-injector` on a free loopback port, stopped by its own pid.
struct Injector {
    child: Child,
    url: String,
    ca: PathBuf,
    stderr: PathBuf,
}

impl Injector {
    fn start(dir: &Path, kinko_addr: &str, kinko_ca: &Path, audience: &str) -> Injector {
        Injector::start_with(dir, kinko_addr, kinko_ca, audience, &[])
    }

    /// `extra` variables set last (over the defaults above them).
    fn start_with(
        dir: &Path,
        kinko_addr: &str,
        kinko_ca: &Path,
        audience: &str,
        extra: &[(&str, &str)],
    ) -> Injector {
        let (ca, cert, key) = write_certificate(dir, "injector");
        let stderr = dir.join("kinko-injector.stderr");
        let mut command = Command::new(binary("kinko-injector"));
        clear_kinko_env(&mut command);
        command
            .env("KINKO_INJECTOR_LISTEN_ADDR", "127.0.0.1:0")
            .env("KINKO_INJECTOR_TLS_CERT_FILE", &cert)
            .env("KINKO_INJECTOR_TLS_KEY_FILE", &key)
            .env("KINKO_INJECTOR_KINKO_ADDR", kinko_addr)
            .env("KINKO_INJECTOR_KINKO_CA_FILE", kinko_ca)
            .env(
                "KINKO_INJECTOR_ENVRUN_IMAGE",
                "registry.example.com/kinko/envrun:0.1.0",
            )
            .env("KINKO_INJECTOR_AUDIENCE", audience)
            .env("KINKO_INJECTOR_IMAGE_LOOKUP", "false")
            .env("POD_NAMESPACE", "kinko-system")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = command.spawn().expect("start kinko-injector");
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
        let line = rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        let Some(url) = line.strip_prefix("kinko-injector listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kinko-injector did not start within {STARTUP_TIMEOUT:?}: {line:?}\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Injector {
            url: url.to_owned(),
            child,
            ca,
            stderr,
        }
    }

    fn client(&self) -> reqwest::Client {
        self.client_with(false)
    }

    /// `h2`: HTTP/2 (ALPN), as the API server's Go client speaks it.
    fn client_with(&self, h2: bool) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tls = tls;
        let mut builder = reqwest::Client::builder();
        if h2 {
            tls.alpn_protocols = vec![b"h2".to_vec()];
            builder = builder.http2_prior_knowledge();
        }
        builder
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// SIGTERM by pid; the exit status within 40 s.
    fn terminate(mut self) -> ExitStatus {
        // SAFETY: signalling our own child, not yet reaped, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kinko-injector ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let response = client
        .post(format!("{url}/mutate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, value)
}

/// Posts a review; checks the answer's shape; returns it and the patched object, if any.
async fn review(client: &reqwest::Client, url: &str, review: &Value) -> (Value, Option<Value>) {
    let (status, answer) = post(client, url, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
    let patched = response.get("patch").map(|patch| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut object = review["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies");
        let _: Pod = serde_json::from_value(object.clone()).expect("a valid Pod");
        object
    });
    (response, patched)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
}

#[tokio::test]
async fn webhook_over_https_answers_fixtures_and_malformed_bodies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (kinko_ca, _, _) = write_certificate(dir.path(), "kinko");
    let injector = Injector::start(
        dir.path(),
        "https://kinko.kinko-system.svc:8200",
        &kinko_ca,
        "kinko",
    );
    let client = injector.client();
    let url = injector.url.clone();
    for path in ["/healthz", "/readyz"] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    // The fixtures: two are injected (and re-sending the result changes nothing), one denied
    // with the fix, two allowed unchanged.
    let mut mutated = 0;
    for name in ["deployment-pod.json", "multi-container-pod.json"] {
        let request = fixture(name);
        let started = Instant::now();
        let (response, patched) = review(&client, &url, &request).await;
        println!("{name}: answered in {:?}", started.elapsed());
        assert_eq!(response["allowed"], true);
        let pod = patched.expect("a patch");
        mutated += 1;
        let install = &pod["spec"]["initContainers"][0];
        assert_eq!(install["name"], "kinko-envrun-install");
        assert_eq!(
            install["env"][0]["value"],
            std::fs::read_to_string(&kinko_ca).unwrap(),
            "the CA reaches the Pod through the install container, from the operator's file"
        );
        let app = &pod["spec"]["containers"][0];
        let command: Vec<String> = serde_json::from_value(app["command"].clone()).unwrap();
        let original: Vec<String> = serde_json::from_value(
            request["request"]["object"]["spec"]["containers"][0]["command"].clone(),
        )
        .unwrap();
        let dash = command.iter().position(|w| w == "--").unwrap();
        assert_eq!(command[dash + 1..], original[..]);
        assert_eq!(
            pod["metadata"]["annotations"]["kinko.io/status"],
            "injected"
        );
        let mut again = request.clone();
        again["request"]["object"] = pod;
        let (response, patched) = review(&client, &url, &again).await;
        assert_eq!(response["allowed"], true);
        assert!(patched.is_none(), "re-invocation: no further change");
    }
    // Latency of one injection over HTTPS on a kept-alive connection (debug build).
    let body = serde_json::to_vec(&fixture("deployment-pod.json")).unwrap();
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let (status, _) = post(&client, &url, body.clone()).await;
        times.push(started.elapsed());
        assert_eq!(status, 200);
        mutated += 1;
    }
    times.sort();
    println!(
        "deployment-pod.json x200: p50 {:?}, p99 {:?}, max {:?}",
        times[100], times[198], times[199]
    );
    assert!(
        times[198] < Duration::from_millis(500),
        "p99 {:?}",
        times[198]
    );
    let (response, patched) = review(&client, &url, &fixture("pod-no-command.json")).await;
    assert_eq!(response["allowed"], false);
    assert!(patched.is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("kinko.io/command-report") && message.contains("set command"));
    assert!(
        message.contains("registry.example.com/analytics/report:2026.11")
            && message.contains("KINKO_INJECTOR_IMAGE_LOOKUP=false"),
        "lookup off: the image and why: {message}"
    );
    for name in ["not-annotated-pod.json", "configmap.json"] {
        let (response, patched) = review(&client, &url, &fixture(name)).await;
        assert_eq!(response["allowed"], true, "{name}");
        assert!(
            patched.is_none() && response.get("patchType").is_none(),
            "{name}"
        );
    }
    // The injector's own namespace is excluded.
    let mut own = fixture("deployment-pod.json");
    own["request"]["namespace"] = json!("kinko-system");
    let (response, patched) = review(&client, &url, &own).await;
    assert!(patched.is_none());
    assert!(response["warnings"][0]
        .as_str()
        .unwrap()
        .contains("kinko-system"));

    // Malformed bodies: a 400 (or 413) with a message, and the server keeps serving.
    let malformed: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "not JSON"),
        (b"{}".to_vec(), 400, "apiVersion"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
            400,
            "admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "request",
        ),
    ];
    let errors = malformed.len() as u64;
    for (body, status, expected) in malformed {
        let (got, answer) = post(&client, &url, body).await;
        assert_eq!(got, status, "{answer}");
        let message = answer["errors"][0].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{expected:?} in {answer}");
    }
    // Over the limit: 413. Over HTTP/2, where an early answer does not cut the upload (an
    // HTTP/1 server must close the connection on an unread body, and the client may see only
    // the broken pipe).
    let h2 = injector.client_with(true);
    let (got, answer) = post(&h2, &url, vec![b' '; 5 * 1024 * 1024]).await;
    assert_eq!(got, 413, "{answer}");
    assert!(answer["errors"][0]
        .as_str()
        .unwrap()
        .contains("4194304 bytes"));
    let errors = errors + 1;
    let (response, patched) = review(&h2, &url, &fixture("deployment-pod.json")).await;
    assert!(
        response["allowed"] == true && patched.is_some(),
        "HTTP/2 serves reviews"
    );
    mutated += 1;
    let response = client.get(format!("{url}/mutate")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let response = client.get(format!("{url}/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "kinko_injector_reviews_total{outcome=\"mutated\"}"
        ),
        mutated
    );
    // Two re-sends, two left alone, the excluded namespace.
    assert_eq!(
        metric(
            &metrics,
            "kinko_injector_reviews_total{outcome=\"unchanged\"}"
        ),
        5
    );
    assert_eq!(
        metric(&metrics, "kinko_injector_reviews_total{outcome=\"denied\"}"),
        1
    );
    assert_eq!(
        metric(&metrics, "kinko_injector_reviews_total{outcome=\"error\"}"),
        errors
    );
    let count = metric(&metrics, "kinko_injector_review_duration_seconds_count");
    assert_eq!(count, mutated + 5 + 1 + errors);
    assert_eq!(
        metric(
            &metrics,
            "kinko_injector_review_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        count
    );
    println!("{metrics}");

    // Idle keep-alive connections would hold the shutdown grace (30 s) open.
    drop((client, h2));
    let started = Instant::now();
    // SIGTERM, then let this runtime close the dropped connections while the server drains.
    let status = tokio::task::spawn_blocking(move || injector.terminate())
        .await
        .unwrap();
    println!("stopped in {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no request was in flight"
    );
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn a_config_error_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certificate(dir.path(), "injector");
    let mut command = Command::new(binary("kinko-injector"));
    clear_kinko_env(&mut command);
    command
        .env("KINKO_INJECTOR_TLS_CERT_FILE", &cert)
        .env("KINKO_INJECTOR_TLS_KEY_FILE", &key)
        .env("KINKO_INJECTOR_KINKO_ADDR", "http://kinko:8200")
        .env("KINKO_INJECTOR_KINKO_CA_FILE", &ca)
        .env("KINKO_INJECTOR_ENVRUN_IMAGE", "envrun:1");
    let result = output(&mut command);
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("KINKO_INJECTOR_KINKO_ADDR"), "{stderr}");
}

/// Runs `argv` of a container the way a kubelet would here: the Pod's paths mapped into `root`,
/// only the container's literal env values.
fn run_container(
    container: &Value,
    root: &Path,
    program_override: Option<&[&str]>,
) -> std::process::Output {
    let map = |text: &str| {
        text.replace(
            "/var/run/secrets/kinko.io",
            &root.join("token").display().to_string(),
        )
        .replace("/kinko", &root.join("kinko").display().to_string())
    };
    let mut argv: Vec<String> = serde_json::from_value::<Vec<String>>(container["command"].clone())
        .unwrap()
        .iter()
        .map(|w| map(w))
        .collect();
    argv.extend(
        serde_json::from_value::<Vec<String>>(container["args"].clone()).unwrap_or_default(),
    );
    if let Some(program) = program_override {
        let dash = argv.iter().position(|w| w == "--").expect("--");
        argv.truncate(dash + 1);
        argv.extend(program.iter().map(|w| w.to_string()));
    }
    if argv[0] == "/envrun" {
        // The envrun image's binary: this build's envrun.
        argv[0] = binary("envrun").display().to_string();
    }
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).env_clear();
    for item in container["env"].as_array().cloned().unwrap_or_default() {
        if let Some(value) = item["value"].as_str() {
            // Only paths are the Pod's; the CA PEM and the address are passed as they are.
            let value = if value.starts_with('/') {
                map(value)
            } else {
                value.to_owned()
            };
            command.env(item["name"].as_str().unwrap(), value);
        }
    }
    command.env("PATH", "/usr/bin:/bin");
    output(&mut command)
}

// Multi-threaded: the TokenReview endpoint runs in this test's runtime while envrun runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_starts_with_its_secrets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(&dir.path().join("kinko"), Some("inject-root"));
    let api = k8s::TokenReviewServer::start("reviewer-jwt").await;
    let root = server.client(Some("inject-root"));
    root.policy_write(
        "payments",
        r#"path "secret/data/payments/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let role = json!({
        "bound_service_account_names": ["payments-api"],
        "bound_service_account_namespaces": ["payments"],
        "audience": k8s::AUDIENCE,
        "token_policies": ["payments"],
    });
    enable_kubernetes_auth(
        &root,
        &api.url,
        &api.ca_pem,
        "reviewer-jwt",
        "payments-api",
        role,
    )
    .await;
    let db = serde_json::Map::from_iter([("url".to_owned(), json!("postgres://db.e2e/payments"))]);
    root.kv_write("secret", "payments/db", &db, None)
        .await
        .unwrap();
    let stripe = serde_json::Map::from_iter([("api_key".to_owned(), json!("sk_live_inject_e2e"))]);
    root.kv_write("secret", "payments/stripe", &stripe, None)
        .await
        .unwrap();

    let injector = Injector::start(dir.path(), &server.addr, &server.ca, k8s::AUDIENCE);
    let client = injector.client();
    let request = fixture("deployment-pod.json");
    let (_, patched) = review(&client, &injector.url, &request).await;
    let pod = patched.expect("injected");
    assert!(
        !serde_json::to_string(&pod)
            .unwrap()
            .contains("sk_live_inject_e2e"),
        "no secret value in the Pod spec"
    );

    // The kubelet's part: the shared volume and the projected token.
    let pod_root = dir.path().join("pod");
    std::fs::create_dir_all(pod_root.join("kinko")).unwrap();
    std::fs::create_dir_all(pod_root.join("token")).unwrap();
    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("payments", "payments-api"));
    api.allow(&jwt, "payments", "payments-api", &[k8s::AUDIENCE]);
    std::fs::write(pod_root.join("token/token"), &jwt).unwrap();

    let install = &pod["spec"]["initContainers"][0];
    let result = run_container(install, &pod_root, None);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let installed = pod_root.join("kinko/envrun");
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o555
    );
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(binary("envrun")).unwrap(),
        "envrun copied itself"
    );
    assert_eq!(
        std::fs::read_to_string(pod_root.join("kinko/ca.pem")).unwrap(),
        std::fs::read_to_string(&server.ca).unwrap()
    );

    // The app container, with its program swapped for one that prints what it was given.
    let api_container = &pod["spec"]["containers"][0];
    let result = run_container(
        api_container,
        &pod_root,
        Some(&["/bin/sh", "-c", "printf '%s|%s|%s|%s\\n' \"$DATABASE_URL\" \"$api_key\" \"$secret_payments_db_url\" \"${KINKO_ADDR-unset}\""]),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&result.stdout).trim(),
        "postgres://db.e2e/payments|sk_live_inject_e2e|postgres://db.e2e/payments|unset",
        "kinko: value resolved, both --secret specs fetched, control variables not passed on"
    );
    assert!(!stderr.contains(&jwt));

    // The rewritten command itself, unchanged: envrun logs in and execs /app/payments-api,
    // which does not exist here, so it fails after fetching (127), never before with a secret.
    let result = run_container(api_container, &pod_root, None);
    assert_eq!(
        result.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(String::from_utf8_lossy(&result.stderr).contains("/app/payments-api"));

    let logs = std::fs::read_to_string(&injector.stderr).unwrap();
    assert!(!logs.contains("sk_live_inject_e2e") && !logs.contains(&jwt));
    drop(client);
    let status = tokio::task::spawn_blocking(move || injector.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

/// `/usr/bin/docker-registry` (Debian's docker-registry, distribution 2.x) on a free loopback
/// port, storage in `dir`, stopped by its own pid.
struct Registry {
    child: Option<Child>,
    host: String,
}

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

impl Registry {
    async fn start(dir: &Path) -> Registry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: install the Debian package docker-registry \
             (apt-get install -y docker-registry; scripts/test installs it)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child: Some(child),
            host,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let answer = client
                .get(format!("http://{}/v2/", registry.host))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return registry;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within {STARTUP_TIMEOUT:?}: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped, by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Uploads a blob (POST, then a monolithic PUT) and returns its digest.
async fn push_blob(client: &reqwest::Client, host: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let started = client
        .post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    digest
}

async fn put_manifest(
    client: &reqwest::Client,
    host: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    manifest: &Value,
) -> (String, usize) {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let answer = client
        .put(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());
    (sha256_digest(&bytes), bytes.len())
}

/// An image with a config for `architecture`, pushed as an OCI manifest; its (digest, size).
async fn push_platform_image(
    client: &reqwest::Client,
    host: &str,
    repo: &str,
    architecture: &str,
    entrypoint: &[&str],
    cmd: &[&str],
) -> (String, usize) {
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .unwrap();
    let config_digest = push_blob(client, host, repo, &config).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [],
    });
    put_manifest(
        client,
        host,
        repo,
        architecture,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .await
}

fn program_after_dash(container: &Value) -> Vec<String> {
    let mut words: Vec<String> = serde_json::from_value(container["command"].clone()).unwrap();
    words.extend(
        serde_json::from_value::<Vec<String>>(container["args"].clone()).unwrap_or_default(),
    );
    let dash = words.iter().position(|w| w == "--").expect("--");
    words.split_off(dash + 1)
}

/// The ENTRYPOINT lookup against a real registry: an OCI index with the arm64 entry first, the
/// amd64 one second; the binary over HTTPS picks the Pod's platform, and a registry that is gone
/// is a denial naming the image, why, and the fix.
#[tokio::test]
async fn entrypoint_from_a_real_registry() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(dir.path()).await;
    let host = registry.host.clone();
    let http = reqwest::Client::new();
    let repo = "analytics/report";
    let arm = push_platform_image(
        &http,
        &host,
        repo,
        "arm64",
        &["/bin/report-arm64"],
        &["--arm"],
    )
    .await;
    let amd =
        push_platform_image(&http, &host, repo, "amd64", &["/bin/report"], &["--daily"]).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.0, "size": arm.1,
              "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.0, "size": amd.1,
              "platform": { "architecture": "amd64", "os": "linux" } },
        ],
    });
    let (index_digest, _) = put_manifest(
        &http,
        &host,
        repo,
        "2026.11",
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .await;

    let (kinko_ca, _, _) = write_certificate(dir.path(), "kinko");
    let injector = Injector::start_with(
        dir.path(),
        "https://kinko.kinko-system.svc:8200",
        &kinko_ca,
        "kinko",
        &[
            ("KINKO_INJECTOR_IMAGE_LOOKUP", "true"),
            ("KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES", &host),
        ],
    );
    let client = injector.client();
    let url = injector.url.clone();
    let pod_with = |image: &str, arch: Option<&str>| {
        let mut request = fixture("pod-no-command.json");
        let spec = &mut request["request"]["object"]["spec"];
        spec["containers"][0]["image"] = json!(image);
        if let Some(arch) = arch {
            spec["nodeSelector"] = json!({ "kubernetes.io/arch": arch });
        }
        request
    };

    // By tag: amd64 (the second entry), ENTRYPOINT behind `--`, CMD as args.
    let tagged = format!("{host}/{repo}:2026.11");
    let (response, patched) = review(&client, &url, &pod_with(&tagged, None)).await;
    assert_eq!(response["allowed"], true, "{response}");
    let pod = patched.expect("a patch");
    let report = &pod["spec"]["containers"][0];
    assert_eq!(program_after_dash(report), ["/bin/report", "--daily"]);
    assert_eq!(report["args"], json!(["--daily"]));
    let command: Vec<String> = serde_json::from_value(report["command"].clone()).unwrap();
    assert_eq!(command[0], "/kinko/envrun");
    assert_eq!(command.last().unwrap(), "/bin/report");

    // The Pod's platform decides: an arm64 node gets the arm64 entry.
    let (_, patched) = review(&client, &url, &pod_with(&tagged, Some("arm64"))).await;
    let pod = patched.expect("a patch");
    assert_eq!(
        program_after_dash(&pod["spec"]["containers"][0]),
        ["/bin/report-arm64", "--arm"]
    );
    // By digest, the index's own.
    let pinned = format!("{host}/{repo}@{index_digest}");
    let (_, patched) = review(&client, &url, &pod_with(&pinned, None)).await;
    assert_eq!(
        program_after_dash(&patched.expect("a patch")["spec"]["containers"][0]),
        ["/bin/report", "--daily"]
    );
    // No such platform: denied, naming what the image has.
    let (response, _) = review(&client, &url, &pod_with(&tagged, Some("s390x"))).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("linux/s390x") && message.contains("linux/arm64"),
        "{message}"
    );

    // The registry stopped: a tag seen within its TTL is still served from the cache; any
    // other is denied with the image, the reason and the fix.
    registry.stop();
    let (response, patched) = review(&client, &url, &pod_with(&tagged, None)).await;
    assert_eq!(response["allowed"], true, "cached: {response}");
    assert!(patched.is_some());
    let other = format!("{host}/{repo}:2026.12");
    let started = Instant::now();
    let (response, patched) = review(&client, &url, &pod_with(&other, None)).await;
    assert!(started.elapsed() < Duration::from_secs(8), "bounded lookup");
    assert_eq!(response["allowed"], false);
    assert!(patched.is_none());
    let message = response["status"]["message"].as_str().unwrap();
    for part in [
        other.as_str(),
        &format!("cannot reach registry {host}"),
        "set command",
        "kinko.io/command-report",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    drop(client);
    let status = tokio::task::spawn_blocking(move || injector.terminate())
        .await
        .unwrap();
    assert!(status.success());
}
