//! Unit tests of the sealed-value format, derivation, seal/open and key documents.

use super::*;
use rand::{Rng, RngCore, SeedableRng};

const CLUSTER: &str = "4b2f0c1e-9a53-4d2e-8f60-1c2b3a4d5e6f";

fn root() -> SealingRoot {
    SealingRoot::new(Key256::from_slice(&[7u8; 32]).unwrap())
}

fn binding(ns: &str, sa: &str) -> Binding {
    Binding::new(CLUSTER, ns, sa).unwrap()
}

fn sealed(ns: &str, sa: &str, name: &str, epoch: u64, plaintext: &[u8]) -> String {
    let b = binding(ns, sa);
    let (_, public) = root().keypair(&b, epoch);
    seal(&public, &Header::new(&b, name, epoch).unwrap(), plaintext).unwrap()
}

fn raw(value: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(value.strip_prefix(PREFIX).unwrap())
        .unwrap()
}

fn encoded(raw: &[u8]) -> String {
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Replaces the header of a sealed value (keeping the key and ciphertext).
fn with_header(value: &str, header: &[u8]) -> String {
    let raw = raw(value);
    let old = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
    let mut out = (header.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&raw[2 + old..]);
    encoded(&out)
}

#[test]
fn seal_then_open_round_trips_and_the_header_reads_back() {
    let value = sealed("payments", "payments-api", "DB_PASSWORD", 1, b"hunter2");
    assert!(value.starts_with(PREFIX));
    let decoded = decode(&value).unwrap();
    assert_eq!(
        decoded.header,
        Header {
            cluster_id: CLUSTER.into(),
            namespace: "payments".into(),
            service_account: "payments-api".into(),
            name: "DB_PASSWORD".into(),
            epoch: 1,
            kem: KEM.into(),
        }
    );
    assert_eq!(decoded.plaintext_len(), 7);
    let (private, _) = root().keypair(&binding("payments", "payments-api"), 1);
    assert_eq!(open(&private, &decoded).unwrap().expose(), b"hunter2");
    assert!(!format!("{decoded:?}").contains("hunter2"));
}

#[test]
fn header_encoding_is_canonical_and_round_trips() {
    let header = Header::new(&binding("ns", "sa"), "NAME", 3).unwrap();
    let bytes = header.encode();
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        format!(
            r#"{{"cluster_id":"{CLUSTER}","namespace":"ns","service_account":"sa","name":"NAME","epoch":3,"kem":"X-Wing"}}"#
        )
    );
    assert_eq!(Header::parse(&bytes).unwrap(), header);
}

#[test]
fn every_malformed_header_is_refused() {
    let good = format!(
        r#"{{"cluster_id":"{CLUSTER}","namespace":"ns","service_account":"sa","name":"NAME","epoch":3,"kem":"X-Wing"}}"#
    );
    assert!(Header::parse(good.as_bytes()).is_ok());
    let bad = [
        // another order
        format!(
            r#"{{"namespace":"ns","cluster_id":"{CLUSTER}","service_account":"sa","name":"NAME","epoch":3,"kem":"X-Wing"}}"#
        ),
        // whitespace
        good.replace(",\"name\"", ", \"name\""),
        // escapes that spell the same string
        good.replace("\"ns\"", "\"n\\u0073\""),
        // extra field
        good.replace("}", ",\"extra\":1}"),
        // duplicate field
        good.replace(
            "\"kem\":\"X-Wing\"",
            "\"kem\":\"X-Wing\",\"kem\":\"X-Wing\"",
        ),
        // missing field
        good.replace(",\"kem\":\"X-Wing\"", ""),
        // wrong types and values
        good.replace("\"epoch\":3", "\"epoch\":\"3\""),
        good.replace("\"epoch\":3", "\"epoch\":0"),
        good.replace("\"epoch\":3", "\"epoch\":-1"),
        good.replace("\"epoch\":3", "\"epoch\":3.0"),
        good.replace("\"epoch\":3", "\"epoch\":9007199254740992"),
        good.replace("X-Wing", "DHKEM-X25519"),
        good.replace("\"ns\"", "\"Payments\""),
        good.replace("\"ns\"", "\"-ns\""),
        good.replace("\"ns\"", "\"\""),
        good.replace("\"ns\"", "\"a/b\""),
        good.replace("\"ns\"", &format!("\"{}\"", "a".repeat(64))),
        good.replace("\"sa\"", "\"s a\""),
        good.replace("\"sa\"", "\"sa\\u0000\""),
        good.replace("\"NAME\"", "\"1NAME\""),
        good.replace("\"NAME\"", "\"A-B\""),
        good.replace("\"NAME\"", "\"\""),
        good.replace(CLUSTER, "UPPER"),
        good.replace(CLUSTER, ""),
        // not JSON / not an object
        "[]".into(),
        "".into(),
        "null".into(),
        format!("{good} "),
    ];
    for header in &bad {
        assert!(
            Header::parse(header.as_bytes()).is_err(),
            "accepted {header}"
        );
    }
    let long = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_HEADER_BYTES));
    assert_eq!(
        Header::parse(long.as_bytes()),
        Err(SealedError::Malformed("header too long"))
    );
}

