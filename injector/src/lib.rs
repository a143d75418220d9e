//! kinko-injector: a mutating admission webhook that starts a Pod's selected containers under
//! envrun, which logs in to kinko with the Pod's own projected service-account token. No secret
//! value is ever written into the Pod spec.
//!
//! - [`mutate`] — the decision, pure: AdmissionReview bytes + [`mutate::Settings`] in, the
//!   AdmissionReview response (with a JSON patch diffed from the raw JSON) out.
//! - [`config`] — `KINKO_INJECTOR_*` variables.
//! - [`http`] — the endpoints, served by `kinko_tls::serve`.
//! - [`registry`] — the ENTRYPOINT/CMD lookup from an image's registry (the I/O the pure
//!   decision leaves out).
//! - [`metrics`] — reviews by outcome and latency, Prometheus text.
//!
//! Never depends on kinko-server: it shares only `kinko-spec` (the `--secret` grammar) with
//! envrun and `kinko-tls` (the HTTPS front) with the server.

pub mod config;
pub mod http;
pub mod metrics;
pub mod mutate;
pub mod registry;
