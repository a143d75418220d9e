//! The registry lookup, the I/O adapter beside the pure [`crate::mutate`]: the ENTRYPOINT and
//! CMD of a container's image, read from its registry over the OCI distribution API.
//!
//! manifest (an index or list → the entry for the Pod's [`Platform`]) → image manifest →
//! config blob → `config.Entrypoint`, `config.Cmd`. Every document fetched by digest is checked
//! against it. Anonymous, or the `WWW-Authenticate: Bearer` token flow (and Basic) with the
//! credentials of a `dockerconfigjson` file. Bounded everywhere: [`LOOKUP_TIMEOUT`] for all of
//! a review's images, [`MAX_DOCUMENT_BYTES`] per response, [`CACHE_ENTRIES`] per cache, and a
//! tag is re-resolved after [`TAG_TTL`]. Error messages name the registry and what failed,
//! never a credential or a token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::mutate::{ImageCommand, ImageCommands, ImageFailures, Platform};

/// All lookups of one review at most: well under the webhook's 10 s.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries per cache (references, digests, tokens).
pub const CACHE_ENTRIES: usize = 512;
/// How long a tag → digest answer is reused.
pub const TAG_TTL: Duration = Duration::from_secs(300);
/// A manifest, index, config blob or token response at most.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
/// Docker Hub's registry host, for names without one.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`; Docker Hub is [`DOCKER_HUB`].
    pub registry: String,
    /// `library/nginx`, `team/app`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// What the manifest is fetched by: the digest if given, else the tag (`latest` by default).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Parses `[host[:port]/]path[:tag][@sha256:digest]` the way the container runtime does.
