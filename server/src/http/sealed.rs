//! `sealed/` endpoints (GitOps sealed values): public keys, encrypt, decrypt, rewrap, rotate,
//! compare, and moving the sealing root to another cluster (import-key, export, import). Every
//! refusal of a value is the same 400 `invalid sealed value`, with no detail.

use serde_json::json;
use subtle::ConstantTimeEq;

use super::{authenticate, authorize, Operation, Reply, Req};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::path::LogicalPath;
use crate::policy::Capability;
use crate::sealed::transfer::{self, BundleHeader, ImportKeyDocument};
use crate::sealed::{
    self, b64, b64url, fingerprint, Binding, Decoded, Header, KeyDocument, SealedError,
    SealingRoot, SignedKeyDocument,
};
use crate::tokens::Caller;

pub async fn route(u: &Unsealed, req: &Req, rest: &str) -> Result<Reply> {
    let rest = rest.trim_end_matches('/');
    match (rest, req.op) {
        ("keys", Operation::Read) => signing_key(u).await,
        ("encrypt", Operation::Write) => encrypt(u, req).await,
        ("decrypt", Operation::Write) => decrypt(u, req).await,
        ("rewrap", Operation::Write) => rewrap(u, req).await,
        ("rotate", Operation::Write) => rotate(u, req).await,
        ("compare", Operation::Write) => compare(u, req).await,
        ("import-key", Operation::Read) => import_key(u, req).await,
        ("export", Operation::Write) => export(u, req).await,
        ("import", Operation::Write) => import(u, req).await,
        (
            "keys" | "encrypt" | "decrypt" | "rewrap" | "rotate" | "compare" | "import-key"
            | "export" | "import",
            _,
        ) => Err(Error::MethodNotAllowed),
        (path, Operation::Delete) if path.starts_with("import/") => {
            remove_import(u, req, &path["import/".len()..]).await
        }
        (path, op) => match path.strip_prefix("keys/").map(|b| b.split_once('/')) {
            Some(Some((namespace, service_account))) if !service_account.contains('/') => {
                if op != Operation::Read {
                    return Err(Error::MethodNotAllowed);
                }
                key_document(u, namespace, service_account).await
            }
            _ => Err(Error::NotFound),
        },
    }
}

fn invalid() -> Error {
    Error::bad_request("invalid sealed value")
}

fn required<'a>(req: &'a Req, field: &str) -> Result<&'a str> {
    req.body
        .str(field)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::BadRequest(format!("missing required field {field:?}")))
}

fn plaintext_field(req: &Req) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let text = required(req, "plaintext")?;
    let bytes = sealed::from_b64(text)
        .ok_or_else(|| Error::bad_request("field \"plaintext\" must be base64"))?;
    Ok(zeroize::Zeroizing::new(bytes))
}

fn binding_error(error: SealedError) -> Error {
    match error {
        SealedError::InvalidField("namespace") => {
            Error::bad_request("field \"namespace\" must be a Kubernetes namespace name")
        }
        SealedError::InvalidField("service_account") => Error::bad_request(
            "field \"service_account\" must be a Kubernetes service account name",
        ),
        SealedError::InvalidField("name") => Error::bad_request(
            "field \"name\" must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
        ),
        SealedError::TooLarge => Error::PayloadTooLarge(error.to_string()),
        other => Error::Internal(format!("sealing: {other}")),
    }
}

/// A value whose epoch still opens, with the root secret that opens it: this cluster's, or
/// one imported from the cluster that sealed it.
struct Trusted<'a> {
    decoded: Decoded,
    root: Root<'a>,
    /// Sealed here at the current epoch: no rewrap is due.
    current: bool,
}

enum Root<'a> {
    Own(&'a SealingRoot),
    Imported(SealingRoot),
}

