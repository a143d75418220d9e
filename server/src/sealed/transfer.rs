//! Moving a sealing root secret to another cluster (pure): disaster recovery and several
//! clusters reading the same repository.
//!
//! The receiving cluster publishes an *import key* (an X-Wing key pair derived from its own
//! sealing root with info `"import" NUL cluster`), in a document signed by its signing key. The
//! sending cluster wraps its root secret to that key in a *bundle*
//! `kinko:sealing-key:v1:<base64url>`, framed like a sealed value, whose canonical JSON header
//! `{"from_cluster_id","to_cluster_id","current","retired_before","kem"}` is the AEAD's
//! associated data. Only the receiving cluster can open it, so the bundle may travel by any
//! channel; the sender's operator pins the receiver's signing-key fingerprint, so a swapped
//! import key is refused before anything is wrapped.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Kem as _, OpModeR, OpModeS};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    frame, unframe, valid_cluster_id, PrivateKey, PublicKey, SealedError, SealingRoot, KEM,
    MAX_EPOCH, TAG_BYTES, URL_SAFE_NO_PAD,
};
use crate::secret::Key256;
use base64::Engine;

pub const BUNDLE_PREFIX: &str = "kinko:sealing-key:v1:";
const BUNDLE_INFO: &[u8] = b"kinko:sealing-key:v1";
/// Names an import key document, which a key document (with its namespace) can never parse as.
pub const IMPORT_PURPOSE: &str = "sealing-key-import";

impl SealingRoot {
    /// The key pair other clusters wrap their root secrets to for this cluster.
    pub fn import_keypair(&self, cluster_id: &str) -> (PrivateKey, PublicKey) {
        let seed = self.derive(&[b"import\0", cluster_id.as_bytes()]);
        let (private, public) = XWing::derive_keypair(seed.as_ref());
        (PrivateKey(private), PublicKey(public))
    }
}

/// The published import key of a cluster (signed like a key document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKeyDocument {
    pub cluster_id: String,
    pub purpose: String,
    pub kem: String,
    /// base64url (no padding) of the X-Wing public key.
    pub public_key: String,
}

impl ImportKeyDocument {
    pub fn new(cluster_id: &str, public: &PublicKey) -> Self {
        ImportKeyDocument {
            cluster_id: cluster_id.to_owned(),
            purpose: IMPORT_PURPOSE.to_owned(),
            kem: KEM.to_owned(),
            public_key: URL_SAFE_NO_PAD.encode(public.to_bytes()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("in-memory JSON serialisation cannot fail")
    }

    /// Checks `signature` over `document` by `signing_public` and parses it canonically.
    pub fn verify(
        document: &[u8],
        signature: &[u8; 64],
        signing_public: &[u8],
    ) -> Result<Self, SealedError> {
        super::verify_signature(document, signature, signing_public)?;
        let parsed: ImportKeyDocument =
            serde_json::from_slice(document).map_err(|_| SealedError::InvalidField("document"))?;
        if parsed.encode() != document
            || parsed.purpose != IMPORT_PURPOSE
            || parsed.kem != KEM
            || !valid_cluster_id(&parsed.cluster_id)
        {
            return Err(SealedError::InvalidField("document"));
        }
        parsed.public_key()?;
        Ok(parsed)
    }

    pub fn public_key(&self) -> Result<PublicKey, SealedError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(&self.public_key)
            .map_err(|_| SealedError::InvalidField("public_key"))?;
        PublicKey::from_bytes(&bytes)
    }
}

/// What a bundle says about itself: readable without the key, and bound to the wrapped secret
/// as associated data. It does not prove who sent it (anyone can wrap to a public import
/// key): the importer checks the secret's own signing-key fingerprint against a pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    pub from_cluster_id: String,
    pub to_cluster_id: String,
    /// The sender's epochs, so values it retired stay retired where they are imported.
    pub current: u64,
    pub retired_before: u64,
    pub kem: String,
}

