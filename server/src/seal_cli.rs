//! `kinko seal`, `kinko sealed inspect|rewrap|rotate`: seal a value (or every marked value of a
//! manifest) for one namespace + service account + variable name, offline with saved key files
//! or online by fetching the key documents; either way each key is checked against the pinned
//! signing-key fingerprint and the value is sealed here, never sent.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use kinko_client::Method;
use kinko_server::sealed::manifest::{self, Content, Site};
use kinko_server::sealed::{self, offline, KeyDocument};
use serde_json::{json, Value};
use zeroize::Zeroizing;

pub struct SealArgs {
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    pub key: Option<PathBuf>,
    pub fingerprint: Option<String>,
    pub from_file: Option<PathBuf>,
}

pub struct ManifestArgs {
    pub manifest: PathBuf,
    /// For resources without `metadata.namespace` (kustomize sets it later).
    pub namespace: Option<String>,
    pub keys: Vec<PathBuf>,
    pub fingerprint: Option<String>,
}

/// The pinned fingerprint: `--fingerprint`, else `signing_key_fingerprint:` of the nearest
/// `.kinko.yaml` in the current directory or a parent.
fn pinned(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(pin) = flag {
        return Ok(pin.to_owned());
    }
    let start = std::env::current_dir()?;
    let mut dir = Some(start.as_path());
    while let Some(here) = dir {
        let file = here.join(".kinko.yaml");
        if let Ok(text) = std::fs::read_to_string(&file) {
            return offline::pin_from_yaml(&text)
                .ok_or_else(|| anyhow!("{} has no signing_key_fingerprint: line", file.display()));
        }
        dir = here.parent();
    }
    bail!(
        "no pinned signing key: pass --fingerprint sha256:… or add signing_key_fingerprint: to \
         .kinko.yaml (the fingerprint is in GET /v1/sealed/keys)"
    )
}

async fn fetch_key(
    client: &kinko_client::Client,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<serde_json::Value> {
    client
        .request(
            kinko_client::Method::GET,
            &format!("sealed/keys/{namespace}/{service_account}"),
            None,
        )
        .await?
        .ok_or_else(|| anyhow!("the server sent no key document"))
}

fn read_key_file(file: &Path) -> anyhow::Result<Value> {
    crate::cli::read_json(file, "key file")
}

/// The value to seal: a file's exact bytes, or stdin without one trailing newline (as `echo`
/// adds it). Never from the command line, where other users and shell history see it.
fn plaintext(from_file: Option<&Path>) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    match from_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
        }
    }
    if bytes.is_empty() {
        bail!("nothing to seal: the value is empty");
    }
    Ok(bytes)
}

pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    if !sealed::valid_variable_name(&args.name) {
        bail!(
            "--name {:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            args.name
        );
    }
    let pin = pinned(args.fingerprint.as_deref())?;
    let response = match &args.key {
        Some(file) => read_key_file(file)?,
        None => {
            let client = crate::cli::connect(false)?;
            fetch_key(&client, &args.namespace, &args.service_account).await?
        }
    };
    let document =
        offline::verify_key_response(&response, &pin, &args.namespace, &args.service_account)
            .map_err(|e| anyhow!(e))?;
    let value = plaintext(args.from_file.as_deref())?;
    let sealed =
        offline::seal_with_document(&document, &args.name, &value).map_err(|e| anyhow!(e))?;
    println!("{sealed}");
    Ok(())
}

pub fn inspect(value: &str) -> anyhow::Result<()> {
    let decoded = sealed::decode(value.trim()).map_err(|e| anyhow!("{e}"))?;
    print!("{}", offline::inspect(&decoded));
    Ok(())
}

/// The verified key documents of a manifest's bindings: from the `--key` files when given
/// (each checked against the pin), else fetched from the server once per binding.
struct Keys {
    pin: String,
    saved: Vec<(PathBuf, Value)>,
    verified: HashMap<(String, String), KeyDocument>,
    /// Connected on the first binding fetched, then reused.
    client: Option<kinko_client::Client>,
}

impl Keys {
    async fn document(
        &mut self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<&KeyDocument> {
        let binding = (namespace.to_owned(), service_account.to_owned());
        if !self.verified.contains_key(&binding) {
            let document = if self.saved.is_empty() {
                let client = match &self.client {
                    Some(client) => client,
                    None => self.client.insert(crate::cli::connect(false)?),
                };
                let response = fetch_key(client, namespace, service_account).await?;
                offline::verify_key_response(&response, &self.pin, namespace, service_account)
                    .map_err(|e| anyhow!(e))?
            } else {
                let mut reasons = Vec::new();
                let found = self.saved.iter().find_map(|(file, response)| {
                    offline::verify_key_response(response, &self.pin, namespace, service_account)
                        .map_err(|e| reasons.push(format!("{}: {e}", file.display())))
                        .ok()
                });
                found.ok_or_else(|| {
                    anyhow!(
                        "no --key file holds a valid key for {namespace}/{service_account} ({})",
                        reasons.join("; ")
                    )
                })?
            };
            self.verified.insert(binding.clone(), document);
        }
        Ok(&self.verified[&binding])
    }
}

fn read_manifest(path: &Path) -> anyhow::Result<(Zeroizing<String>, Vec<Site>)> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest {}", path.display()))?,
    );
    let sites = manifest::sites(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((text, sites))
}

