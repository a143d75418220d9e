//! KV v2 endpoints under a mount: `data/`, `metadata/`, `delete/`, `undelete/`, `destroy/`, `config`.

use http::header::CONTENT_TYPE;
use http::StatusCode;
use serde_json::json;

use super::{authenticate, authorize, Operation, Reply, Req};
use crate::core::Unsealed;
use crate::error::{Error, Result};
use crate::kv::{Kv, MetadataUpdate, ReadOutcome, VersionAction};
use crate::mounts::Mount;
use crate::policy::Capability;

pub async fn route(u: &Unsealed, req: &Req, mount: &Mount, rest: &str) -> Result<Reply> {
    let kv = Kv::new(&u.store, &u.kv, mount.storage_prefix());
    let (area, key) = rest.split_once('/').unwrap_or((rest, ""));
    match (area, req.op) {
        ("data", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let version =
                match req.query.get("version") {
                    None => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        Error::bad_request("version must be a non-negative integer")
                    })?),
                };
            match kv.read(key, version).await? {
                ReadOutcome::Found(found) => Ok(Reply::DataText(found)),
                ReadOutcome::Gone(gone) => Ok(Reply::DataWithStatus(StatusCode::NOT_FOUND, gone)),
                ReadOutcome::Missing => Err(Error::NotFound),
            }
        }
        ("data", Operation::Write) => {
            let data = data_object(req)?;
            let cas = cas_option(req)?;
            let grant = authorize_create_or_update(req, || kv.exists(key)).await?;
            // Allowed by `create` alone: the write must still create, even if another writer
            // created the key since the existence check.
            let cas = if grant == Grant::CreateOnly {
                Some(0)
            } else {
                cas
            };
            Ok(Reply::Data(kv.write(key, data, cas).await?))
        }
        ("data", Operation::Patch) => {
            let content_type = req
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("application/merge-patch+json") {
                return Err(Error::UnsupportedMediaType(
                    "PATCH requires Content-Type: application/merge-patch+json".into(),
                ));
            }
            let patch = data_object(req)?;
            let cas = cas_option(req)?;
            authorize(req, Capability::Patch)?;
            Ok(Reply::Data(kv.patch(key, patch, cas).await?))
        }
        ("data", Operation::Delete) => {
            authorize(req, Capability::Delete)?;
            kv.delete_latest(key).await?;
            Ok(Reply::NoContent)
        }
        ("metadata", Operation::List) => {
            authorize(req, Capability::List)?;
            let keys = kv.list(key).await?;
            if keys.is_empty() {
                return Err(Error::NotFound);
            }
            Ok(Reply::Data(json!({ "keys": keys })))
        }
        ("metadata", Operation::Read) => {
            authorize(req, Capability::Read)?;
            let (meta, _) = kv.metadata(key).await?.ok_or(Error::NotFound)?;
            Ok(Reply::Data(meta.to_json()))
        }
        ("metadata", Operation::Write) => {
            let update = metadata_update(req)?;
            authorize_create_or_update(req, || kv.exists(key)).await?;
            kv.write_metadata(key, update).await?;
            Ok(Reply::NoContent)
        }
        ("metadata", Operation::Delete) => {
            authorize(req, Capability::Delete)?;
            kv.delete_metadata(key).await?;
            Ok(Reply::NoContent)
        }
        ("delete" | "undelete" | "destroy", Operation::Write) => {
            let versions = req.body.u64_list("versions")?.unwrap_or_default();
            authorize(req, Capability::Update)?;
            let action = match area {
                "delete" => VersionAction::Delete,
                "undelete" => VersionAction::Undelete,
                _ => VersionAction::Destroy,
            };
            kv.change_versions(key, &versions, action).await?;
            Ok(Reply::NoContent)
        }
        ("config", Operation::Read) if key.is_empty() => {
            authorize(req, Capability::Read)?;
            let config = kv.config().await?;
            Ok(Reply::Data(json!({
                "cas_required": config.cas_required,
                "delete_version_after": format!("{}s", config.delete_version_after),
                "max_versions": config.max_versions,
            })))
        }
        ("config", Operation::Write) if key.is_empty() => {
            let update = metadata_update(req)?;
            authorize(req, Capability::Update)?;
            kv.set_config(update).await?;
            Ok(Reply::NoContent)
        }
        ("data" | "metadata" | "delete" | "undelete" | "destroy" | "config", _) => {
            Err(Error::MethodNotAllowed)
        }
        _ => Err(Error::NotFound),
    }
}

/// The `data` object of a secret write or patch.
fn data_object(req: &Req) -> Result<serde_json::Map<String, serde_json::Value>> {
    req.body
        .object("data")?
        .cloned()
        .ok_or_else(|| Error::bad_request("no data provided: the body needs a \"data\" object"))
}

fn cas_option(req: &Req) -> Result<Option<u64>> {
    match req.body.object("options")? {
        None => Ok(None),
        Some(options) => match options.get("cas") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                Error::bad_request("field \"options.cas\" must be a non-negative integer")
            }),
        },
    }
}

fn metadata_update(req: &Req) -> Result<MetadataUpdate> {
    Ok(MetadataUpdate {
        max_versions: req.body.u64("max_versions")?,
        cas_required: req.body.bool("cas_required")?,
        delete_version_after: req.body.duration("delete_version_after")?,
        custom_metadata: req.body.string_map("custom_metadata")?,
    })
}

/// Vault's existence check: writing a new key needs `create`, an existing one `update`. The
/// key is only looked up when the caller holds exactly one of the two.
async fn authorize_create_or_update<F, Fut>(req: &Req, exists: F) -> Result<Grant>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let (_, acl) = authenticate(req)?;
    let create = acl.allows(&req.path, Capability::Create);
    let update = acl.allows(&req.path, Capability::Update);
    let grant = match (create, update) {
        (true, true) => Some(Grant::Both),
        (false, false) => None,
        (true, false) => (!exists().await?).then_some(Grant::CreateOnly),
        (false, true) => exists().await?.then_some(Grant::UpdateOnly),
    };
    grant.ok_or(Error::PermissionDenied)
}

/// Which of `create` and `update` let a write through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Both,
    CreateOnly,
    UpdateOnly,
}
