//! The HTTP API: one entry handler that parses and validates every request the same way,
//! routes it by logical path, and turns results and errors into Vault-shaped responses in one
//! place (`respond`).

mod audit;
mod body;
mod kubernetes;
mod kv;
mod sealed;
mod sys;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use zeroize::Zeroizing;

pub use body::Body;

use crate::core::{Core, Unsealed};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::path::LogicalPath;
use crate::policy::{Acl, Capability};
use crate::tokens::Caller;

pub use crate::config::DEFAULT_MAX_BODY_BYTES;

#[derive(Clone)]
pub struct App {
    pub core: Arc<Core>,
    pub max_body_bytes: usize,
    /// Requests without a token (logins, init, unseal, status) in flight at once: a flood of
    /// them cannot take the request slots that token holders need.
    token_less: Arc<tokio::sync::Semaphore>,
    /// Requests in flight per token (see [`MAX_IN_FLIGHT_PER_TOKEN`]).
    per_token: Arc<crate::ratelimit::InFlight>,
}

/// One token's share of the server-wide in-flight budget (`kinko_tls::MAX_IN_FLIGHT`, 1024):
/// a holder of any valid token who stalls requests (bodies never finished) takes at most this
/// many slots, and the others stay for everyone else. Past it: 429 with `Retry-After`.
pub const MAX_IN_FLIGHT_PER_TOKEN: usize = 256;

/// See [`App`]; logins wait on TokenReview, so this leaves room for a rollout's burst.
pub const MAX_TOKEN_LESS_IN_FLIGHT: usize = 128;

pub fn router(core: Arc<Core>, max_body_bytes: usize) -> Router {
    Router::new().fallback(entry).with_state(App {
        core,
        max_body_bytes,
        token_less: Arc::new(tokio::sync::Semaphore::new(MAX_TOKEN_LESS_IN_FLIGHT)),
        per_token: crate::ratelimit::InFlight::new(MAX_IN_FLIGHT_PER_TOKEN),
    })
}

/// What the request asks to do, as policies name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    List,
    Write,
    Delete,
    Patch,
}

pub struct Req {
    pub op: Operation,
    pub method: Method,
    /// The one canonical path both the policy check and the handler see.
    pub path: LogicalPath,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Body,
    /// The client's address (the TCP peer: a proxy's, behind one).
    pub remote: Option<std::net::SocketAddr>,
    /// The token's caller and ACL, for every endpoint that takes a token.
    caller: Option<(Caller, Arc<Acl>)>,
    /// A limited-use token's use, spent once the request's audit entry is written.
    unspent_use: Option<crate::tokens::Found>,
    /// Held while a token-less request is served.
    _token_less_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Held while a token holder's request is served.
    _token_slot: Option<crate::ratelimit::Slot>,
}

impl Req {
    pub fn query_flag(&self, name: &str) -> bool {
        self.query
            .get(name)
            .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
    }
}

/// A successful outcome, before it is shaped into a response.
pub enum Reply {
    /// 200 with `data`.
    Data(Value),
    /// 200 with `data` given as JSON text (compact, as serde_json writes it).
    DataText(Zeroizing<Vec<u8>>),
    /// `data` with another status (KV answers a deleted version with 404 and its metadata).
    DataWithStatus(StatusCode, Value),
    /// 200 with `auth`.
    Auth(Value),
    /// Older Vault endpoints repeat `data`'s fields at the top level; clients read either.
    Compat(Value),
    /// The body exactly as given (health, seal-status, init).
    Raw(StatusCode, Value),
    /// Plain text (Prometheus metrics).
    Text(String),
    NoContent,
}

async fn entry(State(app): State<App>, request: Request) -> Response {
    let request_id = request_id();
    // At error level so that it is never filtered out while anything inside it logs: every
    // line of a request carries its id.
    let span = tracing::error_span!("request", id = %request_id);
    tracing::Instrument::instrument(serve_request(app, request, request_id), span).await
}

