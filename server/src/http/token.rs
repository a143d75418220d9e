//! `auth/token/` endpoints: create, look up, renew and revoke tokens.

use super::{authenticate, authorize, presented_token, Operation, Reply, Req};
use crate::clock::{now_unix, rfc3339_unix};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::policy::{validate_name, Capability};
use crate::tokens::{Caller, Issued, TokenEntry, TokenRequest};
use serde_json::{json, Value};

pub async fn route(u: &Unsealed, req: &Req, rest: &str) -> Result<Reply> {
    match (rest.trim_end_matches('/'), req.op) {
        ("create", Operation::Write) => create(u, req, false).await,
        ("create-orphan", Operation::Write) => create(u, req, true).await,
        ("lookup-self", Operation::Read | Operation::Write) => {
            let caller = authorize(req, capability_for(req))?;
            let token = presented_token(&req.headers).unwrap_or_default();
            Ok(Reply::Data(lookup_data(Some(token), &caller.entry)))
        }
        ("lookup", Operation::Read | Operation::Write) => {
            authorize(req, capability_for(req))?;
            let token = token_field(req)?;
            let (entry, _) = u
                .tokens
                .lookup_hash(&u.store, &u.tokens.hash(&token))
                .await?
                .ok_or(Error::PermissionDenied)?;
            Ok(Reply::Data(lookup_data(Some(&token), &entry)))
        }
        ("lookup-accessor", Operation::Write) => {
            authorize(req, Capability::Update)?;
            let accessor = accessor_field(req)?;
            let (_, entry) = u
                .tokens
                .lookup_accessor(&u.store, &accessor)
                .await?
                .ok_or(Error::PermissionDenied)?;
            Ok(Reply::Data(lookup_data(None, &entry)))
        }
        ("renew-self", Operation::Write) => {
            let caller = authorize(req, Capability::Update)?;
            let increment = req.body.duration("increment")?;
            let entry = u.tokens.renew(&u.store, &caller.hash, increment).await?;
            let token = presented_token(&req.headers).unwrap_or_default();
            Ok(Reply::Auth(auth_block(token, &entry)))
        }
        ("renew", Operation::Write) => {
            authorize(req, Capability::Update)?;
            let token = token_field(req)?;
            let increment = req.body.duration("increment")?;
            let entry = u
                .tokens
                .renew(&u.store, &u.tokens.hash(&token), increment)
                .await?;
            Ok(Reply::Auth(auth_block(&token, &entry)))
        }
        ("revoke-self", Operation::Write) => {
            let caller = authorize(req, Capability::Update)?;
            u.tokens.revoke(&u.store, &caller.hash).await?;
            Ok(Reply::NoContent)
        }
        ("revoke", Operation::Write) => {
            authorize(req, Capability::Update)?;
            let token = token_field(req)?;
            u.tokens.revoke(&u.store, &u.tokens.hash(&token)).await?;
            Ok(Reply::NoContent)
        }
        ("revoke-accessor", Operation::Write) => {
            authorize(req, Capability::Update)?;
            let accessor = accessor_field(req)?;
            if let Some((hash, _)) = u.tokens.lookup_accessor(&u.store, &accessor).await? {
                u.tokens.revoke(&u.store, &hash).await?;
            }
            Ok(Reply::NoContent)
        }
        (
            "create" | "create-orphan" | "lookup-self" | "lookup" | "lookup-accessor"
            | "renew-self" | "renew" | "revoke-self" | "revoke" | "revoke-accessor",
            _,
        ) => Err(Error::MethodNotAllowed),
        _ => Err(Error::NotFound),
    }
}

fn capability_for(req: &Req) -> Capability {
    if req.op == Operation::Read {
        Capability::Read
    } else {
        Capability::Update
    }
}

fn token_field(req: &Req) -> Result<String> {
    req.body
        .str("token")?
        .map(str::to_owned)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::bad_request("missing required field \"token\""))
}

fn accessor_field(req: &Req) -> Result<String> {
    req.body
        .str("accessor")?
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Error::bad_request("missing required field \"accessor\""))
}

