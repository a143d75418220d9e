//! The core: seal state and its lifecycle (init, unseal, seal, rotate), and what exists only
//! while unsealed (the encrypted storage view, tokens, policies, mounts).

use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::barrier::Keyring;
use crate::clock::now_unix;
use crate::encrypted::{seal_keyring, EncryptedStorage, Write, KEYRING_PATH};
use crate::error::{Error, Result};
use crate::mounts::{Mount, MountTable, AUTH_PATH, MOUNTS_PATH};
use crate::policies::{policy_write, PolicyStore};
use crate::policy::DEFAULT_POLICY;
use crate::seal::Seal;
use crate::secret::{Key256, SecretBytes, SecretString};
use crate::shamir;
use crate::storage::{Op, Precondition, Storage, StorageError};
use crate::tokens::{TokenRequest, TokenStore, TOKEN_KEY_PATH};

pub const SEAL_CONFIG_PATH: &str = "core/seal-config";
pub const ROOT_KEY_PATH: &str = "core/root-key";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Stored in plaintext: what a sealed server needs to know before it has any key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealConfig {
    pub cluster_id: String,
    pub cluster_name: String,
    pub seal_type: String,
    pub recovery_shares: u8,
    pub recovery_threshold: u8,
    /// HMAC-SHA256 of the cluster id under the recovery key: verifies combined shares.
    pub recovery_check: String,
}

#[derive(Debug)]
pub struct InitRequest {
    pub recovery_shares: u8,
    pub recovery_threshold: u8,
    /// Dev mode may choose the root token, as `vault server -dev-root-token-id` does.
    pub root_token: Option<SecretString>,
    /// Dev mode mounts KV v2 at `secret/`.
    pub mount_secret_kv: bool,
}

pub struct InitResult {
    pub recovery_keys: Vec<SecretString>,
    pub root_token: SecretString,
}

pub struct SealStatus {
    pub seal_type: &'static str,
    pub initialized: bool,
    pub sealed: bool,
    pub threshold: u8,
    pub shares: u8,
    pub progress: usize,
    pub cluster_name: String,
    pub cluster_id: String,
    pub storage_type: &'static str,
}

/// Everything that exists only while unsealed; dropping it zeroizes the keys.
pub struct Unsealed {
    pub cluster_id: String,
    pub store: EncryptedStorage,
    pub tokens: TokenStore,
    pub policies: PolicyStore,
    pub mounts: MountTable,
    /// Auth methods enabled under `auth/` (the token method is built in).
    pub auth: MountTable,
    /// Kubernetes API clients for TokenReview, reused across logins.
    pub review_clients: crate::kubernetes::review::ClientCache,
    /// State all KV mounts share: configuration cache, per-key write queues.
    pub kv: crate::kv::KvShared,
    /// Sealed values: the sealing root secret once read, the `compare` rate limit.
    pub sealing: crate::sealed::store::Sealing,
    /// The enabled audit devices.
    pub audit: crate::audit::device::AuditDevices,
    /// Refused logins per auth mount, role and source address, on this replica.
    pub login_failures: crate::ratelimit::FixedWindow,
}

impl Drop for Unsealed {
    /// The fields zeroize themselves; the stack copies of their keys go when each runtime
    /// worker next parks.
    fn drop(&mut self) {
        crate::scrub::request();
    }
}

/// Refused logins allowed per auth mount, role and source address and window, per replica;
/// past it, logins of that key are answered 429 until the window ends.
pub const LOGIN_FAILURE_LIMIT: u32 = 10;
pub const LOGIN_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Unsealed {
    async fn load(
        cluster_id: String,
        store: EncryptedStorage,
        tokens: TokenStore,
    ) -> Result<Unsealed> {
        let mounts = MountTable::load(&store, MOUNTS_PATH).await?;
        let auth = MountTable::load(&store, AUTH_PATH).await?;
        let audit = crate::audit::device::AuditDevices::load(&store).await?;
        let mut unsealed = Unsealed::new(cluster_id, store, tokens, mounts, auth);
        unsealed.audit = audit;
        Ok(unsealed)
    }

    fn new(
        cluster_id: String,
        store: EncryptedStorage,
        tokens: TokenStore,
        mounts: MountTable,
        auth: MountTable,
    ) -> Unsealed {
        Unsealed {
            cluster_id,
            store,
            tokens,
            policies: PolicyStore::default(),
            mounts,
            auth,
            review_clients: Default::default(),
            kv: Default::default(),
            sealing: Default::default(),
            audit: Default::default(),
            login_failures: crate::ratelimit::FixedWindow::new(
                LOGIN_FAILURE_LIMIT,
                LOGIN_FAILURE_WINDOW,
            ),
        }
    }
}

