//! Network attacks on the running `kinko server --dev` binary (issue 16; security checklist F.28
//! and H.41). Each test starts the real binary on 127.0.0.1:0, attacks it the way a client on the
//! network could, and asserts that
//!
//! - the attacker gets a clear refusal or is cut off within a stated bound (every wait in this
//!   file is bounded: a server that hangs fails the test, it never hangs it), and
//! - while the attack goes on, a well-behaved client on another connection reads a KV secret
//!   (200 and the right value) within [`READ_LATENCY`], and the server's resident memory
//!   (`VmRSS`) stays under [`MAX_RSS_KB`] ([`Watch`]).
//!
//! The bounds are the production values of `kinko_tls::serve` (`kinko server --dev` cannot change
//! them). Requests are written as raw bytes over tokio-rustls wherever an HTTP client library
//! would normalise the attack away; HTTP/2 attacks that break the protocol's own rules (more
//! streams than the server advertised, reset and CONTINUATION floods) are written as raw frames,
//! since the `h2` client obeys the server's SETTINGS; the rest use `h2`.
//!
//! What `kinko_tls`'s own in-process tests (`tls/tests/serve.rs`) already show with shrunk limits
//! is not repeated with small numbers here: these tests use the binary, its real limits and
//! thousands of connections, requests or frames.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinko_e2e::Kinko;
use kinko_tls::serve::{
    BODY_TIMEOUT, FIRST_REQUEST_TIMEOUT, HANDSHAKE_TIMEOUT, HTTP2_MAX_CONCURRENT_STREAMS,
    IDLE_CLOSE_GRACE, MAX_CONNECTIONS, MAX_HEADER_BYTES, MAX_IN_FLIGHT,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long the well-behaved client's KV read (a fresh connection: TCP, TLS, request) may take
/// while an attack goes on. A read takes a few milliseconds on an idle machine; 2 s leaves room
/// for a shared 2-core machine running the attack itself.
const READ_LATENCY: Duration = Duration::from_secs(2);

/// Bound on the server's resident memory during every attack. The dev server idles at about
/// 20 MB (measured); the largest attack here holds all 4096 connections of the cap open over
/// HTTP/2, each costing the server a rustls session and hyper's HTTP/2 state, about 33 KB: 156 MB
/// measured. The other attacks stay near 20–30 MB. 200 MB leaves room for allocator variance and
/// is far below what an unbounded buffer (headers, bodies, streams, connections) reaches under
/// these floods.
const MAX_RSS_KB: u64 = 200 * 1024;

/// Attacks that are over sooner are repeated for this long, so that the well-behaved client's
/// reads overlap them.
const MIN_ATTACK: Duration = Duration::from_secs(1);

/// Bound of any single network wait (connect, handshake, an answer) in this file.
const BOUND: Duration = Duration::from_secs(10);

/// The KV v2 secret every attack goes after (`secret/data/attack/db`).
const SECRET: &str = "attack/db";

/// A client that never finishes a request is closed by the server's first-request timer (or the
/// handshake, header or body timer, all 10 s), which then gives the connection
/// [`IDLE_CLOSE_GRACE`] to end; 5 s more for a loaded machine.
fn cut_off_bound() -> Duration {
    FIRST_REQUEST_TIMEOUT
        .max(HANDSHAKE_TIMEOUT)
        .max(BODY_TIMEOUT)
        + IDLE_CLOSE_GRACE
        + Duration::from_secs(5)
}

// ---------------------------------------------------------------------------------------------
// The target: a dev server with one secret, and what a client needs to reach it.
// ---------------------------------------------------------------------------------------------

struct Target {
    server: Kinko,
    addr: SocketAddr,
    root: String,
    /// The secret's value: random, so that finding it in an answer means the secret was served.
    value: String,
    ca_pem: Vec<u8>,
    roots: RootCertStore,
    /// HTTP/1.1 only.
    h1: Arc<ClientConfig>,
    /// HTTP/2 only.
    h2: Arc<ClientConfig>,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn start() -> Target {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let root = format!("attack-root-{}", uuid::Uuid::new_v4().simple());
        let server = Kinko::dev(dir.path(), Some(&root));
        let addr: SocketAddr = server
            .addr
            .strip_prefix("https://")
            .expect("an https address")
            .parse()
            .unwrap();
        let value = format!("value-{}", uuid::Uuid::new_v4().simple());
        let data = json!({ "value": value });
        server
            .client(Some(&root))
            .kv_write("secret", SECRET, data.as_object().unwrap(), None)
            .await
            .expect("write the secret");
        let ca_pem = std::fs::read(&server.ca).expect("the dev CA");
        let mut roots = RootCertStore::empty();
        for der in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
            let der: CertificateDer<'static> = der.unwrap();
            roots.add(der).unwrap();
        }
        let h1 = client_config(&roots, &[b"http/1.1"]);
        let h2 = client_config(&roots, &[b"h2"]);
        Target {
            server,
            addr,
            root,
            value,
            ca_pem,
            roots,
            h1,
            h2,
            started,
            _dir: dir,
        }
    }

    fn probe(&self) -> Probe {
        Probe {
            url: self.server.addr.clone(),
            ca_pem: Arc::new(self.ca_pem.clone()),
            root: self.root.clone(),
            value: self.value.clone(),
            pid: self.server.pid(),
        }
    }

    /// A token with only the `flood` policy (write below `secret/data/flood/`): an attacker
    /// who holds some legitimate token.
    async fn weak_token(&self) -> String {
        let root = self.server.client(Some(&self.root));
        root.policy_write(
            "flood",
            r#"path "secret/data/flood/*" { capabilities = ["create", "update"] }"#,
        )
        .await
        .unwrap();
        root.token_create(&["flood"], Some("1h"))
            .await
            .unwrap()
            .client_token
    }

    /// A raw `GET` of the secret with the root token: if an attack smuggles this through, the
    /// answer carries [`Target::value`].
    fn get_secret_raw(&self) -> String {
        format!(
            "GET /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {}\r\n\r\n",
            self.root
        )
    }

    /// Whether the root token still reads `secret/data/<path>`: status code.
    async fn root_status(&self, path: &str) -> u16 {
        let (status, _) = self
            .server
            .client(Some(&self.root))
            .text(kinko_client::Method::GET, &format!("secret/data/{path}"))
            .await
            .unwrap();
        status.as_u16()
    }

    fn finish(self, name: &str) {
        assert!(
            self.probe().rss_kb().is_some(),
            "{name}: the server process is gone"
        );
        eprintln!("{name}: done in {:?}", self.started.elapsed());
    }
}

fn client_config(roots: &RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TCP connect and TLS handshake, both within [`BOUND`].
async fn connect_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(config);
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };
    tokio::time::timeout(BOUND, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out"))?
}

async fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let tcp = tokio::time::timeout(BOUND, TcpStream::connect(addr))
        .await
        .expect("TCP connect in time")
        .expect("TCP connect");
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads until the peer closes (EOF or an error) or `limit` passes: what was read, and whether
/// the peer closed within the limit.
async fn read_until_closed<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `request` on a fresh connection of `config` (while reading, so an early answer and
/// close are seen even if the write fails), then reads until the server closes it or `limit`.
async fn exchange_on(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: Vec<u8>,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let tls = connect_tls(addr, config).await.expect("a TLS handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        let _ = tokio::time::timeout(limit, async {
            writer.write_all(&request).await?;
            writer.flush().await
        })
        .await;
        // Held (not shut down) until the reading is done.
        std::future::pending::<()>().await;
        drop(writer);
    });
    let answer = read_until_closed(&mut reader, limit).await;
    writing.abort();
    answer
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    format!("{text:?}{}", if bytes.len() > 300 { "…" } else { "" })
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 answers, parsed strictly.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits what a server sent on one connection into HTTP/1.1 responses; an error when it is not
/// a sequence of well-formed responses (status line, `name: value` headers, a body of the length
/// the headers give). `head_request`: the bodies of answers to `HEAD` are empty.
fn parse_answers(bytes: &[u8], head_request: bool) -> Result<Vec<Answer>, String> {
    let mut rest = bytes;
    let mut answers = Vec::new();
    while !rest.is_empty() {
        let end = find(rest, b"\r\n\r\n").ok_or("no end of the response head")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "a head that is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let code = status_line
            .strip_prefix("HTTP/1.1 ")
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let status: u16 = code
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse().ok())
            .filter(|_| code.len() == 3 || code.as_bytes()[3] == b' ')
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .filter(|(name, _)| !name.is_empty() && !name.contains(' '))
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| format!("bad content-length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        rest = &rest[end + 4..];
        let bodyless = head_request || status == 204 || status == 304 || status < 200;
        let body = if bodyless {
            Vec::new()
        } else if chunked {
            let (body, used) = dechunk(rest)?;
            rest = &rest[used..];
            body
        } else {
            let n = length.unwrap_or(rest.len());
            if rest.len() < n {
                return Err(format!("body of {} bytes, {n} announced", rest.len()));
            }
            let body = rest[..n].to_vec();
            rest = &rest[n..];
            body
        };
        answers.push(Answer {
            status,
            head: head.to_owned(),
            body,
        });
    }
    Ok(answers)
}

