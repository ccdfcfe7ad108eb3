//! Logs every HTTP request that reaches the server, before rmcp handles it.
//!
//! It sits in front of the rmcp service (and the 404 fallback for other paths) as an axum
//! middleware because the tests need proof of what arrived on the wire (a call the gateway blocked
//! must never appear here), independent of how rmcp routes or rejects it. Each JSON-RPC message
//! becomes one JSON line on stderr and, when configured, one line appended to the request-log file;
//! a request without a JSON-RPC body (GET, DELETE, an empty or unparsable POST) becomes one line too.
//!
//! Every line carries what the gateway's audit records are checked against: the HTTP method, the
//! request target (path with query), Envoy's `x-request-id`, the SHA-256 of the exact body bytes
//! received and the receive time in microseconds since the Unix epoch. Requests that carry the
//! MCP request-metadata headers (`MCP-Protocol-Version`, and from 2026-07-28 `Mcp-Method`,
//! `Mcp-Name`, `Mcp-Param-*`) also get them, so a test can check what a gateway forwarded; a
//! multi round-trip retry also shows its `inputResponses` and `requestState`.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Bodies larger than this are refused before logging; far above what rmcp itself accepts (4 MiB).
const MAX_LOGGED_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Where request lines go besides stderr.
#[derive(Clone, Default)]
pub struct RequestLog {
    file: Option<Arc<Mutex<File>>>,
}

impl RequestLog {
    /// Opens (creating, appending) the request-log file, or logs to stderr only when `path` is None.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(path) => Some(Arc::new(Mutex::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))),
            None => None,
        };
        Ok(Self { file })
    }

    fn write(&self, record: &Value) {
        let line = record.to_string();
        eprintln!("payments-server request {line}");
        if let Some(file) = &self.file {
            // One write per line on an O_APPEND file keeps lines whole even with concurrent requests.
            let mut buf = line.into_bytes();
            buf.push(b'\n');
            let result = match file.lock() {
                Ok(mut f) => f.write_all(&buf),
                Err(poisoned) => poisoned.into_inner().write_all(&buf),
            };
            if let Err(err) = result {
                eprintln!("payments-server: cannot append to request log: {err}");
            }
        }
    }
}

