//! Sealed values (GitOps): `kinko:sealed:v1:<base64url>` strings that are safe to commit.
//!
//! Pure (no I/O): the wire format, key derivation, HPKE seal/open and the signed key documents.
//! [`store`] keeps the sealing root secret and the epochs under the barrier.
//!
//! A value is `u16 BE header length | header | encapsulated key | AEAD ciphertext`, base64url
//! without padding behind [`PREFIX`]. The header is canonical JSON
//! `{"cluster_id","namespace","service_account","name","epoch","kem"}` (exactly these fields, in
//! this order, no whitespace): readable without a key, and the AEAD's associated data, so a value
//! moved to another cluster, namespace, service account or variable name does not open.
//! HPKE (RFC 9180) mode Base with the X-Wing KEM (ML-KEM-768 + X25519), HKDF-SHA256 and
//! ChaCha20Poly1305; HPKE `info` is [`HPKE_INFO`].
//!
//! Per-binding key pairs are derived, never stored: HKDF-SHA256 over the sealing root secret
//! with salt [`HKDF_SALT`] and info `"kem" NUL cluster NUL namespace NUL service account NUL
//! epoch` gives the seed of `Kem::derive_keypair`; the cluster's Ed25519 signing key comes from
//! info `"signing" NUL cluster`.

pub mod manifest;
pub mod offline;
pub mod store;
pub mod transfer;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::Signer;
use hkdf::Hkdf;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::{Key256, SecretBytes};

/// Every sealed value starts with this.
pub const PREFIX: &str = "kinko:sealed:v1:";
/// HPKE `info` of every seal and open.
pub const HPKE_INFO: &[u8] = b"kinko:sealed:v1";
/// HKDF salt of every derivation from the sealing root secret.
pub const HKDF_SALT: &[u8] = b"kinko/sealed/v1";
/// The `kem` field of headers and key documents: the whole v1 suite is fixed by it.
pub const KEM: &str = "X-Wing";
/// Bounds of the decoder: a header is small, and so is an environment variable's value.
pub const MAX_HEADER_BYTES: usize = 1024;
pub const MAX_PLAINTEXT_BYTES: usize = 64 * 1024;
const ENCAPPED_KEY_BYTES: usize = 1120;
const TAG_BYTES: usize = 16;
/// The longest sealed value string the decoder looks at.
pub const MAX_VALUE_CHARS: usize = PREFIX.len()
    + (2 + MAX_HEADER_BYTES + ENCAPPED_KEY_BYTES + MAX_PLAINTEXT_BYTES + TAG_BYTES).div_ceil(3) * 4;
const MAX_VARIABLE_NAME: usize = 256;
/// Epochs are JSON numbers: keep them exact in every JSON reader.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// Why a value or document was refused. The server answers all of them with one message; the
/// CLI (`kinko sealed inspect`) may show the reason, which never contains the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    #[error("not a sealed value: {0}")]
    Malformed(&'static str),
    /// The AEAD refused it: tampered, truncated, or sealed to another key.
    #[error("the sealed value does not authenticate")]
    Unauthentic,
    #[error("invalid {0}")]
    InvalidField(&'static str),
    #[error("the key document's signature does not verify")]
    BadSignature,
    #[error("plaintext is larger than {MAX_PLAINTEXT_BYTES} bytes")]
    TooLarge,
}

/// A Kubernetes namespace: an RFC 1123 label (at most 63 of `a-z0-9-`, alphanumeric ends).
pub fn valid_namespace(name: &str) -> bool {
    dns_label(name)
}

/// A service account name: an RFC 1123 subdomain (at most 253, dot-separated labels).
pub fn valid_service_account(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(dns_label)
}

/// An environment variable name as envrun resolves it: `[A-Za-z_][A-Za-z0-9_]*`, at most 256.
pub fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_VARIABLE_NAME
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A cluster id: a UUID or another short `[a-z0-9-]` string.
pub fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Who may open a value: one service account of one namespace in one cluster, at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub cluster_id: String,
    pub namespace: String,
    pub service_account: String,
}