/// A UUID v4 from the thread's CSPRNG (`rand::thread_rng`, seeded from the OS): request ids
/// are not secrets, and `Uuid::new_v4` would cost a `getrandom` system call per request.
fn request_id() -> String {
    let mut id = uuid::Uuid::encode_buffer();
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut id)
        .to_owned()
}

async fn serve_request(app: App, request: Request, request_id: String) -> Response {
    let started = std::time::Instant::now();
    let audited = Audited::of(&app, &request);
    let mut route = UNKNOWN_ROUTE;
    let rendered = match parse(&app, request).await {
        Ok(mut req) => {
            // Fail closed: a request no device could record is not served. A change (or a
            // limited-use token's use) waits for its request entry first, so it costs nothing;
            // a read runs while its request entry is written, and its answer waits for both.
            let reads_only =
                req.unspent_use.is_none() && matches!(req.op, Operation::Read | Operation::List);
            let mut pending = None;
            let recorded = match &audited {
                Some(audit) if reads_only => {
                    pending = Some(audit.submit_request(Some(&req), &request_id, "", false));
                    Ok(())
                }
                Some(audit) => {
                    let entry = audit.submit_request(Some(&req), &request_id, "", true);
                    entry.confirmed().await
                }
                None => Ok(()),
            };
            match recorded {
                Err(error) => render(Err(error), &request_id),
                Ok(()) => {
                    let result = match req.spend_use(&app).await {
                        Ok(()) => {
                            let (label, result) = self::route(&app, &req).await;
                            route = label;
                            result
                        }
                        Err(error) => Err(error),
                    };
                    let result = result.map(|reply| (reply, mount_type(req.path.as_str())));
                    let rendered = render(result, &request_id);
                    match &audited {
                        Some(audit) => {
                            audit
                                .response(Some(&req), &request_id, rendered, pending)
                                .await
                        }
                        None => rendered,
                    }
                }
            }
        }
        Err(error) => {
            let rendered = render(Err(error), &request_id);
            match &audited {
                Some(audit) => {
                    let error = rendered
                        .json_body()
                        .and_then(|b| b["errors"][0].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let entry = audit.submit_request(None, &request_id, &error, true);
                    match entry.confirmed().await {
                        Ok(()) => audit.response(None, &request_id, rendered, None).await,
                        Err(error) => render(Err(error), &request_id),
                    }
                }
                None => rendered,
            }
        }
    };
    METRICS.request_latency(route, rendered.status.as_u16(), started.elapsed());
    rendered.into_response()
}

/// What the audit devices need of a request that is audited: every request while unsealed
/// with a device enabled, except the status probes (`sys/health`, `seal-status`, `leader`),
/// which load balancers and kubelets call every few seconds and which carry nothing.
struct Audited {
    devices: Arc<Vec<Arc<crate::audit::device::Device>>>,
    method: Method,
    path: String,
    token: Option<String>,
    remote: Option<std::net::SocketAddr>,
    /// Per device, the `auth` and `request` blocks both entries carry: built by the first
    /// entry, from the same record the second would build (the request, token and id do not
    /// change while it is served).
    blocks: std::sync::OnceLock<Vec<crate::audit::Blocks>>,
}

impl Audited {
    fn of(app: &App, request: &Request) -> Option<Audited> {
        let devices = app.core.unsealed().ok()?.audit.current();
        if devices.is_empty() {
            return None;
        }
        let path = request.uri().path();
        let path = path.strip_prefix("/v1/").unwrap_or(path);
        if matches!(
            path.trim_end_matches('/'),
            "sys/health" | "sys/seal-status" | "sys/leader"
        ) {
            return None;
        }
        Some(Audited {
            devices,
            method: request.method().clone(),
            path: path.to_owned(),
            token: presented_token(request.headers()).map(str::to_owned),
            remote: request
                .extensions()
                .get::<kinko_tls::PeerAddr>()
                .map(|peer| peer.0),
            blocks: std::sync::OnceLock::new(),
        })
    }

    fn blocks(&self, req: Option<&Req>, id: &str) -> &[crate::audit::Blocks] {
        self.blocks.get_or_init(|| {
            let record = self.record(req, id);
            self.devices
                .iter()
                .map(|device| crate::audit::Blocks::new(&device.salt, &record))
                .collect()
        })
    }

    fn record<'a>(&'a self, req: Option<&'a Req>, id: &'a str) -> crate::audit::RequestRecord<'a> {
        let operation = match req.map(|r| r.op) {
            Some(Operation::Read) => "read",
            Some(Operation::List) => "list",
            Some(Operation::Write) => "update",
            Some(Operation::Delete) => "delete",
            Some(Operation::Patch) => "patch",
            None => match self.method.as_str() {
                "GET" | "HEAD" => "read",
                "LIST" => "list",
                "DELETE" => "delete",
                "PATCH" => "patch",
                _ => "update",
            },
        };
        let path = req.map_or(self.path.as_str(), |r| r.path.as_str());
        crate::audit::RequestRecord {
            id,
            operation,
            path,
            mount_type: mount_type(path),
            remote: self.remote,
            client_token: self.token.as_deref(),
            token: req.and_then(|r| r.caller.as_ref()).map(|(c, _)| &*c.entry),
            body: req.map(|r| &r.body.0),
        }
    }

    /// Hands the request entry to the devices; `wake`: written now (the caller waits for it).
    fn submit_request(
        &self,
        req: Option<&Req>,
        id: &str,
        error: &str,
        wake: bool,
    ) -> crate::audit::device::Recording {
        let blocks = self.blocks(req, id);
        let time = crate::clock::now();
        crate::audit::device::submit(
            &self.devices,
            |index, _, out| crate::audit::request_entry(out, &blocks[index], time, error),
            wake,
        )
    }

    /// `rendered` if its entry (and the request entry still `pending`, if any) was recorded,
    /// else the 500 that replaces it (no data).
    async fn response(
        &self,
        req: Option<&Req>,
        id: &str,
        rendered: Rendered,
        pending: Option<crate::audit::device::Recording>,
    ) -> Rendered {
        let blocks = self.blocks(req, id);
        let time = crate::clock::now();
        let response = rendered.audit_record();
        let entry = crate::audit::device::submit(
            &self.devices,
            |index, salt, out| {
                crate::audit::response_entry(out, salt, &blocks[index], &response, time)
            },
            true,
        );
        let request_recorded = match pending {
            Some(request) => request.confirmed().await,
            None => Ok(()),
        };
        match (request_recorded, entry.confirmed().await) {
            (Ok(()), Ok(())) => rendered,
            (Err(error), _) | (_, Err(error)) => render(Err(error), id),
        }
    }
}

