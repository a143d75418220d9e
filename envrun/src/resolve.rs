//! Talking to kinko: logging in (token or Kubernetes service-account token), finding each
//! path's KV mount, fetching with bounded retries, and resolving everything into the variables
//! the program gets. Any failure names the path and the reason; nothing partial is returned.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use kinko_client::{Client, Error as ClientError, Method};
use serde_json::{json, Map, Value};

use kinko_spec::{
    parse_reference, value_text, Assembled, Naming, Reference, SecretRef, SecretSpec, SpecError,
};

/// Variables that steer envrun itself; they never reach the program.
pub const CONTROL_VARIABLES: [&str; 9] = [
    "KINKO_ADDR",
    "KINKO_CACERT",
    "KINKO_TOKEN",
    "VAULT_ADDR",
    "VAULT_CACERT",
    "VAULT_TOKEN",
    "BAO_ADDR",
    "BAO_CACERT",
    "BAO_TOKEN",
];

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{target}: {reason}")]
    Fetch { target: String, reason: String },
    #[error("{0}")]
    Setup(String),
    #[error("gave up after {0:?} (--timeout)")]
    Timeout(Duration),
}

pub enum Login {
    Token(String),
    Kubernetes {
        role: String,
        token_path: PathBuf,
        mount: String,
    },
}

pub struct Settings {
    pub addr: String,
    pub ca_pem: Option<Vec<u8>>,
    pub login: Login,
    pub retries: u32,
    pub timeout: Duration,
}

/// Everything envrun was asked to provide.
pub struct Plan {
    pub secrets: Vec<SecretSpec>,
    pub naming: Naming,
    pub allow_override: bool,
    pub pristine: bool,
    /// The environment envrun itself was started with.
    pub inherited: Vec<(String, String)>,
}

fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Api { status, errors, .. } => {
            let reason = match status {
                403 => "permission denied".to_owned(),
                404 => "not found".to_owned(),
                503 if errors.iter().any(|e| e.contains("sealed")) => {
                    "the server is sealed".to_owned()
                }
                _ => errors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "request refused".into()),
            };
            format!("{reason} (HTTP {status})")
        }
        other => other.to_string(),
    }
}

fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Api { status, .. } => *status >= 500 || *status == 429,
        ClientError::Transport { .. } => true,
        _ => false,
    }
}

