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
        self.hash_bytes(text.as_bytes())
    }

    /// [`Salt::hash_text`] of the string whose UTF-8 bytes these are.
    fn hash_bytes(&self, text: &[u8]) -> HashText {
        let mut mac = self.keyed.clone();
        mac.update(text);
        let mut out = [0u8; 76];
        out[..12].copy_from_slice(b"hmac-sha256:");
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut out[12..])
            .expect("32 bytes fill 64 hex digits");
        HashText(out)
    }
}

/// One audit line, written by hand: the keys and the values kinko makes itself (hashes,
/// times, addresses, the fixed names of operations and types) need no escaping and go out as
/// they are; every other string (paths, names, policies, metadata, the keys of a body, error
/// messages) goes through serde_json's escaping. The one exception is a KV read's `data`,
/// hashed from the JSON text sent ([`Line::hashed_text`]): its keys and numbers are copied as
/// that text has them. Scanning every byte of every hash and key for
/// characters to escape was the largest part of auditing a read (callgrind: 15k of the 40k
/// instructions an audited read spent outside SHA-256).
struct Line<'a> {
    out: &'a mut Vec<u8>,
}

impl Line<'_> {
    /// JSON that is already valid where it goes (punctuation and keys).
    fn raw(&mut self, json: &str) {
        self.out.extend_from_slice(json.as_bytes());
    }

    /// A string kinko names itself, quoted without escaping.
    fn name(&mut self, text: &'static str) {
        debug_assert!(
            text.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "{text:?} needs escaping"
        );
        self.quoted(text.as_bytes());
    }

    /// `text` between quotes, as it is: only for text with nothing to escape.
    fn quoted(&mut self, text: &[u8]) {
        self.out.push(b'"');
        self.out.extend_from_slice(text);
        self.out.push(b'"');
    }

    /// An RFC 3339 time (digits, `-`, `:`, `.`, `T` and `Z`: nothing to escape).
    fn time(&mut self, at: time::OffsetDateTime) {
        self.out.push(b'"');
        crate::clock::write_rfc3339(self.out, at);
        self.out.push(b'"');
    }

    fn hash(&mut self, hash: &HashText) {
        self.quoted(&hash.0);
    }

    fn maybe_hash(&mut self, hash: Option<&HashText>) {
        match hash {
            Some(hash) => self.hash(hash),
            None => self.raw("\"\""),
        }
    }

    /// Any string, escaped.
    fn string(&mut self, text: &str) {
        crate::json::write_str(self.out, text);
    }

    fn json(&mut self, value: &impl serde::Serialize) {
        serde_json::to_writer(&mut *self.out, value).expect(IN_MEMORY);
    }

    fn strings(&mut self, items: &[String]) {
        crate::json::write_array(self.out, items, |out, item| {
            crate::json::write_str(out, item)
        });
    }

    /// `value` with every string in it hashed, the shape kept.
    fn hashed(&mut self, salt: &Salt, value: &Value) {
        match value {
            Value::String(text) => self.hash(&salt.hash_text(text)),
            Value::Array(items) => crate::json::write_array(self.out, items, |out, item| {
                Line { out }.hashed(salt, item)
            }),
            Value::Object(fields) => self.hashed_fields(salt, fields),
            other => self.json(other),
        }
    }

    /// What [`Line::hashed`] writes of the value that `text` is, read from the text itself:
    /// keys, numbers, literals and punctuation copied, each string value hashed. `text` is
    /// compact JSON as serde_json writes it (so a key is the string right before a `:`, and
    /// copied keys are escaped as serde_json would); other input is copied or hashed
    /// piecewise, never a panic.
    fn hashed_text(&mut self, salt: &Salt, text: &[u8]) {
        let mut at = 0;
        while let Some(quote) = memchr::memchr(b'"', &text[at..]) {
            self.out.extend_from_slice(&text[at..at + quote]);
            let start = at + quote;
            let end = string_end(text, start);
            let string = &text[start..end];
            if text.get(end) == Some(&b':') {
                self.out.extend_from_slice(string);
            } else {
                let inner = string
                    .get(1..string.len().saturating_sub(1))
                    .unwrap_or_default();
                if memchr::memchr(b'\\', inner).is_none() {
                    // The text is UTF-8 (serde_json wrote it): these are the string's bytes.
                    self.hash(&salt.hash_bytes(inner));
                } else {
                    let unescaped = serde_json::from_slice::<String>(string)
                        .unwrap_or_else(|_| String::from_utf8_lossy(inner).into_owned());
                    self.hash(&salt.hash_text(&unescaped));
                }
            }
            at = end;
        }
        self.out.extend_from_slice(&text[at..]);
    }

    fn hashed_fields(&mut self, salt: &Salt, fields: &Map<String, Value>) {
        crate::json::write_object(self.out, fields, |out, _, value| {
            Line { out }.hashed(salt, value)
        });
    }

    /// A response's `auth` as Vault writes it: the issued token and its accessor hashed, the
    /// policies and metadata readable.
    fn response_auth(&mut self, salt: &Salt, fields: &Map<String, Value>) {
        crate::json::write_object(self.out, fields, |out, key, value| {
            let mut line = Line { out };
            match value {
                Value::String(text) if key == "client_token" || key == "accessor" => {
                    line.hash(&salt.hash_text(text))
                }
                other => line.json(other),
            }
        });
    }
}

