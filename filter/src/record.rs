//! Audit records the filter sends to the control plane. Every record carries the PCI DSS 10.2.2
//! fields: who, what event, exact UTC time, success or failure, origin, affected resource.
//! Nothing here may hold a raw card number: arguments pass through the masker first.

use serde_json::{json, Map, Value};

use crate::config::FilterConfig;
use crate::identity::{Identity, IdentityError};
use crate::jsonrpc::Message;
use crate::mask::{MaskReport, Masker};
use crate::policy::Verdict;

/// Where and when a request arrived, read from the host once per request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// RFC 3339 UTC time with microseconds, from the host clock.
    pub time: String,
    pub http_method: String,
    pub path: String,
    /// Downstream peer address.
    pub source: Option<String>,
    /// Envoy node id.
    pub node: Option<String>,
    /// `Mcp-Session-Id` the client sent.
    pub session_id: Option<String>,
    /// Envoy's `x-request-id`.
    pub request_id: Option<String>,
    /// mTLS peer (an Istio SPIFFE id) when the connection had one.
    pub peer_principal: Option<String>,
    /// The verified `sub` that opened the session named by `session_id`, when known.
    pub session_owner: Option<String>,
}

impl RequestInfo {
    /// The fields every record about this request shares.
    fn base(&self, event: &str, upstream: &str) -> Map<String, Value> {
        let mut record = Map::new();
        record.insert("event".to_owned(), event.into());
        record.insert("time".to_owned(), self.time.clone().into());
        record.insert("httpMethod".to_owned(), self.http_method.clone().into());
        record.insert("route".to_owned(), self.path.clone().into());
        record.insert("upstream".to_owned(), upstream.into());
        let optional = [
            ("source", &self.source),
            ("node", &self.node),
            ("session", &self.session_id),
            ("requestId", &self.request_id),
            ("peer", &self.peer_principal),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                record.insert(key.to_owned(), value.clone().into());
            }
        }
        record
    }
}

/// A refused authentication attempt.
pub fn auth_failed(info: &RequestInfo, upstream: &str, error: &IdentityError) -> Value {
    let mut record = info.base("auth.failed", upstream);
    record.insert("outcome".to_owned(), "refused".into());
    record.insert("status".to_owned(), 401.into());
    record.insert("reason".to_owned(), error.reason().into());
    Value::Object(record)
}

/// What the gateway decided about a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDecision<'a> {
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// HTTP status of a local reply; `None` when the request is forwarded.
    pub local_status: Option<u32>,
    pub reason: Option<String>,
}

/// An MCP request (one HTTP request: a message, a batch, or a GET/DELETE without a body).
pub fn mcp_request(
    info: &RequestInfo,
    config: &FilterConfig,
    identity: &Identity,
    messages: &[Message],
    verdicts: &[Verdict],
    decision: &RequestDecision<'_>,
    masker: &Masker,
) -> Value {
    let mut record = info.base("mcp.request", &config.upstream);
    record.insert("sub".to_owned(), identity.sub.clone().into());
    record.insert(
        "identity".to_owned(),
        identity.audit_json(&config.extra_claims),
    );
    let mut report = MaskReport::default();
    let messages: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_json(m, verdicts.get(i), masker, &mut report))
        .collect();
    record.insert("messages".to_owned(), messages.into());
    record.insert("decision".to_owned(), decision.decision.into());
    match decision.local_status {
        Some(status) => {
            record.insert("outcome".to_owned(), "refused".into());
            record.insert("status".to_owned(), status.into());
        }
        None => {
            record.insert("outcome".to_owned(), "forwarded".into());
        }
    }
    if let Some(reason) = &decision.reason {
        record.insert("reason".to_owned(), reason.clone().into());
    }
    if report.total() > 0 {
        record.insert("maskedPans".to_owned(), masked_counts(&report));
    }
    Value::Object(record)
}

/// Masked-PAN counts per brand, for records.
pub fn masked_counts(report: &MaskReport) -> Value {
    let counts: Map<String, Value> = report
        .by_brand
        .iter()
        .map(|(brand, n)| ((*brand).to_owned(), (*n).into()))
        .collect();
    Value::Object(counts)
}

