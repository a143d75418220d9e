//! Races between requests (revocation against child creation) and storage faults at the worst
//! moment (right after `sys/init` commits), through the router with a real SQLite core.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use http::StatusCode;
use kinko_server::core::{Core, InitRequest};
use kinko_server::seal::FileSeal;
use kinko_server::storage::sqlite::SqliteStorage;
use kinko_server::storage::{Entry, Op, Storage, StorageError};
use serde_json::json;
use support::{TestServer, ROOT};

/// SQLite that fails every read once `fail_reads` is set (a storage outage right after a write).
struct FlakyStorage {
    inner: SqliteStorage,
    fail_reads: AtomicBool,
    fail_after_commit: AtomicBool,
    /// Report the next transaction as failed although it committed (a timeout after the commit).
    lie_once: AtomicBool,
}

#[async_trait]
impl Storage for FlakyStorage {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn one_read_value_limit(&self, key: &str) -> usize {
        self.inner.one_read_value_limit(key)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "arn:aws:dynamodb:eu-west-1:123456789012:table/secret-table-name is throttled"
                    .into(),
            ));
        }
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }

    async fn transact(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        self.inner.transact(ops).await?;
        if self.lie_once.swap(false, Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "timed out waiting for the answer".into(),
            ));
        }
        if self.fail_after_commit.load(Ordering::SeqCst) {
            self.fail_reads.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn flaky_core(dir: &std::path::Path) -> (Arc<Core>, Arc<FlakyStorage>) {
    let storage = Arc::new(FlakyStorage {
        inner: SqliteStorage::open(&dir.join("kinko.db")).unwrap(),
        fail_reads: AtomicBool::new(false),
        fail_after_commit: AtomicBool::new(true),
        lie_once: AtomicBool::new(false),
    });
    let seal = FileSeal::new(&dir.join("seal.key"));
    seal.ensure_key().unwrap();
    (
        Core::new(storage.clone(), Arc::new(seal), "test-cluster"),
        storage,
    )
}

/// Issue 11: after the init transaction committed, a failing follow-up read returned an error
/// and dropped the only copy of the root token and recovery keys; a retry then answered
/// "already initialized".
#[tokio::test]
async fn init_returns_its_secrets_even_when_storage_fails_right_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (core, storage) = flaky_core(dir.path());
    let init = core
        .initialize(InitRequest {
            recovery_shares: 3,
            recovery_threshold: 2,
            root_token: None,
            mount_secret_kv: true,
        })
        .await
        .expect("the committed init returns its root token and recovery keys");
    assert_eq!(init.recovery_keys.len(), 3);
    storage.fail_after_commit.store(false, Ordering::SeqCst);
    storage.fail_reads.store(false, Ordering::SeqCst);
    let router = kinko_server::http::router(core.clone(), 1024 * 1024);
    let s = TestServer {
        router,
        core,
        dir,
        recovery_keys: vec![],
    };
    let answer = s
        .get("/v1/auth/token/lookup-self", init.root_token.expose())
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(
        s.put_secret("a", init.root_token.expose(), json!({ "v": 1 }))
            .await
            .status,
        StatusCode::OK,
        "the secret/ mount was installed from what init wrote"
    );
}

/// Review of issue 11: a commit whose answer was lost (a timeout after the commit) made init
/// return an error, and the retry "already initialized": the root token was gone for good.
#[tokio::test]
async fn init_that_committed_behind_a_lost_answer_still_returns_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (core, storage) = flaky_core(dir.path());
    storage.fail_after_commit.store(false, Ordering::SeqCst);
    storage.lie_once.store(true, Ordering::SeqCst);
    let init = core
        .initialize(InitRequest {
            recovery_shares: 1,
            recovery_threshold: 1,
            root_token: None,
            mount_secret_kv: true,
        })
        .await
        .expect("the commit is recognised by its cluster id");
    let router = kinko_server::http::router(core.clone(), 1024 * 1024);
    let s = TestServer {
        router,
        core,
        dir,
        recovery_keys: vec![],
    };
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", init.root_token.expose())
            .await
            .status,
        StatusCode::OK
    );
}