#[test]
fn malformed_values_are_refused() {
    let value = sealed("ns", "sa", "NAME", 1, b"x");
    let raw = raw(&value);
    let cases = [
        String::new(),
        "kinko:sealed:v1:".into(),
        "kinko:sealed:v2:AAAA".into(),
        value.replacen("kinko:sealed:v1:", "kinko:sealed:V1:", 1),
        format!("{value}="),
        format!("{value}*"),
        value.replace('-', "+"),
        encoded(&raw[..1]),
        encoded(&raw[..2]),
        encoded(&raw[..raw.len() - 1]),
        encoded(&[0xff, 0xff]),
        encoded(&[&[0u8, 0][..], &raw[2..]].concat()),
        "x".repeat(MAX_VALUE_CHARS + 1),
    ];
    let (private, _) = root().keypair(&binding("ns", "sa"), 1);
    for case in &cases {
        // Refused by the decoder, or (a shortened tag still has the shape) by the AEAD.
        assert!(
            decode(case).map_or(true, |d| open(&private, &d).is_err()),
            "opened {:?}",
            &case[..case.len().min(40)]
        );
    }
}

#[test]
fn a_changed_byte_anywhere_fails_to_open() {
    let value = sealed("ns", "sa", "NAME", 1, b"secret value");
    let raw = raw(&value);
    let (private, _) = root().keypair(&binding("ns", "sa"), 1);
    let header_len = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
    // Every byte after the header (encapsulated key, ciphertext, tag), and a sample of it.
    for i in (2 + header_len..raw.len())
        .step_by(7)
        .chain([raw.len() - 1])
    {
        let mut flipped = raw.clone();
        flipped[i] ^= 0x01;
        match decode(&encoded(&flipped)) {
            Err(_) => {}
            Ok(decoded) => assert_eq!(
                open(&private, &decoded).unwrap_err(),
                SealedError::Unauthentic
            ),
        }
    }
}

#[test]
fn a_value_moved_to_another_binding_fails_to_open() {
    let value = sealed("payments", "api", "DB_PASSWORD", 1, b"secret");
    let header = Header::parse(&{
        let raw = raw(&value);
        let n = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
        raw[2..2 + n].to_vec()
    })
    .unwrap();
    let moves: [(Header, Binding); 4] = [
        (
            Header {
                namespace: "shop".into(),
                ..header.clone()
            },
            binding("shop", "api"),
        ),
        (
            Header {
                service_account: "other".into(),
                ..header.clone()
            },
            binding("payments", "other"),
        ),
        (
            Header {
                name: "OTHER".into(),
                ..header.clone()
            },
            binding("payments", "api"),
        ),
        (
            Header {
                cluster_id: "other-cluster".into(),
                ..header.clone()
            },
            Binding::new("other-cluster", "payments", "api").unwrap(),
        ),
    ];
    for (moved, key_binding) in moves {
        let changed = with_header(&value, &moved.encode());
        let decoded = decode(&changed).unwrap();
        assert_eq!(decoded.header, moved);
        let (private, _) = root().keypair(&key_binding, 1);
        assert_eq!(
            open(&private, &decoded).unwrap_err(),
            SealedError::Unauthentic
        );
        // Even with the original binding's key: the header is the associated data.
        let (original, _) = root().keypair(&binding("payments", "api"), 1);
        assert_eq!(
            open(&original, &decoded).unwrap_err(),
            SealedError::Unauthentic
        );
    }
    let (wrong_epoch, _) = root().keypair(&binding("payments", "api"), 2);
    assert!(open(&wrong_epoch, &decode(&value).unwrap()).is_err());
}

#[test]
fn derivation_is_deterministic_and_differs_by_every_input() {
    let base = binding("ns", "sa");
    let (_, a) = root().keypair(&base, 1);
    let (_, again) = root().keypair(&base, 1);
    assert_eq!(a, again);
    let others = [
        root().keypair(&binding("ns2", "sa"), 1).1,
        root().keypair(&binding("ns", "sa2"), 1).1,
        root()
            .keypair(&Binding::new("other", "ns", "sa").unwrap(), 1)
            .1,
        root().keypair(&base, 2).1,
        SealingRoot::new(Key256::from_slice(&[8u8; 32]).unwrap())
            .keypair(&base, 1)
            .1,
        // The separator keeps "a" + "b-c" apart from "a-b" + "c" style shifts.
        root().keypair(&binding("nss", "a"), 1).1,
    ];
    for other in &others {
        assert_ne!(&a, other);
    }
    assert_eq!(
        root().signing_key(CLUSTER).public(),
        root().signing_key(CLUSTER).public()
    );
    assert_ne!(
        root().signing_key(CLUSTER).public(),
        root().signing_key("other").public()
    );
    assert!(format!("{:?}", root()).contains("REDACTED"));
    assert!(format!("{:?}", root().keypair(&base, 1).0).contains("REDACTED"));
    assert!(format!("{:?}", root().signing_key(CLUSTER)).contains("REDACTED"));
}

