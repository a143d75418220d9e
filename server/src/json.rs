//! Compact JSON text, byte for byte what `serde_json::to_vec` writes, faster where answers
//! spend their time: a string with nothing to escape (nearly every one) is checked sixteen
//! bytes at a time and copied whole, where serde_json looks each byte up in its escape table
//! (`format_escaped_str` was the largest single function of a KV read in callgrind).

use serde_json::{Map, Value};

/// Appends `value` as serde_json's compact form.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            serde_json::to_writer(&mut *out, number).expect("in-memory JSON cannot fail")
        }
        Value::String(text) => write_str(out, text),
        Value::Array(items) => write_array(out, items, write_value),
        Value::Object(fields) => write_object(out, fields, |out, _, item| write_value(out, item)),
    }
}

/// `[…]`, each item written by `write`.
pub fn write_array<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// `{…}` with `fields`' keys escaped, each value written by `write` (which is given its key).
pub fn write_object(
    out: &mut Vec<u8>,
    fields: &Map<String, Value>,
    mut write: impl FnMut(&mut Vec<u8>, &str, &Value),
) {
    out.push(b'{');
    for (index, (key, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write(out, key, value);
    }
    out.push(b'}');
}

/// Appends `text` as a JSON string, escaped exactly as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escaping(text.as_bytes()) {
        serde_json::to_writer(&mut *out, text).expect("in-memory JSON cannot fail");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// What serde_json escapes: control characters, `"` and `\`. Each 16-byte chunk is folded
/// without an early exit, which the compiler turns into vector compares.
fn needs_escaping(bytes: &[u8]) -> bool {
    let escaped = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        let chunk: &[u8; 16] = chunk.try_into().expect("chunks_exact(16)");
        if chunk.iter().fold(false, |found, &b| found | escaped(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| escaped(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn same_as_serde(value: &Value) {
        let mut ours = Vec::new();
        write_value(&mut ours, value);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(serde_json::to_vec(value).unwrap()).unwrap()
        );
    }

    #[test]
    fn every_character_serde_escapes_is_escaped_the_same_way() {
        for byte in 0u8..=0x7f {
            let text = format!("a{}b", byte as char);
            same_as_serde(&Value::String(text.clone()));
            // At every position of a chunk, and across chunk boundaries.
            for at in [0, 7, 15, 16, 17, 31] {
                let mut long = "x".repeat(40);
                long.insert(at, byte as char);
                same_as_serde(&json!({ long.clone(): long }));
            }
        }
        for text in [
            "",
            "é",
            "🔑",
            "\u{2028}\u{2029}",
            "\u{7f}",
            "a\"b\\c\nd\u{1}",
        ] {
            same_as_serde(&json!([text, { text: text }]));
        }
    }

    #[test]
    fn only_strings_with_something_to_escape_leave_the_fast_path() {
        assert!(!needs_escaping(b""));
        assert!(!needs_escaping(
            "plain text, é and 🔑, longer than one chunk".as_bytes()
        ));
        assert!(!needs_escaping(&[0x7f; 40]));
        for at in [0, 15, 16, 39] {
            for byte in [0u8, 0x1f, b'"', b'\\'] {
                let mut text = vec![b'x'; 40];
                text[at] = byte;
                assert!(needs_escaping(&text), "{byte:#x} at {at}");
            }
        }
    }

    #[test]
    fn random_values_come_out_byte_for_byte_as_serde_writes_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..2000 {
            same_as_serde(&testing::random_value(&mut rng, 0));
        }
    }
}

/// Random JSON values for tests of code that writes or reads JSON text.
#[cfg(test)]
pub(crate) mod testing {
    use rand::Rng;
    use serde_json::{json, Value};

    /// A string of characters that serde_json escapes and characters it does not.
    pub fn random_text(rng: &mut impl Rng) -> String {
        let alphabet = [
            'a', 'Z', '0', ' ', '"', '\\', '\n', '\t', '\u{0}', '\u{1f}', 'é', '🔑', ':', ',', '{',
            '}', '[', ']', '/',
        ];
        let len = rng.gen_range(0..40);
        (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect()
    }

    /// A value of every JSON kind, nested at most four deep.
    pub fn random_value(rng: &mut impl Rng, depth: u32) -> Value {
        match rng.gen_range(0..if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => json!(rng.gen::<i64>()),
            3 => json!(rng.gen::<f64>() * 1e6),
            4 => Value::String(random_text(rng)),
            5 => Value::Array(
                (0..rng.gen_range(0..5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.gen_range(0..5))
                    .map(|_| (random_text(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }
}
