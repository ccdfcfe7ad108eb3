//! Strict reading of a request body, so the filter decides on the same message the upstream runs.
//!
//! The filter decides on serde_json's reading of a body (member names compared byte for byte, the
//! last of two equal members wins) but forwards the original bytes. An upstream that keeps the
//! first duplicate, or matches member names ignoring case (Go's `encoding/json` does both kinds of
//! folding), would read `{"name":"get_customer","Name":"delete_merchant"}` as a call to
//! `delete_merchant` while the policy allowed `get_customer`. So a body is refused (`-32600`) when
//!
//! 1. an object anywhere in it has two members with the same name after JSON unescaping
//!    (`"name"` and `"n\u0061me"` are the same member);
//! 2. an object anywhere in it has two members whose names are equal under [`fold`] (`"name"` and
//!    `"Name"`): a case-insensitive upstream cannot tell them apart, whichever is the tool's own;
//! 3. a member of the envelope (of each batch item) or of its `params` object is not one of the
//!    JSON-RPC/MCP names below byte for byte but equal to one of them under [`fold`] (`"Name"`,
//!    `"ＭＥＴＨＯＤ"`, `"name\u200b"`). Inside `arguments` and every other nested object, names
//!    are the tool's own schema: a lone `"Name"` there is accepted, only rule 2 applies.
//!
//! A body is refused (`-32600`) too when a number anywhere in it is an integer outside ±(2^53 − 1)
//! (I-JSON, RFC 7493): an upstream that reads numbers as doubles (JavaScript, Go's `interface{}`)
//! would run the call with another id or argument than the one decided on, and the control plane
//! refuses a record holding it rather than chain a rounded value. Integers beyond `u64`, and
//! every double of magnitude 2^53 or more (`1e300`), are such integers; `0.5` is not.
//!
//! Lone UTF-16 surrogates in `\u` escapes (`"\ud800"`), in names and values alike, are refused by
//! serde_json itself when it builds a string; they stay parse errors (`-32700`), with a message
//! naming the cause. Invalid UTF-8 is refused before this module runs.
//!
//! All of this happens in the single pass that builds the [`Value`]: a [`DeserializeSeed`] builds
//! each object and checks every name as it is read, before its value is read. A name that is plain
//! (ASCII, no upper case, no surrounding whitespace, the usual case) costs one map lookup more than
//! serde_json's own reading; only other names are folded, and only their folded forms are kept.
//!
//! Refusal messages name the member (cut to [`NAME_SHOWN`] characters, invisible characters
//! escaped) and where it is (`$.params.arguments`), never a value: a value may be a card number.
//! A refused number is named by its location only (`$.id`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::ParseError;
use crate::ijson;

/// Members of a JSON-RPC 2.0 envelope: request, notification and response.
pub const ENVELOPE_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// Members of `params` the gateway or the MCP methods it sees give a meaning to: `name` and
/// `arguments` (`tools/call`, `prompts/get`), `uri` (`resources/*`), `_meta` (every method,
/// `progressToken` inside it and in notifications), `cursor` (the list methods), `ref` and
/// `argument` (`completion/complete`), `level` (`logging/setLevel`), `protocolVersion`,
/// `capabilities` and `clientInfo` (`initialize`), `requestState` and `inputResponses` (the
/// stateless request drafts). A variant of one of these names under [`fold`] is refused in
/// `params`; names not in this list are left to the server.
pub const PARAMS_MEMBERS: &[&str] = &[
    "name",
    "arguments",
    "uri",
    "_meta",
    "cursor",
    "ref",
    "argument",
    "level",
    "progressToken",
    "protocolVersion",
    "capabilities",
    "clientInfo",
    "requestState",
    "inputResponses",
];

/// How many characters of a member name a message shows.
pub const NAME_SHOWN: usize = 64;

/// Longest `$.a.b[0]` location a message shows.
const PATH_SHOWN: usize = 256;

/// Reads a UTF-8 body into a [`Value`], refusing the ambiguous bodies described in the module
/// documentation.
pub fn read(text: &str) -> Result<Value, ParseError> {
    let refusal = RefCell::new(Refusal::default());
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Node {
        refusal: &refusal,
        at: At::Top,
    };
    let read = seed.deserialize(&mut de).and_then(|value| {
        de.end()?;
        Ok(value)
    });
    match read {
        Ok(value) => Ok(value),
        Err(error) => {
            let refusal = refusal.into_inner();
            match refusal.why {
                Some(why) => Err(ParseError::Invalid(format!(
                    "{why} in {}{}",
                    render_path(&refusal.path),
                    refusal.advice.unwrap_or_default()
                ))),
                None => Err(ParseError::NotJson(not_json(&error))),
            }
        }
    }
}

