//! `kinko_tls::serve` on 127.0.0.1:0 with a tiny router and small limits, driven by real rustls
//! clients speaking HTTP/1.1 and HTTP/2: quiet, slow and excess clients are cut off on time while
//! others are served, and a renewed certificate is used only when its key matches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kinko_tls::ServeLimits;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio_rustls::client::TlsStream;

/// Every wait in these tests is bounded by this (or less).
const BOUND: Duration = Duration::from_secs(10);

/// A CA, and a server certificate for localhost signed by it, written as tls.crt / tls.key.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        let key = rcgen::KeyPair::generate().unwrap();
        pki.write_leaf(&key, &key);
        pki
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a fresh leaf for `leaf_key` and, as the key file, `file_key`; returns the leaf.
    fn write_leaf(
        &self,
        leaf_key: &rcgen::KeyPair,
        file_key: &rcgen::KeyPair,
    ) -> CertificateDer<'static> {
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(leaf_key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.cert(), leaf.pem()).unwrap();
        std::fs::write(self.key(), file_key.serialize_pem()).unwrap();
        leaf.der().clone()
    }

    fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

struct Server {
    addr: SocketAddr,
    pki: Pki,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(router: Router, limits: ServeLimits) -> Server {
        Server::start_with(Pki::new(), router, limits).await
    }

    async fn start_with(pki: Pki, router: Router, limits: ServeLimits) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = kinko_tls::server_config(&pki.cert(), &pki.key()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(kinko_tls::serve(listener, tls, router, limits, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            pki,
            stop: Some(stop),
            done,
        }
    }

    /// A TLS connection with the handshake done, offering only `alpn`.
    async fn tls(&self, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.pki.client_config(alpn));
        let attempt = async {
            let tcp = TcpStream::connect(self.addr).await?;
            connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        };
        tokio::time::timeout(BOUND, attempt)
            .await
            .map_err(|_| std::io::Error::other("TLS connect timed out"))?
    }

    /// GET `path` over a fresh HTTP/1.1 connection: status, cache-control and body.
    async fn get(&self, path: &str) -> (StatusCode, String, String) {
        let tls = self.tls(b"http/1.1").await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(BOUND, sender.send_request(request))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = response.status();
        let cache = response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, cache, String::from_utf8_lossy(&body).into_owned())
    }

    /// Stops the server; `serve` must return within the bound even with connections open.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(BOUND, self.done)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Reads until the peer closes (EOF or an error); how long that took, or None within `limit`.
async fn closed_within(tls: &mut TlsStream<TcpStream>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test]
async fn idle_tls_connections_beyond_the_cap_are_refused_then_closed_by_the_first_request_timer() {
    let cap = 4;
    let server = Server::start(
        hello(),
        ServeLimits {
            max_connections: cap,
            first_request_timeout: Duration::from_secs(2),
            ..ServeLimits::default()
        },
    )
    .await;
    // Quiet clients that completed TLS and then say nothing hold every connection slot...
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(server.tls(b"http/1.1").await.unwrap());
    }
    let opened = Instant::now();
    // ...so more of them are closed at once rather than queued.
    for _ in 0..cap {
        let refused = Instant::now();
        assert!(server.tls(b"http/1.1").await.is_err(), "over the cap");
        assert!(
            refused.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
    }
    // The first-request timer closes the quiet ones, whatever the HTTP version sniff waits for.
    for tls in &mut idle {
        assert!(
            closed_within(tls, BOUND).await.is_some(),
            "an idle TLS connection is closed"
        );
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed by the timer, not at once: {closed_after:?}"
    );
    // And a fresh client is served again.
    assert_eq!(server.get("/").await.0, StatusCode::OK);
    server.stop().await;
}

/// An HTTP/2 client connection (hyper answers the server's PINGs, so keep-alive does not close
/// it); resolves when the server closes the connection.
async fn h2_client(
    server: &Server,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tls = server.tls(b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, ended)
}