impl BundleHeader {
    fn validate(&self) -> Result<(), SealedError> {
        let epochs_ok =
            (1..=MAX_EPOCH).contains(&self.current) && self.retired_before <= self.current;
        if !valid_cluster_id(&self.from_cluster_id)
            || !valid_cluster_id(&self.to_cluster_id)
            || self.from_cluster_id == self.to_cluster_id
            || !epochs_ok
            || self.kem != KEM
        {
            return Err(SealedError::InvalidField("bundle header"));
        }
        Ok(())
    }
}

/// Wraps `root` (the sender's) for the cluster whose verified import key is `to`.
pub fn wrap(
    root: &SealingRoot,
    header: &BundleHeader,
    to: &ImportKeyDocument,
) -> Result<String, SealedError> {
    header.validate()?;
    if header.to_cluster_id != to.cluster_id {
        return Err(SealedError::InvalidField("to_cluster_id"));
    }
    let header_bytes =
        serde_json::to_vec(header).expect("in-memory JSON serialisation cannot fail");
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeS::Base,
        &to.public_key()?.0,
        BUNDLE_INFO,
        root.expose().expose(),
        &header_bytes,
    )
    .map_err(|_| SealedError::InvalidField("public_key"))?;
    Ok(frame(BUNDLE_PREFIX, &header_bytes, &encapped, &ciphertext))
}

/// Reads a bundle's header without opening it.
pub fn bundle_header(bundle: &str) -> Result<BundleHeader, SealedError> {
    let (header_bytes, _, _) = split(bundle)?;
    parse_header(&header_bytes)
}

fn split(bundle: &str) -> Result<super::Frame, SealedError> {
    if !bundle.starts_with(BUNDLE_PREFIX) {
        return Err(SealedError::Malformed(
            "missing kinko:sealing-key:v1: prefix",
        ));
    }
    unframe(bundle, BUNDLE_PREFIX, 32 + TAG_BYTES)
}

fn parse_header(bytes: &[u8]) -> Result<BundleHeader, SealedError> {
    let header: BundleHeader =
        serde_json::from_slice(bytes).map_err(|_| SealedError::Malformed("header is not valid"))?;
    header.validate()?;
    if serde_json::to_vec(&header).ok().as_deref() != Some(bytes) {
        return Err(SealedError::Malformed("header is not canonical"));
    }
    Ok(header)
}