#[test]
fn key_documents_verify_and_refuse_tampering() {
    let signing = root().signing_key(CLUSTER);
    let b = binding("payments", "api");
    let (private, public) = root().keypair(&b, 2);
    let signed = SignedKeyDocument::sign(&signing, &KeyDocument::new(&b, 2, &public));
    let document = signed.verify(&signing.public()).unwrap();
    assert_eq!(document.binding().unwrap(), b);
    assert_eq!(document.epoch, 2);
    // A value sealed with the document's key opens with the derived private key.
    let value = seal(
        &document.public_key().unwrap(),
        &Header::new(&b, "X", 2).unwrap(),
        b"v",
    )
    .unwrap();
    assert_eq!(
        open(&private, &decode(&value).unwrap()).unwrap().expose(),
        b"v"
    );

    let other = root().signing_key("other").public();
    assert_eq!(
        signed.verify(&other).unwrap_err(),
        SealedError::BadSignature
    );
    let mut tampered = SignedKeyDocument {
        document: signed.document.clone(),
        signature: signed.signature,
    };
    let at = tampered.document.len() / 2;
    tampered.document[at] ^= 1;
    assert_eq!(
        tampered.verify(&signing.public()).unwrap_err(),
        SealedError::BadSignature
    );
    assert!(signed.verify(&[0u8; 31]).is_err());
    assert!(fingerprint(&signing.public()).starts_with("sha256:"));
    assert_eq!(fingerprint(&signing.public()).len(), 7 + 64);
}

#[test]
fn the_decoder_never_panics_on_random_or_truncated_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let value = sealed("ns", "sa", "NAME", 1, b"some plaintext");
    let good = raw(&value);
    let (private, _) = root().keypair(&binding("ns", "sa"), 1);
    for round in 0..3000 {
        let bytes: Vec<u8> = match round % 4 {
            0 => {
                let mut b = vec![0u8; rng.gen_range(0..2000)];
                rng.fill_bytes(&mut b);
                b
            }
            1 => good[..rng.gen_range(0..good.len())].to_vec(),
            2 => {
                let mut b = good.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
                b
            }
            _ => {
                let mut b = good.clone();
                let n = rng.gen_range(0..64);
                let mut extra = vec![0u8; n];
                rng.fill_bytes(&mut extra);
                b.extend(extra);
                b
            }
        };
        if let Ok(decoded) = decode(&encoded(&bytes)) {
            let opened = open(&private, &decoded);
            if bytes != good {
                assert!(opened.is_err(), "round {round} opened a changed value");
            }
        }
        // Arbitrary strings too (not base64, not UTF-8 boundaries).
        let mut text = vec![0u8; rng.gen_range(0..64)];
        rng.fill_bytes(&mut text);
        let _ = decode(&format!("{PREFIX}{}", String::from_utf8_lossy(&text)));
    }
}

#[test]
fn oversized_plaintext_is_refused() {
    let b = binding("ns", "sa");
    let (_, public) = root().keypair(&b, 1);
    let header = Header::new(&b, "N", 1).unwrap();
    assert_eq!(
        seal(&public, &header, &vec![0u8; MAX_PLAINTEXT_BYTES + 1]).unwrap_err(),
        SealedError::TooLarge
    );
    let biggest = seal(&public, &header, &vec![0u8; MAX_PLAINTEXT_BYTES]).unwrap();
    assert!(biggest.len() <= MAX_VALUE_CHARS);
    assert!(decode(&biggest).is_ok());
}

#[test]
fn names_follow_kubernetes_and_environment_rules() {
    assert!(valid_namespace("payments") && valid_namespace("a-1") && valid_namespace("0"));
    assert!(!valid_namespace("Payments") && !valid_namespace("a.b") && !valid_namespace("a-"));
    assert!(valid_service_account("payments-api") && valid_service_account("a.b"));
    assert!(!valid_service_account("a..b") && !valid_service_account(".a"));
    assert!(!valid_service_account(&"a".repeat(254)));
    assert!(valid_variable_name("DB_PASSWORD") && valid_variable_name("_x1"));
    assert!(!valid_variable_name("1X") && !valid_variable_name("A-B") && !valid_variable_name(""));
}