impl Binding {
    pub fn new(
        cluster_id: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SealedError> {
        if !valid_cluster_id(cluster_id) {
            return Err(SealedError::InvalidField("cluster_id"));
        }
        if !valid_namespace(namespace) {
            return Err(SealedError::InvalidField("namespace"));
        }
        if !valid_service_account(service_account) {
            return Err(SealedError::InvalidField("service_account"));
        }
        Ok(Binding {
            cluster_id: cluster_id.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

/// The readable, authenticated part of a sealed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub cluster_id: String,
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    pub epoch: u64,
    pub kem: String,
}

impl Header {
    pub fn new(binding: &Binding, name: &str, epoch: u64) -> Result<Self, SealedError> {
        let header = Header {
            cluster_id: binding.cluster_id.clone(),
            namespace: binding.namespace.clone(),
            service_account: binding.service_account.clone(),
            name: name.to_owned(),
            epoch,
            kem: KEM.to_owned(),
        };
        header.validate()?;
        Ok(header)
    }

    pub fn binding(&self) -> Binding {
        Binding {
            cluster_id: self.cluster_id.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }

    fn validate(&self) -> Result<(), SealedError> {
        Binding::new(&self.cluster_id, &self.namespace, &self.service_account)?;
        if !valid_variable_name(&self.name) {
            return Err(SealedError::InvalidField("name"));
        }
        if self.epoch == 0 || self.epoch > MAX_EPOCH {
            return Err(SealedError::InvalidField("epoch"));
        }
        if self.kem != KEM {
            return Err(SealedError::InvalidField("kem"));
        }
        Ok(())
    }

    /// The canonical bytes: fields in declaration order, no whitespace (serde_json's compact
    /// output of this struct).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("in-memory JSON serialisation cannot fail")
    }

    /// Parses canonical header bytes: any other spelling of the same fields (order, spaces,
    /// escapes, duplicates, extra or missing fields) is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, SealedError> {
        if bytes.len() > MAX_HEADER_BYTES {
            return Err(SealedError::Malformed("header too long"));
        }
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|_| SealedError::Malformed("header is not valid"))?;
        header.validate()?;
        if header.encode() != bytes {
            return Err(SealedError::Malformed("header is not canonical"));
        }
        Ok(header)
    }
}

/// A decoded (not yet opened) sealed value.
pub struct Decoded {
    pub header: Header,
    header_bytes: Vec<u8>,
    encapped: <XWing as hpke::Kem>::EncappedKey,
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("header", &self.header)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl Decoded {
    /// The plaintext length (the AEAD adds a 16-byte tag): public to anyone holding the value.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len() - TAG_BYTES
    }
}

/// Decodes a `kinko:sealed:v1:` string; bounded, never panics on any input.
pub fn decode(value: &str) -> Result<Decoded, SealedError> {
    if !value.starts_with(PREFIX) {
        return Err(SealedError::Malformed("missing kinko:sealed:v1: prefix"));
    }
    let (header_bytes, encapped, ciphertext) =
        unframe(value, PREFIX, MAX_PLAINTEXT_BYTES + TAG_BYTES)?;
    let header = Header::parse(&header_bytes)?;
    Ok(Decoded {
        header,
        header_bytes,
        encapped,
        ciphertext,
    })
}

/// A binding's public key at one epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<XWing as hpke::Kem>::PublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey(X-Wing)")
    }
}

impl PublicKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealedError> {
        <XWing as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| SealedError::InvalidField("public_key"))
    }
}

/// A binding's private key at one epoch: derived on demand, zeroized on drop (the X-Wing
/// decapsulation key zeroizes itself), never printed, not `Clone`.
pub struct PrivateKey(<XWing as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey([REDACTED])")
    }
}

/// The sealing root secret: everything else is derived from it.
pub struct SealingRoot(Key256);

impl std::fmt::Debug for SealingRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingRoot([REDACTED])")
    }
}

