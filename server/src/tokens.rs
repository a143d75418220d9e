//! The token store: bearer tokens kept only as HMAC-SHA256 keyed hashes, with TTLs, use counts,
//! accessors and parent → child links so that revoking a token revokes what it created.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::cache::TtlCache;
use crate::clock::now_unix;
use crate::encrypted::{EncryptedStorage, TransactError, Write};
use crate::error::{Error, Result};
use crate::retry::{on_conflict, settle, Attempt};
use crate::secret::{Key256, SecretString};
use crate::storage::{Precondition, MAX_TRANSACTION_OPS};

pub const TOKEN_KEY_PATH: &str = "core/token-key";
const ID_PREFIX: &str = "sys/token/id/";
const ACCESSOR_PREFIX: &str = "sys/token/accessor/";
const PARENT_PREFIX: &str = "sys/token/parent/";
/// Vault's default and maximum token TTL: 32 days.
pub const DEFAULT_TTL: u64 = 768 * 3600;
pub const MAX_TTL: u64 = 768 * 3600;
pub const TOKEN_PREFIX: &str = "kks.";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    pub accessor: String,
    pub policies: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub display_name: String,
    pub creation_time: i64,
    pub creation_ttl: u64,
    pub expire_time: Option<i64>,
    pub explicit_max_ttl: u64,
    pub num_uses: u64,
    pub renewable: bool,
    pub orphan: bool,
    /// The parent's keyed hash.
    pub parent: Option<String>,
    pub path: String,
    /// Set first when the token is revoked (before its children are listed and it is deleted):
    /// from then on it authenticates nothing and no child can be created under it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    pub fn ttl_remaining(&self, now: i64) -> u64 {
        self.expire_time
            .map(|at| (at - now).max(0) as u64)
            .unwrap_or(0)
    }
}

/// What a caller asks for when a token is created (by `auth/token/create` or a login).
#[derive(Debug, Default, Clone)]
pub struct TokenRequest {
    pub policies: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub display_name: String,
    pub ttl: Option<u64>,
    pub explicit_max_ttl: u64,
    pub num_uses: u64,
    pub renewable: bool,
    pub no_default_policy: bool,
    pub path: String,
}

pub struct Issued {
    pub token: SecretString,
    pub hash: String,
    pub entry: TokenEntry,
}

/// A token that authenticated this request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub hash: String,
    /// Shared with the token cache: a request reads it, nothing changes it in place.
    pub entry: Arc<TokenEntry>,
    /// The storage version of the entry as read: a child is created only if the parent is
    /// still at it (not revoked in between).
    pub version: u64,
    /// The token had a use limit (its `entry.num_uses` is what is left after this use). As
    /// in Vault, such a token creates no tokens: a child would escape the limit.
    pub use_limited: bool,
}

/// A token found valid whose use, if limited, is not spent yet ([`TokenStore::spend`]).
pub struct Found(Caller);

impl Found {
    /// The caller as found (for a limited token: before this request's use).
    pub fn caller(&self) -> &Caller {
        &self.0
    }
}

pub struct TokenStore {
    /// HMAC-SHA256 keyed once with the token key (zeroized on drop); each hash clones it
    /// instead of deriving the padded key blocks again.
    keyed: Hmac<Sha256>,
    /// Entries of unlimited-use tokens with their versions, by hash (see `cache` for the
    /// staleness bound).
    entries: TtlCache<String, (Arc<TokenEntry>, u64)>,
    /// Requests spending uses of one limited-use token on this replica queue here, so they do
    /// not race each other to conflicts; only other replicas race (and retry).
    use_locks: Vec<tokio::sync::Mutex<()>>,
}

const USE_LOCK_STRIPES: usize = 64;

