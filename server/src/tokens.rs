//! The token store: bearer tokens kept only as HMAC-SHA256 keyed hashes, with TTLs, use counts,
//! accessors and parent → child links so that revoking a token revokes what it created.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::cache::TtlCache;
use crate::clock::{now_unix, rfc3339_unix};
use crate::encrypted::{EncryptedStorage, TransactError, Write};
use crate::error::{Error, Result};
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
#[derive(Debug, Default)]
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
    pub entry: TokenEntry,
}

pub struct TokenStore {
    key: Key256,
    /// Entries of unlimited-use tokens, by hash (see `cache` for the staleness bound).
    entries: TtlCache<String, TokenEntry>,
}

fn random_string(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

impl TokenStore {
    pub fn new(key: Key256) -> Self {
        TokenStore {
            key,
            entries: TtlCache::default(),
        }
    }

    /// The storage name of a token. Lookups go through this hash, so no stored value is ever
    /// compared with the presented token byte by byte.
    pub fn hash(&self, token: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.expose()).expect("HMAC takes any key length");
        mac.update(token.as_bytes());
        crate::seal::hex(&mac.finalize().into_bytes())
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

    pub async fn create(
        &self,
        store: &EncryptedStorage,
        request: TokenRequest,
        parent: Option<&Caller>,
    ) -> Result<Issued> {
        let (issued, writes) = self.issue(request, parent, None);
        store.write(writes).await?;
        Ok(issued)
    }

    /// The live entry for a token hash, or `None` when unknown or expired.
    pub async fn lookup_hash(
        &self,
        store: &EncryptedStorage,
        hash: &str,
    ) -> Result<Option<(TokenEntry, u64)>> {
        let found: Option<(TokenEntry, u64)> =
            store.get_json(&format!("{ID_PREFIX}{hash}")).await?;
        Ok(found.filter(|(entry, _)| entry.expire_time.is_none_or(|at| at > now_unix())))
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

    /// Authenticates a presented token and spends one use of a limited-use token.
    pub async fn authenticate(
        &self,
        store: &EncryptedStorage,
        token: &str,
    ) -> Result<Option<Caller>> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let hash = self.hash(token);
        if let Some(entry) = self.entries.get(&hash) {
            if entry.expire_time.is_none_or(|at| at > now_unix()) {
                return Ok(Some(Caller { hash, entry }));
            }
        }
        for _ in 0..10 {
            let Some((entry, version)) = self.lookup_hash(store, &hash).await? else {
                return Ok(None);
            };
            match entry.num_uses {
                0 => {
                    // Limited-use tokens are never cached: every use must be counted in storage.
                    self.entries.insert(hash.clone(), entry.clone());
                    return Ok(Some(Caller { hash, entry }));
                }
                1 => {
                    // The last use: the token is gone once this request is through.
                    self.revoke(store, &hash).await?;
                    return Ok(Some(Caller { hash, entry }));
                }
                uses => {
                    let mut spent = entry.clone();
                    spent.num_uses = uses - 1;
                    let write = Write::put_json(
                        format!("{ID_PREFIX}{hash}"),
                        &spent,
                        Precondition::Version(version),
                    );
                    match store.transact(vec![write]).await {
                        Ok(()) => return Ok(Some(Caller { hash, entry: spent })),
                        Err(TransactError::Conflict) => continue,
                        Err(TransactError::Other(error)) => return Err(error),
                    }
                }
            }
        }
        Err(Error::Unavailable(
            "token use count is contended; try again".into(),
        ))
    }

    /// Revokes a token and, depth first, every token created under it.
    pub async fn revoke(&self, store: &EncryptedStorage, hash: &str) -> Result<()> {
        let mut order = Vec::new();
        let mut pending = vec![hash.to_owned()];
        while let Some(current) = pending.pop() {
            for child in store.list(&format!("{PARENT_PREFIX}{current}/")).await? {
                pending.push(child.trim_end_matches('/').to_owned());
            }
            order.push(current);
        }
        // Children first: a crash half-way leaves every remaining token still linked to a parent.
        for current in order.into_iter().rev() {
            self.delete_one(store, &current).await?;
        }
        Ok(())
    }

    async fn delete_one(&self, store: &EncryptedStorage, hash: &str) -> Result<()> {
        let entry: Option<(TokenEntry, u64)> =
            store.get_json(&format!("{ID_PREFIX}{hash}")).await?;
        let mut writes = vec![Write::delete(
            format!("{ID_PREFIX}{hash}"),
            Precondition::None,
        )];
        if let Some((entry, _)) = entry {
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
        // After the delete: a lookup racing it can no longer re-cache the entry.
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
        for _ in 0..10 {
            let Some((mut entry, version)) = self.lookup_hash(store, hash).await? else {
                return Err(Error::PermissionDenied);
            };
            let Some(_) = entry.expire_time else {
                return Ok(entry);
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
            match store.transact(vec![write]).await {
                Ok(()) => {
                    self.entries.remove(hash);
                    return Ok(entry);
                }
                Err(TransactError::Conflict) => continue,
                Err(TransactError::Other(error)) => return Err(error),
            }
        }
        Err(Error::Unavailable("token is contended; try again".into()))
    }
}

/// `data` of `lookup-self` / `lookup`; `id` is shown only to whoever presented the token.
pub fn lookup_data(id: Option<&str>, entry: &TokenEntry) -> Value {
    let now = now_unix();
    json!({
        "accessor": entry.accessor,
        "creation_time": entry.creation_time,
        "creation_ttl": entry.creation_ttl,
        "display_name": entry.display_name,
        "entity_id": "",
        "expire_time": entry.expire_time.map(rfc3339_unix),
        "explicit_max_ttl": entry.explicit_max_ttl,
        "id": id.unwrap_or(""),
        "issue_time": rfc3339_unix(entry.creation_time),
        "meta": if entry.meta.is_empty() { Value::Null } else { json!(entry.meta) },
        "num_uses": entry.num_uses,
        "orphan": entry.orphan,
        "path": entry.path,
        "policies": entry.policies,
        "renewable": entry.renewable,
        "ttl": entry.ttl_remaining(now),
        "type": "service",
    })
}

/// `auth` of a response that issued a token.
pub fn auth_block(token: &str, entry: &TokenEntry) -> Value {
    let token_policies = entry.policies.clone();
    json!({
        "client_token": token,
        "accessor": entry.accessor,
        "policies": token_policies,
        "token_policies": entry.policies,
        "identity_policies": null,
        "metadata": if entry.meta.is_empty() { Value::Null } else { json!(entry.meta) },
        "lease_duration": entry.ttl_remaining(now_unix()),
        "renewable": entry.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": entry.orphan,
        "mfa_requirement": null,
        "num_uses": entry.num_uses,
    })
}