/// Issue 11: clients were sent `Unavailable` reasons verbatim (AWS messages naming accounts and
/// tables), and `sys/health` let a caller without a token trigger them.
#[tokio::test]
async fn outage_details_go_to_the_log_not_to_the_client() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (core, storage) = flaky_core(dir.path());
    storage.fail_reads.store(true, Ordering::SeqCst);
    let flaky = TestServer {
        router: kinko_server::http::router(core.clone(), 1024 * 1024),
        core,
        dir,
        recovery_keys: vec![],
    };
    drop(s);
    for path in ["/v1/sys/health", "/v1/sys/seal-status"] {
        let answer = flaky.request("GET", path, None, None).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let text = String::from_utf8_lossy(&answer.raw);
        for leak in ["arn:", "123456789012", "secret-table-name", "throttled"] {
            assert!(!text.contains(leak), "{path} answered {text}");
        }
        let errors = answer.errors();
        assert!(errors[0].contains("request id"), "{errors:?}");
    }
}

/// Issue 11: `revoke` listed the children and then deleted them, and a child's parent link was
/// written without checking that the parent still existed, so a child created in between
/// outlived its revoked parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_created_while_its_parent_is_revoked_does_not_survive_it() {
    let s = Arc::new(TestServer::start().await);
    s.write_policy(
        "creator",
        r#"path "auth/token/create" { capabilities = ["update"] }"#,
    )
    .await;
    for round in 0..5 {
        let parent = s.token(&["creator"]).await;
        for _ in 0..10 {
            let child = s
                .post("/v1/auth/token/create", &parent, json!({ "ttl": "1h" }))
                .await;
            assert_eq!(child.status, StatusCode::OK, "{:?}", child.body);
        }
        let creator = {
            let (s, parent) = (s.clone(), parent.clone());
            tokio::spawn(async move {
                let mut created = Vec::new();
                for _ in 0..40 {
                    let child = s
                        .post("/v1/auth/token/create", &parent, json!({ "ttl": "1h" }))
                        .await;
                    if child.status != StatusCode::OK {
                        break;
                    }
                    created.push(
                        child.body["auth"]["client_token"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
                created
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let revoked = s
            .post("/v1/auth/token/revoke", ROOT, json!({ "token": parent }))
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{:?}", revoked.body);
        let created = creator.await.unwrap();
        for child in &created {
            assert_eq!(
                s.get("/v1/auth/token/lookup-self", child).await.status,
                StatusCode::FORBIDDEN,
                "round {round}: a child created during the revocation ({} created) survived",
                created.len()
            );
        }
    }
}

/// Another core on the same database: a second replica.
async fn replica_of(s: &TestServer) -> TestServer {
    let core = support::new_core(s.dir.path());
    core.unseal_with_seal().await.unwrap();
    TestServer {
        router: kinko_server::http::router(core.clone(), 1024 * 1024),
        core,
        dir: tempfile::tempdir().unwrap(),
        recovery_keys: vec![],
    }
}

/// Uses are spent in storage, so two replicas together serve exactly N requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_n_use_token_serves_exactly_n_requests_across_two_replicas() {
    let a = Arc::new(TestServer::start().await);
    let b = Arc::new(replica_of(&a).await);
    a.write_policy(
        "reader",
        r#"path "secret/data/*" { capabilities = ["read"] }"#,
    )
    .await;
    a.put_secret("app", ROOT, json!({ "v": 1 })).await;
    for uses in [1u64, 7, 50] {
        let created = a
            .post(
                "/v1/auth/token/create",
                ROOT,
                json!({ "policies": ["reader"], "num_uses": uses }),
            )
            .await;
        let token = created.body["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
                let token = token.clone();
                tokio::spawn(async move { replica.get("/v1/secret/data/app", &token).await.status })
            })
            .collect();
        let mut served = 0;
        for task in tasks {
            match task.await.unwrap() {
                StatusCode::OK => served += 1,
                StatusCode::FORBIDDEN => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(
            served, uses,
            "a {uses}-use token served {served} of 50 on two replicas"
        );
    }
}

/// Each replica encrypts only inside a nonce block it reserved with a conditional write on
/// the keyring: four replicas reserving at once get four distinct blocks, all counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reserving_nonce_blocks_at_once_each_get_their_own() {
    let first = TestServer::start().await;
    let before = first.get("/v1/sys/key-status", ROOT).await.body["data"]["encryptions"]
        .as_u64()
        .unwrap();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(Arc::new(replica_of(&first).await));
    }
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let replica = replica.clone();
            tokio::spawn(async move {
                replica
                    .put_secret(&format!("from-{i}"), ROOT, json!({ "i": i }))
                    .await
                    .status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // A fresh replica reads the keyring as stored.
    let after = replica_of(&first)
        .await
        .get("/v1/sys/key-status", ROOT)
        .await
        .body["data"]["encryptions"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after - before,
        4 * kinko_server::barrier::BLOCK_SIZE,
        "every replica reserved a block of its own"
    );
    for i in 0..4 {
        let read = first.get(&format!("/v1/secret/data/from-{i}"), ROOT).await;
        assert_eq!(read.body["data"]["data"]["i"], i);
    }
}

/// Issue 11: bodies were buffered before authentication, so a client without a token could
/// hold a request slot and up to the body limit of memory. Now a request that needs a token
/// is refused before its body is read, and token-less endpoints take small bodies only.
#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_before_its_body_is_read() {
    let s = TestServer::start().await;
    for token in [None, Some("kks.not-a-token")] {
        // A body that never ends: answering means it was not read.
        let endless = futures::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"data\":"))
        })
        .chain(futures::stream::pending());
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/v1/secret/data/app");
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        let request = request
            .body(axum::body::Body::from_stream(endless))
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), s.send(request))
            .await
            .expect("answered without waiting for the body");
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{token:?}");
    }
    let enabled = s
        .post(
            "/v1/sys/auth/kubernetes",
            ROOT,
            json!({ "type": "kubernetes" }),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::NO_CONTENT);
    let big_login = json!({ "role": "r", "jwt": "x".repeat(100 * 1024) });
    let answer = s
        .request("POST", "/v1/auth/kubernetes/login", None, Some(big_login))
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        answer.errors()[0].contains("65536"),
        "{:?}",
        answer.errors()
    );
}

