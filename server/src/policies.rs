//! The policy store: named ACL policies kept encrypted, parsed once, and merged ACLs cached per
//! policy set (dropped on any local change).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::TtlCache;
use crate::encrypted::{EncryptedStorage, Write};
use crate::error::{Error, Result};
use crate::policy::{self, Acl, Policy, PolicyError};
use crate::storage::Precondition;

const PREFIX: &str = "sys/policy/";

#[derive(Serialize, Deserialize)]
struct StoredPolicy {
    name: String,
    policy: String,
}

/// Parsed policies and merged ACLs, each forgotten after `cache::REFRESH` so that policy
/// changes made on another replica apply within that bound.
#[derive(Default)]
pub struct PolicyStore {
    parsed: TtlCache<String, Arc<Policy>>,
    acls: TtlCache<Vec<String>, Arc<Acl>>,
}

fn invalid(error: PolicyError) -> Error {
    Error::BadRequest(error.to_string())
}

/// The write that stores a policy (also used at initialisation for `default`).
pub fn policy_write(name: &str, text: &str) -> Result<Write> {
    policy::validate_name(name).map_err(invalid)?;
    if name == "root" {
        return Err(invalid(PolicyError::Root));
    }
    policy::parse(name, text).map_err(invalid)?;
    Ok(Write::put_json(
        format!("{PREFIX}{name}"),
        &StoredPolicy {
            name: name.into(),
            policy: text.into(),
        },
        Precondition::None,
    ))
}

impl PolicyStore {
    pub async fn get(&self, store: &EncryptedStorage, name: &str) -> Result<Option<Arc<Policy>>> {
        if let Some(found) = self.parsed.get(name) {
            return Ok(Some(found.clone()));
        }
        if policy::validate_name(name).is_err() {
            return Ok(None);
        }
        let generation = self.parsed.generation();
        let Some((stored, _)) = store
            .get_json::<StoredPolicy>(&format!("{PREFIX}{name}"))
            .await?
        else {
            return Ok(None);
        };
        let parsed = Arc::new(
            policy::parse(name, &stored.policy)
                .map_err(|e| Error::Internal(format!("stored policy {name}: {e}")))?,
        );
        self.parsed
            .insert_unless_invalidated(generation, name.to_owned(), parsed.clone());
        Ok(Some(parsed))
    }

    pub async fn put(&self, store: &EncryptedStorage, name: &str, text: &str) -> Result<()> {
        store.write(vec![policy_write(name, text)?]).await?;
        self.invalidate();
        Ok(())
    }

    pub async fn delete(&self, store: &EncryptedStorage, name: &str) -> Result<()> {
        if name == "root" || name == "default" {
            return Err(Error::BadRequest(format!(
                "cannot delete the {name} policy"
            )));
        }
        policy::validate_name(name).map_err(invalid)?;
        store
            .write(vec![Write::delete(
                format!("{PREFIX}{name}"),
                Precondition::None,
            )])
            .await?;
        self.invalidate();
        Ok(())
    }

    pub async fn list(&self, store: &EncryptedStorage) -> Result<Vec<String>> {
        let mut names = store.list(PREFIX).await?;
        names.retain(|n| !n.ends_with('/'));
        names.push("root".into());
        names.sort();
        Ok(names)
    }

    /// The merged ACL of a token's policies; names that do not exist grant nothing.
    pub async fn acl(&self, store: &EncryptedStorage, names: &[String]) -> Result<Arc<Acl>> {
        if let Some(acl) = self.acls.get(names) {
            return Ok(acl.clone());
        }
        // A policy change during this read must not leave the old ACL cached.
        let generation = self.acls.generation();
        let acl = if names.iter().any(|n| n == "root") {
            Acl::root()
        } else {
            let mut policies = Vec::with_capacity(names.len());
            for name in names {
                if let Some(policy) = self.get(store, name).await? {
                    policies.push(policy);
                }
            }
            Acl::new(&policies)
        };
        let acl = Arc::new(acl);
        self.acls
            .insert_unless_invalidated(generation, names.to_vec(), acl.clone());
        Ok(acl)
    }

    fn invalidate(&self) {
        self.parsed.clear();
        self.acls.clear();
    }
}
