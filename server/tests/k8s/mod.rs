//! Kubernetes test fixtures: signing keys (RS256, ES256), service-account JWTs shaped like
//! projected tokens, and a local HTTPS endpoint that speaks the real
//! `authentication.k8s.io/v1` TokenReview JSON, as an API server would.
//! Shared by `server/tests/api_kubernetes.rs` and `tests/kubernetes_e2e.rs`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const AUDIENCE: &str = "kinko";

pub struct SigningKey {
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    pub public_pem: String,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One RSA key per test binary: generating it is the slow part.
pub fn rsa_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| new_rsa_key("rsa-1"))
}

pub fn other_rsa_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| new_rsa_key("rsa-2"))
}

fn new_rsa_key(kid: &str) -> SigningKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let public = private.to_public_key();
    let private_pem = private.to_pkcs1_pem(LineEnding::LF).unwrap();
    SigningKey {
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
        jwk: json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                     "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be()) }),
    }
}

pub fn ec_key() -> SigningKey {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw();
    SigningKey {
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        public_pem: pair.public_key_pem(),
        jwk: json!({ "kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
                     "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) }),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a projected service-account token, valid for ten minutes from now.
pub fn claims(namespace: &str, name: &str) -> Value {
    let now = now();
    json!({
        "aud": [AUDIENCE],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {
            "namespace": namespace,
            "node": { "name": "node-1", "uid": "3f0c6a3c-0000-4000-8000-000000000001" },
            "pod": { "name": format!("{name}-7d9f8b6c5-x2x9z"), "uid": "9a1e2c4d-0000-4000-8000-000000000002" },
            "serviceaccount": { "name": name, "uid": uid_of(namespace, name) },
            "warnafter": now + 300
        }
    })
}

/// A stable fake UID per service account.
pub fn uid_of(namespace: &str, name: &str) -> String {
    let digest = namespace
        .bytes()
        .chain(name.bytes())
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        digest as u32,
        digest & 0xffff_ffff_ffff
    )
}

pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = key.jwk["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// `alg: none`, no signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// HS256 with the public key as the HMAC secret (the classic key-confusion attack).
pub fn hmac_with_public_key(key: &SigningKey, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.public_pem.as_bytes()),
    )
    .unwrap()
}

#[derive(Clone)]
struct Identity {
    username: String,
    uid: String,
    audiences: Vec<String>,
}

/// A review as received: the bearer token it came with, and its body.
pub type ReceivedReview = (Option<String>, Value);

#[derive(Clone, Default)]
struct ReviewState {
    reviewer_token: String,
    known: Arc<Mutex<HashMap<String, Identity>>>,
    requests: Arc<Mutex<Vec<ReceivedReview>>>,
}

/// A local HTTPS endpoint that answers `POST /apis/authentication.k8s.io/v1/tokenreviews`
/// like the API server: authenticated only for tokens it was told about, for their audiences.
pub struct TokenReviewServer {
    pub url: String,
    pub ca_pem: String,
    state: ReviewState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TokenReviewServer {
    pub async fn start(reviewer_token: &str) -> TokenReviewServer {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
        let tls =
            kinko_tls::server_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
                .unwrap();
        let state = ReviewState {
            reviewer_token: reviewer_token.into(),
            ..ReviewState::default()
        };
        let app = Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _keep = dir;
            let limits = kinko_tls::ServeLimits::default();
            kinko_tls::serve(listener, tls, app, limits, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TokenReviewServer {
            url,
            ca_pem: ca.pem(),
            state,
            stop: Some(stop),
        }
    }

    /// The API server will authenticate `jwt` as this service account, for these audiences.
    pub fn allow(&self, jwt: &str, namespace: &str, name: &str, audiences: &[&str]) {
        self.state.known.lock().unwrap().insert(
            jwt.to_owned(),
            Identity {
                username: format!("system:serviceaccount:{namespace}:{name}"),
                uid: uid_of(namespace, name),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            },
        );
    }

    /// The service account was deleted: its tokens no longer authenticate.
    pub fn forget(&self, jwt: &str) {
        self.state.known.lock().unwrap().remove(jwt);
    }

    /// Every review received: the bearer token it came with, and its body.
    pub fn requests(&self) -> Vec<ReceivedReview> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TokenReviewServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn review(
    State(state): State<ReviewState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    state
        .requests
        .lock()
        .unwrap()
        .push((bearer.clone(), body.clone()));
    if bearer.as_deref() != Some(state.reviewer_token.as_str()) {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "message": "Unauthorized", "reason": "Unauthorized", "code": 401 });
        return (StatusCode::UNAUTHORIZED, Json(status));
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known = state.known.lock().unwrap().get(token).cloned();
    let status = match known {
        None => json!({ "authenticated": false, "user": {}, "error": "invalid bearer token" }),
        Some(identity) => {
            let granted: Vec<&String> = identity
                .audiences
                .iter()
                .filter(|a| wanted.is_empty() || wanted.contains(a))
                .collect();
            if granted.is_empty() {
                json!({ "authenticated": false, "user": {}, "error": "token audiences are invalid" })
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": identity.username,
                        "uid": identity.uid,
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "extra": { "authentication.kubernetes.io/pod-name": ["app-7d9f8b6c5-x2x9z"] }
                    },
                    "audiences": granted,
                })
            }
        }
    };
    let answer = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": body["spec"],
        "status": status,
    });
    (StatusCode::CREATED, Json(answer))
}