/// Re-reads the mount tables every `cache::REFRESH` while this unsealed state lives, so mounts
/// added or removed on another replica are routed here within that bound.
fn refresh_mount_tables(unsealed: std::sync::Weak<Unsealed>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::cache::REFRESH).await;
            let Some(unsealed) = unsealed.upgrade() else {
                return;
            };
            for table in [&unsealed.mounts, &unsealed.auth] {
                if let Err(error) = table.reload(&unsealed.store).await {
                    tracing::warn!(%error, "refreshing a mount table failed; keeping the last one");
                }
            }
            if let Err(error) = unsealed.audit.reload(&unsealed.store).await {
                tracing::warn!(%error, "refreshing the audit devices failed; keeping the last ones");
            }
        }
    });
}

pub struct Core {
    storage: Arc<dyn Storage>,
    seal: Arc<dyn Seal>,
    cluster_name: String,
    state: RwLock<Option<Arc<Unsealed>>>,
    recovery_shares: Mutex<Vec<SecretBytes>>,
    lifecycle: tokio::sync::Mutex<()>,
}

/// The MAC that proves a recovery key belongs to a cluster: stored at init, verified at unseal.
fn recovery_mac(recovery_key: &[u8], cluster_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(recovery_key).expect("HMAC takes any key length");
    mac.update(b"kinko/recovery-check\0");
    mac.update(cluster_id.as_bytes());
    mac
}

impl Core {
    pub fn new(storage: Arc<dyn Storage>, seal: Arc<dyn Seal>, cluster_name: &str) -> Arc<Core> {
        Arc::new(Core {
            storage,
            seal,
            cluster_name: cluster_name.to_owned(),
            state: RwLock::new(None),
            recovery_shares: Mutex::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        })
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn seal_kind(&self) -> &'static str {
        self.seal.kind()
    }

    pub async fn seal_config(&self) -> Result<Option<SealConfig>> {
        match self.storage.get(SEAL_CONFIG_PATH).await? {
            None => Ok(None),
            Some(entry) => serde_json::from_slice(&entry.value)
                .map(Some)
                .map_err(|e| Error::Internal(format!("seal configuration is unreadable: {e}"))),
        }
    }

    /// The unsealed state, or `Error::Sealed`.
    pub fn unsealed(&self) -> Result<Arc<Unsealed>> {
        self.state
            .read()
            .expect("state lock poisoned")
            .clone()
            .ok_or(Error::Sealed)
    }

    pub fn is_sealed(&self) -> bool {
        self.state.read().expect("state lock poisoned").is_none()
    }