/// Runs `attempt` up to `retries + 1` times while it fails in a way worth retrying.
async fn with_retries<T, F, Fut>(
    retries: u32,
    target: &str,
    mut attempt: F,
) -> Result<T, ResolveError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    for tried in 0..=retries {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if retryable(&error) && tried < retries => {
                eprintln!(
                    "envrun: {target}: {} (retrying in {delay:?})",
                    describe(&error)
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(ResolveError::Fetch {
                    target: target.to_owned(),
                    reason: describe(&error),
                })
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

pub struct Resolver {
    settings: Settings,
    plan: Plan,
}

impl Resolver {
    pub fn new(settings: Settings, plan: Plan) -> Self {
        Resolver { settings, plan }
    }

    /// The program's whole environment, or an error naming what failed; bounded by --timeout.
    pub async fn resolve(&self) -> Result<BTreeMap<String, String>, ResolveError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.resolve_unbounded())
            .await
            .map_err(|_| ResolveError::Timeout(timeout))?
    }

    /// Only the names of the variables that secrets provide (for `--dry-run`).
    pub async fn names(&self) -> Result<Vec<String>, ResolveError> {
        let timeout = self.settings.timeout;
        let assembled = tokio::time::timeout(timeout, self.assemble())
            .await
            .map_err(|_| ResolveError::Timeout(timeout))??;
        Ok(assembled.0.names().map(str::to_owned).collect())
    }

    async fn resolve_unbounded(&self) -> Result<BTreeMap<String, String>, ResolveError> {
        let (assembled, referencing) = self.assemble().await?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if !self.plan.pristine {
            for (name, value) in &self.plan.inherited {
                if !CONTROL_VARIABLES.contains(&name.as_str()) && !referencing.contains(name) {
                    env.insert(name.clone(), value.clone());
                }
            }
        }
        env.extend(assembled.into_values());
        Ok(env)
    }

    /// The variables secrets provide, and which inherited variables were references.
    async fn assemble(&self) -> Result<(Assembled, Vec<String>), ResolveError> {
        let client = self.connect().await?;
        let mut fetcher = Fetcher {
            client,
            retries: self.settings.retries,
            mounts: Vec::new(),
            secrets: HashMap::new(),
        };
        let mut assembled = Assembled::new(self.plan.allow_override);
        let mut referencing = Vec::new();
        if !self.plan.pristine {
            for (name, value) in &self.plan.inherited {
                let source = format!("{name}={}", value.chars().take(80).collect::<String>());
                match parse_reference(name, value)? {
                    None => {}
                    Some(Reference::Secret(secret)) => {
                        let data = fetcher.secret(&secret).await?;
                        let key = secret.key.as_deref().expect("references name a key");
                        let value = data.get(key).ok_or_else(|| missing_key(&secret, key))?;
                        assembled.insert(name.clone(), value_text(value), source)?;
                        referencing.push(name.clone());
                    }
                    Some(Reference::Sealed(ciphertext)) => {
                        let plaintext = fetcher.unseal(name, &ciphertext).await?;
                        assembled.insert(
                            name.clone(),
                            plaintext,
                            format!("{name}=kinko:sealed:…"),
                        )?;
                        referencing.push(name.clone());
                    }
                }
            }
        }
        for spec in &self.plan.secrets {
            let data = fetcher.secret(&spec.secret).await?;
            match &spec.secret.key {
                Some(key) => {
                    let value = data
                        .get(key)
                        .ok_or_else(|| missing_key(&spec.secret, key))?;
                    assembled.insert(
                        self.plan.naming.name_for(spec, key)?,
                        value_text(value),
                        spec.secret.to_string(),
                    )?;
                }
                None => {
                    for (key, value) in &data {
                        assembled.insert(
                            self.plan.naming.name_for(spec, key)?,
                            value_text(value),
                            spec.secret.to_string(),
                        )?;
                    }
                }
            }
        }
        Ok((assembled, referencing))
    }

    async fn connect(&self) -> Result<Client, ResolveError> {
        let mut builder = Client::builder(&self.settings.addr).timeout(Duration::from_secs(10));
        if let Some(ca) = &self.settings.ca_pem {
            builder = builder.ca_pem(ca.clone());
        }
        let client = builder
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        match &self.settings.login {
            Login::Token(token) => Ok(client.with_token(token.clone())),
            Login::Kubernetes {
                role,
                token_path,
                mount,
            } => {
                let jwt = std::fs::read_to_string(token_path).map_err(|e| {
                    ResolveError::Setup(format!(
                        "cannot read the service account token {}: {e}",
                        token_path.display()
                    ))
                })?;
                let path = format!("auth/{}/login", mount.trim_matches('/'));
                let body = json!({ "role": role, "jwt": jwt.trim() });
                let answer = with_retries(
                    self.settings.retries,
                    &format!("{path} (role {role})"),
                    || client.request(Method::POST, &path, Some(&body)),
                )
                .await?;
                let token = answer
                    .as_ref()
                    .and_then(|a| a["auth"]["client_token"].as_str())
                    .ok_or_else(|| ResolveError::Fetch {
                        target: path.clone(),
                        reason: "no token in the login answer".into(),
                    })?;
                Ok(client.with_token(token))
            }
        }
    }
}

fn missing_key(secret: &SecretRef, key: &str) -> ResolveError {
    ResolveError::Fetch {
        target: secret.path.clone(),
        reason: format!("has no key {key:?}"),
    }
}

/// Fetches each (path, version) once per resolution.
struct Fetcher {
    client: Client,
    retries: u32,
    /// KV mounts found so far (`secret/`).
    mounts: Vec<String>,
    secrets: HashMap<(String, Option<u64>), Map<String, Value>>,
}

impl Fetcher {
    async fn mount_of(&mut self, path: &str) -> Result<String, ResolveError> {
        if let Some(mount) = self.mounts.iter().find(|m| path.starts_with(m.as_str())) {
            return Ok(mount.clone());
        }
        // The same preflight the vault CLI does: which mount, which KV version.
        let preflight = format!("sys/internal/ui/mounts/{path}");
        let answer = with_retries(self.retries, path, || {
            self.client.request(Method::GET, &preflight, None)
        })
        .await?
        .unwrap_or_default();
        let mount = answer["data"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if mount.is_empty() || !path.starts_with(&mount) {
            return Err(ResolveError::Fetch {
                target: path.to_owned(),
                reason: "is not under a KV mount".into(),
            });
        }
        self.mounts.push(mount.clone());
        Ok(mount)
    }

    async fn secret(&mut self, secret: &SecretRef) -> Result<Map<String, Value>, ResolveError> {
        let cache_key = (secret.path.clone(), secret.version);
        if let Some(found) = self.secrets.get(&cache_key) {
            return Ok(found.clone());
        }
        let mount = self.mount_of(&secret.path).await?;
        let relative = &secret.path[mount.len()..];
        let client = &self.client;
        let read = with_retries(self.retries, &secret.to_string(), || {
            client.kv_read(&mount, relative, secret.version)
        })
        .await?;
        let data = read
            .ok_or_else(|| ResolveError::Fetch {
                target: secret.to_string(),
                reason: "not found (missing, deleted or destroyed)".into(),
            })?
            .data;
        self.secrets.insert(cache_key, data.clone());
        Ok(data)
    }

    async fn unseal(&mut self, variable: &str, ciphertext: &str) -> Result<String, ResolveError> {
        // The server opens the value only for the variable it was sealed for.
        let body = json!({ "ciphertext": ciphertext, "name": variable });
        let target = format!("{variable} (sealed value)");
        let answer = with_retries(self.retries, &target, || {
            self.client
                .request(Method::POST, "sealed/decrypt", Some(&body))
        })
        .await?
        .unwrap_or_default();
        let encoded = answer["data"]["plaintext"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| ResolveError::Fetch {
                target: target.clone(),
                reason: "the server's plaintext is not base64".into(),
            })?;
        String::from_utf8(bytes).map_err(|_| ResolveError::Fetch {
            target,
            reason: "the sealed value is not UTF-8 text".into(),
        })
    }
}
