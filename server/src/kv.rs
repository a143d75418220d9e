//! KV version 2: versioned secrets with check-and-set, soft delete, undelete, destroy, metadata,
//! and per-mount configuration. One key is two kinds of items: its metadata, and one item per
//! version. Every change rewrites the metadata with a conditional write in the same transaction
//! as the version items it touches, so concurrent writers (even on other replicas) serialise.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::cache::TtlCache;
use crate::clock::{now, parse_rfc3339, rfc3339};
use crate::encrypted::{EncryptedStorage, Write};
use crate::error::{Error, Result};
use crate::retry::{on_conflict, settle, Attempt};
use crate::storage::{Precondition, MAX_TRANSACTION_OPS};

/// Vault's default when `max_versions` is 0.
pub const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Room left in a transaction for the metadata and the new version.
const PRUNE_PER_WRITE: usize = MAX_TRANSACTION_OPS - 2;
/// A written version's data is kept in the key's metadata item too, so that a read of the latest
/// version reads one item, not two ([`Kv::read`]), when the item then stays within what storage
/// reads at once ([`EncryptedStorage::one_read_plaintext_limit`]: SQLite's leaf) and this.
const INLINE_MAX_BYTES: usize = 16 * 1024;
pub const MAX_CUSTOM_METADATA_KEYS: usize = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvConfig {
    pub max_versions: u64,
    pub cas_required: bool,
    pub delete_version_after: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    pub created_time: String,
    /// Empty, or when the version is (or will be) deleted.
    pub deletion_time: String,
    pub destroyed: bool,
}

impl VersionMeta {
    fn is_deleted(&self, at: time::OffsetDateTime) -> bool {
        is_deleted(&self.deletion_time, at)
    }
}

/// Whether a version whose `deletion_time` is this (empty: never) is deleted at `at`.
fn is_deleted(deletion_time: &str, at: time::OffsetDateTime) -> bool {
    !deletion_time.is_empty() && parse_rfc3339(deletion_time).is_none_or(|d| d <= at)
}

/// A version's `metadata` in answers, its fields in the order serde_json's maps sort them (so
/// it serialises to the same text as the `Value` it stands for).
#[derive(Serialize)]
struct VersionJson<'a, M> {
    created_time: &'a str,
    custom_metadata: Option<&'a M>,
    deletion_time: &'a str,
    destroyed: bool,
    version: u64,
}

impl<K: AsRef<str>, V: AsRef<str>> VersionJson<'_, BTreeMap<K, V>> {
    /// What serde_json writes for it, without its escape scan of our own timestamps.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"created_time\":");
        crate::json::write_str(out, self.created_time);
        out.extend_from_slice(b",\"custom_metadata\":");
        match self.custom_metadata {
            None => out.extend_from_slice(b"null"),
            Some(fields) => {
                out.push(b'{');
                for (index, (key, value)) in fields.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    crate::json::write_str(out, key.as_ref());
                    out.push(b':');
                    crate::json::write_str(out, value.as_ref());
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"deletion_time\":");
        crate::json::write_str(out, self.deletion_time);
        out.extend_from_slice(b",\"destroyed\":");
        out.extend_from_slice(if self.destroyed { b"true" } else { b"false" });
        std::io::Write::write_fmt(out, format_args!(",\"version\":{}}}", self.version))
            .expect("writing to a Vec cannot fail");
    }
}

/// What a read needs of a key's metadata, borrowed from the decrypted item: a read parses
/// no more than this, and a string without escapes is not copied (the other fields are
/// skipped).
#[derive(Deserialize)]
struct MetadataView<'a> {
    current_version: u64,
    #[serde(borrow)]
    custom_metadata: Option<BTreeMap<Borrowed<'a>, Borrowed<'a>>>,
    #[serde(borrow)]
    versions: BTreeMap<u64, VersionView<'a>>,
    /// The latest written version's data, if the write kept a copy here (`metadata_item`).
    #[serde(borrow, default)]
    current: Option<CurrentView<'a>>,
}

#[derive(Deserialize)]
struct CurrentView<'a> {
    version: u64,
    /// Its data as the version item holds it (checked to be JSON by this very parse).
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// A string of the item, borrowed unless it had escapes. (serde borrows a `Cow` only as a
/// field of its own, not inside a map, hence the newtype.)
#[derive(Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

