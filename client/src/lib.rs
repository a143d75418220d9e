//! kinko-client: a typed async client of the kinko HTTP API (the Vault-compatible subset),
//! used by envrun, operator tooling and the end-to-end tests.

use std::sync::Arc;
use std::time::Duration;

pub use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status; `errors` are its messages.
    #[error("{method} {path}: HTTP {status}{}", if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) })]
    Api {
        method: String,
        path: String,
        status: u16,
        errors: Vec<String>,
    },
    #[error("cannot reach the kinko server at {addr}: {reason}")]
    Transport { addr: String, reason: String },
    #[error("invalid CA certificate: {0}")]
    Ca(String),
    #[error("unexpected response from {path}: {reason}")]
    Decode { path: String, reason: String },
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A KV v2 secret version as read. `Debug` shows the keys, never the values.
#[derive(PartialEq)]
pub struct KvSecret {
    pub data: Map<String, Value>,
    pub version: u64,
}

impl std::fmt::Debug for KvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSecret")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .finish()
    }
}

/// The `auth` block of a response that issued a token.
#[derive(Clone, Deserialize)]
pub struct TokenAuth {
    pub client_token: String,
    pub accessor: String,
    pub policies: Vec<String>,
    pub lease_duration: u64,
    pub renewable: bool,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("client_token", &"[REDACTED]")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

pub struct ClientBuilder {
    addr: String,
    ca_pem: Option<Vec<u8>>,
    token: Option<String>,
    timeout: Duration,
}

impl ClientBuilder {
    /// Trust this CA (PEM) instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Per-request timeout (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::Ca(e.to_string()))?;
                if certs.is_empty() {
                    return Err(Error::Ca("no PEM certificate found".into()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| Error::Ca(e.to_string()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = reqwest::Client::builder();
        #[cfg(feature = "hickory-dns")]
        let builder = builder.hickory_dns(true);
        let http = builder
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(self.timeout)
            .build()
            .map_err(|e| Error::Transport {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            addr: self.addr.trim_end_matches('/').to_owned(),
            token: self.token,
        })
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

fn api_error(method: &str, path: &str, status: StatusCode, body: Option<Value>) -> Error {
    let errors = body
        .as_ref()
        .and_then(|v| v["errors"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Error::Api {
        method: method.to_owned(),
        path: path.to_owned(),
        status: status.as_u16(),
        errors,
    }
}

/// Percent-encodes each segment of a logical path, keeping the `/` separators.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// An error with every cause behind it ("… client error (Connect): dns error: failed to lookup
/// address information: …"), so a transport failure says what actually failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let line = inner.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = inner.source();
    }
    text
}

impl Client {
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            ca_pem: None,
            token: None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// The same client acting with another token.
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// Sends one request to `/v1/<path>`; `Ok(None)` for 204.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        match self.raw(method.clone(), path, body).await? {
            (status, value) if status.is_success() => Ok(value),
            (status, value) => Err(api_error(method.as_str(), path, status, value)),
        }
    }

    /// Sends one request and returns the status and body whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<Value>)> {
        self.send(method, path, &[], body).await
    }

    /// Sends one request and returns the status and the body as text (`sys/metrics`).
    pub async fn text(&self, method: Method, path: &str) -> Result<(StatusCode, String)> {
        let (status, bytes) = self.send_bytes(method, path, &[], None).await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<Value>)> {
        let (status, bytes) = self.send_bytes(method, path, query, body).await?;
        if bytes.is_empty() {
            return Ok((status, None));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            path: path.to_owned(),
            reason: format!("body is not JSON: {e}"),
        })?;
        Ok((status, Some(value)))
    }

    async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let url = format!("{}/v1/{}", self.addr, encode_path(path));
        let mut request = self.http.request(method, url).query(query);
        if let Some(token) = &self.token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| Error::Transport {
            addr: self.addr.clone(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Error::Transport {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        Ok((status, bytes))
    }

    pub async fn health(&self) -> Result<u16> {
        Ok(self.raw(Method::GET, "sys/health", None).await?.0.as_u16())
    }

    pub async fn seal_status(&self) -> Result<Value> {
        self.request(Method::GET, "sys/seal-status", None)
            .await
            .map(Option::unwrap_or_default)
    }

    /// Reads a KV v2 secret; `Ok(None)` when there is no live version (missing or deleted).
    pub async fn kv_read(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<KvSecret>> {
        let full = format!(
            "{}/data/{}",
            mount.trim_matches('/'),
            path.trim_matches('/')
        );
        let query: Vec<(&str, String)> = version
            .map(|v| ("version", v.to_string()))
            .into_iter()
            .collect();
        let answer = match self.send(Method::GET, &full, &query, None).await? {
            (StatusCode::NOT_FOUND, _) => return Ok(None),
            (status, body) if !status.is_success() => {
                return Err(api_error("GET", &full, status, body))
            }
            (_, body) => body.unwrap_or_default(),
        };
        let data = answer["data"]["data"]
            .as_object()
            .cloned()
            .ok_or_else(|| Error::Decode {
                path: full.clone(),
                reason: "no data.data object".into(),
            })?;
        let version = answer["data"]["metadata"]["version"].as_u64().unwrap_or(0);
        Ok(Some(KvSecret { data, version }))
    }

    /// Writes a KV v2 secret, with optional check-and-set; returns the new version.
    pub async fn kv_write(
        &self,
        mount: &str,
        path: &str,
        data: &Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<u64> {
        let mut body = json!({ "data": data });
        if let Some(cas) = cas {
            body["options"] = json!({ "cas": cas });
        }
        let full = format!(
            "{}/data/{}",
            mount.trim_matches('/'),
            path.trim_matches('/')
        );
        let answer = self
            .request(Method::POST, &full, Some(&body))
            .await?
            .unwrap_or_default();
        answer["data"]["version"]
            .as_u64()
            .ok_or_else(|| Error::Decode {
                path: full,
                reason: "no data.version".into(),
            })
    }

    pub async fn policy_write(&self, name: &str, policy: &str) -> Result<()> {
        self.request(
            Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(&json!({ "policy": policy })),
        )
        .await
        .map(drop)
    }

    /// Creates a child token; `ttl` in Vault duration syntax (`"1h"`).
    pub async fn token_create(&self, policies: &[&str], ttl: Option<&str>) -> Result<TokenAuth> {
        let mut body = json!({ "policies": policies });
        if let Some(ttl) = ttl {
            body["ttl"] = json!(ttl);
        }
        let answer = self
            .request(Method::POST, "auth/token/create", Some(&body))
            .await?
            .unwrap_or_default();
        serde_json::from_value(answer["auth"].clone()).map_err(|e| Error::Decode {
            path: "auth/token/create".into(),
            reason: e.to_string(),
        })
    }

    pub async fn lookup_self(&self) -> Result<Value> {
        let answer = self
            .request(Method::GET, "auth/token/lookup-self", None)
            .await?
            .unwrap_or_default();
        Ok(answer["data"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(
            encode_path("secret/data/app db/ü"),
            "secret/data/app%20db/%C3%BC"
        );
        assert_eq!(encode_path("a/b"), "a/b");
    }

    #[test]
    fn debug_output_hides_tokens() {
        let client = Client::builder("https://127.0.0.1:1")
            .token("kks.secret-value")
            .build()
            .unwrap();
        assert!(!format!("{client:?}").contains("secret-value"));
    }

    #[test]
    fn a_bad_ca_is_a_clear_error() {
        let error = Client::builder("https://x")
            .ca_pem("not a pem")
            .build()
            .unwrap_err();
        assert!(matches!(error, Error::Ca(_)));
    }
}
