//! MCP 2026-07-28, the stateless revision, as a gateway must read it: the request metadata every
//! message carries in `params._meta`, and the HTTP headers that mirror the body (`Mcp-Method`,
//! `Mcp-Name`, `MCP-Protocol-Version`, and `Mcp-Param-{Name}` for tool parameters annotated with
//! `x-mcp-header`). The gateway decides on the body; a header that says something else is a
//! `HeaderMismatch` (-32020) and the request is never forwarded, so that no component behind the
//! gateway can act on a value the policy did not see.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Message;

/// The first revision without `initialize` and sessions.
pub const STATELESS_SINCE: &str = "2026-07-28";
/// What a request without any version is taken for (the transport spec's rule for clients older
/// than the `MCP-Protocol-Version` header).
pub const ASSUMED_VERSION: &str = "2025-03-26";

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Headers and body disagree, or a required header is missing or malformed.
pub const HEADER_MISMATCH: i64 = -32020;
/// The request names a protocol revision the deployment does not allow.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

impl Message {
    /// `params._meta`, if any.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.params.as_ref()?.get("_meta")?.as_object()
    }

    /// The revision a 2026-07-28 (or later) request names in its `_meta`; `initialize` of the
    /// session-based revisions names it in `params.protocolVersion`.
    pub fn protocol_version(&self) -> Option<&str> {
        if let Some(version) = self.meta().and_then(|m| m.get(META_PROTOCOL_VERSION)) {
            return version.as_str();
        }
        if self.method.as_deref() == Some("initialize") {
            return self.params.as_ref()?.get("protocolVersion")?.as_str();
        }
        None
    }

    /// Whether this message speaks the stateless revision (its `_meta` names 2026-07-28 or
    /// later): no session, every request on its own.
    pub fn is_stateless(&self) -> bool {
        self.meta()
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
            .and_then(Value::as_str)
            .is_some_and(|v| v >= STATELESS_SINCE)
    }

    /// `_meta`'s `clientInfo` (the 2026 form), or `initialize`'s.
    pub fn client_info(&self) -> Option<&Value> {
        if let Some(info) = self.meta().and_then(|m| m.get(META_CLIENT_INFO)) {
            return Some(info);
        }
        if self.method.as_deref() == Some("initialize") {
            return self.params.as_ref()?.get("clientInfo");
        }
        None
    }

    /// Whether the client declared that it handles URL-mode elicitation on this request.
    pub fn accepts_url_elicitation(&self) -> bool {
        self.meta()
            .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
            .and_then(|c| c.get("elicitation"))
            .and_then(|e| e.get("url"))
            .is_some()
    }

    /// The request's `requestState`: a multi-round-trip retry echoes what a server (or the
    /// gateway) asked it to.
    pub fn request_state(&self) -> Option<&str> {
        self.params.as_ref()?.get("requestState")?.as_str()
    }

    /// The value an `Mcp-Name` header must mirror: the tool's or prompt's name, the resource's
    /// URI; for the tasks extension's methods, the task id.
    pub fn mirrored_name(&self) -> Option<&str> {
        let key = match self.method.as_deref()? {
            "tools/call" | "prompts/get" => "name",
            "resources/read" => "uri",
            "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
            _ => return None,
        };
        self.params.as_ref()?.get(key)?.as_str()
    }

    /// Whether a 2026-07-28 request of this method must carry `Mcp-Name` (the transport spec's
    /// table; the tasks extension's routing header is checked when sent).
    fn requires_name(&self) -> bool {
        matches!(
            self.method.as_deref(),
            Some("tools/call" | "prompts/get" | "resources/read")
        )
    }
}

/// The MCP headers of one HTTP request, as sent (names lower-cased).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpHeaders {
    pub protocol_version: Option<String>,
    pub method: Option<String>,
    pub name: Option<String>,
    /// `Mcp-Param-{Name}` headers: `{name}` lower-cased, and the raw value.
    pub params: Vec<(String, String)>,
    /// An MCP header sent more than once: the gateway and a component behind it could each read
    /// another of its values, so the request is refused.
    pub repeated: Option<String>,
}