/// Every failure is the one 400.
async fn decode_trusted<'a>(u: &'a Unsealed, value: &str) -> Result<Trusted<'a>> {
    let decoded = sealed::decode(value).map_err(|_| invalid())?;
    let epoch = decoded.header.epoch;
    if decoded.header.cluster_id == u.cluster_id {
        let (epochs, _) = u.sealing.epochs(&u.store).await?;
        if !epochs.opens(epoch) {
            return Err(invalid());
        }
        let root = u.sealing.root(&u.store).await?;
        return Ok(Trusted {
            current: epoch == epochs.current,
            root: Root::Own(root),
            decoded,
        });
    }
    match u
        .sealing
        .imported(&u.store, &decoded.header.cluster_id)
        .await?
    {
        // The sender may have rotated since the export: its newer epochs open too, its
        // retirements (as of the export) hold.
        Some((root, epochs)) if epoch >= epochs.retired_before.max(1) => Ok(Trusted {
            current: false,
            root: Root::Imported(root),
            decoded,
        }),
        _ => Err(invalid()),
    }
}

impl Trusted<'_> {
    fn open(&self) -> Result<crate::secret::SecretBytes> {
        let root = match &self.root {
            Root::Own(root) => root,
            Root::Imported(root) => root,
        };
        let header = &self.decoded.header;
        let (private, _) = root.keypair(&header.binding(), header.epoch);
        sealed::open(&private, &self.decoded).map_err(|_| invalid())
    }
}

async fn seal_current(
    u: &Unsealed,
    binding: &Binding,
    name: &str,
    plaintext: &[u8],
) -> Result<String> {
    let (epochs, _) = u.sealing.epochs(&u.store).await?;
    let header = Header::new(binding, name, epochs.current).map_err(binding_error)?;
    let root = u.sealing.root(&u.store).await?;
    let (_, public) = root.keypair(binding, epochs.current);
    sealed::seal(&public, &header, plaintext).map_err(binding_error)
}

/// Checks `capability` on a path built from validated names (never on the raw request).
fn authorize_on<'r>(req: &'r Req, path: &str, capability: Capability) -> Result<&'r Caller> {
    let (caller, acl) = authenticate(req)?;
    let path = LogicalPath::new(path, false)
        .map_err(|e| Error::Internal(format!("a sealed policy path is invalid: {e}")))?;
    if !acl.allows(&path, capability) {
        return Err(Error::PermissionDenied);
    }
    Ok(caller)
}

async fn signing_key(u: &Unsealed) -> Result<Reply> {
    let root = u.sealing.root(&u.store).await?;
    let public = root.signing_key(&u.cluster_id).public();
    Ok(Reply::Data(json!({
        "signing_key": b64(&public),
        "fingerprint": fingerprint(&public),
        "cluster_id": u.cluster_id,
    })))
}

async fn key_document(u: &Unsealed, namespace: &str, service_account: &str) -> Result<Reply> {
    let binding = Binding::new(&u.cluster_id, namespace, service_account).map_err(binding_error)?;
    let (epochs, _) = u.sealing.epochs(&u.store).await?;
    let root = u.sealing.root(&u.store).await?;
    let (_, public) = root.keypair(&binding, epochs.current);
    let signing = root.signing_key(&u.cluster_id);
    let signed = SignedKeyDocument::sign(
        &signing,
        &KeyDocument::new(&binding, epochs.current, &public),
    );
    Ok(Reply::Data(json!({
        "document": b64url(&signed.document),
        "signature": b64url(&signed.signature),
        // Not in the minimal shape: lets `kinko seal --key FILE` check the saved response
        // against the pinned fingerprint without a second file.
        "signing_key": b64(&signing.public()),
    })))
}

async fn encrypt(u: &Unsealed, req: &Req) -> Result<Reply> {
    let namespace = required(req, "namespace")?;
    let service_account = required(req, "service_account")?;
    let name = required(req, "name")?;
    let binding = Binding::new(&u.cluster_id, namespace, service_account).map_err(binding_error)?;
    if !sealed::valid_variable_name(name) {
        return Err(binding_error(SealedError::InvalidField("name")));
    }
    authorize_on(
        req,
        &format!(
            "sealed/encrypt/{}/{}",
            binding.namespace, binding.service_account
        ),
        Capability::Update,
    )?;
    let plaintext = plaintext_field(req)?;
    let ciphertext = seal_current(u, &binding, name, &plaintext).await?;
    Ok(Reply::Data(json!({ "ciphertext": ciphertext })))
}

