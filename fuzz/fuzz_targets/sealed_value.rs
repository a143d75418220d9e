//! Sealed values as anyone with Git access can write them, and the sealing-key bundles and
//! signed key documents an operator is handed. Any text decodes or is refused without a panic;
//! an edited copy of a real value never opens unless the edits left it as it was; no signed
//! document verifies under a key the fuzzer does not hold.
#![no_main]

use std::sync::OnceLock;

use kinko_server::sealed::{
    self, transfer, Binding, Header, PrivateKey, SealingRoot, SignedKeyDocument,
};
use kinko_server::secret::Key256;
use libfuzzer_sys::fuzz_target;

const PLAINTEXT: &[u8] = b"fuzz-plaintext";

struct Fixture {
    root: SealingRoot,
    binding: Binding,
    private: PrivateKey,
    sealed: String,
    signing_public: [u8; 32],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = SealingRoot::new(Key256::from_slice(&[9; 32]).expect("32 bytes"));
        let binding = Binding::new("fuzz-cluster", "payments", "payments-api").expect("binding");
        let (private, public) = root.keypair(&binding, 1);
        let header = Header::new(&binding, "DB_PASSWORD", 1).expect("header");
        let sealed = sealed::seal(&public, &header, PLAINTEXT).expect("seals");
        let signing_public = root.signing_key("fuzz-cluster").public();
        Fixture {
            root,
            binding,
            private,
            sealed,
            signing_public,
        }
    })
}

/// Opens `text` if it decodes, with the key of the binding its header names.
fn open(text: &str) -> Option<Vec<u8>> {
    let decoded = sealed::decode(text).ok()?;
    let header = &decoded.header;
    let binding = Binding::new(
        &header.cluster_id,
        &header.namespace,
        &header.service_account,
    )
    .expect("a decoded header names a valid binding");
    let fixture = fixture();
    // Deriving an X-Wing key pair is slow: the real value's is kept.
    let derived;
    let private = if binding == fixture.binding && header.epoch == 1 {
        &fixture.private
    } else {
        derived = fixture.root.keypair(&binding, header.epoch).0;
        &derived
    };
    sealed::open(private, &decoded)
        .ok()
        .map(|plaintext| plaintext.expose().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Edits (position, byte) of the real value.
        let mut edited = fixture.sealed.clone().into_bytes();
        for edit in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % edited.len();
            edited[at] = edit[2];
        }
        let Ok(edited) = String::from_utf8(edited) else {
            return;
        };
        match open(&edited) {
            Some(plaintext) => {
                assert_eq!(plaintext, PLAINTEXT);
                assert_eq!(
                    sealed::decode(&edited).expect("opened").header,
                    sealed::decode(&fixture.sealed).expect("real").header,
                    "an edited header opened"
                );
            }
            None => assert_ne!(edited, fixture.sealed, "the real value must open"),
        }
        let decoded = sealed::decode(&fixture.sealed).expect("real");
        assert!(sealed::open(&fixture.private, &decoded).is_ok());
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Some(plaintext) = open(text) {
        assert_eq!(plaintext, PLAINTEXT, "a value nobody sealed opened");
    }
    let _ = transfer::bundle_header(text);
    let (document, signature) = rest.split_at(rest.len().saturating_sub(64));
    if let Ok(signature) = <[u8; 64]>::try_from(signature) {
        let signed = SignedKeyDocument {
            document: document.to_vec(),
            signature,
        };
        assert!(signed.verify(&fixture.signing_public).is_err());
    }
});
