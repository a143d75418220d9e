//! Sealed values through the router (security checklist item 21): public keys, offline sealing
//! with a fetched key document, decryption only by a Kubernetes login as exactly the bound
//! service account and variable name, tampering, rotation and rewrap, compare and its limit.

mod k8s;
mod support;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::StatusCode;
use k8s::{claims, sign, TokenReviewServer, AUDIENCE};
use kinko_server::sealed::{
    self, transfer, Binding, Header, KeyDocument, SealingRoot, SignedKeyDocument,
};
use kinko_server::secret::Key256;
use serde_json::{json, Value};
use support::{Answer, TestServer, ROOT};

const REVIEWER: &str = "reviewer-service-account-jwt";

struct Cluster {
    server: TestServer,
    api: TokenReviewServer,
}

/// kinko with `auth/kubernetes` (TokenReview) and a role `apps` binding the service accounts
/// `payments-api` and `other` in the namespaces `payments` and `shop`.
async fn cluster() -> Cluster {
    let server = TestServer::start().await;
    let api = TokenReviewServer::start(REVIEWER).await;
    let ok = |a: Answer| assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    ok(server
        .post(
            "/v1/sys/auth/kubernetes",
            ROOT,
            json!({ "type": "kubernetes" }),
        )
        .await);
    ok(server
        .post(
            "/v1/auth/kubernetes/config",
            ROOT,
            json!({ "kubernetes_host": api.url, "kubernetes_ca_cert": api.ca_pem, "token_reviewer_jwt": REVIEWER }),
        )
        .await);
    ok(server
        .post(
            "/v1/auth/kubernetes/role/apps",
            ROOT,
            json!({
                "bound_service_account_names": ["payments-api", "other"],
                "bound_service_account_namespaces": ["payments", "shop"],
                "audience": AUDIENCE,
                "token_policies": ["default"],
                "token_ttl": "1h",
            }),
        )
        .await);
    Cluster { server, api }
}