/// The namespace and service account a token was issued for by a Kubernetes login, or `None`
/// for every other token (root, `auth/token/create` with any `meta`).
fn kubernetes_identity<'c>(u: &Unsealed, caller: &'c Caller) -> Option<(&'c str, &'c str)> {
    let rest = caller.entry.path.strip_prefix("auth/")?;
    if rest.starts_with("token/") {
        return None;
    }
    let (mount, tail) = u.auth.resolve(rest)?;
    if mount.kind != "kubernetes" || tail != "login" {
        return None;
    }
    Some((
        caller.entry.meta.get("service_account_namespace")?.as_str(),
        caller.entry.meta.get("service_account_name")?.as_str(),
    ))
}

async fn decrypt(u: &Unsealed, req: &Req) -> Result<Reply> {
    let (caller, _) = authenticate(req)?;
    let (namespace, service_account) =
        kubernetes_identity(u, caller).ok_or(Error::PermissionDenied)?;
    let value = required(req, "ciphertext")?;
    let name = required(req, "name")?;
    let trusted = decode_trusted(u, value).await?;
    let header = &trusted.decoded.header;
    if header.namespace != namespace
        || header.service_account != service_account
        || header.name != name
    {
        return Err(Error::PermissionDenied);
    }
    let plaintext = trusted.open()?;
    METRICS.sealed_decrypt(trusted.current);
    Ok(Reply::Data(json!({ "plaintext": b64(plaintext.expose()) })))
}

async fn rewrap(u: &Unsealed, req: &Req) -> Result<Reply> {
    authorize(req, Capability::Update)?;
    let value = required(req, "ciphertext")?;
    let trusted = decode_trusted(u, value).await?;
    let plaintext = trusted.open()?;
    let header = &trusted.decoded.header;
    // The same namespace, service account and name; a value imported from another cluster
    // moves to this one.
    let binding = Binding::new(&u.cluster_id, &header.namespace, &header.service_account)
        .map_err(binding_error)?;
    let ciphertext = seal_current(u, &binding, &header.name, plaintext.expose()).await?;
    Ok(Reply::Data(json!({ "ciphertext": ciphertext })))
}

async fn rotate(u: &Unsealed, req: &Req) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    let retire_before = req.body.u64("retire_before")?;
    let epochs = u.sealing.rotate(&u.store, retire_before).await?;
    tracing::info!(
        epoch = epochs.current,
        retired_before = epochs.retired_before,
        "sealing epoch rotated"
    );
    Ok(Reply::NoContent)
}

async fn compare(u: &Unsealed, req: &Req) -> Result<Reply> {
    let value = required(req, "ciphertext")?;
    let candidate = plaintext_field(req)?;
    // The policy first, on the header alone: a caller without it learns nothing (not even
    // which epochs or imported clusters open) and costs no storage read.
    let header = sealed::decode(value).map_err(|_| invalid())?.header;
    let caller = authorize_on(
        req,
        &format!(
            "sealed/compare/{}/{}",
            header.namespace, header.service_account
        ),
        Capability::Update,
    )?;
    let trusted = decode_trusted(u, value).await?;
    u.sealing
        .spend_compare(&caller.hash)
        .map_err(|retry_after| Error::TooManyRequests { retry_after })?;
    let plaintext = trusted.open()?;
    let matches: bool = plaintext.expose().ct_eq(candidate.as_slice()).into();
    Ok(Reply::Data(json!({ "match": matches })))
}

/// `GET sealed/import-key`: the key another cluster wraps its sealing root to for this one.
async fn import_key(u: &Unsealed, req: &Req) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    let root = u.sealing.root(&u.store).await?;
    let (_, public) = root.import_keypair(&u.cluster_id);
    let document = ImportKeyDocument::new(&u.cluster_id, &public).encode();
    let signing = root.signing_key(&u.cluster_id);
    Ok(Reply::Data(json!({
        "document": b64url(&document),
        "signature": b64url(&signing.sign(&document)),
        "signing_key": b64(&signing.public()),
        "fingerprint": fingerprint(&signing.public()),
        "cluster_id": u.cluster_id,
    })))
}