impl AsRef<str> for Borrowed<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
struct VersionView<'a> {
    #[serde(borrow)]
    created_time: Cow<'a, str>,
    #[serde(borrow)]
    deletion_time: Cow<'a, str>,
    destroyed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyMetadata {
    pub created_time: String,
    pub updated_time: String,
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    pub delete_version_after: u64,
    pub custom_metadata: Option<BTreeMap<String, String>>,
    pub versions: BTreeMap<u64, VersionMeta>,
}

impl KeyMetadata {
    fn new(at: &str) -> Self {
        KeyMetadata {
            created_time: at.into(),
            updated_time: at.into(),
            ..KeyMetadata::default()
        }
    }

    fn version_json(&self, version: u64, meta: &VersionMeta) -> Value {
        serde_json::to_value(VersionJson {
            created_time: &meta.created_time,
            custom_metadata: self.custom_metadata.as_ref(),
            deletion_time: &meta.deletion_time,
            destroyed: meta.destroyed,
            version,
        })
        .expect("in-memory JSON serialisation cannot fail")
    }

    pub fn to_json(&self) -> Value {
        let versions: Map<String, Value> = self
            .versions
            .iter()
            .map(|(n, v)| {
                let entry = json!({ "created_time": v.created_time, "deletion_time": v.deletion_time, "destroyed": v.destroyed });
                (n.to_string(), entry)
            })
            .collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": self.created_time,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": format!("{}s", self.delete_version_after),
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": self.updated_time,
            "versions": versions,
        })
    }
}

/// What a read found.
pub enum ReadOutcome {
    /// `{"data": {...}, "metadata": {...}}` as JSON text. The data is copied as stored: it is
    /// the compact JSON the write serialised (the barrier authenticated it), never parsed here.
    Found(Zeroizing<Vec<u8>>),
    /// Soft-deleted or destroyed: Vault answers 404 with the envelope and `data: null`.
    Gone(Value),
    Missing,
}

/// Fields of `POST metadata/:path`; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct MetadataUpdate {
    pub max_versions: Option<u64>,
    pub cas_required: Option<bool>,
    pub delete_version_after: Option<u64>,
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionAction {
    Delete,
    Undelete,
    Destroy,
}

/// A change to a key's metadata, as [`Kv::update`] writes it.
struct Changed<T> {
    meta: KeyMetadata,
    /// Written in the same transaction as the metadata item.
    writes: Vec<Write>,
    /// The data of `meta.current_version`, to keep a copy of in the metadata item. Only a
    /// write gives it; every other change drops the copy, and reads fall back to the version
    /// item.
    current: Option<Zeroizing<Vec<u8>>>,
    result: T,
}

impl<T> Changed<T> {
    fn new(meta: KeyMetadata, writes: Vec<Write>, result: T) -> Changed<T> {
        Changed {
            meta,
            writes,
            current: None,
            result,
        }
    }
}

/// The stored metadata item: `meta` and, with `current` (the data of `meta.current_version`),
/// `"current":{"data":…,"version":…}` if the item stays within `limit` bytes; a read takes it
/// instead of the version item. `KeyMetadata` does not read that field back: only
/// [`MetadataView`] does.
fn metadata_item(meta: &KeyMetadata, current: Option<&[u8]>, limit: usize) -> Zeroizing<Vec<u8>> {
    let mut item = Zeroizing::new(serde_json::to_vec(meta).expect("in-memory JSON"));
    const FRAME: usize = r#","current":{"data":,"version":18446744073709551615}}"#.len();
    let current = current.filter(|data| item.len() - 1 + FRAME + data.len() <= limit);
    if let Some(data) = current {
        debug_assert_eq!(item.last(), Some(&b'}'));
        item.pop();
        // Room for the data before it is copied: a buffer that grew would leave it behind.
        item.reserve_exact(data.len() + 64);
        item.extend_from_slice(b",\"current\":{\"data\":");
        item.extend_from_slice(data);
        std::io::Write::write_fmt(
            &mut *item,
            format_args!(",\"version\":{}}}}}", meta.current_version),
        )
        .expect("writing to a Vec cannot fail");
    }
    item
}

/// What all KV mounts of one unsealed server share.
pub struct KvShared {
    /// Mount configurations by storage prefix, bounded by `cache::REFRESH` across replicas.
    configs: TtlCache<String, KvConfig>,
    /// Writers to one key on this replica queue here instead of racing to a check-and-set
    /// conflict and a retry; conflicts remain only between replicas.
    key_locks: Vec<tokio::sync::Mutex<()>>,
}

