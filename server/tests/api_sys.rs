//! sys endpoints through the router: health codes, init, seal and recovery-share unseal,
//! keyring rotation, policies (ACL and legacy), auth methods, capabilities.

mod support;

use http::StatusCode;
use serde_json::json;
use support::{TestServer, ROOT};

#[tokio::test]
async fn health_status_codes_and_overrides() {
    let s = TestServer::start().await;
    let ok = s.request("GET", "/v1/sys/health", None, None).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["initialized"], true);
    assert_eq!(ok.body["sealed"], false);
    assert_eq!(ok.body["standby"], false);
    for field in ["server_time_utc", "version", "cluster_name", "cluster_id"] {
        assert!(ok.body.get(field).is_some(), "{field}");
    }
    assert_eq!(
        s.request("GET", "/v1/sys/health?activecode=299", None, None)
            .await
            .status
            .as_u16(),
        299
    );
    assert_eq!(
        s.request("GET", "/v1/sys/health?activecode=abc", None, None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.request("HEAD", "/v1/sys/health", None, None).await.status,
        StatusCode::OK
    );
    s.core.seal().await;
    assert_eq!(
        s.request("GET", "/v1/sys/health", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        s.request("GET", "/v1/sys/health?sealedcode=200", None, None)
            .await
            .status,
        StatusCode::OK
    );

    let fresh = TestServer::uninitialized();
    assert_eq!(
        fresh
            .request("GET", "/v1/sys/health", None, None)
            .await
            .status,
        StatusCode::NOT_IMPLEMENTED
    );
    assert_eq!(
        fresh
            .request("GET", "/v1/sys/health?uninitcode=200", None, None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn init_once_then_already_initialized() {
    let s = TestServer::uninitialized();
    assert_eq!(
        s.request("GET", "/v1/sys/init", None, None).await.body,
        json!({ "initialized": false })
    );
    let sealed = s.request("GET", "/v1/secret/data/x", Some("t"), None).await;
    assert_eq!(
        (sealed.status, sealed.errors()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            vec!["Vault is sealed".to_owned()]
        )
    );
    let init = s
        .request(
            "PUT",
            "/v1/sys/init",
            None,
            Some(json!({ "recovery_shares": 3, "recovery_threshold": 2 })),
        )
        .await;
    assert_eq!(init.status, StatusCode::OK, "{:?}", init.body);
    assert_eq!(init.body["keys"], json!([]));
    assert_eq!(init.body["keys_base64"], json!([]));
    assert_eq!(init.body["recovery_keys"].as_array().unwrap().len(), 3);
    assert_eq!(
        init.body["recovery_keys_base64"].as_array().unwrap().len(),
        3
    );
    let root = init.body["root_token"].as_str().unwrap();
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", root).await.body["data"]["policies"],
        json!(["root"])
    );
    let again = s
        .request(
            "PUT",
            "/v1/sys/init",
            None,
            Some(json!({ "recovery_shares": 1, "recovery_threshold": 1 })),
        )
        .await;
    assert_eq!(
        (again.status, again.errors()),
        (
            StatusCode::BAD_REQUEST,
            vec!["Vault is already initialized".to_owned()]
        )
    );
    let status = s
        .request("GET", "/v1/sys/seal-status", None, None)
        .await
        .body;
    assert_eq!(
        (
            status["t"].clone(),
            status["n"].clone(),
            status["recovery_seal"].clone()
        ),
        (json!(2), json!(3), json!(true))
    );
    let bad = TestServer::uninitialized();
    let wrong = bad
        .request(
            "PUT",
            "/v1/sys/init",
            None,
            Some(json!({ "recovery_shares": 2, "recovery_threshold": 3 })),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.request("GET", "/v1/sys/init", None, None).await.body["initialized"],
        false,
        "nothing stored"
    );
}

#[tokio::test]
async fn seal_needs_sudo_and_unseal_needs_the_recovery_threshold() {
    let s = TestServer::start().await;
    s.put_secret("kept", ROOT, json!({ "v": "still here" }))
        .await;
    s.write_policy(
        "kv-all",
        r#"path "secret/*" { capabilities = ["create", "read", "update"] }"#,
    )
    .await;
    let user = s.token(&["kv-all"]).await;
    assert_eq!(
        s.request("PUT", "/v1/sys/seal", Some(&user), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.request("PUT", "/v1/sys/seal", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let sealed = s.get("/v1/secret/data/kept", ROOT).await;
    assert_eq!(
        (sealed.status, sealed.body.clone()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "errors": ["Vault is sealed"] })
        )
    );
    let status = s
        .request("GET", "/v1/sys/seal-status", None, None)
        .await
        .body;
    assert_eq!(status["sealed"], true);
    assert_eq!(
        status["cluster_id"], "",
        "cluster id is not shown while sealed"
    );

    let missing = s
        .request("PUT", "/v1/sys/unseal", None, Some(json!({})))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let one = s
        .request(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(json!({ "key": s.recovery_keys[0] })),
        )
        .await;
    assert_eq!(
        (one.body["sealed"].clone(), one.body["progress"].clone()),
        (json!(true), json!(1))
    );
    let reset = s
        .request(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(json!({ "reset": true })),
        )
        .await;
    assert_eq!(reset.body["progress"], 0);
    s.request(
        "PUT",
        "/v1/sys/unseal",
        None,
        Some(json!({ "key": s.recovery_keys[2] })),
    )
    .await;
    let done = s
        .request(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(json!({ "key": s.recovery_keys[0] })),
        )
        .await;
    assert_eq!(done.body["sealed"], false);
    assert_eq!(
        s.get("/v1/secret/data/kept", ROOT).await.body["data"]["data"]["v"],
        "still here"
    );
}

#[tokio::test]
async fn shares_of_another_cluster_do_not_unseal() {
    let s = TestServer::start().await;
    let other = TestServer::start().await;
    s.core.seal().await;
    s.request(
        "PUT",
        "/v1/sys/unseal",
        None,
        Some(json!({ "key": other.recovery_keys[0] })),
    )
    .await;
    let wrong = s
        .request(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(json!({ "key": other.recovery_keys[1] })),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(s.core.is_sealed());
    let garbage = s
        .request("PUT", "/v1/sys/unseal", None, Some(json!({ "key": "zz" })))
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rotation_adds_a_term_and_old_values_stay_readable() {
    let s = TestServer::start().await;
    s.put_secret("before", ROOT, json!({ "v": 1 })).await;
    let status = s.get("/v1/sys/key-status", ROOT).await;
    assert_eq!(status.body["data"]["term"], 1);
    assert_eq!(
        status.body["term"], 1,
        "also at the top level, as Vault answers"
    );
    assert!(status.body["data"]["encryptions"].as_u64().unwrap() > 0);
    assert!(status.body["data"]["install_time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let user = s.token(&["default"]).await;
    assert_eq!(
        s.request("PUT", "/v1/sys/rotate", Some(&user), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.request("PUT", "/v1/sys/rotate", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/sys/key-status", ROOT).await.body["data"]["term"],
        2
    );
    s.put_secret("after", ROOT, json!({ "v": 2 })).await;
    assert_eq!(
        s.get("/v1/secret/data/before", ROOT).await.body["data"]["data"]["v"],
        1
    );
    assert_eq!(
        s.get("/v1/secret/data/after", ROOT).await.body["data"]["data"]["v"],
        2
    );
    // The newest value is encrypted under term 2.
    let items = s.core.storage().list("logical/").await.unwrap();
    let prefix = format!("logical/{}", items[0]);
    let blob = s
        .core
        .storage()
        .get(&format!("{prefix}versions/after/1"))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(u32::from_be_bytes(blob[..4].try_into().unwrap()), 2);
}

#[tokio::test]
async fn policies_acl_and_legacy_endpoints() {
    let s = TestServer::start().await;
    let hcl = "path \"secret/data/app/*\" {\n  capabilities = [\"read\"]\n}\n";
    s.write_policy("app-read", hcl).await;
    let read = s.get("/v1/sys/policies/acl/app-read", ROOT).await;
    assert_eq!(
        read.body["data"],
        json!({ "name": "app-read", "policy": hcl })
    );
    let json_policy = r#"{"path": {"secret/data/x": {"capabilities": ["read"]}}}"#;
    s.write_policy("json-one", json_policy).await;
    let listed = s
        .request("LIST", "/v1/sys/policies/acl", Some(ROOT), None)
        .await;
    assert_eq!(
        listed.body["data"]["keys"],
        json!(["app-read", "default", "json-one", "root"])
    );

    let legacy = s.get("/v1/sys/policy/app-read", ROOT).await;
    assert_eq!(legacy.body["rules"], hcl);
    let legacy_write = s
        .request(
            "PUT",
            "/v1/sys/policy/legacy",
            Some(ROOT),
            Some(json!({ "rules": hcl })),
        )
        .await;
    assert_eq!(legacy_write.status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("/v1/sys/policy", ROOT).await.body["policies"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    let broken = s
        .post(
            "/v1/sys/policies/acl/broken",
            ROOT,
            json!({ "policy": "path \"x\" { capabilities = " }),
        )
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(broken.errors()[0].starts_with("failed to parse policy"));
    let glob = s
        .post(
            "/v1/sys/policies/acl/g",
            ROOT,
            json!({ "policy": r#"path "a/*/b" { capabilities = ["read"] }"# }),
        )
        .await;
    assert_eq!(glob.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.get("/v1/sys/policies/acl/broken", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "nothing stored"
    );
    assert_eq!(
        s.post("/v1/sys/policies/acl/root", ROOT, json!({ "policy": hcl }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.request("DELETE", "/v1/sys/policies/acl/root", Some(ROOT), None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.request("DELETE", "/v1/sys/policies/acl/default", Some(ROOT), None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post(
            "/v1/sys/policies/acl/bad%20name",
            ROOT,
            json!({ "policy": hcl })
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.request("DELETE", "/v1/sys/policies/acl/app-read", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/sys/policies/acl/app-read", ROOT).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn auth_methods_and_capabilities_self() {
    let s = TestServer::start().await;
    assert_eq!(
        s.get("/v1/sys/auth", ROOT).await.body["data"]["token/"]["type"],
        "token"
    );
    let unsupported = s
        .post("/v1/sys/auth/ldap", ROOT, json!({ "type": "ldap" }))
        .await;
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    s.write_policy(
        "p",
        r#"path "secret/data/a" { capabilities = ["read", "list"] }"#,
    )
    .await;
    let user = s.token(&["p"]).await;
    let caps = s
        .post(
            "/v1/sys/capabilities-self",
            &user,
            json!({ "paths": ["secret/data/a", "secret/data/b"] }),
        )
        .await;
    assert_eq!(caps.body["data"]["secret/data/a"], json!(["read", "list"]));
    assert_eq!(caps.body["data"]["secret/data/b"], json!(["deny"]));
    let leader = s.request("GET", "/v1/sys/leader", None, None).await;
    assert_eq!(leader.body["ha_enabled"], false);
}