fn mount_type(path: &str) -> &'static str {
    if path.starts_with("sys/") {
        "system"
    } else if path.starts_with("sealed/") {
        "sealed"
    } else if path.starts_with("auth/token") {
        "token"
    } else if path.starts_with("auth/") {
        "kubernetes"
    } else {
        "kv"
    }
}

async fn parse(app: &App, request: Request) -> Result<Req> {
    let (parts, body) = request.into_parts();
    let query: HashMap<String, String> = match parts.uri.query() {
        None => HashMap::new(),
        Some(_) => {
            axum::extract::Query::try_from_uri(&parts.uri)
                .map_err(|_| Error::bad_request("the URL query string is not valid"))?
                .0
        }
    };
    if query.contains_key("token") {
        // URLs end up in access logs, proxies and browser history.
        return Err(Error::bad_request(
            "tokens are not accepted in the URL: send them in the X-Vault-Token header or the body",
        ));
    }
    let list_query = query.get("list").is_some_and(|v| v == "true" || v == "1");
    let op = match parts.method.as_str() {
        "GET" | "HEAD" if list_query => Operation::List,
        "GET" | "HEAD" => Operation::Read,
        "LIST" => Operation::List,
        "POST" | "PUT" => Operation::Write,
        "DELETE" => Operation::Delete,
        "PATCH" => Operation::Patch,
        _ => return Err(Error::MethodNotAllowed),
    };
    let path =
        LogicalPath::from_request(parts.uri.path(), op == Operation::List).map_err(
            |e| match e {
                crate::path::PathError::NotApi => Error::NotFound,
                other => Error::BadRequest(format!("invalid request path: {other}")),
            },
        )?;
    // The token is checked before the body is read: without a valid one, nothing is buffered
    // beyond the small limit of the endpoints that take no token.
    let (caller, unspent_use, token_less_permit, token_slot, body_limit) =
        if is_unauthenticated(&app.core, &path) {
            let permit =
                app.token_less.clone().try_acquire_owned().map_err(|_| {
                    Error::Overloaded("too many requests without a token in flight")
                })?;
            let limit = UNAUTHENTICATED_MAX_BODY_BYTES.min(app.max_body_bytes);
            (None, None, Some(permit), None, limit)
        } else {
            let unsealed = app.core.unsealed()?;
            let (found, acl) = find_token(&unsealed, &parts.headers).await?;
            let slot = app
                .per_token
                .try_take(&found.caller().hash)
                .ok_or(Error::TooManyRequests { retry_after: 1 })?;
            let caller = Some((found.caller().clone(), acl));
            let unspent = found.caller().use_limited.then_some(found);
            (caller, unspent, None, Some(slot), app.max_body_bytes)
        };
    let bytes = axum::body::to_bytes(body, body_limit)
        .await
        .map_err(|error| {
            let error = error.into_inner();
            let over_limit =
                std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Error::PayloadTooLarge(format!(
                    "request body too large: the limit is {body_limit} bytes"
                ))
            } else {
                // The client went away or sent a broken body: nothing to answer about size.
                Error::bad_request("the request body could not be read")
            }
        })?;
    let body = Body::parse(&bytes)?;
    Ok(Req {
        op,
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        body,
        remote: parts
            .extensions
            .get::<kinko_tls::PeerAddr>()
            .map(|peer| peer.0),
        caller,
        unspent_use,
        _token_less_permit: token_less_permit,
        _token_slot: token_slot,
    })
}

