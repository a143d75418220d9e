//! `sys/` endpoints: health, seal status and lifecycle, keyring, policies, mounts, auth methods.

use base64::Engine;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::{authenticate, authorize, App, Operation, Reply, Req};
use crate::clock::{now_unix, rfc3339_unix};
use crate::core::{InitRequest, Unsealed, VERSION};
use crate::error::{Error, Result};
use crate::mounts::{normalise_auth_path, normalise_mount_path, Mount};
use crate::policy::Capability;

pub async fn route(app: &App, req: &Req) -> Result<Reply> {
    let path = req.path.trimmed();
    let rest = path.strip_prefix("sys/").unwrap_or("");
    match (rest, req.op) {
        ("health", Operation::Read) => health(app, req).await,
        ("seal-status", Operation::Read) => Ok(Reply::Raw(StatusCode::OK, seal_status(app).await?)),
        ("init", Operation::Read) => {
            let initialized = app.core.seal_config().await?.is_some();
            Ok(Reply::Raw(
                StatusCode::OK,
                json!({ "initialized": initialized }),
            ))
        }
        ("init", Operation::Write) => init(app, req).await,
        ("unseal", Operation::Write) => unseal(app, req).await,
        // Sealed, no token can be checked: the process metrics (fixed labels, no secrets) so
        // that a sealed replica shows up in monitoring.
        ("metrics", Operation::Read) if app.core.unsealed().is_err() => {
            let gauges = crate::metrics::Gauges {
                sealed: true,
                keyring: None,
            };
            Ok(Reply::Text(crate::metrics::METRICS.prometheus(&gauges)))
        }
        // Every kinko replica serves reads and writes: there is no leader to point at.
        ("leader", Operation::Read) => Ok(Reply::Raw(
            StatusCode::OK,
            json!({
                "ha_enabled": false,
                "is_self": true,
                "active_time": "0001-01-01T00:00:00Z",
                "leader_address": "",
                "leader_cluster_address": "",
                "performance_standby": false,
                "performance_standby_last_remote_wal": 0,
            }),
        )),
        _ => {
            let unsealed = app.core.unsealed()?;
            route_unsealed(app, &unsealed, req, rest).await
        }
    }
}

async fn route_unsealed(app: &App, u: &Unsealed, req: &Req, rest: &str) -> Result<Reply> {
    let (head, name) = rest.split_once('/').map_or((rest, ""), |(h, n)| (h, n));
    match (head, req.op) {
        ("seal", Operation::Write) => {
            authorize(req, Capability::Sudo)?;
            app.core.seal().await;
            Ok(Reply::NoContent)
        }
        ("rotate", Operation::Write) => {
            authorize(req, Capability::Sudo)?;
            u.store.rotate().await?;
            Ok(Reply::NoContent)
        }
        ("key-status", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let keyring = u.store.keyring();
            let term = keyring.active_term();
            Ok(Reply::Compat(json!({
                "term": term.number,
                "install_time": rfc3339_unix(term.install_time),
                "encryptions": term.reserved,
            })))
        }
        ("policies", _) => match name.split_once('/') {
            Some(("acl", policy)) => policy_endpoint(u, req, policy, "policy").await,
            None if name == "acl" => policy_endpoint(u, req, "", "policy").await,
            _ => Err(Error::NotFound),
        },
        ("policy", _) => policy_endpoint(u, req, name, "rules").await,
        ("mounts", _) => mounts(u, req, name).await,
        ("internal", Operation::Read) => match name {
            "ui/mounts" => ui_mount(u, req, "").await,
            _ => match name.strip_prefix("ui/mounts/") {
                Some(mount) => ui_mount(u, req, mount).await,
                None => Err(Error::NotFound),
            },
        },
        ("auth", _) => auth_methods(u, req, name).await,
        ("audit", _) => super::audit::devices(u, req, name).await,
        ("audit-hash", Operation::Write) => super::audit::hash(u, req, name),
        ("capabilities-self", Operation::Write) => capabilities_self(req),
        ("metrics", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let keyring = u.store.keyring();
            let term = keyring.active_term();
            let gauges = crate::metrics::Gauges {
                sealed: false,
                keyring: Some((
                    u64::from(term.number),
                    term.reserved,
                    crate::barrier::ROTATE_AT,
                )),
            };
            Ok(Reply::Text(crate::metrics::METRICS.prometheus(&gauges)))
        }
        _ => Err(Error::NotFound),
    }
}

