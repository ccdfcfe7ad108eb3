//! JSON-RPC 2.0 as MCP uses it: single messages and batches of requests, notifications and
//! client responses to server requests.

use serde_json::{Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
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

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Body, ParseError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ParseError::NotJson(format!("body is not UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ParseError::NotJson(format!("body is not JSON ({e})")))?;
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

    #[test]
    fn error_response_keeps_id() {
        let body = error_response(Some(&"a".into()), GATEWAY_ERROR, "no", None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], GATEWAY_ERROR);
    }
}
