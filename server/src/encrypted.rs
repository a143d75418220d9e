//! The encrypted storage view: every read decrypts and every write encrypts through the current
//! keyring, and this is where the keyring's nonce-budget blocks are reserved and terms rotated.

use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::barrier::{open_with_key, seal_with_key, BarrierError, Keyring};
use crate::clock::now_unix;
use crate::error::{Error, Result};
use crate::metrics::{StorageOp, METRICS};
use crate::retry::{on_conflict, Attempt};
use crate::secret::{Key256, SecretBytes};
use crate::storage::{Op, Precondition, Storage, StorageError, MAX_TRANSACTION_OPS};

/// Where the keyring lives, encrypted by the root key rather than by itself.
pub const KEYRING_PATH: &str = "core/keyring";

pub struct Plain {
    pub bytes: SecretBytes,
    /// Storage version, for conditional writes.
    pub version: u64,
}

/// A write expressed on plaintext; it is encrypted for its own path before it reaches storage.
pub enum Write {
    Put {
        path: String,
        value: Zeroizing<Vec<u8>>,
        precondition: Precondition,
    },
    Delete {
        path: String,
        precondition: Precondition,
    },
    /// Writes nothing; the transaction applies only if `path` meets `precondition`.
    Check {
        path: String,
        precondition: Precondition,
    },
}

impl Write {
    pub fn put_json(
        path: impl Into<String>,
        value: &impl Serialize,
        precondition: Precondition,
    ) -> Write {
        let bytes = serde_json::to_vec(value).expect("in-memory JSON serialisation cannot fail");
        Write::Put {
            path: path.into(),
            value: Zeroizing::new(bytes),
            precondition,
        }
    }

    pub fn delete(path: impl Into<String>, precondition: Precondition) -> Write {
        Write::Delete {
            path: path.into(),
            precondition,
        }
    }
}

pub fn keyring_aad(cluster_id: &str) -> Vec<u8> {
    format!("{cluster_id}\0{KEYRING_PATH}").into_bytes()
}

pub fn seal_keyring(root_key: &Key256, cluster_id: &str, keyring: &Keyring) -> Vec<u8> {
    seal_with_key(
        root_key,
        0,
        &keyring_aad(cluster_id),
        keyring.to_bytes().expose(),
    )
}

/// Reads and decrypts the stored keyring, with its storage version.
async fn load_keyring(
    storage: &dyn Storage,
    root_key: &Key256,
    cluster_id: &str,
) -> Result<(Keyring, u64)> {
    let entry = storage
        .get(KEYRING_PATH)
        .await?
        .ok_or_else(|| Error::Internal("keyring missing from storage".into()))?;
    let plain = open_with_key(root_key, &keyring_aad(cluster_id), &entry.value)?;
    Ok((
        Keyring::from_bytes(cluster_id, plain.expose())?,
        entry.version,
    ))
}

pub struct EncryptedStorage {
    storage: Arc<dyn Storage>,
    root_key: Key256,
    cluster_id: String,
    keyring: RwLock<Arc<Keyring>>,
    reserve: tokio::sync::Mutex<()>,
}

impl EncryptedStorage {
    /// Opens the view by decrypting the stored keyring with the root key.
    pub async fn open(
        storage: Arc<dyn Storage>,
        root_key: Key256,
        cluster_id: &str,
    ) -> Result<EncryptedStorage> {
        let (stored, _) = load_keyring(&*storage, &root_key, cluster_id).await?;
        Ok(EncryptedStorage::with_keyring(
            storage, root_key, cluster_id, stored,
        ))
    }