fn status_code_param(req: &Req, name: &str, default: u16) -> Result<StatusCode> {
    match req.query.get(name) {
        None => Ok(StatusCode::from_u16(default).expect("valid default")),
        Some(raw) => raw
            .parse::<u16>()
            .ok()
            .filter(|code| (100..600).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "query parameter {name} must be an HTTP status code"
                ))
            }),
    }
}

async fn health(app: &App, req: &Req) -> Result<Reply> {
    let status = app.core.status().await?;
    // kinko has no standbys: every replica is active, so `standbyok`/`standbycode` never apply.
    let code = if !status.initialized {
        status_code_param(req, "uninitcode", 501)?
    } else if status.sealed {
        status_code_param(req, "sealedcode", 503)?
    } else {
        status_code_param(req, "activecode", 200)?
    };
    status_code_param(req, "standbycode", 429)?;
    Ok(Reply::Raw(
        code,
        json!({
            "initialized": status.initialized,
            "sealed": status.sealed,
            "standby": false,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": now_unix(),
            "version": VERSION,
            "cluster_name": status.cluster_name,
            "cluster_id": status.cluster_id,
        }),
    ))
}

async fn seal_status(app: &App) -> Result<Value> {
    let status = app.core.status().await?;
    Ok(json!({
        "type": status.seal_type,
        "initialized": status.initialized,
        "sealed": status.sealed,
        "t": status.threshold,
        "n": status.shares,
        "progress": status.progress,
        "nonce": "",
        "version": VERSION,
        "build_date": "",
        "migration": false,
        "cluster_name": status.cluster_name,
        "cluster_id": status.cluster_id,
        "recovery_seal": true,
        "storage_type": status.storage_type,
    }))
}

fn share_count(req: &Req, field: &str, default: u8) -> Result<u8> {
    match req.body.u64(field)? {
        None => Ok(default),
        Some(n) if n <= 255 => Ok(n as u8),
        Some(_) => Err(Error::BadRequest(format!(
            "field {field:?} must be at most 255"
        ))),
    }
}

async fn init(app: &App, req: &Req) -> Result<Reply> {
    for unsupported in ["pgp_keys", "recovery_pgp_keys", "root_token_pgp_key"] {
        if req.body.get(unsupported).is_some() {
            return Err(Error::BadRequest(format!(
                "{unsupported} is not supported by kinko"
            )));
        }
    }
    // With an auto-unseal seal the secret_* fields do not apply; Vault ignores them too.
    let request = InitRequest {
        recovery_shares: share_count(req, "recovery_shares", 5)?,
        recovery_threshold: share_count(req, "recovery_threshold", 3)?,
        root_token: None,
        mount_secret_kv: false,
    };
    // On its own task: a client that disconnects (or the request timeout) must not cut init
    // off between its commit and the answer that carries the only copy of its secrets.
    let core = app.core.clone();
    let result = tokio::spawn(async move { core.initialize(request).await })
        .await
        .map_err(|e| Error::Internal(format!("initialisation task failed: {e}")))??;
    let hex_keys: Vec<&str> = result.recovery_keys.iter().map(|k| k.expose()).collect();
    let base64_keys: Vec<String> = hex_keys
        .iter()
        .map(|k| {
            base64::engine::general_purpose::STANDARD.encode(hex::decode(k).unwrap_or_default())
        })
        .collect();
    Ok(Reply::Raw(
        StatusCode::OK,
        json!({
            "keys": [],
            "keys_base64": [],
            "recovery_keys": hex_keys,
            "recovery_keys_base64": base64_keys,
            "root_token": result.root_token.expose(),
        }),
    ))
}

async fn unseal(app: &App, req: &Req) -> Result<Reply> {
    if req.body.bool("reset")?.unwrap_or(false) {
        app.core.reset_recovery_progress();
    } else {
        let key = req.body.str("key")?.ok_or_else(|| {
            Error::bad_request("missing required field \"key\" (a recovery key share)")
        })?;
        let key = match base64::engine::general_purpose::STANDARD.decode(key) {
            // Accept the base64 form that `sys/init` also returns.
            Ok(bytes) if bytes.len() == 33 => hex::encode(&bytes),
            _ => key.to_owned(),
        };
        app.core.submit_recovery_share(&key).await?;
    }
    Ok(Reply::Raw(StatusCode::OK, seal_status(app).await?))
}