/// serde_json's reason, with its two surrogate errors (whose wording does not say "surrogate"
/// for a lone leading one) said plainly.
fn not_json(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if text.contains("surrogate") || text.contains("end of hex escape") {
        format!(
            "body is not JSON (a \\u escape is a lone UTF-16 surrogate, at line {} column {})",
            error.line(),
            error.column()
        )
    } else {
        format!("body is not JSON ({text})")
    }
}

/// Equal under this fold means "the same name" to some upstream. It is not Unicode NFKC case
/// folding (that needs tables this module does without); it covers what a JSON decoder that
/// matches names loosely, or a person reading a log, would take for the same name:
///
/// * format and zero-width characters are dropped wherever they are (soft hyphen, combining
///   grapheme joiner, Arabic letter mark, Mongolian vowel separator, U+200B..U+200F,
///   U+202A..U+202E, U+2060..U+2064, U+2066..U+206F, U+FEFF);
/// * fullwidth forms U+FF01..U+FF5E become their ASCII characters (`ｎａｍｅ` is `name`);
/// * letters are lower-cased: ASCII, then Unicode's own lower case per character, with the simple
///   case folds that lower-casing misses: `ſ` (long s) is `s`, `ı` and `İ` are `i`, `ς` is `σ`
///   (`K`, the Kelvin sign, already lower-cases to `k`);
/// * surrounding whitespace (Unicode `White_Space`, including no-break and ideographic spaces) is
///   trimmed.
///
/// Not covered: other compatibility decompositions (ligatures such as `ﬁ`, mathematical
/// alphanumerics, circled letters), multi-character folds (`ß` and `ss`) and whitespace inside a
/// name.
pub fn fold(name: &str) -> Cow<'_, str> {
    if is_plain(name) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' => {}
            '\u{FF01}'..='\u{FF5E}' => {
                let ascii = char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c);
                out.push(ascii.to_ascii_lowercase());
            }
            'ſ' => out.push('s'),
            'ı' | 'İ' => out.push('i'),
            'ς' => out.push('σ'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
    let end = out.trim_end().len();
    out.truncate(end);
    let start = out.len() - out.trim_start().len();
    out.drain(..start);
    Cow::Owned(out)
}

/// A name [`fold`] leaves as it is: ASCII without upper case, not starting or ending with
/// whitespace.
fn is_plain(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_space = |b: Option<&u8>| b.is_some_and(|&b| char::from(b).is_whitespace());
    bytes
        .iter()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        && !edge_space(bytes.first())
        && !edge_space(bytes.last())
}

/// What went wrong, and where: set by the object that refused, the location completed by the
/// enclosing objects and arrays as the error unwinds through them.
#[derive(Default)]
struct Refusal {
    why: Option<String>,
    /// Innermost first.
    path: Vec<Segment>,
    /// What the sender can do instead, after the location.
    advice: Option<&'static str>,
}

/// Why a number is refused, and what to send instead.
const OUT_OF_RANGE: &str = "integer outside ±2^53";
const OUT_OF_RANGE_ADVICE: &str =
    ": I-JSON (RFC 7493) cannot carry it exactly, and a server reading numbers as doubles would \
     see another value; send it as a string";

enum Segment {
    Member(String),
    Index(usize),
}

/// Where a value sits, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The whole body: a message or a batch.
    Top,
    /// An item of a top-level batch.
    Item,
    /// The `params` of a message.
    Params,
    /// Anywhere else.
    Inner,
}

impl At {
    /// The known members of an object here, if names here are checked against them.
    fn known(self) -> Option<&'static [&'static str]> {
        match self {
            At::Top | At::Item => Some(ENVELOPE_MEMBERS),
            At::Params => Some(PARAMS_MEMBERS),
            At::Inner => None,
        }
    }

    fn member(self, name: &str) -> At {
        match self {
            At::Top | At::Item if name == "params" => At::Params,
            _ => At::Inner,
        }
    }

    fn item(self) -> At {
        match self {
            At::Top => At::Item,
            _ => At::Inner,
        }
    }
}

/// Builds one value, checking the names of every object in it.
#[derive(Clone, Copy)]
struct Node<'r> {
    refusal: &'r RefCell<Refusal>,
    at: At,
}

