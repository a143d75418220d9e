//! Configuration: `KINKO_*` environment variables parsed with envy into one typed struct, with
//! one clear line naming the variable when something is missing or wrong.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use kinko_tls::serve::MAX_CONNECTIONS;

/// Request bodies up to 1 MiB, as the security checklist asks; Vault's default is 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest `KINKO_MAX_CONNECTIONS` accepted (each connection is a file descriptor).
const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Dev mode: a CA and certificate generated into the data dir.
    DevSelfSigned {
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    Sqlite {
        path: PathBuf,
    },
    /// Region, credentials and endpoint come from the standard AWS chain.
    DynamoDb {
        table: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealConfig {
    File { key_file: PathBuf },
    AwsKms { key_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsSource,
    pub storage: StorageConfig,
    pub seal: SealConfig,
    pub cluster_name: String,
    pub max_request_bytes: usize,
    /// Open connections the HTTPS listener holds at once; more are closed on accept.
    pub max_connections: usize,
}

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

/// Every variable arrives as text; the typed parsing below says which one is wrong and why.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    listen_addr: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    storage: Option<String>,
    sqlite_path: Option<String>,
    dynamodb_table: Option<String>,
    seal: Option<String>,
    seal_key_file: Option<String>,
    kms_key_id: Option<String>,
    cluster_name: Option<String>,
    max_request_bytes: Option<String>,
    max_connections: Option<String>,
}

const KNOWN: [&str; 12] = [
    "LISTEN_ADDR",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "STORAGE",
    "SQLITE_PATH",
    "DYNAMODB_TABLE",
    "SEAL",
    "SEAL_KEY_FILE",
    "KMS_KEY_ID",
    "CLUSTER_NAME",
    "MAX_REQUEST_BYTES",
    "MAX_CONNECTIONS",
];
/// Read by other kinko programs (envrun, the CLI) or by logging; not server settings.
const OTHERS: [&str; 6] = [
    "LOG",
    "ADDR",
    "TOKEN",
    "CACERT",
    "DEV_ROOT_TOKEN",
    "TEST_TOOLS",
];

fn required_path(
    value: Option<String>,
    variable: &'static str,
    what: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(PathBuf::from(v)),
        _ => Err(error(variable, format!("is not set: expected {what}"))),
    }
}

/// DynamoDB table names: 3 to 255 of `a-z A-Z 0-9 _ - .`; the default is `kinko`.
fn dynamodb_table_name(value: Option<String>) -> Result<String, ConfigError> {
    let name = value
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "kinko".into());
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if (3..=255).contains(&name.len()) && name.chars().all(allowed) {
        Ok(name)
    } else {
        Err(error(
            "KINKO_DYNAMODB_TABLE",
            format!("expected 3 to 255 of a-z, A-Z, 0-9, '_', '-', '.'; got {name:?}"),
        ))
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("KINKO_"))
            .collect();
        for (name, _) in &vars {
            let short = &name["KINKO_".len()..];
            if !KNOWN.contains(&short) && !OTHERS.contains(&short) {
                tracing::warn!(variable = %name, "unknown KINKO_ variable ignored (a typo?)");
            }
        }
        let raw: Raw = envy::prefixed("KINKO_")
            .from_iter(vars)
            .map_err(|e| error("KINKO_*", format!("cannot be read: {e}")))?;

        let listen = match raw.listen_addr.as_deref() {
            None | Some("") => SocketAddr::from(([127, 0, 0, 1], 8200)),
            Some(text) => text.parse().map_err(|_| {
                error(
                    "KINKO_LISTEN_ADDR",
                    format!("expected IP:PORT such as 0.0.0.0:8200, got {text:?}"),
                )
            })?,
        };
        let tls = TlsSource::Files {
            cert: required_path(
                raw.tls_cert_file,
                "KINKO_TLS_CERT_FILE",
                "the path of the server certificate chain (PEM)",
            )?,
            key: required_path(
                raw.tls_key_file,
                "KINKO_TLS_KEY_FILE",
                "the path of the server private key (PEM)",
            )?,
        };
        let storage = match raw.storage.as_deref().unwrap_or("sqlite") {
            "sqlite" => StorageConfig::Sqlite {
                path: required_path(
                    raw.sqlite_path,
                    "KINKO_SQLITE_PATH",
                    "the path of the SQLite database file",
                )?,
            },
            "dynamodb" => StorageConfig::DynamoDb {
                table: dynamodb_table_name(raw.dynamodb_table)?,
            },
            other => {
                return Err(error(
                    "KINKO_STORAGE",
                    format!("expected one of: sqlite, dynamodb; got {other:?}"),
                ))
            }
        };
        let seal = match raw.seal.as_deref().unwrap_or("file") {
            "file" => SealConfig::File {
                key_file: required_path(
                    raw.seal_key_file,
                    "KINKO_SEAL_KEY_FILE",
                    "the path of the seal key file",
                )?,
            },
            "awskms" => SealConfig::AwsKms {
                key_id: match raw.kms_key_id {
                    Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
                    _ => {
                        return Err(error(
                            "KINKO_KMS_KEY_ID",
                            "is not set: expected the KMS key id, ARN or alias/NAME",
                        ))
                    }
                },
            },
            other => {
                return Err(error(
                    "KINKO_SEAL",
                    format!("expected one of: file, awskms; got {other:?}"),
                ))
            }
        };
        let cluster_name = raw
            .cluster_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "kinko".into());
        if cluster_name.len() > 128 || cluster_name.chars().any(char::is_control) {
            return Err(error(
                "KINKO_CLUSTER_NAME",
                "expected at most 128 printable characters",
            ));
        }
        let max_request_bytes = match raw.max_request_bytes.as_deref() {
            None | Some("") => DEFAULT_MAX_BODY_BYTES,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    error(
                        "KINKO_MAX_REQUEST_BYTES",
                        format!("expected a byte count from 1024 to 67108864, got {text:?}"),
                    )
                })?,
        };
        let max_connections = match raw.max_connections.as_deref() {
            None | Some("") => MAX_CONNECTIONS,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS_LIMIT).contains(n))
                .ok_or_else(|| {
                    error(
                        "KINKO_MAX_CONNECTIONS",
                        format!(
                            "expected a connection count from 1 to {MAX_CONNECTIONS_LIMIT}, got {text:?}"
                        ),
                    )
                })?,
        };
        Ok(Config {
            listen,
            tls,
            storage,
            seal,
            cluster_name,
            max_request_bytes,
            max_connections,
        })
    }

    /// `kinko server --dev`: everything inside one data directory.
    pub fn dev(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            listen,
            tls: TlsSource::DevSelfSigned {
                dir: data_dir.clone(),
            },
            storage: StorageConfig::Sqlite {
                path: data_dir.join("kinko.db"),
            },
            seal: SealConfig::File {
                key_file: data_dir.join("seal.key"),
            },
            cluster_name: "kinko-dev".into(),
            max_request_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: [(&str, &str); 4] = [
        ("KINKO_TLS_CERT_FILE", "/etc/kinko/tls.crt"),
        ("KINKO_TLS_KEY_FILE", "/etc/kinko/tls.key"),
        ("KINKO_SQLITE_PATH", "/var/lib/kinko/kinko.db"),
        ("KINKO_SEAL_KEY_FILE", "/var/lib/kinko/seal.key"),
    ];

    #[test]
    fn minimal_configuration_with_defaults() {
        let config = Config::from_vars(vars(&MINIMAL)).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8200".parse().unwrap());
        assert_eq!(
            config.storage,
            StorageConfig::Sqlite {
                path: "/var/lib/kinko/kinko.db".into()
            }
        );
        assert_eq!(config.cluster_name, "kinko");
        assert_eq!(config.max_request_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(config.max_connections, MAX_CONNECTIONS);
        let mut capped = vars(&MINIMAL);
        capped.push(("KINKO_MAX_CONNECTIONS".into(), "64".into()));
        assert_eq!(Config::from_vars(capped).unwrap().max_connections, 64);
    }

    #[test]
    fn each_error_names_its_variable() {
        let without = |name: &str| -> Vec<(String, String)> {
            vars(&MINIMAL)
                .into_iter()
                .filter(|(k, _)| k != name)
                .collect()
        };
        for name in [
            "KINKO_TLS_CERT_FILE",
            "KINKO_TLS_KEY_FILE",
            "KINKO_SQLITE_PATH",
            "KINKO_SEAL_KEY_FILE",
        ] {
            let err = Config::from_vars(without(name)).unwrap_err();
            assert_eq!(err.variable, name);
            assert!(err.to_string().starts_with(name) && err.to_string().contains("is not set"));
        }
        let with = |extra: (&str, &str)| {
            let mut all = vars(&MINIMAL);
            all.push((extra.0.into(), extra.1.into()));
            Config::from_vars(all).unwrap_err()
        };
        assert_eq!(
            with(("KINKO_LISTEN_ADDR", "localhost")).variable,
            "KINKO_LISTEN_ADDR"
        );
        assert_eq!(with(("KINKO_STORAGE", "etcd")).variable, "KINKO_STORAGE");
        assert_eq!(with(("KINKO_SEAL", "shamir")).variable, "KINKO_SEAL");
        assert_eq!(
            with(("KINKO_MAX_REQUEST_BYTES", "-1")).variable,
            "KINKO_MAX_REQUEST_BYTES"
        );
        for bad in ["0", "-1", "many", "99999999"] {
            assert_eq!(
                with(("KINKO_MAX_CONNECTIONS", bad)).variable,
                "KINKO_MAX_CONNECTIONS"
            );
        }
        assert!(with(("KINKO_STORAGE", "etcd"))
            .to_string()
            .contains("sqlite"));
    }

    #[test]
    fn cloud_mode() {
        let cloud = vars(&[
            ("KINKO_TLS_CERT_FILE", "/etc/kinko/tls.crt"),
            ("KINKO_TLS_KEY_FILE", "/etc/kinko/tls.key"),
            ("KINKO_STORAGE", "dynamodb"),
            ("KINKO_SEAL", "awskms"),
            ("KINKO_KMS_KEY_ID", "alias/kinko"),
        ]);
        let config = Config::from_vars(cloud.clone()).unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::DynamoDb {
                table: "kinko".into()
            }
        );
        assert_eq!(
            config.seal,
            SealConfig::AwsKms {
                key_id: "alias/kinko".into()
            }
        );
        let without_key: Vec<_> = cloud
            .iter()
            .filter(|(k, _)| k != "KINKO_KMS_KEY_ID")
            .cloned()
            .collect();
        assert_eq!(
            Config::from_vars(without_key).unwrap_err().variable,
            "KINKO_KMS_KEY_ID"
        );
        let mut bad_table = cloud.clone();
        bad_table.push(("KINKO_DYNAMODB_TABLE".into(), "no spaces".into()));
        assert_eq!(
            Config::from_vars(bad_table).unwrap_err().variable,
            "KINKO_DYNAMODB_TABLE"
        );
    }
}