/// Only `auth/<mount>/login` itself takes no token: a role that happens to be named `login`
/// is managed with a token like any other.
#[tokio::test]
async fn only_an_auth_methods_own_login_endpoint_is_token_less() {
    let s = TestServer::start().await;
    let enabled = s
        .post(
            "/v1/sys/auth/kubernetes",
            ROOT,
            json!({ "type": "kubernetes" }),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::NO_CONTENT, "{:?}", enabled.body);
    let role = json!({
        "bound_service_account_names": ["app"],
        "bound_service_account_namespaces": ["prod"],
        "audience": "kinko",
    });
    let written = s
        .post("/v1/auth/kubernetes/role/login", ROOT, role.clone())
        .await;
    assert_eq!(written.status, StatusCode::NO_CONTENT, "{:?}", written.body);
    let anonymous = s
        .request("POST", "/v1/auth/kubernetes/role/login", None, Some(role))
        .await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    // Without a token, the login endpoint is answered by the login handler itself.
    let login = s
        .request(
            "POST",
            "/v1/auth/kubernetes/login",
            None,
            Some(json!({ "role": "nope", "jwt": "x.y.z" })),
        )
        .await;
    assert_eq!(login.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        login.errors(),
        ["invalid role name: no such role on this auth mount"]
    );
}

/// Review of issue 11: token-less requests (logins trickling their bodies) could take every
/// request slot. They have a budget of their own; token holders are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_token_less_requests_does_not_starve_token_holders() {
    let s = Arc::new(TestServer::start().await);
    let enabled = s
        .post(
            "/v1/sys/auth/kubernetes",
            ROOT,
            json!({ "type": "kubernetes" }),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::NO_CONTENT);
    let endless_login = || {
        let body = futures::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"role\":"))
        })
        .chain(futures::stream::pending());
        http::Request::builder()
            .method("POST")
            .uri("/v1/auth/kubernetes/login")
            .body(axum::body::Body::from_stream(body))
            .unwrap()
    };
    let hanging: Vec<_> = (0..kinko_server::http::MAX_TOKEN_LESS_IN_FLIGHT)
        .map(|_| {
            let (s, request) = (s.clone(), endless_login());
            tokio::spawn(async move { s.send(request).await })
        })
        .collect();
    // Every slot taken: the next token-less request is shed at once...
    let shed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let answer = s
                .request("POST", "/v1/auth/kubernetes/login", None, Some(json!({})))
                .await;
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("shed within the bound");
    assert!(
        shed.errors()[0].contains("without a token"),
        "{:?}",
        shed.errors()
    );
    // ...while a token holder is served.
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", ROOT).await.status,
        StatusCode::OK
    );
    for task in hanging {
        task.abort();
    }
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let answer = s
                .request(
                    "POST",
                    "/v1/auth/kubernetes/login",
                    None,
                    Some(json!({ "role": "nope", "jwt": "x" })),
                )
                .await;
            if answer.status != StatusCode::SERVICE_UNAVAILABLE {
                return answer.status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("slots come back");
    assert_eq!(again, StatusCode::BAD_REQUEST);
}
