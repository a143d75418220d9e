//! The sealing side of `kinko seal` (pure): reading a saved `GET sealed/keys/<ns>/<sa>`
//! response, checking it against the pinned signing-key fingerprint, finding the pin in
//! `.kinko.yaml`, and printing a header for `kinko sealed inspect`.

use serde_json::Value;

use super::{
    check_pin, from_b64, from_b64url, seal, Binding, Decoded, Header, KeyDocument,
    SignedKeyDocument,
};

/// The key of a binding, checked: signed by the key whose fingerprint is pinned, and for the
/// namespace and service account asked for.
pub fn verify_key_response(
    response: &Value,
    pinned: &str,
    namespace: &str,
    service_account: &str,
) -> Result<KeyDocument, String> {
    let data = saved_data(response);
    let field = |name: &str| {
        data.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the key file has no {name:?} field"))
    };
    let signing_key =
        from_b64(field("signing_key")?).ok_or("the key file's \"signing_key\" is not base64")?;
    if let Err(actual) = check_pin(&signing_key, pinned) {
        return Err(format!(
            "the key is signed by {actual}, not by the pinned {}: refusing to seal",
            pinned.trim()
        ));
    }
    let signature: [u8; 64] = from_b64url(field("signature")?)
        .and_then(|s| s.try_into().ok())
        .ok_or("the key file's \"signature\" is not a base64url Ed25519 signature")?;
    let document =
        from_b64url(field("document")?).ok_or("the key file's \"document\" is not base64url")?;
    let document = SignedKeyDocument {
        document,
        signature,
    }
    .verify(&signing_key)
    .map_err(|e| format!("the key file is not valid: {e}: refusing to seal"))?;
    if document.namespace != namespace || document.service_account != service_account {
        return Err(format!(
            "the key file is for {}/{}, not {namespace}/{service_account}",
            document.namespace, document.service_account
        ));
    }
    Ok(document)
}

/// A saved response's `data`, or the file itself when only `data` was saved.
pub fn saved_data(response: &Value) -> &Value {
    response
        .get("data")
        .filter(|d| d.is_object())
        .unwrap_or(response)
}

/// Seals `plaintext` for variable `name` with a verified key document.
pub fn seal_with_document(
    document: &KeyDocument,
    name: &str,
    plaintext: &[u8],
) -> Result<String, String> {
    let binding: Binding = document.binding().map_err(|e| e.to_string())?;
    let header = Header::new(&binding, name, document.epoch).map_err(|e| match e {
        super::SealedError::InvalidField("name") => {
            format!("{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        }
        other => other.to_string(),
    })?;
    let public = document.public_key().map_err(|e| e.to_string())?;
    seal(&public, &header, plaintext).map_err(|e| e.to_string())
}

/// `signing_key_fingerprint:` of a `.kinko.yaml` (a top-level scalar, optionally quoted).
pub fn pin_from_yaml(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("signing_key_fingerprint:")?;
        let value = value.split(" #").next().unwrap_or(value).trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// `field: value` lines of a decoded value's header (no decryption).
pub fn inspect(decoded: &Decoded) -> String {
    let h = &decoded.header;
    format!(
        "cluster_id: {}\nnamespace: {}\nservice_account: {}\nname: {}\nepoch: {}\nkem: {}\nplaintext_bytes: {}\n",
        h.cluster_id,
        h.namespace,
        h.service_account,
        h.name,
        h.epoch,
        h.kem,
        decoded.plaintext_len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::{b64, b64url, decode, fingerprint, open, SealingRoot};
    use crate::secret::Key256;
    use serde_json::json;

    fn response(root: &SealingRoot, ns: &str, sa: &str) -> Value {
        let binding = Binding::new("c1", ns, sa).unwrap();
        let (_, public) = root.keypair(&binding, 4);
        let signing = root.signing_key("c1");
        let signed = SignedKeyDocument::sign(&signing, &KeyDocument::new(&binding, 4, &public));
        json!({ "request_id": "x", "data": {
            "document": b64url(&signed.document),
            "signature": b64url(&signed.signature),
            "signing_key": b64(&signing.public()),
        }})
    }

    #[test]
    fn a_saved_response_seals_only_under_the_pinned_key() {
        let root = SealingRoot::new(Key256::from_slice(&[1; 32]).unwrap());
        let saved = response(&root, "payments", "api");
        let pin = fingerprint(&root.signing_key("c1").public());
        let document = verify_key_response(&saved, &pin, "payments", "api").unwrap();
        let value = seal_with_document(&document, "DB", b"v").unwrap();
        let decoded = decode(&value).unwrap();
        assert_eq!(decoded.header.epoch, 4);
        let (private, _) = root.keypair(&document.binding().unwrap(), 4);
        assert_eq!(open(&private, &decoded).unwrap().expose(), b"v");
        assert!(inspect(&decoded).contains("namespace: payments\n"));

        // Another pin, another binding, a forged signature: refused.
        let other = SealingRoot::new(Key256::from_slice(&[2; 32]).unwrap());
        let other_pin = fingerprint(&other.signing_key("c1").public());
        assert!(verify_key_response(&saved, &other_pin, "payments", "api").is_err());
        assert!(verify_key_response(&saved, &pin, "payments", "other").is_err());
        let mut forged = response(&other, "payments", "api");
        forged["data"]["signing_key"] = saved["data"]["signing_key"].clone();
        let error = verify_key_response(&forged, &pin, "payments", "api").unwrap_err();
        assert!(error.contains("signature"), "{error}");
        assert!(seal_with_document(&document, "A-B", b"v").is_err());
    }

    #[test]
    fn the_pin_is_read_from_kinko_yaml() {
        assert_eq!(
            pin_from_yaml("a: 1\nsigning_key_fingerprint: \"sha256:ab\" # pinned\n").as_deref(),
            Some("sha256:ab")
        );
        assert_eq!(
            pin_from_yaml("signing_key_fingerprint: sha256:cd").as_deref(),
            Some("sha256:cd")
        );
        assert_eq!(pin_from_yaml("  signing_key_fingerprint: nested\n"), None);
        assert_eq!(pin_from_yaml("other: x\n"), None);
    }
}
