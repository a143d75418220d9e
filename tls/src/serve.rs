//! The HTTPS serve loop: accept, TLS handshake, HTTP/1.1 or HTTP/2 through hyper, then the axum
//! router behind a fixed stack of limits. Every stage is bounded in time or in number, so quiet or
//! slow clients cannot hold the server's connections or request slots:
//!
//! | stage | bound |
//! |---|---|
//! | open connections | [`ServeLimits::max_connections`]; at the cap a new connection is closed at once |
//! | TLS handshake | [`ServeLimits::handshake_timeout`] |
//! | accept → first request header (HTTP version sniff, HTTP/2 preface, HTTP/1 head) | [`ServeLimits::first_request_timeout`] |
//! | no request in flight (HTTP/1 keep-alive, HTTP/2) | [`ServeLimits::idle_timeout`], then HTTP/2 `GOAWAY` / HTTP/1 close |
//! | one HTTP/1 request head | [`ServeLimits::header_read_timeout`] (hyper's timer; it also runs while a keep-alive connection waits) |
//! | header size | [`MAX_HEADER_BYTES`] (HTTP/1 read buffer, HTTP/2 header list) |
//! | the whole request body | [`ServeLimits::body_timeout`] → 408 |
//! | handler, until its response starts | [`ServeLimits::request_timeout`] → 503 |
//! | requests in flight, whole server | [`ServeLimits::max_in_flight`] → 503 at once (load shedding, no queue) |
//! | HTTP/2 streams | [`HTTP2_MAX_CONCURRENT_STREAMS`] per connection; reset floods cut by hyper's counters |
//! | shutdown | [`ServeLimits::shutdown_grace`] for requests in flight |
//!
//! Answers made here (408, 503) have the Vault error shape `{"errors":["..."]}` and
//! `Cache-Control: no-store`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::{error::Overloaded, LoadShed};
use tower::timeout::{error::Elapsed, Timeout};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::timeout::{DeadlineBody, TimeoutError};

/// Default [`ServeLimits::max_connections`].
pub const MAX_CONNECTIONS: usize = 4096;
/// Default [`ServeLimits::max_in_flight`]: far above what two cores finish at once (a KV read
/// takes well under a millisecond), far below what 4096 connections × 256 streams could ask.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Default [`ServeLimits::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServeLimits::first_request_timeout`]: counted from accept, so it includes the
/// handshake.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServeLimits::idle_timeout`]. HTTP/1 keep-alive connections are closed sooner, by
/// [`HEADER_READ_TIMEOUT`], which hyper runs while waiting for the next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ServeLimits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServeLimits::body_timeout`]: request bodies are at most a few MiB of JSON.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServeLimits::request_timeout`]: above the storage and KMS retry budgets.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ServeLimits::shutdown_grace`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// After an idle connection was told to close, how long it may take (HTTP/2 `GOAWAY`, a
/// response still being written) before it is dropped.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Request headers, either protocol: the HTTP/1 read buffer (`max_buf_size`; a head must fit in
/// it) and the HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
pub const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Concurrent streams on one HTTP/2 connection.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 rapid reset (CVE-2023-44487): streams a client opened and reset before they were
/// served, beyond which the connection is closed (h2's default, set explicitly).
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2: streams the server had to reset for a client's protocol errors, beyond which the
/// connection is closed (hyper's default, set explicitly).
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/2 keep-alive: a `PING` after this long without frames from the client...
pub const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...which must be answered within this, or the connection is closed (a vanished peer).
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bounds of [`serve`]. `Default` gives the production values (the constants of this module);
/// tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open connections, from accept on. At the cap a new connection is closed at once rather
    /// than queued.
    pub max_connections: usize,
    /// Requests being handled across all connections; one more is answered 503 at once.
    pub max_in_flight: usize,
    /// The TLS handshake.
    pub handshake_timeout: Duration,
    /// From accept to the first complete request header, whatever the protocol.
    pub first_request_timeout: Duration,
    /// A connection without a request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/1: reading one request head.
    pub header_read_timeout: Duration,
    /// The whole request body, from its header on (a deadline, not an inactivity timer, so a
    /// body trickled a byte at a time is cut off too); answered 408.
    pub body_timeout: Duration,
    /// The handler, until its response starts; answered 503.
    pub request_timeout: Duration,
    /// After `shutdown` resolves, how long requests in flight may finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: MAX_CONNECTIONS,
            max_in_flight: MAX_IN_FLIGHT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            first_request_timeout: FIRST_REQUEST_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Serves HTTPS on a bound listener until `shutdown` resolves, then stops accepting, asks every
/// connection to close (HTTP/2 `GOAWAY`, HTTP/1 after the current response) and waits up to
/// [`ServeLimits::shutdown_grace`] for requests in flight. Tests bind port 0 and pass their own
/// shutdown future.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Semaphore::acquire_many (the drain at shutdown) counts in u32.
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize);
    let connections = Arc::new(Semaphore::new(max_connections));
    let acceptor = TlsAcceptor::from(tls);
    let builder = Arc::new(http_builder(&limits));
    let app = App::new(router, &limits);
    let limits = Arc::new(limits);
    let (stop, stopping) = watch::channel(false);
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let accepted = Instant::now();
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closed at once: a client at the cap fails fast instead of waiting in a queue.
            drop(stream);
            if warned_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections,
                    "connection cap reached; closing new connections"
                );
                warned_full = Some(accepted);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            Accepted {
                stream,
                peer,
                at: accepted,
                permit,
            },
            acceptor.clone(),
            builder.clone(),
            app.clone(),
            limits.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

