//! Key material and plaintext wrappers: zeroized on drop, printed as `[REDACTED]`, never `Clone`.

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 256-bit symmetric key (root key, keyring term key, HMAC key, seal key).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key256([u8; 32]);

/// Constant time: comparing keys must not tell how many leading bytes matched.
impl PartialEq for Key256 {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Key256 {}

impl Key256 {
    pub const LEN: usize = 32;

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Key256(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(Key256(array))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// An explicit, visible copy: key types deliberately do not implement `Clone`.
    pub fn duplicate(&self) -> Self {
        Key256(self.0)
    }
}

impl std::fmt::Debug for Key256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key256([REDACTED])")
    }
}

/// Decrypted bytes: a stored secret, a serialised keyring, a token entry, a recovery share.
#[derive(Zeroize, ZeroizeOnDrop, Default)]
pub struct SecretBytes(Vec<u8>);

/// Constant time for equal lengths (lengths are not secret).
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

/// A bearer credential such as a client token: compared and stored only through its keyed hash.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        SecretString(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let key = Key256::from_slice(&[0xAB; 32]).unwrap();
        let printed = format!("{key:?}");
        assert_eq!(printed, "Key256([REDACTED])");
        let plain = SecretBytes::new(b"hunter2".to_vec());
        assert!(!format!("{plain:?}").contains("hunter2"));
        let token = SecretString::new("kks.supersecret".into());
        assert!(!format!("{token:?}").contains("supersecret"));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Key256::generate().expose(), Key256::generate().expose());
    }
}
