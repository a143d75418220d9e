//! Audit entries (pure): the Vault-shaped JSON line written for every request and every
//! response, with every sensitive string replaced by `hmac-sha256:<hex>` under a device's salt.
//! [`device`] opens and writes the devices and keeps their table (`core/audit`).
//!
//! What is hashed: the client token and its accessor; every string anywhere in the request's
//! body and the response's `data` and `auth` (secret values, JWTs, sealed values, issued
//! tokens); nothing of it reaches a device in the clear. What is not: the path, the operation,
//! policies, the token's metadata and display name, error messages (which never carry values),
//! numbers and booleans — as Vault writes them.

pub mod device;

use hmac::{KeyInit, Mac};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::secret::Key256;
use crate::tokens::TokenEntry;

/// A device's HMAC key: under the barrier with the device table, so hashes are stable across
/// restarts and replicas, and only the server (or `sys/audit-hash`) can produce them.
pub struct Salt {
    key: Key256,
    /// The HMAC keyed once; each hash clones it.
    keyed: hmac::Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt([REDACTED])")
    }
}

impl Salt {
    pub fn new(key: Key256) -> Salt {
        let keyed = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose())
            .expect("HMAC takes any key length");
        Salt { key, keyed }
    }

    pub fn expose(&self) -> &Key256 {
        &self.key
    }

    /// `hmac-sha256:<hex>` of `text`, as Vault writes hashed values.
    pub fn hash(&self, text: &str) -> String {
        self.hash_text(text).as_str().to_owned()
    }
}

/// `hmac-sha256:` and 64 hex digits, on the stack.
#[derive(Clone, Copy)]
pub struct HashText([u8; 76]);

impl HashText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl Salt {
    /// [`Salt::hash`] without allocating.
    pub fn hash_text(&self, text: &str) -> HashText {
        let mut mac = self.keyed.clone();
        mac.update(text.as_bytes());
        let mut out = [0u8; 76];
        out[..12].copy_from_slice(b"hmac-sha256:");
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut out[12..])
            .expect("32 bytes fill 64 hex digits");
        HashText(out)
    }
}

/// Serialises a JSON value with every string hashed, as it is written (no copy of the tree).
struct Hashed<'a> {
    salt: &'a Salt,
    value: &'a Value,
}

impl Serialize for Hashed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::String(text) => serializer.serialize_str(self.salt.hash_text(text).as_str()),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&Hashed {
                        salt: self.salt,
                        value,
                    })?;
                }
                seq.end()
            }
            Value::Object(fields) => HashedFields {
                salt: self.salt,
                fields,
            }
            .serialize(serializer),
            other => other.serialize(serializer),
        }
    }
}

struct HashedFields<'a> {
    salt: &'a Salt,
    fields: &'a Map<String, Value>,
}

impl Serialize for HashedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (key, value) in self.fields {
            map.serialize_entry(
                key,
                &Hashed {
                    salt: self.salt,
                    value,
                },
            )?;
        }
        map.end()
    }
}

/// A response's `auth` as Vault writes it: the issued token and its accessor hashed, the
/// policies and metadata readable.
struct HashedAuth<'a> {
    salt: &'a Salt,
    fields: &'a Map<String, Value>,
}

impl Serialize for HashedAuth<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (key, value) in self.fields {
            match value {
                Value::String(text) if key == "client_token" || key == "accessor" => {
                    map.serialize_entry(key, self.salt.hash_text(text).as_str())?
                }
                other => map.serialize_entry(key, other)?,
            }
        }
        map.end()
    }
}

/// A hash, or `""` when there is nothing to hash.
#[derive(Clone, Copy)]
struct MaybeHash(Option<HashText>);

/// The presented token's and its accessor's hashes, made once per request (both the `auth` and
/// the `request` block carry them).
#[derive(Clone, Copy)]
struct TokenHashes {
    client_token: MaybeHash,
    accessor: MaybeHash,
}

impl TokenHashes {
    fn new(salt: &Salt, record: &RequestRecord<'_>) -> TokenHashes {
        TokenHashes {
            client_token: MaybeHash(record.client_token.map(|t| salt.hash_text(t))),
            accessor: MaybeHash(record.token.map(|t| salt.hash_text(&t.accessor))),
        }
    }
}

impl Serialize for MaybeHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_ref().map_or("", HashText::as_str))
    }
}

/// What is known of a request when its entries are written.
pub struct RequestRecord<'a> {
    pub id: &'a str,
    /// Vault's operation names: `read`, `list`, `update`, `delete`, `patch`.
    pub operation: &'static str,
    /// The logical path, below `/v1/`.
    pub path: &'a str,
    pub mount_type: &'static str,
    pub remote: Option<std::net::SocketAddr>,
    /// The token as presented (hashed in the entry).
    pub client_token: Option<&'a str>,
    /// The authenticated token's entry, when the token was valid.
    pub token: Option<&'a TokenEntry>,
    pub body: Option<&'a Map<String, Value>>,
}

