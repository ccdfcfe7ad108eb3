//! JSON-RPC 2.0 as MCP uses it: single messages and batches of requests, notifications and
//! client responses to server requests.
//!
//! Bodies are read strictly (see [`strict`]): a body the filter and the upstream could read as
//! two different messages, through duplicate or case-variant member names or an integer beyond
//! 2^53, is refused.

pub mod modern;
pub mod strict;

use serde_json::{Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
/// Implementation-defined server error range (-32000..-32099): the gateway's own refusals.
pub const GATEWAY_ERROR: i64 = -32001;

/// What kind of JSON-RPC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    /// A client's answer to a server-initiated request (sampling, elicitation, roots).
    Response,
}

/// One parsed JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub id: Option<Value>,
    pub method: Option<String>,
    pub params: Option<Value>,
}

impl Message {
    /// The object the call acts on: the tool of `tools/call`, the prompt of `prompts/get`, the
    /// URI of `resources/read` and the subscription calls.
    pub fn target(&self) -> Option<&str> {
        let key = match self.method.as_deref()? {
            "tools/call" | "prompts/get" => "name",
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
            _ => return None,
        };
        self.params.as_ref()?.get(key)?.as_str()
    }

    /// The tool call's arguments, if any.
    pub fn arguments(&self) -> Option<&Value> {
        self.params.as_ref()?.get("arguments")
    }

    /// The message as JSON-RPC text. The strict parser refused any body that could be read two
    /// ways, so this is the message the upstream reads.
    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Map::new();
        out.insert("jsonrpc".to_owned(), "2.0".into());
        if let Some(id) = &self.id {
            out.insert("id".to_owned(), id.clone());
        }
        if let Some(method) = &self.method {
            out.insert("method".to_owned(), method.clone().into());
        }
        if let Some(params) = &self.params {
            out.insert("params".to_owned(), params.clone());
        }
        Value::Object(out).to_string().into_bytes()
    }
}

/// Hex SHA-256 of a call's arguments in canonical form (object keys sorted, no whitespace): an
/// approval grant is bound to exactly these arguments. The filter and the control plane both
/// compute it, and must agree.
pub fn arguments_hash(arguments: &Value) -> String {
    // serde_json's map keeps keys sorted (no `preserve_order`), so `to_string` is canonical here.
    sha256_hex(arguments.to_string().as_bytes())
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request body: one message or a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(ms) => ms,
        }
    }
}

/// Why a body is not acceptable JSON-RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON (or not UTF-8): `-32700`.
    NotJson(String),
    /// JSON, but not a JSON-RPC 2.0 message: `-32600`.
    Invalid(String),
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            ParseError::NotJson(_) => PARSE_ERROR,
            ParseError::Invalid(_) => INVALID_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ParseError::NotJson(why) => format!("parse error: {why}"),
            ParseError::Invalid(why) => format!("invalid request: {why}"),
        }
    }
}

/// Parses a request body. Duplicate member names, names that differ only in case or width,
/// look-alikes of the JSON-RPC/MCP member names and integers outside ±(2^53 − 1) are refused as
/// invalid requests ([`strict`]).
pub fn parse(body: &[u8]) -> Result<Body, ParseError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ParseError::NotJson(format!("body is not UTF-8 ({e})")))?;
    let value = strict::read(text)?;
    match value {
        Value::Array(items) if items.is_empty() => {
            Err(ParseError::Invalid("empty batch".to_owned()))
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                message(item).map_err(|why| ParseError::Invalid(format!("batch item {i}: {why}")))
            })
            .collect::<Result<_, _>>()
            .map(Body::Batch),
        other => message(other)
            .map(Body::Single)
            .map_err(ParseError::Invalid),
    }
}

fn message(value: Value) -> Result<Message, String> {
    let Value::Object(mut obj) = value else {
        return Err("message is not an object".to_owned());
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("\"jsonrpc\" must be \"2.0\"".to_owned());
    }
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(Value::Null) => Some(Value::Null),
        Some(_) => return Err("\"id\" must be a string or a number".to_owned()),
    };
    let params = obj.remove("params");
    if params
        .as_ref()
        .is_some_and(|p| !p.is_object() && !p.is_array())
    {
        return Err("\"params\" must be an object or an array".to_owned());
    }
    match obj.remove("method") {
        Some(Value::String(method)) => Ok(Message {
            kind: if id.is_some() {
                Kind::Request
            } else {
                Kind::Notification
            },
            id,
            method: Some(method),
            params,
        }),
        Some(_) => Err("\"method\" must be a string".to_owned()),
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            Ok(Message {
                kind: Kind::Response,
                id,
                method: None,
                params: None,
            })
        }
        None => {
            Err("neither a request (\"method\") nor a response (\"result\"/\"error\")".to_owned())
        }
    }
}