/// Opens a bundle addressed to `own_cluster_id` with this cluster's import key.
pub fn unwrap(
    import_private: &PrivateKey,
    own_cluster_id: &str,
    bundle: &str,
) -> Result<(BundleHeader, SealingRoot), SealedError> {
    let (header_bytes, encapped, ciphertext) = split(bundle)?;
    let header = parse_header(&header_bytes)?;
    if header.to_cluster_id != own_cluster_id {
        return Err(SealedError::InvalidField("to_cluster_id"));
    }
    let root = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeR::Base,
        &import_private.0,
        &encapped,
        BUNDLE_INFO,
        &ciphertext,
        &header_bytes,
    )
    .map(Zeroizing::new)
    .map_err(|_| SealedError::Unauthentic)?;
    let key = Key256::from_slice(&root).ok_or(SealedError::Malformed("bad root length"))?;
    Ok((header, SealingRoot::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::{Binding, KeyDocument, SignedKeyDocument};

    fn root(byte: u8) -> SealingRoot {
        SealingRoot::new(Key256::from_slice(&[byte; 32]).unwrap())
    }

    fn header(to: &str) -> BundleHeader {
        BundleHeader {
            from_cluster_id: "old".into(),
            to_cluster_id: to.into(),
            current: 3,
            retired_before: 2,
            kem: KEM.into(),
        }
    }

    #[test]
    fn a_bundle_opens_only_at_the_cluster_it_was_wrapped_for() {
        let (sender, receiver, stranger) = (root(1), root(2), root(3));
        let (private, public) = receiver.import_keypair("new");
        let document = ImportKeyDocument::new("new", &public);
        let signing = receiver.signing_key("new");
        let bytes = document.encode();
        let verified =
            ImportKeyDocument::verify(&bytes, &signing.sign(&bytes), &signing.public()).unwrap();
        let bundle = wrap(&sender, &header("new"), &verified).unwrap();
        assert!(bundle.starts_with(BUNDLE_PREFIX));
        assert_eq!(bundle_header(&bundle).unwrap(), header("new"));

        let (got_header, got_root) = unwrap(&private, "new", &bundle).unwrap();
        assert_eq!(got_header.current, 3);
        assert_eq!(got_root.expose(), sender.expose());

        // Another cluster's import key, another addressee, a changed header: refused.
        let (other_private, _) = stranger.import_keypair("new");
        assert_eq!(
            unwrap(&other_private, "new", &bundle).unwrap_err(),
            SealedError::Unauthentic
        );
        assert!(unwrap(&private, "other", &bundle).is_err());
        let raw = crate::sealed::from_b64url(&bundle[BUNDLE_PREFIX.len()..]).unwrap();
        let mut tampered = raw.clone();
        let at = raw.windows(11).position(|w| w == b"\"current\":3").unwrap() + 10;
        tampered[at] = b'4';
        let tampered = format!("{BUNDLE_PREFIX}{}", crate::sealed::b64url(&tampered));
        assert_eq!(
            unwrap(&private, "new", &tampered).unwrap_err(),
            SealedError::Unauthentic
        );
        assert!(unwrap(&private, "new", &bundle[..bundle.len() - 4]).is_err());
    }

    #[test]
    fn a_key_document_is_never_taken_for_an_import_key() {
        let receiver = root(2);
        let signing = receiver.signing_key("new");
        let binding = Binding::new("new", "payments", "api").unwrap();
        let (_, public) = receiver.keypair(&binding, 1);
        let signed = SignedKeyDocument::sign(&signing, &KeyDocument::new(&binding, 1, &public));
        assert!(
            ImportKeyDocument::verify(&signed.document, &signed.signature, &signing.public())
                .is_err()
        );
        let (_, import_public) = receiver.import_keypair("new");
        let import = ImportKeyDocument::new("new", &import_public).encode();
        let forged = SignedKeyDocument {
            document: import.clone(),
            signature: signing.sign(&import),
        };
        assert!(forged.verify(&signing.public()).is_err());
        // The import key is not any binding's key.
        assert_ne!(import_public, public);
    }

    #[test]
    fn the_bundle_decoder_never_panics_on_random_or_truncated_input() {
        use rand::{Rng, RngCore, SeedableRng};
        let receiver = root(2);
        let (private, public) = receiver.import_keypair("new");
        let bundle = wrap(
            &root(1),
            &header("new"),
            &ImportKeyDocument::new("new", &public),
        )
        .unwrap();
        for cut in 0..bundle.len() {
            assert!(unwrap(&private, "new", &bundle[..cut]).is_err());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..2000 {
            let mut raw = vec![0u8; rng.gen_range(0..1400)];
            rng.fill_bytes(&mut raw);
            if raw.len() >= 2 && rng.gen_bool(0.5) {
                raw[0] = 0;
                raw[1] = rng.gen_range(0..200);
            }
            let text = format!("{BUNDLE_PREFIX}{}", crate::sealed::b64url(&raw));
            assert!(unwrap(&private, "new", &text).is_err());
            let _ = bundle_header(&text);
        }
    }

    #[test]
    fn a_bundle_header_must_be_sane() {
        let mut same = header("old");
        assert!(same.validate().is_err());
        same.to_cluster_id = "new".into();
        same.retired_before = 9;
        assert!(same.validate().is_err());
        assert!(header("new").validate().is_ok());
    }
}