async fn policy_endpoint(u: &Unsealed, req: &Req, name: &str, text_field: &str) -> Result<Reply> {
    if name.is_empty() {
        if !matches!(req.op, Operation::List | Operation::Read) {
            return Err(Error::MethodNotAllowed);
        }
        authorize(
            req,
            if req.op == Operation::List {
                Capability::List
            } else {
                Capability::Read
            },
        )?;
        let names = u.policies.list(&u.store).await?;
        return Ok(Reply::Compat(json!({ "keys": names, "policies": names })));
    }
    match req.op {
        Operation::Read => {
            authorize(req, Capability::Read)?;
            let text = if name == "root" {
                String::new()
            } else {
                u.policies
                    .get(&u.store, name)
                    .await?
                    .ok_or(Error::NotFound)?
                    .text
                    .clone()
            };
            Ok(Reply::Compat(json!({ "name": name, text_field: text })))
        }
        Operation::Write => {
            authorize(req, Capability::Update)?;
            let text = match (req.body.str("policy")?, req.body.str("rules")?) {
                (Some(text), _) | (None, Some(text)) => text,
                (None, None) => {
                    return Err(Error::bad_request("missing required field \"policy\""))
                }
            };
            u.policies.put(&u.store, name, text).await?;
            Ok(Reply::NoContent)
        }
        Operation::Delete => {
            authorize(req, Capability::Delete)?;
            u.policies.delete(&u.store, name).await?;
            Ok(Reply::NoContent)
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn system_mount() -> Value {
    json!({
        "accessor": "system",
        "config": { "default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0 },
        "description": "system endpoints used for control, policy and debugging",
        "external_entropy_access": false,
        "local": false,
        "options": null,
        "seal_wrap": false,
        "type": "system",
        "uuid": "system",
    })
}

async fn mounts(u: &Unsealed, req: &Req, name: &str) -> Result<Reply> {
    if name.is_empty() {
        if req.op != Operation::Read {
            return Err(Error::MethodNotAllowed);
        }
        authorize(req, Capability::Read)?;
        let mut all = Map::new();
        for mount in u.mounts.all().iter() {
            all.insert(mount.path.clone(), describe_mount(mount));
        }
        all.insert("sys/".into(), system_mount());
        return Ok(Reply::Compat(Value::Object(all)));
    }
    match req.op {
        Operation::Read => {
            authorize(req, Capability::Read)?;
            let path = normalise_mount_path(name)?;
            let mount = u.mounts.get(&path).ok_or(Error::NotFound)?;
            Ok(Reply::Compat(describe_mount(&mount)))
        }
        Operation::Write => {
            authorize(req, Capability::Update)?;
            let path = normalise_mount_path(name)?;
            let kind = req
                .body
                .str("type")?
                .ok_or_else(|| Error::bad_request("missing required field \"type\""))?;
            let version = match req.body.object("options")? {
                Some(options) => match options.get("version") {
                    Some(Value::String(v)) => v.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => String::new(),
                },
                None => String::new(),
            };
            match (kind, version.as_str()) {
                ("kv", "2") | ("kv-v2", "") | ("kv-v2", "2") => {}
                ("kv", _) | ("kv-v2", _) => {
                    return Err(Error::bad_request(
                        "kinko supports KV version 2 only: set options.version to \"2\" (or use type kv-v2)",
                    ))
                }
                (other, _) => {
                    return Err(Error::BadRequest(format!("unsupported secrets engine type {other:?}: kinko has kv (version 2)")))
                }
            }
            let description = req.body.str("description")?.unwrap_or_default();
            u.mounts
                .add(&u.store, Mount::new(&path, "kv", description))
                .await?;
            Ok(Reply::NoContent)
        }
        Operation::Delete => {
            authorize(req, Capability::Delete)?;
            let path = normalise_mount_path(name)?;
            if let Some(mount) = u.mounts.remove(&u.store, &path).await? {
                u.store.delete_below(&mount.storage_prefix()).await?;
            }
            Ok(Reply::NoContent)
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

/// What the vault/bao CLI asks before every `kv` command: which mount, which KV version.
async fn ui_mount(u: &Unsealed, req: &Req, path: &str) -> Result<Reply> {
    let (_, acl) = authenticate(req)?;
    if path.is_empty() {
        let mut secret = Map::new();
        for mount in u
            .mounts
            .all()
            .iter()
            .filter(|m| acl.grants_anything_under(&m.path))
        {
            secret.insert(mount.path.clone(), describe_mount(mount));
        }
        return Ok(Reply::Data(
            json!({ "secret": secret, "auth": { "token/": token_auth_method() } }),
        ));
    }
    let (mount, _) = u.mounts.resolve(path).ok_or(Error::NotFound)?;
    if !acl.grants_anything_under(&mount.path) {
        return Err(Error::PermissionDenied);
    }
    let mut description = describe_mount(&mount);
    description["path"] = json!(mount.path);
    Ok(Reply::Data(description))
}

fn token_auth_method() -> Value {
    json!({
        "accessor": "auth_token",
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "token_type": "default-service" },
        "description": "token based credentials",
        "external_entropy_access": false,
        "local": false,
        "options": null,
        "seal_wrap": false,
        "type": "token",
        "uuid": "auth_token",
    })
}

async fn auth_methods(u: &Unsealed, req: &Req, name: &str) -> Result<Reply> {
    match (name, req.op) {
        ("", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let mut all = Map::new();
            all.insert("token/".into(), token_auth_method());
            for mount in u.auth.all().iter() {
                all.insert(mount.path.clone(), describe_mount(mount));
            }
            Ok(Reply::Compat(Value::Object(all)))
        }
        ("", _) => Err(Error::MethodNotAllowed),
        (_, Operation::Write) => {
            authorize(req, Capability::Sudo)?;
            let kind = req
                .body
                .str("type")?
                .ok_or_else(|| Error::bad_request("missing required field \"type\""))?;
            let path = normalise_auth_path(name)?;
            if kind != "kubernetes" {
                return Err(Error::BadRequest(format!(
                    "unsupported auth method type {kind:?}: kinko has token (built in) and kubernetes"
                )));
            }
            let description = req.body.str("description")?.unwrap_or_default();
            u.auth
                .add(&u.store, Mount::new(&path, kind, description))
                .await?;
            Ok(Reply::NoContent)
        }
        (_, Operation::Delete) => {
            authorize(req, Capability::Sudo)?;
            let path = normalise_auth_path(name)?;
            if let Some(mount) = u.auth.remove(&u.store, &path).await? {
                u.store.delete_below(&mount.storage_prefix()).await?;
            }
            Ok(Reply::NoContent)
        }
        (_, Operation::Read) => {
            authorize(req, Capability::Read)?;
            let path = normalise_auth_path(name)?;
            let mount = u.auth.get(&path).ok_or(Error::NotFound)?;
            Ok(Reply::Compat(describe_mount(&mount)))
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn capabilities_self(req: &Req) -> Result<Reply> {
    // As in Vault: the default policy grants this; a token without it may not ask.
    authorize(req, Capability::Update)?;
    let (_, acl) = authenticate(req)?;
    let paths = match (req.body.string_list("paths")?, req.body.str("path")?) {
        (Some(paths), _) => paths,
        (None, Some(path)) => vec![path.to_owned()],
        (None, None) => return Err(Error::bad_request("missing required field \"paths\"")),
    };
    let mut data = Map::new();
    let mut all = Vec::new();
    for path in &paths {
        crate::path::validate_logical_path(path)
            .map_err(|e| Error::BadRequest(format!("invalid path: {e}")))?;
        let caps = acl.capabilities(path).effective();
        let names: Vec<&str> = if caps == crate::policy::Caps::default() {
            vec!["deny"]
        } else if acl.is_root() {
            vec!["root"]
        } else {
            caps.names()
        };
        all.extend(names.iter().map(|n| n.to_string()));
        data.insert(path.clone(), json!(names));
    }
    all.sort();
    all.dedup();
    data.insert("capabilities".into(), json!(all));
    Ok(Reply::Compat(Value::Object(data)))
}

/// The shape of one entry of `GET sys/mounts` (and of `sys/internal/ui/mounts`).
pub(super) fn describe_mount(mount: &Mount) -> Value {
    json!({
        "accessor": mount.accessor,
        "config": { "default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0 },
        "description": mount.description,
        "external_entropy_access": false,
        "local": false,
        "options": if mount.kind == "kv" { json!({ "version": "2" }) } else { Value::Null },
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "seal_wrap": false,
        "type": mount.kind,
        "uuid": mount.uuid,
    })
}