/// A chunked body: the body and how many bytes it took.
fn dechunk(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let line_end = find(&bytes[at..], b"\r\n").ok_or("a chunk size line without its end")?;
        let line = std::str::from_utf8(&bytes[at..at + line_end]).map_err(|_| "chunk size")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        at += line_end + 2;
        if size == 0 {
            let trailer_end = find(&bytes[at..], b"\r\n").ok_or("no end of the chunked body")?;
            return Ok((body, at + trailer_end + 2));
        }
        if bytes.len() < at + size + 2 {
            return Err("a truncated chunk".into());
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// The well-behaved client and the memory bound, checked all along an attack.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Probe {
    url: String,
    ca_pem: Arc<Vec<u8>>,
    root: String,
    value: String,
    pid: i32,
}

impl Probe {
    fn client(&self) -> kinko_client::Client {
        kinko_client::Client::builder(&self.url)
            .ca_pem(self.ca_pem.to_vec())
            .token(&self.root)
            .timeout(READ_LATENCY)
            .build()
            .unwrap()
    }

    /// One KV read of the secret with `client` (a fresh one, hence a fresh connection, unless
    /// given): its latency if it answered the right value within [`READ_LATENCY`].
    async fn read(&self, client: Option<&kinko_client::Client>) -> Result<Duration, String> {
        let started = Instant::now();
        let attempt = async {
            let fresh;
            let client = match client {
                Some(client) => client,
                None => {
                    fresh = self.client();
                    &fresh
                }
            };
            client.kv_read("secret", SECRET, None).await
        };
        match tokio::time::timeout(READ_LATENCY, attempt).await {
            Err(_) => Err(format!("no answer within {READ_LATENCY:?}")),
            Ok(Err(error)) => Err(format!("the read failed: {error}")),
            Ok(Ok(None)) => Err("the secret was not found".into()),
            Ok(Ok(Some(secret))) if secret.data["value"] != self.value.as_str() => {
                Err("the read answered another value".into())
            }
            Ok(Ok(Some(_))) => Ok(started.elapsed()),
        }
    }

    /// `VmRSS` in kB; `None` once the process is gone.
    fn rss_kb(&self) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// Reads the secret every 100 ms (and samples the server's RSS as often) while an attack goes
/// on, and once more after it; [`Watch::finish`] asserts every read was right and in time, some
/// were made during the attack, and memory stayed bounded.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WatchReport>,
}

#[derive(Debug, Default)]
struct WatchReport {
    reads: usize,
    /// Reads that began after the first one and ended before the attack did.
    reads_during: usize,
    failures: Vec<String>,
    slowest: Duration,
    peak_rss_kb: u64,
    exited: bool,
}

impl Watch {
    /// `established`: read over one client kept for the whole attack (its connection opened
    /// before the attack), for attacks that by design leave no room for new connections.
    fn start(probe: &Probe, established: bool) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let probe = probe.clone();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let kept = established.then(|| probe.client());
            let mut report = WatchReport::default();
            let mut next_read = Instant::now();
            loop {
                match probe.rss_kb() {
                    Some(kb) => report.peak_rss_kb = report.peak_rss_kb.max(kb),
                    None => {
                        report.exited = true;
                        return report;
                    }
                }
                // Once stopped, one last read: the server still serves after the attack.
                let last = stopping.load(Ordering::SeqCst);
                if Instant::now() >= next_read || last {
                    match probe.read(kept.as_ref()).await {
                        Ok(latency) => {
                            if report.reads > 0 && !stopping.load(Ordering::SeqCst) {
                                report.reads_during += 1;
                            }
                            report.reads += 1;
                            report.slowest = report.slowest.max(latency);
                        }
                        Err(failure) => report.failures.push(failure),
                    }
                    next_read = Instant::now() + Duration::from_millis(100);
                }
                if last {
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Watch { stop, task }
    }

    /// Stops the watch and asserts on what it saw during `attack`.
    async fn finish(self, attack: &str) -> WatchReport {
        self.stop.store(true, Ordering::SeqCst);
        let report = tokio::time::timeout(BOUND + READ_LATENCY, self.task)
            .await
            .expect("the watch ends")
            .expect("the watch task");
        eprintln!(
            "{attack}: {} good reads ({} during the attack), slowest {:?}, peak RSS {} MB",
            report.reads,
            report.reads_during,
            report.slowest,
            report.peak_rss_kb / 1024
        );
        assert!(!report.exited, "{attack}: the server process exited");
        assert!(
            report.failures.is_empty(),
            "{attack}: the well-behaved client was not served ({} of {} reads failed): {:?}",
            report.failures.len(),
            report.failures.len() + report.reads,
            report.failures
        );
        assert!(
            report.reads_during >= 1,
            "{attack}: the well-behaved client read during the attack"
        );
        assert!(
            report.peak_rss_kb < MAX_RSS_KB,
            "{attack}: the server's RSS reached {} kB (bound {MAX_RSS_KB} kB)",
            report.peak_rss_kb
        );
        report
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2: frames and the few HPACK encodings a request needs (RFC 9113, RFC 7541).
// ---------------------------------------------------------------------------------------------

mod raw_h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const CANCEL: u32 = 0x8;
    pub const REFUSED_STREAM: u32 = 0x7;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// An HPACK integer with an `prefix`-bit prefix, the high bits of the first byte `flags`.
    fn integer(prefix: u8, flags: u8, value: usize, out: &mut Vec<u8>) {
        let max = (1usize << prefix) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    fn string(bytes: &[u8], out: &mut Vec<u8>) {
        integer(7, 0, bytes.len(), out); // no Huffman coding
        out.extend_from_slice(bytes);
    }

    /// A literal header field without indexing, its name from the static table.
    fn indexed_name(index: usize, value: &[u8], out: &mut Vec<u8>) {
        integer(4, 0, index, out);
        string(value, out);
    }

    /// A literal header field without indexing, with a new name.
    pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        out.push(0);
        string(name, out);
        string(value, out);
    }

    /// The header block of a request: `:method`, `:scheme https`, `:authority localhost`,
    /// `:path`, then `headers`.
    pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        indexed_name(2, method.as_bytes(), &mut block);
        block.push(0x87); // :scheme https, indexed
        indexed_name(1, b"localhost", &mut block);
        indexed_name(4, path.as_bytes(), &mut block);
        for (name, value) in headers {
            literal(name.as_bytes(), value.as_bytes(), &mut block);
        }
        block
    }

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// RST_STREAM's or GOAWAY's error code.
        pub fn code(&self) -> Option<u32> {
            let at = match self.kind {
                RST_STREAM => 0,
                GOAWAY => 4,
                _ => return None,
            };
            let bytes = self.payload.get(at..at + 4)?;
            Some(u32::from_be_bytes(bytes.try_into().unwrap()))
        }

        /// GOAWAY's last stream id.
        pub fn last_stream(&self) -> Option<u32> {
            (self.kind == GOAWAY)
                .then(|| self.payload.get(..4))
                .flatten()
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()) & 0x7fff_ffff)
        }

        /// The value of one SETTINGS parameter.
        pub fn setting(&self, id: u16) -> Option<u32> {
            (self.kind == SETTINGS).then_some(())?;
            self.payload.chunks_exact(6).find_map(|p| {
                (u16::from_be_bytes([p[0], p[1]]) == id)
                    .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
            })
        }
    }

    /// Splits complete frames off the front of `buf`.
    pub fn take_frames(buf: &mut Vec<u8>) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
            frames.push(Frame {
                kind: buf[at + 3],
                flags: buf[at + 4],
                stream,
                payload: buf[at + 9..at + 9 + len].to_vec(),
            });
            at += 9 + len;
        }
        buf.drain(..at);
        frames
    }
}

/// What the server did on a raw HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Outcome {
    /// Streams answered with HEADERS.
    answered: Vec<u32>,
    /// (stream, error code) of each RST_STREAM.
    resets: Vec<(u32, u32)>,
    /// (last stream id, error code) of the first GOAWAY.
    goaway: Option<(u32, u32)>,
    /// The server closed the connection.
    closed: bool,
    /// The server's MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
}

/// A raw HTTP/2 connection: TLS with ALPN h2, the preface and an empty SETTINGS written.
struct RawH2 {
    reader: tokio::io::ReadHalf<TlsStream<TcpStream>>,
    writer: tokio::io::WriteHalf<TlsStream<TcpStream>>,
    buf: Vec<u8>,
    outcome: H2Outcome,
}

impl RawH2 {
    async fn open(target: &Target) -> RawH2 {
        let tls = connect_tls(target.addr, target.h2.clone())
            .await
            .expect("a TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the server speaks HTTP/2"
        );
        let (reader, mut writer) = tokio::io::split(tls);
        let mut hello = raw_h2::PREFACE.to_vec();
        hello.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
        writer.write_all(&hello).await.unwrap();
        RawH2 {
            reader,
            writer,
            buf: Vec::new(),
            outcome: H2Outcome::default(),
        }
    }

