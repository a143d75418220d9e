//! `sys/audit` (list, enable, disable) and `sys/audit-hash/<path>`, Vault-shaped; all `sudo`.

use serde_json::{json, Map, Value};

use super::{authorize, Operation, Reply, Req};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::mounts::normalise_mount_path;
use crate::policy::Capability;

fn describe(config: &crate::audit::device::DeviceConfig) -> Value {
    json!({
        "type": config.kind,
        "description": config.description,
        "options": config.options,
        "path": config.path,
        "local": false,
    })
}

pub async fn devices(u: &Unsealed, req: &Req, name: &str) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    if name.is_empty() {
        if !matches!(req.op, Operation::Read | Operation::List) {
            return Err(Error::MethodNotAllowed);
        }
        let mut all = Map::new();
        for device in u.audit.current().iter() {
            all.insert(device.config.path.clone(), describe(&device.config));
        }
        return Ok(Reply::Compat(Value::Object(all)));
    }
    let path = normalise_mount_path(name)?;
    match req.op {
        Operation::Write => {
            let kind = req
                .body
                .str("type")?
                .ok_or_else(|| Error::bad_request("missing required field \"type\""))?;
            let description = req.body.str("description")?.unwrap_or_default();
            let mut options = std::collections::BTreeMap::new();
            for (key, value) in req.body.object("options")?.into_iter().flatten() {
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(Error::BadRequest(format!("options.{key} must be a string"))),
                };
                options.insert(key.clone(), text);
            }
            u.audit
                .enable(&u.store, &path, kind, description, options)
                .await?;
            tracing::info!(device = %path, kind, "audit device enabled");
            Ok(Reply::NoContent)
        }
        Operation::Delete => {
            if u.audit.disable(&u.store, &path).await? {
                tracing::warn!(device = %path, "audit device disabled");
            }
            // Vault answers 204 whether or not it existed.
            Ok(Reply::NoContent)
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

/// `sys/audit-hash/<path>` `{"input"}` → `{"hash"}`: what the device writes for that value.
pub fn hash(u: &Unsealed, req: &Req, name: &str) -> Result<Reply> {
    authorize(req, Capability::Sudo)?;
    let path = normalise_mount_path(name)?;
    let input = req
        .body
        .str("input")?
        .ok_or_else(|| Error::bad_request("missing required field \"input\""))?;
    let devices = u.audit.current();
    let device = devices
        .iter()
        .find(|d| d.config.path == path)
        .ok_or_else(|| Error::BadRequest(format!("unknown audit device {path}")))?;
    Ok(Reply::Compat(json!({ "hash": device.salt.hash(input) })))
}
