//! Process set-up both servers share: the rustls crypto provider and the tracing subscriber
//! (`KINKO_LOG` filter, default `info`; `KINKO_LOG_FORMAT=json` for log collectors), on stderr.

/// Installs the ring provider and the subscriber; an unknown `KINKO_LOG_FORMAT` is refused.
pub fn init() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINKO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("KINKO_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        Ok("text") | Err(_) => builder
            // Colour codes only for a person at a terminal, not in collected Pod logs.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Ok(other) => {
            return Err(format!(
                "KINKO_LOG_FORMAT: {other:?} is not a log format: expected \"text\" or \"json\""
            ))
        }
    }
    Ok(())
}
