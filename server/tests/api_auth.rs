//! Tokens and policy enforcement through the router, and the attacks of the security
//! checklist's sections A, B and E that reach the HTTP API.

mod support;

use http::StatusCode;
use serde_json::json;
use support::{TestServer, ROOT};

#[tokio::test]
async fn token_create_shape_and_lookup() {
    let s = TestServer::start().await;
    s.write_policy("p", r#"path "secret/*" { capabilities = ["read"] }"#)
        .await;
    let created = s
        .post("/v1/auth/token/create", ROOT, json!({ "policies": ["p"], "ttl": "1h", "meta": { "team": "a" }, "display_name": "ci" }))
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let auth = &created.body["auth"];
    let token = auth["client_token"].as_str().unwrap();
    assert_eq!(auth["policies"], json!(["default", "p"]));
    assert_eq!(auth["token_policies"], json!(["default", "p"]));
    assert_eq!(auth["metadata"], json!({ "team": "a" }));
    assert_eq!(auth["token_type"], "service");
    assert_eq!(auth["orphan"], false);
    assert_eq!(auth["renewable"], true);
    assert!(auth["lease_duration"].as_u64().unwrap() > 3500);
    assert!(auth["accessor"].as_str().unwrap().len() > 10);

    let me = s.get("/v1/auth/token/lookup-self", token).await;
    assert_eq!(me.status, StatusCode::OK);
    let data = &me.body["data"];
    assert_eq!(data["id"], token);
    assert_eq!(data["display_name"], "token-ci");
    assert_eq!(data["path"], "auth/token/create");
    assert_eq!(data["type"], "service");
    for field in [
        "accessor",
        "creation_time",
        "creation_ttl",
        "expire_time",
        "explicit_max_ttl",
        "issue_time",
        "meta",
        "num_uses",
        "orphan",
        "policies",
        "renewable",
        "ttl",
    ] {
        assert!(data.get(field).is_some(), "{field}");
    }
    let looked = s
        .post("/v1/auth/token/lookup", ROOT, json!({ "token": token }))
        .await;
    assert_eq!(looked.body["data"]["accessor"], auth["accessor"]);
    let by_accessor = s
        .post(
            "/v1/auth/token/lookup-accessor",
            ROOT,
            json!({ "accessor": auth["accessor"] }),
        )
        .await;
    assert_eq!(
        by_accessor.body["data"]["id"], "",
        "an accessor never reveals the token"
    );
    assert_eq!(
        s.post("/v1/auth/token/lookup", ROOT, json!({ "token": "nope" }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn child_tokens_are_limited_to_their_parents_policies() {
    let s = TestServer::start().await;
    s.write_policy(
        "a",
        r#"path "auth/token/create" { capabilities = ["update"] }"#,
    )
    .await;
    s.write_policy("b", r#"path "secret/*" { capabilities = ["read"] }"#)
        .await;
    let parent = s.token(&["a"]).await;
    let escalate = s
        .post(
            "/v1/auth/token/create",
            &parent,
            json!({ "policies": ["b"] }),
        )
        .await;
    assert_eq!(escalate.status, StatusCode::BAD_REQUEST);
    assert!(escalate.errors()[0].contains("subset"));
    let root = s
        .post(
            "/v1/auth/token/create",
            &parent,
            json!({ "policies": ["root"] }),
        )
        .await;
    assert_eq!(root.status, StatusCode::BAD_REQUEST);
    let orphan = s
        .post(
            "/v1/auth/token/create",
            &parent,
            json!({ "no_parent": true }),
        )
        .await;
    assert_eq!(orphan.status, StatusCode::BAD_REQUEST);
    let chosen = s
        .post(
            "/v1/auth/token/create",
            &parent,
            json!({ "id": "my-own-token-id" }),
        )
        .await;
    assert_eq!(chosen.status, StatusCode::BAD_REQUEST);
    let inherit = s.post("/v1/auth/token/create", &parent, json!({})).await;
    assert_eq!(inherit.body["auth"]["policies"], json!(["a", "default"]));
    let subset = s
        .post(
            "/v1/auth/token/create",
            &parent,
            json!({ "policies": ["default"] }),
        )
        .await;
    assert_eq!(subset.body["auth"]["policies"], json!(["default"]));
    let batch = s
        .post("/v1/auth/token/create", ROOT, json!({ "type": "batch" }))
        .await;
    assert_eq!(batch.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn revoking_a_parent_revokes_its_children() {
    let s = TestServer::start().await;
    s.write_policy(
        "creator",
        r#"path "auth/token/create" { capabilities = ["update"] }"#,
    )
    .await;
    let parent = s.token(&["creator"]).await;
    let child = s
        .post("/v1/auth/token/create", &parent, json!({}))
        .await
        .body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let grandchild = s
        .post("/v1/auth/token/create", &child, json!({}))
        .await
        .body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let orphan = s
        .post(
            "/v1/auth/token/create-orphan",
            ROOT,
            json!({ "policies": ["default"] }),
        )
        .await;
    let orphan = orphan.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &grandchild)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.post("/v1/auth/token/revoke", ROOT, json!({ "token": parent }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for token in [&parent, &child, &grandchild] {
        assert_eq!(
            s.get("/v1/auth/token/lookup-self", token).await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &orphan).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.request("POST", "/v1/auth/token/revoke-self", Some(&orphan), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &orphan).await.status,
        StatusCode::FORBIDDEN
    );
    let accessor_victim = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"] }),
        )
        .await;
    let accessor = accessor_victim.body["auth"]["accessor"].clone();
    let victim = accessor_victim.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        "/v1/auth/token/revoke-accessor",
        ROOT,
        json!({ "accessor": accessor }),
    )
    .await;
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &victim).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn renew_ttl_limits_and_use_counts() {
    let s = TestServer::start().await;
    let created = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"], "ttl": "10m", "explicit_max_ttl": "30m" }),
        )
        .await;
    let token = created.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let renewed = s
        .post(
            "/v1/auth/token/renew-self",
            &token,
            json!({ "increment": "1h" }),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
    let lease = renewed.body["auth"]["lease_duration"].as_u64().unwrap();
    assert!(
        lease > 1700 && lease <= 1800,
        "renewal is capped by explicit_max_ttl: {lease}"
    );

    let fixed = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"], "renewable": false }),
        )
        .await;
    let fixed = fixed.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.post("/v1/auth/token/renew-self", &fixed, json!({}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let limited = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"], "num_uses": 2 }),
        )
        .await;
    let limited = limited.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &limited).await.body["data"]["num_uses"],
        1
    );
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &limited).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/v1/auth/token/lookup-self", &limited).await.status,
        StatusCode::FORBIDDEN,
        "uses are spent"
    );

    assert_eq!(
        s.post("/v1/auth/token/create", ROOT, json!({ "ttl": "-5s" }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post("/v1/auth/token/create", ROOT, json!({ "ttl": 1e300 }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "ttl": "999999999999d" })
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn every_bad_token_gets_the_same_403() {
    let s = TestServer::start().await;
    s.put_secret("x", ROOT, json!({ "v": 1 })).await;
    let revoked = s.token(&["default"]).await;
    s.post("/v1/auth/token/revoke", ROOT, json!({ "token": revoked }))
        .await;
    let short = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"], "ttl": "1s" }),
        )
        .await;
    let expired = short.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let long = "k".repeat(5000);
    let mut bodies = Vec::new();
    for token in [
        None,
        Some(""),
        Some("not-a-token"),
        Some(revoked.as_str()),
        Some(expired.as_str()),
        Some(long.as_str()),
    ] {
        let answer = s.request("GET", "/v1/secret/data/x", token, None).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "token {token:?}");
        bodies.push(answer.raw);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "identical bodies");
    assert_eq!(bodies[0], br#"{"errors":["permission denied"]}"#);
}

#[tokio::test]
async fn x_vault_token_wins_over_bearer() {
    let s = TestServer::start().await;
    let send = |x: Option<&str>, bearer: Option<&str>| {
        let mut builder = http::Request::builder().uri("/v1/auth/token/lookup-self");
        if let Some(x) = x {
            builder = builder.header("X-Vault-Token", x);
        }
        if let Some(bearer) = bearer {
            builder = builder.header("Authorization", format!("Bearer {bearer}"));
        }
        builder.body(axum::body::Body::empty()).unwrap()
    };
    assert_eq!(s.send(send(None, Some(ROOT))).await.status, StatusCode::OK);
    assert_eq!(
        s.send(send(Some(ROOT), Some("wrong"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.send(send(Some("wrong"), Some(ROOT))).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn policies_are_enforced_deny_wins_and_changes_apply_at_once() {
    let s = TestServer::start().await;
    s.put_secret("app/db", ROOT, json!({ "password": "pw-db" }))
        .await;
    s.put_secret("app/private", ROOT, json!({ "password": "pw-private" }))
        .await;
    s.put_secret("other/x", ROOT, json!({ "password": "pw-other" }))
        .await;
    s.write_policy(
        "app",
        "path \"secret/data/app/*\" {\n capabilities = [\"read\"]\n}\npath \"secret/data/app/private\" {\n capabilities = [\"deny\"]\n}\npath \"secret/metadata/*\" {\n capabilities = [\"list\"]\n}",
    )
    .await;
    let user = s.token(&["app"]).await;
    assert_eq!(
        s.get("/v1/secret/data/app/db", &user).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/v1/secret/data/app/private", &user).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get("/v1/secret/data/other/x", &user).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put_secret("app/db", &user, json!({ "password": "mine" }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.request("DELETE", "/v1/secret/data/app/db", Some(&user), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let listed = s
        .request("LIST", "/v1/secret/metadata/app", Some(&user), None)
        .await;
    assert_eq!(listed.body["data"]["keys"], json!(["db", "private"]));
    assert!(
        !String::from_utf8_lossy(&listed.raw).contains("pw-"),
        "list shows names only"
    );
    assert_eq!(
        s.get("/v1/secret/metadata/app/db", &user).await.status,
        StatusCode::FORBIDDEN,
        "list is not read"
    );

    s.write_policy(
        "app",
        r#"path "secret/data/other/*" { capabilities = ["read"] }"#,
    )
    .await;
    assert_eq!(
        s.get("/v1/secret/data/app/db", &user).await.status,
        StatusCode::FORBIDDEN,
        "old grant gone"
    );
    assert_eq!(
        s.get("/v1/secret/data/other/x", &user).await.status,
        StatusCode::OK,
        "new grant applies"
    );
    s.request("DELETE", "/v1/sys/policies/acl/app", Some(ROOT), None)
        .await;
    assert_eq!(
        s.get("/v1/secret/data/other/x", &user).await.status,
        StatusCode::FORBIDDEN,
        "deleted policy grants nothing"
    );
}

#[tokio::test]
async fn create_and_update_are_distinct_capabilities() {
    let s = TestServer::start().await;
    s.write_policy(
        "create-only",
        r#"path "secret/data/*" { capabilities = ["create"] }"#,
    )
    .await;
    s.write_policy(
        "update-only",
        r#"path "secret/data/*" { capabilities = ["update"] }"#,
    )
    .await;
    let creator = s.token(&["create-only"]).await;
    let updater = s.token(&["update-only"]).await;
    assert_eq!(
        s.put_secret("new", &updater, json!({ "a": 1 }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put_secret("new", &creator, json!({ "a": 1 }))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.put_secret("new", &creator, json!({ "a": 2 }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put_secret("new", &updater, json!({ "a": 2 }))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn path_tricks_are_refused_before_any_policy_or_storage() {
    let s = TestServer::start().await;
    s.write_policy(
        "narrow",
        r#"path "secret/data/public/*" { capabilities = ["create", "update", "read"] }"#,
    )
    .await;
    let user = s.token(&["narrow"]).await;
    s.put_secret("private", ROOT, json!({ "v": "top" })).await;
    for path in [
        "/v1/secret/data/public/../private",
        "/v1/secret/data/public/%2e%2e/private",
        "/v1/secret/data/public/%2E%2e/private",
        "/v1/secret/data/public/./x",
        "/v1/secret/data/public//x",
        "/v1/secret/data/public%2f..%2fprivate",
        "/v1/secret/data/public/a%00b",
        "/v1/secret/data/public/a%01b",
    ] {
        for token in [user.as_str(), ROOT] {
            let read = s.get(path, token).await;
            assert_eq!(read.status, StatusCode::BAD_REQUEST, "GET {path}");
            assert!(!String::from_utf8_lossy(&read.raw).contains("top"));
            let write = s
                .post(path, token, json!({ "data": { "v": "overwritten" } }))
                .await;
            assert_eq!(write.status, StatusCode::BAD_REQUEST, "POST {path}");
        }
    }
    let long = format!("/v1/secret/data/{}", "a".repeat(10_000));
    assert_eq!(s.get(&long, ROOT).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.get("/v1/secret/data/private", ROOT).await.body["data"]["data"]["v"],
        "top",
        "nothing overwritten"
    );
    let listed = s
        .request("LIST", "/v1/secret/metadata/", Some(ROOT), None)
        .await;
    assert_eq!(
        listed.body["data"]["keys"],
        json!(["private"]),
        "nothing stored"
    );
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors_without_echo() {
    let s = TestServer::start().await;
    let send = |body: &'static str| {
        http::Request::builder()
            .method("POST")
            .uri("/v1/secret/data/x")
            .header("X-Vault-Token", ROOT)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    for body in [
        r#"{"data": {"password": "hunter2""#,
        r#"{"data": {"password": hunter2}}"#,
        r#"["hunter2"]"#,
        r#""hunter2""#,
        r#"{"data": "hunter2"}"#,
        r#"{"data": {"a": 1}, "options": {"cas": "hunter2"}}"#,
        r#"{"data": {"a": 1}, "options": "hunter2"}"#,
        r#"{"no_data": "hunter2"}"#,
    ] {
        let answer = s.send(send(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            !String::from_utf8_lossy(&answer.raw).contains("hunter2"),
            "{body} echoed: {:?}",
            answer.body
        );
        assert!(!answer.errors()[0].is_empty());
    }
    let deep = format!(
        "{{\"data\": {{\"a\": {}1{}}}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/secret/data/x")
        .header("X-Vault-Token", ROOT)
        .body(axum::body::Body::from(deep))
        .unwrap();
    assert_eq!(s.send(request).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.get("/v1/secret/metadata/x", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "nothing stored"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let s = TestServer::start().await;
    for path in [
        "/v1/nothing/here",
        "/v1/auth/unknown/login",
        "/v1/sys/nope",
        "/v1/secret/unknown-area/x",
    ] {
        let answer = s.get(path, ROOT).await;
        assert_eq!(
            (answer.status, answer.body),
            (StatusCode::NOT_FOUND, json!({ "errors": [] })),
            "{path}"
        );
    }
    assert_eq!(
        s.request("GET", "/not-api", None, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.request("TRACE", "/v1/secret/data/x", Some(ROOT), None)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        s.request("LIST", "/v1/secret/data/x", Some(ROOT), None)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// Issue 11: the ACL check saw the path as sent while handlers trimmed it, so a trailing `/`
/// escaped a `deny` on the exact path, and a list without the `/` escaped a `deny` on `dir/*`.
#[tokio::test]
async fn a_trailing_slash_does_not_escape_the_policy() {
    let s = TestServer::start().await;
    s.write_policy("admin", r#"path "*" { capabilities = ["sudo", "read"] }"#)
        .await;
    s.write_policy(
        "policy-editor",
        r#"
        path "sys/policy/*" { capabilities = ["create", "update", "read"] }
        path "sys/policies/acl/*" { capabilities = ["create", "update", "read"] }
        path "sys/policy/admin" { capabilities = ["deny"] }
        path "sys/policies/acl/admin" { capabilities = ["deny"] }
        path "secret/metadata/*" { capabilities = ["list"] }
        path "secret/metadata/private/*" { capabilities = ["deny"] }
        "#,
    )
    .await;
    s.put_secret("private/db", ROOT, json!({ "v": 1 })).await;
    s.put_secret("public/db", ROOT, json!({ "v": 1 })).await;
    let editor = s.token(&["policy-editor"]).await;
    let takeover = json!({ "policy": "path \"*\" { capabilities = [\"deny\"] }" });
    for path in [
        "/v1/sys/policy/admin",
        "/v1/sys/policy/admin/",
        "/v1/sys/policies/acl/admin",
        "/v1/sys/policies/acl/admin/",
    ] {
        let answer = s.post(path, &editor, takeover.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{path}: {:?}",
            answer.body
        );
    }
    let doubled = s
        .post("/v1/sys/policy/admin//", &editor, takeover.clone())
        .await;
    assert_eq!(
        doubled.status,
        StatusCode::BAD_REQUEST,
        "an empty segment is refused"
    );
    let admin = s.get("/v1/sys/policies/acl/admin", ROOT).await;
    assert!(
        admin.body["data"]["policy"]
            .as_str()
            .unwrap()
            .contains("sudo"),
        "the admin policy is unchanged: {:?}",
        admin.body
    );
    // Another policy stays writable, with or without the slash.
    let other = json!({ "policy": "path \"secret/data/x\" { capabilities = [\"read\"] }" });
    for path in ["/v1/sys/policy/team", "/v1/sys/policies/acl/team/"] {
        let answer = s.post(path, &editor, other.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::NO_CONTENT,
            "{path}: {:?}",
            answer.body
        );
    }

    for (method, path) in [
        ("LIST", "/v1/secret/metadata/private"),
        ("LIST", "/v1/secret/metadata/private/"),
        ("GET", "/v1/secret/metadata/private?list=true"),
        ("GET", "/v1/secret/metadata/private/?list=true"),
    ] {
        let answer = s.request(method, path, Some(&editor), None).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            answer.body
        );
    }
    for path in ["/v1/secret/metadata/public", "/v1/secret/metadata/public/"] {
        let answer = s.request("LIST", path, Some(&editor), None).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "LIST {path}: {:?}",
            answer.body
        );
        assert_eq!(answer.body["data"]["keys"], json!(["db"]));
    }
}

/// Issue 11: the last use deleted the token without a precondition, so every concurrent
/// request that read `num_uses == 1` was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_n_use_token_serves_exactly_n_concurrent_requests() {
    let s = std::sync::Arc::new(TestServer::start().await);
    s.write_policy(
        "reader",
        r#"path "secret/data/*" { capabilities = ["read"] }"#,
    )
    .await;
    s.put_secret("app", ROOT, json!({ "v": 1 })).await;
    for uses in [1u64, 3, 50] {
        for _round in 0..3 {
            let created = s
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
                .map(|_| {
                    let (s, token) = (s.clone(), token.clone());
                    tokio::spawn(async move { s.get("/v1/secret/data/app", &token).await.status })
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
                "a {uses}-use token served {served} of 50 requests"
            );
            assert_eq!(
                s.get("/v1/secret/data/app", &token).await.status,
                StatusCode::FORBIDDEN,
                "the token is spent"
            );
        }
    }
}

/// Review of issue 11: a use-limited token minted an unlimited orphan with its one use.
#[tokio::test]
async fn a_use_limited_token_cannot_create_tokens() {
    let s = TestServer::start().await;
    s.write_policy(
        "minter",
        r#"path "auth/token/create*" { capabilities = ["update", "sudo"] }"#,
    )
    .await;
    for uses in [1u64, 3] {
        for endpoint in ["/v1/auth/token/create", "/v1/auth/token/create-orphan"] {
            let created = s
                .post(
                    "/v1/auth/token/create",
                    ROOT,
                    json!({ "policies": ["minter"], "num_uses": uses }),
                )
                .await;
            let limited = created.body["auth"]["client_token"]
                .as_str()
                .unwrap()
                .to_owned();
            let child = s.post(endpoint, &limited, json!({ "ttl": "1h" })).await;
            assert_eq!(
                child.status,
                StatusCode::BAD_REQUEST,
                "{uses} uses, {endpoint}"
            );
            assert_eq!(
                child.errors(),
                ["restricted use token cannot generate child tokens"]
            );
        }
    }
}

/// Review of issue 11: `sys/capabilities-self` answered any token; Vault requires `update`
/// on it (the default policy grants that).
#[tokio::test]
async fn capabilities_self_needs_its_policy() {
    let s = TestServer::start().await;
    s.write_policy(
        "reader",
        r#"path "secret/data/*" { capabilities = ["read"] }"#,
    )
    .await;
    let bare = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["reader"], "no_default_policy": true }),
        )
        .await;
    let bare = bare.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let question = json!({ "paths": ["secret/data/x"] });
    assert_eq!(
        s.post("/v1/sys/capabilities-self", &bare, question.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let with_default = s.token(&["reader"]).await;
    let answer = s
        .post("/v1/sys/capabilities-self", &with_default, question)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["data"]["secret/data/x"], json!(["read"]));
}
