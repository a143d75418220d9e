//! Audit devices through the router (security checklist items 14 and 39): a request and a
//! response entry for every request, in Vault's shape, with every value and token hashed;
//! `sys/audit-hash`; fail closed when no device can write; SIGHUP reopens the file.

mod support;

use std::collections::HashMap;

use http::StatusCode;
use serde_json::{json, Value};
use support::{Answer, TestServer, ROOT};

const CANARY: &str = "audit-canary-value-4f1c";
const SEALED_CANARY: &str = "audit-sealed-plaintext-77d2";

/// `reopen_files` (SIGHUP) reaches every file device of the process: the tests that call it
/// or count entries across it take turns.
static REOPENS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn b64(text: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
}

async fn enable(s: &TestServer, name: &str, file: &std::path::Path) -> Answer {
    s.post(
        &format!("/v1/sys/audit/{name}"),
        ROOT,
        json!({ "type": "file", "options": { "file_path": file.display().to_string() } }),
    )
    .await
}

/// Makes a device's file unwritable: root ignores permissions, so a directory takes its place.
fn make_unwritable(file: &std::path::Path) {
    std::fs::remove_file(file).unwrap();
    std::fs::create_dir(file).unwrap();
}

fn make_writable(file: &std::path::Path) {
    std::fs::remove_dir(file).unwrap();
}

fn entries(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is one JSON entry"))
        .collect()
}

/// The field set Vault's audit readers rely on.
fn assert_vault_shape(entry: &Value) {
    let kind = entry["type"].as_str().unwrap();
    assert!(kind == "request" || kind == "response", "{entry}");
    assert!(entry["time"].as_str().unwrap().ends_with('Z'), "{entry}");
    assert!(entry["error"].is_string(), "{entry}");
    let request = &entry["request"];
    for field in [
        "id",
        "operation",
        "path",
        "remote_address",
        "mount_type",
        "client_token",
    ] {
        assert!(request[field].is_string(), "request.{field} in {entry}");
    }
    assert!(
        ["read", "list", "update", "delete", "patch"]
            .contains(&request["operation"].as_str().unwrap()),
        "{entry}"
    );
    if !entry["auth"].is_null() {
        let auth = &entry["auth"];
        for field in ["client_token", "accessor", "display_name", "token_type"] {
            assert!(auth[field].is_string(), "auth.{field} in {entry}");
        }
        assert!(
            auth["policies"].is_array() && auth["metadata"].is_object(),
            "{entry}"
        );
    }
    if kind == "response" {
        assert!(entry["response"]["status"].is_u64(), "{entry}");
    }
}

