//! Audit records the filter sends to the control plane. Every record carries the PCI DSS 10.2.2
//! fields: who, what event, exact UTC time, success or failure, origin, affected resource.
//! Nothing here may hold a raw card number: arguments pass through the masker first, and every
//! record is finished by [`mask_strings`], which masks every string, key and PAN-like number left
//! in it (ids, methods, session and request ids, the route, identity strings). The route is
//! recorded through [`redact_url`]: query and fragment values become `REDACTED`, userinfo goes.

use serde_json::{json, Map, Value};

use crate::config::FilterConfig;
use crate::identity::{Identity, IdentityError};
use crate::jsonrpc::modern::{self, ApprovalRetry, McpHeaders};
use crate::jsonrpc::Message;
use crate::mask::{MaskReport, Masker};
use crate::policy::Verdict;
pub use tollgate_engine::redact::{redact_url, REDACTED};

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
    /// The MCP headers the client sent (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`,
    /// `Mcp-Param-*`).
    pub mcp_headers: McpHeaders,
    /// A retry that brought back the gateway's multi-round-trip state: the approval it names.
    pub approval_retry: Option<ApprovalRetry>,
}

impl RequestInfo {
    /// The fields every record about this request shares.
    fn base(&self, event: &str, upstream: &str) -> Map<String, Value> {
        let mut record = Map::new();
        record.insert("event".to_owned(), event.into());
        record.insert("time".to_owned(), self.time.clone().into());
        record.insert("httpMethod".to_owned(), self.http_method.clone().into());
        record.insert("route".to_owned(), redact_url(&self.path).into());
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
pub fn auth_failed(
    info: &RequestInfo,
    upstream: &str,
    error: &IdentityError,
    masker: &Masker,
) -> Value {
    let mut record = info.base("auth.failed", upstream);
    record.insert("outcome".to_owned(), "refused".into());
    record.insert("status".to_owned(), 401.into());
    record.insert("reason".to_owned(), error.reason().into());
    let mut record = Value::Object(record);
    mask_strings(&mut record, masker, &mut MaskReport::default());
    record
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
    let messages: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_json(m, verdicts.get(i)))
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
    if !info.mcp_headers.is_empty() {
        // Decoded, so that a mirrored argument is masked here like the argument itself.
        record.insert("mcpHeaders".to_owned(), info.mcp_headers.audit_json());
    }
    if let Some(retry) = &info.approval_retry {
        record.insert(
            "approvalRetry".to_owned(),
            json!({"approvalId": retry.approval_id, "accepted": retry.accepted}),
        );
    }
    // One pass over the whole record masks the arguments, targets and reasons with everything
    // else (ids, methods, the route, session and request ids, identity strings).
    let mut record = Value::Object(record);
    let mut report = MaskReport::default();
    mask_strings(&mut record, masker, &mut report);
    if report.total() > 0 {
        if let Value::Object(map) = &mut record {
            map.insert("maskedPans".to_owned(), masked_counts(&report));
        }
    }
    record
}

/// A held call let through by an approval: written, and durable, before the upstream sees a
/// byte of it, so that the log names the approval, every approver and which use of the grant
/// forwarded the call (the held call's own `mcp.request` record was written before any approval
/// existed). `time` is now; the call arrived at `heldSince`.
pub fn approved_forward(
    info: &RequestInfo,
    config: &FilterConfig,
    identity: &Identity,
    ask: &tollgate_proto::pb::ApprovalRequest,
    status: &tollgate_proto::pb::ApprovalStatus,
    time: &str,
    masker: &Masker,
) -> Value {
    let mut record = info.base("mcp.forwarded", &config.upstream);
    record.insert("heldSince".to_owned(), info.time.clone().into());
    record.insert("time".to_owned(), time.into());
    record.insert("sub".to_owned(), identity.sub.clone().into());
    record.insert(
        "identity".to_owned(),
        identity.audit_json(&config.extra_claims),
    );
    record.insert("decision".to_owned(), "approved".into());
    record.insert("outcome".to_owned(), "forwarded".into());
    record.insert("approvalId".to_owned(), status.approval_id.clone().into());
    record.insert("approvedBy".to_owned(), status.approved_by.clone().into());
    record.insert("grantUse".to_owned(), status.grant_use.into());
    record.insert("rule".to_owned(), ask.rule.clone().into());
    record.insert("method".to_owned(), ask.method.clone().into());
    record.insert("tool".to_owned(), ask.target.clone().into());
    record.insert(
        "argumentsHash".to_owned(),
        ask.arguments_hash.clone().into(),
    );
    let mut record = Value::Object(record);
    mask_strings(&mut record, masker, &mut MaskReport::default());
    record
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

/// One message as recorded, unmasked: the record it goes into is masked whole.
fn message_json(message: &Message, verdict: Option<&Verdict>) -> Value {
    let mut out = json!({ "kind": format!("{:?}", message.kind).to_lowercase() });
    if let Some(id) = &message.id {
        out["id"] = id.clone();
    }
    if let Some(method) = &message.method {
        out["method"] = method.clone().into();
    }
    if let Some(target) = message.target() {
        out["target"] = target.into();
    }
    if let Some(arguments) = message.arguments() {
        out["arguments"] = arguments.clone();
    }
    if let Some(version) = message.protocol_version() {
        out["protocolVersion"] = version.into();
    }
    if let Some(client) = message.client_info() {
        out["clientInfo"] = client.clone();
    }
    // Trace context (W3C, in `_meta` since 2026-07-28): a record can be found from a trace.
    if let Some(meta) = message.meta() {
        for key in ["traceparent", "tracestate"] {
            if let Some(value) = meta.get(key).and_then(Value::as_str) {
                out[key] = value.into();
            }
        }
    }
    // The server's opaque state: only its hash, it may hold anything.
    if let Some(state) = message.request_state() {
        out["requestStateSha256"] = modern::state_hash(state).into();
    }
    if let Some(responses) = message
        .params
        .as_ref()
        .and_then(|p| p.get("inputResponses"))
    {
        out["inputResponses"] = responses.clone();
    }
    if let Some(verdict) = verdict {
        out["decision"] = verdict.action.name().into();
        if let Some(rule) = &verdict.rule {
            out["rule"] = rule.clone().into();
        }
        if let Some(reason) = &verdict.reason {
            out["reason"] = reason.as_str().into();
        }
    }
    out
}

/// Masks, in place, every card number (and whatever else `masker` detects) left anywhere in a
/// record: string values after unescaping, object keys, and number tokens (a PAN-like number
/// becomes a masked string: a JSON-RPC id `4111111111111111` is recorded as `"************1111"`).
/// Detection is the masker's own ([`Masker::mask_json`]); a value with nothing to mask is left
/// exactly as it was, and masking is idempotent, so already masked parts only cost a scan.
///
/// Adds what it found to `report` and returns how many things it masked (card numbers and other
/// detectors' matches).
pub fn mask_strings(value: &mut Value, masker: &Masker, report: &mut MaskReport) -> u64 {
    let before = report.total() + report.detector_total();
    let text = to_json(value);
    let masked = match masker.mask_json(&text, report) {
        Ok(masked) => masked,
        // Serialised JSON is always JSON; if the masker ever disagreed, mask it as text.
        Err(_) => masker.mask_body(&text, report),
    };
    if masked != text {
        // Masking keeps JSON valid; if it ever did not, keep the masked text rather than the value.
        *value = serde_json::from_slice(&masked)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&masked).into_owned()));
    }
    (report.total() + report.detector_total()).saturating_sub(before)
}

