//! Assembly: turns a `Config` into a running server (storage, seal, core, TLS, router) and
//! keeps a sealed server trying to unseal itself, with capped back-off, instead of exiting.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SealConfig, StorageConfig, TlsSource};
use crate::core::{Core, InitRequest, InitResult};
use crate::error::Error;
use crate::seal::{FileSeal, Seal};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::Storage;

pub const AUTO_UNSEAL_MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Parts {
    pub core: Arc<Core>,
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA file clients should trust (dev mode only).
    pub dev_ca: Option<std::path::PathBuf>,
}

pub async fn assemble(config: &Config) -> anyhow::Result<Parts> {
    // Loaded once, and only when storage or seal is on AWS.
    #[cfg(feature = "aws")]
    let aws = tokio::sync::OnceCell::new();
    let storage: Arc<dyn Storage> = match &config.storage {
        StorageConfig::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            Arc::new(SqliteStorage::open(path)?)
        }
        #[cfg(feature = "aws")]
        StorageConfig::DynamoDb { table } => {
            Arc::new(crate::storage::dynamodb::DynamoStorage::new(
                aws_sdk_dynamodb::Client::new(aws.get_or_init(crate::aws::sdk_config).await),
                table,
            ))
        }
        #[cfg(not(feature = "aws"))]
        StorageConfig::DynamoDb { .. } => {
            anyhow::bail!("this build has no AWS support (feature aws)")
        }
    };
    crate::metrics::METRICS.set_storage_backend(storage.kind());
    let seal: Arc<dyn Seal> = match &config.seal {
        SealConfig::File { key_file } => {
            let seal = FileSeal::new(key_file);
            seal.ensure_key()?;
            Arc::new(seal)
        }
        #[cfg(feature = "aws")]
        SealConfig::AwsKms { key_id } => Arc::new(crate::seal::awskms::AwsKmsSeal::new(
            aws_sdk_kms::Client::new(aws.get_or_init(crate::aws::sdk_config).await),
            key_id,
        )),
        #[cfg(not(feature = "aws"))]
        SealConfig::AwsKms { .. } => anyhow::bail!("this build has no AWS support (feature aws)"),
    };
    let (tls, dev_ca) = match &config.tls {
        TlsSource::Files { cert, key } => (kinko_tls::server_config(cert, key)?, None),
        TlsSource::DevSelfSigned { dir } => {
            create_private_dir(dir)?;
            let paths = crate::dev_ca::ensure_dev_certificate(dir)?;
            (
                kinko_tls::server_config(&paths.cert, &paths.key)?,
                Some(paths.ca),
            )
        }
    };
    Ok(Parts {
        core: Core::new(storage, seal, &config.cluster_name),
        tls,
        dev_ca,
    })
}

/// Creates `dir` (and missing parents) with mode 0700. An existing directory is left as it
/// is: it may be shared (`/var/lib`, a mounted volume), and the files kinko puts in it are
/// 0600 themselves.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Dev mode: initialise on first start (returning the secrets to print once), unseal after.
pub async fn prepare_dev(
    core: &Core,
    root_token: Option<String>,
) -> anyhow::Result<Option<InitResult>> {
    if core.seal_config().await?.is_some() {
        core.unseal_with_seal().await?;
        return Ok(None);
    }
    let request = InitRequest {
        recovery_shares: 1,
        recovery_threshold: 1,
        root_token: root_token.map(crate::secret::SecretString::new),
        mount_secret_kv: true,
    };
    Ok(Some(core.initialize(request).await?))
}

/// Keeps trying to auto-unseal: right away, then with doubling back-off capped at a minute.
/// An uninitialised cluster is polled until some replica initialises it.
pub async fn auto_unseal(core: Arc<Core>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match core.unseal_with_seal().await {
            Ok(()) => return,
            Err(Error::NotInitialized) => {
                tracing::info!("not initialized yet: waiting for sys/init");
                backoff = Duration::from_secs(5);
            }
            Err(error) => {
                tracing::error!(seal = core.seal_kind(), %error, retry_in = ?backoff, "auto-unseal failed; staying sealed");
            }
        }
        tokio::time::sleep(backoff).await;
        if !core.is_sealed() {
            return;
        }
        backoff = (backoff * 2).min(AUTO_UNSEAL_MAX_BACKOFF);
    }
}