const KEY_LOCK_STRIPES: usize = 256;

impl Default for KvShared {
    fn default() -> Self {
        KvShared {
            configs: TtlCache::default(),
            key_locks: (0..KEY_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }
}

impl KvShared {
    async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize
            % KEY_LOCK_STRIPES;
        self.key_locks[stripe].lock().await
    }
}

pub struct Kv<'a> {
    store: &'a EncryptedStorage,
    shared: &'a KvShared,
    prefix: String,
}

pub fn validate_custom_metadata(map: &BTreeMap<String, String>) -> Result<()> {
    if map.len() > MAX_CUSTOM_METADATA_KEYS {
        return Err(Error::BadRequest(format!(
            "custom_metadata holds at most {MAX_CUSTOM_METADATA_KEYS} keys"
        )));
    }
    if map
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 512)
    {
        return Err(Error::bad_request(
            "custom_metadata keys are 1 to 128 bytes and values at most 512 bytes",
        ));
    }
    Ok(())
}

fn secret_path(path: &str) -> Result<&str> {
    if path.is_empty() || path.ends_with('/') {
        return Err(Error::bad_request(
            "a secret path must name a key and not end with '/'",
        ));
    }
    Ok(path)
}

impl<'a> Kv<'a> {
    pub fn new(store: &'a EncryptedStorage, shared: &'a KvShared, storage_prefix: String) -> Self {
        Kv {
            store,
            shared,
            prefix: storage_prefix,
        }
    }

    fn metadata_key(&self, path: &str) -> String {
        [self.prefix.as_str(), "metadata/", path].concat()
    }

    fn version_key(&self, path: &str, version: u64) -> String {
        // Sized once (a `format!` here grew its buffer twice per read).
        let mut key = String::with_capacity(self.prefix.len() + 9 + path.len() + 21);
        key.push_str(&self.prefix);
        key.push_str("versions/");
        key.push_str(path);
        key.push('/');
        write!(key, "{version}").expect("writing to a String cannot fail");
        key
    }

    fn config_key(&self) -> String {
        format!("{}config", self.prefix)
    }

    pub async fn config(&self) -> Result<KvConfig> {
        if let Some(config) = self.shared.configs.get(&self.prefix) {
            return Ok(config);
        }
        let config: KvConfig = self
            .store
            .get_json(&self.config_key())
            .await?
            .map(|(c, _)| c)
            .unwrap_or_default();
        self.shared
            .configs
            .insert(self.prefix.clone(), config.clone());
        Ok(config)
    }

    pub async fn set_config(&self, update: MetadataUpdate) -> Result<()> {
        let mut config: KvConfig = self
            .store
            .get_json(&self.config_key())
            .await?
            .map(|(c, _)| c)
            .unwrap_or_default();
        if let Some(v) = update.max_versions {
            config.max_versions = v;
        }
        if let Some(v) = update.cas_required {
            config.cas_required = v;
        }
        if let Some(v) = update.delete_version_after {
            config.delete_version_after = v;
        }
        self.store
            .write(vec![Write::put_json(
                self.config_key(),
                &config,
                Precondition::None,
            )])
            .await?;
        self.shared.configs.remove(&self.prefix);
        Ok(())
    }

    pub async fn metadata(&self, path: &str) -> Result<Option<(KeyMetadata, u64)>> {
        if path.is_empty() || path.ends_with('/') {
            return Ok(None);
        }
        self.store.get_json(&self.metadata_key(path)).await
    }