/// Writes `text` over the file `path` names atomically: through a symlink to the real file
/// (else the target would keep its plaintext), via a new randomly named file in its directory
/// (never one planted in advance), with the same permissions, synced.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let directory = real
        .parent()
        .ok_or_else(|| anyhow!("{} is not a file", path.display()))?;
    let permissions = std::fs::metadata(&real)?.permissions();
    let mut file = tempfile::Builder::new()
        .prefix(".kinko-seal-")
        .tempfile_in(directory)
        .with_context(|| format!("cannot write in {}", directory.display()))?;
    file.as_file().set_permissions(permissions)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(&real)
        .map_err(|e| anyhow!("cannot replace {}: {}", real.display(), e.error))?;
    Ok(())
}

/// Warns about a sealed value that sits where it cannot open (copied from another workload).
fn check_placement(site: &Site, value: &str, default_namespace: Option<&str>) {
    let Ok(decoded) = sealed::decode(value) else {
        eprintln!("kinko: line {}: not a valid sealed value", site.line);
        return;
    };
    let h = &decoded.header;
    let namespace = site.namespace.as_deref().or(default_namespace);
    if namespace.is_some_and(|ns| ns != h.namespace)
        || h.service_account != site.service_account
        || h.name != site.name
    {
        eprintln!(
            "kinko: warning: line {}: the value is sealed for {}/{} {}, but sits in {}/{} {} \
             of {}: it will not open there",
            site.line,
            h.namespace,
            h.service_account,
            h.name,
            namespace.unwrap_or("?"),
            site.service_account,
            site.name,
            site.resource
        );
    }
}

/// `kinko seal --manifest FILE`: seals every `kinko:plain:` env value in place.
pub async fn seal_manifest(args: ManifestArgs) -> anyhow::Result<()> {
    let path = &args.manifest;
    let (text, sites) = read_manifest(path)?;
    let marked = sites
        .iter()
        .filter(|s| matches!(s.content, Content::Plain(_)))
        .count();
    if marked == 0 {
        eprintln!(
            "kinko: no kinko:plain: values in {}; nothing changed",
            path.display()
        );
        return Ok(());
    }
    let mut keys = Keys {
        pin: pinned(args.fingerprint.as_deref())?,
        saved: args
            .keys
            .iter()
            .map(|file| read_key_file(file).map(|v| (file.clone(), v)))
            .collect::<anyhow::Result<_>>()?,
        verified: HashMap::new(),
        client: None,
    };
    let mut replacements = Vec::new();
    for site in &sites {
        let plaintext = match &site.content {
            Content::Sealed(value) => {
                check_placement(site, value, args.namespace.as_deref());
                continue;
            }
            Content::Plain(plaintext) => plaintext,
        };
        let at = |what: String| anyhow!("{}: line {}: {what}", path.display(), site.line);
        let namespace = site
            .namespace
            .as_deref()
            .or(args.namespace.as_deref())
            .ok_or_else(|| {
                at(format!(
                    "{} has no metadata.namespace: pass --namespace",
                    site.resource
                ))
            })?;
        if !sealed::valid_namespace(namespace)
            || !sealed::valid_service_account(&site.service_account)
        {
            return Err(at(format!(
                "{}/{} is not a valid namespace/service account",
                namespace, site.service_account
            )));
        }
        if !sealed::valid_variable_name(&site.name) {
            return Err(at(format!(
                "{:?} is not an environment variable name",
                site.name
            )));
        }
        if plaintext.is_empty() {
            return Err(at("nothing to seal after kinko:plain:".into()));
        }
        if site.service_account == "default" {
            eprintln!(
                "kinko: warning: {}: line {}: {} sets no serviceAccountName, so {} is sealed \
                 for {namespace}/default, which every Pod without one in the namespace runs as",
                path.display(),
                site.line,
                site.resource,
                site.name
            );
        }
        let document = keys.document(namespace, &site.service_account).await?;
        let value =
            offline::seal_with_document(document, &site.name, plaintext.as_bytes()).map_err(at)?;
        replacements.push((site.span.clone(), value));
    }
    write_replacements(path, &text, &sites, &replacements)?;
    eprintln!(
        "kinko: sealed {} value(s) in {}; {} already sealed left as they were",
        replacements.len(),
        path.display(),
        sites.len() - replacements.len()
    );
    Ok(())
}