impl McpHeaders {
    /// Picks the MCP headers out of a request's header list.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out = McpHeaders::default();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            let slot = match name.as_str() {
                "mcp-protocol-version" => &mut out.protocol_version,
                "mcp-method" => &mut out.method,
                "mcp-name" => &mut out.name,
                other => {
                    if let Some(param) = other.strip_prefix("mcp-param-") {
                        if out.params.iter().any(|(p, _)| p == param) {
                            out.repeated.get_or_insert(name.clone());
                        }
                        out.params.push((param.to_owned(), value.to_owned()));
                    }
                    continue;
                }
            };
            if slot.replace(value.to_owned()).is_some() {
                out.repeated.get_or_insert(name);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        *self == McpHeaders::default()
    }

    /// The revision the request speaks: the header, else 2025-03-26.
    pub fn version(&self) -> &str {
        self.protocol_version.as_deref().unwrap_or(ASSUMED_VERSION)
    }

    /// The headers as recorded: decoded values, so that the record's masking sees what a
    /// mirrored argument really says.
    pub fn audit_json(&self) -> Value {
        let mut out = Map::new();
        let mut put = |name: String, raw: &str| {
            let value = decode_value(raw).unwrap_or_else(|_| raw.to_owned());
            out.insert(name, value.into());
        };
        if let Some(v) = &self.protocol_version {
            put("mcp-protocol-version".to_owned(), v);
        }
        if let Some(v) = &self.method {
            put("mcp-method".to_owned(), v);
        }
        if let Some(v) = &self.name {
            put("mcp-name".to_owned(), v);
        }
        for (name, v) in &self.params {
            put(format!("mcp-param-{name}"), v);
        }
        Value::Object(out)
    }
}

/// A header value as the client meant it: the Base64 sentinel form (`=?base64?…?=`) decoded;
/// a plain value must be visible ASCII, spaces and tabs.
pub fn decode_value(raw: &str) -> Result<String, String> {
    if let Some(inner) = raw
        .strip_prefix(BASE64_PREFIX)
        .and_then(|rest| rest.strip_suffix(BASE64_SUFFIX))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .map_err(|_| "its Base64 form does not decode".to_owned())?;
        return String::from_utf8(bytes).map_err(|_| "its Base64 form is not UTF-8".to_owned());
    }
    if raw
        .bytes()
        .all(|b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b))
    {
        Ok(raw.to_owned())
    } else {
        Err("it holds characters a header value may not".to_owned())
    }
}

/// Why the headers and the body of a request do not go together: the JSON-RPC error code the
/// refusal carries (`HeaderMismatch`, or `Invalid params` for a 2026-07-28 request whose `_meta`
/// lacks its version) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub code: i64,
    pub why: String,
}

impl Mismatch {
    fn header(why: String) -> Self {
        Mismatch {
            code: HEADER_MISMATCH,
            why,
        }
    }

    /// The refusal's message.
    pub fn message(&self) -> String {
        if self.code == HEADER_MISMATCH {
            format!("Header mismatch: {}", self.why)
        } else {
            format!("Invalid params: {}", self.why)
        }
    }
}

/// What the gateway knows of each tool's mirrored parameters, by tool name.
pub type Mirrors = BTreeMap<String, Vec<Mirror>>;

/// One tool parameter mirrored into a header: `Mcp-Param-{header}` carries the argument at
/// `path` (a chain of `properties` keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// The `x-mcp-header` value, lower-cased (header names compare case-insensitively).
    pub header: String,
    pub path: Vec<String>,
}

/// The mirrored parameters of each tool a `tools/list` result names (tools without any are
/// listed with none: their calls may carry no `Mcp-Param-*` header).
pub fn mirrors_of_tools(result: &Value) -> Mirrors {
    let mut out = Mirrors::new();
    let Some(tools) = result.get("tools").and_then(Value::as_array) else {
        return out;
    };
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        let mut mirrors = Vec::new();
        if let Some(schema) = tool.get("inputSchema") {
            collect_mirrors(schema, &mut Vec::new(), &mut mirrors);
        }
        out.insert(name.to_owned(), mirrors);
    }
    out
}

