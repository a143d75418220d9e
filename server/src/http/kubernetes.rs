//! `auth/<path>/` endpoints of a Kubernetes auth mount: `config`, `role/:name`, `login`.

use serde_json::json;

use super::{authorize, Operation, Reply, Req};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::kubernetes::{self, KubernetesConfig, Role};
use crate::mounts::Mount;
use crate::policy::Capability;
use crate::tokens::auth_block;

pub async fn route(u: &Unsealed, req: &Req, mount: &Mount, rest: &str) -> Result<Reply> {
    let rest = rest.trim_end_matches('/');
    match (rest, req.op) {
        ("login", Operation::Write) => {
            let role = req.body.str("role")?.unwrap_or_default();
            let jwt = req.body.str("jwt")?.unwrap_or_default();
            let outcome = kubernetes::login(u, mount, role, jwt).await;
            match &outcome {
                Ok(_) => crate::metrics::METRICS.login(true),
                Err(Error::Forbidden(_) | Error::BadRequest(_) | Error::PermissionDenied) => {
                    crate::metrics::METRICS.login(false)
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
            authorize(u, req, Capability::Read).await?;
            let config = kubernetes::read_config(u, mount)
                .await?
                .ok_or(Error::NotFound)?;
            Ok(Reply::Data(config.public_view()))
        }
        ("config", Operation::Write) => {
            authorize(u, req, Capability::Update).await?;
            kubernetes::write_config(u, mount, &KubernetesConfig::from_body(&req.body)?).await?;
            Ok(Reply::NoContent)
        }
        ("role", Operation::List) => {
            authorize(u, req, Capability::List).await?;
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
                    authorize(u, req, Capability::Read).await?;
                    let role = kubernetes::read_role(u, mount, name)
                        .await?
                        .ok_or(Error::NotFound)?;
                    Ok(Reply::Data(role.to_json()))
                }
                Operation::Write => {
                    authorize(u, req, Capability::Update).await?;
                    kubernetes::write_role(u, mount, name, &Role::from_body(&req.body)?).await?;
                    Ok(Reply::NoContent)
                }
                Operation::Delete => {
                    authorize(u, req, Capability::Delete).await?;
                    kubernetes::delete_role(u, mount, name).await?;
                    Ok(Reply::NoContent)
                }
                _ => Err(Error::MethodNotAllowed),
            }
        }
    }
}