/// `POST sealed/export`: this cluster's sealing root wrapped to another cluster's import key,
/// which must be signed by the key whose fingerprint the caller pins.
async fn export(u: &Unsealed, req: &Req) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    let pinned = required(req, "fingerprint")?;
    let signing_key = sealed::from_b64(required(req, "signing_key")?)
        .ok_or_else(|| Error::bad_request("field \"signing_key\" must be base64"))?;
    if let Err(actual) = sealed::check_pin(&signing_key, pinned) {
        return Err(Error::BadRequest(format!(
            "the import key is signed by {actual}, not by the pinned {}",
            pinned.trim()
        )));
    }
    let signature: [u8; 64] = sealed::from_b64url(required(req, "signature")?)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::bad_request("field \"signature\" must be a base64url signature"))?;
    let document = sealed::from_b64url(required(req, "document")?)
        .ok_or_else(|| Error::bad_request("field \"document\" must be base64url"))?;
    let to = ImportKeyDocument::verify(&document, &signature, &signing_key)
        .map_err(|e| Error::BadRequest(format!("the import key is not valid: {e}")))?;
    if to.cluster_id == u.cluster_id {
        return Err(Error::bad_request(
            "the import key is this cluster's own: export to another cluster",
        ));
    }
    let (epochs, _) = u.sealing.epochs(&u.store).await?;
    let header = BundleHeader {
        from_cluster_id: u.cluster_id.clone(),
        to_cluster_id: to.cluster_id.clone(),
        current: epochs.current,
        retired_before: epochs.retired_before,
        kem: sealed::KEM.to_owned(),
    };
    let root = u.sealing.root(&u.store).await?;
    let bundle = transfer::wrap(root, &header, &to)
        .map_err(|e| Error::Internal(format!("wrapping the sealing root: {e}")))?;
    tracing::warn!(to_cluster = %to.cluster_id, "sealing root secret exported");
    Ok(Reply::Data(json!({
        "bundle": bundle,
        "from_cluster_id": header.from_cluster_id,
        "to_cluster_id": header.to_cluster_id,
    })))
}

/// `POST sealed/import`: keeps the sealing root of the bundle's sender, so the values it
/// sealed open (and rewrap) here.
async fn import(u: &Unsealed, req: &Req) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    let bundle = required(req, "bundle")?.trim();
    let header = transfer::bundle_header(bundle)
        .map_err(|_| Error::bad_request("field \"bundle\" is not a sealing key bundle"))?;
    if header.to_cluster_id != u.cluster_id {
        return Err(Error::BadRequest(format!(
            "the bundle is for cluster {}, not this cluster ({})",
            header.to_cluster_id, u.cluster_id
        )));
    }
    let root = u.sealing.root(&u.store).await?;
    let (private, _) = root.import_keypair(&u.cluster_id);
    let (header, imported) = transfer::unwrap(&private, &u.cluster_id, bundle)
        .map_err(|_| Error::bad_request("the sealing key bundle does not authenticate"))?;
    // Anyone can wrap some secret to this cluster's (public) import key; only the sender's
    // real root secret derives the signing key whose fingerprint the operator pins.
    let pinned = required(req, "fingerprint")?.trim();
    let sender = imported.signing_key(&header.from_cluster_id).public();
    if let Err(sender) = sealed::check_pin(&sender, pinned) {
        return Err(Error::BadRequest(format!(
            "the bundle's sealing key belongs to signing key {sender}, not the pinned {pinned}"
        )));
    }
    let epochs = u.sealing.import(&u.store, &header, &imported).await?;
    tracing::warn!(from_cluster = %header.from_cluster_id, "sealing root secret imported");
    Ok(Reply::Data(json!({
        "cluster_id": header.from_cluster_id,
        "current": epochs.current,
        "retired_before": epochs.retired_before,
    })))
}

/// `DELETE sealed/import/<cluster id>`: values of that cluster stop opening here (after its
/// sealing root leaked, or once every value is rewrapped).
async fn remove_import(u: &Unsealed, req: &Req, cluster_id: &str) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    if !sealed::valid_cluster_id(cluster_id) {
        return Err(Error::NotFound);
    }
    if !u.sealing.remove_import(&u.store, cluster_id).await? {
        return Err(Error::NotFound);
    }
    tracing::warn!(from_cluster = %cluster_id, "imported sealing root secret removed");
    Ok(Reply::NoContent)
}