/// Annotations count only where the spec lets them: reachable from the root through
/// `properties` alone.
fn collect_mirrors(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Mirror>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, property) in properties {
        path.push(key.clone());
        if let Some(header) = property.get("x-mcp-header").and_then(Value::as_str) {
            out.push(Mirror {
                header: header.to_ascii_lowercase(),
                path: path.clone(),
            });
        }
        collect_mirrors(property, path, out);
        path.pop();
    }
}

/// What the tool's schema says about mirrored parameters, as far as the gateway knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known<'a> {
    /// The tool's schema was seen: these are its mirrors (maybe none).
    Mirrors(&'a [Mirror]),
    /// No `tools/list` answer naming the tool has passed the gateway.
    Unknown,
}

/// Checks that the headers agree with the body. `Err` says what disagrees, for a -32020 answer.
///
/// A 2026-07-28 request must carry `MCP-Protocol-Version` (equal to its `_meta` version),
/// `Mcp-Method`, and `Mcp-Name` where the method has a name. Any request, of any revision, whose
/// MCP headers are present must agree with its body: a component behind the gateway may route
/// or decide on them. `Mcp-Param-*` headers are checked against the tool's `x-mcp-header`
/// annotations; while the tool's schema is unknown they cannot be, and are refused (the spec's
/// client answer to -32020 is to list the tools again and retry).
pub fn check_headers(
    message: &Message,
    headers: &McpHeaders,
    known: Known<'_>,
) -> Result<(), Mismatch> {
    // A schema's `x-mcp-header` is the server's text and may hold a line break; the reason is
    // one line.
    check(message, headers, known).map_err(|mut mismatch| {
        mismatch.why = mismatch.why.replace('\n', " ");
        mismatch
    })
}

fn check(message: &Message, headers: &McpHeaders, known: Known<'_>) -> Result<(), Mismatch> {
    let err = |why: String| Err(Mismatch::header(why));
    if let Some(name) = &headers.repeated {
        return err(format!("the {name} header is sent more than once"));
    }
    let stateless = message.is_stateless();
    let body_version = message
        .meta()
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str);
    match (&headers.protocol_version, body_version) {
        (None, Some(_)) => {
            return err("the MCP-Protocol-Version header is missing".to_owned());
        }
        (Some(header), Some(body)) if header != body => {
            return err(format!(
                "MCP-Protocol-Version header {header:?} does not match the body's {body:?}"
            ));
        }
        // What the spec answers for a 2026-07-28 request whose `_meta` is incomplete.
        (Some(header), None) if header.as_str() >= STATELESS_SINCE => {
            return Err(Mismatch {
                code: super::INVALID_PARAMS,
                why: format!(
                    "MCP-Protocol-Version is {header:?} but params._meta lacks {META_PROTOCOL_VERSION}"
                ),
            });
        }
        _ => {}
    }
    let method = message.method.as_deref().unwrap_or_default();
    match &headers.method {
        None if stateless => return err("the Mcp-Method header is missing".to_owned()),
        Some(header) if header != method => {
            return err(format!(
                "Mcp-Method header {header:?} does not match the body's method {method:?}"
            ));
        }
        _ => {}
    }
    let body_name = message.mirrored_name();
    match (&headers.name, body_name) {
        (None, Some(_)) if stateless && message.requires_name() => {
            return err(format!("the Mcp-Name header is missing for {method}"));
        }
        (Some(_), None) => {
            return err(format!(
                "an Mcp-Name header on {method:?}, which names nothing"
            ));
        }
        (Some(raw), Some(body)) => {
            let header = decode_value(raw).map_err(|why| {
                Mismatch::header(format!("the Mcp-Name header is malformed: {why}"))
            })?;
            if header != body {
                return err(format!(
                    "Mcp-Name header {header:?} does not match the body's {body:?}"
                ));
            }
        }
        _ => {}
    }
    check_params(message, headers, known, stateless).map_err(Mismatch::header)
}

