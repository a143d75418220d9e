//! The sealing state under the barrier: the root secret (`core/sealing-root`, created on first
//! use), the epochs (`core/sealed-epochs`), the root secrets imported from other clusters
//! (`core/sealed-imports/<cluster id>`), plus the per-token rate limit of `compare`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::transfer::BundleHeader;
use super::{valid_cluster_id, SealingRoot};
use crate::encrypted::{EncryptedStorage, Write};
use crate::error::{Error, Result};
use crate::ratelimit::FixedWindow;
use crate::retry::{on_conflict, settle};
use crate::secret::Key256;
use crate::storage::Precondition;

pub const ROOT_PATH: &str = "core/sealing-root";
pub const EPOCHS_PATH: &str = "core/sealed-epochs";
pub const IMPORTS_PREFIX: &str = "core/sealed-imports/";

/// `current` seals new values; values of an epoch below `retired_before` no longer open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Epochs {
    pub current: u64,
    pub retired_before: u64,
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs {
            current: 1,
            retired_before: 0,
        }
    }
}

impl Epochs {
    /// Whether a value sealed at `epoch` may still be opened.
    pub fn opens(&self, epoch: u64) -> bool {
        epoch >= 1 && epoch >= self.retired_before && epoch <= self.current
    }
}

/// Per-replica state of the sealing feature; dropped (and zeroized) with the unsealed state.
pub struct Sealing {
    root: tokio::sync::OnceCell<SealingRoot>,
    compare_limit: FixedWindow,
}

impl Default for Sealing {
    fn default() -> Self {
        Sealing {
            root: Default::default(),
            compare_limit: FixedWindow::new(COMPARE_LIMIT, COMPARE_WINDOW),
        }
    }
}

impl Sealing {
    /// The root secret, read once (or created on first use, racing replicas agreeing on the
    /// winner's through an `Absent` precondition).
    pub async fn root(&self, store: &EncryptedStorage) -> Result<&SealingRoot> {
        self.root
            .get_or_try_init(|| async {
                on_conflict("the sealing root secret", || async {
                    if let Some(plain) = store.get(ROOT_PATH).await? {
                        let key = Key256::from_slice(plain.bytes.expose()).ok_or_else(|| {
                            Error::Internal("the stored sealing root secret is malformed".into())
                        })?;
                        return Ok(crate::retry::Attempt::Done(SealingRoot::new(key)));
                    }
                    let key = Key256::generate();
                    let written = store
                        .transact(vec![Write::Put {
                            path: ROOT_PATH.to_owned(),
                            value: Zeroizing::new(key.expose().to_vec()),
                            precondition: Precondition::Absent,
                        }])
                        .await;
                    // On a conflict another replica won: read its secret on the next attempt.
                    settle(written, SealingRoot::new(key))
                })
                .await
            })
            .await
    }

    /// The epochs as stored (the defaults before the first rotation), with the version to
    /// write against (`None`: absent).
    pub async fn epochs(&self, store: &EncryptedStorage) -> Result<(Epochs, Option<u64>)> {
        match store.get_json::<Epochs>(EPOCHS_PATH).await? {
            Some((epochs, version)) => Ok((epochs, Some(version))),
            None => Ok((Epochs::default(), None)),
        }
    }

    /// Starts a new epoch; with `retire_before`, values of older epochs stop opening.
    pub async fn rotate(
        &self,
        store: &EncryptedStorage,
        retire_before: Option<u64>,
    ) -> Result<Epochs> {
        on_conflict("the sealing epochs", || async {
            let (stored, version) = self.epochs(store).await?;
            let current = stored.current + 1;
            if current > super::MAX_EPOCH {
                return Err(Error::bad_request("the sealing epoch cannot grow further"));
            }
            let retired_before = match retire_before {
                None => stored.retired_before,
                Some(m) if m > current => {
                    return Err(Error::bad_request(
                        "field \"retire_before\" must not be above the new epoch",
                    ))
                }
                Some(m) => m.max(stored.retired_before),
            };
            let next = Epochs {
                current,
                retired_before,
            };
            let precondition = version.map_or(Precondition::Absent, Precondition::Version);
            let written = store
                .transact(vec![Write::put_json(EPOCHS_PATH, &next, precondition)])
                .await;
            settle(written, next)
        })
        .await
    }

