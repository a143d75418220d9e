//! Seals: what wraps the root key at rest. `file` (the embedded default) keeps a 256-bit key
//! in a 0600 file; `awskms` (cloud mode) asks AWS KMS. The wrapped root key is bound to the
//! cluster id, so a blob from one cluster never unseals another.

#[cfg(feature = "aws")]
pub mod awskms;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::barrier::{open_with_key, seal_with_key};
use crate::secret::Key256;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The seal could not be reached or refused; worth retrying later.
    #[error("seal {kind} unavailable: {reason}")]
    Unavailable { kind: &'static str, reason: String },
    /// The blob does not belong to this seal or cluster; retrying will not help.
    #[error("seal {kind} cannot unwrap the root key: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

#[async_trait]
pub trait Seal: Send + Sync + 'static {
    /// `type` in `sys/seal-status`.
    fn kind(&self) -> &'static str;
    async fn wrap(&self, root_key: &Key256, cluster_id: &str) -> Result<Vec<u8>, SealError>;
    async fn unwrap(&self, blob: &[u8], cluster_id: &str) -> Result<Key256, SealError>;
}

/// The embedded default: the key-encryption key lives in a file readable only by kinko.
pub struct FileSeal {
    key_file: PathBuf,
}

const KEY_FILE_PREFIX: &str = "kinko-file-seal-v1:";

impl FileSeal {
    pub fn new(key_file: &Path) -> Self {
        FileSeal {
            key_file: key_file.to_owned(),
        }
    }

    /// Creates the key file (0600) when it does not exist yet; used at `sys/init`.
    pub fn ensure_key(&self) -> Result<(), SealError> {
        if self.key_file.exists() {
            return self.load().map(drop);
        }
        let key = Key256::generate();
        let text =
            zeroize::Zeroizing::new(format!("{KEY_FILE_PREFIX}{}\n", hex::encode(key.expose())));
        write_private(&self.key_file, text.as_bytes()).map_err(|e| self.unavailable(e))
    }

    fn load(&self) -> Result<Key256, SealError> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&self.key_file).map_err(|e| self.unavailable(e))?,
        );
        let encoded = text
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or_else(|| self.malformed())?;
        let bytes = zeroize::Zeroizing::new(hex::decode(encoded).map_err(|_| self.malformed())?);
        Key256::from_slice(&bytes).ok_or_else(|| self.malformed())
    }

    fn unavailable(&self, error: std::io::Error) -> SealError {
        SealError::Unavailable {
            kind: "file",
            reason: format!("{}: {error}", self.key_file.display()),
        }
    }

    fn malformed(&self) -> SealError {
        SealError::Invalid {
            kind: "file",
            reason: format!("{} is not a kinko seal key file", self.key_file.display()),
        }
    }
}

fn aad(cluster_id: &str) -> Vec<u8> {
    format!("kinko/root-key\0{cluster_id}").into_bytes()
}

#[async_trait]
impl Seal for FileSeal {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn wrap(&self, root_key: &Key256, cluster_id: &str) -> Result<Vec<u8>, SealError> {
        let key = self.load()?;
        Ok(seal_with_key(&key, 0, &aad(cluster_id), root_key.expose()))
    }

    async fn unwrap(&self, blob: &[u8], cluster_id: &str) -> Result<Key256, SealError> {
        let key = self.load()?;
        let plain =
            open_with_key(&key, &aad(cluster_id), blob).map_err(|_| SealError::Invalid {
                kind: "file",
                reason: "the wrapped root key does not match this key file or cluster id".into(),
            })?;
        Key256::from_slice(plain.expose()).ok_or(SealError::Invalid {
            kind: "file",
            reason: "unwrapped root key has the wrong length".into(),
        })
    }
}

/// Writes a file only its owner can read, creating it exclusively.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wraps_and_unwraps_bound_to_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let seal = FileSeal::new(&dir.path().join("seal.key"));
        seal.ensure_key().unwrap();
        let root = Key256::generate();
        let blob = seal.wrap(&root, "cluster-a").await.unwrap();
        assert_eq!(seal.unwrap(&blob, "cluster-a").await.unwrap(), root);
        assert!(matches!(
            seal.unwrap(&blob, "cluster-b").await,
            Err(SealError::Invalid { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("seal.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn a_different_key_file_cannot_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileSeal::new(&dir.path().join("a.key"));
        let second = FileSeal::new(&dir.path().join("b.key"));
        first.ensure_key().unwrap();
        second.ensure_key().unwrap();
        let blob = first.wrap(&Key256::generate(), "c").await.unwrap();
        assert!(matches!(
            second.unwrap(&blob, "c").await,
            Err(SealError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn missing_or_garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSeal::new(&dir.path().join("none.key"));
        let error = missing.wrap(&Key256::generate(), "c").await.unwrap_err();
        assert!(matches!(error, SealError::Unavailable { .. }));
        assert!(error.to_string().contains("none.key"));
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let bad = FileSeal::new(&dir.path().join("bad.key"));
        assert!(matches!(bad.ensure_key(), Err(SealError::Invalid { .. })));
    }
}