fn check_params(
    message: &Message,
    headers: &McpHeaders,
    known: Known<'_>,
    stateless: bool,
) -> Result<(), String> {
    let is_call = message.method.as_deref() == Some("tools/call");
    if !is_call {
        return match headers.params.first() {
            Some((name, _)) => Err(format!(
                "an Mcp-Param-{name} header on a request that calls no tool"
            )),
            None => Ok(()),
        };
    }
    let mirrors = match known {
        Known::Mirrors(mirrors) => mirrors,
        Known::Unknown => {
            return match headers.params.first() {
                Some((name, _)) => Err(format!(
                    "Mcp-Param-{name} cannot be checked: the gateway has not seen this tool's schema; list the tools (tools/list) and retry"
                )),
                None => Ok(()),
            };
        }
    };
    let arguments = message.arguments();
    let mut seen = vec![false; headers.params.len()];
    for mirror in mirrors {
        let value = arguments.and_then(|a| at_path(a, &mirror.path));
        let found = headers
            .params
            .iter()
            .position(|(name, _)| *name == mirror.header);
        if let Some(i) = found {
            if seen[i] {
                continue;
            }
            seen[i] = true;
        }
        match (value.filter(|v| !v.is_null()), found) {
            (None, None) => {}
            (Some(_), None) if !stateless => {}
            (Some(_), None) => {
                return Err(format!(
                    "the Mcp-Param-{} header is missing: argument {} is set",
                    mirror.header,
                    mirror.path.join(".")
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "an Mcp-Param-{} header, but argument {} is not set",
                    mirror.header,
                    mirror.path.join(".")
                ));
            }
            (Some(value), Some(i)) => {
                let raw = &headers.params[i].1;
                let header = decode_value(raw).map_err(|why| {
                    format!("the Mcp-Param-{} header is malformed: {why}", mirror.header)
                })?;
                if !same_value(&header, value) {
                    return Err(format!(
                        "Mcp-Param-{} header does not match argument {}",
                        mirror.header,
                        mirror.path.join(".")
                    ));
                }
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!(
            "an Mcp-Param-{} header that no parameter of this tool mirrors",
            headers.params[i].0
        ));
    }
    Ok(())
}

fn at_path<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// A header's text against the argument it mirrors: strings as-is, integers numerically, booleans
/// lower-case. Anything else cannot be mirrored and never matches.
fn same_value(header: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => header == s,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) => match (n.as_i64(), header.parse::<f64>()) {
            (Some(i), Ok(h)) => h.fract() == 0.0 && h == i as f64 && i.unsigned_abs() < 1 << 53,
            _ => false,
        },
        _ => false,
    }
}

/// The gateway's own `requestState`: a held call answered `input_required` carries it, and the
/// client's retry brings it back. It names the approval and carries, wrapped, the server's own
/// `requestState` and the client's `inputResponses` of the round the gateway interrupted, which
/// the retry restores before it is forwarded. It grants nothing: whether the call may pass is
/// the control plane's answer for exactly this call (caller, tool, arguments), whatever the
/// state says.
pub const GATEWAY_STATE_PREFIX: &str = "tollgate-approval.v1.";
/// The key of the gateway's URL elicitation in `inputRequests` / `inputResponses`.
pub const APPROVAL_INPUT: &str = "tollgate-approval";

/// What a retry's gateway state said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRetry {
    pub approval_id: String,
    /// The client answered the approval elicitation with `accept` (it says the approval was
    /// sought); `decline` or `cancel` mean it will not wait for one.
    pub accepted: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Wrapped {
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    request_state: Option<Value>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    input_responses: Option<Value>,
}

