//! The Kubernetes auth method: Pods log in with their service-account token. Configuration and
//! roles are validated here; `login` decides, with the token checked by the API server's
//! TokenReview (the default, as Vault does) or, when chosen explicitly, offline against keys.

pub mod jwt;
pub mod review;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::now_unix;
use crate::core::Unsealed;
use crate::encrypted::Write;
use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::policy::validate_name;
use crate::storage::Precondition;
use crate::tokens::{Issued, TokenRequest, MAX_TTL};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Ask the API server (`TokenReview`): catches deleted service accounts and revoked tokens.
    #[default]
    TokenReview,
    /// kinko extension: verify signatures locally against `pem_keys` / `jwks` only.
    Offline,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub kubernetes_host: String,
    pub kubernetes_ca_cert: String,
    /// Stored encrypted like everything else; never returned by reads.
    pub token_reviewer_jwt: String,
    pub pem_keys: Vec<String>,
    pub jwks: String,
    pub issuer: String,
    pub disable_iss_validation: bool,
    pub disable_local_ca_jwt: bool,
    pub verification: Verification,
}

/// The reviewer JWT is a credential of the cluster: never printed.
impl std::fmt::Debug for KubernetesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesConfig")
            .field("kubernetes_host", &self.kubernetes_host)
            .field("token_reviewer_jwt", &"[REDACTED]")
            .field("pem_keys", &self.pem_keys.len())
            .field("issuer", &self.issuer)
            .field("verification", &self.verification)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    pub bound_service_account_names: Vec<String>,
    pub bound_service_account_namespaces: Vec<String>,
    pub audience: String,
    pub token_policies: Vec<String>,
    pub token_ttl: u64,
    pub token_max_ttl: u64,
}

/// Role names are plain ASCII (no `/`, `..`, or look-alike letters).
pub fn validate_role_name(name: &str) -> Result<()> {
    // Not quoted back: logins send it unauthenticated, and errors land in the audit log.
    validate_name(name)
        .map_err(|_| Error::bad_request("invalid role name: use letters, digits, '-', '_' and '.'"))
}

fn config_key(mount: &Mount) -> String {
    format!("{}config", mount.storage_prefix())
}

fn role_prefix(mount: &Mount) -> String {
    format!("{}role/", mount.storage_prefix())
}

impl KubernetesConfig {
    /// Refuses a configuration that could not verify tokens safely.
    pub fn validate(&self) -> Result<()> {
        if !self.kubernetes_host.is_empty() && !self.kubernetes_host.starts_with("https://") {
            return Err(Error::bad_request(
                "kubernetes_host must be an https:// URL",
            ));
        }
        if self.disable_local_ca_jwt
            && self.kubernetes_ca_cert.is_empty()
            && self.verification == Verification::TokenReview
        {
            return Err(Error::bad_request(
                "disable_local_ca_jwt requires kubernetes_ca_cert",
            ));
        }
        self.keys()?;
        if self.verification == Verification::Offline {
            if self.pem_keys.is_empty() && self.jwks.is_empty() {
                return Err(Error::bad_request(
                    "offline verification needs pem_keys or jwks",
                ));
            }
            if self.issuer.is_empty() || self.disable_iss_validation {
                return Err(Error::bad_request(
                    "offline verification needs the cluster's issuer, and issuer validation on",
                ));
            }
        }
        Ok(())
    }

    fn keys(&self) -> Result<Vec<jwt::VerifyKey>> {
        let mut keys = jwt::parse_pem_keys(&self.pem_keys).map_err(Error::BadRequest)?;
        if !self.jwks.is_empty() {
            keys.extend(jwt::parse_jwks(&self.jwks).map_err(Error::BadRequest)?);
        }
        Ok(keys)
    }

    fn issuer_to_check(&self) -> Option<&str> {
        (!self.issuer.is_empty() && !self.disable_iss_validation).then_some(self.issuer.as_str())
    }
}

impl Role {
    /// Refuses bindings that would match more than the operator meant.
    pub fn validate(&self) -> Result<()> {
        let (names, namespaces) = (
            &self.bound_service_account_names,
            &self.bound_service_account_namespaces,
        );
        if names.is_empty() || namespaces.is_empty() {
            return Err(Error::bad_request(
                "bound_service_account_names and bound_service_account_namespaces must each name at least one entry (\"*\" allows any, explicitly)",
            ));
        }
        for entry in names.iter().chain(namespaces) {
            if entry != "*"
                && (entry.is_empty()
                    || entry.len() > 253
                    || entry.contains('*')
                    || !entry.is_ascii())
            {
                return Err(Error::BadRequest(format!(
                    "bound name {entry:?} must be a Kubernetes name or exactly \"*\""
                )));
            }
        }
        if self.audience.is_empty() {
            // Stricter than Vault: a role without an audience would accept tokens minted for
            // any other service (CVE-2024-5798 class).
            return Err(Error::bad_request(
                "audience is required: the audience kinko tokens are projected with",
            ));
        }
        for policy in &self.token_policies {
            validate_name(policy).map_err(|e| Error::BadRequest(e.to_string()))?;
            // As Vault: an auth method never issues root tokens (a Pod would hold one).
            if policy == "root" {
                return Err(Error::bad_request(
                    "token_policies cannot include root: a login never issues a root token",
                ));
            }
        }
        if self.token_ttl > MAX_TTL || self.token_max_ttl > MAX_TTL {
            return Err(Error::BadRequest(format!(
                "token_ttl and token_max_ttl are at most {MAX_TTL} seconds"
            )));
        }
        if self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(Error::bad_request("token_ttl cannot exceed token_max_ttl"));
        }
        Ok(())
    }

    fn binds(list: &[String], value: &str) -> bool {
        list.iter().any(|entry| entry == "*" || entry == value)
    }
}

