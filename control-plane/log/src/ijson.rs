//! Strict reading of JSON as I-JSON (RFC 7493), so that a record is hashed as the sender sent it.
//!
//! serde_json keeps the last of two members with the same name, and a reader that keeps the first
//! sees another record; an integer beyond 2^53 survives parsing but not the canonical form, whose
//! numbers are IEEE 754 doubles (a client id `12345678901234567890` would be chained as
//! `12345678901234567000`). Both are refused here instead of changed:
//!
//! * a member name that appears twice in one object, at any depth, compared after unescaping
//!   (`"a"` and `"\u0061"` are the same name);
//! * a number whose value is an integer outside ±(2^53 − 1): integers beyond it, and every double
//!   of magnitude 2^53 or more (all of which are integers);
//! * whatever serde_json refuses.
//!
//! The checks are made while serde_json builds the value, in one pass and with no allocation of
//! their own: [`Strict`] is a `Deserialize` that works over any serde_json deserializer (a slice,
//! a reader, a stream of values). Errors give a kind and a position, never the input: a record
//! may hold card data.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// 2^53 − 1, the largest integer an IEEE 754 double (so every I-JSON reader) holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// 2^53 as a double: every double of this magnitude or more is an integer beyond the range.
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

// The messages of the two refusals inside serde_json's errors, by which they are told apart
// from its own (its errors carry no other payload).
const DUPLICATE_MESSAGE: &str = "duplicate member name";
const OUT_OF_RANGE_MESSAGE: &str = "integer outside ±2^53";
// serde_json's own refusal of a number beyond the doubles (`1e400`).
const SERDE_OUT_OF_RANGE: &str = "number out of range";

/// What is wrong with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An object has two members with the same name.
    DuplicateMember,
    /// A number is an integer outside ±(2^53 − 1).
    NumberOutOfRange,
    /// Not JSON, or not what was expected where it stands.
    Syntax,
    /// Reading the input failed (a [`serde_json::Deserializer::from_reader`] stream).
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::DuplicateMember => DUPLICATE_MESSAGE,
            ErrorKind::NumberOutOfRange => OUT_OF_RANGE_MESSAGE,
            ErrorKind::Syntax => "not valid json",
            ErrorKind::Io => "read failed",
        })
    }
}

/// A refusal: its kind and where it was found (1-based, as serde_json counts: the last character
/// of the repeated name or of the number, one further when reading from a reader). Never quotes
/// the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (line {line}, column {column})")]
pub struct IJsonError {
    pub kind: ErrorKind,
    pub line: usize,
    pub column: usize,
}

impl IJsonError {
    /// The refusal in an error of serde_json's from reading [`Strict`] values (for a caller
    /// that drives the deserializer itself, e.g. a stream of records).
    pub fn from_serde(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match error.classify() {
            Category::Io => ErrorKind::Io,
            Category::Eof => ErrorKind::Syntax,
            // Only the rare refusal pays for the message.
            Category::Data | Category::Syntax => {
                let message = error.to_string();
                if message.starts_with(DUPLICATE_MESSAGE) {
                    ErrorKind::DuplicateMember
                } else if message.starts_with(OUT_OF_RANGE_MESSAGE)
                    || message.starts_with(SERDE_OUT_OF_RANGE)
                {
                    ErrorKind::NumberOutOfRange
                } else {
                    ErrorKind::Syntax
                }
            }
        };
        IJsonError {
            kind,
            line: error.line(),
            column: error.column(),
        }
    }
}

/// Parses one JSON text as I-JSON: no duplicate member names, no integer outside ±(2^53 − 1),
/// nothing after the value but whitespace.
pub fn parse(bytes: &[u8]) -> Result<Value, IJsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Strict::deserialize(&mut deserializer)
        .and_then(|Strict(value)| {
            deserializer.end()?;
            Ok(value)
        })
        .map_err(|error| IJsonError::from_serde(&error))
}

/// Whether `number` is one I-JSON carries exactly: not an integer outside ±(2^53 − 1).
pub fn is_exact(number: &Number) -> bool {
    if let Some(u) = number.as_u64() {
        u <= MAX_SAFE_INTEGER
    } else if let Some(i) = number.as_i64() {
        i.unsigned_abs() <= MAX_SAFE_INTEGER
    } else {
        number.as_f64().is_some_and(f64_is_exact)
    }
}