impl Req {
    /// Spends a limited-use token's use (after the request entry is recorded, so a request
    /// refused for want of an audit device costs nothing). 403 if the uses ran out meanwhile.
    async fn spend_use(&mut self, app: &App) -> Result<()> {
        let Some(found) = self.unspent_use.take() else {
            return Ok(());
        };
        let unsealed = app.core.unsealed()?;
        let caller = unsealed
            .tokens
            .spend(&unsealed.store, found)
            .await?
            .ok_or(Error::PermissionDenied)?;
        if let Some((spent, _)) = &mut self.caller {
            *spent = caller;
        }
        Ok(())
    }
}

/// Routes a request; also names its route template (for the latency histogram), from the
/// same resolution the routing made.
async fn route(app: &App, req: &Req) -> (usize, Result<Reply>) {
    let path = req.path.trimmed();
    fn head(rest: &str) -> &str {
        rest.split('/').next().unwrap_or("")
    }
    if path == "sys" || path.starts_with("sys/") {
        let rest = path.strip_prefix("sys/").unwrap_or("");
        let endpoint = match rest.split('/').next().unwrap_or("") {
            "policy" | "policies" => "policy",
            "capabilities" | "capabilities-self" => "capabilities",
            "audit" | "audit-hash" => "audit",
            other => other,
        };
        return (route_label("sys", endpoint), sys::route(app, req).await);
    }
    let unsealed = match app.core.unsealed() {
        Ok(unsealed) => unsealed,
        Err(error) => return (UNKNOWN_ROUTE, Err(error)),
    };
    if let Some(rest) = path.strip_prefix("sealed/") {
        let label = route_label("sealed", head(rest));
        return (label, sealed::route(&unsealed, req, rest).await);
    }
    if let Some(rest) = path.strip_prefix("auth/") {
        if let Some(rest) = rest.strip_prefix("token/") {
            let label = route_label("auth/token", head(rest));
            return (label, token::route(&unsealed, req, rest).await);
        }
        return match unsealed.auth.resolve(rest) {
            Some((mount, rest)) if mount.kind == "kubernetes" => (
                route_label("auth/kubernetes", head(rest)),
                kubernetes::route(&unsealed, req, &mount, rest).await,
            ),
            _ => (route_label("auth", ""), Err(Error::NotFound)),
        };
    }
    match unsealed.mounts.resolve(path) {
        Some((mount, rest)) => (
            route_label("kv", head(rest)),
            kv::route(&unsealed, req, &mount, rest).await,
        ),
        None => (UNKNOWN_ROUTE, Err(Error::NotFound)),
    }
}