/// A record as the bytes it is sent as. `serde_json::to_vec`, not `to_string`: writing through
/// `fmt::Write` made serialising a record a tenth of the filter's own time per call.
pub fn to_json(value: &Value) -> Vec<u8> {
    // Serialising a `Value` into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
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

    const PANS: [&str; 4] = [
        "4111111111111111",
        "5500 0000 0000 0004",
        "5500000000000004",
        "4111 1111 1111 1111",
    ];

    fn assert_no_pan(text: &str) {
        for pan in PANS {
            assert!(!text.contains(pan), "{pan} in {text}");
        }
    }

    fn request_info(path: &str) -> RequestInfo {
        RequestInfo {
            time: "2025-01-31T12:00:00.000001Z".into(),
            http_method: "POST".into(),
            path: path.into(),
            source: Some("10.0.0.1:5555".into()),
            node: Some("node-1".into()),
            session_id: Some("sess-4111111111111111".into()),
            request_id: Some("5500 0000 0000 0004".into()),
            peer_principal: Some("spiffe://cluster.local/ns/a/sa/4111111111111111".into()),
            ..RequestInfo::default()
        }
    }

    #[test]
    fn mask_strings_masks_strings_keys_and_pan_numbers() {
        let masker = Masker::default();
        let mut value = json!({
            "id": 4111111111111111u64,
            "small": 42,
            "method": "tools/4111111111111111",
            "nested": {"list": ["5500 0000 0000 0004", {"4111111111111111": true}]},
            "float": 4111111111111111.0,
        });
        let mut report = MaskReport::default();
        let n = mask_strings(&mut value, &masker, &mut report);
        let text = value.to_string();
        assert_no_pan(&text);
        assert_eq!(
            value["id"], "************1111",
            "a PAN-like number becomes a masked string"
        );
        assert_eq!(value["small"], 42);
        assert_eq!(value["nested"]["list"][0], "**** **** **** 0004");
        assert_eq!(n, 5, "{text}");
        assert_eq!(report.total(), 5);
        assert_eq!(report.by_brand.get("visa"), Some(&4));
        // Idempotent: a second pass finds nothing and changes nothing.
        let again = value.clone();
        assert_eq!(mask_strings(&mut value, &masker, &mut report), 0);
        assert_eq!(value, again);
    }

    #[test]
    fn mask_strings_leaves_a_clean_value_alone() {
        let mut value = json!({"event": "mcp.request", "route": "/mcp", "id": 7, "time": "2025-01-31T12:00:00.000001Z"});
        let before = value.clone();
        let mut report = MaskReport::default();
        assert_eq!(mask_strings(&mut value, &Masker::default(), &mut report), 0);
        assert_eq!(value, before);
        assert_eq!(report, MaskReport::default());
    }

    #[test]
    fn every_string_of_an_auth_failure_is_masked() {
        let info = request_info("/mcp/4111111111111111?access_token=4111111111111111");
        let record = auth_failed(
            &info,
            "payments",
            &IdentityError::Missing,
            &Masker::default(),
        );
        let text = record.to_string();
        assert_no_pan(&text);
        assert_eq!(
            record["route"],
            "/mcp/************1111?access_token=REDACTED"
        );
        assert_eq!(record["session"], "sess-************1111");
        assert_eq!(record["requestId"], "**** **** **** 0004");
        assert_eq!(record["event"], "auth.failed");
        assert_eq!(record["status"], 401);
    }

    #[test]
    fn request_record_masks_ids_methods_and_metadata() {
        let Body::Single(m) = parse(br#"{"jsonrpc":"2.0","id":4111111111111111,"method":"tools/call","params":{"name":"get_card","arguments":{"pan":"5500 0000 0000 0004"}}}"#).unwrap() else { panic!() };
        let Body::Single(m2) =
            parse(br#"{"jsonrpc":"2.0","id":"4111-1111-1111-1111","method":"x/5500000000000004"}"#)
                .unwrap()
        else {
            panic!()
        };
        let identity = Identity {
            sub: "4111111111111111@example.com".into(),
            claims: Map::new(),
            accountable: None,
        };
        let decision = RequestDecision {
            decision: "allow",
            local_status: None,
            reason: None,
        };
        let record = mcp_request(
            &request_info("/mcp?card=4111111111111111"),
            &FilterConfig::from_json(b"").unwrap(),
            &identity,
            &[m, m2],
            &[],
            &decision,
            &Masker::default(),
        );
        let text = record.to_string();
        assert_no_pan(&text);
        assert!(!text.contains("4111-1111-1111-1111"), "{text}");
        assert_eq!(record["messages"][0]["id"], "************1111");
        assert_eq!(record["messages"][1]["id"], "****-****-****-1111");
        assert_eq!(record["messages"][1]["method"], "x/************0004");
        assert_eq!(record["route"], "/mcp?card=REDACTED");
        assert_eq!(record["sub"], "************1111@example.com");
        // Visa: the two ids, the session, the peer, `sub` and the identity's `sub`; Mastercard:
        // the argument, the method and the request id.
        assert_eq!(record["maskedPans"]["visa"], 6, "{text}");
        assert_eq!(record["maskedPans"]["mastercard"], 3, "{text}");
    }

    #[test]
    fn response_record_masks_metadata_and_keeps_the_answer_counts() {
        let identity = Identity {
            sub: "alice".into(),
            claims: Map::new(),
            accountable: None,
        };
        let mut masked = MaskReport::default();
        Masker::default().mask_body(b"4111111111111111", &mut masked);
        let summary = ResponseSummary {
            time: "t".into(),
            status: Some(200),
            bytes: 16,
            duration_micros: 5,
            masked: &masked,
            excerpt: b"************1111",
            streamed: false,
        };
        let record = mcp_response(
            &request_info("/mcp/4111111111111111?t=1"),
            &FilterConfig::from_json(b"").unwrap(),
            &identity,
            &summary,
            &Masker::default(),
        );
        let text = record.to_string();
        assert_no_pan(&text);
        assert_eq!(record["route"], "/mcp/************1111?t=REDACTED");
        assert_eq!(record["maskedPans"]["visa"], 1, "the answer's count only");
        assert_eq!(record["content"], "************1111");
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

/// An answer opened an MCP session: the session is bound to the caller before the answer
/// (and the session id in it) leaves the gateway.
pub fn session_opened(
    info: &RequestInfo,
    config: &FilterConfig,
    identity: &Identity,
    session_id: &str,
    time: &str,
    masker: &Masker,
) -> Value {
    let mut record = info.base("mcp.session.opened", &config.upstream);
    record.insert("time".to_owned(), time.into());
    record.insert("requestTime".to_owned(), info.time.clone().into());
    record.insert("session".to_owned(), session_id.into());
    record.insert("sub".to_owned(), identity.sub.clone().into());
    record.insert(
        "identity".to_owned(),
        identity.audit_json(&config.extra_claims),
    );
    record.insert("outcome".to_owned(), "bound".into());
    let mut record = Value::Object(record);
    mask_strings(&mut record, masker, &mut MaskReport::default());
    record
}

/// The answer to an MCP request, as the client received it (masked).
pub fn mcp_response(
    info: &RequestInfo,
    config: &FilterConfig,
    identity: &Identity,
    summary: &ResponseSummary<'_>,
    masker: &Masker,
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
    // The fields about the request; the answer below is already masked and not scanned again.
    let mut record = Value::Object(record);
    mask_strings(&mut record, masker, &mut MaskReport::default());
    let Value::Object(mut record) = record else {
        return record;
    };
    record.insert("maskedPans".to_owned(), masked_counts(summary.masked));
    let cut = summary.excerpt.len().min(RESPONSE_EXCERPT_BYTES);
    // The excerpt is already masked; cutting it can only shorten a masked number. A server's
    // multi-round-trip state passed unmasked and is kept only as its hash.
    let excerpt = String::from_utf8_lossy(&summary.excerpt[..cut]);
    record.insert(
        "content".to_owned(),
        modern::hash_request_states(&excerpt).into_owned().into(),
    );
    if cut < summary.excerpt.len() {
        record.insert("contentTruncated".to_owned(), true.into());
    }
    Value::Object(record)
}