/// Rewrites the manifest and checks the result reads back as intended before replacing it.
fn write_replacements(
    path: &Path,
    text: &str,
    sites: &[Site],
    replacements: &[(std::ops::Range<usize>, String)],
) -> anyhow::Result<()> {
    let spans: Vec<_> = replacements
        .iter()
        .map(|(span, value)| (span.clone(), value.as_str()))
        .collect();
    let out = Zeroizing::new(manifest::rewrite(text, &spans));
    let after = manifest::sites(&out).map_err(|e| anyhow!("the rewritten manifest: {e}"))?;
    let expected: Vec<Option<&str>> = sites
        .iter()
        .map(|site| {
            replacements
                .iter()
                .find(|(span, _)| *span == site.span)
                .map(|(_, v)| Some(v.as_str()))
                .unwrap_or(match &site.content {
                    Content::Sealed(v) => Some(v.as_str()),
                    Content::Plain(_) => None,
                })
        })
        .collect();
    let actual: Vec<Option<&str>> = after
        .iter()
        .map(|site| match &site.content {
            Content::Sealed(v) => Some(v.as_str()),
            Content::Plain(_) => None,
        })
        .collect();
    if expected != actual {
        bail!(
            "{}: the rewritten manifest does not read back as expected; nothing was changed",
            path.display()
        );
    }
    replace_file(path, &out)
}

/// `kinko sealed rewrap --manifest FILE`: every sealed value of this cluster below its current
/// epoch is rewrapped by the server (same namespace, service account and name); the others keep
/// their exact bytes and are not sent. Values of another cluster are moved here only with
/// `move_imported` (disaster recovery; in a repository several clusters read, they stay).
pub async fn rewrap_manifest(path: &Path, move_imported: bool) -> anyhow::Result<()> {
    let (text, sites) = read_manifest(path)?;
    let client = crate::cli::connect(true)?;
    let mut current = CurrentEpochs::default();
    let mut replacements = Vec::new();
    let mut foreign = 0;
    for site in &sites {
        let value = match &site.content {
            Content::Sealed(value) => value,
            Content::Plain(_) => {
                eprintln!(
                    "kinko: warning: {}: line {}: a kinko:plain: value; run kinko seal --manifest",
                    path.display(),
                    site.line
                );
                continue;
            }
        };
        check_placement(site, value, None);
        let at = || format!("{}: line {}", path.display(), site.line);
        let header = sealed::decode(value)
            .map_err(|e| anyhow!("{e}"))
            .with_context(at)?
            .header;
        let (cluster_id, epoch) = current
            .of(&client, &header.namespace, &header.service_account)
            .await
            .with_context(at)?;
        if header.cluster_id != cluster_id && !move_imported {
            foreign += 1;
            continue;
        }
        if header.cluster_id == cluster_id && header.epoch == epoch {
            continue;
        }
        let rewrapped = rewrap_one(&client, value).await.with_context(at)?;
        replacements.push((site.span.clone(), rewrapped));
    }
    if !replacements.is_empty() {
        write_replacements(path, &text, &sites, &replacements)?;
    }
    eprintln!(
        "kinko: rewrapped {} value(s) in {}; {} left as they were{}",
        replacements.len(),
        path.display(),
        sites.len() - replacements.len(),
        if foreign > 0 {
            format!(" ({foreign} of another cluster: --move-imported moves them here)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The server's cluster id and current epoch per binding, read from its (public) key documents.
#[derive(Default)]
struct CurrentEpochs(HashMap<(String, String), (String, u64)>);

impl CurrentEpochs {
    async fn of(
        &mut self,
        client: &kinko_client::Client,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<(String, u64)> {
        let binding = (namespace.to_owned(), service_account.to_owned());
        if let Some(known) = self.0.get(&binding) {
            return Ok(known.clone());
        }
        let response = client
            .request(
                Method::GET,
                &format!("sealed/keys/{namespace}/{service_account}"),
                None,
            )
            .await?
            .unwrap_or_default();
        let document: KeyDocument = response["data"]["document"]
            .as_str()
            .and_then(sealed::from_b64url)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| anyhow!("the server sent no key document"))?;
        let known = (document.cluster_id, document.epoch);
        self.0.insert(binding, known.clone());
        Ok(known)
    }
}

/// The value rewrapped by the server, its binding checked unchanged.
async fn rewrap_one(client: &kinko_client::Client, value: &str) -> anyhow::Result<String> {
    let old = sealed::decode(value).map_err(|e| anyhow!("{e}"))?.header;
    let response = client
        .request(
            Method::POST,
            "sealed/rewrap",
            Some(&json!({ "ciphertext": value })),
        )
        .await?
        .unwrap_or_default();
    let new_value = response["data"]["ciphertext"]
        .as_str()
        .ok_or_else(|| anyhow!("the server sent no ciphertext"))?;
    let new = sealed::decode(new_value)
        .map_err(|e| anyhow!("the server sent an invalid value: {e}"))?
        .header;
    if (&new.namespace, &new.service_account, &new.name)
        != (&old.namespace, &old.service_account, &old.name)
    {
        bail!("the server changed the value's binding; refusing it");
    }
    Ok(new_value.to_owned())
}

/// `kinko sealed rewrap VALUE`: prints the value at this cluster's current epoch.
pub async fn rewrap_value(value: &str) -> anyhow::Result<()> {
    let client = crate::cli::connect(true)?;
    println!("{}", rewrap_one(&client, value.trim()).await?);
    Ok(())
}
