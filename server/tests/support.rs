//! Shared helpers for the in-process API tests: a real core (SQLite file, file seal) in a
//! temporary directory, driven through the router with `tower::ServiceExt::oneshot`.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use kinko_server::core::{Core, InitRequest};
use kinko_server::seal::FileSeal;
use kinko_server::storage::sqlite::SqliteStorage;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const ROOT: &str = "root-token-for-tests";

pub struct TestServer {
    pub router: Router,
    pub core: Arc<Core>,
    pub dir: tempfile::TempDir,
    pub recovery_keys: Vec<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Answer {
    pub fn errors(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

pub fn new_core(dir: &std::path::Path) -> Arc<Core> {
    let storage = SqliteStorage::open(&dir.join("kinko.db")).unwrap();
    let seal = FileSeal::new(&dir.join("seal.key"));
    seal.ensure_key().unwrap();
    Core::new(Arc::new(storage), Arc::new(seal), "test-cluster")
}

impl TestServer {
    /// Initialised and unsealed, KV v2 at `secret/`, root token [`ROOT`], 3 recovery shares (2 needed).
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let core = new_core(dir.path());
        let init = core
            .initialize(InitRequest {
                recovery_shares: 3,
                recovery_threshold: 2,
                root_token: Some(kinko_server::secret::SecretString::new(ROOT.into())),
                mount_secret_kv: true,
            })
            .await
            .unwrap();
        let recovery_keys = init
            .recovery_keys
            .iter()
            .map(|k| k.expose().to_owned())
            .collect();
        TestServer {
            router: kinko_server::http::router(core.clone(), 1024 * 1024),
            core,
            dir,
            recovery_keys,
        }
    }

    /// A core that has never been initialised.
    pub fn uninitialized() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let core = new_core(dir.path());
        TestServer {
            router: kinko_server::http::router(core.clone(), 1024 * 1024),
            core,
            dir,
            recovery_keys: vec![],
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(token) = token {
            builder = builder.header("X-Vault-Token", token);
        }
        let body = body
            .map(|b| Body::from(serde_json::to_vec(&b).unwrap()))
            .unwrap_or_else(Body::empty);
        self.send(builder.body(body).unwrap()).await
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let is_json = headers
            .get("content-type")
            .is_some_and(|v| v == "application/json");
        let body = if raw.is_empty() || !is_json {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap()
        };
        Answer {
            status,
            headers,
            body,
            raw,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.request("POST", path, Some(token), Some(body)).await
    }

    pub async fn put_secret(&self, path: &str, token: &str, data: Value) -> Answer {
        self.post(
            &format!("/v1/secret/data/{path}"),
            token,
            json!({ "data": data }),
        )
        .await
    }

    /// The storage id of the `secret/` mount: its items are under `logical/<uuid>/`.
    pub async fn secret_mount_uuid(&self) -> String {
        let mounts = self.get("/v1/sys/mounts", ROOT).await;
        mounts.body["data"]["secret/"]["uuid"]
            .as_str()
            .expect("secret/ is mounted")
            .to_owned()
    }

    pub async fn write_policy(&self, name: &str, hcl: &str) {
        let answer = self
            .post(
                &format!("/v1/sys/policies/acl/{name}"),
                ROOT,
                json!({ "policy": hcl }),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.body);
    }

    /// A token with exactly these policies (plus `default`).
    pub async fn token(&self, policies: &[&str]) -> String {
        let answer = self
            .post(
                "/v1/auth/token/create",
                ROOT,
                json!({ "policies": policies, "ttl": "1h" }),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.body["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
