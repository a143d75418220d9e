//! Every type that holds a token, key, JWT or secret value prints `{:?}` without it (issue 11:
//! `KubernetesConfig`, `InitRequest` and the client's `KvSecret` derived `Debug`).

use kinko_server::core::InitRequest;
use kinko_server::kubernetes::KubernetesConfig;
use kinko_server::secret::{Key256, SecretBytes, SecretString};

const CANARY: &str = "canary-7f3a9c";

fn assert_redacted(printed: String) {
    assert!(!printed.contains(CANARY), "{printed}");
    assert!(!printed.contains(&hex::encode(CANARY)), "{printed}");
}

#[test]
fn debug_output_never_shows_a_secret() {
    let config = KubernetesConfig {
        kubernetes_host: "https://kubernetes.default.svc".into(),
        token_reviewer_jwt: format!("eyJhbGciOi.{CANARY}.sig"),
        ..KubernetesConfig::default()
    };
    assert_redacted(format!("{config:?}"));
    let init = InitRequest {
        recovery_shares: 1,
        recovery_threshold: 1,
        root_token: Some(SecretString::new(CANARY.into())),
        mount_secret_kv: true,
    };
    assert_redacted(format!("{init:?}"));
    let mut key_bytes = [0u8; 32];
    key_bytes[..CANARY.len()].copy_from_slice(CANARY.as_bytes());
    assert_redacted(format!("{:?}", Key256::from_slice(&key_bytes).unwrap()));
    assert_redacted(format!(
        "{:?}",
        SecretBytes::new(CANARY.as_bytes().to_vec())
    ));
    let shares = kinko_server::shamir::split(CANARY.as_bytes(), 2, 2).unwrap();
    assert_redacted(format!("{shares:?}"));

    let mut data = serde_json::Map::new();
    data.insert("password".into(), serde_json::json!(CANARY));
    let secret = kinko_client::KvSecret { data, version: 1 };
    let printed = format!("{secret:?}");
    assert_redacted(printed.clone());
    assert!(printed.contains("password"), "keys are shown: {printed}");
}
