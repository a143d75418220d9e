//! Service-account JWTs, without I/O: the Kubernetes claims they carry, and verification of
//! signature, issuer, audience and validity window against configured public keys.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("signing algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("the signature does not verify against the configured keys")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer does not match")]
    Issuer,
    #[error("the token's audience does not match the role's")]
    Audience,
    #[error("the token lacks the Kubernetes service account claims")]
    Claims,
}

/// Asymmetric algorithms only: `none` and HMAC (which would let a public key act as a
/// shared secret) are never accepted.
const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

fn is_rsa(algorithm: Algorithm) -> bool {
    !matches!(algorithm, Algorithm::ES256 | Algorithm::ES384)
}

/// A public key that may verify service-account tokens.
pub struct VerifyKey {
    key: DecodingKey,
    rsa: bool,
}

/// Reads PEM public keys (RSA PKCS#1 or SubjectPublicKeyInfo, or EC).
pub fn parse_pem_keys(pems: &[String]) -> Result<Vec<VerifyKey>, String> {
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                return Ok(VerifyKey { key, rsa: true });
            }
            DecodingKey::from_ec_pem(pem.as_bytes())
                .map(|key| VerifyKey { key, rsa: false })
                .map_err(|_| format!("pem_keys[{i}] is not an RSA or EC public key in PEM form"))
        })
        .collect()
}

/// Reads a JWKS document (`{"keys": [...]}`), as served at the cluster's `/openid/v1/jwks`.
pub fn parse_jwks(document: &str) -> Result<Vec<VerifyKey>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(document).map_err(|e| format!("jwks is not a JWK set: {e}"))?;
    set.keys
        .iter()
        .map(|jwk| {
            let rsa = matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
            );
            DecodingKey::from_jwk(jwk)
                .map(|key| VerifyKey { key, rsa })
                .map_err(|e| format!("jwks key: {e}"))
        })
        .collect()
}

fn decode_part(part: &str) -> Result<Value, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// The header's algorithm, refused unless asymmetric.
pub fn algorithm(jwt: &str) -> Result<Algorithm, JwtError> {
    let header = decode_part(jwt.split('.').next().unwrap_or_default())?;
    let name = header["alg"].as_str().ok_or(JwtError::Malformed)?;
    name.parse::<Algorithm>()
        .ok()
        .filter(|a| ACCEPTED.contains(a))
        .ok_or_else(|| JwtError::Algorithm(name.chars().take(16).collect()))
}

/// The claims without checking the signature (TokenReview mode leaves that to the API server,
/// which must then confirm the same identity).
pub fn unverified_claims(jwt: &str) -> Result<Value, JwtError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(JwtError::Malformed);
    }
    algorithm(jwt)?;
    decode_part(parts[1])
}

fn audience_matches(claims: &Value, audience: &str) -> bool {
    match &claims["aud"] {
        Value::String(single) => single == audience,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// Validity window and audience, checked on claims (also in TokenReview mode, where the API
/// server checks them too: defence in depth).
pub fn check_claims(
    claims: &Value,
    audience: &str,
    issuer: Option<&str>,
    now: i64,
) -> Result<(), JwtError> {
    let leeway = LEEWAY_SECONDS as i64;
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_i64().ok_or(JwtError::Malformed)?;
        if exp + leeway < now {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        if nbf.as_i64().ok_or(JwtError::Malformed)? - leeway > now {
            return Err(JwtError::NotYetValid);
        }
    }
    if !audience_matches(claims, audience) {
        return Err(JwtError::Audience);
    }
    if let Some(expected) = issuer {
        if claims["iss"].as_str() != Some(expected) {
            return Err(JwtError::Issuer);
        }
    }
    Ok(())
}

/// Verifies the signature against any of `keys`, then the claims; `exp` is required here.
pub fn verify(
    jwt: &str,
    keys: &[VerifyKey],
    audience: &str,
    issuer: Option<&str>,
    now: i64,
) -> Result<Value, JwtError> {
    let algorithm = algorithm(jwt)?;
    let mut validation = Validation::new(algorithm);
    // Claims are checked by `check_claims` with our own clock, identically in both modes.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    // Every key is tried: one that cannot verify this token (another curve, an Ed25519 or
    // HMAC key in the set) must not hide a later key that can.
    let claims = keys
        .iter()
        .filter(|k| k.rsa == is_rsa(algorithm))
        .find_map(|key| jsonwebtoken::decode::<Value>(jwt, &key.key, &validation).ok())
        .map(|data| data.claims)
        .ok_or(JwtError::Signature)?;
    if claims.get("exp").is_none() {
        return Err(JwtError::Expired);
    }
    check_claims(&claims, audience, issuer, now)?;
    Ok(claims)
}

/// The identity a service-account token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod_name: Option<String>,
    pub secret_name: Option<String>,
}

/// Reads the projected (`kubernetes.io: {...}`) or legacy (`kubernetes.io/serviceaccount/...`) claims.
pub fn service_account(claims: &Value) -> Result<ServiceAccount, JwtError> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let projected = &claims["kubernetes.io"];
    let account = if projected.is_object() {
        ServiceAccount {
            namespace: text(&projected["namespace"]).ok_or(JwtError::Claims)?,
            name: text(&projected["serviceaccount"]["name"]).ok_or(JwtError::Claims)?,
            uid: text(&projected["serviceaccount"]["uid"]).ok_or(JwtError::Claims)?,
            pod_name: text(&projected["pod"]["name"]),
            secret_name: None,
        }
    } else {
        ServiceAccount {
            namespace: text(&claims["kubernetes.io/serviceaccount/namespace"])
                .ok_or(JwtError::Claims)?,
            name: text(&claims["kubernetes.io/serviceaccount/service-account.name"])
                .ok_or(JwtError::Claims)?,
            uid: text(&claims["kubernetes.io/serviceaccount/service-account.uid"])
                .ok_or(JwtError::Claims)?,
            pod_name: None,
            secret_name: text(&claims["kubernetes.io/serviceaccount/secret.name"]),
        }
    };
    let expected_subject = format!(
        "system:serviceaccount:{}:{}",
        account.namespace, account.name
    );
    if claims["sub"].as_str() != Some(expected_subject.as_str()) {
        return Err(JwtError::Claims);
    }
    Ok(account)
}