async fn create(u: &Unsealed, req: &Req, orphan_endpoint: bool) -> Result<Reply> {
    let (caller, acl) = authenticate(req)?;
    if !acl.allows(&req.path, Capability::Update) && !acl.allows(&req.path, Capability::Create) {
        return Err(Error::PermissionDenied);
    }
    if caller.use_limited {
        // Vault's rule: a child (or orphan) would escape the use limit.
        return Err(Error::bad_request(
            "restricted use token cannot generate child tokens",
        ));
    }
    if let Some(kind) = req.body.str("type")? {
        if kind != "service" && kind != "default" {
            return Err(Error::bad_request(
                "this token type is not supported: kinko issues service tokens",
            ));
        }
    }
    let no_parent = req.body.bool("no_parent")?.unwrap_or(false);
    if no_parent && !acl.allows(&req.path, Capability::Sudo) {
        return Err(Error::bad_request(
            "root or sudo privileges required to create an orphan token",
        ));
    }
    let chosen_id = req.body.str("id")?.map(str::to_owned);
    if chosen_id.is_some() && !caller.entry.is_root() {
        return Err(Error::bad_request(
            "root or sudo privileges required to specify a token id",
        ));
    }
    if chosen_id.as_deref().is_some_and(|id| {
        id.len() < 8 || id.len() > 256 || id.chars().any(|c| c.is_control() || c == ' ')
    }) {
        return Err(Error::bad_request(
            "a chosen token id must be 8 to 256 printable characters without spaces",
        ));
    }
    let requested = req.body.string_list("policies")?;
    let policies = child_policies(caller, requested)?;
    let display_name = match req.body.str("display_name")? {
        Some(name) if !name.is_empty() => format!("token-{name}"),
        _ => "token".to_owned(),
    };
    let request = TokenRequest {
        policies,
        meta: req.body.string_map("meta")?.unwrap_or_default(),
        display_name,
        ttl: req.body.duration("ttl")?,
        explicit_max_ttl: req.body.duration("explicit_max_ttl")?.unwrap_or(0),
        num_uses: req.body.u64("num_uses")?.unwrap_or(0),
        renewable: req.body.bool("renewable")?.unwrap_or(true),
        no_default_policy: req.body.bool("no_default_policy")?.unwrap_or(false),
        path: if orphan_endpoint {
            "auth/token/create-orphan"
        } else {
            "auth/token/create"
        }
        .into(),
    };
    let parent = (!no_parent && !orphan_endpoint).then_some(caller);
    let issued = u
        .tokens
        .create(&u.store, request, parent, chosen_id)
        .await?;
    let Issued { token, entry, .. } = issued;
    Ok(Reply::Auth(auth_block(token.expose(), &entry)))
}

/// A child gets at most its parent's policies; only root may hand out `root`.
fn child_policies(parent: &Caller, requested: Option<Vec<String>>) -> Result<Vec<String>> {
    let Some(requested) = requested else {
        return Ok(parent
            .entry
            .policies
            .iter()
            .filter(|p| *p != "default")
            .cloned()
            .collect());
    };
    for name in &requested {
        validate_name(name).map_err(|e| Error::BadRequest(e.to_string()))?;
    }
    if parent.entry.is_root() {
        return Ok(requested);
    }
    if let Some(extra) = requested
        .iter()
        .find(|p| *p != "default" && !parent.entry.policies.contains(p))
    {
        return Err(Error::BadRequest(format!(
            "child policies must be subset of parent: {extra:?} is not held by the parent"
        )));
    }
    Ok(requested)
}

/// `data` of `lookup-self` / `lookup`; `id` is shown only to whoever presented the token.
pub(super) fn lookup_data(id: Option<&str>, entry: &TokenEntry) -> Value {
    let now = now_unix();
    json!({
        "accessor": entry.accessor,
        "creation_time": entry.creation_time,
        "creation_ttl": entry.creation_ttl,
        "display_name": entry.display_name,
        "entity_id": "",
        "expire_time": entry.expire_time.map(rfc3339_unix),
        "explicit_max_ttl": entry.explicit_max_ttl,
        "id": id.unwrap_or(""),
        "issue_time": rfc3339_unix(entry.creation_time),
        "meta": if entry.meta.is_empty() { Value::Null } else { json!(entry.meta) },
        "num_uses": entry.num_uses,
        "orphan": entry.orphan,
        "path": entry.path,
        "policies": entry.policies,
        "renewable": entry.renewable,
        "ttl": entry.ttl_remaining(now),
        "type": "service",
    })
}

/// `auth` of a response that issued a token.
pub(super) fn auth_block(token: &str, entry: &TokenEntry) -> Value {
    let token_policies = entry.policies.clone();
    json!({
        "client_token": token,
        "accessor": entry.accessor,
        "policies": token_policies,
        "token_policies": entry.policies,
        "identity_policies": null,
        "metadata": if entry.meta.is_empty() { Value::Null } else { json!(entry.meta) },
        "lease_duration": entry.ttl_remaining(now_unix()),
        "renewable": entry.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": entry.orphan,
        "mfa_requirement": null,
        "num_uses": entry.num_uses,
    })
}