    /// Reads frames until `done(outcome)`, the server closes, or `limit`; records what it saw
    /// and acknowledges the server's SETTINGS.
    async fn read_until(&mut self, limit: Duration, done: impl Fn(&H2Outcome) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = vec![0u8; 64 * 1024];
        while !done(&self.outcome) && !self.outcome.closed {
            let n = match tokio::time::timeout_at(deadline, self.reader.read(&mut chunk)).await {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.outcome.closed = true;
                    return;
                }
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            for frame in raw_h2::take_frames(&mut self.buf) {
                match frame.kind {
                    raw_h2::SETTINGS if frame.flags & raw_h2::ACK == 0 => {
                        if let Some(max) = frame.setting(raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS) {
                            self.outcome.max_streams = Some(max);
                        }
                        let ack = raw_h2::frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]);
                        let _ = self.writer.write_all(&ack).await;
                    }
                    raw_h2::HEADERS => self.outcome.answered.push(frame.stream),
                    raw_h2::RST_STREAM => self
                        .outcome
                        .resets
                        .push((frame.stream, frame.code().unwrap_or(u32::MAX))),
                    raw_h2::GOAWAY if self.outcome.goaway.is_none() => {
                        self.outcome.goaway = Some((
                            frame.last_stream().unwrap_or(0),
                            frame.code().unwrap_or(u32::MAX),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Writes `bytes` in pieces while reading what the server sends (so that neither side's
    /// buffers fill up); stops writing when the server closes. Whether it all went out.
    async fn write_while_reading(&mut self, bytes: &[u8], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        for piece in bytes.chunks(16 * 1024) {
            if self.outcome.closed || Instant::now() >= deadline {
                return false;
            }
            let wrote = tokio::time::timeout(BOUND, self.writer.write_all(piece)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                return false;
            }
            self.read_until(Duration::from_millis(1), |_| false).await;
        }
        let _ = self.writer.flush().await;
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TLS records: hand-built ClientHellos and the server's answer to them (RFC 5246, 8446).
// ---------------------------------------------------------------------------------------------

mod raw_tls {
    pub const HANDSHAKE: u8 = 22;
    pub const ALERT: u8 = 21;
    pub const CERTIFICATE: u8 = 11;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const HANDSHAKE_FAILURE: u8 = 40;

    fn u16s(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn with_u16_len(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn u24(n: usize) -> [u8; 3] {
        let b = (n as u32).to_be_bytes();
        [b[1], b[2], b[3]]
    }

    pub fn record(kind: u8, version: u16, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&with_u16_len(body));
        out
    }

    pub fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u24(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A ClientHello record for `version` (0x0300 SSL 3.0 … 0x0303 TLS 1.2) without a
    /// `supported_versions` extension, so `version` is all the client offers;
    /// `signature_algorithms`: with that extension (which only TLS 1.2 defines).
    pub fn client_hello(version: u16, signature_algorithms: bool) -> Vec<u8> {
        let suites: &[u16] = if version >= 0x0303 {
            // ECDHE-ECDSA / ECDHE-RSA with AES-GCM and ChaCha20 (what rustls serves in TLS 1.2).
            &[0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc030, 0xcca8, 0x00ff]
        } else {
            // The CBC suites of TLS 1.0/1.1 and SSL 3.0.
            &[
                0xc009, 0xc013, 0xc00a, 0xc014, 0x002f, 0x0035, 0x000a, 0x00ff,
            ]
        };
        let mut extensions = Vec::new();
        let mut extension = |kind: u16, body: Vec<u8>| {
            extensions.extend_from_slice(&kind.to_be_bytes());
            extensions.extend_from_slice(&with_u16_len(&body));
        };
        let mut sni = vec![0u8];
        sni.extend_from_slice(&with_u16_len(b"localhost"));
        extension(0x0000, with_u16_len(&sni));
        extension(0x000a, with_u16_len(&u16s(&[0x001d, 0x0017, 0x0018])));
        extension(0x000b, vec![1, 0]);
        if signature_algorithms {
            extension(
                0x000d,
                with_u16_len(&u16s(&[0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501])),
            );
        }
        extension(0x0017, Vec::new()); // extended_master_secret
        let mut hello = version.to_be_bytes().to_vec();
        hello.extend_from_slice(&[0x5a; 32]); // random
        hello.push(0); // no session id
        hello.extend_from_slice(&with_u16_len(&u16s(suites)));
        hello.extend_from_slice(&[1, 0]); // compression: null
        hello.extend_from_slice(&with_u16_len(&extensions));
        record(HANDSHAKE, version.min(0x0301), &handshake(1, &hello))
    }

    /// A Certificate handshake message carrying `der`.
    pub fn certificate(der: &[u8]) -> Vec<u8> {
        let mut entry = u24(der.len()).to_vec();
        entry.extend_from_slice(der);
        let mut body = u24(entry.len()).to_vec();
        body.extend_from_slice(&entry);
        handshake(CERTIFICATE, &body)
    }

    /// Records in `bytes` as (type, payload); a trailing partial record is ignored.
    pub fn records(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while bytes.len() >= at + 5 {
            let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
            if bytes.len() < at + 5 + len {
                break;
            }
            out.push((bytes[at], bytes[at + 5..at + 5 + len].to_vec()));
            at += 5 + len;
        }
        out
    }

    /// The types of the handshake messages in the plaintext handshake records of `bytes`.
    pub fn handshake_types(bytes: &[u8]) -> Vec<u8> {
        let stream: Vec<u8> = records(bytes)
            .into_iter()
            .filter(|(kind, _)| *kind == HANDSHAKE)
            .flat_map(|(_, payload)| payload)
            .collect();
        let mut types = Vec::new();
        let mut at = 0;
        while stream.len() >= at + 4 {
            types.push(stream[at]);
            let len = u32::from_be_bytes([0, stream[at + 1], stream[at + 2], stream[at + 3]]);
            at += 4 + len as usize;
        }
        types
    }

    /// (level, description) of the alerts in `bytes`.
    pub fn alerts(bytes: &[u8]) -> Vec<(u8, u8)> {
        records(bytes)
            .into_iter()
            .filter(|(kind, p)| *kind == ALERT && p.len() == 2)
            .map(|(_, p)| (p[0], p[1]))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Slow-loris.
// ---------------------------------------------------------------------------------------------

/// Writes `bytes` one at a time, one every `every`, reading all along, until the server closes
/// the connection or [`cut_off_bound`] passes: after how long it was closed, and what the server
/// sent.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    bytes: Vec<u8>,
    every: Duration,
    started: Instant,
) -> (Option<Duration>, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = 0;
    while started.elapsed() < cut_off_bound() {
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(started.elapsed()), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                if next < bytes.len() {
                    let wrote = stream.write_all(&bytes[next..next + 1]).await;
                    if wrote.is_err() || stream.flush().await.is_err() {
                        return (Some(started.elapsed()), got);
                    }
                    next += 1;
                }
            }
        }
    }
    (None, got)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loris {
    /// TCP connected, not a byte sent.
    SilentTcp,
    /// A real ClientHello, one byte at a time, never its last byte.
    TrickledClientHello,
    /// TLS done, then nothing.
    SilentTls,
    /// TLS done, an HTTP/1.1 request head (with the root token) one byte at a time, never its
    /// final empty line.
    TrickledHttp1Head,
    /// TLS done (ALPN h2), the HTTP/2 preface, SETTINGS and a HEADERS frame one byte at a time.
    TrickledHttp2,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_cut_off_while_others_are_served() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    let per_kind = 60;
    let every = Duration::from_millis(250);
    let hello = {
        let mut connection = rustls::ClientConnection::new(
            target.h1.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut bytes = Vec::new();
        connection.write_tls(&mut bytes).unwrap();
        bytes.pop(); // never complete
        bytes
    };
    let mut head = format!(
        "GET /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {}\r\nx-padding: ",
        target.root
    )
    .into_bytes();
    head.extend(std::iter::repeat_n(b'a', 4096));
    let mut h2 = raw_h2::PREFACE.to_vec();
    h2.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
    let block = raw_h2::request(
        "GET",
        &format!("/v1/secret/data/{SECRET}"),
        &[("x-vault-token", &target.root)],
    );
    let mut headers = raw_h2::frame(
        raw_h2::HEADERS,
        raw_h2::END_STREAM | raw_h2::END_HEADERS,
        1,
        &block,
    );
    headers.pop();
    h2.extend(headers);

    let kinds = [
        Loris::SilentTcp,
        Loris::TrickledClientHello,
        Loris::SilentTls,
        Loris::TrickledHttp1Head,
        Loris::TrickledHttp2,
    ];
    let mut attacks = JoinSet::new();
    for kind in kinds {
        for _ in 0..per_kind {
            let (addr, h1, h2_config) = (target.addr, target.h1.clone(), target.h2.clone());
            let (hello, head, h2) = (hello.clone(), head.clone(), h2.clone());
            attacks.spawn(async move {
                let started = Instant::now();
                let (closed, got) = match kind {
                    Loris::SilentTcp => {
                        trickle(connect_tcp(addr).await, vec![], every, started).await
                    }
                    Loris::TrickledClientHello => {
                        trickle(connect_tcp(addr).await, hello, every, started).await
                    }
                    Loris::SilentTls | Loris::TrickledHttp1Head => {
                        let tls = connect_tls(addr, h1).await.expect("a TLS handshake");
                        let bytes = if kind == Loris::SilentTls {
                            vec![]
                        } else {
                            head
                        };
                        trickle(tls, bytes, every, started).await
                    }
                    Loris::TrickledHttp2 => {
                        let tls = connect_tls(addr, h2_config).await.expect("a TLS handshake");
                        trickle(tls, h2, every, started).await
                    }
                };
                (kind, closed, got)
            });
        }
    }
    let mut slowest = std::collections::BTreeMap::<String, Duration>::new();
    while let Some(done) = attacks.join_next().await {
        let (kind, closed, got) = done.unwrap();
        let Some(after) = closed else {
            panic!("{kind:?}: still open after {:?}", cut_off_bound());
        };
        let kind_slowest = slowest.entry(format!("{kind:?}")).or_default();
        *kind_slowest = (*kind_slowest).max(after);
        assert!(
            !contains(&got, target.value.as_bytes()),
            "{kind:?}: the secret was served"
        );
        match kind {
            // Before TLS: nothing but TLS records (an alert) may come back.
            Loris::SilentTcp | Loris::TrickledClientHello => assert!(
                raw_tls::records(&got)
                    .iter()
                    .all(|(kind, _)| *kind == raw_tls::ALERT),
                "{kind:?}: {}",
                excerpt(&got)
            ),
            // An unfinished HTTP/1 head: closed, at most with a 4xx (hyper's 408/400).
            Loris::SilentTls | Loris::TrickledHttp1Head => {
                let answers = parse_answers(&got, false)
                    .unwrap_or_else(|e| panic!("{kind:?}: {e}: {}", excerpt(&got)));
                assert!(
                    answers.iter().all(|a| (400..500).contains(&a.status)),
                    "{kind:?}: {answers:?}"
                );
            }
            // HTTP/2: SETTINGS, perhaps a GOAWAY; never a response (HEADERS).
            Loris::TrickledHttp2 => {
                let mut buf = got.clone();
                let frames = raw_h2::take_frames(&mut buf);
                assert!(
                    frames.iter().all(|f| f.kind != raw_h2::HEADERS),
                    "{kind:?}: {frames:?}"
                );
            }
        }
    }
    eprintln!(
        "slow-loris: {} connections; the last of each kind cut off after {slowest:?}",
        per_kind * kinds.len()
    );
    watch.finish("slow-loris").await;
    target.finish("slow-loris");
}

// ---------------------------------------------------------------------------------------------
// 2. Slow bodies.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_trickled_or_left_unfinished_are_cut_off_by_the_body_deadline() {
    let target = Target::start().await;
    let token = target.weak_token().await;
    let watch = Watch::start(&target.probe(), false);
    const MIB: usize = 1024 * 1024;
    let slow_h1 = 24;
    let stalled_h1 = 8;
    let slow_h2 = 8;
    let head = |i: usize| {
        format!(
            "POST /v1/secret/data/flood/slow-{i} HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {token}\r\ncontent-type: application/json\r\ncontent-length: {MIB}\r\n\r\n"
        )
        .into_bytes()
    };
    let body_start = br#"{"data":{"v":""#;
    let mut attacks = JoinSet::new();
    // HTTP/1.1, a byte every 200 ms of a body announced as 1 MiB.
    for i in 0..slow_h1 {
        let tls = connect_tls(target.addr, target.h1.clone()).await.unwrap();
        let mut first = head(i);
        first.extend_from_slice(body_start);
        attacks.spawn(async move {
            let started = Instant::now();
            let (mut reader, mut writer) = tokio::io::split(tls);
            writer.write_all(&first).await.unwrap();
            let trickling = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if writer.write_all(b"a").await.is_err() || writer.flush().await.is_err() {
                        return;
                    }
                }
            });
            let (got, closed) = read_until_closed(&mut reader, cut_off_bound()).await;
            trickling.abort();
            ("trickled", i, closed, started.elapsed(), got)
        });
    }
    // HTTP/1.1, all of the 1 MiB body but its last byte at once, then nothing: the server
    // buffers it until the deadline.
    for i in slow_h1..slow_h1 + stalled_h1 {
        let tls = connect_tls(target.addr, target.h1.clone()).await.unwrap();
        let mut request = head(i);
        request.extend_from_slice(body_start);
        request.resize(request.len() + MIB - body_start.len() - 1, b'a');
        attacks.spawn(async move {
            let started = Instant::now();
            let (mut reader, mut writer) = tokio::io::split(tls);
            let writing = tokio::spawn(async move {
                let _ = writer.write_all(&request).await;
                std::future::pending::<()>().await;
                drop(writer);
            });
            let (got, closed) = read_until_closed(&mut reader, cut_off_bound()).await;
            writing.abort();
            ("stalled", i, closed, started.elapsed(), got)
        });
    }
    // HTTP/2: streams on one connection, each a DATA frame of one byte every 200 ms.
    let tls = connect_tls(target.addr, target.h2.clone()).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let driving = tokio::spawn(connection);
    let mut h2_streams = JoinSet::new();
    for i in 0..slow_h2 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!(
            "https://localhost/v1/secret/data/flood/slow-h2-{i}"
        ))
        .header("x-vault-token", &token)
        .header("content-length", MIB.to_string())
        .body(())
        .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        h2_streams.spawn(async move {
            let started = Instant::now();
            let trickling = tokio::spawn(async move {
                let _ = body.send_data(Bytes::from_static(body_start), false);
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if body.send_data(Bytes::from_static(b"a"), false).is_err() {
                        return;
                    }
                }
            });
            let answer = tokio::time::timeout(cut_off_bound(), response).await;
            trickling.abort();
            let outcome = match answer {
                Err(_) => Err(format!("no answer within {:?}", cut_off_bound())),
                Ok(Ok(response)) => Ok(response.status().as_u16().to_string()),
                // A reset stream or connection is a cut-off too.
                Ok(Err(error)) => Ok(h2_failure("reset", &error)),
            };
            (i, outcome, started.elapsed())
        });
    }

    let mut slowest = Duration::ZERO;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(done) = attacks.join_next().await {
        let (how, i, closed, after, got) = done.unwrap();
        assert!(closed, "{how} body #{i}: still open after {after:?}");
        slowest = slowest.max(after);
        let answers = parse_answers(&got, false)
            .unwrap_or_else(|e| panic!("{how} #{i}: {e}: {}", excerpt(&got)));
        // 408 with the Vault-shaped body (or, if the close raced the answer, nothing).
        assert!(answers.len() <= 1, "{how} #{i}: {answers:?}");
        if let Some(answer) = answers.first() {
            assert_eq!(answer.status, 408, "{how} #{i}: {answer:?}");
            assert_eq!(
                answer.body, br#"{"errors":["request body not received in time"]}"#,
                "{how} #{i}"
            );
        }
        let status = answers
            .first()
            .map_or("closed".into(), |a| a.status.to_string());
        *outcomes
            .entry(format!("HTTP/1.1 {how}: {status}"))
            .or_default() += 1;
    }
    while let Some(done) = h2_streams.join_next().await {
        let (i, outcome, after) = done.unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("HTTP/2 slow body #{i}: {e}"));
        // 408, or the stream or the connection reset.
        assert!(
            outcome == "408" || outcome.starts_with("reset"),
            "HTTP/2 slow body #{i}: {outcome}"
        );
        *outcomes
            .entry(format!("HTTP/2 trickled: {outcome}"))
            .or_default() += 1;
        slowest = slowest.max(after);
    }
    driving.abort();
    eprintln!("slow bodies: {outcomes:?}, the last cut off after {slowest:?}");
    // Nothing of a body that did not arrive was written.
    for path in ["flood/slow-0", "flood/slow-30", "flood/slow-h2-0"] {
        assert_eq!(
            target.root_status(path).await,
            404,
            "{path} was not written"
        );
    }
    watch.finish("slow bodies").await;
    target.finish("slow bodies");
}

// ---------------------------------------------------------------------------------------------
// 3. Many idle TLS connections, beyond the connection cap.
// ---------------------------------------------------------------------------------------------

/// `kinko server --dev` has the default cap, [`MAX_CONNECTIONS`] (4096): `Config::dev` does not
/// read `KINKO_MAX_CONNECTIONS` (server/src/config.rs), so this attack fills the real cap. A
/// connection that never sends a request is closed 10 s after accept (see the slow-loris test);
/// to hold a slot longer, as an attacker would, each connection here sends one cheap request
/// (`sys/health` over HTTP/2, never reading the answer) and then stays idle, which the server
/// tolerates for its 30 s idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_refused_at_once_and_others_are_served_once_they_go() {
    let target = Target::start().await;
    let probe = target.probe();
    // The well-behaved client's connection is open before the attack and stays in use.
    let watch = Watch::start(&probe, true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut hold = raw_h2::PREFACE.to_vec();
    hold.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
    hold.extend(raw_h2::frame(
        raw_h2::HEADERS,
        raw_h2::END_STREAM | raw_h2::END_HEADERS,
        1,
        &raw_h2::request("GET", "/v1/sys/health", &[]),
    ));
    let hold = Arc::new(hold);
    let held = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let holders = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    let opening = Instant::now();
    let workers = 32;
    let mut openers = JoinSet::new();
    for _ in 0..workers {
        let (addr, config) = (target.addr, target.h2.clone());
        let (hold, held, refused) = (hold.clone(), held.clone(), refused.clone());
        let (closed_by_server, holders) = (closed_by_server.clone(), holders.clone());
        openers.spawn(async move {
            for _ in 0..MAX_CONNECTIONS / workers {
                let Ok(mut tls) = connect_tls(addr, config.clone()).await else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                if tls.write_all(&hold).await.is_err() {
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                held.fetch_add(1, Ordering::SeqCst);
                let closed_by_server = closed_by_server.clone();
                holders.lock().await.spawn(async move {
                    // Drain what the server sends; count it if the server closes.
                    let mut buf = [0u8; 4096];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    closed_by_server.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
    }
    while let Some(done) = tokio::time::timeout(Duration::from_secs(60), openers.join_next())
        .await
        .expect("the connections open in time")
    {
        done.unwrap();
    }
    let opened_in = opening.elapsed();
    let (held_now, refused_now) = (held.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    eprintln!(
        "connection cap: {held_now} connections held, {refused_now} refused, opened in {opened_in:?}, RSS {} MB",
        probe.rss_kb().unwrap_or(0) / 1024
    );
    assert_eq!(
        closed_by_server.load(Ordering::SeqCst),
        0,
        "the server closed held connections before their idle timeout: the attack could not fill the cap"
    );
    // The cap is where it is documented: the attack's connections and the well-behaved one.
    assert!(
        (MAX_CONNECTIONS - 8..MAX_CONNECTIONS).contains(&held_now),
        "{held_now} connections held: the cap is {MAX_CONNECTIONS}"
    );

    // At the cap, a new connection is closed at once: no TLS handshake, no queue.
    for i in 0..16 {
        let started = Instant::now();
        let attempt = connect_tls(target.addr, target.h1.clone()).await;
        assert!(
            attempt.is_err(),
            "connection #{i} beyond the cap was served"
        );
        assert!(
            started.elapsed() < READ_LATENCY,
            "connection #{i} beyond the cap was refused only after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(closed_by_server.load(Ordering::SeqCst), 0);
    watch.finish("connection cap (established client)").await;

    // The attacker goes: a fresh client is served again, at once.
    holders.lock().await.abort_all();
    let mut served = Err("never tried".to_owned());
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        served = probe.read(None).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.expect("a fresh client is served once the idle connections are gone");
    let watch = Watch::start(&probe, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.finish("connection cap (after the attack)").await;
    target.finish("connection cap");
}

// ---------------------------------------------------------------------------------------------
// 4. Header floods and oversized headers.
// ---------------------------------------------------------------------------------------------

/// The oversized heads: one header of 100 KiB, and 10,000 headers (small enough together, 60 KB,
/// to fit the 64 KiB head buffer, so hyper's count limit is what refuses them), and 10,000
/// headers of 100 bytes (1 MB).
fn oversized_headers() -> Vec<(&'static str, Vec<(String, String)>)> {
    vec![
        (
            "one 100 KiB header",
            vec![("x-big".to_owned(), "a".repeat(100 * 1024))],
        ),
        (
            "10,000 small headers",
            (0..10_000)
                .map(|_| ("x".to_owned(), "v".to_owned()))
                .collect(),
        ),
        (
            "10,000 headers of 100 bytes",
            (0..10_000)
                .map(|i| (format!("x-h{i}"), "b".repeat(100)))
                .collect(),
        ),
    ]
}

/// How an h2 request failed: the server reset the stream or the connection (its reason), or
/// closed the connection under the client (I/O). Anything else (h2 refusing to send the request
/// itself) would mean the attack never reached the server: the test fails.
fn h2_failure(what: &str, error: &h2::Error) -> String {
    match error.reason() {
        Some(reason) => format!("{what}: {reason:?}"),
        None if error.is_io() => format!("{what}: closed"),
        None => panic!("{what}: not sent? {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused_over_http1_and_http2() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    let shapes = oversized_headers();
    let connections_per_shape = 12;
    let mut h1_statuses = std::collections::BTreeMap::new();
    let mut h2_statuses = std::collections::BTreeMap::new();
    let mut goaways = std::collections::BTreeMap::new();
    let attack = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || attack.elapsed() < MIN_ATTACK {
        rounds += 1;

        // HTTP/1.1: each request carries the root token, so one that got served would show the
        // secret. 431 (hyper: head over the 64 KiB buffer or over 100 headers) or a close.
        let mut attacks = JoinSet::new();
        for (name, headers) in &shapes {
            let mut request = format!(
                "GET /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {}\r\n",
                target.root
            );
            for (header, value) in headers {
                request.push_str(&format!("{header}: {value}\r\n"));
            }
            request.push_str("\r\n");
            assert!(
                name.contains("small") == (request.len() < MAX_HEADER_BYTES as usize),
                "{name}: {} bytes",
                request.len()
            );
            for _ in 0..connections_per_shape {
                let (addr, config, request) = (target.addr, target.h1.clone(), request.clone());
                let name = *name;
                attacks.spawn(async move {
                    let (got, closed) =
                        exchange_on(addr, config, request.into_bytes(), BOUND).await;
                    (name, got, closed)
                });
            }
        }
        while let Some(done) = attacks.join_next().await {
            let (name, got, closed) = done.unwrap();
            assert!(closed, "HTTP/1.1 {name}: the connection stayed open");
            assert!(
                !contains(&got, target.value.as_bytes()),
                "HTTP/1.1 {name}: served"
            );
            let answers = parse_answers(&got, false)
                .unwrap_or_else(|e| panic!("{name}: {e}: {}", excerpt(&got)));
            assert!(answers.len() <= 1, "HTTP/1.1 {name}: {answers:?}");
            let status = answers.first().map(|a| a.status);
            assert!(
                matches!(status, None | Some(400) | Some(431)),
                "HTTP/1.1 {name}: {answers:?}"
            );
            *h1_statuses.entry((name, status)).or_insert(0) += 1;
        }

        // HTTP/2 with the h2 client, which sends header blocks of any size (as HEADERS and
        // CONTINUATION frames). 431 (h2: header list over SETTINGS_MAX_HEADER_LIST_SIZE), or the
        // stream or the connection reset.
        for (name, headers) in &shapes {
            for _ in 0..4 {
                let tls = connect_tls(target.addr, target.h2.clone()).await.unwrap();
                let (client, connection) = h2::client::handshake(tls).await.unwrap();
                let driving = tokio::spawn(connection);
                let mut outcomes = Vec::new();
                for _ in 0..3 {
                    let mut request =
                        http::Request::get(format!("https://localhost/v1/secret/data/{SECRET}"))
                            .header("x-vault-token", &target.root);
                    for (header, value) in headers {
                        request = request.header(header, value);
                    }
                    let outcome = match client.clone().ready().await {
                        Err(error) => h2_failure("connection", &error),
                        Ok(mut ready) => {
                            match ready.send_request(request.body(()).unwrap(), true) {
                                Err(error) => h2_failure("connection", &error),
                                Ok((response, _)) => match tokio::time::timeout(BOUND, response)
                                    .await
                                {
                                    Err(_) => panic!("HTTP/2 {name}: no answer within {BOUND:?}"),
                                    Ok(Ok(response)) => {
                                        let status = response.status().as_u16();
                                        let mut body = response.into_body();
                                        let mut bytes = Vec::new();
                                        while let Ok(Some(Ok(chunk))) =
                                            tokio::time::timeout(BOUND, body.data()).await
                                        {
                                            let _ =
                                                body.flow_control().release_capacity(chunk.len());
                                            bytes.extend_from_slice(&chunk);
                                        }
                                        assert!(
                                            !contains(&bytes, target.value.as_bytes()),
                                            "HTTP/2 {name}: served"
                                        );
                                        format!("{status}")
                                    }
                                    Ok(Err(error)) => h2_failure("reset", &error),
                                },
                            }
                        }
                    };
                    assert!(
                        outcome == "431"
                            || outcome.starts_with("reset")
                            || outcome.starts_with("connection"),
                        "HTTP/2 {name}: {outcome}"
                    );
                    outcomes.push(outcome);
                }
                driving.abort();
                for outcome in outcomes {
                    *h2_statuses.entry((*name, outcome)).or_insert(0) += 1;
                }
            }
        }

        // HTTP/2 CONTINUATION flood (CVE-2024-27316 and kin): a HEADERS frame without END_HEADERS,
        // then CONTINUATION frames without end. The server must stop reading the block (GOAWAY or
        // close) instead of buffering it.
        for round in 0..4 {
            let round = format!("{rounds}.{round}");
            let mut h2 = RawH2::open(&target).await;
            let block = raw_h2::request(
                "GET",
                &format!("/v1/secret/data/{SECRET}"),
                &[("x-vault-token", &target.root)],
            );
            let mut flood = raw_h2::frame(raw_h2::HEADERS, raw_h2::END_STREAM, 1, &block);
            let mut piece = Vec::new();
            raw_h2::literal(b"x-c", &[b'c'; 64], &mut piece);
            let continuation = raw_h2::frame(raw_h2::CONTINUATION, 0, 1, &piece);
            for _ in 0..20_000 {
                flood.extend_from_slice(&continuation);
            }
            h2.write_while_reading(&flood, BOUND).await;
            h2.read_until(BOUND, |o| o.goaway.is_some()).await;
            if h2.outcome.goaway.is_some() {
                h2.read_until(BOUND, |_| false).await;
            }
            let outcome = &h2.outcome;
            assert!(
                outcome.closed,
                "CONTINUATION flood #{round}: the connection stayed open: {outcome:?}"
            );
            assert!(
                outcome.answered.is_empty(),
                "CONTINUATION flood #{round}: answered: {outcome:?}"
            );
            *goaways.entry(outcome.goaway).or_insert(0) += 1;
        }
    }
    eprintln!("header floods: {rounds} rounds");
    eprintln!("header floods, HTTP/1.1: {h1_statuses:?}");
    eprintln!("header floods, HTTP/2: {h2_statuses:?}");
    eprintln!("CONTINUATION floods, GOAWAY (last stream, code): {goaways:?}");
    watch.finish("header floods").await;
    target.finish("header floods");
}

// ---------------------------------------------------------------------------------------------
// 5. HTTP/2 rapid reset and stream floods.
// ---------------------------------------------------------------------------------------------

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// CVE-2023-44487: streams opened and reset at once, thousands in a burst, so the server has
/// work queued for streams the client no longer waits for. Raw frames, so that the burst is one
/// write as an attacker makes it; the attacker reconnects each time it is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_floods_end_with_goaway_while_others_are_served() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    let per_connection = 2_000u32;
    let (workers, connections_per_worker) = (8, 25);
    let target = Arc::new(target);
    let block = raw_h2::request("GET", &format!("/v1/secret/data/{SECRET}"), &[]);
    let mut burst = Vec::new();
    for i in 0..per_connection {
        let stream = 1 + 2 * i;
        burst.extend(raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_STREAM | raw_h2::END_HEADERS,
            stream,
            &block,
        ));
        burst.extend(raw_h2::rst_stream(stream, raw_h2::CANCEL));
    }
    let burst = Arc::new(burst);
    let mut attackers = JoinSet::new();
    let attack = Instant::now();
    for worker in 0..workers {
        let (target, burst) = (target.clone(), burst.clone());
        attackers.spawn(async move {
            let mut streams_before_goaway = Vec::new();
            let mut round = 0;
            while round < connections_per_worker || attack.elapsed() < MIN_ATTACK {
                let mut h2 = RawH2::open(&target).await;
                let all_sent = h2.write_while_reading(&burst, BOUND).await;
                h2.read_until(BOUND, |o| o.goaway.is_some()).await;
                if h2.outcome.goaway.is_some() {
                    h2.read_until(BOUND, |_| false).await;
                }
                let outcome = h2.outcome;
                let summary = format!(
                    "rapid reset {worker}/{round}: all sent {all_sent}, {} answered, {} resets, GOAWAY {:?}, closed {}",
                    outcome.answered.len(),
                    outcome.resets.len(),
                    outcome.goaway,
                    outcome.closed
                );
                // h2 allows HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS (20) streams reset before
                // they were served; beyond that the connection is cut: GOAWAY ENHANCE_YOUR_CALM.
                let (last, code) = outcome
                    .goaway
                    .unwrap_or_else(|| panic!("no GOAWAY: {summary}"));
                assert_eq!(code, ENHANCE_YOUR_CALM, "{summary}");
                assert!(outcome.closed, "the connection stayed open: {summary}");
                assert!(
                    last < 2 * per_connection && (outcome.answered.len() as u32) < per_connection,
                    "the whole flood was processed: {summary}"
                );
                streams_before_goaway.push(last.div_ceil(2));
                round += 1;
            }
            streams_before_goaway
        });
    }
    let mut streams_before_goaway = Vec::new();
    while let Some(done) = attackers.join_next().await {
        streams_before_goaway.extend(done.unwrap());
    }
    eprintln!(
        "rapid reset, raw: {} connections of {per_connection} HEADERS + RST_STREAM pairs each, \
         each cut by GOAWAY ENHANCE_YOUR_CALM after at most {:?} streams ({} streams in all)",
        streams_before_goaway.len(),
        streams_before_goaway.iter().max(),
        streams_before_goaway.iter().sum::<u32>()
    );

    // The same with the h2 client: each request is sent and dropped at once, which makes h2
    // reset it (CANCEL). h2 paces its frames, so the server may keep up; it must then have
    // answered or cut every stream, never queue them unbounded, and the connection must end
    // with GOAWAY or stay usable.
    for connection in 0..4 {
        let tls = connect_tls(target.addr, target.h2.clone()).await.unwrap();
        let (client, driver) = h2::client::handshake(tls).await.unwrap();
        let driving = tokio::spawn(driver);
        let mut sent = 0;
        let mut ended = None;
        for _ in 0..per_connection {
            let ready = tokio::time::timeout(BOUND, client.clone().ready())
                .await
                .expect("the h2 client is ready in time");
            let mut ready = match ready {
                Ok(ready) => ready,
                Err(error) => {
                    ended = Some(error);
                    break;
                }
            };
            let request = http::Request::get(format!("https://localhost/v1/secret/data/{SECRET}"))
                .body(())
                .unwrap();
            match ready.send_request(request, true) {
                Ok(response) => drop(response),
                Err(error) => {
                    ended = Some(error);
                    break;
                }
            }
            sent += 1;
        }
        eprintln!(
            "rapid reset, h2 client #{connection}: {sent} streams sent and reset, ended by {:?}",
            ended.as_ref().map(|e| (e.is_go_away(), e.reason()))
        );
        // Cut by GOAWAY ENHANCE_YOUR_CALM; or the close that follows the GOAWAY reached the
        // client's next write first (an I/O error: broken pipe, reset).
        if let Some(error) = &ended {
            assert!(
                (error.is_go_away() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
                    || error.is_io(),
                "h2 client #{connection}: {error}"
            );
        }
        driving.abort();
    }
    let target = Arc::into_inner(target).unwrap();
    watch.finish("HTTP/2 rapid reset").await;
    target.finish("HTTP/2 rapid reset");
}

/// More streams at once than the server's SETTINGS_MAX_CONCURRENT_STREAMS: each is a request
/// whose body never comes (with a legitimate low-privilege token, so the server does wait for
/// the body), so the first ones stay open and every one beyond the limit must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_the_advertised_limit_are_refused_while_others_are_served() {
    let target = Target::start().await;
    let token = target.weak_token().await;
    let watch = Watch::start(&target.probe(), false);
    let mut h2 = RawH2::open(&target).await;
    h2.read_until(BOUND, |o| o.max_streams.is_some()).await;
    let max = h2
        .outcome
        .max_streams
        .expect("the server advertises SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(max, HTTP2_MAX_CONCURRENT_STREAMS);
    let extra = 300u32;
    let mut burst = Vec::new();
    for i in 0..max + extra {
        let block = raw_h2::request(
            "POST",
            &format!("/v1/secret/data/flood/stream-{i}"),
            &[("x-vault-token", &token), ("content-length", "1024")],
        );
        burst.extend(raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_HEADERS,
            1 + 2 * i,
            &block,
        ));
    }
    assert!(
        h2.write_while_reading(&burst, BOUND).await,
        "the burst went out"
    );
    let excess = |o: &H2Outcome| {
        o.resets
            .iter()
            .filter(|(stream, code)| *stream > 2 * max && *code == raw_h2::REFUSED_STREAM)
            .count() as u32
    };
    h2.read_until(BOUND, |o| o.goaway.is_some() || excess(o) >= extra)
        .await;
    let outcome = &h2.outcome;
    let summary = format!(
        "{} refused beyond the first {max}, resets {:?}…, GOAWAY {:?}, {} answered",
        excess(outcome),
        &outcome.resets[..outcome.resets.len().min(5)],
        outcome.goaway,
        outcome.answered.len()
    );
    eprintln!("stream flood: {summary}");
    // Every stream beyond the limit is refused, or left unprocessed by a GOAWAY.
    let goaway_last = outcome.goaway.map(|(last, _)| last).unwrap_or(u32::MAX);
    for i in max..max + extra {
        let stream = 1 + 2 * i;
        let refused = outcome.resets.contains(&(stream, raw_h2::REFUSED_STREAM));
        assert!(
            refused || stream > goaway_last,
            "stream {stream} (#{i}, beyond {max}) was not refused: {summary}"
        );
        assert!(
            !outcome.answered.contains(&stream),
            "stream {stream} beyond the limit was served: {summary}"
        );
    }
    // The first `max` were accepted: waiting for their bodies, not refused.
    assert!(
        outcome.resets.iter().all(|(stream, _)| *stream > 2 * max),
        "streams within the limit were reset: {summary}"
    );
    // The server is served to others while this connection holds its streams.
    tokio::time::sleep(MIN_ATTACK).await;
    watch.finish("HTTP/2 stream flood").await;
    drop(h2);
    target.finish("HTTP/2 stream flood");
}

/// The stream flood spread over a few connections, by one holder of a token that may do nothing
/// on the path it posts to: each stream announces a body and never sends it. kinko reads a
/// token holder's body before the ACL check, and a request waiting for its body holds one of the
/// server-wide [`MAX_IN_FLIGHT`] request slots until the body deadline, so
/// `MAX_IN_FLIGHT / HTTP2_MAX_CONCURRENT_STREAMS + 1` connections (5) hold them all, for a few KB
/// of HEADERS frames renewed every 10 s. Other clients (root included) must still be served.
///
/// DEFECT (found by this test, not fixed here): today every other request is answered 503 "too
/// many requests in flight" while the streams are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_of_one_low_privilege_token_do_not_starve_other_clients() {
    let target = Target::start().await;
    let root = target.server.client(Some(&target.root));
    root.policy_write(
        "nothing",
        r#"path "secret/data/unrelated" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let token = root
        .token_create(&["nothing"], Some("1h"))
        .await
        .unwrap()
        .client_token;
    // The token may not write where it posts.
    let denied = target
        .server
        .client(Some(&token))
        .kv_write(
            "secret",
            SECRET,
            json!({ "value": "x" }).as_object().unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(403));
    let connections = MAX_IN_FLIGHT / HTTP2_MAX_CONCURRENT_STREAMS as usize + 1;
    let mut held = Vec::new();
    for _ in 0..connections {
        let mut h2 = RawH2::open(&target).await;
        h2.read_until(BOUND, |o| o.max_streams.is_some()).await;
        let max = h2
            .outcome
            .max_streams
            .expect("SETTINGS_MAX_CONCURRENT_STREAMS");
        let mut burst = Vec::new();
        for i in 0..max {
            let block = raw_h2::request(
                "POST",
                &format!("/v1/secret/data/{SECRET}"),
                &[("x-vault-token", &token), ("content-length", "1024")],
            );
            burst.extend(raw_h2::frame(
                raw_h2::HEADERS,
                raw_h2::END_HEADERS,
                1 + 2 * i,
                &block,
            ));
        }
        assert!(h2.write_while_reading(&burst, BOUND).await);
        held.push(h2);
    }
    // Let the server take them all in.
    for h2 in &mut held {
        h2.read_until(Duration::from_millis(200), |_| false).await;
    }
    let watch = Watch::start(&target.probe(), false);
    tokio::time::sleep(MIN_ATTACK).await;
    let answered_at_once: usize = held.iter().map(|h2| h2.outcome.answered.len()).sum();
    eprintln!(
        "stalled bodies: {connections} connections × {HTTP2_MAX_CONCURRENT_STREAMS} streams, \
         {answered_at_once} answered at once (the slots beyond {MAX_IN_FLIGHT}: 503)"
    );
    watch
        .finish("stalled bodies of one low-privilege token")
        .await;
    drop(held);
    target.finish("stalled bodies of one low-privilege token");
}

// ---------------------------------------------------------------------------------------------
// 6. Plain HTTP and old TLS versions on the TLS port.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_tls_before_1_2_get_no_answer_and_are_closed() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    let plain = [
        ("HTTP/1.1", target.get_secret_raw().into_bytes()),
        ("HTTP/2 prior knowledge (h2c)", {
            let mut bytes = raw_h2::PREFACE.to_vec();
            bytes.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
            bytes
        }),
        ("HTTP/1.0", b"GET /v1/sys/health HTTP/1.0\r\n\r\n".to_vec()),
    ];
    let attack = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || attack.elapsed() < MIN_ATTACK {
        rounds += 1;
        for (name, request) in &plain {
            for _ in 0..8 {
                let mut tcp = connect_tcp(target.addr).await;
                let _ = tcp.write_all(request).await;
                let (got, closed) = read_until_closed(&mut tcp, BOUND).await;
                assert!(closed, "plain {name}: the connection stayed open");
                assert!(
                    !contains(&got, b"HTTP/") && !contains(&got, target.value.as_bytes()),
                    "plain {name}: answered over plain text: {}",
                    excerpt(&got)
                );
                // rustls answers bytes that are not TLS with nothing or an alert.
                let records = raw_tls::records(&got);
                assert!(
                    records.iter().all(|(kind, _)| *kind == raw_tls::ALERT),
                    "plain {name}: {}",
                    excerpt(&got)
                );
            }
        }
        // Hand-built ClientHellos offering only SSL 3.0, TLS 1.0 or TLS 1.1 (no supported_versions),
        // as such a client sends them (CBC suites, no signature_algorithms) and with TLS 1.2's
        // signature_algorithms added. rustls serves TLS 1.2 and 1.3 only: a fatal alert and the
        // connection closed, never a ServerHello. With signature_algorithms the alert is
        // protocol_version; without, rustls stops one check earlier with handshake_failure (it
        // requires that extension). (The openssl CLI installed here, 3.0, refuses `-tls1`/`-tls1_1`
        // at its default security level by itself, so it cannot show what the server does.)
        for (name, version) in [
            ("SSL 3.0", 0x0300),
            ("TLS 1.0", 0x0301),
            ("TLS 1.1", 0x0302),
        ] {
            for attempt in 0..8 {
                let signature_algorithms = attempt % 2 == 1;
                let hello = raw_tls::client_hello(version, signature_algorithms);
                let mut tcp = connect_tcp(target.addr).await;
                tcp.write_all(&hello).await.unwrap();
                let (got, closed) = read_until_closed(&mut tcp, BOUND).await;
                assert!(closed, "{name}: the connection stayed open");
                let records = raw_tls::records(&got);
                assert!(
                    records.iter().all(|(kind, _)| *kind == raw_tls::ALERT),
                    "{name}: the server answered more than an alert (a ServerHello?): {records:?}"
                );
                let expected = if signature_algorithms {
                    raw_tls::PROTOCOL_VERSION
                } else {
                    raw_tls::HANDSHAKE_FAILURE
                };
                assert_eq!(
                    raw_tls::alerts(&got),
                    [(2, expected)],
                    "{name} (signature_algorithms: {signature_algorithms}): one fatal alert"
                );
            }
        }
    }
    eprintln!("plain HTTP, old TLS: {rounds} rounds");
    // The same hello offering TLS 1.2 gets a ServerHello: the refusal above is the version.
    let mut tcp = connect_tcp(target.addr).await;
    tcp.write_all(&raw_tls::client_hello(0x0303, true))
        .await
        .unwrap();
    let got = read_server_flight(&mut tcp).await;
    assert_eq!(
        raw_tls::handshake_types(&got).first(),
        Some(&2),
        "a ServerHello"
    );
    watch.finish("plain HTTP, old TLS").await;
    target.finish("plain HTTP, old TLS");
}

/// Reads the server's plaintext TLS 1.2 flight, up to its ServerHelloDone (or close, or
/// [`BOUND`]).
async fn read_server_flight(tcp: &mut TcpStream) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !raw_tls::handshake_types(&got).contains(&raw_tls::SERVER_HELLO_DONE) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// 7. A client certificate the server did not ask for.
// ---------------------------------------------------------------------------------------------

/// A client certificate resolver that counts how often rustls asks it for a certificate: rustls
/// asks only when the server sent a CertificateRequest.
#[derive(Debug)]
struct CountingClientCert {
    key: Arc<rustls::sign::CertifiedKey>,
    asked: AtomicUsize,
}

impl rustls::client::ResolvesClientCert for CountingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server makes no use of client certificates (`with_no_client_auth`): it never sends a
/// CertificateRequest, so a client holding one connects as an anonymous client, and whatever it
/// holds grants nothing — authority comes only from the token. That is safe: nothing about the
/// connection's identity reaches the request, and a certificate pushed in unasked is a protocol
/// violation the TLS stack refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_never_requested_and_grants_nothing() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    // A client certificate signed by nobody the server knows.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["attacker".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "root");
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![der.clone()], signing));

    let attack = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || attack.elapsed() < MIN_ATTACK {
        rounds += 1;
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let resolver = Arc::new(CountingClientCert {
                key: certified.clone(),
                asked: AtomicUsize::new(0),
            });
            let mut config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(target.roots.clone())
            .with_client_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let config = Arc::new(config);
            let name = format!("{:?}", version.version);
            // Without a token: the certificate makes no one of the client.
            let request = format!(
            "GET /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        );
            let (got, closed) =
                exchange_on(target.addr, config.clone(), request.into_bytes(), BOUND).await;
            assert!(closed, "{name}");
            let answers = parse_answers(&got, false).unwrap();
            assert_eq!(answers.len(), 1, "{name}: {answers:?}");
            assert_eq!(answers[0].status, 403, "{name}: anonymous: {answers:?}");
            assert!(!contains(&got, target.value.as_bytes()), "{name}");
            // With the token: served as any client, the certificate ignored.
            let request = format!(
            "GET /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {}\r\nconnection: close\r\n\r\n",
            target.root
        );
            let (got, _) = exchange_on(target.addr, config, request.into_bytes(), BOUND).await;
            let answers = parse_answers(&got, false).unwrap();
            assert_eq!(answers[0].status, 200, "{name}: {answers:?}");
            assert!(contains(&got, target.value.as_bytes()), "{name}");
            assert_eq!(
                resolver.asked.load(Ordering::SeqCst),
                0,
                "{name}: the server asked for a client certificate"
            );
        }

        // TLS 1.2's server flight is plaintext: it holds no CertificateRequest. A Certificate sent
        // unasked in its place is refused with a fatal alert and the connection closed.
        for _ in 0..4 {
            let mut tcp = connect_tcp(target.addr).await;
            tcp.write_all(&raw_tls::client_hello(0x0303, true))
                .await
                .unwrap();
            let flight = read_server_flight(&mut tcp).await;
            let types = raw_tls::handshake_types(&flight);
            assert_eq!(
                types.last(),
                Some(&raw_tls::SERVER_HELLO_DONE),
                "a whole TLS 1.2 server flight: {types:?}"
            );
            assert!(
                !types.contains(&raw_tls::CERTIFICATE_REQUEST),
                "the server asked for a client certificate: {types:?}"
            );
            let unasked = raw_tls::record(
                raw_tls::HANDSHAKE,
                0x0303,
                &raw_tls::certificate(der.as_ref()),
            );
            let _ = tcp.write_all(&unasked).await;
            let (got, closed) = read_until_closed(&mut tcp, BOUND).await;
            assert!(
                closed,
                "the connection stayed open after an unasked certificate"
            );
            let alerts = raw_tls::alerts(&got);
            assert!(
                alerts.len() == 1 && alerts[0].0 == 2,
                "a fatal alert for an unasked certificate: {alerts:?}"
            );
            if rounds == 1 {
                eprintln!("unasked TLS 1.2 Certificate: alert {alerts:?}");
            }
        }
    }
    eprintln!("client certificate: {rounds} rounds");
    watch.finish("client certificate").await;
    target.finish("client certificate");
}

// ---------------------------------------------------------------------------------------------
// 8. Request smuggling shapes over HTTP/1.1.
// ---------------------------------------------------------------------------------------------

/// Each shape is a token-less POST whose length is ambiguous, followed on the same connection
/// by a GET of the secret with the root token, placed where one reading of the length ends the
/// first request. A server that parsed that GET as a second request would answer it with the
/// secret. hyper refuses the malformed shapes (400); `Transfer-Encoding: chunked` with a
/// `Content-Length` it reads as chunked and, as RFC 9112 §6.1 requires, closes the connection
/// after answering, so the bytes behind the body are never parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused_and_nothing_behind_them_is_served() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    let smuggled = target.get_secret_raw();
    let post = format!("POST /v1/secret/data/{SECRET} HTTP/1.1\r\nhost: localhost\r\n");
    // (name, headers, body, whether hyper refuses it outright)
    let chunk_end = "0\r\n\r\n";
    let whole = chunk_end.len() + smuggled.len();
    let shapes: Vec<(&str, String, String, bool)> = vec![
        (
            "TE chunked + CL",
            format!("transfer-encoding: chunked\r\ncontent-length: {whole}\r\n"),
            format!("{chunk_end}{smuggled}"),
            false,
        ),
        (
            "CL + TE chunked",
            format!("content-length: {whole}\r\ntransfer-encoding: chunked\r\n"),
            format!("{chunk_end}{smuggled}"),
            false,
        ),
        (
            "two different CLs",
            format!("content-length: 5\r\ncontent-length: {whole}\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "a CL list",
            format!("content-length: 5, {whole}\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "TE xchunked + CL",
            format!("transfer-encoding: xchunked\r\ncontent-length: {whole}\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "TE chunked, then TE identity",
            "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n".into(),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "TE with a space before the colon",
            format!("transfer-encoding : chunked\r\ncontent-length: {whole}\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "TE in an obs-fold",
            format!("content-length: {whole}\r\nx-fold: a\r\n transfer-encoding: chunked\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "TE value folded",
            format!("content-length: {whole}\r\ntransfer-encoding:\r\n chunked\r\n"),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "CL with a plus sign",
            "content-length: +5\r\n".into(),
            format!("{chunk_end}{smuggled}"),
            true,
        ),
        (
            "a chunk size that overflows",
            "transfer-encoding: chunked\r\n".into(),
            format!("ffffffffffffffffff1\r\nx\r\n{chunk_end}{smuggled}"),
            false,
        ),
    ];
    // The first request either has no token (refused before its body is read) or is the root
    // token's own lookup (its body read to the end, so only the connection's framing stands
    // between the body and the smuggled GET).
    let lookup = format!(
        "POST /v1/auth/token/lookup-self HTTP/1.1\r\nhost: localhost\r\nx-vault-token: {}\r\n",
        target.root
    );
    let mut outcomes = std::collections::BTreeMap::new();
    let attack = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || attack.elapsed() < MIN_ATTACK {
        rounds += 1;
        for (name, headers, body, refused) in &shapes {
            for (first_name, first) in [("token-less", &post), ("lookup-self", &lookup)] {
                for version in ["HTTP/1.1", "HTTP/1.0"] {
                    let first = first.replacen("HTTP/1.1", version, 1);
                    let request = format!("{first}{headers}\r\n{body}");
                    let (got, closed) =
                        exchange_on(target.addr, target.h1.clone(), request.into_bytes(), BOUND)
                            .await;
                    let what = format!("{name} ({first_name}, {version})");
                    assert!(
                        !contains(&got, target.value.as_bytes()),
                        "{what}: the smuggled GET was served: {}",
                        excerpt(&got)
                    );
                    assert!(closed, "{what}: the connection stayed open");
                    let answers = parse_answers(&got, false)
                        .unwrap_or_else(|e| panic!("{what}: {e}: {}", excerpt(&got)));
                    assert_eq!(
                        answers.len(),
                        1,
                        "{what}: one answer, then close: {answers:?}"
                    );
                    let status = answers[0].status;
                    if *refused || version == "HTTP/1.0" {
                        // hyper: malformed framing, or Transfer-Encoding in HTTP/1.0.
                        assert_eq!(status, 400, "{what}: {answers:?}");
                    } else if first_name == "token-less" {
                        // Read as chunked; kinko refuses the request for want of a token.
                        assert!((400..500).contains(&status), "{what}: {answers:?}");
                    } else {
                        // Read as chunked: the lookup itself may be answered, nothing after it.
                        assert!(status < 500, "{what}: {answers:?}");
                    }
                    if !*refused && version == "HTTP/1.1" && name.contains("CL") {
                        // Both lengths given: the answer says the connection ends with it.
                        assert!(
                            answers[0]
                                .head
                                .to_ascii_lowercase()
                                .contains("connection: close"),
                            "{what}: {answers:?}"
                        );
                    }
                    outcomes.insert(what, status);
                }
            }
        }
    }
    eprintln!("request smuggling: {rounds} rounds: {outcomes:#?}");
    // The control: the same GET written on its own is served, so the checks above could fail.
    let (got, _) = exchange_on(
        target.addr,
        target.h1.clone(),
        smuggled
            .replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
            .into_bytes(),
        BOUND,
    )
    .await;
    assert!(contains(&got, target.value.as_bytes()), "{}", excerpt(&got));
    watch.finish("request smuggling").await;
    target.finish("request smuggling");
}

// ---------------------------------------------------------------------------------------------
// 9. Method and path fuzz.
// ---------------------------------------------------------------------------------------------

/// A method: a valid one, a lowercase one, a random token, a very long one, or one with bytes
/// that are not token characters.
fn fuzz_method(rng: &mut StdRng) -> Vec<u8> {
    const KNOWN: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
        "get", "list", "Get", "pOsT", "delete", "PRI",
    ];
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const NOT_TOKEN: &[u8] = b"\x00\x01\x7f(),/:;<=>?@[\\]{}\"\t\x80\xc3\xa9\xff";
    match rng.gen_range(0..10) {
        0..=3 => KNOWN.choose(rng).unwrap().as_bytes().to_vec(),
        4..=5 => (0..rng.gen_range(1..24))
            .map(|_| *TCHAR.choose(rng).unwrap())
            .collect(),
        6 => vec![b'A'; rng.gen_range(1_000..70_000)],
        7 => Vec::new(),
        _ => {
            let mut method = KNOWN.choose(rng).unwrap().as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..=method.len());
                method.insert(at, *NOT_TOKEN.choose(rng).unwrap());
            }
            method
        }
    }
}

/// A path: around the secret and other token-only endpoints (never the endpoints that answer
/// without a token), with traversal, encodings, NUL and control bytes, or very long.
fn fuzz_path(rng: &mut StdRng) -> Vec<u8> {
    const BASES: &[&str] = &[
        "/v1/secret/data/attack/db",
        "/v1/secret/metadata/attack/db",
        "/v1/secret/data/attack/",
        "/v1/secret/data/",
        "/v1/secret/",
        "/v1/sys/policy/root",
        "/v1/sys/policies/acl/root",
        "/v1/sys/mounts",
        "/v1/sys/auth",
        "/v1/sys/audit",
        "/v1/auth/token/lookup-self",
        "/v1/auth/token/create",
        "/v1/",
        "/",
        "/v2/secret/data/attack/db",
        "*",
        "https://localhost/v1/secret/data/attack/db",
        "localhost:443",
    ];
    const PIECES: &[&[u8]] = &[
        b"..",
        b"../",
        b"./",
        b"/",
        b"//",
        b"%2e%2e/",
        b"%2E%2e%2f",
        b"%2f",
        b"%2F",
        b"%00",
        b"%",
        b"%zz",
        b"%252e%252e%252f",
        b"\x00",
        b";",
        b"?list=true",
        b"?token=x",
        b"#frag",
        b"~",
        b"\\..\\",
        b"\xc3\xa9",
        b"%c0%ae%c0%ae/",
        b"\x7f",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"%0d%0a",
        b"?",
        b"&",
        b"=",
        b"attack",
        b"db",
        b"data",
        b"secret",
        b"sys",
    ];
    let mut path = BASES.choose(rng).unwrap().as_bytes().to_vec();
    for _ in 0..rng.gen_range(0..5) {
        let at = rng.gen_range(0..=path.len());
        match rng.gen_range(0..12) {
            0 => {
                let segment = vec![b'a'; rng.gen_range(100..20_000)];
                path.splice(at..at, segment);
            }
            1 => {
                let encoded = b"%41".repeat(rng.gen_range(10..3_000));
                path.splice(at..at, encoded);
            }
            2 if !path.is_empty() => {
                let i = rng.gen_range(0..path.len());
                path[i] = rng.gen();
            }
            _ => {
                let piece = PIECES.choose(rng).unwrap();
                path.splice(at..at, piece.iter().copied());
            }
        }
    }
    if rng.gen_range(0..100) == 0 {
        path.extend(std::iter::repeat_n(b'z', 70_000));
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_methods_and_paths_get_well_formed_4xx_answers_and_never_the_secret() {
    let target = Target::start().await;
    let watch = Watch::start(&target.probe(), false);
    // A fixed seed: a failure names the request, and a rerun sends the same ones.
    let seed = 0x6b69_6e6b_6f16;
    let requests = 3_000;
    let workers = 8;
    let mut rng = StdRng::seed_from_u64(seed);
    let all: Vec<(Vec<u8>, Vec<u8>)> = (0..requests)
        .map(|_| (fuzz_method(&mut rng), fuzz_path(&mut rng)))
        .collect();
    let all = Arc::new(all);
    let next = Arc::new(AtomicUsize::new(0));
    let mut fuzzers = JoinSet::new();
    for _ in 0..workers {
        let (all, next, addr, config) = (all.clone(), next.clone(), target.addr, target.h1.clone());
        let value = target.value.clone();
        fuzzers.spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((method, path)) = all.get(i) else {
                    return statuses;
                };
                let mut request = method.clone();
                request.push(b' ');
                request.extend_from_slice(path);
                request.extend_from_slice(
                    b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                );
                let (got, closed) = exchange_on(addr, config.clone(), request, BOUND).await;
                let shown = format!(
                    "request #{i} (seed {seed:#x}): {} {}",
                    excerpt(method),
                    excerpt(path)
                );
                assert!(closed, "{shown}: no close within {BOUND:?}");
                let answers = parse_answers(&got, method == b"HEAD").unwrap_or_else(|e| {
                    panic!("{shown}: a malformed answer ({e}): {}", excerpt(&got))
                });
                assert_eq!(answers.len(), 1, "{shown}: {answers:?}");
                let answer = &answers[0];
                assert!(
                    (400..500).contains(&answer.status),
                    "{shown}: answered {} {:?}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                assert!(
                    !contains(&got, value.as_bytes()),
                    "{shown}: the secret was served without a token"
                );
                *statuses.entry(answer.status).or_default() += 1;
            }
        });
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while let Some(done) = fuzzers.join_next().await {
        for (status, n) in done.unwrap() {
            *statuses.entry(status).or_default() += n;
        }
    }
    eprintln!("fuzz: {requests} requests, statuses {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), requests);
    watch.finish("method and path fuzz").await;
    target.finish("method and path fuzz");
}