/// The cluster's Ed25519 key that signs key documents (zeroized on drop by ed25519-dalek).
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// `sha256:<hex>` of a raw Ed25519 public key: what a repository pins.
pub fn fingerprint(signing_public: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(signing_public)))
}

/// Whether `signing_public` is the pinned key (hex in any case, spaces around ignored);
/// `Err` carries its actual fingerprint for the refusal.
pub fn check_pin(signing_public: &[u8], pinned: &str) -> Result<(), String> {
    let actual = fingerprint(signing_public);
    if actual.eq_ignore_ascii_case(pinned.trim()) {
        Ok(())
    } else {
        Err(actual)
    }
}

impl SealingRoot {
    pub fn new(key: Key256) -> Self {
        SealingRoot(key)
    }

    pub fn expose(&self) -> &Key256 {
        &self.0
    }

    fn derive(&self, info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), self.0.expose());
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf.expand_multi_info(info, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// The key pair of `binding` at `epoch`: the same inputs always give the same pair.
    pub fn keypair(&self, binding: &Binding, epoch: u64) -> (PrivateKey, PublicKey) {
        let epoch = epoch.to_string();
        let seed = self.derive(&[
            b"kem\0",
            binding.cluster_id.as_bytes(),
            b"\0",
            binding.namespace.as_bytes(),
            b"\0",
            binding.service_account.as_bytes(),
            b"\0",
            epoch.as_bytes(),
        ]);
        let (private, public) = XWing::derive_keypair(seed.as_ref());
        (PrivateKey(private), PublicKey(public))
    }

    pub fn signing_key(&self, cluster_id: &str) -> SigningKey {
        let seed = self.derive(&[b"signing\0", cluster_id.as_bytes()]);
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
}

/// Seals `plaintext` for `header`'s binding with that binding's public key.
pub fn seal(public: &PublicKey, header: &Header, plaintext: &[u8]) -> Result<String, SealedError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(SealedError::TooLarge);
    }
    header.validate()?;
    let header_bytes = header.encode();
    if header_bytes.len() > MAX_HEADER_BYTES {
        return Err(SealedError::Malformed("header too long"));
    }
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeS::Base,
        &public.0,
        HPKE_INFO,
        plaintext,
        &header_bytes,
    )
    .map_err(|_| SealedError::Unauthentic)?;
    Ok(frame(PREFIX, &header_bytes, &encapped, &ciphertext))
}

/// `prefix` + base64url of `u16 BE header length | header | encapsulated key | ciphertext`.
fn frame(
    prefix: &str,
    header: &[u8],
    encapped: &<XWing as hpke::Kem>::EncappedKey,
    ciphertext: &[u8],
) -> String {
    let mut raw = Vec::with_capacity(2 + header.len() + ENCAPPED_KEY_BYTES + ciphertext.len());
    raw.extend_from_slice(&(header.len() as u16).to_be_bytes());
    raw.extend_from_slice(header);
    raw.extend_from_slice(&encapped.to_bytes());
    raw.extend_from_slice(ciphertext);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The parts of a framed string: header bytes (not yet parsed), encapsulated key, ciphertext.
type Frame = (Vec<u8>, <XWing as hpke::Kem>::EncappedKey, Vec<u8>);

fn unframe(value: &str, prefix: &str, max_ciphertext: usize) -> Result<Frame, SealedError> {
    if value.len() > MAX_VALUE_CHARS {
        return Err(SealedError::Malformed("value too long"));
    }
    let encoded = value
        .strip_prefix(prefix)
        .ok_or(SealedError::Malformed("missing prefix"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| SealedError::Malformed("not base64url without padding"))?;
    let (length, rest) = raw
        .split_first_chunk::<2>()
        .ok_or(SealedError::Malformed("truncated"))?;
    let header_len = usize::from(u16::from_be_bytes(*length));
    if header_len > MAX_HEADER_BYTES || header_len > rest.len() {
        return Err(SealedError::Malformed("bad header length"));
    }
    let (header_bytes, rest) = rest.split_at(header_len);
    if rest.len() < ENCAPPED_KEY_BYTES + TAG_BYTES {
        return Err(SealedError::Malformed("truncated"));
    }
    let (encapped, ciphertext) = rest.split_at(ENCAPPED_KEY_BYTES);
    if ciphertext.len() > max_ciphertext {
        return Err(SealedError::Malformed("value too long"));
    }
    let encapped = <XWing as hpke::Kem>::EncappedKey::from_bytes(encapped)
        .map_err(|_| SealedError::Malformed("bad encapsulated key"))?;
    Ok((header_bytes.to_vec(), encapped, ciphertext.to_vec()))
}

/// Opens a decoded value with its binding's private key.
pub fn open(private: &PrivateKey, decoded: &Decoded) -> Result<SecretBytes, SealedError> {
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeR::Base,
        &private.0,
        &decoded.encapped,
        HPKE_INFO,
        &decoded.ciphertext,
        &decoded.header_bytes,
    )
    .map(SecretBytes::new)
    .map_err(|_| SealedError::Unauthentic)
}

/// A binding's public key at one epoch, as published and signed by the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDocument {
    pub cluster_id: String,
    pub namespace: String,
    pub service_account: String,
    pub epoch: u64,
    pub kem: String,
    /// base64url (no padding) of the X-Wing public key.
    pub public_key: String,
}