    /// A view over a keyring that is not stored yet (used by initialisation, which stores it in
    /// the same transaction as everything encrypted under it).
    pub fn with_keyring(
        storage: Arc<dyn Storage>,
        root_key: Key256,
        cluster_id: &str,
        keyring: Keyring,
    ) -> Self {
        EncryptedStorage {
            storage,
            root_key,
            cluster_id: cluster_id.to_owned(),
            keyring: RwLock::new(Arc::new(keyring)),
            reserve: tokio::sync::Mutex::new(()),
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// [`Storage::one_read_value_limit`] for the plaintext written at `path`.
    pub fn one_read_plaintext_limit(&self, path: &str) -> usize {
        self.storage
            .one_read_value_limit(path)
            .saturating_sub(crate::barrier::OVERHEAD)
    }

    pub fn root_key(&self) -> &Key256 {
        &self.root_key
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().expect("keyring lock poisoned").clone()
    }

    async fn load_keyring(&self) -> Result<(Keyring, u64)> {
        load_keyring(&*self.storage, &self.root_key, &self.cluster_id).await
    }

    /// Replaces the stored keyring by `change(stored)` with a conditional write, retrying when
    /// another replica changed it first, and installs the result here.
    async fn update_keyring(&self, change: impl Fn(&Keyring) -> Keyring) -> Result<Arc<Keyring>> {
        let change = &change;
        let next = on_conflict("the keyring", || async move {
            let (stored, version) = self.load_keyring().await?;
            let next = change(&stored);
            let blob = seal_keyring(&self.root_key, &self.cluster_id, &next);
            match self
                .storage
                .put(KEYRING_PATH, blob, Precondition::Version(version))
                .await
            {
                Ok(()) => Ok(Attempt::Done(next)),
                Err(StorageError::Conflict { .. }) => Ok(Attempt::Conflict),
                Err(other) => Err(other.into()),
            }
        })
        .await?;
        let next = Arc::new(next);
        *self.keyring.write().expect("keyring lock poisoned") = next.clone();
        Ok(next)
    }

    async fn reserve_block(&self, spent: &Arc<Keyring>) -> Result<()> {
        let _guard = self.reserve.lock().await;
        if !Arc::ptr_eq(&self.keyring(), spent) {
            return Ok(()); // another task reserved while we waited
        }
        self.update_keyring(|stored| stored.with_new_block(now_unix()))
            .await
            .map(drop)
    }

    pub async fn encrypt(&self, path: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        loop {
            let keyring = self.keyring();
            match keyring.encrypt(path, plaintext) {
                Ok(blob) => return Ok(blob),
                Err(BarrierError::BlockSpent) => self.reserve_block(&keyring).await?,
                Err(other) => return Err(other.into()),
            }
        }
    }

    pub async fn decrypt(&self, path: &str, blob: &[u8]) -> Result<SecretBytes> {
        let keyring = self.keyring();
        match keyring.decrypt(path, blob) {
            Err(BarrierError::UnknownTerm(_)) => {
                // Another replica rotated: pick up its terms, keeping our own block.
                let _guard = self.reserve.lock().await;
                let (stored, _) = self.load_keyring().await?;
                let plain = stored.decrypt(path, blob)?;
                if stored.active_term().number > self.keyring().active_term().number {
                    *self.keyring.write().expect("keyring lock poisoned") = Arc::new(stored);
                }
                Ok(plain)
            }
            other => Ok(other?),
        }
    }

    pub async fn rotate(&self) -> Result<u32> {
        let _guard = self.reserve.lock().await;
        let next = self
            .update_keyring(|stored| stored.rotated(now_unix()).with_new_block(now_unix()))
            .await?;
        Ok(next.active_term().number)
    }

    pub async fn get(&self, path: &str) -> Result<Option<Plain>> {
        METRICS.storage_read();
        let started = std::time::Instant::now();
        let entry = self.storage.get(path).await;
        METRICS.storage_latency(StorageOp::Get, started.elapsed());
        match entry? {
            None => Ok(None),
            Some(entry) => Ok(Some(Plain {
                bytes: self.decrypt(path, &entry.value).await?,
                version: entry.version,
            })),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<(T, u64)>> {
        match self.get(path).await? {
            None => Ok(None),
            Some(plain) => serde_json::from_slice(plain.bytes.expose())
                .map(|value| Some((value, plain.version)))
                .map_err(|e| {
                    Error::Internal(format!(
                        "stored value at {path} is not valid: {}",
                        crate::error::describe_json_error(&e)
                    ))
                }),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        METRICS.storage_list();
        let started = std::time::Instant::now();
        let listed = self.storage.list(prefix).await;
        METRICS.storage_latency(StorageOp::List, started.elapsed());
        Ok(listed?)
    }

    /// Encrypts and applies the writes atomically. A failed precondition is returned as the
    /// storage conflict so callers can tell it apart and retry or report.
    pub async fn transact(&self, writes: Vec<Write>) -> std::result::Result<(), TransactError> {
        let ops = self.to_ops(writes).await?;
        let started = std::time::Instant::now();
        let result = self.storage.transact(ops).await;
        METRICS.storage_latency(StorageOp::Transact, started.elapsed());
        METRICS.storage_transaction(matches!(result, Err(StorageError::Conflict { .. })));
        match result {
            Ok(()) => Ok(()),
            Err(StorageError::Conflict { .. }) => Err(TransactError::Conflict),
            Err(other) => Err(TransactError::Other(other.into())),
        }
    }

    /// Encrypts each write for its own path.
    pub async fn to_ops(&self, writes: Vec<Write>) -> Result<Vec<Op>> {
        let mut ops = Vec::with_capacity(writes.len());
        for write in writes {
            ops.push(match write {
                Write::Put {
                    path,
                    value,
                    precondition,
                } => Op::Put {
                    value: self.encrypt(&path, &value).await?,
                    key: path,
                    precondition,
                },
                Write::Delete { path, precondition } => Op::Delete {
                    key: path,
                    precondition,
                },
                Write::Check { path, precondition } => Op::Check {
                    key: path,
                    precondition,
                },
            });
        }
        Ok(ops)
    }

    /// Deletes every item below `prefix` (an unmounted engine's data), in transactions of at
    /// most [`MAX_TRANSACTION_OPS`] deletes.
    pub async fn delete_below(&self, prefix: &str) -> Result<()> {
        let mut pending = vec![prefix.to_owned()];
        let mut leaves = Vec::new();
        while let Some(current) = pending.pop() {
            for child in self.list(&current).await? {
                let full = format!("{current}{child}");
                if child.ends_with('/') {
                    pending.push(full);
                } else {
                    leaves.push(full);
                }
            }
        }
        for chunk in leaves.chunks(MAX_TRANSACTION_OPS) {
            let writes = chunk
                .iter()
                .map(|key| Write::delete(key.clone(), Precondition::None))
                .collect();
            self.write(writes).await?;
        }
        Ok(())
    }

    /// Writes that must not race: a conflict is an internal error here.
    pub async fn write(&self, writes: Vec<Write>) -> Result<()> {
        self.transact(writes).await.map_err(|e| match e {
            TransactError::Conflict => {
                Error::Unavailable("a concurrent update won; try again".into())
            }
            TransactError::Other(error) => error,
        })
    }
}

#[derive(Debug)]
pub enum TransactError {
    Conflict,
    Other(Error),
}

impl From<Error> for TransactError {
    fn from(error: Error) -> Self {
        TransactError::Other(error)
    }
}
