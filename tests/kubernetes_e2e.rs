//! Kubernetes login end to end: the `kinko` binary, a local HTTPS TokenReview endpoint, a
//! signed service-account JWT; the issued token reads what its role allows and nothing else.

#[path = "../server/tests/k8s/mod.rs"]
mod k8s;

use kinko_client::Method;
use kinko_e2e::{assert_no_secret_in_logs, enable_kubernetes_auth, Kinko};
use serde_json::json;

#[tokio::test]
async fn a_pod_token_logs_in_and_reads_only_its_secrets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("k8s-root"));
    let api = k8s::TokenReviewServer::start("reviewer-jwt").await;
    let root = server.client(Some("k8s-root"));
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
        "token_ttl": "15m",
    });
    enable_kubernetes_auth(
        &root,
        &api.url,
        &api.ca_pem,
        "reviewer-jwt",
        "payments",
        role,
    )
    .await;
    let stripe = serde_json::Map::from_iter([("key".to_owned(), json!("sk_live_e2e"))]);
    root.kv_write("secret", "payments/stripe", &stripe, None)
        .await
        .unwrap();
    let other = serde_json::Map::from_iter([("key".to_owned(), json!("other-team"))]);
    root.kv_write("secret", "search/index", &other, None)
        .await
        .unwrap();

    let jwt = k8s::sign(k8s::rsa_key(), &k8s::claims("payments", "payments-api"));
    api.allow(&jwt, "payments", "payments-api", &[k8s::AUDIENCE]);
    let anonymous = server.client(None);
    let login = anonymous
        .request(
            Method::POST,
            "auth/kubernetes/login",
            Some(&json!({ "role": "payments", "jwt": jwt })),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        login["auth"]["metadata"]["service_account_namespace"],
        "payments"
    );
    let pod = server.client(login["auth"]["client_token"].as_str());
    let secret = pod
        .kv_read("secret", "payments/stripe", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.data["key"], "sk_live_e2e");
    let denied = pod
        .kv_read("secret", "search/index", None)
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(403));

    let stranger = k8s::sign(k8s::rsa_key(), &k8s::claims("search", "indexer"));
    api.allow(&stranger, "search", "indexer", &[k8s::AUDIENCE]);
    let refused = anonymous
        .request(
            Method::POST,
            "auth/kubernetes/login",
            Some(&json!({ "role": "payments", "jwt": stranger })),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(403));
    // No JWT or secret in the server's logs.
    assert_no_secret_in_logs(dir.path(), &[&jwt, "sk_live_e2e"]);
}
