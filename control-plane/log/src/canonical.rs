//! RFC 8785 (JSON Canonicalization Scheme) without per-token allocation: a writer for parsed
//! values and a validator that checks bytes are already canonical without building a value.
//!
//! Both exist for speed: the append path canonicalises every record and `audit verify` checks
//! every stored record. Their output is tested against `serde_jcs` (the reference used when the
//! chain was first written), so stored records keep their bytes.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Deepest nesting accepted, as serde_json's own recursion limit.
const MAX_DEPTH: usize = 128;

/// Appends the canonical form of `value` to `out`. Fails only for a number JSON cannot hold
/// (which a parsed value never has).
pub fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), NonFinite> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out)?,
    }
    Ok(())
}

/// Appends the canonical form of an object to `out`.
pub fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), NonFinite> {
    write_members(map.iter(), out)
}

/// Appends `{members}` in canonical order; `members` need not be sorted.
pub fn write_members<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<(), NonFinite> {
    let mut sorted: Vec<(&String, &Value)> = members.collect();
    sorted.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
    out.push(b'{');
    for (i, (key, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// A number that is not finite: JSON has no form for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("number is not finite")]
pub struct NonFinite;

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), NonFinite> {
    // RFC 8785 numbers are IEEE 754 doubles printed as ECMAScript does; integers beyond 2^53
    // are rounded like every other double (as serde_jcs does).
    #[allow(clippy::cast_precision_loss)]
    let float = if let Some(u) = n.as_u64() {
        u as f64
    } else if let Some(i) = n.as_i64() {
        i as f64
    } else {
        n.as_f64().ok_or(NonFinite)?
    };
    if !float.is_finite() {
        return Err(NonFinite);
    }
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(float).as_bytes());
    Ok(())
}

/// Appends `s` as a JSON string with RFC 8785's minimal escaping.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Orders strings by their UTF-16 code units, as RFC 8785 sorts member names.
pub fn utf16_cmp(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order equals code point order, which equals UTF-16 order except where a
    // supplementary character (surrogates in UTF-16) meets U+E000..U+FFFF.
    if a.is_ascii() || b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Whether `bytes` are a JSON object in exactly its RFC 8785 form: what `write_object` would
/// produce for the object they parse to. Allocates only for escaped member names.
pub fn is_canonical_object(bytes: &[u8]) -> bool {
    // Canonical form holds no raw byte below 0x20 anywhere (no whitespace between tokens,
    // control characters escaped in strings): one pass refuses them all.
    if bytes.first() != Some(&b'{')
        || bytes.iter().any(|b| *b < 0x20)
        || std::str::from_utf8(bytes).is_err()
    {
        return false;
    }
    let mut checker = Checker { bytes, pos: 0 };
    checker.value(0) && checker.pos == bytes.len()
}

struct Checker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Checker<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, text: &[u8]) -> bool {
        if self.bytes[self.pos..].starts_with(text) {
            self.pos += text.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        if depth >= MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.pos += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.pos += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut previous: Option<(usize, usize, bool)> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            if let Some(previous) = previous {
                // Strictly increasing: a repeated name is not canonical either.
                if self.key_cmp(previous, key) != Ordering::Less {
                    return false;
                }
            }
            previous = Some(key);
            if !self.eat(b':') || !self.value(depth + 1) {
                return false;
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// Compares two member names given as (start, end, escaped) spans of their contents.
    fn key_cmp(&self, a: (usize, usize, bool), b: (usize, usize, bool)) -> Ordering {
        let text = |(start, end, _): (usize, usize, bool)| {
            // Validated as UTF-8 as a whole, and spans end at ASCII quotes.
            std::str::from_utf8(&self.bytes[start..end]).unwrap_or_default()
        };
        if !a.2 && !b.2 {
            let (x, y) = (&self.bytes[a.0..a.1], &self.bytes[b.0..b.1]);
            // ASCII names (nearly all) compare the same by byte as by UTF-16 code unit.
            if x.is_ascii() && y.is_ascii() {
                return x.cmp(y);
            }
            return utf16_cmp(text(a), text(b));
        }
        let decode = |span| serde_json::from_str::<String>(&format!("\"{}\"", text(span)));
        match (decode(a), decode(b)) {
            (Ok(a), Ok(b)) => utf16_cmp(&a, &b),
            _ => Ordering::Equal,
        }
    }

    /// A string in canonical form; returns the span of its contents and whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        loop {
            // Plain bytes in one go; what ends them is looked at below.
            // Plain bytes in one go (control bytes were refused for the whole object).
            let rest = &self.bytes[self.pos..];
            self.pos += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'"' => return Some((start, self.pos - 1, escaped)),
                0x00..=0x1f => return None,
                b'\\' => {
                    escaped = true;
                    match self.peek()? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            // Only control characters without a short form are escaped as \u00xx.
                            let hex = self.bytes.get(self.pos + 1..self.pos + 5)?;
                            let lower = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
                            if &hex[..2] != b"00" || !hex.iter().all(lower) {
                                return None;
                            }
                            let code = u8::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16)
                                .ok()?;
                            if code >= 0x20 || matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                _ => {}
            }
        }
    }

    fn number(&mut self) -> bool {
        let start = self.pos;
        self.eat(b'-');
        let int_start = self.pos;
        if self.eat(b'0') {
        } else if matches!(self.peek(), Some(b'1'..=b'9')) {
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        } else {
            return false;
        }
        let int_digits = self.pos - int_start;
        let mut plain_integer = true;
        if self.eat(b'.') {
            plain_integer = false;
            if !self.digits() {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            plain_integer = false;
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if !self.digits() {
                return false;
            }
        }
        let text = &self.bytes[start..self.pos];
        // An integer of at most 15 digits is exactly a double and prints as itself, except -0.
        if plain_integer && int_digits <= 15 && text != b"-0" {
            return true;
        }
        let Ok(text) = std::str::from_utf8(text) else {
            return false;
        };
        match text.parse::<f64>() {
            Ok(float) if float.is_finite() => {
                let mut buffer = ryu_js::Buffer::new();
                buffer.format_finite(float) == text
            }
            _ => false,
        }
    }

    fn digits(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canonical(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(value, &mut out).unwrap();
        out
    }

    #[test]
    fn matches_rfc_8785_examples() {
        let value: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],
                "string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(canonical(&value)).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Member names sort by UTF-16 code units: U+1F600 (a surrogate pair) before U+FB33.
        let value = json!({"\u{fb33}": 1, "\u{1f600}": 2, "a": 3, "": 4});
        assert_eq!(
            String::from_utf8(canonical(&value)).unwrap(),
            "{\"\":4,\"a\":3,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn validator_accepts_canonical_and_rejects_the_rest() {
        for good in [
            &br#"{}"#[..],
            br#"{"a":[1,-2,0.5,1e+30,"x\u001f\n"],"b":{"c":null},"d":true}"#,
            br#"{"n":123456789012345}"#,
            br#"{"n":9007199254740992}"#,
        ] {
            assert!(
                is_canonical_object(good),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &br#"{ }"#[..],
            br#"{"b":1,"a":2}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"a":1.0}"#,
            br#"{"a":1E30}"#,
            br#"{"a":-0}"#,
            br#"{"a":01}"#,
            br#"{"a":9007199254740993}"#,
            br#"{"a":"\u0041"}"#,
            br#"{"a":"\/"}"#,
            br#"{"a":"\u000A"}"#,
            br#"{"a":"\u000a"}"#,
            b"{\"a\":\"\x01\"}",
            br#"{"a":1}x"#,
            br#"[1]"#,
            br#"{"a":tru}"#,
            br#"{"a":"#,
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                !is_canonical_object(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1000i32..1000, -30i32..30)
                .prop_map(|(m, e)| Value::from(f64::from(m) * 10f64.powi(e))),
            any::<String>().prop_map(Value::String),
            "[a-c\u{0}-\u{1f}\"\\\\/\u{7f}\u{e000}\u{fb33}\u{1f600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    "[a-cA\u{0}\u{1f}\"\u{e000}\u{fb33}\u{1f600}]{0,4}",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn writer_matches_serde_jcs_and_validator_agrees(value in arb_json()) {
            let object = json!({"v": value, "w": [value.clone()]});
            let ours = canonical(&object);
            let reference = serde_jcs::to_vec(&object).unwrap();
            prop_assert_eq!(&ours, &reference);
            prop_assert!(is_canonical_object(&ours));
            // Pretty or compact serde_json output is canonical exactly when it is identical.
            for text in [serde_json::to_vec(&object).unwrap(), serde_json::to_vec_pretty(&object).unwrap()] {
                prop_assert_eq!(is_canonical_object(&text), text == ours);
            }
        }
    }
}