const IN_MEMORY: &str = "in-memory JSON serialisation cannot fail";

/// The end (one past the closing quote) of the JSON string that opens at `start`, or the end
/// of `text` if it is not closed.
fn string_end(text: &[u8], start: usize) -> usize {
    let mut at = start + 1;
    while at < text.len() {
        match memchr::memchr2(b'"', b'\\', &text[at..]) {
            None => break,
            Some(found) if text[at + found] == b'\\' => at += found + 2,
            Some(found) => return at + found + 1,
        }
    }
    text.len()
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

/// What the response was, as sent: its status, and the body's `data`, `auth` and `errors`.
pub struct ResponseRecord<'a> {
    pub status: u16,
    pub data: Option<Data<'a>>,
    pub auth: Option<&'a Value>,
    pub errors: Option<&'a Value>,
}

/// A response's `data`: a value, or the JSON text sent (compact, as serde_json writes it).
#[derive(Clone, Copy)]
pub enum Data<'a> {
    Value(&'a Value),
    Text(&'a [u8]),
}

impl<'a> ResponseRecord<'a> {
    /// Of a JSON body, if any, shaped like Vault's.
    pub fn of_body(status: u16, body: Option<&'a Value>) -> ResponseRecord<'a> {
        let field = |name| body.and_then(|b| b.get(name));
        ResponseRecord {
            status,
            data: field("data").map(Data::Value),
            auth: field("auth"),
            errors: field("errors"),
        }
    }
}

/// The `auth` and `request` blocks of one request's entries, hashed under one device's salt
/// and serialised once: the request entry and the response entry carry them unchanged, as
/// Vault writes them.
pub struct Blocks {
    /// `"auth":{…},"request":{…}`.
    json: Vec<u8>,
    /// The response block's `mount_type`, the request block's.
    mount_type: &'static str,
}

impl Blocks {
    pub fn new(salt: &Salt, record: &RequestRecord<'_>) -> Blocks {
        // Both blocks carry them: hashed once.
        let client_token = record.client_token.map(|t| salt.hash_text(t));
        let accessor = record.token.map(|t| salt.hash_text(&t.accessor));
        // Under glibc's large-block threshold (1 KiB) for a common request.
        let mut json = Vec::with_capacity(1000);
        let mut line = Line { out: &mut json };

        line.raw("\"auth\":{\"client_token\":");
        line.maybe_hash(client_token.as_ref());
        line.raw(",\"accessor\":");
        match record.token {
            Some(entry) => {
                line.maybe_hash(accessor.as_ref());
                line.raw(",\"display_name\":");
                line.string(&entry.display_name);
                line.raw(",\"policies\":");
                line.strings(&entry.policies);
                line.raw(",\"token_policies\":");
                line.strings(&entry.policies);
                line.raw(",\"metadata\":");
                line.json(&entry.meta);
                line.raw(",\"entity_id\":\"\",\"token_type\":\"service\",\"token_ttl\":");
                line.json(&entry.creation_ttl);
                line.raw(",\"token_issue_time\":");
                line.time(crate::clock::from_unix(entry.creation_time));
            }
            // No token (a login, init) or one that did not authenticate: Vault writes the
            // object all the same.
            None => line.raw(
                "\"\",\"display_name\":\"\",\"policies\":[],\"token_policies\":[],\
                 \"metadata\":{},\"entity_id\":\"\",\"token_type\":\"\"",
            ),
        }

        line.raw("},\"request\":{\"id\":");
        line.string(record.id);
        line.raw(",\"operation\":");
        line.name(record.operation);
        line.raw(",\"mount_type\":");
        line.name(record.mount_type);
        line.raw(",\"client_token\":");
        line.maybe_hash(client_token.as_ref());
        line.raw(",\"client_token_accessor\":");
        line.maybe_hash(accessor.as_ref());
        line.raw(",\"namespace\":{\"id\":\"root\"},\"path\":");
        line.string(record.path);
        if let Some(body) = record.body.filter(|b| !b.is_empty()) {
            line.raw(",\"data\":");
            line.hashed_fields(salt, body);
        }
        line.raw(",\"remote_address\":\"");
        if let Some(remote) = record.remote {
            // An address's text is digits, dots, colons and hex: nothing to escape.
            use std::io::Write as _;
            write!(&mut *line.out, "{}", remote.ip()).expect(IN_MEMORY);
        }
        line.raw("\",\"remote_port\":");
        line.json(&record.remote.map_or(0, |a| a.port()));
        line.raw("}");
        Blocks {
            json,
            mount_type: record.mount_type,
        }
    }
}

/// One entry, `{"time","type","auth","request"[,"response"],"error"}` and a newline in
/// Vault's field order, appended to `out`.
fn line(
    out: &mut Vec<u8>,
    time: time::OffsetDateTime,
    kind: &'static str,
    blocks: &Blocks,
    response: impl FnOnce(&mut Line),
    error: &str,
) {
    let mut line = Line { out };
    line.raw("{\"time\":");
    line.time(time);
    line.raw(",\"type\":");
    line.name(kind);
    line.out.push(b',');
    line.out.extend_from_slice(&blocks.json);
    response(&mut line);
    line.raw(",\"error\":");
    line.string(error);
    line.raw("}\n");
}

/// The line (JSON and a newline) written before a request is served.
pub fn request_entry(out: &mut Vec<u8>, blocks: &Blocks, time: time::OffsetDateTime, error: &str) {
    line(out, time, "request", blocks, |_| {}, error)
}

/// The line written before a response is sent; `blocks` are the request entry's.
pub fn response_entry(
    out: &mut Vec<u8>,
    salt: &Salt,
    blocks: &Blocks,
    response: &ResponseRecord<'_>,
    time: time::OffsetDateTime,
) {
    let errors = response
        .errors
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let write_response = |line: &mut Line| {
        line.raw(",\"response\":{\"mount_type\":");
        line.name(blocks.mount_type);
        line.raw(",\"status\":");
        line.json(&response.status);
        match response.data {
            Some(Data::Value(data)) if !data.is_null() => {
                line.raw(",\"data\":");
                line.hashed(salt, data);
            }
            Some(Data::Text(text)) if text != b"null" => {
                line.raw(",\"data\":");
                line.hashed_text(salt, text);
            }
            _ => {}
        }
        if let Some(auth) = response.auth.and_then(Value::as_object) {
            line.raw(",\"auth\":");
            line.response_auth(salt, auth);
        }
        line.raw("}");
    };
    line(out, time, "response", blocks, write_response, &errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(time: &str) -> time::OffsetDateTime {
        crate::clock::parse_rfc3339(time).unwrap()
    }

    fn request_line(blocks: &Blocks, time: &str, error: &str) -> Vec<u8> {
        let mut out = Vec::new();
        request_entry(&mut out, blocks, at(time), error);
        out
    }

    fn response_line(
        salt: &Salt,
        blocks: &Blocks,
        response: &ResponseRecord<'_>,
        time: &str,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        response_entry(&mut out, salt, blocks, response, at(time));
        out
    }

    fn salt(byte: u8) -> Salt {
        Salt::new(Key256::from_slice(&[byte; 32]).unwrap())
    }

    #[test]
    fn every_string_is_hashed_and_the_shape_kept() {
        let s = salt(1);
        let value = json!({ "data": { "password": "hunter2", "n": 3, "list": ["a", true] } });
        let mut out = Vec::new();
        Line { out: &mut out }.hashed(&s, &value);
        let hashed: Value = serde_json::from_slice(&out).unwrap();
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

    /// A KV read's `data` is audited from the JSON text sent, never parsed into a value: the
    /// line must be what the value would have given, byte for byte.
    #[test]
    fn json_text_is_hashed_exactly_as_its_value_would_be() {
        use rand::SeedableRng;
        let s = salt(4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        for _ in 0..2000 {
            let value = crate::json::testing::random_value(&mut rng, 0);
            let (mut from_value, mut from_text) = (Vec::new(), Vec::new());
            Line {
                out: &mut from_value,
            }
            .hashed(&s, &value);
            Line {
                out: &mut from_text,
            }
            .hashed_text(&s, &serde_json::to_vec(&value).unwrap());
            assert_eq!(
                String::from_utf8_lossy(&from_text),
                String::from_utf8_lossy(&from_value),
                "{value}"
            );
        }
        // Not JSON as serde_json writes it: copied or hashed piecewise, without a panic.
        for text in [
            &b"\"unclosed"[..],
            b"{\"k\":\"\\",
            b"\"\xff\"",
            b"",
            b"\"",
            b"[1,\"a\"]",
        ] {
            Line {
                out: &mut Vec::new(),
            }
            .hashed_text(&s, text);
        }
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
        let request = parse(request_line(&blocks, "2026-12-02T00:00:00Z", ""));
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
        let response = parse(response_line(
            &s,
            &blocks,
            &ResponseRecord::of_body(200, Some(&sent)),
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
        let denied = parse(response_line(
            &s,
            &blocks,
            &ResponseRecord::of_body(403, Some(&refused)),
            "2026-12-02T00:00:01Z",
        ));
        assert_eq!(denied["error"], "permission denied");
    }

    /// Every string a client or an operator chooses is escaped, wherever it sits in the line;
    /// the line is the exact Vault shape.
    #[test]
    fn chosen_strings_are_escaped_and_the_line_is_exactly_vaults_shape() {
        let s = salt(4);
        let nasty = "a\"b\\c\nd\u{1}e\u{2028}é🔑";
        let entry = TokenEntry {
            display_name: nasty.to_owned(),
            policies: vec![nasty.to_owned(), "default".to_owned()],
            meta: [(nasty.to_owned(), nasty.to_owned())].into_iter().collect(),
            accessor: "accessor-1".to_owned(),
            creation_time: 1_796_000_000,
            creation_ttl: 3600,
            expire_time: Some(1_796_003_600),
            explicit_max_ttl: 0,
            num_uses: 0,
            renewable: true,
            orphan: false,
            parent: None,
            path: "auth/token/create".to_owned(),
            revoked: false,
        };
        let body: Map<String, Value> =
            serde_json::from_value(json!({ nasty: { nasty: [nasty, 1, null, false] } })).unwrap();
        let record = RequestRecord {
            id: nasty,
            operation: "update",
            path: nasty,
            mount_type: "kv",
            remote: Some("[::1]:4242".parse().unwrap()),
            client_token: Some("kks.token"),
            token: Some(&entry),
            body: Some(&body),
        };
        let blocks = Blocks::new(&s, &record);
        let sent = json!({
            "data": { nasty: nasty, "n": 1.5 },
            "auth": { "client_token": "kks.new", "accessor": "acc.new", "policies": [nasty] },
            "errors": [nasty, "second"],
        });
        let response = response_line(
            &s,
            &blocks,
            &ResponseRecord::of_body(400, Some(&sent)),
            "2026-12-03T10:00:00.5Z",
        );
        let h = |text: &str| json!(s.hash(text));
        let auth = json!({
            "client_token": h("kks.token"),
            "accessor": h("accessor-1"),
            "display_name": nasty,
            "policies": [nasty, "default"],
            "token_policies": [nasty, "default"],
            "metadata": { nasty: nasty },
            "entity_id": "",
            "token_type": "service",
            "token_ttl": entry.creation_ttl,
            "token_issue_time": crate::clock::rfc3339_unix(entry.creation_time),
        });
        let request = json!({
            "id": nasty,
            "operation": "update",
            "mount_type": "kv",
            "client_token": h("kks.token"),
            "client_token_accessor": h("accessor-1"),
            "namespace": { "id": "root" },
            "path": nasty,
            "data": { nasty: { nasty: [h(nasty), 1, null, false] } },
            "remote_address": "::1",
            "remote_port": 4242,
        });
        let expected = json!({
            "time": "2026-12-03T10:00:00.5Z",
            "type": "response",
            "auth": auth,
            "request": request,
            "response": {
                "mount_type": "kv",
                "status": 400,
                "data": { nasty: h(nasty), "n": 1.5 },
                "auth": { "client_token": h("kks.new"), "accessor": h("acc.new"), "policies": [nasty] },
            },
            "error": format!("{nasty}; second"),
        });
        assert_eq!(response.last(), Some(&b'\n'));
        assert_eq!(
            serde_json::from_slice::<Value>(&response).unwrap(),
            expected
        );
        // One line: every newline in a chosen string is escaped.
        assert_eq!(response.iter().filter(|b| **b == b'\n').count(), 1);
        let request_line = request_line(&blocks, "2026-12-03T10:00:00Z", nasty);
        let parsed: Value = serde_json::from_slice(&request_line).unwrap();
        assert_eq!(parsed["request"], expected["request"]);
        assert_eq!(parsed["auth"], expected["auth"]);
        assert_eq!(parsed["error"], nasty);
        // Vault's field order, which line-oriented parsers may rely on.
        let text = String::from_utf8(request_line).unwrap();
        let order = [
            "{\"time\":",
            ",\"type\":",
            ",\"auth\":{",
            "},\"request\":{",
            "},\"error\":",
        ];
        let positions: Vec<_> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
