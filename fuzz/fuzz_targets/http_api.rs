//! The whole HTTP API in-process (router, path parsing, policy check, KV and sys bodies, real
//! SQLite on tmpfs): any method, path, token and body. No request is answered with 500, and a
//! caller without root never gets back the value kept where its policy does not reach,
//! whatever path tricks or bodies it sends.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::Router;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kinko_server::core::{Core, InitRequest};
use kinko_server::seal::FileSeal;
use kinko_server::secret::SecretString;
use kinko_server::storage::sqlite::SqliteStorage;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROOT: &str = "fuzz-root-token";

/// The value kept where `public` does not reach: random per process, and inputs that carry it
/// are skipped, so an input can never have planted what a later one "leaks" (the target keeps
/// its state across inputs).
fn canary() -> &'static str {
    static CANARY: OnceLock<String> = OnceLock::new();
    CANARY.get_or_init(|| {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .expect("random bytes");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

struct Api {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// A token of policy `public` (renewed when an input revoked it).
    limited: std::sync::Mutex<String>,
    _dir: tempfile::TempDir,
}

async fn limited_token(router: &Router) -> String {
    let (status, body) = call(
        router,
        Method::POST,
        "/v1/auth/token/create",
        Some(ROOT),
        br#"{"policies":["public"],"ttl":"24h"}"#.to_vec(),
    )
    .await;
    assert!(status.is_success(), "token create: {status}");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    body["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("X-Vault-Token", token);
    }
    let request = match request.body(Body::from(body)) {
        Ok(request) => request,
        Err(_) => return (StatusCode::BAD_REQUEST, Vec::new()),
    };
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, bytes.to_vec())
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // tmpfs: every acknowledged write is still fsynced, which costs nothing there.
        let dir = tempfile::Builder::new()
            .prefix("kinko-fuzz-")
            .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
            .expect("a temporary directory");
        let (router, limited) = runtime.block_on(async {
            let storage = SqliteStorage::open(&dir.path().join("kinko.db")).expect("sqlite");
            let seal = FileSeal::new(&dir.path().join("seal.key"));
            seal.ensure_key().expect("seal key");
            let core = Core::new(Arc::new(storage), Arc::new(seal), "fuzz-cluster");
            core.initialize(InitRequest {
                recovery_shares: 1,
                recovery_threshold: 1,
                root_token: Some(SecretString::new(ROOT.into())),
                mount_secret_kv: true,
            })
            .await
            .expect("initialised");
            let router = kinko_server::http::router(core, 1024 * 1024);
            let setup = [
                (
                    "/v1/sys/policies/acl/public",
                    r#"{"policy":"path \"secret/data/public/*\" { capabilities = [\"create\",\"read\",\"update\",\"delete\",\"list\",\"patch\"] }\npath \"secret/metadata/public/*\" { capabilities = [\"read\",\"list\",\"delete\"] }"}"#.to_owned(),
                ),
                (
                    "/v1/secret/data/private/canary",
                    format!(r#"{{"data":{{"password":"{}"}}}}"#, canary()),
                ),
            ];
            for (uri, body) in setup {
                let (status, _) = call(&router, Method::POST, uri, Some(ROOT), body.into_bytes()).await;
                assert!(status.is_success(), "{uri}: {status}");
            }
            let limited = limited_token(&router).await;
            (router, limited)
        });
        Api {
            runtime,
            router,
            limited: std::sync::Mutex::new(limited),
            _dir: dir,
        }
    })
}

const METHODS: [&str; 9] = [
    "GET", "PUT", "POST", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS", "BREW",
];

fuzz_target!(|data: &[u8]| {
    let api = api();
    let [method, token, rest @ ..] = data else {
        return;
    };
    if rest
        .windows(8)
        .any(|w| canary().as_bytes().windows(8).any(|c| c == w))
    {
        return;
    }
    let method = Method::from_bytes(METHODS[usize::from(*method) % METHODS.len()].as_bytes())
        .expect("a method");
    // Root only sets up: with it, an input could grant `public` the canary and be "caught".
    let limited = api.limited.lock().expect("not poisoned").clone();
    let token = match token % 3 {
        0 => None,
        1 => Some(limited.as_str()),
        _ => Some("kks.not-a-token"),
    };
    let (path, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let uri = format!("/v1/{path}");
    let (status, answer) = api.runtime.block_on(call(
        &api.router,
        method.clone(),
        &uri,
        token,
        body.to_vec(),
    ));
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri}: {}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains(canary()),
        "{method} {uri} leaked the canary: {text}"
    );
    if token.is_some_and(|t| t == limited) {
        // Revoked itself (revoke-self)? Then later inputs get a fresh one.
        let (status, _) = api.runtime.block_on(call(
            &api.router,
            Method::GET,
            "/v1/auth/token/lookup-self",
            Some(&limited),
            Vec::new(),
        ));
        if status == StatusCode::FORBIDDEN {
            *api.limited.lock().expect("not poisoned") =
                api.runtime.block_on(limited_token(&api.router));
        }
    }
});