#[tokio::test]
async fn every_request_and_response_is_recorded_with_values_and_tokens_hashed() {
    let s = TestServer::start().await;
    let file = s.dir.path().join("audit.log");
    assert_eq!(
        enable(&s, "file", &file).await.status,
        StatusCode::NO_CONTENT
    );
    let listed = s.get("/v1/sys/audit", ROOT).await;
    assert_eq!(
        listed.body["data"]["file/"]["type"], "file",
        "{:?}",
        listed.body
    );

    let written = s
        .put_secret("app/db", ROOT, json!({ "password": CANARY }))
        .await;
    assert_eq!(written.status, StatusCode::OK);
    let read = s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(read.body["data"]["data"]["password"], CANARY);
    let created = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"] }),
        )
        .await;
    let child = created.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = s.get("/v1/secret/data/app/db", &child).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let unknown = s.get("/v1/secret/data/app/db", "kks.not-a-token").await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    let sealed = s
        .post(
            "/v1/sealed/encrypt",
            ROOT,
            json!({ "namespace": "shop", "service_account": "api", "name": "DB", "plaintext": b64(SEALED_CANARY) }),
        )
        .await;
    let ciphertext = sealed.body["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let compared = s
        .post(
            "/v1/sealed/compare",
            ROOT,
            json!({ "ciphertext": ciphertext, "plaintext": b64(SEALED_CANARY) }),
        )
        .await;
    assert_eq!(compared.body["data"]["match"], true);
    let _ = s.request("GET", "/v1/sys/health", None, None).await;

    let all = entries(&file);
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for entry in &all {
        assert_vault_shape(entry);
        by_id
            .entry(entry["request"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(entry);
    }
    // One request and one response entry per request (the enable itself was not audited yet;
    // health probes never are).
    assert_eq!(by_id.len(), 8, "{all:#?}");
    for pair in by_id.values() {
        let kinds: Vec<_> = pair.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["request", "response"]);
    }
    assert!(all.iter().all(|e| e["request"]["path"] != "sys/health"));

    let text = std::fs::read_to_string(&file).unwrap();
    let sealed_b64 = b64(SEALED_CANARY);
    for secret in [
        CANARY,
        ROOT,
        child.as_str(),
        "kks.not-a-token",
        SEALED_CANARY,
        sealed_b64.as_str(),
        ciphertext.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    // An operator with the value finds where it was written and read.
    let hash = s
        .post("/v1/sys/audit-hash/file", ROOT, json!({ "input": CANARY }))
        .await;
    let hash = hash.body["data"]["hash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("hmac-sha256:"));
    let write_entry = all
        .iter()
        .find(|e| {
            e["type"] == "request"
                && e["request"]["operation"] == "update"
                && e["request"]["path"] == "secret/data/app/db"
        })
        .unwrap();
    assert_eq!(
        write_entry["request"]["data"]["data"]["password"],
        json!(hash)
    );
    let read_entry = all
        .iter()
        .find(|e| {
            e["type"] == "response"
                && e["request"]["path"] == "secret/data/app/db"
                && e["request"]["operation"] == "read"
                && e["response"]["status"] == 200
        })
        .unwrap();
    assert_eq!(
        read_entry["response"]["data"]["data"]["password"],
        json!(hash)
    );
    let root_hash = s
        .post("/v1/sys/audit-hash/file", ROOT, json!({ "input": ROOT }))
        .await
        .body["data"]["hash"]
        .clone();
    assert_eq!(write_entry["auth"]["client_token"], root_hash);
    assert_eq!(write_entry["auth"]["policies"], json!(["root"]));
    // The issued token is in the response's auth, hashed.
    let create_entry = all
        .iter()
        .find(|e| e["type"] == "response" && e["request"]["path"] == "auth/token/create")
        .unwrap();
    let child_hash = s
        .post("/v1/sys/audit-hash/file", ROOT, json!({ "input": child }))
        .await
        .body["data"]["hash"]
        .clone();
    assert_eq!(create_entry["response"]["auth"]["client_token"], child_hash);
    // Refusals are recorded with their reason.
    let refusals: Vec<_> = all
        .iter()
        .filter(|e| e["type"] == "response" && e["response"]["status"] == 403)
        .collect();
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|e| e["error"] == "permission denied"));

    // Only sudo sees or changes the devices.
    let listed_by_child = s.get("/v1/sys/audit", &child).await;
    assert_eq!(listed_by_child.status, StatusCode::FORBIDDEN);
    let hash_by_child = s
        .post(
            "/v1/sys/audit-hash/file",
            &child,
            json!({ "input": CANARY }),
        )
        .await;
    assert_eq!(hash_by_child.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_request_no_device_can_record_is_not_served_and_one_working_device_is_enough() {
    let _turn = REOPENS.lock().await;
    let s = TestServer::start().await;
    let file = s.dir.path().join("audit.log");
    assert_eq!(
        enable(&s, "file", &file).await.status,
        StatusCode::NO_CONTENT
    );
    s.put_secret("app/db", ROOT, json!({ "password": "before" }))
        .await;

    // The file becomes unwritable, then the device reopens (as on SIGHUP).
    make_unwritable(&file);
    kinko_server::audit::device::reopen_files();
    let write = s
        .put_secret("app/db", ROOT, json!({ "password": CANARY }))
        .await;
    assert_eq!(
        write.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{:?}",
        write.body
    );
    let read = s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(read.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        read.body.get("data").is_none(),
        "no data without an audit entry"
    );
    assert!(!String::from_utf8_lossy(&read.raw).contains("before"));

    // Writable again: the refused write never happened.
    make_writable(&file);
    kinko_server::audit::device::reopen_files();
    let read = s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(
        read.body["data"]["data"]["password"], "before",
        "{:?}",
        read.body
    );

    // With a second, working device, the broken one does not stop anything.
    let second = s.dir.path().join("second.log");
    assert_eq!(
        enable(&s, "second", &second).await.status,
        StatusCode::NO_CONTENT
    );
    make_unwritable(&file);
    kinko_server::audit::device::reopen_files();
    let read = s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(entries(&second)
        .iter()
        .any(|e| e["type"] == "response" && e["request"]["path"] == "secret/data/app/db"));
    make_writable(&file);
    kinko_server::audit::device::reopen_files();

    // Disabled: no longer written to.
    let disabled = s
        .request("DELETE", "/v1/sys/audit/second", Some(ROOT), None)
        .await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT);
    let before = entries(&second).len();
    s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(entries(&second).len(), before);
}

#[tokio::test]
async fn after_a_rename_and_sighup_entries_go_to_the_new_file() {
    let _turn = REOPENS.lock().await;
    let s = TestServer::start().await;
    let file = s.dir.path().join("audit.log");
    assert_eq!(
        enable(&s, "file", &file).await.status,
        StatusCode::NO_CONTENT
    );
    s.get("/v1/secret/data/none", ROOT).await;
    let rotated = s.dir.path().join("audit.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    // Until the signal, the renamed file still gets the entries (the descriptor is open).
    s.get("/v1/secret/data/none", ROOT).await;
    assert_eq!(entries(&rotated).len(), 4);
    kinko_server::audit::device::reopen_files();
    s.get("/v1/secret/data/none", ROOT).await;
    assert_eq!(entries(&rotated).len(), 4);
    assert_eq!(entries(&file).len(), 2);
}

#[tokio::test]
async fn a_device_that_cannot_be_opened_is_refused_and_bad_options_are_named() {
    let s = TestServer::start().await;
    let missing = s.dir.path().join("no/such/dir/audit.log");
    let refused = enable(&s, "file", &missing).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.errors()[0].contains("cannot open the audit file"),
        "{:?}",
        refused.body
    );
    let relative = s
        .post(
            "/v1/sys/audit/rel",
            ROOT,
            json!({ "type": "file", "options": { "file_path": "audit.log" } }),
        )
        .await;
    assert!(
        relative.errors()[0].contains("absolute"),
        "{:?}",
        relative.body
    );
    let kind = s
        .post("/v1/sys/audit/sock", ROOT, json!({ "type": "socket" }))
        .await;
    assert!(
        kind.errors()[0].contains("unknown audit device type"),
        "{:?}",
        kind.body
    );
    let listed = s.get("/v1/sys/audit", ROOT).await;
    assert_eq!(listed.body["data"], json!({}));
    // Requests go on unaudited while no device is enabled (as in Vault).
    assert_eq!(s.get("/v1/sys/mounts", ROOT).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_refused_request_spends_no_use_and_a_replica_that_cannot_open_its_device_fails_closed() {
    let _turn = REOPENS.lock().await;
    let s = TestServer::start().await;
    let file = s.dir.path().join("audit.log");
    assert_eq!(
        enable(&s, "file", &file).await.status,
        StatusCode::NO_CONTENT
    );
    s.put_secret("app/db", ROOT, json!({ "password": "v" }))
        .await;
    s.write_policy(
        "reader",
        "path \"secret/data/*\" { capabilities = [\"read\"] }",
    )
    .await;
    let once = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["reader"], "num_uses": 1 }),
        )
        .await;
    let once = once.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // This replica restarts (seal, unseal) while its audit file cannot be opened: the device
    // is kept, and every request fails closed until the file can be written.
    make_unwritable(&file);
    s.core.seal().await;
    s.core.unseal_with_seal().await.unwrap();
    let refused = s.get("/v1/secret/data/app/db", &once).await;
    assert_eq!(
        refused.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{:?}",
        refused.body
    );
    let listed = s.get("/v1/sys/audit", ROOT).await;
    assert_eq!(listed.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Writable again: the one-use token still has its use.
    make_writable(&file);
    let served = s.get("/v1/secret/data/app/db", &once).await;
    assert_eq!(served.status, StatusCode::OK, "{:?}", served.body);
    assert_eq!(served.body["data"]["data"]["password"], "v");
    let spent = s.get("/v1/secret/data/app/db", &once).await;
    assert_eq!(spent.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sealed_replica_answers_its_metrics_without_a_token() {
    let s = TestServer::start().await;
    let unsealed = s.request("GET", "/v1/sys/metrics", None, None).await;
    assert_eq!(
        unsealed.status,
        StatusCode::FORBIDDEN,
        "a token while unsealed"
    );
    let text = String::from_utf8(s.get("/v1/sys/metrics", ROOT).await.raw).unwrap();
    assert!(text.lines().any(|l| l == "kinko_sealed 0"), "{text}");
    assert!(text.contains("kinko_keyring_term "), "{text}");
    s.core.seal().await;
    let sealed = s.request("GET", "/v1/sys/metrics", None, None).await;
    assert_eq!(sealed.status, StatusCode::OK);
    let text = String::from_utf8(sealed.raw).unwrap();
    assert!(text.lines().any(|l| l == "kinko_sealed 1"), "{text}");
    assert!(!text.contains("kinko_keyring_term "), "{text}");
}
