//! The `awskms` seal: the root key is encrypted by an AWS KMS key, bound to the cluster id by
//! the KMS encryption context, so a blob copied to another cluster's table never decrypts.

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;

use super::{Seal, SealError};
use crate::aws::{describe, is_transient};
use crate::secret::Key256;

/// The encryption context key; CloudTrail shows it beside every Decrypt of the root key.
pub const CONTEXT_KEY: &str = "kinko:cluster-id";

pub struct AwsKmsSeal {
    client: Client,
    key_id: String,
}

impl AwsKmsSeal {
    pub fn new(client: Client, key_id: impl Into<String>) -> AwsKmsSeal {
        AwsKmsSeal {
            client,
            key_id: key_id.into(),
        }
    }

    /// Names the key and the AWS error; transient and access errors are worth retrying
    /// (KMS comes back, an IAM policy gets fixed), a ciphertext that does not decrypt is not.
    fn failure<E>(&self, operation: &str, error: aws_sdk_kms::error::SdkError<E>) -> SealError
    where
        E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let reason = format!(
            "KMS {operation} with key {}: {}",
            self.key_id,
            describe(&error)
        );
        let invalid = !is_transient(&error)
            && matches!(
                error.as_service_error().and_then(|e| e.code()),
                Some("InvalidCiphertextException" | "IncorrectKeyException")
            );
        if invalid {
            SealError::Invalid {
                kind: "awskms",
                reason: format!(
                    "{reason} (the wrapped root key belongs to another key or cluster id)"
                ),
            }
        } else {
            SealError::Unavailable {
                kind: "awskms",
                reason,
            }
        }
    }
}

#[async_trait]
impl Seal for AwsKmsSeal {
    fn kind(&self) -> &'static str {
        "awskms"
    }

    async fn wrap(&self, root_key: &Key256, cluster_id: &str) -> Result<Vec<u8>, SealError> {
        let output = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(root_key.expose().to_vec()))
            .encryption_context(CONTEXT_KEY, cluster_id)
            .send()
            .await;
        crate::metrics::METRICS.kms_call(false, output.is_ok());
        let output = output.map_err(|e| self.failure("Encrypt", e))?;
        output
            .ciphertext_blob()
            .map(|blob| blob.as_ref().to_vec())
            .ok_or_else(|| SealError::Unavailable {
                kind: "awskms",
                reason: format!(
                    "KMS Encrypt with key {} returned no ciphertext",
                    self.key_id
                ),
            })
    }

    async fn unwrap(&self, blob: &[u8], cluster_id: &str) -> Result<Key256, SealError> {
        let output = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .encryption_context(CONTEXT_KEY, cluster_id)
            .send()
            .await;
        crate::metrics::METRICS.kms_call(true, output.is_ok());
        let output = output.map_err(|e| self.failure("Decrypt", e))?;
        let plaintext = zeroize::Zeroizing::new(
            output
                .plaintext()
                .map(|p| p.as_ref().to_vec())
                .unwrap_or_default(),
        );
        Key256::from_slice(&plaintext).ok_or(SealError::Invalid {
            kind: "awskms",
            reason: format!(
                "KMS Decrypt with key {} returned {} bytes, not a 256-bit root key",
                self.key_id,
                plaintext.len()
            ),
        })
    }
}
