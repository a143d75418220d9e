//! kinko-tls: the HTTPS front shared by kinko's servers (`kinko` and `kinko-injector`).
//!
//! - [`certs`] — the rustls server configuration whose certificate resolver re-reads the PEM
//!   files when they change (cert-manager renews them in place) and refuses a pair whose key does
//!   not match its certificate.
//! - [`serve`](mod@serve) — the serve loop: a bound listener, an axum `Router` and a shutdown
//!   future, with every connection and request bounded in time and number ([`ServeLimits`]).
//!
//! - [`logging`] — the crypto provider and tracing set-up both binaries start with.
//!
//! Nothing here knows about secrets or storage, so the crate never depends on kinko-server.

pub mod certs;
pub mod logging;
pub mod serve;

pub use certs::{server_config, TlsError};
pub use serve::{serve, shutdown_signal, PeerAddr, ServeLimits};
