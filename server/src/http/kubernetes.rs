//! `auth/<path>/` endpoints of a Kubernetes auth mount: `config`, `role/:name`, `login`.

use serde_json::{json, Value};

use super::token::auth_block;
use super::{authorize, Body, Operation, Reply, Req};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::kubernetes::{self, KubernetesConfig, Role, Verification};
use crate::mounts::Mount;
use crate::policy::Capability;

pub async fn route(u: &Unsealed, req: &Req, mount: &Mount, rest: &str) -> Result<Reply> {
    let rest = rest.trim_end_matches('/');
    match (rest, req.op) {
        ("login", Operation::Write) => {
            let role = req.body.str("role")?.unwrap_or_default();
            let jwt = req.body.str("jwt")?.unwrap_or_default();
            // Guessing is bounded per mount, role and source: another source (another Pod) is
            // never slowed by it.
            let source = req.remote.map(|a| a.ip().to_string()).unwrap_or_default();
            let key = format!("{}\0{role}\0{source}", mount.accessor);
            let now = std::time::Instant::now();
            if let Err(retry_after) = u.login_failures.check(&key, now) {
                crate::metrics::METRICS.login(false);
                return Err(Error::TooManyRequests { retry_after });
            }
            let outcome = kubernetes::login(u, mount, role, jwt).await;
            match &outcome {
                Ok(_) => crate::metrics::METRICS.login(true),
                Err(Error::Forbidden(_) | Error::BadRequest(_) | Error::PermissionDenied) => {
                    crate::metrics::METRICS.login(false);
                    // A full table (a spray of keys) leaves this one uncounted, never blocks.
                    let _ = u.login_failures.spend(&key, now);
                }
                // An unreachable API server is an outage, not a refusal.
                Err(_) => {}
            }
            let issued = outcome?;
            Ok(Reply::Auth(auth_block(
                issued.token.expose(),
                &issued.entry,
            )))
        }
        ("config", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let config = kubernetes::read_config(u, mount)
                .await?
                .ok_or(Error::NotFound)?;
            Ok(Reply::Data(config_view(&config)))
        }
        ("config", Operation::Write) => {
            authorize(req, Capability::Update)?;
            kubernetes::write_config(u, mount, &config_from_body(&req.body)?).await?;
            Ok(Reply::NoContent)
        }
        ("role", Operation::List) => {
            authorize(req, Capability::List)?;
            let keys = kubernetes::list_roles(u, mount).await?;
            if keys.is_empty() {
                return Err(Error::NotFound);
            }
            Ok(Reply::Data(json!({ "keys": keys })))
        }
        (path, op) => {
            let Some(name) = path.strip_prefix("role/") else {
                return Err(Error::NotFound);
            };
            match op {
                Operation::Read => {
                    authorize(req, Capability::Read)?;
                    let role = kubernetes::read_role(u, mount, name)
                        .await?
                        .ok_or(Error::NotFound)?;
                    Ok(Reply::Data(role_view(&role)))
                }
                Operation::Write => {
                    authorize(req, Capability::Update)?;
                    kubernetes::write_role(u, mount, name, &role_from_body(&req.body)?).await?;
                    Ok(Reply::NoContent)
                }
                Operation::Delete => {
                    authorize(req, Capability::Delete)?;
                    kubernetes::delete_role(u, mount, name).await?;
                    Ok(Reply::NoContent)
                }
                _ => Err(Error::MethodNotAllowed),
            }
        }
    }
}

/// The body of `POST config`, field by field (Vault's names).
fn config_from_body(body: &Body) -> Result<KubernetesConfig> {
    let verification = match body.str("verification")?.unwrap_or("token_review") {
        "token_review" => Verification::TokenReview,
        "offline" => Verification::Offline,
        _ => {
            return Err(Error::bad_request(
                "field \"verification\" must be \"token_review\" or \"offline\"",
            ))
        }
    };
    let config = KubernetesConfig {
        kubernetes_host: body.str("kubernetes_host")?.unwrap_or_default().to_owned(),
        kubernetes_ca_cert: body
            .str("kubernetes_ca_cert")?
            .unwrap_or_default()
            .to_owned(),
        token_reviewer_jwt: body
            .str("token_reviewer_jwt")?
            .unwrap_or_default()
            .to_owned(),
        pem_keys: body.string_list("pem_keys")?.unwrap_or_default(),
        jwks: body.str("jwks")?.unwrap_or_default().to_owned(),
        issuer: body.str("issuer")?.unwrap_or_default().to_owned(),
        disable_iss_validation: body.bool("disable_iss_validation")?.unwrap_or(false),
        disable_local_ca_jwt: body.bool("disable_local_ca_jwt")?.unwrap_or(false),
        verification,
    };
    config.validate()?;
    Ok(config)
}

/// The body of `POST role/:name` (Vault's names and their aliases).
fn role_from_body(body: &Body) -> Result<Role> {
    let role = Role {
        bound_service_account_names: body
            .string_list("bound_service_account_names")?
            .unwrap_or_default(),
        bound_service_account_namespaces: body
            .string_list("bound_service_account_namespaces")?
            .unwrap_or_default(),
        audience: body.str("audience")?.unwrap_or_default().to_owned(),
        token_policies: match body.string_list("token_policies")? {
            Some(p) => p,
            None => body.string_list("policies")?.unwrap_or_default(),
        },
        token_ttl: body
            .duration("token_ttl")?
            .or(body.duration("ttl")?)
            .unwrap_or(0),
        token_max_ttl: body
            .duration("token_max_ttl")?
            .or(body.duration("max_ttl")?)
            .unwrap_or(0),
    };
    role.validate()?;
    Ok(role)
}

/// What `GET config` shows: everything but the reviewer JWT.
fn config_view(config: &KubernetesConfig) -> Value {
    json!({
        "kubernetes_host": config.kubernetes_host,
        "kubernetes_ca_cert": config.kubernetes_ca_cert,
        "pem_keys": config.pem_keys,
        "jwks": config.jwks,
        "issuer": config.issuer,
        "disable_iss_validation": config.disable_iss_validation,
        "disable_local_ca_jwt": config.disable_local_ca_jwt,
        "verification": config.verification,
        "token_reviewer_jwt_set": !config.token_reviewer_jwt.is_empty(),
    })
}

/// What `GET role/:name` shows, with Vault's aliases (`policies`, `ttl`, `max_ttl`).
fn role_view(role: &Role) -> Value {
    json!({
        "bound_service_account_names": role.bound_service_account_names,
        "bound_service_account_namespaces": role.bound_service_account_namespaces,
        "audience": role.audience,
        "token_policies": role.token_policies,
        "policies": role.token_policies,
        "token_ttl": role.token_ttl,
        "token_max_ttl": role.token_max_ttl,
        "ttl": role.token_ttl,
        "max_ttl": role.token_max_ttl,
    })
}