/// A JSON-RPC error response body.
pub fn error_response(
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    let mut error = Map::new();
    error.insert("code".to_owned(), code.into());
    error.insert("message".to_owned(), message.into());
    if let Some(data) = data {
        error.insert("data".to_owned(), data);
    }
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": error,
    });
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_with_tool() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_customer","arguments":{"customer_id":"cus_1"}}}"#;
        let Body::Single(m) = parse(body).unwrap() else {
            panic!("not single")
        };
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.target(), Some("get_customer"));
        assert_eq!(m.id, Some(7.into()));
    }

    #[test]
    fn parses_batch_of_notification_and_response() {
        let body = br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"s1","result":{}}]"#;
        let Body::Batch(ms) = parse(body).unwrap() else {
            panic!("not batch")
        };
        assert_eq!(ms[0].kind, Kind::Notification);
        assert_eq!(ms[1].kind, Kind::Response);
    }

    #[test]
    fn rejects_bad_input_with_the_right_code() {
        assert_eq!(parse(b"{").unwrap_err().code(), PARSE_ERROR);
        assert_eq!(parse(b"\xff\xfe").unwrap_err().code(), PARSE_ERROR);
        assert_eq!(parse(b"[]").unwrap_err().code(), INVALID_REQUEST);
        assert_eq!(
            parse(br#"{"id":1,"method":"x"}"#).unwrap_err().code(),
            INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#)
                .unwrap_err()
                .code(),
            INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1}"#).unwrap_err().code(),
            INVALID_REQUEST
        );
    }

    /// The refusal for `body`: an invalid request whose message is returned.
    fn refused(body: &[u8]) -> String {
        let error = parse(body).unwrap_err();
        assert_eq!(error.code(), INVALID_REQUEST, "{}", error.message());
        error.message()
    }

    #[test]
    fn the_case_variant_bypass_is_refused() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","Name":"delete_merchant"}}"#;
        let why = refused(body);
        assert!(
            why.contains(r#""Name""#) && why.contains("$.params"),
            "{why}"
        );
        assert!(!why.contains("get_customer") && !why.contains("delete_merchant"));
    }

    #[test]
    fn duplicate_method_in_the_envelope_is_refused() {
        let why = refused(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
        );
        assert_eq!(why, r#"invalid request: duplicate member "method" in $"#);
    }

    #[test]
    fn duplicate_name_in_params_is_refused() {
        let why = refused(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","name":"delete_merchant"}}"#,
        );
        assert_eq!(
            why,
            r#"invalid request: duplicate member "name" in $.params"#
        );
    }

    #[test]
    fn duplicate_nested_in_arguments_is_refused_without_echoing_values() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"refund","arguments":{"card":{"pan":"4111111111111111","pan":"5500005555555559"}}}}"#;
        let why = refused(body);
        assert_eq!(
            why,
            r#"invalid request: duplicate member "pan" in $.params.arguments.card"#
        );
        assert!(!why.contains("4111") && !why.contains("5500"));
    }

    #[test]
    fn duplicate_inside_a_batch_item_is_refused() {
        let why = refused(
            br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","arguments":{},"arguments":{"x":1}}}]"#,
        );
        assert_eq!(
            why,
            r#"invalid request: duplicate member "arguments" in $[1].params"#
        );
        let why = refused(br#"[{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}]"#);
        assert_eq!(why, r#"invalid request: duplicate member "id" in $[0]"#);
    }

    #[test]
    fn escaped_duplicates_are_duplicates() {
        let why = refused(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","n\u0061me":"delete_merchant"}}"#,
        );
        assert_eq!(
            why,
            r#"invalid request: duplicate member "name" in $.params"#
        );
        let why = refused(br#"{"jsonrpc":"2.0","id":1,"\u006dethod":"a","method":"b"}"#);
        assert_eq!(why, r#"invalid request: duplicate member "method" in $"#);
        // Escaped members in arguments, too.
        refused(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"\"a\"":1,"\u0022a\u0022":2}}}"#);
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_in_ids_and_arguments() {
        let why = refused(br#"{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/list"}"#);
        assert!(
            why.starts_with("invalid request: integer outside ±2^53 in $.id: "),
            "{why}"
        );
        assert!(why.ends_with("send it as a string"), "{why}");
        let why = refused(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"refund","arguments":{"amount":1e300}}}]"#,
        );
        assert!(
            why.starts_with(
                "invalid request: integer outside ±2^53 in $[0].params.arguments.amount: "
            ),
            "{why}"
        );
        // In a client's answer to a server request too.
        refused(br#"{"jsonrpc":"2.0","id":"s1","result":{"n":-9007199254740992}}"#);
        // The largest exact ids, and fractions, are fine.
        for body in [
            &br#"{"jsonrpc":"2.0","id":9007199254740991,"method":"ping"}"#[..],
            br#"{"jsonrpc":"2.0","id":-9007199254740991,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":"9007199254740993","method":"tools/call","params":{"name":"t","arguments":{"x":0.5}}}"#,
        ] {
            parse(body).unwrap_or_else(|e| panic!("{}", e.message()));
        }
    }

    #[test]
    fn case_and_width_variants_of_known_members_are_refused() {
        for (body, name) in [
            (&br#"{"jsonrpc":"2.0","id":1,"Method":"tools/call"}"#[..], "\"Method\""),
            (br#"{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"x"}"#, "\"METHOD\""),
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"ＭＥＴＨＯＤ\":\"x\"}".as_bytes(),
                "\"ＭＥＴＨＯＤ\"",
            ),
            (br#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#, "\"ID\""),
            (br#"{"jsonrpc":"2.0","id":1,"method":"ping","Params":{}}"#, "\"Params\""),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"delete_merchant"}}"#,
                "\"NAME\"",
            ),
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"ｎａｍｅ\":\"x\"}}".as_bytes(),
                "\"ｎａｍｅ\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name\u200b":"x"}}"#,
                "\"name\\u{200b}\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"\ufeffname":"x"}}"#,
                "\"\\u{feff}name\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{" name ":"x"}}"#,
                "\" name \"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"URI":"file:///x"}}"#,
                "\"URI\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{},"_META":{}}}"#,
                "\"_META\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolversion":"2025-06-18"}}"#,
                "\"protocolversion\"",
            ),
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"argumentſ\":{}}}".as_bytes(),
                "\"argumentſ\"",
            ),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"Name":"x"}}]"#,
                "\"Name\"",
            ),
        ] {
            let why = refused(body);
            assert!(why.contains(&format!("member {name} is not")), "{why}");
        }
    }

    #[test]
    fn case_collisions_are_refused_at_any_depth() {
        let why = refused(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":1,"Amount":1000}}}"#,
        );
        assert_eq!(
            why,
            r#"invalid request: members "amount" and "Amount" are the same name when case and width are ignored in $.params.arguments"#
        );
        // Neither spelling is the plain one.
        refused(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"Amount":1,"AMOUNT":2}}}"#);
        // Deeper, in an array, with fullwidth letters.
        refused("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"items\":[{\"sku\":1,\"ｓｋｕ\":2}]}}}".as_bytes());
        // In a client's response.
        refused(br#"{"jsonrpc":"2.0","id":"s1","result":{"action":"accept","Action":"decline"}}"#);
    }

    #[test]
    fn case_variants_inside_arguments_are_the_tools_own() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"update_customer","arguments":{"Name":"Ada","METHOD":"card","Params":{"ID":1},"uri":"x"}}}"#;
        let Body::Single(m) = parse(body).unwrap() else {
            panic!("not single")
        };
        assert_eq!(m.target(), Some("update_customer"));
        assert_eq!(m.arguments().unwrap()["Name"], "Ada");
    }

    #[test]
    fn ordinary_mcp_bodies_parse() {
        for body in [
            &br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true},"sampling":{},"elicitation":{}},"clientInfo":{"name":"claude","title":"Claude","version":"1.0.0"}}}"#[..],
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"cursor":"c1","_meta":{"progressToken":7}}}"#,
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_customer","arguments":{"customer_id":"cus_1","expand":["charges"]},"_meta":{"progressToken":"p"}}}"#,
            br#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///a"}}"#,
            br#"{"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}"#,
            br#"{"jsonrpc":"2.0","id":5,"method":"logging/setLevel","params":{"level":"info"}}"#,
            br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"x","vendorExtension":true}}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":"s1","result":{"content":[{"type":"text","text":"hi"}]}}]"#,
        ] {
            parse(body).unwrap_or_else(|e| panic!("{}: {}", e.message(), String::from_utf8_lossy(body)));
        }
    }

    #[test]
    fn long_member_names_are_cut_in_messages() {
        let long = "K".repeat(500);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"{long}":1,"{long}":2}}}}}}"#
        );
        let why = refused(body.as_bytes());
        assert!(why.contains(&format!("\"{}\"…", "K".repeat(64))), "{why}");
        assert!(why.len() < 300, "{why}");
    }

    #[test]
    fn lone_surrogates_are_parse_errors_in_names_and_values() {
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get\ud800"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\udc00x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\ud800\u0041"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name\ud800":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"\udfff":1}}}"#,
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.code(), PARSE_ERROR);
            assert!(
                error.message().contains("lone UTF-16 surrogate"),
                "{}",
                error.message()
            );
        }
        // A proper pair is a character.
        let body =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud83d\ude00"}}"#;
        let Body::Single(m) = parse(body).unwrap() else {
            panic!("not single")
        };
        assert_eq!(m.target(), Some("\u{1F600}"));
    }

    #[test]
    fn invalid_utf8_is_a_parse_error_in_names_and_values() {
        for body in [
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get\xff\"}}"[..],
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"na\xc3me\":\"x\"}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"\xed\xa0\x80\"}}",
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.code(), PARSE_ERROR);
            assert!(error.message().contains("not UTF-8"), "{}", error.message());
        }
    }

    #[test]
    fn error_response_keeps_id() {
        let body = error_response(Some(&"a".into()), GATEWAY_ERROR, "no", None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], GATEWAY_ERROR);
    }
}