impl KeyDocument {
    pub fn new(binding: &Binding, epoch: u64, public: &PublicKey) -> Self {
        KeyDocument {
            cluster_id: binding.cluster_id.clone(),
            namespace: binding.namespace.clone(),
            service_account: binding.service_account.clone(),
            epoch,
            kem: KEM.to_owned(),
            public_key: URL_SAFE_NO_PAD.encode(public.to_bytes()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("in-memory JSON serialisation cannot fail")
    }

    pub fn binding(&self) -> Result<Binding, SealedError> {
        Binding::new(&self.cluster_id, &self.namespace, &self.service_account)
    }

    pub fn public_key(&self) -> Result<PublicKey, SealedError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(&self.public_key)
            .map_err(|_| SealedError::InvalidField("public_key"))?;
        PublicKey::from_bytes(&bytes)
    }
}

/// The `data` of `GET sealed/keys/<ns>/<sa>`: the document's exact bytes and their signature.
pub struct SignedKeyDocument {
    pub document: Vec<u8>,
    pub signature: [u8; 64],
}

impl SignedKeyDocument {
    pub fn sign(signing: &SigningKey, document: &KeyDocument) -> Self {
        let document = document.encode();
        let signature = signing.sign(&document);
        SignedKeyDocument {
            document,
            signature,
        }
    }

    /// Verifies the signature with `signing_public` and parses the document (canonically).
    pub fn verify(&self, signing_public: &[u8]) -> Result<KeyDocument, SealedError> {
        verify_signature(&self.document, &self.signature, signing_public)?;
        let document: KeyDocument = serde_json::from_slice(&self.document)
            .map_err(|_| SealedError::InvalidField("document"))?;
        if document.encode() != self.document || document.kem != KEM {
            return Err(SealedError::InvalidField("document"));
        }
        if document.epoch == 0 || document.epoch > MAX_EPOCH {
            return Err(SealedError::InvalidField("epoch"));
        }
        document.binding()?;
        document.public_key()?;
        Ok(document)
    }
}

/// Checks an Ed25519 signature (strictly: no malleable or small-order forms).
fn verify_signature(
    message: &[u8],
    signature: &[u8; 64],
    signing_public: &[u8],
) -> Result<(), SealedError> {
    let key: [u8; 32] = signing_public
        .try_into()
        .map_err(|_| SealedError::InvalidField("signing_key"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| SealedError::InvalidField("signing_key"))?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| SealedError::BadSignature)
}

/// Base64 forms used by the API: standard for plaintexts and the signing key, base64url for
/// documents, signatures and public keys.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn from_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Accepts standard base64 with or without padding, as clients differ.
pub fn from_b64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok().or_else(|| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .ok()
    })
}

#[cfg(test)]
mod tests;
