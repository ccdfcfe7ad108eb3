//! What the filter does with a request, decided without touching the host: each step returns the
//! audit record to append and what to do once the control plane acknowledged it.

use serde_json::{json, Value};

use crate::config::FilterConfig;
use crate::identity::{Identity, IdentityError};
use crate::jsonrpc::{self, Body, Message};
use crate::mask::Masker;
use crate::record::{self, RequestDecision, RequestInfo};

/// A response the filter sends itself instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    /// A JSON-RPC error answer.
    pub fn jsonrpc_error(
        status: u32,
        id: Option<&Value>,
        code: i64,
        message: &str,
        data: Option<Value>,
    ) -> Self {
        LocalReply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: jsonrpc::error_response(id, code, message, data),
        }
    }
}

/// What to do once the record is durably appended.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Forward,
    Reply(LocalReply),
}

/// One decided step: the record to append first, then what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub record: Value,
    pub next: Next,
}

/// No verified identity: 401 with the `WWW-Authenticate` challenge the MCP authorization spec
/// asks for.
pub fn unauthenticated(config: &FilterConfig, info: &RequestInfo, error: &IdentityError) -> Step {
    let mut challenge = match &config.resource_metadata_url {
        Some(url) => format!("Bearer resource_metadata=\"{url}\""),
        None => "Bearer realm=\"tollgate\"".to_owned(),
    };
    if *error != IdentityError::Missing {
        challenge.push_str(", error=\"invalid_token\"");
    }
    let mut reply = LocalReply::jsonrpc_error(
        401,
        None,
        jsonrpc::GATEWAY_ERROR,
        &format!("authentication required: {}", error.reason()),
        None,
    );
    reply
        .headers
        .push(("www-authenticate".to_owned(), challenge));
    Step {
        record: record::auth_failed(info, &config.upstream, error),
        next: Next::Reply(reply),
    }
}

/// A request body past the configured limit.
pub fn too_large(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
) -> Step {
    let reason = format!("request body exceeds {} bytes", config.max_request_bytes);
    let reply = LocalReply::jsonrpc_error(413, None, jsonrpc::INVALID_REQUEST, &reason, None);
    refuse(config, masker, info, identity, &[], reply, reason)
}

/// A complete request (`body` is `None` for GET and DELETE, which carry none).
pub fn request(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    body: Option<&[u8]>,
) -> Step {
    let parsed = match body {
        None => None,
        Some(bytes) => match jsonrpc::parse(bytes) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let reply =
                    LocalReply::jsonrpc_error(400, None, error.code(), &error.message(), None);
                return refuse(config, masker, info, identity, &[], reply, error.message());
            }
        },
    };
    let messages = parsed.as_ref().map(Body::messages).unwrap_or_default();
    let decision = RequestDecision {
        decision: "allow",
        local_status: None,
        reason: None,
    };
    Step {
        record: record::mcp_request(
            info,
            &config.upstream,
            identity,
            &config.extra_claims,
            messages,
            &decision,
            masker,
        ),
        next: Next::Forward,
    }
}

fn refuse(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    messages: &[Message],
    reply: LocalReply,
    reason: String,
) -> Step {
    let decision = RequestDecision {
        decision: "deny",
        local_status: Some(reply.status),
        reason: Some(reason),
    };
    Step {
        record: record::mcp_request(
            info,
            &config.upstream,
            identity,
            &config.extra_claims,
            messages,
            &decision,
            masker,
        ),
        next: Next::Reply(reply),
    }
}

/// The control plane did not acknowledge the audit record: fail closed.
pub fn audit_unavailable(body: Option<&[u8]>) -> LocalReply {
    let id = body
        .and_then(|b| jsonrpc::parse(b).ok())
        .and_then(|parsed| match parsed {
            Body::Single(m) => m.id,
            Body::Batch(_) => None,
        });
    LocalReply::jsonrpc_error(
        503,
        id.as_ref(),
        jsonrpc::GATEWAY_ERROR,
        "audit log unavailable: request not forwarded",
        Some(json!({ "retryable": true })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn config() -> FilterConfig {
        FilterConfig::from_json(
            br#"{"resourceMetadataUrl":"https://gw/.well-known/oauth-protected-resource"}"#,
        )
        .unwrap()
    }

    fn alice() -> Identity {
        Identity {
            sub: "alice".into(),
            claims: Map::new(),
        }
    }

    #[test]
    fn missing_token_gets_challenge_naming_resource_metadata() {
        let step = unauthenticated(&config(), &RequestInfo::default(), &IdentityError::Missing);
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        assert_eq!(reply.status, 401);
        assert!(reply.headers.contains(&(
            "www-authenticate".into(),
            "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource\"".into()
        )));
        assert_eq!(step.record["event"], "auth.failed");
    }

    #[test]
    fn tool_call_is_forwarded_with_its_record() {
        let body =
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get_customer"}}"#;
        let step = request(
            &config(),
            &Masker::default(),
            &RequestInfo::default(),
            &alice(),
            Some(body),
        );
        assert_eq!(step.next, Next::Forward);
        assert_eq!(step.record["messages"][0]["method"], "tools/call");
        assert_eq!(step.record["messages"][0]["target"], "get_customer");
    }

    #[test]
    fn malformed_body_is_refused_with_parse_error() {
        let step = request(
            &config(),
            &Masker::default(),
            &RequestInfo::default(),
            &alice(),
            Some(b"{nope"),
        );
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], jsonrpc::PARSE_ERROR);
        assert_eq!(step.record["decision"], "deny");
    }

    #[test]
    fn unavailable_audit_answers_503_with_request_id() {
        let reply = audit_unavailable(Some(br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#));
        assert_eq!(reply.status, 503);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["id"], 9);
    }
}

/// How a response body is masked, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Buffered to its end, then masked whole (`application/json`, other text).
    Buffer,
    /// Masked chunk by chunk as it streams (`text/event-stream`).
    Stream,
    /// Passed untouched (a body-less response, or a binary type).
    Pass,
}

impl ResponseMode {
    pub fn for_content_type(content_type: Option<&str>) -> ResponseMode {
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "text/event-stream" => ResponseMode::Stream,
            // No content type: treat as text rather than trust it to be harmless.
            "" => ResponseMode::Buffer,
            ct if ct.starts_with("text/")
                || ct.ends_with("json")
                || ct.ends_with("+json")
                || ct.ends_with("xml")
                || ct == "application/x-www-form-urlencoded"
                || ct == "application/javascript" =>
            {
                ResponseMode::Buffer
            }
            _ => ResponseMode::Pass,
        }
    }
}

/// A compressed response we cannot mask: refuse it rather than pass card numbers through.
pub fn compressed_response_refused(encoding: &str) -> LocalReply {
    LocalReply::jsonrpc_error(
        502,
        None,
        jsonrpc::GATEWAY_ERROR,
        &format!("upstream sent a {encoding}-encoded body, which the gateway cannot inspect"),
        None,
    )
}

#[cfg(test)]
mod response_mode_tests {
    use super::ResponseMode::{self, *};

    #[test]
    fn content_types() {
        let cases = [
            (Some("application/json"), Buffer),
            (Some("application/json; charset=utf-8"), Buffer),
            (Some("Text/Event-Stream"), Stream),
            (Some("text/plain"), Buffer),
            (None, Buffer),
            (Some("image/png"), Pass),
        ];
        for (ct, mode) in cases {
            assert_eq!(ResponseMode::for_content_type(ct), mode, "{ct:?}");
        }
    }
}