fn http_builder(limits: &ServeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
    builder
}

struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    at: Instant,
    /// One of [`ServeLimits::max_connections`], held until the connection is gone.
    permit: OwnedSemaphorePermit,
}

/// The client's address, in every request's extensions (for audit entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// One connection, from handshake to close.
async fn connection(
    accepted: Accepted,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: App,
    limits: Arc<ServeLimits>,
    stopping: watch::Receiver<bool>,
) {
    let _permit = accepted.permit;
    let first_request = accepted.at + limits.first_request_timeout;
    let handshake = first_request.min(accepted.at + limits.handshake_timeout);
    let tls = match tokio::time::timeout_at(handshake, acceptor.accept(accepted.stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    // Requests in flight on this connection, for the idle timer.
    let (activity, in_flight) = watch::channel(0usize);
    let activity = Arc::new(activity);
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        let peer = PeerAddr(accepted.peer);
        move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer);
            let busy = InFlight::start(activity.clone());
            let app = app.clone();
            async move {
                let _busy = busy;
                Ok::<_, Infallible>(app.handle(request).await)
            }
        }
    });
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    drive(connection, in_flight, stopping, first_request, &limits).await;
}

/// Polls `connection` until it ends, or until it has no request in flight at `idle_deadline`
/// (at first: the first-request deadline) or the server stops; then closes it gracefully and
/// gives it a bounded time to finish.
async fn drive<C: GracefulConnection>(
    connection: C,
    mut in_flight: watch::Receiver<usize>,
    mut stopping: watch::Receiver<bool>,
    mut idle_deadline: Instant,
    limits: &ServeLimits,
) {
    tokio::pin!(connection);
    let grace = loop {
        if *stopping.borrow_and_update() {
            break limits.shutdown_grace;
        }
        let busy = *in_flight.borrow_and_update() > 0;
        tokio::select! {
            biased;
            _ = connection.as_mut() => return,
            // An error means `serve` itself is gone: stop as for a shutdown, never spin.
            stopped = stopping.changed() => if stopped.is_err() {
                break limits.shutdown_grace;
            },
            // The sender lives as long as the connection's service, which outlives this loop.
            Ok(()) = in_flight.changed() => {
                if *in_flight.borrow() == 0 {
                    idle_deadline = Instant::now() + limits.idle_timeout;
                }
            }
            _ = tokio::time::sleep_until(idle_deadline), if !busy => {
                tracing::debug!("closing an idle connection");
                break IDLE_CLOSE_GRACE;
            }
        }
    };
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(grace, connection).await;
}

/// Counts one request in flight on its connection while alive (also when the client cancels).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(activity: Arc<watch::Sender<usize>>) -> InFlight {
        activity.send_modify(|n| *n += 1);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The router behind the server-wide limits: load shedding at the in-flight cap, the
/// per-request timeout, and the request-body deadline.
#[derive(Clone)]
struct App {
    stack: LoadShed<ConcurrencyLimit<Timeout<Router>>>,
    body_timeout: Duration,
}

impl App {
    fn new(router: Router, limits: &ServeLimits) -> App {
        let stack = ServiceBuilder::new()
            // Outermost: when the limit below has no permit, answer at once instead of waiting.
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(
                limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            ))
            .timeout(limits.request_timeout)
            .service(router);
        App {
            stack,
            body_timeout: limits.body_timeout,
        }
    }

    async fn handle(self, request: Request<Incoming>) -> Response<Body> {
        let body_late = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            if body.is_end_stream() {
                return Body::new(body);
            }
            let late = body_late.clone();
            Body::new(
                DeadlineBody::new(self.body_timeout, body).map_err(move |error| {
                    if error.is::<TimeoutError>() {
                        late.store(true, Ordering::Relaxed);
                    }
                    error
                }),
            )
        });
        let outcome = self.stack.oneshot(request).await;
        // Whatever the handler made of a body cut short (kinko's says "too large"), the
        // client's problem is its slowness.
        if body_late.load(Ordering::Relaxed) {
            return vault_error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            );
        }
        match outcome {
            Ok(response) => response,
            Err(error) if error.is::<Overloaded>() => vault_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight; retry later",
            ),
            Err(error) if error.is::<Elapsed>() => {
                vault_error(StatusCode::SERVICE_UNAVAILABLE, "request timed out")
            }
            Err(error) => {
                tracing::warn!(%error, "request failed");
                vault_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// A Vault-shaped error answer. `message` is a fixed text: nothing from the request.
fn vault_error(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(r#"{{"errors":["{message}"]}}"#)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The shutdown future both servers pass to [`serve`]: SIGTERM (Kubernetes stopping the Pod)
/// or Ctrl-C.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail at start-up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_vault_shaped_and_not_cached() {
        let response = vault_error(StatusCode::SERVICE_UNAVAILABLE, "request timed out");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn defaults_are_the_documented_constants() {
        let limits = ServeLimits::default();
        assert_eq!(limits.max_connections, 4096);
        assert!(limits.first_request_timeout <= limits.idle_timeout);
        assert!(limits.body_timeout < limits.request_timeout);
    }
}