/// What the response was, as sent.
pub struct ResponseRecord<'a> {
    pub status: u16,
    /// The JSON body sent, if any (`data`, `auth`, `errors` are read from it).
    pub body: Option<&'a Value>,
}

const NO_POLICIES: &[String] = &[];
static NO_METADATA: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

#[derive(Serialize)]
struct Auth<'a> {
    client_token: MaybeHash,
    accessor: MaybeHash,
    display_name: &'a str,
    policies: &'a [String],
    token_policies: &'a [String],
    metadata: &'a std::collections::BTreeMap<String, String>,
    entity_id: &'static str,
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ttl: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_issue_time: Option<String>,
}

impl<'a> Auth<'a> {
    fn new(hashes: TokenHashes, record: &RequestRecord<'a>) -> Auth<'a> {
        let client_token = hashes.client_token;
        match record.token {
            Some(entry) => Auth {
                client_token,
                accessor: hashes.accessor,
                display_name: &entry.display_name,
                policies: &entry.policies,
                token_policies: &entry.policies,
                metadata: &entry.meta,
                entity_id: "",
                token_type: "service",
                token_ttl: Some(entry.creation_ttl),
                token_issue_time: Some(crate::clock::rfc3339_unix(entry.creation_time)),
            },
            // No token (a login, init) or one that did not authenticate: Vault writes the
            // object all the same.
            None => Auth {
                client_token,
                accessor: MaybeHash(None),
                display_name: "",
                policies: NO_POLICIES,
                token_policies: NO_POLICIES,
                metadata: &NO_METADATA,
                entity_id: "",
                token_type: "",
                token_ttl: None,
                token_issue_time: None,
            },
        }
    }
}

#[derive(Serialize)]
struct Namespace {
    id: &'static str,
}

#[derive(Serialize)]
struct RequestBlock<'a> {
    id: &'a str,
    operation: &'static str,
    mount_type: &'static str,
    client_token: MaybeHash,
    client_token_accessor: MaybeHash,
    namespace: Namespace,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<HashedFields<'a>>,
    remote_address: String,
    remote_port: u16,
}

impl<'a> RequestBlock<'a> {
    fn new(salt: &'a Salt, hashes: TokenHashes, record: &RequestRecord<'a>) -> RequestBlock<'a> {
        RequestBlock {
            id: record.id,
            operation: record.operation,
            mount_type: record.mount_type,
            client_token: hashes.client_token,
            client_token_accessor: hashes.accessor,
            namespace: Namespace { id: "root" },
            path: record.path,
            data: record
                .body
                .filter(|b| !b.is_empty())
                .map(|fields| HashedFields { salt, fields }),
            remote_address: record
                .remote
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            remote_port: record.remote.map_or(0, |a| a.port()),
        }
    }
}

#[derive(Serialize)]
struct ResponseBlock<'a> {
    mount_type: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Hashed<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<HashedAuth<'a>>,
}

/// The `auth` and `request` blocks of one request's entries, hashed under one device's salt
/// and serialised once: the request entry and the response entry carry them unchanged, as
/// Vault writes them.
pub struct Blocks {
    json: Vec<u8>,
    /// The response block's `mount_type`, the request block's.
    mount_type: &'static str,
}

impl Blocks {
    pub fn new(salt: &Salt, record: &RequestRecord<'_>) -> Blocks {
        #[derive(Serialize)]
        struct Both<'a> {
            auth: Auth<'a>,
            request: RequestBlock<'a>,
        }
        let hashes = TokenHashes::new(salt, record);
        let both = Both {
            auth: Auth::new(hashes, record),
            request: RequestBlock::new(salt, hashes, record),
        };
        let mut object = Vec::with_capacity(768);
        serde_json::to_writer(&mut object, &both)
            .expect("in-memory JSON serialisation cannot fail");
        Blocks {
            json: object,
            mount_type: record.mount_type,
        }
    }

    /// `"auth":{…},"request":{…}`: the object without its braces.
    fn fields(&self) -> &[u8] {
        &self.json[1..self.json.len() - 1]
    }
}

/// One entry: `{"time","type","auth","request"[,"response"],"error"}` and a newline, in
/// Vault's field order.
fn line(
    time: &str,
    kind: &str,
    blocks: &Blocks,
    response: Option<&ResponseBlock<'_>>,
    error: &str,
) -> Vec<u8> {
    let json = "in-memory JSON serialisation cannot fail";
    let mut out = Vec::with_capacity(blocks.json.len() + 256);
    out.extend_from_slice(b"{\"time\":");
    serde_json::to_writer(&mut out, time).expect(json);
    out.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut out, kind).expect(json);
    out.push(b',');
    out.extend_from_slice(blocks.fields());
    if let Some(response) = response {
        out.extend_from_slice(b",\"response\":");
        serde_json::to_writer(&mut out, response).expect(json);
    }
    out.extend_from_slice(b",\"error\":");
    serde_json::to_writer(&mut out, error).expect(json);
    out.extend_from_slice(b"}\n");
    out
}