impl Cluster {
    /// A kinko token from a Kubernetes login as `namespace/name`.
    async fn login(&self, namespace: &str, name: &str) -> String {
        let jwt = sign(k8s::rsa_key(), &claims(namespace, name));
        self.api.allow(&jwt, namespace, name, &[AUDIENCE]);
        let answer = self
            .server
            .request(
                "POST",
                "/v1/auth/kubernetes/login",
                None,
                Some(json!({ "role": "apps", "jwt": jwt })),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.body["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

async fn encrypt(
    s: &TestServer,
    token: &str,
    ns: &str,
    sa: &str,
    name: &str,
    plain: &str,
) -> Answer {
    s.post(
        "/v1/sealed/encrypt",
        token,
        json!({ "namespace": ns, "service_account": sa, "name": name, "plaintext": STANDARD.encode(plain) }),
    )
    .await
}

async fn sealed_value(s: &TestServer, ns: &str, sa: &str, name: &str, plain: &str) -> String {
    let answer = encrypt(s, ROOT, ns, sa, name, plain).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn decrypt(s: &TestServer, token: &str, ciphertext: &str, name: &str) -> Answer {
    s.post(
        "/v1/sealed/decrypt",
        token,
        json!({ "ciphertext": ciphertext, "name": name }),
    )
    .await
}

fn plaintext(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let bytes = STANDARD
        .decode(answer.body["data"]["plaintext"].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn assert_denied(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "{case}: {:?}",
        answer.body
    );
    assert_eq!(answer.errors(), vec!["permission denied"], "{case}");
    assert!(
        !String::from_utf8_lossy(&answer.raw).contains("hunter2"),
        "{case}"
    );
}

fn assert_invalid(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "{case}: {:?}",
        answer.body
    );
    assert_eq!(answer.errors(), vec!["invalid sealed value"], "{case}");
}

fn raw(value: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(value.strip_prefix(sealed::PREFIX).unwrap())
        .unwrap()
}

fn encoded(raw: &[u8]) -> String {
    format!("{}{}", sealed::PREFIX, URL_SAFE_NO_PAD.encode(raw))
}

/// The value with its header replaced (the same encapsulated key and ciphertext).
fn with_header(value: &str, change: impl FnOnce(&mut Value)) -> String {
    let raw = raw(value);
    let n = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
    let mut header: Header = serde_json::from_slice(&raw[2..2 + n]).unwrap();
    let mut as_json = serde_json::to_value(&header).unwrap();
    change(&mut as_json);
    header = serde_json::from_value(as_json).unwrap();
    let bytes = header.encode();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&raw[2 + n..]);
    encoded(&out)
}

fn header_of(value: &str) -> Header {
    sealed::decode(value).unwrap().header
}

#[tokio::test]
async fn keys_need_no_token_and_a_fetched_document_seals_offline_for_the_right_pod() {
    let c = cluster().await;
    let s = &c.server;
    let keys = s.request("GET", "/v1/sealed/keys", None, None).await;
    assert_eq!(keys.status, StatusCode::OK, "{:?}", keys.body);
    let signing_key = STANDARD
        .decode(keys.body["data"]["signing_key"].as_str().unwrap())
        .unwrap();
    let fingerprint = keys.body["data"]["fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint, sealed::fingerprint(&signing_key));
    let cluster_id = keys.body["data"]["cluster_id"].as_str().unwrap().to_owned();
    assert_eq!(keys.body["mount_type"], "sealed");
    // The same key on every call (derived, not regenerated).
    let again = s.request("GET", "/v1/sealed/keys", None, None).await;
    assert_eq!(again.body["data"], keys.body["data"]);

    let doc = s
        .request("GET", "/v1/sealed/keys/payments/payments-api", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{:?}", doc.body);
    let signed = SignedKeyDocument {
        document: URL_SAFE_NO_PAD
            .decode(doc.body["data"]["document"].as_str().unwrap())
            .unwrap(),
        signature: URL_SAFE_NO_PAD
            .decode(doc.body["data"]["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    };
    let document: KeyDocument = signed.verify(&signing_key).unwrap();
    assert_eq!(document.cluster_id, cluster_id);
    assert_eq!(
        (
            document.namespace.as_str(),
            document.service_account.as_str()
        ),
        ("payments", "payments-api")
    );
    assert_eq!(document.epoch, 1);
    let document_json: Value = serde_json::from_slice(&signed.document).unwrap();
    let fields: Vec<&String> = document_json.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 6);

    // Offline: seal with the document's public key, no server involved.
    let binding = Binding::new(&cluster_id, "payments", "payments-api").unwrap();
    let value = sealed::seal(
        &document.public_key().unwrap(),
        &Header::new(&binding, "DB_PASSWORD", document.epoch).unwrap(),
        b"hunter2",
    )
    .unwrap();
    let pod = c.login("payments", "payments-api").await;
    assert_eq!(
        plaintext(&decrypt(s, &pod, &value, "DB_PASSWORD").await),
        "hunter2"
    );

    // Names that are not Kubernetes names are refused; other shapes are not found.
    let bad = s
        .request("GET", "/v1/sealed/keys/Payments/api", None, None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    let deeper = s
        .request("GET", "/v1/sealed/keys/a/b/c", Some(ROOT), None)
        .await;
    assert_eq!(deeper.status, StatusCode::NOT_FOUND);
    let no_token_elsewhere = s
        .request(
            "POST",
            "/v1/sealed/decrypt",
            None,
            Some(json!({ "ciphertext": value, "name": "DB_PASSWORD" })),
        )
        .await;
    assert_denied(&no_token_elsewhere, "no token");
}

#[tokio::test]
async fn only_a_kubernetes_login_as_the_bound_account_decrypts_and_only_for_its_name() {
    let c = cluster().await;
    let s = &c.server;
    let value = sealed_value(s, "payments", "payments-api", "DB_PASSWORD", "hunter2").await;
    let right = c.login("payments", "payments-api").await;
    assert_eq!(
        plaintext(&decrypt(s, &right, &value, "DB_PASSWORD").await),
        "hunter2"
    );

    let other_sa = c.login("payments", "other").await;
    assert_denied(
        &decrypt(s, &other_sa, &value, "DB_PASSWORD").await,
        "payments/other",
    );
    let other_ns = c.login("shop", "payments-api").await;
    assert_denied(
        &decrypt(s, &other_ns, &value, "DB_PASSWORD").await,
        "shop/payments-api",
    );
    assert_denied(&decrypt(s, &right, &value, "OTHER").await, "name OTHER");
    assert_denied(&decrypt(s, ROOT, &value, "DB_PASSWORD").await, "root token");

    // An admin may set any meta on a token it creates: it is still not a Kubernetes login.
    let forged = s
        .post(
            "/v1/auth/token/create",
            ROOT,
            json!({ "policies": ["default"], "meta": {
                "role": "apps",
                "service_account_name": "payments-api",
                "service_account_namespace": "payments",
            }}),
        )
        .await;
    assert_eq!(forged.status, StatusCode::OK);
    assert_eq!(
        forged.body["auth"]["metadata"]["service_account_namespace"],
        "payments"
    );
    let forged = forged.body["auth"]["client_token"].as_str().unwrap();
    assert_denied(
        &decrypt(s, forged, &value, "DB_PASSWORD").await,
        "forged meta",
    );
    let orphan = s
        .post(
            "/v1/auth/token/create-orphan",
            ROOT,
            json!({ "meta": { "service_account_name": "payments-api", "service_account_namespace": "payments" }}),
        )
        .await;
    let orphan = orphan.body["auth"]["client_token"].as_str().unwrap();
    assert_denied(
        &decrypt(s, orphan, &value, "DB_PASSWORD").await,
        "forged meta, orphan",
    );

    // Missing fields are a 400 for the right caller.
    let missing = s
        .post("/v1/sealed/decrypt", &right, json!({ "ciphertext": value }))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tampered_moved_or_foreign_values_are_invalid_without_detail() {
    let c = cluster().await;
    let s = &c.server;
    let value = sealed_value(s, "payments", "payments-api", "DB_PASSWORD", "hunter2").await;
    let pod = c.login("payments", "payments-api").await;

    let mut flipped = raw(&value);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_invalid(
        &decrypt(s, &pod, &encoded(&flipped), "DB_PASSWORD").await,
        "flipped tag byte",
    );
    let mut flipped = raw(&value);
    let middle = flipped.len() - 40;
    flipped[middle] ^= 0x80;
    assert_invalid(
        &decrypt(s, &pod, &encoded(&flipped), "DB_PASSWORD").await,
        "flipped ciphertext byte",
    );
    assert_invalid(
        &decrypt(s, &pod, &encoded(&raw(&value)[..300]), "DB_PASSWORD").await,
        "truncated",
    );
    assert_invalid(
        &decrypt(s, &pod, "kinko:sealed:v1:not*base64", "DB_PASSWORD").await,
        "garbage",
    );
    assert_invalid(
        &decrypt(s, &pod, "hunter2", "DB_PASSWORD").await,
        "no prefix",
    );

    // A header field swapped to what the caller may open: the AEAD refuses it.
    let renamed = with_header(&value, |h| h["name"] = json!("OTHER"));
    assert_invalid(
        &decrypt(s, &pod, &renamed, "OTHER").await,
        "name swapped in the header",
    );
    let other = c.login("payments", "other").await;
    let moved = with_header(&value, |h| h["service_account"] = json!("other"));
    assert_invalid(
        &decrypt(s, &other, &moved, "DB_PASSWORD").await,
        "service account swapped",
    );
    let future = with_header(&value, |h| h["epoch"] = json!(2));
    assert_invalid(
        &decrypt(s, &pod, &future, "DB_PASSWORD").await,
        "epoch not yet issued",
    );

    // Another cluster: its own value, and ours relabelled.
    let elsewhere = cluster().await;
    let foreign = sealed_value(
        &elsewhere.server,
        "payments",
        "payments-api",
        "DB_PASSWORD",
        "x",
    )
    .await;
    assert_invalid(
        &decrypt(s, &pod, &foreign, "DB_PASSWORD").await,
        "other cluster's value",
    );
    let relabelled = with_header(&foreign, |h| {
        h["cluster_id"] = json!(header_of(&value).cluster_id)
    });
    assert_invalid(
        &decrypt(s, &pod, &relabelled, "DB_PASSWORD").await,
        "other cluster relabelled",
    );
}

#[tokio::test]
async fn encrypt_is_checked_on_the_binding_path_built_from_the_body() {
    let c = cluster().await;
    let s = &c.server;
    s.write_policy(
        "seal-payments",
        r#"path "sealed/encrypt/payments/payments-api" { capabilities = ["update"] }"#,
    )
    .await;
    let token = s.token(&["seal-payments"]).await;
    let ok = encrypt(
        s,
        &token,
        "payments",
        "payments-api",
        "DB_PASSWORD",
        "hunter2",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let value = ok.body["data"]["ciphertext"].as_str().unwrap();
    let header = header_of(value);
    assert_eq!(
        (
            header.namespace.as_str(),
            header.service_account.as_str(),
            header.name.as_str(),
            header.epoch
        ),
        ("payments", "payments-api", "DB_PASSWORD", 1)
    );
    assert!(!value.contains("hunter2"));
    assert_denied(
        &encrypt(s, &token, "shop", "payments-api", "DB_PASSWORD", "hunter2").await,
        "other namespace",
    );
    assert_denied(
        &encrypt(s, &token, "payments", "other", "DB_PASSWORD", "hunter2").await,
        "other account",
    );
    let nobody = s.token(&["default"]).await;
    assert_denied(
        &encrypt(
            s,
            &nobody,
            "payments",
            "payments-api",
            "DB_PASSWORD",
            "hunter2",
        )
        .await,
        "no policy",
    );
    // Names that would make another policy path are refused before any check.
    for (ns, sa, name) in [
        ("payments/payments-api", "x", "A"),
        ("payments", "../x", "A"),
        ("payments", "payments-api", "A-B"),
        ("payments", "*", "A"),
    ] {
        let answer = encrypt(s, &token, ns, sa, name, "v").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{ns} {sa} {name}: {:?}",
            answer.body
        );
    }
    let not_base64 = s
        .post("/v1/sealed/encrypt", &token, json!({ "namespace": "payments", "service_account": "payments-api", "name": "A", "plaintext": "hunter2!" }))
        .await;
    assert_eq!(not_base64.status, StatusCode::BAD_REQUEST);
    assert!(!String::from_utf8_lossy(&not_base64.raw).contains("hunter2"));
}

#[tokio::test]
async fn after_rotation_old_values_open_rewrap_moves_them_and_retired_epochs_do_not() {
    let c = cluster().await;
    let s = &c.server;
    let old = sealed_value(s, "payments", "payments-api", "DB_PASSWORD", "hunter2").await;
    let pod = c.login("payments", "payments-api").await;

    s.write_policy(
        "rotator",
        r#"path "sealed/rotate" { capabilities = ["update"] }"#,
    )
    .await;
    let not_sudo = s.token(&["rotator"]).await;
    assert_denied(
        &s.request("PUT", "/v1/sealed/rotate", Some(&not_sudo), None)
            .await,
        "rotate without sudo",
    );
    let rotated = s
        .request("PUT", "/v1/sealed/rotate", Some(ROOT), None)
        .await;
    assert_eq!(rotated.status, StatusCode::NO_CONTENT, "{:?}", rotated.body);

    // New values and documents use epoch 2; the epoch-1 value still opens.
    let doc = s
        .request("GET", "/v1/sealed/keys/payments/payments-api", None, None)
        .await;
    let document: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(doc.body["data"]["document"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(document["epoch"], 2);
    assert_eq!(
        header_of(&sealed_value(s, "payments", "payments-api", "X", "y").await).epoch,
        2
    );
    assert_eq!(
        plaintext(&decrypt(s, &pod, &old, "DB_PASSWORD").await),
        "hunter2"
    );

    s.write_policy(
        "rewrapper",
        r#"path "sealed/rewrap" { capabilities = ["update"] }"#,
    )
    .await;
    let rewrapper = s.token(&["rewrapper"]).await;
    let nobody = s.token(&["default"]).await;
    assert_denied(
        &s.post("/v1/sealed/rewrap", &nobody, json!({ "ciphertext": old }))
            .await,
        "rewrap without policy",
    );
    let rewrapped = s
        .post(
            "/v1/sealed/rewrap",
            &rewrapper,
            json!({ "ciphertext": old }),
        )
        .await;
    assert_eq!(rewrapped.status, StatusCode::OK, "{:?}", rewrapped.body);
    let new = rewrapped.body["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let (before, after) = (header_of(&old), header_of(&new));
    assert_eq!(after.epoch, 2);
    assert_eq!(
        (
            after.cluster_id,
            after.namespace,
            after.service_account,
            after.name
        ),
        (
            before.cluster_id,
            before.namespace,
            before.service_account,
            before.name
        )
    );
    assert!(String::from_utf8_lossy(&rewrapped.raw)
        .find("hunter2")
        .is_none());
    assert_eq!(
        plaintext(&decrypt(s, &pod, &new, "DB_PASSWORD").await),
        "hunter2"
    );
    let metrics = s.get("/v1/sys/metrics?format=prometheus", ROOT).await;
    let text = String::from_utf8_lossy(&metrics.raw);
    assert!(
        text.contains("kinko_sealed_decrypt_total{epoch_age=\"current\"}"),
        "{text}"
    );
    assert!(
        text.contains("kinko_sealed_decrypt_total{epoch_age=\"old\"}"),
        "{text}"
    );

    // Retiring epochs below 3: epoch-2 values stop opening too, for decrypt and rewrap alike.
    let retire = s
        .request(
            "PUT",
            "/v1/sealed/rotate",
            Some(ROOT),
            Some(json!({ "retire_before": 3 })),
        )
        .await;
    assert_eq!(retire.status, StatusCode::NO_CONTENT, "{:?}", retire.body);
    assert_invalid(
        &decrypt(s, &pod, &old, "DB_PASSWORD").await,
        "retired epoch 1",
    );
    assert_invalid(
        &decrypt(s, &pod, &new, "DB_PASSWORD").await,
        "retired epoch 2",
    );
    assert_invalid(
        &s.post(
            "/v1/sealed/rewrap",
            &rewrapper,
            json!({ "ciphertext": new }),
        )
        .await,
        "rewrap of a retired epoch",
    );
    let too_far = s
        .request(
            "PUT",
            "/v1/sealed/rotate",
            Some(ROOT),
            Some(json!({ "retire_before": 9 })),
        )
        .await;
    assert_eq!(too_far.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn compare_answers_match_needs_its_policy_and_is_rate_limited_per_token() {
    let c = cluster().await;
    let s = &c.server;
    let value = sealed_value(s, "payments", "payments-api", "DB_PASSWORD", "hunter2").await;
    s.write_policy(
        "compare-payments",
        r#"path "sealed/compare/payments/payments-api" { capabilities = ["update"] }"#,
    )
    .await;
    let token = s.token(&["compare-payments"]).await;
    let compare = |token: String, candidate: &'static str| {
        let value = value.clone();
        async move {
            s.post(
                "/v1/sealed/compare",
                &token,
                json!({ "ciphertext": value, "plaintext": STANDARD.encode(candidate) }),
            )
            .await
        }
    };
    let yes = compare(token.clone(), "hunter2").await;
    assert_eq!(yes.status, StatusCode::OK, "{:?}", yes.body);
    assert_eq!(yes.body["data"]["match"], true);
    assert_eq!(
        compare(token.clone(), "hunter3").await.body["data"]["match"],
        false
    );
    assert_eq!(
        compare(token.clone(), "").await.status,
        StatusCode::BAD_REQUEST
    );
    let other = s.token(&["default"]).await;
    assert_denied(&compare(other, "hunter2").await, "compare without policy");
    for _ in 2..10 {
        assert_eq!(compare(token.clone(), "guess").await.status, StatusCode::OK);
    }
    let limited = compare(token.clone(), "hunter2").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    assert_eq!(limited.errors(), vec!["too many requests"]);
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another token has its own budget.
    let second = s.token(&["compare-payments"]).await;
    assert_eq!(compare(second, "hunter2").await.body["data"]["match"], true);
}

async fn cluster_id(s: &TestServer) -> String {
    let keys = s.request("GET", "/v1/sealed/keys", None, None).await;
    keys.body["data"]["cluster_id"].as_str().unwrap().to_owned()
}

/// The signing-key fingerprint a cluster publishes without a token (what operators pin).
async fn published_pin(s: &TestServer) -> String {
    let keys = s.request("GET", "/v1/sealed/keys", None, None).await;
    keys.body["data"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn import(s: &TestServer, token: &str, bundle: &str, pin: &str) -> Answer {
    s.post(
        "/v1/sealed/import",
        token,
        json!({ "bundle": bundle, "fingerprint": pin }),
    )
    .await
}

fn assert_refused(answer: &Answer, reason: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    assert!(
        answer.errors()[0].contains(reason),
        "{reason}: {:?}",
        answer.body
    );
}

#[tokio::test]
async fn an_imported_sealing_key_opens_the_other_clusters_values_and_rewrap_moves_them_here() {
    let (old, new) = (cluster().await, cluster().await);
    let (old_id, new_id) = (cluster_id(&old.server).await, cluster_id(&new.server).await);
    let (old_pin, new_pin) = (
        published_pin(&old.server).await,
        published_pin(&new.server).await,
    );
    assert_ne!(old_id, new_id);
    let retired = sealed_value(&old.server, "payments", "payments-api", "OLD", "gone").await;
    // Retired on the old cluster before the export: stays retired where it is imported.
    for body in [json!({}), json!({ "retire_before": 2 })] {
        let rotated = old.server.post("/v1/sealed/rotate", ROOT, body).await;
        assert_eq!(rotated.status, StatusCode::NO_CONTENT);
    }
    let value = sealed_value(
        &old.server,
        "payments",
        "payments-api",
        "DB_PASSWORD",
        "dr-pw",
    )
    .await;
    assert_eq!(header_of(&value).epoch, 3);
    let pod = new.login("payments", "payments-api").await;
    assert_invalid(
        &decrypt(&new.server, &pod, &value, "DB_PASSWORD").await,
        "not imported",
    );

    // The receiver's import key: sudo only.
    let denied = new
        .server
        .request("GET", "/v1/sealed/import-key", Some(&pod), None)
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let import_key = new
        .server
        .request("GET", "/v1/sealed/import-key", Some(ROOT), None)
        .await;
    assert_eq!(import_key.status, StatusCode::OK, "{:?}", import_key.body);
    let mut body = import_key.body["data"].clone();
    body["fingerprint"] = json!(new_pin);
    let export = |body: Value| {
        let server = &old.server;
        async move { server.post("/v1/sealed/export", ROOT, body).await }
    };
    // A wrong pin, a key document in place of the import key, the sender's own import key.
    let mut wrong_pin = body.clone();
    wrong_pin["fingerprint"] = json!(format!("sha256:{}", "0".repeat(64)));
    assert_refused(&export(wrong_pin).await, "not by the pinned");
    let key_doc = new
        .server
        .request("GET", "/v1/sealed/keys/payments/payments-api", None, None)
        .await;
    let mut swapped = body.clone();
    swapped["document"] = key_doc.body["data"]["document"].clone();
    swapped["signature"] = key_doc.body["data"]["signature"].clone();
    assert_refused(&export(swapped).await, "import key is not valid");
    let own = old
        .server
        .request("GET", "/v1/sealed/import-key", Some(ROOT), None)
        .await;
    let mut to_self = own.body["data"].clone();
    to_self["fingerprint"] = json!(old_pin);
    assert_refused(&export(to_self).await, "this cluster's own");

    let exported = export(body).await;
    assert_eq!(exported.status, StatusCode::OK, "{:?}", exported.body);
    let bundle = exported.body["data"]["bundle"].as_str().unwrap().to_owned();
    assert!(bundle.starts_with("kinko:sealing-key:v1:"));

    // An impostor wraps its own secret under the old cluster's id to the (public) import key
    // and gets there first: refused by the pin, and the real bundle still imports after it.
    let data = &import_key.body["data"];
    let document = URL_SAFE_NO_PAD
        .decode(data["document"].as_str().unwrap())
        .unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(data["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signing_key = STANDARD
        .decode(data["signing_key"].as_str().unwrap())
        .unwrap();
    let to = transfer::ImportKeyDocument::verify(&document, &signature, &signing_key).unwrap();
    let impostor = transfer::wrap(
        &SealingRoot::new(Key256::from_slice(&[7; 32]).unwrap()),
        &transfer::BundleHeader {
            from_cluster_id: old_id.clone(),
            to_cluster_id: new_id.clone(),
            current: 9,
            retired_before: 0,
            kem: sealed::KEM.to_owned(),
        },
        &to,
    )
    .unwrap();
    assert_refused(
        &import(&new.server, ROOT, &impostor, &old_pin).await,
        "not the pinned",
    );

    // Only its addressee imports it, with the sender's pin; a changed byte does not
    // authenticate; sudo only.
    assert_refused(
        &import(&old.server, ROOT, &bundle, &old_pin).await,
        "is for cluster",
    );
    assert_refused(
        &import(&new.server, ROOT, &bundle, &new_pin).await,
        "not the pinned",
    );
    let mut flipped = raw_bundle(&bundle);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let flipped = format!("kinko:sealing-key:v1:{}", URL_SAFE_NO_PAD.encode(flipped));
    assert_refused(
        &import(&new.server, ROOT, &flipped, &old_pin).await,
        "does not authenticate",
    );
    assert_eq!(
        import(&new.server, &pod, &bundle, &old_pin).await.status,
        StatusCode::FORBIDDEN
    );
    let imported = import(&new.server, ROOT, &bundle, &old_pin).await;
    assert_eq!(imported.status, StatusCode::OK, "{:?}", imported.body);
    assert_eq!(imported.body["data"]["cluster_id"], json!(old_id));

    // The old cluster's values open for the same binding only; its retirement holds.
    assert_eq!(
        plaintext(&decrypt(&new.server, &pod, &value, "DB_PASSWORD").await),
        "dr-pw"
    );
    assert_denied(
        &decrypt(&new.server, &pod, &value, "OTHER").await,
        "another name",
    );
    let other = new.login("payments", "other").await;
    assert_denied(
        &decrypt(&new.server, &other, &value, "DB_PASSWORD").await,
        "another sa",
    );
    assert_invalid(
        &decrypt(&new.server, &pod, &retired, "OLD").await,
        "retired at 2",
    );
    // A newer epoch of the sender (rotated after the export) opens too.
    old.server.post("/v1/sealed/rotate", ROOT, json!({})).await;
    let newer = sealed_value(
        &old.server,
        "payments",
        "payments-api",
        "DB_PASSWORD",
        "dr-pw4",
    )
    .await;
    assert_eq!(header_of(&newer).epoch, 4);
    assert_eq!(
        plaintext(&decrypt(&new.server, &pod, &newer, "DB_PASSWORD").await),
        "dr-pw4"
    );

    // Rewrap moves it to this cluster, same namespace, service account and name.
    let rewrapped = new
        .server
        .post("/v1/sealed/rewrap", ROOT, json!({ "ciphertext": value }))
        .await;
    assert_eq!(rewrapped.status, StatusCode::OK, "{:?}", rewrapped.body);
    let moved = rewrapped.body["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = header_of(&moved);
    assert_eq!(
        (
            header.cluster_id.as_str(),
            header.namespace.as_str(),
            header.service_account.as_str(),
            header.name.as_str(),
            header.epoch
        ),
        (
            new_id.as_str(),
            "payments",
            "payments-api",
            "DB_PASSWORD",
            1
        )
    );
    assert_eq!(
        plaintext(&decrypt(&new.server, &pod, &moved, "DB_PASSWORD").await),
        "dr-pw"
    );

    // Importing again is idempotent; removing the import stops the old values opening here.
    let again = import(&new.server, ROOT, &bundle, &old_pin).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    let path = format!("/v1/sealed/import/{old_id}");
    let not_sudo = new.server.request("DELETE", &path, Some(&pod), None).await;
    assert_eq!(not_sudo.status, StatusCode::FORBIDDEN);
    let removed = new.server.request("DELETE", &path, Some(ROOT), None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{:?}", removed.body);
    assert_invalid(
        &decrypt(&new.server, &pod, &value, "DB_PASSWORD").await,
        "removed",
    );
    let gone = new.server.request("DELETE", &path, Some(ROOT), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        plaintext(&decrypt(&new.server, &pod, &moved, "DB_PASSWORD").await),
        "dr-pw",
        "values already moved here do not depend on the import"
    );
}

fn raw_bundle(bundle: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(bundle.strip_prefix("kinko:sealing-key:v1:").unwrap())
        .unwrap()
}