/// The axum middleware: log, then hand the request (with its body put back) to the service.
pub async fn log_requests(State(log): State<RequestLog>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let ts_us = now_us();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut base = json!({
        "ts_ms": ts_us / 1000,
        "ts_us": ts_us,
        "http": parts.method.as_str(),
        "path": parts.uri.path(),
        "target": target,
        "x_request_id": header("x-request-id"),
        "session": header("mcp-session-id"),
    });
    let mcp_headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter(|(name, _)| is_mcp_metadata_header(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect();
    if !mcp_headers.is_empty() {
        base["mcp_headers"] = Value::Object(mcp_headers);
    }

    let bytes = match to_bytes(body, MAX_LOGGED_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => {
            base["error"] = json!(format!("unreadable body: {err}"));
            log.write(&base);
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body unreadable or too large",
            )
                .into_response();
        }
    };
    base["bytes"] = json!(bytes.len());
    base["body_sha256"] = json!(hex::encode(Sha256::digest(&bytes)));

    if !bytes.is_empty() {
        for record in records_for_body(&base, &bytes) {
            log.write(&record);
        }
    } else {
        // GET (SSE stream), DELETE (end session), an empty POST: no JSON-RPC message, but the
        // request reached the server all the same. A body with any method is parsed above.
        log.write(&base);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The headers MCP mirrors from the body (names arrive lower-cased from hyper).
fn is_mcp_metadata_header(name: &str) -> bool {
    matches!(name, "mcp-protocol-version" | "mcp-method" | "mcp-name")
        || name.starts_with("mcp-param-")
}

/// One log record per JSON-RPC message in `body` (a batch gives several).
fn records_for_body(base: &Value, body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(messages)) => messages.iter().map(|m| record_for(base, m)).collect(),
        Ok(message) => vec![record_for(base, &message)],
        Err(err) => {
            let mut record = base.clone();
            record["error"] = json!(format!("body is not JSON: {err}"));
            record["bytes"] = json!(body.len());
            vec![record]
        }
    }
}

fn record_for(base: &Value, message: &Value) -> Value {
    let mut record = base.clone();
    let Some(obj) = record.as_object_mut() else {
        return record;
    };
    let method = message.get("method").and_then(Value::as_str);
    let id = message.get("id").cloned();
    let kind = match (method.is_some(), id.is_some()) {
        (true, true) => "request",
        (true, false) => "notification",
        (false, _) => "response",
    };
    obj.insert("kind".into(), json!(kind));
    obj.insert("method".into(), json!(method));
    obj.insert("id".into(), id.unwrap_or(Value::Null));
    let params = message.get("params");
    // What the call acts on, whatever the method calls it: the gateway's `target`.
    let rpc_target = match method {
        Some("resources/read") => params.and_then(|p| p.get("uri")).cloned(),
        _ => params.and_then(|p| p.get("name")).cloned(),
    };
    obj.insert("rpc_target".into(), rpc_target.unwrap_or(Value::Null));
    let param = |key: &str| params.and_then(|p| p.get(key)).cloned();
    match method {
        Some("tools/call") => {
            insert_some(obj, "tool", param("name"));
            insert_some(obj, "arguments", param("arguments"));
        }
        Some("resources/read") => insert_some(obj, "uri", param("uri")),
        Some("prompts/get") => {
            insert_some(obj, "prompt", param("name"));
            insert_some(obj, "arguments", param("arguments"));
        }
        _ => {}
    }
    if matches!(
        method,
        Some("tools/call" | "resources/read" | "prompts/get")
    ) {
        insert_some(obj, "input_responses", param("inputResponses"));
        insert_some(obj, "request_state", param("requestState"));
    }
    record
}

fn insert_some(obj: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        obj.insert(key.to_owned(), value);
    }
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"ts_ms": 1, "http": "POST", "path": "/mcp", "session": "s1"})
    }

    #[test]
    fn tools_call_logs_tool_and_arguments() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_customer","arguments":{"customer_id":"cus_1"}}}"#;
        let records = records_for_body(&base(), body);
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["kind"], "request");
        assert_eq!(r["method"], "tools/call");
        assert_eq!(r["id"], 7);
        assert_eq!(r["tool"], "get_customer");
        assert_eq!(r["rpc_target"], "get_customer");
        assert_eq!(r["arguments"]["customer_id"], "cus_1");
        assert_eq!(r["session"], "s1");
    }

    #[test]
    fn batches_notifications_and_garbage() {
        let body = br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"payments://policy"}}]"#;
        let records = records_for_body(&base(), body);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["kind"], "notification");
        assert_eq!(records[1]["uri"], "payments://policy");
        assert_eq!(records[1]["rpc_target"], "payments://policy");

        let records = records_for_body(&base(), b"{nope");
        assert_eq!(records.len(), 1);
        assert!(records[0]["error"].is_string());
        assert!(records[0]["method"].is_null());
    }

    #[test]
    fn retries_log_their_input_responses_and_state() {
        let body = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"export_statement","arguments":{"customer_id":"cus_1"},"inputResponses":{"statement_month":{"action":"accept","content":{"month":"2026-11"}}},"requestState":"rs1.x.y"}}"#;
        let r = &records_for_body(&base(), body)[0];
        assert_eq!(r["input_responses"]["statement_month"]["action"], "accept");
        assert_eq!(r["request_state"], "rs1.x.y");
        assert!(is_mcp_metadata_header("mcp-param-region"));
        assert!(!is_mcp_metadata_header("mcp-session-id"));
    }

    #[test]
    fn body_hash_is_hex_sha256() {
        // The SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            hex::encode(Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