pub fn parse_reference(image: &str) -> Result<ImageRef, String> {
    let bad = |why: &str| Err(format!("{image:?} is not an image reference: {why}"));
    if image.is_empty() || image.len() > 1024 {
        return bad("empty or too long");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it has spaces or control characters");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) if is_digest(digest) => (rest, Some(digest.to_owned())),
        Some(_) => return bad("only sha256:<64 hex> digests are understood"),
        None => (image, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return bad("the tag has characters a tag cannot have");
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, path.to_owned())
        }
        _ => ("docker.io", name.to_owned()),
    };
    let registry = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    let ok = !repository.is_empty()
        && repository.split('/').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if !ok {
        return bad("the repository must be lowercase letters, digits and . _ - / separators");
    }
    Ok(ImageRef {
        registry: registry.to_owned(),
        repository,
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// `Bearer realm="…",service="…",scope="…"` → ("bearer", parameters).
pub fn parse_challenge(header: &str) -> Option<(String, BTreeMap<String, String>)> {
    let header = header.trim();
    if header.is_empty() {
        return None;
    }
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some((scheme.to_ascii_lowercase(), params))
}

/// Picks the manifest for `platform` from an OCI index or Docker manifest list: the first
/// entry whose `os` and `architecture` match (attestations, `unknown/unknown`, never match).
pub fn select_platform(index: &Value, platform: &Platform) -> Result<String, String> {
    let entries = index["manifests"]
        .as_array()
        .ok_or("the index has no manifests list")?;
    let mut seen = Vec::new();
    for entry in entries {
        let os = entry["platform"]["os"].as_str().unwrap_or("");
        let arch = entry["platform"]["architecture"].as_str().unwrap_or("");
        if os == platform.os && arch == platform.architecture {
            if let Some(digest) = entry["digest"].as_str().filter(|d| is_digest(d)) {
                return Ok(digest.to_owned());
            }
        }
        if seen.len() < 8 {
            seen.push(format!("{os}/{arch}"));
        }
    }
    Err(format!(
        "the image has no {platform} entry (it has: {})",
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    ))
}

/// `config.Entrypoint` and `config.Cmd` of an image config blob (absent or null is empty).
pub fn image_command(config: &Value) -> Result<ImageCommand, String> {
    let words = |field: &str| -> Result<Vec<String>, String> {
        match &config["config"][field] {
            Value::Null => Ok(Vec::new()),
            value => serde_json::from_value(value.clone())
                .map_err(|_| format!("the image config's {field} is not a list of strings")),
        }
    };
    Ok(ImageCommand {
        entrypoint: words("Entrypoint")?,
        cmd: words("Cmd")?,
    })
}

/// A user and password for one registry, as an `Authorization` value. Never printed.
#[derive(Clone)]
struct Credentials {
    basic: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// `https://index.docker.io/v1/`, `ghcr.io`, `localhost:5000` → the registry host.
fn auth_host(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or("");
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

/// The `auths` of a `dockerconfigjson` file: `auth` (base64 `user:pass`) or
/// `username`/`password`.
fn load_credentials(path: &Path) -> Result<HashMap<String, Credentials>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let auths = parsed["auths"]
        .as_object()
        .ok_or_else(|| format!("{} has no \"auths\" object", path.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = HashMap::new();
    for (key, entry) in auths {
        let pair = if let Some(auth) = entry["auth"].as_str() {
            b64.decode(auth.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .filter(|p| p.contains(':'))
        } else {
            match (entry["username"].as_str(), entry["password"].as_str()) {
                (Some(user), Some(password)) => Some(format!("{user}:{password}")),
                _ => None,
            }
        };
        let pair = pair.ok_or_else(|| {
            format!(
                "{}: auths.{key} has neither auth (base64 of user:password) nor username and password",
                path.display()
            )
        })?;
        out.insert(
            auth_host(key),
            Credentials {
                basic: format!("Basic {}", b64.encode(pair)),
            },
        );
    }
    Ok(out)
}

/// A map of at most [`CACHE_ENTRIES`], the oldest insertion evicted first.
struct Bounded<K, V> {
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Bounded<K, V> {
    fn new() -> Self {
        Bounded {
            entries: HashMap::new(),
        }
    }

    /// The value, if inserted less than `ttl` ago.
    fn get(&self, key: &K, ttl: Option<Duration>) -> Option<V> {
        let (value, at) = self.entries.get(key)?;
        match ttl {
            Some(ttl) if at.elapsed() >= ttl => None,
            _ => Some(value.clone()),
        }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= CACHE_ENTRIES && !self.entries.contains_key(&key) {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, Instant::now()));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

type ReferenceKey = (String, Platform);
type TokenKey = (String, String);

#[derive(Default)]
struct Caches {
    /// (image as written, platform) → the platform manifest's digest.
    by_reference: Option<Bounded<ReferenceKey, String>>,
    /// `registry/repository@digest` of a platform manifest → its program.
    by_digest: Option<Bounded<String, ImageCommand>>,
    /// (registry, scope) → `Bearer …` and when it expires.
    tokens: Option<Bounded<TokenKey, (String, Instant)>>,
}

/// Resolves images; one for all requests.
pub struct Resolver {
    client: reqwest::Client,
    credentials: HashMap<String, Credentials>,
    plain_http: BTreeSet<String>,
    caches: Mutex<Caches>,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("registries_with_credentials", &self.credentials.len())
            .field("plain_http", &self.plain_http)
            .finish()
    }
}

/// A reqwest error with its causes, without the URL (which the caller names).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = String::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.is_empty() {
        text = error.without_url().to_string();
    }
    text
}

async fn read_limited(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, String> {
    let limit = MAX_DOCUMENT_BYTES;
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("{what} is over {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading {what}: {}", describe(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("{what} is over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Resolver {
    /// `auth_file`: a `dockerconfigjson`; `plain_http`: `host[:port]`s reached over http.
    pub fn new(auth_file: Option<&Path>, plain_http: BTreeSet<String>) -> Result<Self, String> {
        let credentials = match auth_file {
            Some(path) => load_credentials(path)?,
            None => HashMap::new(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .timeout(LOOKUP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("kinko-injector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {}", describe(e)))?;
        Ok(Resolver {
            client,
            credentials,
            plain_http: plain_http
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            caches: Mutex::new(Caches::default()),
            timeout: LOOKUP_TIMEOUT,
        })
    }

    /// Resolves `images` concurrently for `platform`, all within [`LOOKUP_TIMEOUT`].
    pub async fn resolve_all(
        &self,
        images: BTreeSet<String>,
        platform: &Platform,
    ) -> (ImageCommands, ImageFailures) {
        let timeout = self.timeout;
        let lookups = images.into_iter().map(|image| async move {
            let result = match tokio::time::timeout(timeout, self.resolve(&image, platform)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "the registry did not answer within {}s",
                    timeout.as_secs_f32()
                )),
            };
            (image, result)
        });
        let mut found = ImageCommands::new();
        let mut failed = ImageFailures::new();
        for (image, result) in futures::future::join_all(lookups).await {
            match result {
                Ok(command) => {
                    found.insert(image, command);
                }
                Err(why) => {
                    failed.insert(image, why);
                }
            }
        }
        (found, failed)
    }

    fn cached<T>(&self, f: impl FnOnce(&mut Caches) -> T) -> T {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut caches)
    }

    /// (references, digests) cached now.
    pub fn cache_sizes(&self) -> (usize, usize) {
        self.cached(|c| {
            (
                c.by_reference.as_ref().map_or(0, Bounded::len),
                c.by_digest.as_ref().map_or(0, Bounded::len),
            )
        })
    }

    /// One image's ENTRYPOINT and CMD for `platform`.
    pub async fn resolve(&self, image: &str, platform: &Platform) -> Result<ImageCommand, String> {
        let reference = parse_reference(image)?;
        let key = (image.to_owned(), platform.clone());
        // A digest reference never changes what it names; a tag is trusted for TAG_TTL.
        let ttl = if reference.digest.is_some() {
            None
        } else {
            Some(TAG_TTL)
        };
        let repo_key =
            |digest: &str| format!("{}/{}@{digest}", reference.registry, reference.repository);
        let by_digest = |digest: &str| {
            self.cached(|c| {
                c.by_digest
                    .as_ref()
                    .and_then(|m| m.get(&repo_key(digest), None))
            })
        };
        if let Some(digest) =
            self.cached(|c| c.by_reference.as_ref().and_then(|m| m.get(&key, ttl)))
        {
            if let Some(found) = by_digest(&digest) {
                return Ok(found);
            }
        }

        let (body, content_type) = self.manifest(&reference, reference.reference()).await?;
        let document: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("the manifest of {image} is not JSON"))?;
        let kind = document["mediaType"]
            .as_str()
            .map(str::to_owned)
            .or(content_type)
            .unwrap_or_default();
        let is_index = kind.starts_with(OCI_INDEX)
            || kind.starts_with(DOCKER_LIST)
            || (document["manifests"].is_array() && document["config"].is_null());
        let (digest, manifest) = if is_index {
            let digest = select_platform(&document, platform)?;
            let (body, _) = self.manifest(&reference, &digest).await?;
            let manifest: Value = serde_json::from_slice(&body)
                .map_err(|_| format!("the {platform} manifest of {image} is not JSON"))?;
            (digest, manifest)
        } else {
            (sha256(&body), document)
        };
        if let Some(found) = by_digest(&digest) {
            self.cached(|c| {
                c.by_reference
                    .get_or_insert_with(Bounded::new)
                    .insert(key, digest)
            });
            return Ok(found);
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .filter(|d| is_digest(d))
            .ok_or_else(|| {
                format!(
                    "the manifest of {image} has no config digest (not an image kinko can read)"
                )
            })?
            .to_owned();
        let path = format!("blobs/{config_digest}");
        let (body, _) = self
            .get(&reference, &path, None, "the image config")
            .await?;
        if sha256(&body) != config_digest {
            return Err(format!(
                "the image config of {image} does not match its digest {config_digest}"
            ));
        }
        let config: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("the image config of {image} is not JSON"))?;
        let command = image_command(&config)?;
        self.cached(|c| {
            c.by_digest
                .get_or_insert_with(Bounded::new)
                .insert(repo_key(&digest), command.clone());
            c.by_reference
                .get_or_insert_with(Bounded::new)
                .insert(key, digest);
        });
        Ok(command)
    }

    /// A manifest by tag or digest; one fetched by digest must hash to it.
    async fn manifest(
        &self,
        reference: &ImageRef,
        by: &str,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let (body, content_type) = self
            .get(
                reference,
                &format!("manifests/{by}"),
                Some(&accept),
                "the manifest",
            )
            .await?;
        if is_digest(by) && sha256(&body) != by {
            return Err(format!(
                "the manifest {by} from {} does not match its digest",
                reference.registry
            ));
        }
        Ok((body, content_type))
    }

    /// GET `/v2/<repository>/<path>`, answering one 401 challenge.
    async fn get(
        &self,
        reference: &ImageRef,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let host = &reference.registry;
        let scheme = if self.plain_http.contains(&host.to_ascii_lowercase()) {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{host}/v2/{}/{path}", reference.repository);
        let scope = format!("repository:{}:pull", reference.repository);
        let token_key = (host.clone(), scope.clone());
        let mut authorization = self.cached(|c| {
            c.tokens
                .as_ref()
                .and_then(|m| m.get(&token_key, None))
                .filter(|(_, expires)| Instant::now() < *expires)
                .map(|(token, _)| token)
        });
        let mut challenged = false;
        loop {
            let mut request = self.client.get(&url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("cannot reach registry {host}: {}", describe(e)))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                authorization = Some(self.authorize(host, &scope, &challenge).await?);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(format!(
                    "registry {host} refused {what} of {} ({status}): {} credentials for it in KINKO_INJECTOR_REGISTRY_AUTH_FILE",
                    reference.repository,
                    if self.credentials.contains_key(host) { "check the" } else { "add" }
                ));
            }
            if !status.is_success() {
                return Err(format!(
                    "registry {host} answered {status} for {what} of {}:{}",
                    reference.repository,
                    reference.reference()
                ));
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
            let body = read_limited(response, what).await?;
            return Ok((body, content_type));
        }
    }

    /// The `Authorization` value answering a 401 challenge.
    async fn authorize(&self, host: &str, scope: &str, challenge: &str) -> Result<String, String> {
        let credentials = self.credentials.get(host);
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(format!("registry {host} answered 401 without a challenge"));
        };
        if scheme == "basic" {
            return credentials.map(|c| c.basic.clone()).ok_or_else(|| {
                format!(
                    "registry {host} requires credentials and KINKO_INJECTOR_REGISTRY_AUTH_FILE has none for it"
                )
            });
        }
        if scheme != "bearer" {
            return Err(format!(
                "registry {host} asks for {scheme} authentication, which kinko does not speak"
            ));
        }
        let realm = params.get("realm").map(String::as_str).unwrap_or("");
        let plain = self.plain_http.contains(&host.to_ascii_lowercase());
        let Ok(mut url) = reqwest::Url::parse(realm) else {
            return Err(format!(
                "registry {host} gave a token realm that is not a URL"
            ));
        };
        if url.scheme() != "https" && !(plain && url.scheme() == "http") {
            return Err(format!(
                "registry {host} gave a token realm that is not https"
            ));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair(
                "scope",
                params.get("scope").map(String::as_str).unwrap_or(scope),
            );
        }
        let realm_host = url.host_str().unwrap_or("").to_owned();
        let mut request = self.client.get(url);
        if let Some(credentials) = credentials {
            request = request.header(AUTHORIZATION, &credentials.basic);
        }
        let response = request.send().await.map_err(|e| {
            format!(
                "cannot get a token for registry {host} from {realm_host}: {}",
                describe(e)
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the token service {realm_host} of registry {host} answered {status} ({} credentials for it in KINKO_INJECTOR_REGISTRY_AUTH_FILE)",
                if credentials.is_some() { "check the" } else { "no" }
            ));
        }
        let body = read_limited(response, "the token answer").await?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("the token service {realm_host} did not answer JSON"))?;
        let token = answer["token"]
            .as_str()
            .or(answer["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token service {realm_host} answered no token"))?;
        let value = format!("Bearer {token}");
        let lifetime = answer["expires_in"].as_u64().unwrap_or(60).clamp(10, 300);
        let expires = Instant::now() + Duration::from_secs(lifetime - 5);
        self.cached(|c| {
            c.tokens.get_or_insert_with(Bounded::new).insert(
                (host.to_owned(), scope.to_owned()),
                (value.clone(), expires),
            )
        });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(image: &str) -> (String, String, String) {
        let r = parse_reference(image).unwrap();
        (
            r.registry.clone(),
            r.repository.clone(),
            r.reference().to_owned(),
        )
    }

    #[test]
    fn references() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("nginx", (DOCKER_HUB, "library/nginx", "latest")),
            ("nginx:1.27", (DOCKER_HUB, "library/nginx", "1.27")),
            (
                "docker.io/bitnami/redis:7",
                (DOCKER_HUB, "bitnami/redis", "7"),
            ),
            (
                "index.docker.io/nginx",
                (DOCKER_HUB, "library/nginx", "latest"),
            ),
            ("ghcr.io/org/app/api:v1", ("ghcr.io", "org/app/api", "v1")),
            ("localhost:5000/app", ("localhost:5000", "app", "latest")),
            (
                "127.0.0.1:5000/team/report:1.0",
                ("127.0.0.1:5000", "team/report", "1.0"),
            ),
            ("localhost/app", ("localhost", "app", "latest")),
        ];
        for (image, (host, repo, by)) in cases {
            assert_eq!(
                parsed(image),
                (host.to_owned(), repo.to_owned(), by.to_owned()),
                "{image}"
            );
        }
        let with_digest = format!("registry.example.com/a/b:1.0@{d}");
        assert_eq!(parsed(&with_digest).2, d, "the digest wins over the tag");
        assert_eq!(
            parse_reference(&with_digest).unwrap().tag.as_deref(),
            Some("1.0")
        );
        assert_eq!(parsed(&format!("busybox@{d}")).1, "library/busybox");
        for bad in [
            "",
            "Upper/Case",
            "a b",
            "nginx@sha256:abc",
            "nginx@md5:aaaa",
            "nginx:-bad",
            "registry.example.com/",
            "registry.example.com//x",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/nginx:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry""#).unwrap();
        assert_eq!(
            (scheme.as_str(), params["realm"].as_str()),
            ("basic", "Registry")
        );
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn the_platform_entry_not_the_first() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                { "digest": d('a'), "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
                { "digest": d('b'), "platform": { "os": "linux", "architecture": "amd64" } },
                { "digest": d('c'), "platform": { "os": "unknown", "architecture": "unknown" } },
            ]
        });
        assert_eq!(
            select_platform(&index, &Platform::default()).unwrap(),
            d('b')
        );
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
        };
        assert_eq!(select_platform(&index, &arm).unwrap(), d('a'));
        let s390x = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
        };
        let error = select_platform(&index, &s390x).unwrap_err();
        assert!(
            error.contains("linux/s390x") && error.contains("linux/arm64"),
            "{error}"
        );
    }

    #[test]
    fn config_commands() {
        let config = json!({ "config": { "Entrypoint": ["/bin/report"], "Cmd": ["--daily"] } });
        assert_eq!(
            image_command(&config).unwrap(),
            ImageCommand {
                entrypoint: vec!["/bin/report".into()],
                cmd: vec!["--daily".into()]
            }
        );
        let config = json!({ "config": { "Entrypoint": null, "Cmd": ["sh"] } });
        assert!(image_command(&config).unwrap().entrypoint.is_empty());
        assert!(image_command(&json!({ "config": { "Cmd": "sh" } })).is_err());
    }

    #[test]
    fn dockerconfigjson_credentials_are_never_printed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD;
        std::fs::write(
            &path,
            json!({ "auths": {
                "https://index.docker.io/v1/": { "auth": b64.encode("hubuser:hub-secret") },
                "ghcr.io": { "username": "me", "password": "ghcr-secret" },
            } })
            .to_string(),
        )
        .unwrap();
        let found = load_credentials(&path).unwrap();
        assert_eq!(
            found[DOCKER_HUB].basic,
            format!("Basic {}", b64.encode("hubuser:hub-secret"))
        );
        assert!(found.contains_key("ghcr.io"));
        let resolver = Resolver::new(Some(&path), BTreeSet::new()).unwrap();
        let printed = format!("{resolver:?} {:?}", found["ghcr.io"]);
        assert!(!printed.contains("secret") && !printed.contains("aHVi"));
        std::fs::write(&path, r#"{"auths":{"x.io":{"auth":"bm9jb2xvbg=="}}}"#).unwrap();
        assert!(load_credentials(&path).unwrap_err().contains("auths.x.io"));
    }

    #[test]
    fn caches_are_bounded() {
        let mut cache = Bounded::new();
        for i in 0..CACHE_ENTRIES + 10 {
            cache.insert(i, i);
        }
        assert_eq!(cache.len(), CACHE_ENTRIES);
        let last = CACHE_ENTRIES + 9;
        assert_eq!(cache.get(&last, None), Some(last));
        assert_eq!(cache.get(&last, Some(Duration::ZERO)), None, "expired");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_reason_not_a_hang() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let resolver = Resolver::new(None, BTreeSet::from([host.clone()])).unwrap();
        let image = format!("{host}/team/report:1.0");
        let (found, failed) = resolver
            .resolve_all(BTreeSet::from([image.clone()]), &Platform::default())
            .await;
        assert!(found.is_empty());
        assert!(
            failed[&image].contains(&format!("cannot reach registry {host}")),
            "{failed:?}"
        );
    }
}
