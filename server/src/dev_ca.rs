//! Dev mode's TLS: a CA and a server certificate for localhost, generated once into the data
//! directory and reused on later starts, so clients keep trusting the same CA file.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("generating the dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

pub struct DevCertificate {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a server certificate for localhost / 127.0.0.1 / ::1, created once in `dir` and
/// reused on later starts so clients keep trusting the same CA file.
pub fn ensure_dev_certificate(dir: &Path) -> Result<DevCertificate, DevCaError> {
    let paths = DevCertificate {
        ca: dir.join("ca.pem"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    if paths.ca.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kinko dev CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kinko dev server");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let write = |path: &Path, text: &str| {
        let _ = std::fs::remove_file(path);
        crate::seal::write_private(path, text.as_bytes()).map_err(|e| DevCaError::Write {
            path: path.into(),
            reason: e.to_string(),
        })
    };
    write(&paths.key, &leaf_key.serialize_pem())?;
    write(&paths.cert, &format!("{}{}", leaf.pem(), ca.pem()))?;
    write(&paths.ca, &ca.pem())?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_pair_is_created_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificate(dir.path()).unwrap();
        let ca = std::fs::read(&first.ca).unwrap();
        kinko_tls::server_config(&first.cert, &first.key).unwrap();
        let again = ensure_dev_certificate(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(&again.ca).unwrap(),
            ca,
            "the same CA on a restart"
        );
    }
}