/// The gateway state for `approval_id`, wrapping what `message` (the held call) carried for its
/// server.
pub fn gateway_state(approval_id: &str, message: &Message) -> String {
    let params = message.params.as_ref();
    let wrapped = Wrapped {
        request_state: params.and_then(|p| p.get("requestState")).cloned(),
        input_responses: params.and_then(|p| p.get("inputResponses")).cloned(),
    };
    let json = serde_json::to_vec(&wrapped).unwrap_or_default();
    format!(
        "{GATEWAY_STATE_PREFIX}{approval_id}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

/// Takes the gateway's state out of a retried request: the message as its server must see it
/// (its own `requestState` and `inputResponses` restored, the gateway's gone), and what the
/// state said. `None` when the message carries no gateway state. A state that does not decode
/// is `Err`: the retry is refused, never forwarded with a state its server did not write.
pub fn take_gateway_state(message: &Message) -> Option<Result<(Message, ApprovalRetry), String>> {
    let state = message
        .request_state()?
        .strip_prefix(GATEWAY_STATE_PREFIX)?;
    Some(untangle(message, state))
}

fn untangle(message: &Message, state: &str) -> Result<(Message, ApprovalRetry), String> {
    let bad = || "the gateway's requestState is malformed".to_owned();
    let (approval_id, wrapped) = state.split_once('.').ok_or_else(bad)?;
    if approval_id.is_empty()
        || !approval_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad());
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(wrapped)
        .map_err(|_| bad())?;
    let wrapped: Wrapped = serde_json::from_slice(&json).map_err(|_| bad())?;
    let mut params = message
        .params
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(bad)?;
    let accepted = params
        .get("inputResponses")
        .and_then(|r| r.get(APPROVAL_INPUT))
        .and_then(|r| r.get("action"))
        .and_then(Value::as_str)
        == Some("accept");
    params.remove("requestState");
    params.remove("inputResponses");
    if let Some(state) = wrapped.request_state {
        params.insert("requestState".to_owned(), state);
    }
    if let Some(responses) = wrapped.input_responses {
        params.insert("inputResponses".to_owned(), responses);
    }
    let restored = Message {
        params: Some(Value::Object(params)),
        ..message.clone()
    };
    Ok((
        restored,
        ApprovalRetry {
            approval_id: approval_id.to_owned(),
            accepted,
        },
    ))
}

/// The answer to a held call from a client that handles URL elicitation: `input_required`,
/// asking the client to send its user to `url` (the approval) and retry with `state`.
pub fn input_required(id: Option<&Value>, message: &str, url: &str, state: &str) -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "result": {
            "resultType": "input_required",
            "inputRequests": {
                APPROVAL_INPUT: {
                    "method": "elicitation/create",
                    "params": {"mode": "url", "message": message, "url": url}
                }
            },
            "requestState": state
        }
    })
    .to_string()
    .into_bytes()
}

/// SHA-256 (hex) of a `requestState`: records keep this, never the state, which is the
/// server's and may hold anything.
pub fn state_hash(state: &str) -> String {
    super::sha256_hex(state.as_bytes())
}