    pub async fn initialize(&self, request: InitRequest) -> Result<InitResult> {
        let _guard = self.lifecycle.lock().await;
        if request.recovery_threshold > request.recovery_shares
            || (request.recovery_shares > 0 && request.recovery_threshold == 0)
        {
            return Err(Error::bad_request(
                "recovery_threshold must be between 1 and recovery_shares",
            ));
        }
        if self.seal_config().await?.is_some() {
            return Err(Error::AlreadyInitialized);
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        let root_key = Key256::generate();
        let recovery_key = Key256::generate();
        let recovery_keys = if request.recovery_shares == 0 {
            Vec::new()
        } else {
            shamir::split(
                recovery_key.expose(),
                request.recovery_shares,
                request.recovery_threshold,
            )
            .map_err(|e| Error::BadRequest(e.to_string()))?
            .into_iter()
            .map(|share| SecretString::new(hex::encode(share.expose())))
            .collect()
        };
        let config = SealConfig {
            cluster_id: cluster_id.clone(),
            cluster_name: self.cluster_name.clone(),
            seal_type: self.seal.kind().to_owned(),
            recovery_shares: request.recovery_shares,
            recovery_threshold: request.recovery_threshold,
            recovery_check: hex::encode(
                recovery_mac(recovery_key.expose(), &cluster_id)
                    .finalize()
                    .into_bytes(),
            ),
        };
        let wrapped = self.seal.wrap(&root_key, &cluster_id).await?;
        let now = now_unix();
        let keyring = Keyring::new(&cluster_id, now).with_new_block(now);
        let sealed_keyring = seal_keyring(&root_key, &cluster_id, &keyring);
        let store =
            EncryptedStorage::with_keyring(self.storage.clone(), root_key, &cluster_id, keyring);

        // Everything a working cluster needs goes in one transaction: either another replica
        // initialised first and we wrote nothing, or the cluster is complete.
        let token_key = Key256::generate();
        let tokens = TokenStore::new(token_key.duplicate());
        let root_request = TokenRequest {
            policies: vec!["root".into()],
            display_name: "root".into(),
            path: "auth/token/root".into(),
            ..TokenRequest::default()
        };
        let chosen_root = request.root_token.as_ref().map(|t| t.expose().to_owned());
        let (root, mut writes) = tokens.issue(root_request, None, chosen_root);
        writes.push(Write::Put {
            path: TOKEN_KEY_PATH.into(),
            value: zeroize::Zeroizing::new(token_key.expose().to_vec()),
            precondition: Precondition::Absent,
        });
        writes.push(policy_write("default", DEFAULT_POLICY)?);
        let mut mounts = Vec::new();
        if request.mount_secret_kv {
            mounts.push(Mount::new("secret/", "kv", "key/value secret storage"));
            writes.push(Write::put_json(MOUNTS_PATH, &mounts, Precondition::Absent));
        }
        let mut ops = vec![
            Op::Put {
                key: SEAL_CONFIG_PATH.into(),
                value: serde_json::to_vec(&config).expect("serialisable"),
                precondition: Precondition::Absent,
            },
            Op::Put {
                key: ROOT_KEY_PATH.into(),
                value: wrapped,
                precondition: Precondition::Absent,
            },
            Op::Put {
                key: KEYRING_PATH.into(),
                value: sealed_keyring,
                precondition: Precondition::Absent,
            },
        ];
        ops.extend(store.to_ops(writes).await?);
        match self.storage.transact(ops).await {
            Ok(()) => {}
            Err(StorageError::Conflict { .. }) => return Err(Error::AlreadyInitialized),
            Err(other) => {
                // An ambiguous failure (a timeout after the commit) may hide a success; the
                // stored cluster id tells, and losing these secrets would lose the cluster.
                match self.seal_config().await {
                    Ok(Some(stored)) if stored.cluster_id == cluster_id => {
                        tracing::warn!(error = %other, "the init transaction reported an error but committed");
                    }
                    _ => return Err(other.into()),
                }
            }
        }
        // From here on nothing may fail: the root token and recovery keys exist only in this
        // result. So the unsealed state is built from what was just written, not read back.
        self.install(Unsealed::new(
            cluster_id,
            store,
            tokens,
            MountTable::new(MOUNTS_PATH, mounts),
            MountTable::new(AUTH_PATH, Vec::new()),
        ));
        tracing::info!(cluster = %self.cluster_name, "initialized and unsealed");
        Ok(InitResult {
            recovery_keys,
            root_token: root.token,
        })
    }

    fn install(&self, unsealed: Unsealed) {
        let unsealed = Arc::new(unsealed);
        refresh_mount_tables(Arc::downgrade(&unsealed));
        *self.state.write().expect("state lock poisoned") = Some(unsealed);
        self.recovery_shares
            .lock()
            .expect("share lock poisoned")
            .clear();
    }

    /// Unseals through the configured seal (auto-unseal). A no-op when already unsealed.
    pub async fn unseal_with_seal(&self) -> Result<()> {
        let _guard = self.lifecycle.lock().await;
        if !self.is_sealed() {
            return Ok(());
        }
        let config = self.seal_config().await?.ok_or(Error::NotInitialized)?;
        self.unseal_locked(&config).await
    }

    async fn unseal_locked(&self, config: &SealConfig) -> Result<()> {
        let wrapped = self
            .storage
            .get(ROOT_KEY_PATH)
            .await?
            .ok_or_else(|| Error::Internal("wrapped root key missing from storage".into()))?;
        let root_key = self.seal.unwrap(&wrapped.value, &config.cluster_id).await?;
        let store =
            EncryptedStorage::open(self.storage.clone(), root_key, &config.cluster_id).await?;
        let token_key = store
            .get(TOKEN_KEY_PATH)
            .await?
            .and_then(|plain| Key256::from_slice(plain.bytes.expose()))
            .ok_or_else(|| Error::Internal("token key missing from storage".into()))?;
        self.install(
            Unsealed::load(config.cluster_id.clone(), store, TokenStore::new(token_key)).await?,
        );
        tracing::info!(cluster_id = %config.cluster_id, seal = self.seal.kind(), "unsealed");
        Ok(())
    }

    /// Takes one recovery key share (after a manual `sys/seal`); unseals once enough have come.
    /// Returns the number of shares held so far (0 once unsealed).
    pub async fn submit_recovery_share(&self, share_hex: &str) -> Result<usize> {
        let _guard = self.lifecycle.lock().await;
        let config = self.seal_config().await?.ok_or(Error::NotInitialized)?;
        if !self.is_sealed() {
            return Ok(0);
        }
        if config.recovery_shares == 0 {
            return Err(Error::bad_request(
                "this cluster has no recovery keys; restart the server to unseal it through its seal",
            ));
        }
        let share = hex::decode(share_hex.trim())
            .ok()
            .filter(|s| s.len() == Key256::LEN + 1)
            .map(SecretBytes::new)
            .ok_or_else(|| Error::bad_request("key is not a recovery key share (expected hex)"))?;
        let combined = {
            let mut shares = self.recovery_shares.lock().expect("share lock poisoned");
            if !shares.contains(&share) {
                shares.push(share);
            }
            if shares.len() < config.recovery_threshold as usize {
                return Ok(shares.len());
            }
            let combined = shamir::combine(&shares);
            shares.clear();
            combined
        };
        let valid = combined.as_ref().is_ok_and(|key| {
            let expected = hex::decode(&config.recovery_check).unwrap_or_default();
            recovery_mac(key, &config.cluster_id)
                .verify_slice(&expected)
                .is_ok()
        });
        if !valid {
            return Err(Error::bad_request(
                "recovery key shares do not combine to this cluster's recovery key",
            ));
        }
        self.unseal_locked(&config).await?;
        Ok(0)
    }

    pub fn reset_recovery_progress(&self) {
        self.recovery_shares
            .lock()
            .expect("share lock poisoned")
            .clear();
    }

    /// Drops every key from memory. Requests in flight finish with the state they hold.
    pub async fn seal(&self) {
        let _guard = self.lifecycle.lock().await;
        self.state.write().expect("state lock poisoned").take();
        tracing::info!("sealed");
    }

    pub async fn status(&self) -> Result<SealStatus> {
        let config = self.seal_config().await?;
        let unsealed = self.state.read().expect("state lock poisoned").clone();
        Ok(SealStatus {
            seal_type: self.seal.kind(),
            initialized: config.is_some(),
            sealed: unsealed.is_none(),
            threshold: config.as_ref().map_or(0, |c| c.recovery_threshold),
            shares: config.as_ref().map_or(0, |c| c.recovery_shares),
            progress: self
                .recovery_shares
                .lock()
                .expect("share lock poisoned")
                .len(),
            cluster_name: config
                .as_ref()
                .map_or_else(|| self.cluster_name.clone(), |c| c.cluster_name.clone()),
            cluster_id: match (&config, &unsealed) {
                (Some(c), Some(_)) => c.cluster_id.clone(),
                _ => String::new(),
            },
            storage_type: self.storage.kind(),
        })
    }
}
