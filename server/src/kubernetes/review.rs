//! The TokenReview adapter: asks the Kubernetes API server (through the `kube` client) whether a
//! service-account token is valid for an audience, and who it belongs to.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where and as whom to ask.
pub struct ReviewTarget {
    pub host: String,
    pub ca_pem: String,
    /// The bearer token for the API server; `None` uses the reviewed token itself (the
    /// service account then needs `system:auth-delegator`, as with Vault).
    pub reviewer_jwt: Option<String>,
}

/// What the API server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewOutcome {
    pub authenticated: bool,
    pub username: String,
    pub uid: String,
    pub audiences: Vec<String>,
}

/// Fills in what the configuration leaves out from the Pod's own in-cluster credentials.
pub fn resolve_target(
    host: &str,
    ca_pem: &str,
    reviewer_jwt: &str,
    disable_local_ca_jwt: bool,
) -> Result<ReviewTarget> {
    let in_cluster = |file: &str| std::fs::read_to_string(format!("{IN_CLUSTER_DIR}/{file}")).ok();
    let host = if host.is_empty() {
        match (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) {
            (Ok(h), Ok(p)) if !disable_local_ca_jwt => format!("https://{h}:{p}"),
            _ => {
                return Err(Error::bad_request(
                    "kubernetes_host is not configured and kinko is not running in a cluster",
                ))
            }
        }
    } else {
        host.to_owned()
    };
    let ca_pem = match (ca_pem.is_empty(), disable_local_ca_jwt) {
        (false, _) => ca_pem.to_owned(),
        (true, false) => in_cluster("ca.crt").unwrap_or_default(),
        (true, true) => String::new(),
    };
    let reviewer_jwt = match (reviewer_jwt.is_empty(), disable_local_ca_jwt) {
        (false, _) => Some(reviewer_jwt.to_owned()),
        (true, false) => in_cluster("token").map(|t| t.trim().to_owned()),
        (true, true) => None,
    };
    Ok(ReviewTarget {
        host,
        ca_pem,
        reviewer_jwt,
    })
}

fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("Kubernetes TokenReview failed: {what}"))
}

/// API clients by reviewer configuration, so logins reuse connections instead of a TLS
/// handshake each. A client that reviews with the reviewed token itself is never cached.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<[u8; 32], kube::Client>>,
}

const MAX_CACHED_CLIENTS: usize = 16;

impl ClientCache {
    fn client(&self, target: &ReviewTarget, jwt: &str) -> Result<kube::Client> {
        let Some(reviewer) = &target.reviewer_jwt else {
            return build_client(target, jwt);
        };
        let mut hasher = Sha256::new();
        for part in [
            target.host.as_bytes(),
            target.ca_pem.as_bytes(),
            reviewer.as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let fingerprint: [u8; 32] = hasher.finalize().into();
        let mut clients = self.clients.lock().expect("client cache poisoned");
        if let Some(client) = clients.get(&fingerprint) {
            return Ok(client.clone());
        }
        let client = build_client(target, reviewer)?;
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(fingerprint, client.clone());
        Ok(client)
    }
}

fn build_client(target: &ReviewTarget, bearer: &str) -> Result<kube::Client> {
    let url: http::Uri = target
        .host
        .parse()
        .map_err(|_| Error::bad_request("kubernetes_host is not a URL"))?;
    let mut config = kube::Config::new(url);
    if !target.ca_pem.is_empty() {
        let roots: Vec<Vec<u8>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(target.ca_pem.as_bytes())
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::bad_request("kubernetes_ca_cert is not PEM"))?;
        config.root_cert = Some(roots);
    }
    config.auth_info.token = Some(bearer.to_owned().into());
    config.connect_timeout = Some(REVIEW_TIMEOUT);
    config.read_timeout = Some(REVIEW_TIMEOUT);
    config.write_timeout = Some(REVIEW_TIMEOUT);
    kube::Client::try_from(config).map_err(unavailable)
}

pub async fn review(
    cache: &ClientCache,
    target: &ReviewTarget,
    jwt: &str,
    audience: &str,
) -> Result<ReviewOutcome> {
    let client = cache.client(target, jwt)?;
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(jwt.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| match e {
            // Never echo the error body: it may quote the request.
            kube::Error::Api(status) => unavailable(format!(
                "API server answered {} {}",
                status.code, status.reason
            )),
            other => unavailable(other),
        })?;
    let status = answer.status.unwrap_or_default();
    let user = status.user.unwrap_or_default();
    Ok(ReviewOutcome {
        authenticated: status.authenticated.unwrap_or(false),
        username: user.username.unwrap_or_default(),
        uid: user.uid.unwrap_or_default(),
        audiences: status.audiences.unwrap_or_default(),
    })
}
