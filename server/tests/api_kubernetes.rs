//! The Kubernetes auth method through the router, against a local HTTPS TokenReview endpoint
//! and with real RS256/ES256 service-account JWTs: configuration, roles, login, and the
//! attacks of the security checklist's section A.

mod k8s;
mod support;

use http::StatusCode;
use k8s::{claims, sign, TokenReviewServer, AUDIENCE, ISSUER};
use serde_json::{json, Value};
use support::{Answer, TestServer, ROOT};

const REVIEWER: &str = "reviewer-service-account-jwt";

struct Cluster {
    server: TestServer,
    api: TokenReviewServer,
}

/// kinko with `auth/kubernetes` checking tokens by TokenReview, a role `app` for
/// `prod/app`, and secrets the role may and may not read.
async fn cluster() -> Cluster {
    let server = TestServer::start().await;
    let api = TokenReviewServer::start(REVIEWER).await;
    assert_eq!(
        server
            .post(
                "/v1/sys/auth/kubernetes",
                ROOT,
                json!({ "type": "kubernetes" })
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let config = json!({ "kubernetes_host": api.url, "kubernetes_ca_cert": api.ca_pem, "token_reviewer_jwt": REVIEWER });
    assert_eq!(
        server
            .post("/v1/auth/kubernetes/config", ROOT, config)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    server
        .write_policy(
            "app-read",
            r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
        )
        .await;
    let role = json!({
        "bound_service_account_names": ["app"],
        "bound_service_account_namespaces": ["prod"],
        "audience": AUDIENCE,
        "token_policies": ["app-read"],
        "token_ttl": "1h",
    });
    assert_eq!(
        server
            .post("/v1/auth/kubernetes/role/app", ROOT, role)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    server
        .put_secret("app/db", ROOT, json!({ "password": "app-pw" }))
        .await;
    server
        .put_secret("billing/db", ROOT, json!({ "password": "billing-pw" }))
        .await;
    Cluster { server, api }
}

async fn login(s: &TestServer, role: &str, jwt: &str) -> Answer {
    s.request(
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        Some(json!({ "role": role, "jwt": jwt })),
    )
    .await
}

fn assert_refused(answer: &Answer, jwt: &str, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "{case}: {:?}",
        answer.body
    );
    assert!(answer.body["auth"].is_null(), "{case}: no token issued");
    assert!(
        !String::from_utf8_lossy(&answer.raw).contains(jwt),
        "{case}: the JWT is not echoed"
    );
}

#[tokio::test]
async fn login_by_token_review_then_read_what_the_role_allows_only() {
    let c = cluster().await;
    let jwt = sign(k8s::rsa_key(), &claims("prod", "app"));
    c.api.allow(&jwt, "prod", "app", &[AUDIENCE]);
    let answer = login(&c.server, "app", &jwt).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let auth = &answer.body["auth"];
    assert_eq!(auth["policies"], json!(["app-read", "default"]));
    assert_eq!(auth["metadata"]["role"], "app");
    assert_eq!(auth["metadata"]["service_account_name"], "app");
    assert_eq!(auth["metadata"]["service_account_namespace"], "prod");
    assert_eq!(
        auth["metadata"]["service_account_uid"],
        k8s::uid_of("prod", "app")
    );
    assert!(auth["lease_duration"].as_u64().unwrap() <= 3600);
    let token = auth["client_token"].as_str().unwrap();
    assert_eq!(
        c.server.get("/v1/secret/data/app/db", token).await.body["data"]["data"]["password"],
        "app-pw"
    );
    assert_eq!(
        c.server
            .get("/v1/secret/data/billing/db", token)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.server.get("/v1/auth/token/lookup-self", token).await.body["data"]["path"],
        "auth/kubernetes/login"
    );

    let reviews = c.api.requests();
    assert_eq!(reviews.len(), 1);
    assert_eq!(
        reviews[0].0.as_deref(),
        Some(REVIEWER),
        "reviewed with the configured reviewer JWT"
    );
    assert_eq!(
        reviews[0].1["spec"]["audiences"],
        json!([AUDIENCE]),
        "the role's audience is asked for"
    );
    assert_eq!(reviews[0].1["spec"]["token"], jwt.as_str());
}

#[tokio::test]
async fn adversarial_tokens_are_refused() {
    let c = cluster().await;
    let key = k8s::rsa_key();
    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push(("alg none", k8s::unsigned(&claims("prod", "app"))));
    cases.push((
        "HS256 with the public key",
        k8s::hmac_with_public_key(key, &claims("prod", "app")),
    ));
    let mut wrong_audience = claims("prod", "app");
    wrong_audience["aud"] = json!(["https://kubernetes.default.svc"]);
    cases.push(("wrong audience", sign(key, &wrong_audience)));
    let mut missing_audience = claims("prod", "app");
    missing_audience.as_object_mut().unwrap().remove("aud");
    cases.push(("missing audience", sign(key, &missing_audience)));
    let mut audience_as_object = claims("prod", "app");
    audience_as_object["aud"] = json!({ "0": AUDIENCE });
    cases.push(("audience of the wrong type", sign(key, &audience_as_object)));
    let mut expired = claims("prod", "app");
    expired["exp"] = json!(expired["iat"].as_i64().unwrap() - 3600);
    cases.push(("expired", sign(key, &expired)));
    let mut early = claims("prod", "app");
    early["nbf"] = json!(early["iat"].as_i64().unwrap() + 3600);
    cases.push(("not yet valid", sign(key, &early)));
    let mut no_k8s = claims("prod", "app");
    no_k8s.as_object_mut().unwrap().remove("kubernetes.io");
    cases.push(("missing kubernetes.io claims", sign(key, &no_k8s)));
    let mut other_subject = claims("prod", "app");
    other_subject["sub"] = json!("system:serviceaccount:kube-system:admin");
    cases.push((
        "subject disagrees with the claims",
        sign(key, &other_subject),
    ));
    cases.push(("garbage", "not.a.jwt".to_owned()));
    // Each case from its own source: past 10 refusals one source is rate limited (429).
    for (n, (case, jwt)) in cases.iter().enumerate() {
        // Even if the API server would say yes, these never get that far or are refused.
        c.api.allow(jwt, "prod", "app", &[AUDIENCE]);
        let source = format!("10.1.{}.{}", n / 200, n % 200 + 1);
        assert_refused(&login_from(&c.server, &source, "app", jwt).await, jwt, case);
    }
    let unknown_to_api = sign(key, &claims("prod", "app"));
    assert_refused(
        &login_from(&c.server, "10.2.0.1", "app", &unknown_to_api).await,
        &unknown_to_api,
        "deleted service account",
    );
    let reviewed_for_other_audience = sign(key, &claims("prod", "app"));
    c.api
        .allow(&reviewed_for_other_audience, "prod", "app", &["vault"]);
    assert_refused(
        &login_from(&c.server, "10.2.0.2", "app", &reviewed_for_other_audience).await,
        &reviewed_for_other_audience,
        "API server rejects the audience",
    );
}

#[tokio::test]
async fn bindings_and_role_names() {
    let c = cluster().await;
    let key = k8s::rsa_key();
    let other_namespace = sign(key, &claims("staging", "app"));
    c.api.allow(&other_namespace, "staging", "app", &[AUDIENCE]);
    let answer = login(&c.server, "app", &other_namespace).await;
    assert_eq!(
        (answer.status, answer.errors()),
        (
            StatusCode::FORBIDDEN,
            vec!["namespace not authorized".to_owned()]
        )
    );
    let other_account = sign(key, &claims("prod", "admin"));
    c.api.allow(&other_account, "prod", "admin", &[AUDIENCE]);
    let answer = login(&c.server, "app", &other_account).await;
    assert_eq!(
        (answer.status, answer.errors()),
        (
            StatusCode::FORBIDDEN,
            vec!["service account name not authorized".to_owned()]
        )
    );

    let jwt = sign(key, &claims("prod", "app"));
    c.api.allow(&jwt, "prod", "app", &[AUDIENCE]);
    let unknown = login(&c.server, "nope", &jwt).await;
    assert_eq!(
        (unknown.status, unknown.errors()),
        (
            StatusCode::BAD_REQUEST,
            vec!["invalid role name: no such role on this auth mount".to_owned()]
        )
    );
    for role in ["../app", "app/../../sys", "\u{0430}pp", "app\u{200b}"] {
        assert_eq!(
            login(&c.server, role, &jwt).await.status,
            StatusCode::BAD_REQUEST,
            "{role:?}"
        );
    }
    let traversal = c
        .server
        .post("/v1/auth/kubernetes/role/..%2fx", ROOT, json!({}))
        .await;
    assert_eq!(traversal.status, StatusCode::BAD_REQUEST);

    // A login never issues a root token: a role naming it is refused (as in Vault).
    let rooted = json!({ "bound_service_account_names": ["app"], "bound_service_account_namespaces": ["prod"],
                         "audience": AUDIENCE, "token_policies": ["app-read", "root"] });
    let refused = c
        .server
        .post("/v1/auth/kubernetes/role/rooted", ROOT, rooted)
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.errors()[0].contains("root"),
        "{:?}",
        refused.errors()
    );
    assert_eq!(
        login(&c.server, "rooted", &jwt).await.status,
        StatusCode::BAD_REQUEST,
        "the role was not stored"
    );

    let wildcard = json!({ "bound_service_account_names": ["*"], "bound_service_account_namespaces": ["*"],
                           "audience": AUDIENCE, "token_policies": ["app-read"] });
    c.server
        .post("/v1/auth/kubernetes/role/any", ROOT, wildcard)
        .await;
    assert_eq!(
        login(&c.server, "any", &other_namespace).await.status,
        StatusCode::OK,
        "\"*\" binds any, explicitly"
    );
}

#[tokio::test]
async fn the_api_server_must_confirm_the_same_identity() {
    let c = cluster().await;
    let jwt = sign(k8s::rsa_key(), &claims("prod", "app"));
    // The API server says the token belongs to someone else.
    c.api.allow(&jwt, "prod", "other", &[AUDIENCE]);
    assert_refused(
        &login(&c.server, "app", &jwt).await,
        &jwt,
        "mismatched review",
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_outage_not_a_fallback() {
    let mut c = cluster().await;
    let jwt = sign(k8s::rsa_key(), &claims("prod", "app"));
    c.api.allow(&jwt, "prod", "app", &[AUDIENCE]);
    c.api.stop();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let answer = login(&c.server, "app", &jwt).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert!(answer.body["auth"].is_null());
    assert!(!String::from_utf8_lossy(&answer.raw).contains(&jwt));
}

#[tokio::test]
async fn offline_verification_with_pem_keys_rs256_and_es256() {
    let c = cluster().await;
    let ec = k8s::ec_key();
    let config = json!({
        "verification": "offline",
        "pem_keys": [k8s::rsa_key().public_pem, ec.public_pem],
        "issuer": ISSUER,
    });
    assert_eq!(
        c.server
            .post("/v1/auth/kubernetes/config", ROOT, config)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for jwt in [
        sign(k8s::rsa_key(), &claims("prod", "app")),
        sign(&ec, &claims("prod", "app")),
    ] {
        let answer = login(&c.server, "app", &jwt).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    assert!(
        c.api.requests().is_empty(),
        "offline mode never calls the API server"
    );
    let foreign = sign(k8s::other_rsa_key(), &claims("prod", "app"));
    assert_refused(
        &login(&c.server, "app", &foreign).await,
        &foreign,
        "signed by an unknown key",
    );
    let mut wrong_issuer = claims("prod", "app");
    wrong_issuer["iss"] = json!("https://evil.example");
    let jwt = sign(k8s::rsa_key(), &wrong_issuer);
    assert_refused(&login(&c.server, "app", &jwt).await, &jwt, "wrong issuer");
    let mut no_expiry = claims("prod", "app");
    no_expiry.as_object_mut().unwrap().remove("exp");
    let jwt = sign(k8s::rsa_key(), &no_expiry);
    assert_refused(
        &login(&c.server, "app", &jwt).await,
        &jwt,
        "offline tokens must expire",
    );
    let jwt = k8s::hmac_with_public_key(k8s::rsa_key(), &claims("prod", "app"));
    assert_refused(
        &login(&c.server, "app", &jwt).await,
        &jwt,
        "HS256 key confusion, offline",
    );
}

#[tokio::test]
async fn offline_verification_with_a_jwks_document() {
    let c = cluster().await;
    let ec = k8s::ec_key();
    // Issue 11: a key that cannot verify the token (here an Ed25519 key, RFC 8037's example)
    // used to end the search, hiding the matching key after it.
    let ed25519 = json!({ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" });
    let jwks = json!({ "keys": [ed25519, k8s::rsa_key().jwk, ec.jwk] }).to_string();
    let config = json!({ "verification": "offline", "jwks": jwks, "issuer": ISSUER });
    assert_eq!(
        c.server
            .post("/v1/auth/kubernetes/config", ROOT, config)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        login(&c.server, "app", &sign(&ec, &claims("prod", "app")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        login(
            &c.server,
            "app",
            &sign(k8s::rsa_key(), &claims("prod", "app"))
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn config_and_role_management() {
    let c = cluster().await;
    let config = c.server.get("/v1/auth/kubernetes/config", ROOT).await;
    assert_eq!(config.body["data"]["kubernetes_host"], c.api.url.as_str());
    assert_eq!(config.body["data"]["token_reviewer_jwt_set"], true);
    assert!(
        !String::from_utf8_lossy(&config.raw).contains(REVIEWER),
        "the reviewer JWT is never returned"
    );
    for bad in [
        json!({ "kubernetes_host": "http://plain" }),
        json!({ "verification": "offline" }),
        json!({ "verification": "offline", "pem_keys": [k8s::rsa_key().public_pem] }),
        json!({ "pem_keys": ["not a key"] }),
        json!({ "disable_local_ca_jwt": true }),
        json!({ "verification": "maybe" }),
    ] {
        let answer = c
            .server
            .post("/v1/auth/kubernetes/config", ROOT, bad.clone())
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let role = c.server.get("/v1/auth/kubernetes/role/app", ROOT).await;
    assert_eq!(
        role.body["data"]["bound_service_account_names"],
        json!(["app"])
    );
    assert_eq!(role.body["data"]["audience"], AUDIENCE);
    assert_eq!(role.body["data"]["token_ttl"], 3600);
    let listed = c
        .server
        .request("LIST", "/v1/auth/kubernetes/role", Some(ROOT), None)
        .await;
    assert_eq!(listed.body["data"]["keys"], json!(["app"]));
    for bad in [
        json!({ "bound_service_account_names": ["app"], "bound_service_account_namespaces": ["prod"] }),
        json!({ "bound_service_account_names": [], "bound_service_account_namespaces": ["prod"], "audience": "a" }),
        json!({ "bound_service_account_names": ["ap*"], "bound_service_account_namespaces": ["prod"], "audience": "a" }),
        json!({ "bound_service_account_names": ["a"], "bound_service_account_namespaces": ["p"], "audience": "a", "token_ttl": "-1" }),
    ] {
        assert_eq!(
            c.server
                .post("/v1/auth/kubernetes/role/r", ROOT, bad.clone())
                .await
                .status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let user = c.server.token(&["app-read"]).await;
    assert_eq!(
        c.server
            .get("/v1/auth/kubernetes/role/app", &user)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.server
            .request("DELETE", "/v1/auth/kubernetes/role/app", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.server
            .get("/v1/auth/kubernetes/role/app", ROOT)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let auth: Value = c.server.get("/v1/sys/auth", ROOT).await.body;
    assert_eq!(auth["data"]["kubernetes/"]["type"], "kubernetes");
    assert_eq!(
        c.server
            .post(
                "/v1/sys/auth/kubernetes",
                ROOT,
                json!({ "type": "kubernetes" })
            )
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.server
            .request("DELETE", "/v1/sys/auth/kubernetes", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.server
            .get("/v1/auth/kubernetes/config", ROOT)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.server
            .post("/v1/sys/auth/k8s-b", ROOT, json!({ "type": "kubernetes" }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.server.get("/v1/auth/k8s-b/config", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "a new mount starts empty"
    );
}

fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in {metrics}"))
}

async fn metrics_text(s: &TestServer) -> String {
    let answer = s.get("/v1/sys/metrics?format=prometheus", ROOT).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    String::from_utf8(answer.raw).unwrap()
}

#[tokio::test]
async fn refused_logins_and_storage_calls_are_counted_in_metrics() {
    let c = cluster().await;
    assert_eq!(
        c.server
            .request("GET", "/v1/sys/metrics", None, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let before = metrics_text(&c.server).await;
    let refused = sign(k8s::rsa_key(), &claims("prod", "app"));
    for _ in 0..3 {
        assert_eq!(
            login(&c.server, "app", &refused).await.status,
            StatusCode::FORBIDDEN
        );
    }
    let accepted = sign(k8s::rsa_key(), &claims("prod", "app"));
    c.api.allow(&accepted, "prod", "app", &[AUDIENCE]);
    assert_eq!(
        login(&c.server, "app", &accepted).await.status,
        StatusCode::OK
    );
    let after = metrics_text(&c.server).await;
    let delta = |line: &str| counter(&after, line) - counter(&before, line);
    assert!(delta("kinko_auth_logins_total{outcome=\"refused\"}") >= 3);
    assert!(delta("kinko_auth_logins_total{outcome=\"succeeded\"}") >= 1);
    assert!(delta("kinko_storage_operations_total{op=\"get\"}") > 0);
    assert!(delta("kinko_http_requests_total{code=\"4xx\"}") >= 3);
    assert!(
        !after.contains(&refused) && !after.contains("prod") && !after.contains("app-pw"),
        "no caller data in metrics"
    );
}

/// A login from one source address (as kinko-tls puts the TCP peer into each request).
async fn login_from(s: &TestServer, source: &str, role: &str, jwt: &str) -> Answer {
    let mut request = http::Request::builder()
        .method("POST")
        .uri("/v1/auth/kubernetes/login")
        .body(axum::body::Body::from(
            serde_json::to_vec(&json!({ "role": role, "jwt": jwt })).unwrap(),
        ))
        .unwrap();
    request.extensions_mut().insert(kinko_tls::PeerAddr(
        format!("{source}:40000").parse().unwrap(),
    ));
    s.send(request).await
}

#[tokio::test]
async fn failed_logins_past_the_budget_get_429_for_that_source_and_role_only() {
    let Cluster { server, api } = cluster().await;
    let good = sign(k8s::rsa_key(), &claims("prod", "app"));
    api.allow(&good, "prod", "app", &[AUDIENCE]);
    let attacker = "10.0.0.66";
    for n in 0..kinko_server::core::LOGIN_FAILURE_LIMIT {
        let guess = format!("guess-{n}");
        let refused = login_from(&server, attacker, "app", &guess).await;
        assert_ne!(refused.status, StatusCode::TOO_MANY_REQUESTS, "guess {n}");
        assert_ne!(refused.status, StatusCode::OK);
    }
    // Over the budget: refused before the JWT is looked at, even a valid one, with Retry-After.
    let limited = login_from(&server, attacker, "app", &good).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another source (another Pod) logs in at once; so does the attacker's source for a
    // role it did not guess at.
    let other_pod = login_from(&server, "10.0.0.7", "app", &good).await;
    assert_eq!(other_pod.status, StatusCode::OK, "{:?}", other_pod.body);
    let other_role = login_from(&server, attacker, "other", "guess").await;
    assert_ne!(other_role.status, StatusCode::TOO_MANY_REQUESTS);
    // Successful logins are never counted against a source.
    for _ in 0..kinko_server::core::LOGIN_FAILURE_LIMIT + 2 {
        let ok = login_from(&server, "10.0.0.8", "app", &good).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
}
