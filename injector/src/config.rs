//! Configuration: `KINKO_INJECTOR_*` variables parsed with envy, each error naming its variable.
//! The CA bundle is read here, at start, so a Pod never waits on a file the webhook cannot read.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use kinko_spec::shorten;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde::Deserialize;

use crate::mutate::Settings;

/// Namespaces never injected unless the operator lists others (its own is always added).
pub const DEFAULT_EXCLUDED_NAMESPACES: &str = "kube-system,kube-public,kube-node-lease";
/// Kubernetes accepts projected token lifetimes from 10 minutes to 2^32 seconds.
pub const MIN_TOKEN_EXPIRATION: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub settings: Settings,
    /// Resolve the ENTRYPOINT of containers without `command` from their registry.
    pub image_lookup: bool,
    /// A `dockerconfigjson` file with registry credentials for that lookup.
    pub registry_auth_file: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP for that lookup (tests, local mirrors).
    pub plain_http_registries: BTreeSet<String>,
    /// `KINKO_INJECTOR_*` variables that are none of [`VARIABLES`] (misspelt?), reported at start.
    pub unknown_variables: Vec<String>,
}

/// Every variable the injector reads.
pub const VARIABLES: [&str; 12] = [
    "KINKO_INJECTOR_LISTEN_ADDR",
    "KINKO_INJECTOR_TLS_CERT_FILE",
    "KINKO_INJECTOR_TLS_KEY_FILE",
    "KINKO_INJECTOR_KINKO_ADDR",
    "KINKO_INJECTOR_KINKO_CA_FILE",
    "KINKO_INJECTOR_ENVRUN_IMAGE",
    "KINKO_INJECTOR_AUDIENCE",
    "KINKO_INJECTOR_TOKEN_EXPIRATION",
    "KINKO_INJECTOR_EXCLUDED_NAMESPACES",
    "KINKO_INJECTOR_IMAGE_LOOKUP",
    "KINKO_INJECTOR_REGISTRY_AUTH_FILE",
    "KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn error(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Raw {
    listen_addr: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    kinko_addr: Option<String>,
    kinko_ca_file: Option<String>,
    envrun_image: Option<String>,
    audience: Option<String>,
    token_expiration: Option<String>,
    excluded_namespaces: Option<String>,
    image_lookup: Option<String>,
    registry_auth_file: Option<String>,
    plain_http_registries: Option<String>,
}

fn required(
    value: Option<String>,
    variable: &'static str,
    what: &str,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(error(variable, format!("is not set: expected {what}"))),
    }
}

