//! The ceiling side of `bench/compare.sh`: what TLS and HTTP alone cost on this machine. The
//! same rustls configuration, serve loop, limits and runtime as `kinko server`, and a handler
//! that does no work: every request gets the same JSON body, as long as a KV read's answer.

use std::path::PathBuf;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The certificate chain (PEM), e.g. a `kinko server --dev` data dir's tls.crt.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The body's length in bytes (a JSON object padded to it).
    #[arg(long, default_value_t = 1000)]
    body_bytes: usize,
}

fn body(bytes: usize) -> Vec<u8> {
    let frame = br#"{"data":{"pad":""}}"#;
    let mut body = Vec::with_capacity(bytes.max(frame.len()));
    body.extend_from_slice(&frame[..16]);
    body.resize(bytes.saturating_sub(3).max(16), b'x');
    body.extend_from_slice(&frame[16..]);
    body
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let tls = kinko_tls::server_config(&args.cert, &args.key).map_err(std::io::Error::other)?;
    let body = axum::body::Bytes::from(body(args.body_bytes));
    let router = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [
                    (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                body,
            )
                .into_response()
        }
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            println!("ceiling listening on https://{}", listener.local_addr()?);
            kinko_tls::serve(
                listener,
                tls,
                router,
                kinko_tls::ServeLimits::default(),
                kinko_tls::shutdown_signal(),
            )
            .await
        })
}
