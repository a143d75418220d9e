//! The `kinko` binary: `kinko server` (production, configured by `KINKO_*`), `kinko server --dev`,
//! the sealed-value tools (`kinko seal`, `kinko sealed …`) and operator tasks against a running
//! server (`kinko status`, `kinko operator …`).

mod cli;
mod operator_cli;
mod seal_cli;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kinko_server::config::Config;
use kinko_server::server::{assemble, auto_unseal, prepare_dev};

#[derive(Parser)]
#[command(
    name = "kinko",
    version,
    about = "kinko: a Vault-compatible secrets server for Kubernetes teams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Without --dev it is configured by KINKO_* environment variables.
    Server {
        /// Embedded SQLite storage, file seal and a self-signed certificate in --data-dir,
        /// initialised and unsealed on first start.
        #[arg(long)]
        dev: bool,
        /// Dev mode's directory for the database, seal key and certificates.
        #[arg(long, default_value = ".kinko-dev", requires = "dev")]
        data_dir: PathBuf,
        /// Dev mode's listen address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8200", requires = "dev")]
        listen: SocketAddr,
        /// Dev mode's root token on first start, like `vault server -dev-root-token-id`.
        #[arg(
            long,
            env = "KINKO_DEV_ROOT_TOKEN",
            requires = "dev",
            hide_env_values = true
        )]
        dev_root_token: Option<String>,
    },
    /// Seal a value for one namespace + service account + variable name (safe to commit).
    /// The value is read from stdin (one trailing newline dropped) or --from-file, never argv.
    /// With --manifest, every `value: kinko:plain:<text>` env entry of the manifest's workloads
    /// is sealed in place for its namespace, service account and variable name.
    /// Keys come from --key (saved `GET /v1/sealed/keys/<ns>/<sa>` responses) or from the
    /// server at KINKO_ADDR/KINKO_CACERT (VAULT_* fallbacks), and are used only if signed by the
    /// pinned key (--fingerprint, or signing_key_fingerprint: in .kinko.yaml here or above).
    Seal {
        #[arg(long, required_unless_present = "manifest")]
        namespace: Option<String>,
        #[arg(
            long,
            required_unless_present = "manifest",
            conflicts_with = "manifest"
        )]
        service_account: Option<String>,
        /// The environment variable the value is for: only it can be resolved from the value.
        #[arg(
            long,
            required_unless_present = "manifest",
            conflicts_with = "manifest"
        )]
        name: Option<String>,
        /// A saved key response, for sealing offline (with --manifest: one per binding).
        #[arg(long)]
        key: Vec<PathBuf>,
        /// The pinned signing key, `sha256:<hex>`.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Read the value from this file (exact bytes) instead of stdin.
        #[arg(long, conflicts_with = "manifest")]
        from_file: Option<PathBuf>,
        /// Seal the marked values of this YAML manifest in place (comments and every other
        /// byte kept; already sealed values untouched). --namespace is then the default for
        /// resources without metadata.namespace.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Sealed-value tools.
    Sealed {
        #[command(subcommand)]
        command: SealedCommand,
    },
    /// The server's seal status (exit code 2 when sealed).
    Status,
    /// Operator tasks.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Subcommand)]