    /// The root secret and epochs imported for another cluster's values, if any.
    pub async fn imported(
        &self,
        store: &EncryptedStorage,
        cluster_id: &str,
    ) -> Result<Option<(SealingRoot, Epochs)>> {
        if !valid_cluster_id(cluster_id) {
            return Ok(None);
        }
        let Some(plain) = store.get(&format!("{IMPORTS_PREFIX}{cluster_id}")).await? else {
            return Ok(None);
        };
        decode_import(plain.bytes.expose()).map(Some)
    }

    /// Keeps another cluster's root secret so its values open here. Importing the same secret
    /// again takes the newer epochs (a retirement is never undone); a different secret for a
    /// cluster id already imported is refused rather than replacing it.
    pub async fn import(
        &self,
        store: &EncryptedStorage,
        header: &BundleHeader,
        root: &SealingRoot,
    ) -> Result<Epochs> {
        let path = format!("{IMPORTS_PREFIX}{}", header.from_cluster_id);
        on_conflict("an imported sealing key", || async {
            let stored = store.get(&path).await?;
            let mut epochs = Epochs {
                current: header.current,
                retired_before: header.retired_before,
            };
            let precondition = match &stored {
                None => Precondition::Absent,
                Some(plain) => {
                    let (existing, old) = decode_import(plain.bytes.expose())?;
                    if existing.expose() != root.expose() {
                        return Err(Error::BadRequest(format!(
                            "another sealing key of cluster {} is already imported",
                            header.from_cluster_id
                        )));
                    }
                    epochs.current = epochs.current.max(old.current);
                    epochs.retired_before = epochs.retired_before.max(old.retired_before);
                    Precondition::Version(plain.version)
                }
            };
            let mut value = Zeroizing::new(root.expose().expose().to_vec());
            value.extend_from_slice(
                &serde_json::to_vec(&epochs).expect("in-memory JSON serialisation cannot fail"),
            );
            let written = store
                .transact(vec![Write::Put {
                    path: path.clone(),
                    value,
                    precondition,
                }])
                .await;
            settle(written, epochs)
        })
        .await
    }

    /// Forgets an imported root secret; `false` if there was none.
    pub async fn remove_import(&self, store: &EncryptedStorage, cluster_id: &str) -> Result<bool> {
        let path = format!("{IMPORTS_PREFIX}{cluster_id}");
        on_conflict("an imported sealing key", || async {
            let Some(plain) = store.get(&path).await? else {
                return Ok(crate::retry::Attempt::Done(false));
            };
            let written = store
                .transact(vec![Write::delete(
                    path.clone(),
                    Precondition::Version(plain.version),
                )])
                .await;
            settle(written, true)
        })
        .await
    }

    /// Counts one `compare` by the token `who`; `Err(seconds)` when over the limit.
    pub fn spend_compare(&self, who: &str) -> std::result::Result<(), u64> {
        self.compare_limit.spend(who, Instant::now())
    }
}

/// `root (32 bytes) | epochs JSON`.
fn decode_import(bytes: &[u8]) -> Result<(SealingRoot, Epochs)> {
    let malformed = || Error::Internal("a stored imported sealing key is malformed".into());
    if bytes.len() < 32 {
        return Err(malformed());
    }
    let (root, epochs) = bytes.split_at(32);
    let key = Key256::from_slice(root).ok_or_else(malformed)?;
    let epochs = serde_json::from_slice(epochs).map_err(|_| malformed())?;
    Ok((SealingRoot::new(key), epochs))
}

/// Attempts of `sealed/compare` per token and window, on one replica.
pub const COMPARE_LIMIT: u32 = 10;
pub const COMPARE_WINDOW: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_open_only_between_retired_and_current() {
        let epochs = Epochs {
            current: 3,
            retired_before: 2,
        };
        assert!(!epochs.opens(0));
        assert!(!epochs.opens(1));
        assert!(epochs.opens(2));
        assert!(epochs.opens(3));
        assert!(!epochs.opens(4));
    }
}