    /// Whether the key has metadata (decides `create` versus `update` capability).
    pub async fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.metadata(path).await?.is_some())
    }

    pub async fn read(&self, path: &str, version: Option<u64>) -> Result<ReadOutcome> {
        if path.is_empty() || path.ends_with('/') {
            return Ok(ReadOutcome::Missing);
        }
        let Some(stored) = self.store.get(&self.metadata_key(path)).await? else {
            return Ok(ReadOutcome::Missing);
        };
        let meta: MetadataView = serde_json::from_slice(stored.bytes.expose()).map_err(|e| {
            Error::Internal(format!(
                "stored key metadata is not valid: {}",
                crate::error::describe_json_error(&e)
            ))
        })?;
        let version = version.filter(|v| *v > 0).unwrap_or(meta.current_version);
        let Some(version_meta) = meta.versions.get(&version) else {
            return Ok(ReadOutcome::Missing);
        };
        let metadata = VersionJson {
            created_time: &version_meta.created_time,
            custom_metadata: meta.custom_metadata.as_ref(),
            deletion_time: &version_meta.deletion_time,
            destroyed: version_meta.destroyed,
            version,
        };
        if version_meta.destroyed || is_deleted(&version_meta.deletion_time, now()) {
            let metadata = serde_json::to_value(metadata).expect("in-memory JSON");
            return Ok(ReadOutcome::Gone(
                json!({ "data": null, "metadata": metadata }),
            ));
        }
        let inline = meta
            .current
            .as_ref()
            .filter(|current| current.version == version);
        let item;
        let data = match inline {
            Some(current) => current.data.get().as_bytes(),
            None => {
                let Some(plain) = self.store.get(&self.version_key(path, version)).await? else {
                    return Ok(ReadOutcome::Missing);
                };
                item = plain;
                item.bytes.expose()
            }
        };
        // Sent as it is, so it must be JSON: a 500 rather than a broken answer (or an audit
        // line that took a value for a key) should the item ever be something else. (An
        // inline copy was checked by the metadata's parse.)
        if inline.is_none() {
            serde_json::from_slice::<serde::de::IgnoredAny>(data).map_err(|e| {
                Error::Internal(format!(
                    "stored secret version is not JSON: {}",
                    crate::error::describe_json_error(&e)
                ))
            })?;
        }
        let mut metadata_json = Vec::with_capacity(256);
        metadata.write(&mut metadata_json);
        // Sized exactly: a buffer that grew would leave a copy of the values behind unwiped.
        let (head, middle) = (&b"{\"data\":"[..], &b",\"metadata\":"[..]);
        let mut found = Zeroizing::new(Vec::with_capacity(
            head.len() + data.len() + middle.len() + metadata_json.len() + 1,
        ));
        found.extend_from_slice(head);
        found.extend_from_slice(data);
        found.extend_from_slice(middle);
        found.extend_from_slice(&metadata_json);
        found.push(b'}');
        Ok(ReadOutcome::Found(found))
    }

    /// Reads, changes and conditionally rewrites a key's metadata, retrying when another writer
    /// got there first (the change is recomputed, so check-and-set is re-checked too).
    async fn update<T>(
        &self,
        path: &str,
        change: impl FnMut(Option<KeyMetadata>, &KvConfig) -> Result<Option<Changed<T>>>,
    ) -> Result<Option<T>> {
        let _queued = self.shared.lock(&self.metadata_key(path)).await;
        let config = &self.config().await?;
        // Called again on every attempt; a lock because the attempt future borrows it.
        let change = &std::sync::Mutex::new(change);
        on_conflict(&format!("the key {path}"), || async move {
            let stored = self.metadata(path).await?;
            let precondition = stored
                .as_ref()
                .map_or(Precondition::Absent, |(_, v)| Precondition::Version(*v));
            let changed =
                (change.lock().expect("change lock poisoned"))(stored.map(|(m, _)| m), config)?;
            let Some(Changed {
                meta,
                mut writes,
                current,
                result,
            }) = changed
            else {
                return Ok(Attempt::Done(None));
            };
            let key = self.metadata_key(path);
            let limit = self.store.one_read_plaintext_limit(&key);
            let value = metadata_item(&meta, current.as_deref().map(Vec::as_slice), limit);
            writes.insert(
                0,
                Write::Put {
                    path: key,
                    value,
                    precondition,
                },
            );
            settle(self.store.transact(writes).await, Some(result))
        })
        .await
    }

    pub async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<Value> {
        let path = secret_path(path)?;
        let bytes = Zeroizing::new(serde_json::to_vec(&data).expect("serialisable"));
        let written = self
            .write_version(path, cas, |_| Some(bytes.clone()))
            .await?;
        Ok(written.expect("an unconditional write always writes"))
    }

    /// Merges `patch` (JSON merge patch, RFC 7386) into the latest live version.
    pub async fn patch(
        &self,
        path: &str,
        patch: Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<Value> {
        let path = secret_path(path)?;
        // The current data is read inside the retry loop: a concurrent write changes the base.
        let patch = &patch;
        on_conflict(&format!("the key {path}"), || async move {
            let Some((meta, _)) = self.metadata(path).await? else {
                return Err(Error::NotFound);
            };
            let current = match self.read(path, None).await? {
                ReadOutcome::Found(found) => {
                    let mut found: Value = serde_json::from_slice(&found).map_err(|e| {
                        Error::Internal(format!(
                            "stored secret version is not JSON: {}",
                            crate::error::describe_json_error(&e)
                        ))
                    })?;
                    found["data"].take()
                }
                _ => return Err(Error::NotFound),
            };
            let base_version = meta.current_version;
            let mut merged = current;
            json_patch::merge(&mut merged, &Value::Object(patch.clone()));
            let bytes = Zeroizing::new(serde_json::to_vec(&merged).expect("serialisable"));
            // `None`: another writer moved the key past the version we merged into; start over.
            let written = self
                .write_version(path, cas, |current| {
                    (current == base_version).then(|| bytes.clone())
                })
                .await?;
            Ok(written.map_or(Attempt::Conflict, Attempt::Done))
        })
        .await
    }

    async fn write_version(
        &self,
        path: &str,
        cas: Option<u64>,
        mut data_for: impl FnMut(u64) -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<Value>> {
        let at = rfc3339(now());
        self.update(path, |stored, config| {
            let mut meta = stored.unwrap_or_else(|| KeyMetadata::new(&at));
            match cas {
                None if config.cas_required || meta.cas_required => return Err(Error::CasRequired),
                Some(expected) if expected != meta.current_version => {
                    return Err(Error::CasMismatch)
                }
                _ => {}
            }
            let Some(bytes) = data_for(meta.current_version) else {
                return Ok(None);
            };
            let version = meta.current_version + 1;
            let delete_after = if meta.delete_version_after > 0 {
                meta.delete_version_after
            } else {
                config.delete_version_after
            };
            let deletion_time = if delete_after > 0 {
                rfc3339(now() + time::Duration::seconds(delete_after as i64))
            } else {
                String::new()
            };
            let version_meta = VersionMeta {
                created_time: at.clone(),
                deletion_time,
                destroyed: false,
            };
            meta.versions.insert(version, version_meta.clone());
            meta.current_version = version;
            meta.updated_time = at.clone();
            // At most INLINE_MAX_BYTES (not cloned otherwise), and kept in the metadata item only
            // if it fits there: `metadata_item`.
            let current = (bytes.len() <= INLINE_MAX_BYTES).then(|| bytes.clone());
            let mut writes = vec![Write::Put {
                path: self.version_key(path, version),
                value: bytes,
                precondition: Precondition::None,
            }];
            let max = match (meta.max_versions, config.max_versions) {
                (0, 0) => DEFAULT_MAX_VERSIONS,
                (0, mount) => mount,
                (key, _) => key,
            };
            let excess = meta
                .versions
                .len()
                .saturating_sub(max as usize)
                .min(PRUNE_PER_WRITE);
            let pruned: Vec<u64> = meta.versions.keys().take(excess).copied().collect();
            for old in &pruned {
                meta.versions.remove(old);
                writes.push(Write::delete(
                    self.version_key(path, *old),
                    Precondition::None,
                ));
            }
            if !pruned.is_empty() {
                meta.oldest_version = meta.versions.keys().next().copied().unwrap_or(0);
            }
            let response = meta.version_json(version, &version_meta);
            Ok(Some(Changed {
                current,
                ..Changed::new(meta, writes, response)
            }))
        })
        .await
    }

    /// Soft-deletes the latest version. Missing keys are not an error (as in Vault).
    pub async fn delete_latest(&self, path: &str) -> Result<()> {
        let at = rfc3339(now());
        self.update(path, |stored, _| {
            let Some(mut meta) = stored else {
                return Ok(None);
            };
            let current = meta.current_version;
            match meta.versions.get_mut(&current) {
                Some(v) if !v.destroyed && !v.is_deleted(now()) => v.deletion_time = at.clone(),
                _ => return Ok(None),
            }
            meta.updated_time = at.clone();
            Ok(Some(Changed::new(meta, Vec::new(), ())))
        })
        .await
        .map(drop)
    }

    pub async fn change_versions(
        &self,
        path: &str,
        versions: &[u64],
        action: VersionAction,
    ) -> Result<()> {
        if versions.is_empty() {
            return Err(Error::bad_request("no version number provided"));
        }
        if versions.len() > PRUNE_PER_WRITE {
            return Err(Error::BadRequest(format!(
                "at most {PRUNE_PER_WRITE} versions per request"
            )));
        }
        let at = rfc3339(now());
        self.update(path, |stored, _| {
            let Some(mut meta) = stored else {
                return Ok(None);
            };
            let mut writes = Vec::new();
            for version in versions {
                let Some(v) = meta.versions.get_mut(version) else {
                    continue;
                };
                match action {
                    VersionAction::Delete if !v.destroyed && !v.is_deleted(now()) => {
                        v.deletion_time = at.clone()
                    }
                    VersionAction::Undelete if !v.destroyed => v.deletion_time = String::new(),
                    VersionAction::Destroy if !v.destroyed => {
                        v.destroyed = true;
                        writes.push(Write::delete(
                            self.version_key(path, *version),
                            Precondition::None,
                        ));
                    }
                    _ => {}
                }
            }
            meta.updated_time = at.clone();
            Ok(Some(Changed::new(meta, writes, ())))
        })
        .await
        .map(drop)
    }

    pub async fn write_metadata(&self, path: &str, update: MetadataUpdate) -> Result<()> {
        let path = secret_path(path)?;
        if let Some(custom) = &update.custom_metadata {
            validate_custom_metadata(custom)?;
        }
        let at = rfc3339(now());
        self.update(path, |stored, _| {
            let mut meta = stored.unwrap_or_else(|| KeyMetadata::new(&at));
            if let Some(v) = update.max_versions {
                meta.max_versions = v;
            }
            if let Some(v) = update.cas_required {
                meta.cas_required = v;
            }
            if let Some(v) = update.delete_version_after {
                meta.delete_version_after = v;
            }
            if let Some(custom) = &update.custom_metadata {
                meta.custom_metadata = Some(custom.clone());
            }
            meta.updated_time = at.clone();
            Ok(Some(Changed::new(meta, Vec::new(), ())))
        })
        .await
        .map(drop)
    }

    /// Removes the key's metadata and every version. The metadata goes first, in the same
    /// transaction as the first versions, so the key disappears at once; leftover version items
    /// (for keys with many versions) are unreachable and removed right after.
    pub async fn delete_metadata(&self, path: &str) -> Result<()> {
        let keys = on_conflict(&format!("the key {path}"), || async move {
            let Some((meta, version)) = self.metadata(path).await? else {
                return Ok(Attempt::Done(Vec::new()));
            };
            let mut keys: Vec<String> = meta
                .versions
                .keys()
                .map(|v| self.version_key(path, *v))
                .collect();
            let first: Vec<String> = keys
                .drain(..keys.len().min(MAX_TRANSACTION_OPS - 1))
                .collect();
            let mut writes = vec![Write::delete(
                self.metadata_key(path),
                Precondition::Version(version),
            )];
            writes.extend(
                first
                    .into_iter()
                    .map(|k| Write::delete(k, Precondition::None)),
            );
            settle(self.store.transact(writes).await, keys)
        })
        .await?;
        for chunk in keys.chunks(MAX_TRANSACTION_OPS) {
            self.store
                .write(
                    chunk
                        .iter()
                        .map(|k| Write::delete(k.clone(), Precondition::None))
                        .collect(),
                )
                .await?;
        }
        Ok(())
    }

    /// The keys and folders directly under `prefix` (`""` for the mount's top).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            folder => format!("{folder}/"),
        };
        self.store.list(&self.metadata_key(&prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versions_metadata_is_written_as_serde_json_writes_it() {
        let custom: BTreeMap<String, String> = [
            ("owner".to_owned(), "team \"a\"\n".to_owned()),
            ("é".to_owned(), "\\".to_owned()),
        ]
        .into();
        let borrowed: BTreeMap<Borrowed, Borrowed> = custom
            .iter()
            .map(|(k, v)| (Borrowed(Cow::Borrowed(k)), Borrowed(Cow::Borrowed(v))))
            .collect();
        for destroyed in [false, true] {
            for custom_metadata in [None, Some(&custom)] {
                let json = VersionJson {
                    created_time: "2026-12-07T15:00:00.123456789Z",
                    custom_metadata,
                    deletion_time: "",
                    destroyed,
                    version: u64::MAX,
                };
                let mut written = Vec::new();
                json.write(&mut written);
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    serde_json::to_string(&json).unwrap()
                );
            }
            let json = VersionJson {
                created_time: "t",
                custom_metadata: Some(&borrowed),
                deletion_time: "d",
                destroyed,
                version: 7,
            };
            let mut written = Vec::new();
            json.write(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&json).unwrap()
            );
        }
    }
}