const UNKNOWN_ROUTE: usize = crate::metrics::ROUTES.len() - 1;

/// The index in `metrics::ROUTES` of `family/endpoint`, else of `family/other`: fixed strings
/// only, never a mount name or anything else below the endpoint.
fn route_label(family: &str, endpoint: &str) -> usize {
    let named = |wanted: &str| {
        crate::metrics::ROUTES.iter().position(|route| {
            route
                .strip_prefix(family)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|r| r == wanted)
        })
    };
    named(endpoint)
        .or_else(|| named("other"))
        .unwrap_or(UNKNOWN_ROUTE)
}

/// The presented token: `X-Vault-Token` wins over `Authorization: Bearer` when both are sent.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-vault-token") {
        return value.to_str().ok().map(str::trim);
    }
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who is calling and what their policies allow, as authenticated once at the entry (before
/// the body was read). Every failure is the same 403.
pub fn authenticate(req: &Req) -> Result<(&Caller, &Arc<Acl>)> {
    req.caller
        .as_ref()
        .map(|(caller, acl)| (caller, acl))
        .ok_or(Error::PermissionDenied)
}

/// Checks one capability on the request's own path.
pub fn authorize(req: &Req, capability: Capability) -> Result<&Caller> {
    let (caller, acl) = authenticate(req)?;
    if !acl.allows(&req.path, capability) {
        return Err(Error::PermissionDenied);
    }
    Ok(caller)
}

/// Finds the presented token's caller and ACL: once per request, so a limited-use token
/// spends one use (in [`Req::spend_use`]).
async fn find_token(
    unsealed: &Unsealed,
    headers: &HeaderMap,
) -> Result<(crate::tokens::Found, Arc<Acl>)> {
    let token = presented_token(headers).ok_or(Error::PermissionDenied)?;
    let found = unsealed
        .tokens
        .find(&unsealed.store, token)
        .await?
        .ok_or(Error::PermissionDenied)?;
    let acl = unsealed
        .policies
        .acl(&unsealed.store, &found.caller().entry.policies)
        .await?;
    Ok((found, acl))
}

/// The endpoints that take no token: seal lifecycle and status, logins, and the public keys
/// of sealed values (`sealed/keys`, `sealed/keys/<namespace>/<service_account>`).
/// `login` counts only as the login of an enabled auth method (`auth/<mount>/login`), not as a
/// role or anything else that happens to be called `login`.
fn is_unauthenticated(core: &Core, path: &LogicalPath) -> bool {
    let path = path.trimmed();
    if let Some(sys) = path.strip_prefix("sys/") {
        return matches!(sys, "health" | "seal-status" | "init" | "unseal" | "leader")
            || (sys == "metrics" && core.unsealed().is_err());
    }
    if path == "sealed/keys" {
        return true;
    }
    if let Some(binding) = path.strip_prefix("sealed/keys/") {
        return binding.split('/').count() == 2;
    }
    let Some(rest) = path.strip_prefix("auth/") else {
        return false;
    };
    let Ok(unsealed) = core.unsealed() else {
        return false; // answered "sealed" either way
    };
    unsealed
        .auth
        .resolve(rest)
        .is_some_and(|(_, within)| within == "login")
}

/// Bodies that may arrive without a token (a login's JWT, `sys/init`) are small; so an
/// unauthenticated client can make the server buffer at most this much per request.
pub const UNAUTHENTICATED_MAX_BODY_BYTES: usize = 64 * 1024;

/// A response before it becomes HTTP: what the audit devices record and the client gets.
pub struct Rendered {
    pub status: StatusCode,
    pub body: RenderedBody,
    retry_after: Option<u64>,
}

pub enum RenderedBody {
    Json(Value),
    /// Vault's body around `data` and `auth`, the shape of most answers.
    Envelope(Envelope),
    /// Prometheus text.
    Text(String),
    Empty,
}

impl Rendered {
    fn json(status: StatusCode, body: Value) -> Rendered {
        Rendered {
            status,
            body: RenderedBody::Json(body),
            retry_after: None,
        }
    }

    fn json_body(&self) -> Option<&Value> {
        match &self.body {
            RenderedBody::Json(value) => Some(value),
            _ => None,
        }
    }

    /// What the audit devices record of it: the `data`, `auth` and `errors` sent.
    fn audit_record(&self) -> crate::audit::ResponseRecord<'_> {
        let status = self.status.as_u16();
        match &self.body {
            RenderedBody::Envelope(envelope) => crate::audit::ResponseRecord {
                status,
                data: Some(match &envelope.data {
                    Data::Value(value) => crate::audit::Data::Value(value),
                    Data::Text(text) => crate::audit::Data::Text(text),
                }),
                auth: Some(&envelope.auth),
                errors: None,
            },
            _ => crate::audit::ResponseRecord::of_body(status, self.json_body()),
        }
    }

    fn into_response(self) -> Response {
        METRICS.request(self.status.as_u16());
        let (body, content_type) = match self.body {
            RenderedBody::Json(value) => json_answer(|out| crate::json::write_value(out, &value)),
            RenderedBody::Envelope(envelope) => json_answer(|out| envelope.write(out)),
            RenderedBody::Text(text) => (
                AxumBody::from(text),
                Some("text/plain; version=0.0.4; charset=utf-8"),
            ),
            RenderedBody::Empty => (AxumBody::empty(), None),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON answer's body, written by `write`, and its content type.
fn json_answer(write: impl FnOnce(&mut Vec<u8>)) -> (AxumBody, Option<&'static str>) {
    // Room for a KV read's answer without growing the buffer on the way.
    let mut body = Vec::with_capacity(2048);
    write(&mut body);
    (AxumBody::from(body), Some("application/json"))
}

/// Vault's response body around `data` and `auth`, written straight into the answer: building
/// it as a `Value` (nine keys, a sorted map, then dropped) was 5% of a KV read's instructions.
pub struct Envelope {
    request_id: String,
    mount_type: &'static str,
    data: Data,
    auth: Value,
}

/// An answer's `data`: a value, or JSON text made without building one (a KV read).
enum Data {
    Value(Value),
    Text(Zeroizing<Vec<u8>>),
}

impl Envelope {
    fn new(request_id: &str, mount_type: &'static str, data: Data, auth: Value) -> Envelope {
        Envelope {
            request_id: request_id.to_owned(),
            mount_type,
            data,
            auth,
        }
    }

    /// Byte for byte what [`envelope`] serialises to: its keys in serde_json's sorted order.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"auth\":");
        crate::json::write_value(out, &self.auth);
        out.extend_from_slice(b",\"data\":");
        match &self.data {
            Data::Value(value) => crate::json::write_value(out, value),
            Data::Text(text) => out.extend_from_slice(text),
        }
        out.extend_from_slice(b",\"lease_duration\":0,\"lease_id\":\"\",\"mount_type\":");
        crate::json::write_str(out, self.mount_type);
        out.extend_from_slice(b",\"renewable\":false,\"request_id\":");
        crate::json::write_str(out, &self.request_id);
        out.extend_from_slice(b",\"warnings\":null,\"wrap_info\":null}");
    }
}

fn rendered_envelope(status: StatusCode, envelope: Envelope) -> Rendered {
    Rendered {
        status,
        body: RenderedBody::Envelope(envelope),
        retry_after: None,
    }
}

/// Vault's response body around `data` and `auth` as a `Value`, for answers that add fields
/// to it. Built field by field: `json!` would copy `data` and `auth` through its serialiser
/// instead of moving them.
fn envelope(request_id: &str, mount_type: &str, data: Value, auth: Value) -> Value {
    Value::Object(serde_json::Map::from_iter([
        ("request_id".to_owned(), Value::from(request_id)),
        ("lease_id".to_owned(), Value::from("")),
        ("renewable".to_owned(), Value::Bool(false)),
        ("lease_duration".to_owned(), Value::from(0)),
        ("data".to_owned(), data),
        ("wrap_info".to_owned(), Value::Null),
        ("warnings".to_owned(), Value::Null),
        ("auth".to_owned(), auth),
        ("mount_type".to_owned(), Value::from(mount_type)),
    ]))
}

/// The one place where outcomes become HTTP responses.
pub fn respond(result: Result<(Reply, &'static str)>, request_id: &str) -> Response {
    render(result, request_id).into_response()
}

/// The one place where outcomes and errors become statuses and Vault-shaped bodies.
pub fn render(result: Result<(Reply, &'static str)>, request_id: &str) -> Rendered {
    match result {
        Ok((reply, mount_type)) => match reply {
            Reply::Data(data) => rendered_envelope(
                StatusCode::OK,
                Envelope::new(request_id, mount_type, Data::Value(data), Value::Null),
            ),
            Reply::DataText(text) => rendered_envelope(
                StatusCode::OK,
                Envelope::new(request_id, mount_type, Data::Text(text), Value::Null),
            ),
            Reply::DataWithStatus(status, data) => rendered_envelope(
                status,
                Envelope::new(request_id, mount_type, Data::Value(data), Value::Null),
            ),
            Reply::Auth(auth) => rendered_envelope(
                StatusCode::OK,
                Envelope::new(request_id, mount_type, Data::Value(Value::Null), auth),
            ),
            Reply::Compat(data) => {
                let mut body = envelope(request_id, mount_type, data.clone(), Value::Null);
                if let (Some(top), Some(fields)) = (body.as_object_mut(), data.as_object()) {
                    for (k, v) in fields {
                        top.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                Rendered::json(StatusCode::OK, body)
            }
            Reply::Raw(status, body) => Rendered::json(status, body),
            Reply::Text(text) => Rendered {
                status: StatusCode::OK,
                body: RenderedBody::Text(text),
                retry_after: None,
            },
            Reply::NoContent => Rendered {
                status: StatusCode::NO_CONTENT,
                body: RenderedBody::Empty,
                retry_after: None,
            },
        },
        Err(error) => {
            let (status, errors): (StatusCode, Vec<String>) = match &error {
                Error::BadRequest(message) => (StatusCode::BAD_REQUEST, vec![message.clone()]),
                Error::Forbidden(message) => (StatusCode::FORBIDDEN, vec![message.clone()]),
                Error::PermissionDenied => {
                    (StatusCode::FORBIDDEN, vec!["permission denied".into()])
                }
                Error::NotFound => (StatusCode::NOT_FOUND, vec![]),
                Error::MethodNotAllowed => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    vec!["unsupported operation".into()],
                ),
                Error::UnsupportedMediaType(message) => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, vec![message.clone()])
                }
                Error::PayloadTooLarge(message) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, vec![message.clone()])
                }
                Error::Overloaded(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    vec![format!("{reason}; retry later")],
                ),
                Error::TooManyRequests { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    vec!["too many requests".into()],
                ),
                Error::Sealed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    vec!["Vault is sealed".into()],
                ),
                Error::NotInitialized => (
                    StatusCode::BAD_REQUEST,
                    vec!["Vault is not initialized".into()],
                ),
                Error::AlreadyInitialized => (
                    StatusCode::BAD_REQUEST,
                    vec!["Vault is already initialized".into()],
                ),
                Error::CasMismatch | Error::CasRequired => {
                    (StatusCode::BAD_REQUEST, vec![error.to_string()])
                }
                // The reason may name AWS accounts, roles, tables or hosts: it goes to the log,
                // and the client gets the request id to find it there.
                Error::Unavailable(reason) => {
                    tracing::warn!(request_id, %reason, "request failed: dependency unavailable");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        vec![format!(
                            "service unavailable, try again (request id {request_id})"
                        )],
                    )
                }
                Error::Internal(detail) => {
                    tracing::error!(request_id, %detail, "request failed: internal error");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        vec![format!("internal error (request id {request_id})")],
                    )
                }
            };
            let mut rendered = Rendered::json(status, json!({ "errors": errors }));
            if let Error::TooManyRequests { retry_after } = error {
                rendered.retry_after = Some(retry_after);
            }
            rendered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_written_as_its_value_would_be() {
        let cases = [
            (
                serde_json::json!({ "k": "v\"\n", "n": [1, 2.5, null] }),
                Value::Null,
            ),
            (
                Value::Null,
                serde_json::json!({ "client_token": "kks.x", "policies": ["a"] }),
            ),
            (Value::Null, Value::Null),
        ];
        for (data, auth) in cases {
            for mount_type in ["kv", "system", "token"] {
                let mut written = Vec::new();
                Envelope::new(
                    "req-\"1",
                    mount_type,
                    Data::Value(data.clone()),
                    auth.clone(),
                )
                .write(&mut written);
                let value = envelope("req-\"1", mount_type, data.clone(), auth.clone());
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    serde_json::to_string(&value).unwrap()
                );
                let text = Zeroizing::new(serde_json::to_vec(&data).unwrap());
                let mut from_text = Vec::new();
                Envelope::new("req-\"1", mount_type, Data::Text(text), auth.clone())
                    .write(&mut from_text);
                assert_eq!(
                    String::from_utf8(from_text).unwrap(),
                    serde_json::to_string(&value).unwrap()
                );
            }
        }
    }

    #[test]
    fn route_labels_are_fixed_strings_whatever_the_path() {
        let name = |i: usize| crate::metrics::ROUTES[i];
        assert_eq!(name(route_label("kv", "data")), "kv/data");
        assert_eq!(name(route_label("kv", "my-secret-name")), "kv/other");
        assert_eq!(
            name(route_label("auth/token", "create")),
            "auth/token/create"
        );
        assert_eq!(name(route_label("auth/token", "x")), "auth/token/other");
        assert_eq!(
            name(route_label("auth/kubernetes", "login")),
            "auth/kubernetes/login"
        );
        assert_eq!(name(route_label("auth", "")), "auth/other");
        assert_eq!(name(route_label("sys", "policy")), "sys/policy");
        assert_eq!(name(route_label("sys", "anything")), "sys/other");
        assert_eq!(name(route_label("sealed", "decrypt")), "sealed/decrypt");
        assert_eq!(name(route_label("nope", "x")), "unknown");
    }
}