pub async fn read_config(u: &Unsealed, mount: &Mount) -> Result<Option<KubernetesConfig>> {
    Ok(u.store.get_json(&config_key(mount)).await?.map(|(c, _)| c))
}

pub async fn write_config(u: &Unsealed, mount: &Mount, config: &KubernetesConfig) -> Result<()> {
    u.store
        .write(vec![Write::put_json(
            config_key(mount),
            config,
            Precondition::None,
        )])
        .await
}

pub async fn read_role(u: &Unsealed, mount: &Mount, name: &str) -> Result<Option<Role>> {
    validate_role_name(name)?;
    Ok(u.store
        .get_json(&format!("{}{name}", role_prefix(mount)))
        .await?
        .map(|(r, _)| r))
}

pub async fn write_role(u: &Unsealed, mount: &Mount, name: &str, role: &Role) -> Result<()> {
    validate_role_name(name)?;
    u.store
        .write(vec![Write::put_json(
            format!("{}{name}", role_prefix(mount)),
            role,
            Precondition::None,
        )])
        .await
}

pub async fn delete_role(u: &Unsealed, mount: &Mount, name: &str) -> Result<()> {
    validate_role_name(name)?;
    u.store
        .write(vec![Write::delete(
            format!("{}{name}", role_prefix(mount)),
            Precondition::None,
        )])
        .await
}

pub async fn list_roles(u: &Unsealed, mount: &Mount) -> Result<Vec<String>> {
    let mut names = u.store.list(&role_prefix(mount)).await?;
    names.retain(|n| !n.ends_with('/'));
    Ok(names)
}

fn denied(reason: impl std::fmt::Display, role: &str) -> Error {
    tracing::info!(%role, %reason, "kubernetes login refused");
    Error::Forbidden(format!("permission denied: {reason}"))
}

/// Verifies a service-account JWT for `role_name` and issues a kinko token for it.
pub async fn login(u: &Unsealed, mount: &Mount, role_name: &str, token: &str) -> Result<Issued> {
    if role_name.is_empty() {
        return Err(Error::bad_request("missing role"));
    }
    let role = read_role(u, mount, role_name)
        .await?
        // The caller's text is not quoted back: it is unauthenticated and lands in the audit log.
        .ok_or_else(|| Error::bad_request("invalid role name: no such role on this auth mount"))?;
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(Error::bad_request("missing or oversized jwt"));
    }
    let config = read_config(u, mount)
        .await?
        .ok_or_else(|| Error::bad_request("the kubernetes auth method is not configured"))?;
    let now = now_unix();
    // Offline mode, or keys configured as a first check: verify the signature here. Otherwise
    // the API server's TokenReview below vouches for it; the claims are still checked.
    let verify_locally = config.verification == Verification::Offline
        || !config.pem_keys.is_empty()
        || !config.jwks.is_empty();
    let claims = if verify_locally {
        jwt::verify(
            token,
            &config.keys()?,
            &role.audience,
            config.issuer_to_check(),
            now,
        )
    } else {
        jwt::unverified_claims(token).and_then(|claims| {
            jwt::check_claims(&claims, &role.audience, config.issuer_to_check(), now)
                .map(|()| claims)
        })
    }
    .map_err(|e| denied(e, role_name))?;
    let account = jwt::service_account(&claims).map_err(|e| denied(e, role_name))?;
    if !Role::binds(&role.bound_service_account_names, &account.name) {
        tracing::info!(role = %role_name, "kubernetes login refused: service account name not bound");
        return Err(Error::Forbidden(
            "service account name not authorized".into(),
        ));
    }
    if !Role::binds(&role.bound_service_account_namespaces, &account.namespace) {
        tracing::info!(role = %role_name, "kubernetes login refused: namespace not bound");
        return Err(Error::Forbidden("namespace not authorized".into()));
    }
    if config.verification == Verification::TokenReview {
        let target = review::resolve_target(
            &config.kubernetes_host,
            &config.kubernetes_ca_cert,
            &config.token_reviewer_jwt,
            config.disable_local_ca_jwt,
        )?;
        let outcome = review::review(&u.review_clients, &target, token, &role.audience).await?;
        if !outcome.authenticated {
            return Err(denied(
                "the API server does not authenticate this token",
                role_name,
            ));
        }
        let expected = format!(
            "system:serviceaccount:{}:{}",
            account.namespace, account.name
        );
        if outcome.username != expected || outcome.uid != account.uid {
            return Err(denied(
                "the API server names another identity than the token",
                role_name,
            ));
        }
        if !outcome.audiences.contains(&role.audience) {
            return Err(denied(
                "the API server did not confirm the role's audience",
                role_name,
            ));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("role".to_owned(), role_name.to_owned());
    meta.insert("service_account_name".to_owned(), account.name.clone());
    meta.insert(
        "service_account_namespace".to_owned(),
        account.namespace.clone(),
    );
    meta.insert("service_account_uid".to_owned(), account.uid.clone());
    meta.insert(
        "service_account_secret_name".to_owned(),
        account.secret_name.clone().unwrap_or_default(),
    );
    if let Some(pod) = &account.pod_name {
        meta.insert("pod_name".to_owned(), pod.clone());
    }
    let request = TokenRequest {
        policies: role.token_policies.clone(),
        meta,
        display_name: format!(
            "{}{}-{}",
            mount.path.replace('/', "-"),
            account.namespace,
            account.name
        ),
        ttl: (role.token_ttl > 0).then_some(role.token_ttl),
        explicit_max_ttl: role.token_max_ttl,
        num_uses: 0,
        renewable: true,
        no_default_policy: false,
        path: format!("auth/{}login", mount.path),
    };
    u.tokens.create(&u.store, request, None, None).await
}