#[tokio::test]
async fn idle_http2_connections_are_closed_by_the_timer() {
    let server = Server::start(
        hello(),
        ServeLimits {
            first_request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            ..ServeLimits::default()
        },
    )
    .await;
    // Preface and SETTINGS exchanged, no request: closed by the first-request timer.
    let started = Instant::now();
    let (_quiet, ended) = h2_client(&server).await;
    tokio::time::timeout(BOUND, ended)
        .await
        .expect("an HTTP/2 connection without a request is closed")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800));

    // One request, then silence: closed by the idle timer, not before.
    let (mut sender, mut ended) = h2_client(&server).await;
    let request = Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(BOUND, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answered = Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), &mut ended)
            .await
            .is_err(),
        "open while within the idle timeout"
    );
    tokio::time::timeout(BOUND, ended)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap();
    assert!(answered.elapsed() >= Duration::from_millis(1800));
    server.stop().await;
}

/// One HTTP/1.1 request on a raw TLS connection kept alive; returns the connection.
async fn one_keep_alive_request(server: &Server) -> TlsStream<TcpStream> {
    let mut tls = server.tls(b"http/1.1").await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"hello") {
        let n = tokio::time::timeout(BOUND, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "an answer before close");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    tls
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed() {
    // By the idle timer...
    let server = Server::start(
        hello(),
        ServeLimits {
            idle_timeout: Duration::from_secs(2),
            ..ServeLimits::default()
        },
    )
    .await;
    let mut tls = one_keep_alive_request(&server).await;
    let after = closed_within(&mut tls, Duration::from_secs(6))
        .await
        .expect("closed when idle");
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    server.stop().await;
    // ...or sooner by hyper's header timer, which runs while waiting for the next request.
    let server = Server::start(
        hello(),
        ServeLimits {
            header_read_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        },
    )
    .await;
    let mut tls = one_keep_alive_request(&server).await;
    let after = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("closed by the header timer");
    assert!(after >= Duration::from_millis(700), "{after:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_body_trickled_a_byte_a_second_is_cut_off_while_others_are_served() {
    let router = hello().route(
        "/echo",
        post(|body: axum::body::Body| async move {
            match axum::body::to_bytes(body, 1024).await {
                Ok(bytes) => (StatusCode::OK, bytes),
                // As kinko's handlers do: some client error for a body that did not arrive.
                Err(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Bytes::from_static(b"partial"),
                ),
            }
        }),
    );
    let server = Server::start(
        router,
        ServeLimits {
            body_timeout: Duration::from_secs(2),
            ..ServeLimits::default()
        },
    )
    .await;
    let mut slow = server.tls(b"http/1.1").await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Another client is served meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = Instant::now();
    assert_eq!(server.get("/").await.0, StatusCode::OK);
    assert!(other.elapsed() < Duration::from_secs(1));

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the trickled request is cut off within the bound"
    );
    let cut_after = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        cut_after >= Duration::from_millis(1500),
        "by the body deadline: {cut_after:?}"
    );
    // Answered 408 (not what the handler made of a partial body), then the connection closed.
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.ends_with(r#"{"errors":["request body not received in time"]}"#));
    assert!(answer.contains("cache-control: no-store"), "{answer}");
    trickle.abort();
    server.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_shed_with_503() {
    #[derive(Clone, Default)]
    struct Gate {
        entered: Arc<AtomicUsize>,
        open: Arc<Notify>,
    }
    let gate = Gate::default();
    let router = hello().route(
        "/slow",
        get({
            let gate = gate.clone();
            move || async move {
                let opened = gate.open.notified();
                gate.entered.fetch_add(1, Ordering::SeqCst);
                opened.await;
                "done"
            }
        }),
    );
    let server = Arc::new(
        Server::start(
            router,
            ServeLimits {
                max_in_flight: 2,
                ..ServeLimits::default()
            },
        )
        .await,
    );
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/slow").await.0 })
        })
        .collect();
    let started = Instant::now();
    while gate.entered.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < BOUND, "both slow requests start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = Instant::now();
    let (status, cache, body) = server.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        shed.elapsed() < Duration::from_secs(1),
        "shed at once, not queued"
    );
    assert_eq!(cache, "no-store");
    assert_eq!(
        body,
        r#"{"errors":["too many requests in flight; retry later"]}"#
    );
    gate.open.notify_waiters();
    for request in slow {
        assert_eq!(
            tokio::time::timeout(BOUND, request).await.unwrap().unwrap(),
            StatusCode::OK
        );
    }
    assert_eq!(server.get("/").await.0, StatusCode::OK, "slots come back");
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn a_handler_past_the_request_timeout_is_answered_503() {
    let router = hello().route(
        "/stuck",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        }),
    );
    let server = Server::start(
        router,
        ServeLimits {
            request_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        },
    )
    .await;
    let started = Instant::now();
    let (status, cache, body) = server.get("/stuck").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache, "no-store");
    assert_eq!(body, r#"{"errors":["request timed out"]}"#);
    server.stop().await;
}