fn list(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `600`, `600s`, `10m`, `1h`.
fn seconds(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().ok()?;
    n.checked_mul(match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    })
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut unknown_variables: Vec<String> = vars
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("KINKO_INJECTOR_") && !VARIABLES.contains(&k.as_str()))
            .map(|k| shorten(k))
            .collect();
        unknown_variables.sort();
        let own_namespace = vars
            .iter()
            .find(|(k, _)| k == "POD_NAMESPACE")
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let raw: Raw = envy::prefixed("KINKO_INJECTOR_")
            .from_iter(
                vars.into_iter()
                    .filter(|(k, _)| k.starts_with("KINKO_INJECTOR_")),
            )
            .map_err(|e| error("KINKO_INJECTOR_*", format!("cannot be read: {e}")))?;

        let listen = match raw.listen_addr.as_deref().map(str::trim) {
            None | Some("") => SocketAddr::from(([0, 0, 0, 0], 8443)),
            Some(text) => text.parse().map_err(|_| {
                error(
                    "KINKO_INJECTOR_LISTEN_ADDR",
                    format!(
                        "expected IP:PORT such as 0.0.0.0:8443, got {:?}",
                        shorten(text)
                    ),
                )
            })?,
        };
        let tls_cert = PathBuf::from(required(
            raw.tls_cert_file,
            "KINKO_INJECTOR_TLS_CERT_FILE",
            "the path of the webhook's certificate chain (PEM)",
        )?);
        let tls_key = PathBuf::from(required(
            raw.tls_key_file,
            "KINKO_INJECTOR_TLS_KEY_FILE",
            "the path of the webhook's private key (PEM)",
        )?);

        let kinko_addr = required(
            raw.kinko_addr,
            "KINKO_INJECTOR_KINKO_ADDR",
            "the https:// address Pods use to reach kinko",
        )?;
        let host = kinko_addr.strip_prefix("https://").unwrap_or("");
        if host.is_empty()
            || host.starts_with('/')
            || kinko_addr
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '$')
        {
            return Err(error(
                "KINKO_INJECTOR_KINKO_ADDR",
                format!(
                    "expected an https:// URL such as https://kinko.kinko-system.svc:8200, got {:?}",
                    shorten(&kinko_addr)
                ),
            ));
        }

        let ca_file = required(
            raw.kinko_ca_file,
            "KINKO_INJECTOR_KINKO_CA_FILE",
            "the path of the CA bundle (PEM) Pods must trust for kinko",
        )?;
        let ca_pem = std::fs::read_to_string(&ca_file).map_err(|e| {
            error(
                "KINKO_INJECTOR_KINKO_CA_FILE",
                format!("cannot read {ca_file}: {e}"),
            )
        })?;
        let certificates = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                error(
                    "KINKO_INJECTOR_KINKO_CA_FILE",
                    format!("{ca_file} is not PEM: {e}"),
                )
            })?;
        if certificates.is_empty() {
            return Err(error(
                "KINKO_INJECTOR_KINKO_CA_FILE",
                format!("{ca_file} holds no CERTIFICATE"),
            ));
        }

        let envrun_image = required(
            raw.envrun_image,
            "KINKO_INJECTOR_ENVRUN_IMAGE",
            "the image holding the static envrun at /envrun, e.g. registry.example.com/kinko/envrun:0.1.0",
        )?;
        if envrun_image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(error(
                "KINKO_INJECTOR_ENVRUN_IMAGE",
                format!("{:?} is not an image reference", shorten(&envrun_image)),
            ));
        }
        let audience = match raw.audience.as_deref().map(str::trim) {
            None | Some("") => "kinko".to_owned(),
            Some(a) if a.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(error(
                    "KINKO_INJECTOR_AUDIENCE",
                    format!("{:?} has spaces or control characters", shorten(a)),
                ))
            }
            Some(a) => a.to_owned(),
        };
        let token_expiration_seconds = match raw.token_expiration.as_deref().map(str::trim) {
            None | Some("") => MIN_TOKEN_EXPIRATION as u32,
            Some(text) => seconds(text)
                .filter(|s| (MIN_TOKEN_EXPIRATION..=u64::from(u32::MAX)).contains(s))
                .map(|s| s as u32)
                .ok_or_else(|| {
                    error(
                        "KINKO_INJECTOR_TOKEN_EXPIRATION",
                        format!(
                            "expected seconds (or 10m, 1h) of at least {MIN_TOKEN_EXPIRATION}, got {:?}",
                            shorten(text)
                        ),
                    )
                })?,
        };
        let mut excluded_namespaces = list(
            raw.excluded_namespaces
                .as_deref()
                .unwrap_or(DEFAULT_EXCLUDED_NAMESPACES),
        );
        if let Some(own) = own_namespace {
            excluded_namespaces.insert(own);
        }
        let image_lookup = match raw.image_lookup.as_deref().map(str::trim) {
            None | Some("") | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(error(
                    "KINKO_INJECTOR_IMAGE_LOOKUP",
                    format!("expected true or false, got {:?}", shorten(other)),
                ))
            }
        };
        let registry_auth_file = match raw.registry_auth_file.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    error(
                        "KINKO_INJECTOR_REGISTRY_AUTH_FILE",
                        format!("cannot read {path}: {e}"),
                    )
                })?;
                let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    error(
                        "KINKO_INJECTOR_REGISTRY_AUTH_FILE",
                        format!("{path} is not JSON: {e}"),
                    )
                })?;
                if !parsed["auths"].is_object() {
                    return Err(error(
                        "KINKO_INJECTOR_REGISTRY_AUTH_FILE",
                        format!("{path} has no \"auths\" object (expected a .dockerconfigjson)"),
                    ));
                }
                Some(PathBuf::from(path))
            }
        };
        let plain_http_registries = list(raw.plain_http_registries.as_deref().unwrap_or(""));
        if let Some(bad) = plain_http_registries
            .iter()
            .find(|r| r.contains('/') || r.chars().any(|c| c.is_whitespace()))
        {
            return Err(error(
                "KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES",
                format!("expected host[:port] entries, got {:?}", shorten(bad)),
            ));
        }
        Ok(Config {
            listen,
            tls_cert,
            tls_key,
            settings: Settings {
                kinko_addr,
                ca_pem,
                envrun_image,
                audience,
                token_expiration_seconds,
                excluded_namespaces,
            },
            image_lookup,
            registry_auth_file,
            plain_http_registries,
            unknown_variables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0cXtbB0bkTwYpGb0Lm9ClzGCxowCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";

    fn base(ca: &std::path::Path) -> Vec<(String, String)> {
        [
            ("KINKO_INJECTOR_TLS_CERT_FILE", "/tls/tls.crt"),
            ("KINKO_INJECTOR_TLS_KEY_FILE", "/tls/tls.key"),
            (
                "KINKO_INJECTOR_KINKO_ADDR",
                "https://kinko.kinko-system.svc:8200",
            ),
            ("KINKO_INJECTOR_KINKO_CA_FILE", ca.to_str().unwrap()),
            (
                "KINKO_INJECTOR_ENVRUN_IMAGE",
                "registry.example.com/kinko/envrun:0.1.0",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(ca: &std::path::Path, extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut vars = base(ca);
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        Config::from_vars(vars)
    }

    fn ca_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, CA).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults() {
        let (_dir, ca) = ca_file();
        let config = with(&ca, &[("POD_NAMESPACE", "kinko-system")]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(config.settings.audience, "kinko");
        assert_eq!(config.settings.token_expiration_seconds, 600);
        assert_eq!(config.settings.ca_pem, CA);
        let excluded: Vec<_> = config
            .settings
            .excluded_namespaces
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            excluded,
            [
                "kinko-system",
                "kube-node-lease",
                "kube-public",
                "kube-system"
            ]
        );
        assert!(config.image_lookup);
        assert!(config.registry_auth_file.is_none());
        assert!(config.plain_http_registries.is_empty());
        assert!(config.unknown_variables.is_empty());
        let misspelt = with(&ca, &[("KINKO_INJECTOR_IMAGE_LOOKUPS", "false")]).unwrap();
        assert_eq!(misspelt.unknown_variables, ["KINKO_INJECTOR_IMAGE_LOOKUPS"]);
        assert!(misspelt.image_lookup, "a misspelt variable changes nothing");
    }

    #[test]
    fn each_error_names_its_variable() {
        let (dir, ca) = ca_file();
        let missing_ca = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let auth = dir.path().join("auth.json");
        std::fs::write(&auth, "{}").unwrap();
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("KINKO_INJECTOR_LISTEN_ADDR", "8443")],
                "KINKO_INJECTOR_LISTEN_ADDR",
            ),
            (
                vec![("KINKO_INJECTOR_TLS_CERT_FILE", "")],
                "KINKO_INJECTOR_TLS_CERT_FILE",
            ),
            (
                vec![("KINKO_INJECTOR_KINKO_ADDR", "http://kinko:8200")],
                "KINKO_INJECTOR_KINKO_ADDR",
            ),
            (
                vec![("KINKO_INJECTOR_KINKO_ADDR", "https://")],
                "KINKO_INJECTOR_KINKO_ADDR",
            ),
            (
                vec![("KINKO_INJECTOR_KINKO_CA_FILE", missing_ca.to_str().unwrap())],
                "KINKO_INJECTOR_KINKO_CA_FILE",
            ),
            (
                vec![("KINKO_INJECTOR_KINKO_CA_FILE", not_pem.to_str().unwrap())],
                "KINKO_INJECTOR_KINKO_CA_FILE",
            ),
            (
                vec![("KINKO_INJECTOR_ENVRUN_IMAGE", " ")],
                "KINKO_INJECTOR_ENVRUN_IMAGE",
            ),
            (
                vec![("KINKO_INJECTOR_TOKEN_EXPIRATION", "60")],
                "KINKO_INJECTOR_TOKEN_EXPIRATION",
            ),
            (
                vec![("KINKO_INJECTOR_TOKEN_EXPIRATION", "soon")],
                "KINKO_INJECTOR_TOKEN_EXPIRATION",
            ),
            (
                vec![("KINKO_INJECTOR_IMAGE_LOOKUP", "yes")],
                "KINKO_INJECTOR_IMAGE_LOOKUP",
            ),
            (
                vec![("KINKO_INJECTOR_REGISTRY_AUTH_FILE", auth.to_str().unwrap())],
                "KINKO_INJECTOR_REGISTRY_AUTH_FILE",
            ),
            (
                vec![("KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES", "http://x/")],
                "KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES",
            ),
        ];
        for (extra, variable) in cases {
            let error = with(&ca, &extra).expect_err(variable);
            assert_eq!(error.variable, variable, "{extra:?}: {error}");
            assert!(error.to_string().starts_with(variable));
        }
    }

    #[test]
    fn explicit_values() {
        let (_dir, ca) = ca_file();
        let config = with(
            &ca,
            &[
                ("KINKO_INJECTOR_LISTEN_ADDR", "127.0.0.1:0"),
                ("KINKO_INJECTOR_TOKEN_EXPIRATION", "1h"),
                ("KINKO_INJECTOR_EXCLUDED_NAMESPACES", " a , b,"),
                ("KINKO_INJECTOR_IMAGE_LOOKUP", "false"),
                (
                    "KINKO_INJECTOR_PLAIN_HTTP_REGISTRIES",
                    "localhost:5000,mirror",
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.settings.token_expiration_seconds, 3600);
        assert_eq!(config.settings.excluded_namespaces.len(), 2);
        assert!(!config.image_lookup);
        assert!(config.plain_http_registries.contains("localhost:5000"));
    }
}
