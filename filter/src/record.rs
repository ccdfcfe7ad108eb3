//! Audit records the filter sends to the control plane. Every record carries the PCI DSS 10.2.2
//! fields: who, what event, exact UTC time, success or failure, origin, affected resource.
//! Nothing here may hold a raw card number: arguments pass through the masker first, and every
//! record is finished by [`mask_strings`], which masks every string, key and PAN-like number left
//! in it (ids, methods, session and request ids, the route, identity strings). The route is
//! recorded through [`redact_url`]: query and fragment values become `REDACTED`, userinfo goes.

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
    let text = value.to_string();
    let masked = match masker.mask_json(text.as_bytes(), report) {
        Ok(masked) => masked,
        // Serialised JSON is always JSON; if the masker ever disagreed, mask it as text.
        Err(_) => masker.mask_body(text.as_bytes(), report),
    };
    if masked != text.as_bytes() {
        // Masking keeps JSON valid; if it ever did not, keep the masked text rather than the value.
        *value = serde_json::from_slice(&masked)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&masked).into_owned()));
    }
    (report.total() + report.detector_total()).saturating_sub(before)
}

/// What replaces every query and fragment value in a recorded URL.
pub const REDACTED: &str = "REDACTED";

/// A URL or request path as it may be recorded: the path is kept, every query (and fragment)
/// parameter keeps its name but its value becomes `REDACTED` (`/mcp?access_token=REDACTED`; a
/// parameter without `=` is a value and becomes `REDACTED`), and userinfo is removed from every
/// `scheme://user:password@host` in it. Percent-encoded characters in the path and the parameter
/// names are decoded (except `/ ? # % & =` and controls), and `+` in names read as a space, so
/// that a card number hidden as `4111%201111…` or `%34%31…` is plain for the masker that runs
/// over every record after this. Pure: no masking here.
pub fn redact_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len() + 16);
    out.push_str(&decode_percent(&strip_userinfo(base), false));
    if let Some(query) = query {
        out.push('?');
        redact_parameters(query, &mut out);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        redact_parameters(fragment, &mut out);
    }
    out
}

/// `a=1&b&c=` → `a=REDACTED&REDACTED&c=REDACTED`; empty parts stay empty.
fn redact_parameters(parameters: &str, out: &mut String) {
    for (i, part) in parameters.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if part.is_empty() {
            continue;
        }
        if let Some((name, _)) = part.split_once('=') {
            out.push_str(&decode_percent(name, true));
            out.push('=');
        }
        out.push_str(REDACTED);
    }
}

/// Removes the userinfo of every `scheme://userinfo@authority` in `text`.
fn strip_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let authority_end = after.find('/').unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => out.push_str(&authority[userinfo_end + 1..]),
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Decodes `%XX` escapes, except those for `/ ? # % & =` and control characters (which would
/// change what the text means or how it reads); `+` becomes a space when `plus_is_space`. Decoded
/// bytes that are not UTF-8 are escaped again.
fn decode_percent(text: &str, plus_is_space: bool) -> String {
    let has_plus = plus_is_space && text.contains('+');
    if !has_plus && !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if hex.iter().all(u8::is_ascii_hexdigit) => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|d| {
                    !matches!(d, b'/' | b'?' | b'#' | b'%' | b'&' | b'=') && !d.is_ascii_control()
                }),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(if plus_is_space && b == b'+' { b' ' } else { b });
                i += 1;
            }
        }
    }
    utf8_or_escaped(&out)
}

/// `bytes` as text, with every byte that is not part of valid UTF-8 written as `%XX`.
fn utf8_or_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                return out;
            }
            Err(error) => {
                let (good, bad) = rest.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = error.error_len().unwrap_or(bad.len()).min(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("%{b:02X}"));
                }
                rest = &bad[n..];
            }
        }
    }
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
        }
    }

    #[test]
    fn redact_url_replaces_query_values_and_keeps_names() {
        assert_eq!(redact_url("/mcp"), "/mcp");
        assert_eq!(
            redact_url("/mcp?access_token=eyJhbGciOi.x.y&x=1"),
            "/mcp?access_token=REDACTED&x=REDACTED"
        );
        assert_eq!(
            redact_url("/mcp?flag&a=&&b=c"),
            "/mcp?REDACTED&a=REDACTED&&b=REDACTED"
        );
        assert_eq!(redact_url("/mcp?"), "/mcp?");
        assert_eq!(redact_url(""), "");
        // A value may hold `=`: everything after the first one goes.
        assert_eq!(redact_url("/a?t=x=y"), "/a?t=REDACTED");
    }

    #[test]
    fn redact_url_removes_userinfo() {
        assert_eq!(
            redact_url("https://user:pa55@hooks.example.com:8443/alert?key=s3cret"),
            "https://hooks.example.com:8443/alert?key=REDACTED"
        );
        assert_eq!(redact_url("http://token@host"), "http://host");
        assert_eq!(
            redact_url("http://a:b@c@host/p"),
            "http://host/p",
            "the last @ ends the userinfo"
        );
        // A URL inside the path too.
        assert_eq!(
            redact_url("/go/https://u:p@evil.example/x"),
            "/go/https://evil.example/x"
        );
        assert_eq!(
            redact_url("http://host/a@b"),
            "http://host/a@b",
            "an @ in the path stays"
        );
    }

    #[test]
    fn redact_url_redacts_the_fragment() {
        assert_eq!(
            redact_url("/cb#access_token=abc&state=4111111111111111"),
            "/cb#access_token=REDACTED&state=REDACTED"
        );
        assert_eq!(redact_url("/page#section"), "/page#REDACTED");
        assert_eq!(redact_url("/page?q=1#"), "/page?q=REDACTED#");
    }

    #[test]
    fn redact_url_decodes_percent_encoded_card_numbers_for_the_masker() {
        // In a query value it is gone anyway.
        assert_eq!(
            redact_url("/mcp?card=4111%201111%201111%201111"),
            "/mcp?card=REDACTED"
        );
        // In a name or the path it is decoded, so that the masker sees it.
        assert_eq!(
            redact_url("/mcp?4111+1111+1111+1111=1&%34%31%31%31111111111111=2"),
            "/mcp?4111 1111 1111 1111=REDACTED&4111111111111111=REDACTED"
        );
        assert_eq!(
            redact_url("/mcp/4111%201111%201111%201111"),
            "/mcp/4111 1111 1111 1111"
        );
        // Separators and escapes that carry meaning stay encoded; bad escapes stay as they are.
        assert_eq!(redact_url("/a%2Fb%25%3F%23%0A"), "/a%2Fb%25%3F%23%0A");
        assert_eq!(redact_url("/a%zz%4"), "/a%zz%4");
        // Decoded bytes that are not UTF-8 are escaped again; the rest is still decoded.
        assert_eq!(redact_url("/%FF%34%31"), "/%FF41");
        assert_eq!(redact_url("/caf%C3%A9"), "/café");
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