/// `text` (the start of an answer, for its record) with every `"requestState":"…"` value
/// replaced by its hash; a value the excerpt cuts off is dropped.
pub fn hash_request_states(text: &str) -> std::borrow::Cow<'_, str> {
    const KEY: &str = "\"requestState\"";
    if !text.contains(KEY) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(KEY) {
        let after_key = &rest[at + KEY.len()..];
        out.push_str(&rest[..at + KEY.len()]);
        let trimmed = after_key.trim_start();
        let Some(value) = trimmed.strip_prefix(':').map(str::trim_start) else {
            rest = after_key;
            continue;
        };
        let Some(body) = value.strip_prefix('"') else {
            rest = after_key;
            continue;
        };
        out.push(':');
        match string_end(body) {
            Some(end) => {
                let hash = state_hash(&body[..end]);
                out.push_str(&format!("\"sha256:{hash}\""));
                rest = &body[end + 1..];
            }
            None => {
                out.push_str("\"sha256:(cut off)\"");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// Where the JSON string starting at `s` (after its opening quote) ends: its closing quote.
fn string_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{parse, Body};
    use serde_json::json;

    fn message(value: Value) -> Message {
        match parse(value.to_string().as_bytes()) {
            Ok(Body::Single(m)) => m,
            other => unreachable!("{other:?}"),
        }
    }

    fn call(name: &str, arguments: Value) -> Message {
        message(json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": name, "arguments": arguments,
                "_meta": {
                    META_PROTOCOL_VERSION: "2026-07-28",
                    META_CLIENT_INFO: {"name": "agent", "version": "1"},
                    META_CLIENT_CAPABILITIES: {"elicitation": {"url": {}}}
                }
            }
        }))
    }

    fn headers(pairs: &[(&str, &str)]) -> McpHeaders {
        McpHeaders::from_headers(pairs.iter().copied())
    }

    fn region() -> Vec<Mirror> {
        vec![Mirror {
            header: "region".to_owned(),
            path: vec!["region".to_owned()],
        }]
    }

    const GOOD: [(&str, &str); 3] = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "list_payments_by_region"),
    ];

    #[test]
    fn a_stateless_call_reads_its_metadata() {
        let m = call("get_customer", json!({}));
        assert!(m.is_stateless());
        assert_eq!(m.protocol_version(), Some("2026-07-28"));
        assert_eq!(
            m.client_info(),
            Some(&json!({"name": "agent", "version": "1"}))
        );
        assert!(m.accepts_url_elicitation());
        let init = message(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "clientInfo": {"name": "old"}}}));
        assert!(!init.is_stateless());
        assert_eq!(init.protocol_version(), Some("2025-11-25"));
        assert_eq!(init.client_info(), Some(&json!({"name": "old"})));
    }

    #[test]
    fn headers_that_agree_pass_and_every_disagreement_is_named() {
        let m = call(
            "list_payments_by_region",
            json!({"region": "eu-west1", "limit": 3}),
        );
        let mut ok = GOOD.to_vec();
        ok.push(("Mcp-Param-Region", "eu-west1"));
        assert_eq!(
            check_headers(&m, &headers(&ok), Known::Mirrors(&region())),
            Ok(())
        );

        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![
                    ("Mcp-Method", "tools/call"),
                    ("Mcp-Name", "list_payments_by_region"),
                ],
                "MCP-Protocol-Version header is missing",
            ),
            (
                vec![GOOD[0], ("Mcp-Method", "tools/list"), GOOD[2]],
                "Mcp-Method header",
            ),
            (vec![GOOD[0], GOOD[2]], "Mcp-Method header is missing"),
            (vec![GOOD[0], GOOD[1]], "Mcp-Name header is missing"),
            (
                vec![GOOD[0], GOOD[1], ("Mcp-Name", "get_customer")],
                "Mcp-Name header \"get_customer\"",
            ),
            (
                vec![GOOD[0], GOOD[1], ("Mcp-Name", "List_payments_by_region")],
                "does not match",
            ),
            (
                vec![("MCP-Protocol-Version", "2025-11-25"), GOOD[1], GOOD[2]],
                "does not match the body's",
            ),
            (
                vec![GOOD[0], GOOD[1], GOOD[2]],
                "Mcp-Param-region header is missing",
            ),
            (
                vec![GOOD[0], GOOD[1], GOOD[2], ("Mcp-Param-Region", "us-east1")],
                "does not match argument region",
            ),
            (
                vec![
                    GOOD[0],
                    GOOD[1],
                    GOOD[2],
                    ("Mcp-Param-Region", "eu-west1"),
                    ("Mcp-Param-Tenant", "x"),
                ],
                "no parameter of this tool mirrors",
            ),
            (
                vec![
                    GOOD[0],
                    GOOD[1],
                    GOOD[2],
                    ("Mcp-Param-Region", "eu\u{1}west1"),
                ],
                "malformed",
            ),
        ];
        for (pairs, expected) in cases {
            let err =
                check_headers(&m, &headers(&pairs), Known::Mirrors(&region())).expect_err(expected);
            assert_eq!(err.code, HEADER_MISMATCH);
            assert!(err.why.contains(expected), "{pairs:?}: {err:?}");
        }
    }

    #[test]
    fn base64_sentinel_values_are_decoded_before_comparing() {
        let m = call("list_payments_by_region", json!({"region": "Zürich"}));
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("Zürich")
        );
        let mut pairs = GOOD.to_vec();
        pairs.push(("Mcp-Param-Region", &encoded));
        assert_eq!(
            check_headers(&m, &headers(&pairs), Known::Mirrors(&region())),
            Ok(())
        );
        pairs.pop();
        pairs.push(("Mcp-Param-Region", "=?base64?not base64?="));
        assert!(check_headers(&m, &headers(&pairs), Known::Mirrors(&region())).is_err());
    }

    #[test]
    fn mirrored_integers_and_booleans_compare_by_value() {
        let mirrors = vec![
            Mirror {
                header: "limit".to_owned(),
                path: vec!["limit".to_owned()],
            },
            Mirror {
                header: "live".to_owned(),
                path: vec!["opts".to_owned(), "live".to_owned()],
            },
        ];
        let m = call("t", json!({"limit": 42, "opts": {"live": true}}));
        let base = [GOOD[0], GOOD[1], ("Mcp-Name", "t")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            check_headers(&m, &headers(&pairs), Known::Mirrors(&mirrors))
        };
        assert_eq!(
            with(&[("Mcp-Param-Limit", "42"), ("Mcp-Param-Live", "true")]),
            Ok(())
        );
        assert_eq!(
            with(&[("Mcp-Param-Limit", "42.0"), ("Mcp-Param-Live", "true")]),
            Ok(())
        );
        assert!(with(&[("Mcp-Param-Limit", "43"), ("Mcp-Param-Live", "true")]).is_err());
        assert!(with(&[("Mcp-Param-Limit", "42"), ("Mcp-Param-Live", "True")]).is_err());
    }

    #[test]
    fn a_mirror_header_for_a_tool_the_gateway_never_listed_is_refused_not_trusted() {
        let m = call("list_payments_by_region", json!({"region": "eu-west1"}));
        let mut pairs = GOOD.to_vec();
        assert_eq!(check_headers(&m, &headers(&pairs), Known::Unknown), Ok(()));
        pairs.push(("Mcp-Param-Region", "eu-west1"));
        let err = check_headers(&m, &headers(&pairs), Known::Unknown).unwrap_err();
        assert!(err.why.contains("tools/list"), "{err:?}");
    }

    #[test]
    fn session_based_requests_need_no_headers_but_any_they_send_must_agree() {
        let legacy = message(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {}}}));
        assert_eq!(
            check_headers(&legacy, &McpHeaders::default(), Known::Unknown),
            Ok(())
        );
        let lying = headers(&[
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "delete_merchant"),
        ]);
        assert!(check_headers(&legacy, &lying, Known::Unknown).is_err());
        let twice = headers(&[
            ("Mcp-Name", "get_customer"),
            ("mcp-name", "delete_merchant"),
        ]);
        assert!(check_headers(&legacy, &twice, Known::Unknown)
            .unwrap_err()
            .why
            .contains("more than once"));
        // The header says 2026-07-28, the body's `_meta` does not: invalid params, as a
        // server answers it.
        let claims_modern = headers(&[("MCP-Protocol-Version", "2026-07-28")]);
        let err = check_headers(&legacy, &claims_modern, Known::Unknown).unwrap_err();
        assert_eq!(err.code, crate::jsonrpc::INVALID_PARAMS);
        // The tasks extension routes on the task id: checked when sent, never required.
        let get = message(
            json!({"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {
            "taskId": "t-1", "_meta": {META_PROTOCOL_VERSION: "2026-07-28"}}}),
        );
        let base = [
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tasks/get"),
        ];
        assert_eq!(check_headers(&get, &headers(&base), Known::Unknown), Ok(()));
        let mut named = base.to_vec();
        named.push(("Mcp-Name", "t-1"));
        assert_eq!(
            check_headers(&get, &headers(&named), Known::Unknown),
            Ok(())
        );
        named.pop();
        named.push(("Mcp-Name", "t-2"));
        assert!(check_headers(&get, &headers(&named), Known::Unknown).is_err());
        let list = message(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}));
        assert!(check_headers(&list, &headers(&[("Mcp-Name", "x")]), Known::Unknown).is_err());
    }

    #[test]
    fn mirrors_are_read_from_properties_chains_only() {
        let result = json!({"tools": [
            {"name": "a", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "nested": {"type": "object", "properties": {"tenant": {"type": "string", "x-mcp-header": "Tenant"}}},
                "list": {"type": "array", "items": {"type": "string", "x-mcp-header": "Nope"}}
            }}},
            {"name": "b", "inputSchema": {"type": "object"}}
        ]});
        let mirrors = mirrors_of_tools(&result);
        let region = Mirror {
            header: "region".to_owned(),
            path: vec!["region".to_owned()],
        };
        let tenant = Mirror {
            header: "tenant".to_owned(),
            path: vec!["nested".to_owned(), "tenant".to_owned()],
        };
        assert!(mirrors["a"].contains(&region) && mirrors["a"].contains(&tenant));
        assert_eq!(mirrors["a"].len(), 2);
        assert!(mirrors["b"].is_empty());
    }

    #[test]
    fn the_gateway_state_wraps_the_servers_and_a_retry_restores_it() {
        let held = message(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": "refund_payment", "arguments": {"amount": 20000},
                "requestState": "server-state-1",
                "inputResponses": {"confirm": {"action": "accept", "content": {"ok": true}}}
            }}),
        );
        let state = gateway_state("apr_123", &held);
        assert!(state.starts_with("tollgate-approval.v1.apr_123."));
        let retry = message(
            json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
                "name": "refund_payment", "arguments": {"amount": 20000},
                "requestState": state,
                "inputResponses": {APPROVAL_INPUT: {"action": "accept"}}
            }}),
        );
        let (restored, retry_of) = take_gateway_state(&retry).unwrap().unwrap();
        assert_eq!(
            retry_of,
            ApprovalRetry {
                approval_id: "apr_123".to_owned(),
                accepted: true
            }
        );
        let params = restored.params.unwrap();
        assert_eq!(params["requestState"], "server-state-1");
        assert_eq!(
            params["inputResponses"],
            json!({"confirm": {"action": "accept", "content": {"ok": true}}})
        );
        assert_eq!(params["arguments"], json!({"amount": 20000}));

        let plain = message(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "t", "requestState": "server-state-2"}}));
        assert!(take_gateway_state(&plain).is_none());
        for forged in [
            "tollgate-approval.v1.",
            "tollgate-approval.v1.apr_1.!!",
            "tollgate-approval.v1.a b.e30",
        ] {
            let m = message(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "t", "requestState": forged}}));
            assert!(take_gateway_state(&m).unwrap().is_err(), "{forged}");
        }
    }

    #[test]
    fn excerpts_keep_only_the_hash_of_a_request_state() {
        let text =
            r#"data: {"result":{"requestState" : "4111111111111111","x":"\"requestState\""}}"#;
        let out = hash_request_states(text);
        assert!(!out.contains("4111111111111111"), "{out}");
        assert!(out.contains(&state_hash("4111111111111111")), "{out}");
        let cut = hash_request_states(r#"{"result":{"requestState":"4111111111"#);
        assert!(!cut.contains("4111111111"), "{cut}");
    }

    #[test]
    fn recorded_headers_are_decoded() {
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("card 4111 1111 1111 1111")
        );
        let h = headers(&[("Mcp-Param-Note", &encoded)]);
        assert_eq!(h.audit_json()["mcp-param-note"], "card 4111 1111 1111 1111");
    }
}