enum SealedCommand {
    /// Print the header of a sealed value (binding, epoch, plaintext length) without decrypting.
    Inspect { value: String },
    /// Rewrap sealed values to the current epoch (and to this cluster, for imported values),
    /// keeping their namespace, service account and name. Needs a token with `update` on
    /// sealed/rewrap.
    Rewrap {
        #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
        value: Option<String>,
        /// Rewrap every sealed value of this manifest that is not current, in place.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// With --manifest: also move values of other clusters (imported sealing keys) to
        /// this one. Leave it off where several clusters read the same repository.
        #[arg(long, requires = "manifest")]
        move_imported: bool,
    },
    /// Start a new sealing epoch (sudo on sealed/rotate). Old values keep opening unless
    /// --retire-before cuts them off.
    Rotate {
        #[arg(long)]
        retire_before: Option<u64>,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Create the DynamoDB table (on-demand capacity) if it does not exist, and wait until it
    /// is active. For development; production creates it with CloudFormation (deploy/).
    /// Region, credentials and endpoint come from the standard AWS chain.
    CreateTable {
        #[arg(long, env = "KINKO_DYNAMODB_TABLE", default_value = "kinko")]
        table: String,
    },
    /// Initialise the server at KINKO_ADDR; prints the root token and recovery keys once.
    Init {
        #[arg(long, default_value_t = 5)]
        recovery_shares: u8,
        #[arg(long, default_value_t = 3)]
        recovery_threshold: u8,
        /// Print the server's JSON answer instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Start a new keyring term for new writes (sys/rotate).
    Rotate,
    /// Move the sealing root secret to another cluster (disaster recovery, several clusters).
    SealingKey {
        #[command(subcommand)]
        command: SealingKeyCommand,
    },
}

#[derive(Subcommand)]
enum SealingKeyCommand {
    /// On the receiving cluster: print its signed import key (save it, hand it over).
    ImportKey,
    /// On the sending cluster: print its sealing root wrapped to the receiver's import key.
    Export {
        /// The receiver's saved `kinko operator sealing-key import-key` output.
        #[arg(long)]
        import_key: PathBuf,
        /// The receiver's signing-key fingerprint, `sha256:<hex>`, learnt from its operator.
        #[arg(long)]
        fingerprint: String,
    },
    /// On the receiving cluster: import the bundle (stdin or --from-file).
    Import {
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// The sender's signing-key fingerprint, `sha256:<hex>` (its GET /v1/sealed/keys).
        #[arg(long)]
        fingerprint: String,
    },
    /// On the receiving cluster: forget an imported key; that cluster's values stop opening.
    Remove { cluster_id: String },
}

/// Whether the process's memory is locked (kept out of swap), and if not why.
enum MemoryLock {
    Locked,
    /// `RLIMIT_MEMLOCK` (bytes) is not unlimited: locking all memory would make allocations fail.
    Limited(u64),
    Failed(std::io::Error),
}

impl MemoryLock {
    /// One line at start-up of the server (not of the CLI commands).
    fn log(&self) {
        match self {
            MemoryLock::Locked => {
                tracing::info!("memory locked (mlockall): keys are never swapped out")
            }
            MemoryLock::Limited(bytes) => tracing::warn!(
                memlock_limit_bytes = bytes,
                "memory not locked: RLIMIT_MEMLOCK is {bytes} bytes, not unlimited, so keys may \
                 be swapped out; raise it (ulimit -l unlimited, LimitMEMLOCK=infinity) or use \
                 encrypted swap or none"
            ),
            MemoryLock::Failed(error) => {
                tracing::warn!(%error, "mlockall failed: keys may be swapped out")
            }
        }
    }
}

/// Keeps keys out of core dumps and away from other users' ptrace. Refuses to start when that
/// cannot be had (the calls only lower this process's own limits, so they fail only in a
/// broken environment); memory locking is best effort.
fn harden_process() -> Result<MemoryLock, String> {
    #[cfg(not(target_os = "linux"))]
    return Ok(MemoryLock::Failed(std::io::Error::other(
        "not supported on this system",
    )));
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on this process with constant arguments.
    unsafe {
        let failed = |what: &str| format!("{what} failed: {}", std::io::Error::last_os_error());
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(failed("prctl(PR_SET_DUMPABLE, 0)"));
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            return Err(failed("setrlimit(RLIMIT_CORE, 0)"));
        }
        // Lock memory only where the limit allows all of it; a partial limit would make
        // later allocations fail.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Ok(MemoryLock::Failed(std::io::Error::last_os_error()));
        }
        if limit.rlim_cur != libc::RLIM_INFINITY {
            return Ok(MemoryLock::Limited(limit.rlim_cur));
        }
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0 {
            return Ok(MemoryLock::Failed(std::io::Error::last_os_error()));
        }
        Ok(MemoryLock::Locked)
    }
}