impl Node<'_> {
    fn refuse<E: de::Error>(self, why: String) -> E {
        self.refusal.borrow_mut().why = Some(why);
        E::custom("refused member name")
    }

    fn out_of_range<E: de::Error>(self) -> E {
        self.refusal.borrow_mut().advice = Some(OUT_OF_RANGE_ADVICE);
        self.refuse(OUT_OF_RANGE.to_owned())
    }

    /// Completes the location of a refusal made inside the value at `segment`.
    fn unwind(self, segment: impl FnOnce() -> Segment) {
        let mut refusal = self.refusal.borrow_mut();
        if refusal.why.is_some() {
            refusal.path.push(segment());
        }
    }

    /// Why `name` may not join `map` (whose other names folded to something else than
    /// themselves are in `folded`), if it may not. Adds `name`'s folded form to `folded` when
    /// that differs from `name`.
    fn check(
        self,
        name: &str,
        map: &Map<String, Value>,
        folded: &mut BTreeSet<String>,
    ) -> Option<String> {
        if map.contains_key(name) {
            return Some(format!("duplicate member {}", shown(name)));
        }
        let form = fold(name);
        if let Some(known) = self.at.known() {
            if !known.contains(&name) {
                if let Some(real) = known.iter().find(|k| k.eq_ignore_ascii_case(&form)) {
                    return Some(format!(
                        "member {} is not {}: only the exact spelling is accepted",
                        shown(name),
                        shown(real)
                    ));
                }
            }
        }
        // A plain name equals its folded form, so a collision is either a plain name equal to
        // this one's form (in `map`) or another name with the same folded form (in `folded`).
        let collides = match &form {
            Cow::Borrowed(_) => folded.contains(name),
            Cow::Owned(form) => map.contains_key(form) || folded.contains(form),
        };
        if collides {
            let other = map
                .keys()
                .find(|k| fold(k) == form)
                .map_or_else(String::new, |k| shown(k));
            return Some(format!(
                "members {other} and {} are the same name when case and width are ignored",
                shown(name)
            ));
        }
        if let Cow::Owned(form) = form {
            folded.insert(form);
        }
        None
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if !ijson::i64_is_exact(v) {
            return Err(self.out_of_range());
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if !ijson::u64_is_exact(v) {
            return Err(self.out_of_range());
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !ijson::f64_is_exact(v) {
            return Err(self.out_of_range());
        }
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        let child = Node {
            refusal: self.refusal,
            at: self.at.item(),
        };
        loop {
            match seq.next_element_seed(child) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(error) => {
                    let index = items.len();
                    self.unwind(|| Segment::Index(index));
                    return Err(error);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        let mut folded = BTreeSet::new();
        while let Some(name) = access.next_key::<String>()? {
            if let Some(why) = self.check(&name, &map, &mut folded) {
                return Err(self.refuse(why));
            }
            let child = Node {
                refusal: self.refusal,
                at: self.at.member(&name),
            };
            match access.next_value_seed(child) {
                Ok(value) => {
                    map.insert(name, value);
                }
                Err(error) => {
                    self.unwind(|| Segment::Member(name));
                    return Err(error);
                }
            }
        }
        Ok(Value::Object(map))
    }
}

/// A member name for a message: quoted, invisible and control characters escaped, cut to
/// [`NAME_SHOWN`] characters.
fn shown(name: &str) -> String {
    let (cut, more) = clip(name);
    format!("{cut:?}{}", if more { "…" } else { "" })
}

fn clip(name: &str) -> (&str, bool) {
    match name.char_indices().nth(NAME_SHOWN) {
        Some((at, _)) => (&name[..at], true),
        None => (name, false),
    }
}

/// `$`, `$.params.arguments`, `$[1].params`, `$.params["a b"]`; at most [`PATH_SHOWN`] bytes.
fn render_path(innermost_first: &[Segment]) -> String {
    let mut out = String::from("$");
    for segment in innermost_first.iter().rev() {
        if out.len() > PATH_SHOWN {
            out.push('…');
            break;
        }
        match segment {
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Segment::Member(name) => {
                let simple = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                let (cut, more) = clip(name);
                let more = if more { "…" } else { "" };
                let _ = if simple {
                    write!(out, ".{cut}{more}")
                } else {
                    write!(out, "[{cut:?}{more}]")
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_lowers_case_and_width_and_drops_invisible_characters() {
        assert_eq!(fold("name"), "name");
        assert!(matches!(fold("name"), Cow::Borrowed(_)));
        assert_eq!(fold("Name"), "name");
        assert_eq!(fold("NAME"), "name");
        assert_eq!(fold("ｎａｍｅ"), "name");
        assert_eq!(fold("ＭＥＴＨＯＤ"), "method");
        assert_eq!(fold("＿meta"), "_meta");
        assert_eq!(fold("name\u{200B}"), "name");
        assert_eq!(fold("\u{FEFF}na\u{00AD}me"), "name");
        assert_eq!(fold(" name\t"), "name");
        assert_eq!(fold("\u{3000}name\u{00A0}"), "name");
        assert_eq!(fold("\u{200B} name"), "name");
        assert_eq!(fold("ſcope"), "scope");
        assert_eq!(fold("\u{212A}ey"), "key");
        assert_eq!(fold("İd"), "id");
        assert_eq!(fold("ıd"), "id");
        assert_eq!(fold("ΚΛΕΙΔΙ"), "κλειδι");
        // Inner whitespace is part of the name.
        assert_eq!(fold("na me"), "na me");
    }

    #[test]
    fn fold_is_idempotent_on_its_cases() {
        for name in ["Name", "ｎａｍｅ", "name\u{200B}", " ſ ", "İd", "ΣΑΣ", "ς"] {
            let once = fold(name).into_owned();
            assert_eq!(fold(&once), once, "{name:?}");
        }
    }

    #[test]
    fn plain_names_are_exactly_those_fold_keeps() {
        assert!(is_plain("progress_token-1"));
        assert!(is_plain(""));
        assert!(!is_plain("progressToken"));
        assert!(!is_plain(" name"));
        assert!(!is_plain("name\u{000B}"));
        assert!(!is_plain("nämé"));
    }

    #[test]
    fn paths_show_members_and_items_cut() {
        let path = vec![
            Segment::Member("a b".into()),
            Segment::Member("arguments".into()),
            Segment::Member("params".into()),
            Segment::Index(2),
        ];
        assert_eq!(render_path(&path), r#"$[2].params.arguments["a b"]"#);
        let long = "k".repeat(100);
        let shown = render_path(&[Segment::Member(long)]);
        assert_eq!(shown, format!("$.{}…", "k".repeat(NAME_SHOWN)));
        let deep: Vec<Segment> = (0..200).map(|_| Segment::Member("x".repeat(60))).collect();
        assert!(render_path(&deep).len() < PATH_SHOWN + 80);
    }

    #[test]
    fn deep_nesting_stops_at_serde_jsons_recursion_limit() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(read(&deep), Err(ParseError::NotJson(why)) if why.contains("recursion")));
        let deep = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        assert!(matches!(read(&deep), Err(ParseError::NotJson(_))));
    }

    #[test]
    fn integers_outside_2_pow_53_are_refused_where_they_are() {
        for text in [
            r#"{"id":9007199254740993}"#,
            r#"{"id":9007199254740992}"#,
            r#"{"id":-9007199254740992}"#,
            r#"{"id":12345678901234567890}"#,
            r#"{"id":-99999999999999999999}"#,
            r#"{"id":1e300}"#,
            r#"{"id":9007199254740992.0}"#,
        ] {
            assert_eq!(
                read(text),
                Err(ParseError::Invalid(format!(
                    "integer outside ±2^53 in $.id{OUT_OF_RANGE_ADVICE}"
                ))),
                "{text}"
            );
        }
        let Err(ParseError::Invalid(why)) =
            read(r#"{"params":{"arguments":{"amounts":[1,2,{"cents":4111111111111111111}]}}}"#)
        else {
            panic!("accepted")
        };
        assert!(
            why.starts_with("integer outside ±2^53 in $.params.arguments.amounts[2].cents: "),
            "{why}"
        );
        assert!(!why.contains("4111"), "{why}");
        for text in [
            r#"{"id":9007199254740991}"#,
            r#"{"id":-9007199254740991}"#,
            r#"{"id":0.5}"#,
            r#"{"id":-0}"#,
            r#"{"id":1e-300}"#,
            r#"{"id":"9007199254740993"}"#,
        ] {
            assert!(read(text).is_ok(), "{text}");
        }
        // Beyond the doubles: serde_json's own refusal, a parse error.
        assert!(matches!(
            read(r#"{"id":1e400}"#),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn a_refusal_deep_inside_names_its_whole_location() {
        let text = r#"{"params":{"arguments":{"rows":[0,{"x":{"Id":1,"ID":2}}]}}}"#;
        assert_eq!(
            read(text),
            Err(ParseError::Invalid(
                r#"members "Id" and "ID" are the same name when case and width are ignored in $.params.arguments.rows[1].x"#
                    .to_owned()
            ))
        );
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a":[1,-2,3.5,1e15,9007199254740991,-9007199254740991,true,null,"s\u00e9",{}],"b":{"c":[]}}"#;
        let strict = read(text).unwrap();
        let plain: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, plain);
    }
}