/// False for NaN and the infinities too, which no JSON text holds.
fn f64_is_exact(v: f64) -> bool {
    v.abs() < TWO_POW_53
}

/// A JSON value read as I-JSON (see the module documentation). Deserializing it with serde_json
/// fails with the refusal's message at its position; [`IJsonError::from_serde`] classifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

fn out_of_range<E: de::Error>() -> E {
    E::custom(OUT_OF_RANGE_MESSAGE)
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    #[inline]
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    #[inline]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(out_of_range());
        }
        Ok(Value::Number(v.into()))
    }

    #[inline]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_SAFE_INTEGER {
            return Err(out_of_range());
        }
        Ok(Value::Number(v.into()))
    }

    // serde_json's readers never call these two; the defaults would quote the number.
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v).map_or_else(|_| Err(out_of_range()), |v| self.visit_i64(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v).map_or_else(|_| Err(out_of_range()), |v| self.visit_u64(v))
    }

    #[inline]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !f64_is_exact(v) {
            return Err(out_of_range());
        }
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    #[inline]
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    #[inline]
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    #[inline]
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    #[inline]
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|Strict(value)| value)
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            // One lookup finds a repeat and the place to insert; a repeat is refused before
            // its value is read, so the position names the repeated name.
            match map.entry(name) {
                Entry::Vacant(slot) => {
                    let Strict(value) = access.next_value()?;
                    slot.insert(value);
                }
                Entry::Occupied(_) => return Err(de::Error::custom(DUPLICATE_MESSAGE)),
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(text: &str) -> ErrorKind {
        parse(text.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a":[1,-2,3.5,-0.0,1e15,9007199254740991,-9007199254740991,true,null,
            "s\u00e9\ud83d\ude00",{}],"b":{"c":[[]],"d":{"e":""}}," ":0}"#;
        let plain: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(text.as_bytes()).unwrap(), plain);
        assert_eq!(parse(b" 7 ").unwrap(), json!(7));
    }

    #[test]
    fn duplicate_member_names_are_refused_at_any_depth() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"x":{"a":{},"a":[]}}"#,
            r#"[0,{"a":1,"a":2}]"#,
            r#"{"x":[[{"k":null}],[{"k":1,"k":1}]]}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"\"":1,"\u0022":2}"#,
            r#"{"é":1,"\u00e9":2}"#,
            r#"{"":1,"":2}"#,
        ] {
            assert_eq!(kind(text), ErrorKind::DuplicateMember, "{text}");
        }
        // Names differing only in case are two names.
        assert!(parse(br#"{"a":1,"A":2}"#).is_ok());
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused() {
        for text in [
            "9007199254740991",
            "-9007199254740991",
            "0.5",
            "-0.5",
            "0",
            "-0",
            "1e-300",
            "9007199254740991.0",
            "900719925474099e1",
            "-1.7976931348623157e-308",
        ] {
            let value = parse(format!(r#"{{"n":{text}}}"#).as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let plain: Value = serde_json::from_str(&format!(r#"{{"n":{text}}}"#)).unwrap();
            assert_eq!(value, plain, "{text}");
        }
        for text in [
            "9007199254740992",
            "9007199254740993",
            "-9007199254740992",
            "12345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "1e300",
            "-1e300",
            "9007199254740992.0",
            "9007199254740991.9",
            "1e400",
            "-1e400",
        ] {
            assert_eq!(
                kind(&format!(r#"{{"n":[{text}]}}"#)),
                ErrorKind::NumberOutOfRange,
                "{text}"
            );
        }
    }

    #[test]
    fn errors_give_a_position_and_never_the_input() {
        let text = br#"{"pan":4111111111111111,"card":"4111111111111111","card":"x"}"#;
        let error = parse(text).unwrap_err();
        assert_eq!(error.kind, ErrorKind::DuplicateMember);
        // The repeated name's closing quote.
        assert_eq!((error.line, error.column), (1, 56));
        assert_eq!(
            error.to_string(),
            "duplicate member name (line 1, column 56)"
        );

        let text = b"{\"a\":1,\n \"id\": 12345678901234567890}";
        let error = parse(text).unwrap_err();
        assert_eq!(
            (error.kind, error.line, error.column),
            (ErrorKind::NumberOutOfRange, 2, 27)
        );
        assert!(!error.to_string().contains("1234"), "{error}");

        for text in [
            &b"{\"pan\": 4111111111111111"[..],
            b"{\"a\":1} x",
            b"",
            b"\xff",
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.kind, ErrorKind::Syntax);
            assert!(!error.to_string().contains("4111"), "{error}");
        }
    }

    #[test]
    fn deep_nesting_stops_at_serde_jsons_recursion_limit() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(kind(&deep), ErrorKind::Syntax);
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn strict_values_stream_from_a_reader() {
        let stream = &b"{\"a\":1} [2,3]\n{\"b\":{\"c\":4}} {\"d\":1,\"d\":2} {}"[..];
        let mut values = serde_json::Deserializer::from_reader(stream).into_iter::<Strict>();
        assert_eq!(values.next().unwrap().unwrap().0, json!({"a":1}));
        assert_eq!(values.next().unwrap().unwrap().0, json!([2, 3]));
        assert_eq!(values.next().unwrap().unwrap().0, json!({"b":{"c":4}}));
        let error = values.next().unwrap().unwrap_err();
        assert_eq!(
            IJsonError::from_serde(&error),
            IJsonError {
                kind: ErrorKind::DuplicateMember,
                line: 2,
                // A reader has looked at the colon after the name.
                column: 25
            }
        );
        // As an element type, and from an already parsed value.
        let list: Vec<Strict> =
            serde_json::from_str(r#"[{"a":1},{"b":[9007199254740991]}]"#).unwrap();
        assert_eq!(list.len(), 2);
        let error = serde_json::from_str::<Vec<Strict>>(r#"[{"a":1},{"b":[9007199254740993]}]"#)
            .unwrap_err();
        assert_eq!(
            IJsonError::from_serde(&error).kind,
            ErrorKind::NumberOutOfRange
        );
        let error = Strict::deserialize(json!({"n": u64::MAX})).unwrap_err();
        assert_eq!(
            IJsonError::from_serde(&error).kind,
            ErrorKind::NumberOutOfRange
        );
        assert_eq!(
            Strict::deserialize(json!({"n": [1.5]})).unwrap().0,
            json!({"n": [1.5]})
        );
    }

    #[test]
    fn is_exact_matches_the_parser() {
        for (number, exact) in [
            (json!(MAX_SAFE_INTEGER), true),
            (json!(MAX_SAFE_INTEGER + 1), false),
            (json!(-(MAX_SAFE_INTEGER as i64)), true),
            (json!(-(MAX_SAFE_INTEGER as i64) - 1), false),
            (json!(0.5), true),
            (json!(1e300), false),
            (json!(u64::MAX), false),
        ] {
            let Value::Number(n) = &number else {
                unreachable!()
            };
            assert_eq!(is_exact(n), exact, "{number}");
            assert_eq!(parse(number.to_string().as_bytes()).is_ok(), exact);
        }
    }

    /// The cost on the append path: `cargo test -p tollgate-log --release ijson_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn ijson_cost_against_serde_json() {
        use std::hint::black_box;
        use std::time::Instant;
        // A typical request record, as the filter writes one (about 500 bytes).
        let record = json!({
            "event": "mcp.request",
            "time": "2025-01-31T12:00:00.000001Z",
            "httpMethod": "POST",
            "route": "/mcp",
            "upstream": "payments",
            "session": "4f0c5b1e-7d3a-4c1e-9a2b-6d8e0f1a2b3c",
            "sub": "alice@example.com",
            "identity": {"sub": "alice@example.com", "iss": "https://idp.example.com",
                         "groups": ["payments-readers"]},
            "messages": [{"kind": "request", "id": 42, "method": "tools/call",
                          "target": "get_customer", "decision": "allow", "rule": "reads",
                          "arguments": {"customer_id": "cus_1", "expand": ["charges"], "limit": 10}}],
            "decision": "allow",
            "outcome": "forwarded",
        })
        .to_string()
        .into_bytes();
        assert!((450..550).contains(&record.len()), "{}", record.len());
        let rounds = 5;
        let per_round = 50_000;
        let (mut strict, mut plain) = (u128::MAX, u128::MAX);
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(serde_json::from_slice::<Value>(black_box(&record)).unwrap());
            }
            plain = plain.min(start.elapsed().as_nanos() / per_round);
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(parse(black_box(&record)).unwrap());
            }
            strict = strict.min(start.elapsed().as_nanos() / per_round);
        }
        println!(
            "{}-byte record: serde_json::from_slice::<Value> {plain} ns, ijson::parse {strict} ns \
             (best of {rounds} rounds of {per_round})",
            record.len()
        );
    }
}