async fn served_leaf(server: &Server) -> CertificateDer<'static> {
    let tls = server.tls(b"http/1.1").await.expect("a TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn wait_for_reload_check() -> impl std::future::Future<Output = ()> {
    tokio::time::sleep(kinko_tls::certs::RELOAD_CHECK_INTERVAL + Duration::from_millis(300))
}

fn touch_later(path: &Path) {
    // Modification times differ even on a coarse clock.
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(later)
        .unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_whose_key_does_not_match_is_refused_and_the_old_one_served() {
    let pki = Pki::new();
    let first_key = rcgen::KeyPair::generate().unwrap();
    let first = pki.write_leaf(&first_key, &first_key);
    let server = Server::start_with(pki, hello(), ServeLimits::default()).await;
    assert_eq!(served_leaf(&server).await, first);

    // A renewal whose key file holds some other key (a half-finished rotation, a wrong Secret).
    let (second_key, stray) = (
        rcgen::KeyPair::generate().unwrap(),
        rcgen::KeyPair::generate().unwrap(),
    );
    let second = server.pki.write_leaf(&second_key, &stray);
    touch_later(&server.pki.cert());
    wait_for_reload_check().await;
    assert_eq!(
        served_leaf(&server).await,
        first,
        "the last good pair is kept"
    );
    assert_eq!(server.get("/").await.0, StatusCode::OK);

    // The matching key arrives: the renewal is picked up.
    std::fs::write(server.pki.key(), second_key.serialize_pem()).unwrap();
    touch_later(&server.pki.key());
    wait_for_reload_check().await;
    assert_eq!(served_leaf(&server).await, second);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_does_not_wait_for_idle_connections() {
    let entered = Arc::new(Notify::new());
    let router = hello().route(
        "/slow",
        get({
            let entered = entered.clone();
            move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done"
            }
        }),
    );
    let mut server = Server::start(router, ServeLimits::default()).await;
    let (_quiet_h2, h2_ended) = h2_client(&server).await;
    let _quiet_tls = server.tls(b"http/1.1").await.unwrap();
    let addr = server.addr;
    let slow = {
        let tls = server.tls(b"http/1.1").await.unwrap();
        tokio::spawn(async move {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            let request = Request::get("/slow")
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        })
    };
    tokio::time::timeout(BOUND, entered.notified())
        .await
        .expect("the slow request started");
    let stopping = Instant::now();
    let _ = server.stop.take().unwrap().send(());
    let (status, body) = tokio::time::timeout(BOUND, slow).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"done", "the request in flight finished");
    tokio::time::timeout(BOUND, &mut server.done)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "idle connections do not hold the shutdown for its 30 s grace"
    );
    tokio::time::timeout(BOUND, h2_ended)
        .await
        .expect("the HTTP/2 connection was closed")
        .unwrap();
}