fn random_string(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

impl TokenStore {
    pub fn new(key: Key256) -> Self {
        TokenStore {
            keyed: Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length"),
            entries: TtlCache::default(),
            use_locks: (0..USE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The storage name of a token. Lookups go through this hash, so no stored value is ever
    /// compared with the presented token byte by byte.
    pub fn hash(&self, token: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(token.as_bytes());
        // Into a buffer first: `hex::encode` pushes one `char` at a time.
        let mut hex = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex)
            .expect("32 bytes fill 64 hex digits");
        std::str::from_utf8(&hex).expect("hex is ASCII").to_owned()
    }

    /// Builds a new token and the writes that store it. `parent` is `None` for orphans.
    pub fn issue(
        &self,
        request: TokenRequest,
        parent: Option<&Caller>,
        chosen_id: Option<String>,
    ) -> (Issued, Vec<Write>) {
        let now = now_unix();
        let token = chosen_id.unwrap_or_else(|| format!("{TOKEN_PREFIX}{}", random_string(32)));
        let hash = self.hash(&token);
        let mut policies = request.policies;
        if !request.no_default_policy && !policies.iter().any(|p| p == "root") {
            policies.push("default".into());
        }
        policies.sort();
        policies.dedup();
        let is_root = policies.iter().any(|p| p == "root");
        let ttl = match request.ttl {
            None | Some(0) if is_root => None,
            requested => {
                let mut ttl = requested
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_TTL)
                    .min(MAX_TTL);
                if request.explicit_max_ttl > 0 {
                    ttl = ttl.min(request.explicit_max_ttl);
                }
                Some(ttl)
            }
        };
        let mut expire_time = ttl.map(|t| now + t as i64);
        // A child never outlives its parent.
        if let Some(parent_expiry) = parent.and_then(|p| p.entry.expire_time) {
            expire_time = Some(expire_time.map_or(parent_expiry, |e| e.min(parent_expiry)));
        }
        let entry = TokenEntry {
            accessor: random_string(18),
            policies,
            meta: request.meta,
            display_name: request.display_name,
            creation_time: now,
            creation_ttl: expire_time.map(|e| (e - now).max(0) as u64).unwrap_or(0),
            expire_time,
            explicit_max_ttl: request.explicit_max_ttl,
            num_uses: request.num_uses,
            renewable: request.renewable && expire_time.is_some(),
            orphan: parent.is_none(),
            parent: parent.map(|p| p.hash.clone()),
            path: request.path,
            revoked: false,
        };
        let mut writes = vec![
            Write::put_json(format!("{ID_PREFIX}{hash}"), &entry, Precondition::Absent),
            Write::put_json(
                format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                &json!({ "hash": hash }),
                Precondition::Absent,
            ),
        ];
        if let Some(parent) = parent {
            // Only while the parent is unchanged: a revocation marks it first, so a child is
            // either created before the mark (and found by the revocation) or not at all.
            writes.push(Write::Check {
                path: format!("{ID_PREFIX}{}", parent.hash),
                precondition: Precondition::Version(parent.version),
            });
            writes.push(Write::put_json(
                format!("{PARENT_PREFIX}{}/{hash}", parent.hash),
                &json!({}),
                Precondition::None,
            ));
        }
        (
            Issued {
                token: SecretString::new(token),
                hash,
                entry,
            },
            writes,
        )
    }

    /// Creates a token (a child of `parent`, or an orphan). If the parent changed since it was
    /// read (a use spent, a renewal), it is read again; if it was revoked, the answer is 403.
    pub async fn create(
        &self,
        store: &EncryptedStorage,
        request: TokenRequest,
        parent: Option<&Caller>,
        chosen_id: Option<String>,
    ) -> Result<Issued> {
        let parent = std::sync::Mutex::new(parent.cloned());
        let (parent, request, chosen_id) = (&parent, &request, &chosen_id);
        on_conflict("the parent token", || async move {
            let current = parent.lock().expect("parent lock poisoned").clone();
            let (issued, writes) = self.issue(request.clone(), current.as_ref(), chosen_id.clone());
            match store.transact(writes).await {
                Ok(()) => {
                    crate::metrics::METRICS.token_created();
                    Ok(Attempt::Done(issued))
                }
                Err(TransactError::Other(error)) => Err(error),
                Err(TransactError::Conflict) => {
                    if store
                        .get(&format!("{ID_PREFIX}{}", issued.hash))
                        .await?
                        .is_some()
                    {
                        return Err(Error::bad_request("a token with that id already exists"));
                    }
                    if let Some(caller) = current {
                        let (entry, version) = self
                            .lookup_hash(store, &caller.hash)
                            .await?
                            .ok_or(Error::PermissionDenied)?;
                        *parent.lock().expect("parent lock poisoned") = Some(Caller {
                            hash: caller.hash,
                            entry: Arc::new(entry),
                            version,
                            use_limited: caller.use_limited,
                        });
                    }
                    Ok(Attempt::Conflict)
                }
            }
        })
        .await
    }

    /// The live entry for a token hash, or `None` when unknown, expired or being revoked.
    pub async fn lookup_hash(
        &self,
        store: &EncryptedStorage,
        hash: &str,
    ) -> Result<Option<(TokenEntry, u64)>> {
        let found: Option<(TokenEntry, u64)> =
            store.get_json(&format!("{ID_PREFIX}{hash}")).await?;
        Ok(found.filter(|(entry, _)| {
            !entry.revoked && entry.expire_time.is_none_or(|at| at > now_unix())
        }))
    }

    pub async fn lookup_accessor(
        &self,
        store: &EncryptedStorage,
        accessor: &str,
    ) -> Result<Option<(String, TokenEntry)>> {
        if accessor.is_empty() || accessor.contains('/') {
            return Ok(None);
        }
        let Some((link, _)) = store
            .get_json::<Value>(&format!("{ACCESSOR_PREFIX}{accessor}"))
            .await?
        else {
            return Ok(None);
        };
        let hash = link["hash"].as_str().unwrap_or_default().to_owned();
        Ok(self
            .lookup_hash(store, &hash)
            .await?
            .map(|(entry, _)| (hash, entry)))
    }

    /// Finds the caller of a presented token without spending anything: a limited-use token's
    /// use is spent by [`TokenStore::spend`] once the request may go on (after its audit entry).
    pub async fn find(&self, store: &EncryptedStorage, token: &str) -> Result<Option<Found>> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let hash = self.hash(token);
        if let Some((entry, version)) = self.entries.get(&hash) {
            if entry.expire_time.is_none_or(|at| at > now_unix()) {
                return Ok(Some(Found(Caller {
                    hash,
                    entry,
                    version,
                    use_limited: false,
                })));
            }
        }
        let generation = self.entries.generation();
        let Some((entry, version)) = self.lookup_hash(store, &hash).await? else {
            return Ok(None);
        };
        let use_limited = entry.num_uses > 0;
        let entry = Arc::new(entry);
        if !use_limited {
            // Limited-use tokens are never cached: every use must be counted in storage.
            self.entries.insert_unless_invalidated(
                generation,
                hash.clone(),
                (Arc::clone(&entry), version),
            );
        }
        Ok(Some(Found(Caller {
            hash,
            entry,
            version,
            use_limited,
        })))
    }

    /// Authenticates a presented token: [`TokenStore::find`] then [`TokenStore::spend`].
    pub async fn authenticate(
        &self,
        store: &EncryptedStorage,
        token: &str,
    ) -> Result<Option<Caller>> {
        match self.find(store, token).await? {
            Some(found) => self.spend(store, found).await,
            None => Ok(None),
        }
    }

    /// The caller of a found token, its use spent if it has a use limit (`None`: the uses ran
    /// out or it was revoked since it was found).
    pub async fn spend(&self, store: &EncryptedStorage, found: Found) -> Result<Option<Caller>> {
        let Found(caller) = found;
        if !caller.use_limited {
            return Ok(Some(caller));
        }
        let hash = caller.hash;
        let queued = self.use_lock(&hash).await;
        let hash_ref = &hash;
        let spent = on_conflict("the token's use count", || async move {
            let hash = hash_ref;
            let Some((entry, version)) = self.lookup_hash(store, hash).await? else {
                return Ok(Attempt::Done(None));
            };
            let mut spent = entry;
            let Some(left) = spent.num_uses.checked_sub(1) else {
                return Ok(Attempt::Done(None)); // spent to nothing: refused like any other
            };
            spent.num_uses = left;
            // The last use marks the token revoked in the same conditional write, so no
            // concurrent request can also take it; the revocation below then cleans up.
            spent.revoked = spent.num_uses == 0;
            let write = Write::put_json(
                format!("{ID_PREFIX}{hash}"),
                &spent,
                Precondition::Version(version),
            );
            settle(
                store.transact(vec![write]).await,
                Some((spent, version + 1)),
            )
        })
        .await?;
        drop(queued);
        let Some((mut entry, version)) = spent else {
            return Ok(None);
        };
        if entry.revoked {
            // The mark alone already refuses every later use; the cascade that deletes the
            // token and its children must not cost this request its (last) use.
            if let Err(error) = self.revoke(store, &hash).await {
                tracing::warn!(%error, "deleting a spent token failed; it stays marked revoked");
            }
            entry.revoked = false; // this request is the last use, and it is served
        }
        Ok(Some(Caller {
            hash,
            entry: Arc::new(entry),
            version,
            use_limited: true,
        }))
    }

    async fn use_lock(&self, hash: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(hash) as usize
            % USE_LOCK_STRIPES;
        self.use_locks[stripe].lock().await
    }

    /// Revokes a token and every token created under it. Each token is first marked revoked
    /// (a conditional write, so a child creation racing it fails its parent check), then its
    /// children are listed, then all are deleted, children first: a crash half-way leaves
    /// marked tokens that authenticate nothing and are still linked to their parents.
    pub async fn revoke(&self, store: &EncryptedStorage, hash: &str) -> Result<()> {
        let mut order = Vec::new();
        let mut pending = vec![hash.to_owned()];
        while let Some(current) = pending.pop() {
            self.mark_revoked(store, &current).await?;
            for child in store.list(&format!("{PARENT_PREFIX}{current}/")).await? {
                pending.push(child.trim_end_matches('/').to_owned());
            }
            order.push(current);
        }
        for current in order.into_iter().rev() {
            self.delete_one(store, &current).await?;
        }
        Ok(())
    }

    async fn mark_revoked(&self, store: &EncryptedStorage, hash: &str) -> Result<()> {
        let path = &format!("{ID_PREFIX}{hash}");
        on_conflict("the token being revoked", || async move {
            let Some((mut entry, version)) = store.get_json::<TokenEntry>(path).await? else {
                return Ok(Attempt::Done(()));
            };
            if entry.revoked {
                return Ok(Attempt::Done(()));
            }
            entry.revoked = true;
            let write = Write::put_json(path.as_str(), &entry, Precondition::Version(version));
            settle(store.transact(vec![write]).await, ())
        })
        .await?;
        self.entries.remove(hash);
        Ok(())
    }

    async fn delete_one(&self, store: &EncryptedStorage, hash: &str) -> Result<()> {
        let entry: Option<(TokenEntry, u64)> =
            store.get_json(&format!("{ID_PREFIX}{hash}")).await?;
        let Some((entry, _)) = entry else {
            // Unknown (or already deleted): writing a delete would only leave a tombstone.
            self.entries.remove(hash);
            return Ok(());
        };
        let mut writes = vec![Write::delete(
            format!("{ID_PREFIX}{hash}"),
            Precondition::None,
        )];
        {
            writes.push(Write::delete(
                format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                Precondition::None,
            ));
            if let Some(parent) = entry.parent {
                writes.push(Write::delete(
                    format!("{PARENT_PREFIX}{parent}/{hash}"),
                    Precondition::None,
                ));
            }
        }
        debug_assert!(writes.len() <= MAX_TRANSACTION_OPS);
        store.write(writes).await?;
        self.entries.remove(hash);
        Ok(())
    }

    /// Extends a renewable token's TTL, bounded by its max TTL from creation.
    pub async fn renew(
        &self,
        store: &EncryptedStorage,
        hash: &str,
        increment: Option<u64>,
    ) -> Result<TokenEntry> {
        on_conflict("the token being renewed", || async move {
            let Some((mut entry, version)) = self.lookup_hash(store, hash).await? else {
                return Err(Error::PermissionDenied);
            };
            let Some(_) = entry.expire_time else {
                return Ok(Attempt::Done(entry));
            };
            if !entry.renewable {
                return Err(Error::bad_request("lease is not renewable"));
            }
            let now = now_unix();
            let max = if entry.explicit_max_ttl > 0 {
                entry.explicit_max_ttl.min(MAX_TTL)
            } else {
                MAX_TTL
            };
            let limit = entry.creation_time + max as i64;
            let wanted = increment
                .filter(|i| *i > 0)
                .unwrap_or(entry.creation_ttl.max(1));
            let mut expire = (now + wanted as i64).min(limit);
            if let Some(parent) = &entry.parent {
                if let Some((parent_entry, _)) = self.lookup_hash(store, parent).await? {
                    if let Some(parent_expiry) = parent_entry.expire_time {
                        expire = expire.min(parent_expiry);
                    }
                }
            }
            entry.expire_time = Some(expire);
            let write = Write::put_json(
                format!("{ID_PREFIX}{hash}"),
                &entry,
                Precondition::Version(version),
            );
            let outcome = settle(store.transact(vec![write]).await, entry);
            self.entries.remove(hash);
            outcome
        })
        .await
    }
}
