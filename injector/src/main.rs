//! The `kinko-injector` binary: configuration from the environment, then HTTPS on
//! `KINKO_INJECTOR_LISTEN_ADDR` through `kinko_tls::serve` (certificates re-read on renewal).
//! Prints `kinko-injector listening on https://ADDR` on stdout once it accepts connections.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kinko_injector::config::Config;
use kinko_injector::http::{router, App};
use kinko_injector::metrics::Metrics;
use kinko_injector::registry::Resolver;

/// Flags are only `--help` and `--version`; everything else is `KINKO_INJECTOR_*`.
#[derive(Parser)]
#[command(
    name = "kinko-injector",
    version,
    about = "kinko's mutating admission webhook: starts annotated Pods under envrun",
    long_about = "kinko's mutating admission webhook: starts annotated Pods under envrun.\n\
                  Configured by KINKO_INJECTOR_* environment variables (see README.md)."
)]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    if let Err(error) = kinko_tls::logging::init() {
        eprintln!("kinko-injector: {error}");
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kinko-injector: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kinko-injector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    for name in &config.unknown_variables {
        tracing::warn!(
            variable = %name,
            "unknown KINKO_INJECTOR_ variable {name} ignored (misspelt? known: {})",
            kinko_injector::config::VARIABLES.join(", ")
        );
    }
    let tls = kinko_tls::server_config(&config.tls_cert, &config.tls_key)?;
    let registry = if config.image_lookup {
        let resolver = Resolver::new(
            config.registry_auth_file.as_deref(),
            config.plain_http_registries.clone(),
        )
        .map_err(|e| anyhow::anyhow!("KINKO_INJECTOR_REGISTRY_AUTH_FILE: {e}"))?;
        Some(resolver)
    } else {
        tracing::info!(
            "KINKO_INJECTOR_IMAGE_LOOKUP=false: containers without command are denied unless kinko.io/command-<container> is set"
        );
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        kinko_addr = %config.settings.kinko_addr,
        envrun_image = %config.settings.envrun_image,
        excluded = ?config.settings.excluded_namespaces,
        "kinko-injector configured"
    );
    let app = Arc::new(App {
        settings: config.settings,
        metrics: Metrics::default(),
        registry,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kinko-injector listening on https://{address}")?;
        out.flush()?;
    }
    kinko_tls::serve(
        listener,
        tls,
        router(app),
        kinko_tls::ServeLimits::default(),
        kinko_tls::shutdown_signal(),
    )
    .await?;
    Ok(())
}