fn message_json(
    message: &Message,
    verdict: Option<&Verdict>,
    masker: &Masker,
    report: &mut MaskReport,
) -> Value {
    let mut out = json!({ "kind": format!("{:?}", message.kind).to_lowercase() });
    if let Some(id) = &message.id {
        out["id"] = id.clone();
    }
    if let Some(method) = &message.method {
        out["method"] = method.clone().into();
    }
    if let Some(target) = message.target() {
        out["target"] = mask_value(&Value::from(target), masker, report);
    }
    if let Some(arguments) = message.arguments() {
        out["arguments"] = mask_value(arguments, masker, report);
    }
    if let Some(verdict) = verdict {
        out["decision"] = verdict.action.name().into();
        if let Some(rule) = &verdict.rule {
            out["rule"] = rule.clone().into();
        }
        if let Some(reason) = &verdict.reason {
            out["reason"] = mask_value(&Value::from(reason.as_str()), masker, report);
        }
    }
    out
}

/// A JSON value with every card number masked.
fn mask_value(value: &Value, masker: &Masker, report: &mut MaskReport) -> Value {
    let masked = masker.mask_body(value.to_string().as_bytes(), report);
    // Masking keeps JSON valid; if it ever did not, keep the masked text rather than the value.
    serde_json::from_slice(&masked)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&masked).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{parse, Body};

    #[test]
    fn request_record_masks_arguments() {
        let Body::Single(m) = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"update_payout_account","arguments":{"account_number":"4111111111111111"}}}"#).unwrap() else { panic!() };
        let identity = Identity {
            sub: "alice".into(),
            claims: Map::new(),
            accountable: None,
        };
        let info = RequestInfo {
            time: "t".into(),
            http_method: "POST".into(),
            path: "/mcp".into(),
            ..Default::default()
        };
        let decision = RequestDecision {
            decision: "allow",
            local_status: None,
            reason: None,
        };
        let record = mcp_request(
            &info,
            &FilterConfig::from_json(b"").unwrap(),
            &identity,
            &[m],
            &[],
            &decision,
            &Masker::default(),
        );
        let text = record.to_string();
        assert!(!text.contains("4111111111111111"), "{text}");
        assert_eq!(record["messages"][0]["target"], "update_payout_account");
        assert_eq!(record["sub"], "alice");
        assert_eq!(record["outcome"], "forwarded");
        assert_eq!(record["maskedPans"]["visa"], 1);
    }
}

/// Longest masked answer excerpt kept in a response record.
pub const RESPONSE_EXCERPT_BYTES: usize = 16 * 1024;

/// What the gateway passed back for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseSummary<'a> {
    /// RFC 3339 UTC time the answer was complete.
    pub time: String,
    pub status: Option<u32>,
    /// Bytes sent to the client (after masking).
    pub bytes: usize,
    pub duration_micros: u64,
    pub masked: &'a MaskReport,
    /// The start of the masked answer.
    pub excerpt: &'a [u8],
    /// Streamed (SSE) rather than buffered whole.
    pub streamed: bool,
}

/// The answer to an MCP request, as the client received it (masked).
pub fn mcp_response(
    info: &RequestInfo,
    config: &FilterConfig,
    identity: &Identity,
    summary: &ResponseSummary<'_>,
) -> Value {
    let mut record = info.base("mcp.response", &config.upstream);
    record.insert("time".to_owned(), summary.time.clone().into());
    record.insert("requestTime".to_owned(), info.time.clone().into());
    record.insert("sub".to_owned(), identity.sub.clone().into());
    if let Some(status) = summary.status {
        record.insert("status".to_owned(), status.into());
    }
    record.insert("bytes".to_owned(), summary.bytes.into());
    record.insert("durationMicros".to_owned(), summary.duration_micros.into());
    record.insert(
        "mode".to_owned(),
        if summary.streamed {
            "streamed"
        } else {
            "buffered"
        }
        .into(),
    );
    record.insert("maskedPans".to_owned(), masked_counts(summary.masked));
    let cut = summary.excerpt.len().min(RESPONSE_EXCERPT_BYTES);
    // The excerpt is already masked; cutting it can only shorten a masked number.
    record.insert(
        "content".to_owned(),
        String::from_utf8_lossy(&summary.excerpt[..cut])
            .into_owned()
            .into(),
    );
    if cut < summary.excerpt.len() {
        record.insert("contentTruncated".to_owned(), true.into());
    }
    Value::Object(record)
}
