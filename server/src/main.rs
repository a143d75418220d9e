//! The `kinko` binary: `kinko server` (production, configured by `KINKO_*`), `kinko server --dev`,
//! and the sealed-value tools `kinko seal` / `kinko sealed inspect`.

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
    /// The key comes from --key (a saved `GET /v1/sealed/keys/<ns>/<sa>` response) or from the
    /// server at KINKO_ADDR/KINKO_CACERT (VAULT_* fallbacks), and is used only if signed by the
    /// pinned key (--fingerprint, or signing_key_fingerprint: in .kinko.yaml here or above).
    Seal {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// The environment variable the value is for: only it can be resolved from the value.
        #[arg(long)]
        name: String,
        /// A saved key response, for sealing offline.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The pinned signing key, `sha256:<hex>`.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Read the value from this file (exact bytes) instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Sealed-value tools.
    Sealed {
        #[command(subcommand)]
        command: SealedCommand,
    },
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
}

/// Keeps keys out of core dumps and away from other users' ptrace. Refuses to start when that
/// cannot be had (the calls only lower this process's own limits, so they fail only in a
/// broken environment); memory locking is best effort.
fn harden_process() -> Result<(), String> {
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
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0
            && limit.rlim_cur == libc::RLIM_INFINITY
            && libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0
        {
            tracing::warn!(error = %std::io::Error::last_os_error(), "mlockall failed; memory may be swapped");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KINKO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in collected Pod logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(error) = harden_process() {
        eprintln!("kinko: cannot protect key material in memory: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kinko: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
        } => {
            seal_cli::seal(seal_cli::SealArgs {
                namespace,
                service_account,
                name,
                key,
                fingerprint,
                from_file,
            })
            .await
        }
        Command::Sealed {
            command: SealedCommand::Inspect { value },
        } => seal_cli::inspect(&value),
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
        let first_start = prepare_dev(&parts.core, dev_root_token).await?;
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

fn config_dir(config: &Config) -> String {
    match &config.tls {
        kinko_server::config::TlsSource::DevSelfSigned { dir } => dir.display().to_string(),
        kinko_server::config::TlsSource::Files { cert, .. } => cert.display().to_string(),
    }
}
