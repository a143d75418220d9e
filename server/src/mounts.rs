//! Mount tables: which paths are KV v2 engines (`core/mounts`) and which are auth methods under
//! `auth/` (`core/auth`), each mount with its own storage prefix.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::clock::{now, rfc3339};
use crate::encrypted::{EncryptedStorage, Write};
use crate::error::{Error, Result};
use crate::path::validate_logical_path;
use crate::retry::{on_conflict, settle};
use crate::storage::Precondition;

pub const MOUNTS_PATH: &str = "core/mounts";
pub const AUTH_PATH: &str = "core/auth";
const RESERVED: [&str; 6] = [
    "sys/",
    "auth/",
    "sealed/",
    "cubbyhole/",
    "identity/",
    "core/",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mount {
    /// With a trailing `/`, e.g. `secret/` (auth methods: relative to `auth/`, e.g. `kubernetes/`).
    pub path: String,
    /// `kv` for secrets engines; the method (`kubernetes`) for auth mounts.
    #[serde(default = "kv_kind")]
    pub kind: String,
    pub uuid: String,
    pub accessor: String,
    pub description: String,
    pub created_time: String,
}

fn kv_kind() -> String {
    "kv".into()
}

impl Mount {
    pub fn new(path: &str, kind: &str, description: &str) -> Mount {
        let uuid = uuid::Uuid::new_v4().to_string();
        Mount {
            path: path.to_owned(),
            kind: kind.to_owned(),
            accessor: if kind == "kv" {
                format!("kv_{}", &uuid[..8])
            } else {
                format!("auth_{kind}_{}", &uuid[..8])
            },
            uuid,
            description: description.to_owned(),
            created_time: rfc3339(now()),
        }
    }

    /// Where this engine's items live in storage.
    pub fn storage_prefix(&self) -> String {
        if self.kind == "kv" {
            format!("logical/{}/", self.uuid)
        } else {
            format!("auth/{}/", self.uuid)
        }
    }
}

/// `raw` as `name/` form, validated; `what` names it in errors.
fn normalised(raw: &str, what: &str) -> Result<String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Err(Error::BadRequest(format!("{what} is empty")));
    }
    validate_logical_path(trimmed)
        .map_err(|e| Error::BadRequest(format!("invalid {what}: {e}")))?;
    Ok(format!("{trimmed}/"))
}

/// Normalises a user-given mount path to `name/` form, refusing reserved or malformed ones.
pub fn normalise_mount_path(raw: &str) -> Result<String> {
    let path = normalised(raw, "mount path")?;
    if RESERVED.iter().any(|r| path.starts_with(r)) {
        return Err(Error::BadRequest(format!(
            "cannot mount at {path}: reserved path"
        )));
    }
    Ok(path)
}

/// Normalises an auth method path (relative to `auth/`); `token/` is built in.
pub fn normalise_auth_path(raw: &str) -> Result<String> {
    let path = normalised(raw, "auth method path")?;
    if path.starts_with("token/") {
        return Err(Error::bad_request("path is already in use at token/"));
    }
    Ok(path)
}

/// A mount of the table as it was when a request was resolved: shares that table (which a
/// reload replaces, never changes) instead of copying the mount's strings per request.
pub struct Resolved {
    table: Arc<Vec<Mount>>,
    index: usize,
}

impl std::ops::Deref for Resolved {
    type Target = Mount;

    fn deref(&self) -> &Mount {
        &self.table[self.index]
    }
}

pub struct MountTable {
    /// The storage item holding this table.
    key: &'static str,
    mounts: RwLock<Arc<Vec<Mount>>>,
}

impl MountTable {
    /// Loads the table stored at `key` ([`MOUNTS_PATH`] or [`AUTH_PATH`]).
    pub async fn load(store: &EncryptedStorage, key: &'static str) -> Result<MountTable> {
        let mounts: Vec<Mount> = store
            .get_json(key)
            .await?
            .map(|(m, _)| m)
            .unwrap_or_default();
        Ok(MountTable::new(key, mounts))
    }

    /// A table whose stored content is known (just written by initialisation).
    pub fn new(key: &'static str, mounts: Vec<Mount>) -> MountTable {
        MountTable {
            key,
            mounts: RwLock::new(Arc::new(mounts)),
        }
    }

    /// Re-reads the table (another replica may have changed it).
    pub async fn reload(&self, store: &EncryptedStorage) -> Result<()> {
        let mounts: Vec<Mount> = store
            .get_json(self.key)
            .await?
            .map(|(m, _)| m)
            .unwrap_or_default();
        *self.mounts.write().expect("mount table poisoned") = Arc::new(mounts);
        Ok(())
    }

    /// The mount at exactly `path` (`name/` form).
    pub fn get(&self, path: &str) -> Option<Mount> {
        self.all().iter().find(|m| m.path == path).cloned()
    }

    pub fn all(&self) -> Arc<Vec<Mount>> {
        self.mounts.read().expect("mount table poisoned").clone()
    }

    /// The mount a logical path falls under, and the path relative to it.
    pub fn resolve<'p>(&self, path: &'p str) -> Option<(Resolved, &'p str)> {
        let table = self.all();
        let (index, mount) = table
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.path) || path == m.path.trim_end_matches('/'))
            .max_by_key(|(_, m)| m.path.len())?;
        let rest = path.get(mount.path.len()..).unwrap_or("");
        Some((Resolved { table, index }, rest))
    }

    /// Adds a mount with a conditional write on the whole table.
    pub async fn add(&self, store: &EncryptedStorage, mount: Mount) -> Result<()> {
        self.change(store, |mounts| {
            if mounts
                .iter()
                .any(|m| m.path.starts_with(&mount.path) || mount.path.starts_with(&m.path))
            {
                return Err(Error::BadRequest(format!(
                    "path is already in use at {}",
                    mount.path
                )));
            }
            mounts.push(mount.clone());
            Ok(())
        })
        .await
    }

    pub async fn remove(&self, store: &EncryptedStorage, path: &str) -> Result<Option<Mount>> {
        let mut removed = None;
        self.change(store, |mounts| {
            removed = mounts
                .iter()
                .position(|m| m.path == path)
                .map(|at| mounts.remove(at));
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    async fn change(
        &self,
        store: &EncryptedStorage,
        edit: impl FnMut(&mut Vec<Mount>) -> Result<()>,
    ) -> Result<()> {
        // Called again on every attempt; a lock because the attempt future borrows it.
        let edit = &std::sync::Mutex::new(edit);
        let mounts = on_conflict("the mount table", || async move {
            let stored: Option<(Vec<Mount>, u64)> = store.get_json(self.key).await?;
            let (mut mounts, precondition) = match stored {
                Some((m, version)) => (m, Precondition::Version(version)),
                None => (Vec::new(), Precondition::Absent),
            };
            (edit.lock().expect("edit lock poisoned"))(&mut mounts)?;
            let written = store
                .transact(vec![Write::put_json(self.key, &mounts, precondition)])
                .await;
            settle(written, mounts)
        })
        .await?;
        *self.mounts.write().expect("mount table poisoned") = Arc::new(mounts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_normalised_and_reserved_ones_refused() {
        assert_eq!(normalise_mount_path("secret").unwrap(), "secret/");
        assert_eq!(normalise_mount_path("/team/kv/").unwrap(), "team/kv/");
        for bad in ["", "/", "sys", "auth/x", "a/../b", "a//b", "sealed"] {
            assert!(normalise_mount_path(bad).is_err(), "{bad}");
        }
    }
}