/// The line (JSON and a newline) written before a request is served.
pub fn request_entry(blocks: &Blocks, time: &str, error: &str) -> Vec<u8> {
    line(time, "request", blocks, None, error)
}

/// The line written before a response is sent; `blocks` are the request entry's.
pub fn response_entry(
    salt: &Salt,
    blocks: &Blocks,
    response: &ResponseRecord<'_>,
    time: &str,
) -> Vec<u8> {
    let body = response.body;
    let errors = body
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let response = ResponseBlock {
        mount_type: blocks.mount_type,
        status: response.status,
        data: body
            .and_then(|b| b.get("data"))
            .filter(|v| !v.is_null())
            .map(|value| Hashed { salt, value }),
        auth: body
            .and_then(|b| b.get("auth"))
            .and_then(Value::as_object)
            .map(|fields| HashedAuth { salt, fields }),
    };
    line(time, "response", blocks, Some(&response), &errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn salt(byte: u8) -> Salt {
        Salt::new(Key256::from_slice(&[byte; 32]).unwrap())
    }

    #[test]
    fn every_string_is_hashed_and_the_shape_kept() {
        let s = salt(1);
        let value = json!({ "data": { "password": "hunter2", "n": 3, "list": ["a", true] } });
        let hashed = serde_json::to_value(Hashed {
            salt: &s,
            value: &value,
        })
        .unwrap();
        assert_eq!(hashed["data"]["n"], json!(3));
        assert_eq!(hashed["data"]["list"][1], json!(true));
        assert_eq!(hashed["data"]["password"], json!(s.hash("hunter2")));
        assert!(s.hash("hunter2").starts_with("hmac-sha256:"));
        assert_eq!(s.hash("hunter2").len(), "hmac-sha256:".len() + 64);
        assert_ne!(
            s.hash("hunter2"),
            salt(2).hash("hunter2"),
            "per-device salt"
        );
        assert!(!hashed.to_string().contains("hunter2"));
    }

    #[test]
    fn entries_have_vaults_fields_and_no_value_in_the_clear() {
        let s = salt(3);
        let body: Map<String, Value> =
            serde_json::from_value(json!({ "data": { "password": "pw-in-body" } })).unwrap();
        let record = RequestRecord {
            id: "req-1",
            operation: "update",
            path: "secret/data/app",
            mount_type: "kv",
            remote: Some("127.0.0.1:4242".parse().unwrap()),
            client_token: Some("kks.the-token"),
            token: None,
            body: Some(&body),
        };
        let parse = |line: Vec<u8>| -> Value {
            assert_eq!(line.last(), Some(&b'\n'));
            serde_json::from_slice(&line).unwrap()
        };
        let blocks = Blocks::new(&s, &record);
        let request = parse(request_entry(&blocks, "2026-12-02T00:00:00Z", ""));
        let keys: Vec<_> = request.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["auth", "error", "request", "time", "type"]);
        assert_eq!(request["type"], "request");
        assert_eq!(request["request"]["operation"], "update");
        assert_eq!(request["request"]["remote_address"], "127.0.0.1");
        assert_eq!(
            request["request"]["client_token"],
            json!(s.hash("kks.the-token"))
        );
        let sent = json!({ "data": { "password": "pw-in-response" }, "auth": { "client_token": "kks.new" } });
        let response = parse(response_entry(
            &s,
            &blocks,
            &ResponseRecord {
                status: 200,
                body: Some(&sent),
            },
            "2026-12-02T00:00:00Z",
        ));
        assert_eq!(response["response"]["status"], 200);
        assert_eq!(response["response"]["mount_type"], "kv");
        assert_eq!(response["auth"], request["auth"]);
        assert_eq!(response["request"], request["request"]);
        assert_eq!(response["type"], "response");
        assert_eq!(
            response["response"]["auth"]["client_token"],
            json!(s.hash("kks.new"))
        );
        let text = format!("{request}{response}");
        for secret in ["pw-in-body", "pw-in-response", "kks.the-token", "kks.new"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let refused = json!({ "errors": ["permission denied"] });
        let denied = parse(response_entry(
            &s,
            &blocks,
            &ResponseRecord {
                status: 403,
                body: Some(&refused),
            },
            "t",
        ));
        assert_eq!(denied["error"], "permission denied");
    }
}
