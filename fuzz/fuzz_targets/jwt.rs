//! Service-account JWTs as a caller sends them to a Kubernetes login, and JWKS documents as an
//! operator configures them. Nothing the fuzzer writes verifies against keys whose private
//! halves it does not have; `none` and HMAC are never the accepted algorithm; the claim checks
//! and the service-account reading never panic.
#![no_main]

use kinko_server::kubernetes::jwt::{self, JwtError};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const EC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEv7IeWTr+TgxL62Ys/6O1qdumhi4H
JB6hzWSOVy1knGCt+jHBfOBFoI/O0o9F38bjFP0K/+V/BBxnOrKpWaAXRg==
-----END PUBLIC KEY-----
";
const RSA_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAukO2mDNP1mHsKjrY97AQ
9IPe/+umWlmwgYAdwn5c1up60QniZFebm+VcMmj4/vWTE8nZjpnAaA9X+h7wog5g
NcrOWlvsa8CN8oT0LZvpmRYMSl/YrBcL4xINNYQtQUhcE1pYJgIpX1j9RPZgzM4k
y0APlPVU+fFj4OWilOKevGYhW6/wO7yNa0XhTteuO8PWrCbEt6zTDIuaFFw0mu+L
8a5t13wSpON/wAqnonGvcxsBVwnj+jC7yKw5oSl9oMwWrdXkRPFhjSIoVSlvMoro
wzhi5D1AFEIdPhh59s5U4O+ol0RM0eq3HcByeqIZ49k/LkkeRw6yXr2+Cjpwcf7O
yQIDAQAB
-----END PUBLIC KEY-----
";

fn keys() -> &'static [jwt::VerifyKey] {
    static KEYS: OnceLock<Vec<jwt::VerifyKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        jwt::parse_pem_keys(&[EC_KEY.to_owned(), RSA_KEY.to_owned()]).expect("test keys parse")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.starts_with('{') {
        let _ = jwt::parse_jwks(text);
        return;
    }
    let now = 1_800_000_000;
    if let Ok(algorithm) = jwt::algorithm(text) {
        let name = format!("{algorithm:?}");
        assert!(
            name.starts_with("RS") || name.starts_with("PS") || name.starts_with("ES"),
            "{name} accepted"
        );
    }
    if let Ok(claims) = jwt::unverified_claims(text) {
        let _ = jwt::check_claims(
            &claims,
            "kinko",
            Some("https://kubernetes.default.svc"),
            now,
        );
        let _ = jwt::service_account(&claims);
    }
    let verified = jwt::verify(text, keys(), "kinko", None, now);
    assert!(
        matches!(
            verified,
            Err(JwtError::Malformed | JwtError::Algorithm(_) | JwtError::Signature)
        ),
        "a token nobody signed was not refused at the signature: {verified:?}"
    );
});