fn main() -> std::process::ExitCode {
    if let Err(error) = kinko_tls::logging::init() {
        eprintln!("kinko: {error}");
        return std::process::ExitCode::from(2);
    }
    let memory = match harden_process() {
        Ok(memory) => memory,
        Err(error) => {
            eprintln!("kinko: cannot protect key material in memory: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    if matches!(cli.command, Command::Server { .. }) {
        memory.log();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(kinko_server::scrub::WORKER_STACK_BYTES)
        .on_thread_park(kinko_server::scrub::on_thread_park)
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kinko: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Status => operator_cli::status().await,
        command => run_command(command)
            .await
            .map(|()| std::process::ExitCode::SUCCESS),
    }
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server {
            dev,
            data_dir,
            listen,
            dev_root_token,
        } => serve(dev, data_dir, listen, dev_root_token).await,
        Command::Seal {
            namespace,
            service_account,
            name,
            key,
            fingerprint,
            from_file,
            manifest,
        } => match (manifest, service_account, name) {
            (Some(manifest), _, _) => {
                seal_cli::seal_manifest(seal_cli::ManifestArgs {
                    manifest,
                    namespace,
                    keys: key,
                    fingerprint,
                })
                .await
            }
            (None, Some(service_account), Some(name)) => {
                if key.len() > 1 {
                    anyhow::bail!("one --key file seals one value; more are for --manifest");
                }
                seal_cli::seal(seal_cli::SealArgs {
                    namespace: namespace.unwrap_or_default(),
                    service_account,
                    name,
                    key: key.into_iter().next(),
                    fingerprint,
                    from_file,
                })
                .await
            }
            _ => anyhow::bail!("--service-account and --name are required without --manifest"),
        },
        Command::Sealed { command } => match command {
            SealedCommand::Inspect { value } => seal_cli::inspect(&value),
            SealedCommand::Rewrap {
                manifest: Some(manifest),
                move_imported,
                ..
            } => seal_cli::rewrap_manifest(&manifest, move_imported).await,
            SealedCommand::Rewrap { value, .. } => {
                seal_cli::rewrap_value(&value.unwrap_or_default()).await
            }
            SealedCommand::Rotate { retire_before } => {
                operator_cli::sealed_rotate(retire_before).await
            }
        },
        Command::Status => operator_cli::status().await.map(drop),
        Command::Operator {
            command:
                OperatorCommand::Init {
                    recovery_shares,
                    recovery_threshold,
                    json,
                },
        } => operator_cli::init(recovery_shares, recovery_threshold, json).await,
        Command::Operator {
            command: OperatorCommand::Rotate,
        } => operator_cli::rotate().await,
        Command::Operator {
            command: OperatorCommand::SealingKey { command },
        } => match command {
            SealingKeyCommand::ImportKey => operator_cli::import_key().await,
            SealingKeyCommand::Export {
                import_key,
                fingerprint,
            } => operator_cli::export(&import_key, &fingerprint).await,
            SealingKeyCommand::Import {
                from_file,
                fingerprint,
            } => operator_cli::import(from_file.as_deref(), &fingerprint).await,
            SealingKeyCommand::Remove { cluster_id } => operator_cli::remove(&cluster_id).await,
        },
        Command::Operator {
            command: OperatorCommand::CreateTable { table },
        } => {
            let aws = kinko_server::aws::sdk_config().await;
            let storage = kinko_server::storage::dynamodb::DynamoStorage::new(
                aws_sdk_dynamodb::Client::new(&aws),
                table,
            );
            storage.create_table().await?;
            println!("DynamoDB table {} is active", storage.table());
            Ok(())
        }
    }
}

async fn serve(
    dev: bool,
    data_dir: PathBuf,
    listen: SocketAddr,
    dev_root_token: Option<String>,
) -> anyhow::Result<()> {
    let config = if dev {
        Config::dev(data_dir, listen)
    } else {
        Config::from_env()?
    };
    let parts = assemble(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "kinko listening on https://{address}")?;
    if dev {
        // On a worker, not this thread: a worker scrubs its stack after sealing (scrub.rs).
        let core = parts.core.clone();
        let first_start =
            tokio::spawn(async move { prepare_dev(&core, dev_root_token).await }).await??;
        let ca = parts
            .dev_ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        writeln!(out, "kinko dev server: data in {}", config_dir(&config))?;
        writeln!(out, "CA certificate: {ca}")?;
        match first_start {
            Some(init) => {
                writeln!(out, "Root token: {}", init.root_token.expose())?;
                for key in &init.recovery_keys {
                    writeln!(out, "Recovery key: {}", key.expose())?;
                }
                writeln!(
                    out,
                    "(shown once: only a keyed hash of the token is stored)"
                )?;
            }
            None => writeln!(
                out,
                "Root token: printed at first start (only its hash is stored)"
            )?,
        }
        writeln!(out, "export VAULT_ADDR=https://{address} VAULT_CACERT={ca}")?;
    } else {
        tokio::spawn(auto_unseal(parts.core.clone()));
    }
    tokio::spawn(reopen_audit_files_on_sighup());
    out.flush()?;
    drop(out);
    let router = kinko_server::http::router(parts.core.clone(), config.max_request_bytes);
    let limits = kinko_tls::ServeLimits {
        max_connections: config.max_connections,
        ..kinko_tls::ServeLimits::default()
    };
    kinko_tls::serve(
        listener,
        parts.tls,
        router,
        limits,
        kinko_tls::shutdown_signal(),
    )
    .await?;
    parts.core.seal().await;
    Ok(())
}

/// logrotate renames the audit file and sends SIGHUP: file devices reopen their path.
async fn reopen_audit_files_on_sighup() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: audit files will not be reopened on it");
        return;
    };
    while hangups.recv().await.is_some() {
        kinko_server::audit::device::reopen_files();
        tracing::info!("SIGHUP: audit files are reopened before their next entry");
    }
}

fn config_dir(config: &Config) -> String {
    match &config.tls {
        kinko_server::config::TlsSource::DevSelfSigned { dir } => dir.display().to_string(),
        kinko_server::config::TlsSource::Files { cert, .. } => cert.display().to_string(),
    }
}
