//! The rustls server configuration: certificate and key read from PEM files, re-read when they
//! change, and a pair used only when its private key belongs to its certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often a handshake may look at the files' modification times. A renewed pair is served
/// within this interval of being written.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Errors name the file and the problem, never the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: unusable private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The process-wide provider `main` installed, else ring (the one provider kinko links).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Reads the chain and the key and checks that the key is the certificate's (`keys_match`).
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.into(),
            reason: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: cert.into(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key {
            path: key.into(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.into(),
                key: key.into(),
            })
        }
        // The key cannot show its public half (no ring key type does this), so there is nothing
        // to compare: rustls's own `CertifiedKey::from_der` accepts the pair in this case too.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(other) => Err(TlsError::Read {
            path: cert.into(),
            reason: format!("unusable end-entity certificate: {other}"),
        }),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

/// Serves the certificate from files, picking up a renewed pair without a restart (cert-manager
/// rotates Secrets in place). A renewal that cannot be used — unreadable, or a key that does not
/// match the certificate, as while only one of the two files has been replaced — keeps the last
/// good pair; it is retried at every check and logged once per change of the files.
#[derive(Debug)]
struct ReloadingResolver {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<ResolverState>,
}

#[derive(Debug)]
struct ResolverState {
    current: Arc<CertifiedKey>,
    /// Modification times of the pair in `current`.
    stamps: Stamps,
    /// Modification times of the files when they last failed to load (logged once).
    failed: Option<Stamps>,
    checked: Instant,
}

impl ReloadingResolver {
    fn reload_if_changed(&self, state: &mut ResolverState) {
        if state.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        state.checked = Instant::now();
        let stamps = (modified(&self.cert), modified(&self.key));
        if stamps == state.stamps {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(fresh) => {
                tracing::info!(cert = %self.cert.display(), "reloaded TLS certificate");
                state.current = Arc::new(fresh);
                state.stamps = stamps;
                state.failed = None;
            }
            Err(error) => {
                if state.failed != Some(stamps) {
                    tracing::warn!(%error, "TLS certificate files changed but cannot be used; keeping the previous pair");
                    state.failed = Some(stamps);
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.reload_if_changed(&mut state);
        Some(state.current.clone())
    }
}

/// A server configuration (TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`) serving the pair in
/// `cert` (chain, leaf first) and `key`. Fails when either cannot be read or they do not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let stamps = (modified(cert), modified(key));
    let current = Arc::new(load_certified_key(cert, key)?);
    let resolver = ReloadingResolver {
        cert: cert.into(),
        key: key.into(),
        state: Mutex::new(ResolverState {
            current,
            stamps,
            failed: None,
            checked: Instant::now(),
        }),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, cert_key: &rcgen::KeyPair, file_key: &rcgen::KeyPair) {
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(cert_key)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), file_key.serialize_pem()).unwrap();
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        write_pair(dir.path(), &key, &key);
        let config =
            server_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_start_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        write_pair(dir.path(), &rcgen::KeyPair::generate().unwrap(), &other);
        let error =
            server_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("tls.key") && message.contains("tls.crt"),
            "{message}"
        );
        let pem = other.serialize_pem();
        let body = pem.lines().nth(1).unwrap();
        assert!(!message.contains(body), "the key is not echoed");
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let missing = server_config(&cert, &key).unwrap_err();
        assert!(matches!(missing, TlsError::Read { ref path, .. } if *path == cert));
        std::fs::write(&cert, "not PEM").unwrap();
        let empty = server_config(&cert, &key).unwrap_err();
        assert!(matches!(empty, TlsError::NoCertificate { .. }), "{empty}");
    }
}
