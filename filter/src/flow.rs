//! What the filter does with a request, decided without touching the host: each step returns the
//! audit record to append and what to do once the control plane acknowledged it.

use serde_json::{json, Value};

use crate::approval::{self, Ask};
use crate::config::FilterConfig;
use crate::identity::{Identity, IdentityError};
use crate::jsonrpc::modern::{self, Known, Mirrors};
use crate::jsonrpc::{self, Body, Kind, Message};
use crate::mask::{Handling, Masker};
use crate::policy::{BatchPlan, CallContext, Decision, Policy, Verdict};
use crate::record::{self, RequestDecision, RequestInfo};
use tollgate_proto::pb::{SessionCheck, SessionStep};

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
    /// Hold the call until the approval is decided (see [`crate::approval`]).
    Approve(Box<Ask>),
}

/// One decided step: the record to append first, then what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub record: Value,
    pub next: Next,
}

/// The session step a decided request takes, for the control plane to check with its record:
/// none for a request that is refused anyway or names no session.
pub fn session_check(info: &RequestInfo, identity: &Identity, next: &Next) -> Option<SessionCheck> {
    if matches!(next, Next::Reply(_)) {
        return None;
    }
    let session_id = info.session_id.clone()?;
    let step = if info.http_method.eq_ignore_ascii_case("DELETE") {
        SessionStep::End
    } else {
        SessionStep::Use
    };
    Some(SessionCheck {
        session_id,
        subject: identity.session_subject(),
        step: step.into(),
    })
}

/// The session step of an answer that names a session other than the one its request used:
/// it opens that session for the caller.
pub fn session_opened(
    info: &RequestInfo,
    identity: &Identity,
    answered_session: Option<&str>,
) -> Option<SessionCheck> {
    let session_id = answered_session.filter(|s| Some(*s) != info.session_id.as_deref())?;
    Some(SessionCheck {
        session_id: session_id.to_owned(),
        subject: identity.session_subject(),
        step: SessionStep::Open.into(),
    })
}

/// The control plane refused the request's session (unknown, ended, idle too long, or another
/// identity's): 404, which tells an MCP client to start a new session. The reason is the same
/// for each, so that a caller learns nothing about sessions that are not theirs; the record
/// says which it was.
pub fn session_refused(body: Option<&[u8]>) -> LocalReply {
    LocalReply::jsonrpc_error(
        404,
        single_request_id(body).as_ref(),
        jsonrpc::GATEWAY_ERROR,
        "session not found: start a new session",
        None,
    )
}

/// No verified identity: 401 with the `WWW-Authenticate` challenge the MCP authorization spec
/// asks for.
pub fn unauthenticated(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    error: &IdentityError,
) -> Step {
    // A path with no MCP endpoint is answered for what it is, token or not: a legacy client's
    // `GET /sse` is told to use streamable HTTP, not to fix a token that would not help.
    if route_path(&info.path) != config.mcp_path {
        let reason = not_found_reason(config, &info.path);
        let reply = LocalReply::jsonrpc_error(404, None, jsonrpc::GATEWAY_ERROR, &reason, None);
        let mut record = record::auth_failed(info, &config.upstream, error, masker);
        record["status"] = 404.into();
        record["reason"] = format!("{reason}; {}", error.reason()).into();
        return Step {
            record,
            next: Next::Reply(reply),
        };
    }
    let mut challenge = match &config.resource_metadata_url {
        Some(url) => format!("Bearer resource_metadata=\"{url}\""),
        None => "Bearer realm=\"tollgate\"".to_owned(),
    };
    if *error != IdentityError::Missing {
        challenge.push_str(", error=\"invalid_token\"");
    }
    // RFC 6750: what is wrong with the token, so the client can fix it (never the token).
    if let IdentityError::NotVerified(Some(problem)) = error {
        challenge.push_str(&format!(
            ", error_description=\"token {}\"",
            problem.describe()
        ));
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
        record: record::auth_failed(info, &config.upstream, error, masker),
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
    refuse(config, masker, info, identity, (&[], &[]), reply, reason)
}

/// What the headers alone decide, before any body arrives: a path other than the MCP endpoint
/// (404), an HTTP method MCP does not use (405), a GET or DELETE (decided by the policy; with a
/// body, 400), a POST without a body (400). `None` for a POST whose body follows: [`request`]
/// decides it once the body is whole (its end, or trailers). Every one of these is recorded.
pub fn headers_only(
    config: &FilterConfig,
    policy: &Policy,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    end_of_stream: bool,
) -> Option<Step> {
    if route_path(&info.path) != config.mcp_path {
        let reason = not_found_reason(config, &info.path);
        let reply = LocalReply::jsonrpc_error(404, None, jsonrpc::GATEWAY_ERROR, &reason, None);
        return Some(refuse(
            config,
            masker,
            info,
            identity,
            (&[], &[]),
            reply,
            reason,
        ));
    }
    match info.http_method.as_str() {
        "POST" if end_of_stream => Some(request(
            config,
            policy,
            masker,
            info,
            identity,
            Some(b""),
            &Mirrors::new(),
        )),
        "POST" => None,
        "GET" | "DELETE" if !end_of_stream => {
            let reason = format!("{} carries no body", info.http_method);
            let reply =
                LocalReply::jsonrpc_error(400, None, jsonrpc::INVALID_REQUEST, &reason, None);
            Some(refuse(
                config,
                masker,
                info,
                identity,
                (&[], &[]),
                reply,
                reason,
            ))
        }
        "GET" | "DELETE" => Some(request(
            config,
            policy,
            masker,
            info,
            identity,
            None,
            &Mirrors::new(),
        )),
        other => {
            let reason = format!("method {other} is not allowed on the MCP endpoint");
            let mut reply =
                LocalReply::jsonrpc_error(405, None, jsonrpc::GATEWAY_ERROR, &reason, None);
            reply
                .headers
                .push(("allow".to_owned(), "GET, POST, DELETE".to_owned()));
            Some(refuse(
                config,
                masker,
                info,
                identity,
                (&[], &[]),
                reply,
                reason,
            ))
        }
    }
}

/// The path without its query string.
/// Why a path has no MCP endpoint, with the way on for the legacy HTTP+SSE transport's paths.
fn not_found_reason(config: &FilterConfig, path: &str) -> String {
    let mut reason = format!("no MCP endpoint at this path (only {})", config.mcp_path);
    if matches!(route_path(path), "/sse" | "/messages" | "/message") {
        reason.push_str(&format!(
            "; the HTTP+SSE transport is not served: connect with streamable HTTP to {}",
            config.mcp_path
        ));
    }
    reason
}

fn route_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// A complete request, decided by the policy: the JSON-RPC body of a POST, or `None` for a GET
/// or DELETE, which carry none. `mirrors` are the `x-mcp-header` annotations of the tools the
/// gateway has seen listed, to check `Mcp-Param-*` headers against.
pub fn request(
    config: &FilterConfig,
    policy: &Policy,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    body: Option<&[u8]>,
    mirrors: &Mirrors,
) -> Step {
    let Some(body) = body else {
        return bodiless(config, policy, masker, info, identity);
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        let reason = "empty body: a POST to the MCP endpoint carries a JSON-RPC message".to_owned();
        let reply = LocalReply::jsonrpc_error(400, None, jsonrpc::INVALID_REQUEST, &reason, None);
        return refuse(config, masker, info, identity, (&[], &[]), reply, reason);
    }
    let parsed = match jsonrpc::parse(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            let reply = LocalReply::jsonrpc_error(400, None, error.code(), &error.message(), None);
            return refuse(
                config,
                masker,
                info,
                identity,
                (&[], &[]),
                reply,
                error.message(),
            );
        }
    };
    let messages = parsed.messages();
    if let Some(step) = revision_checks(config, policy, masker, info, identity, &parsed, mirrors) {
        return step;
    }
    let version = match &parsed {
        Body::Single(message) => message.protocol_version(),
        Body::Batch(_) => None,
    }
    .unwrap_or(info.mcp_headers.version());
    let ctx = CallContext::for_identity(identity, &info.path, &config.upstream).speaking(version);
    let decided = policy.decide_batch(messages, &ctx);
    let verdicts = &decided.verdicts;
    let refused = verdicts.iter().find(|v| !v.is_allowed());
    let Some(refused) = refused else {
        return forward(config, masker, info, identity, messages, verdicts);
    };
    if let (Body::Single(message), Decision::Approve { .. }) = (&parsed, &refused.action) {
        if message.kind == Kind::Request {
            if let Some(ask) = approval::ask(config, masker, info, identity, message, refused) {
                let mut step = forward(config, masker, info, identity, messages, verdicts);
                step.record["decision"] = "approve".into();
                step.record["outcome"] = "held for approval".into();
                step.next = Next::Approve(Box::new(ask));
                return step;
            }
        }
    }
    let reply = match &parsed {
        Body::Single(message) => {
            match (message.kind, refused.error_response(message.id.as_ref())) {
                // A refused call is a JSON-RPC answer, which MCP clients show to the caller.
                (Kind::Request, Some(body)) => json_reply(200, body),
                (_, body) => json_reply(403, body.unwrap_or_default()),
            }
        }
        Body::Batch(items) => match decided.plan(items, body) {
            BatchPlan::Refuse { status, body } => json_reply(u32::from(status), body),
            // The configuration refuses the per-message mode, so a partial forward cannot be
            // planned; refuse the batch whole rather than forward a guess.
            BatchPlan::ForwardAll | BatchPlan::Forward { .. } => LocalReply::jsonrpc_error(
                403,
                None,
                jsonrpc::GATEWAY_ERROR,
                &refused.error_message(),
                Some(refused.error_data()),
            ),
        },
    };
    let reason = refused.error_message();
    refuse(
        config,
        masker,
        info,
        identity,
        (messages, verdicts),
        reply,
        reason,
    )
}

/// What the protocol revision asks before any rule: a revision the deployment serves, and MCP
/// headers that agree with the body (2026-07-28 requires them; any revision that sends them
/// must not contradict the body, which is what the policy decides on). `None` when it passes.
fn revision_checks(
    config: &FilterConfig,
    policy: &Policy,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    parsed: &Body,
    mirrors: &Mirrors,
) -> Option<Step> {
    let messages = parsed.messages();
    let single_id = match parsed {
        Body::Single(message) => message.id.as_ref(),
        Body::Batch(_) => None,
    };
    let headers = &info.mcp_headers;
    let refused = |status: u32, code: i64, reason: String, data: Option<Value>| {
        let reply = LocalReply::jsonrpc_error(status, single_id, code, &reason, data);
        refuse(
            config,
            masker,
            info,
            identity,
            (messages, &[]),
            reply,
            reason,
        )
    };
    for message in messages {
        let version = message.protocol_version().unwrap_or(headers.version());
        if !policy.serves_version(version) {
            let supported = policy.protocol_versions().unwrap_or_default();
            let reason = format!(
                "protocol version {version} is not served here (served: {})",
                supported.join(", ")
            );
            let data = json!({"supported": supported, "requested": version});
            return Some(refused(
                400,
                modern::UNSUPPORTED_PROTOCOL_VERSION,
                reason,
                Some(data),
            ));
        }
    }
    match parsed {
        Body::Single(message) => {
            let known = match (message.method.as_deref(), message.target()) {
                (Some("tools/call"), Some(tool)) => mirrors
                    .get(tool)
                    .map_or(Known::Unknown, |m| Known::Mirrors(m)),
                _ => Known::Mirrors(&[]),
            };
            let mismatch = modern::check_headers(message, headers, known).err()?;
            Some(refused(400, mismatch.code, mismatch.message(), None))
        }
        Body::Batch(items) if items.iter().any(Message::is_stateless) => Some(refused(
            400,
            jsonrpc::INVALID_REQUEST,
            "a 2026-07-28 request is sent alone, one per POST, never in a batch".to_owned(),
            None,
        )),
        Body::Batch(_) if headers.method.is_some() || headers.name.is_some() || !headers.params.is_empty() => {
            Some(refused(
                400,
                modern::HEADER_MISMATCH,
                "Header mismatch: a batch has no single method or name for Mcp-Method, Mcp-Name or Mcp-Param-* to mirror".to_owned(),
                None,
            ))
        }
        Body::Batch(_) => None,
    }
}

/// A retry that brought back the gateway's multi-round-trip state: the body its server must get
/// (the gateway's state taken out, the server's own restored) and what the state said. `None`
/// when the body carries no gateway state; `Err` (why) when it carries one that does not decode.
pub fn untangle_retry(body: &[u8]) -> Option<Result<(Vec<u8>, modern::ApprovalRetry), String>> {
    // Cheap test first: only a retry carries the gateway's state, and most bodies are no retry.
    if !memfind(body, modern::GATEWAY_STATE_PREFIX.as_bytes()) {
        return None;
    }
    let Ok(Body::Single(message)) = jsonrpc::parse(body) else {
        return None;
    };
    Some(modern::take_gateway_state(&message)?.map(|(restored, retry)| (restored.to_body(), retry)))
}

/// A retry whose gateway state does not decode: refused, and recorded.
pub fn malformed_retry(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    why: String,
) -> Step {
    let reply = LocalReply::jsonrpc_error(400, None, jsonrpc::INVALID_PARAMS, &why, None);
    refuse(config, masker, info, identity, (&[], &[]), reply, why)
}

/// GET (the server's stream) or DELETE (end of a session), decided by the policy as the
/// method of the same name; recorded as one message of that method.
fn bodiless(
    config: &FilterConfig,
    policy: &Policy,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
) -> Step {
    let ctx = CallContext::for_identity(identity, &info.path, &config.upstream);
    let verdict = policy.decide_bodiless(&info.http_method, &ctx);
    let message = Message {
        kind: Kind::Request,
        id: None,
        method: Some(info.http_method.clone()),
        params: None,
    };
    let decided = (
        std::slice::from_ref(&message),
        std::slice::from_ref(&verdict),
    );
    if verdict.is_allowed() {
        return forward(config, masker, info, identity, decided.0, decided.1);
    }
    // A held GET or DELETE would keep a connection open for a person's decision: refused.
    let reply = LocalReply::jsonrpc_error(
        403,
        None,
        jsonrpc::GATEWAY_ERROR,
        &verdict.error_message(),
        Some(verdict.error_data()),
    );
    let reason = verdict.error_message();
    refuse(config, masker, info, identity, decided, reply, reason)
}

fn json_reply(status: u32, body: Vec<u8>) -> LocalReply {
    LocalReply {
        status,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body,
    }
}

fn forward(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    messages: &[Message],
    verdicts: &[Verdict],
) -> Step {
    let decision = RequestDecision {
        decision: "allow",
        local_status: None,
        reason: None,
    };
    Step {
        record: record::mcp_request(
            info, config, identity, messages, verdicts, &decision, masker,
        ),
        next: Next::Forward,
    }
}

fn refuse(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    decided: (&[Message], &[Verdict]),
    reply: LocalReply,
    reason: String,
) -> Step {
    let (messages, verdicts) = decided;
    let first_refusal = verdicts.iter().find(|v| !v.is_allowed());
    let decision = RequestDecision {
        decision: first_refusal.map_or("deny", |v| v.action.name()),
        local_status: Some(reply.status),
        reason: Some(reason),
    };
    Step {
        record: record::mcp_request(
            info, config, identity, messages, verdicts, &decision, masker,
        ),
        next: Next::Reply(reply),
    }
}

/// A caller whose identity (or the person behind it) was revoked: 403, whatever the token says.
pub fn revoked(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    revocation: &crate::revocation::Entry,
) -> Step {
    // The operator's reason is for the record only: the caller (perhaps the person it is
    // about) gets a neutral refusal and the id to quote.
    let reason = format!("access revoked ({}): {}", revocation.id, revocation.reason);
    let reply = LocalReply::jsonrpc_error(
        403,
        None,
        jsonrpc::GATEWAY_ERROR,
        &format!(
            "access revoked: ask your administrator, quoting {}",
            revocation.id
        ),
        Some(json!({ "revocationId": revocation.id })),
    );
    let mut step = refuse(config, masker, info, identity, (&[], &[]), reply, reason);
    step.record["event"] = "identity.revoked".into();
    step.record["revocationId"] = revocation.id.clone().into();
    step
}

/// Names the person answerable for a service account's call on `identity` (a claim of its
/// token, else the control plane's `owners` mapping). A service account that names nobody is
/// refused with 403 when the configuration requires a person (the default); the step to
/// append and answer is returned then.
pub fn attribute(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &mut Identity,
    owners: &std::collections::BTreeMap<String, String>,
) -> Option<Step> {
    let rules = &config.service_accounts;
    if !rules.covers(identity) {
        return None;
    }
    identity.accountable = rules.accountable(identity, owners);
    if identity.accountable.is_some() || !rules.require_accountable {
        return None;
    }
    let reason = format!(
        "service account {} names no accountable person: its token carries none of {} and the control plane maps it to no owner (tollgate service-accounts set)",
        identity.sub,
        rules.accountable_claims.join(", ")
    );
    let reply = LocalReply::jsonrpc_error(403, None, jsonrpc::GATEWAY_ERROR, &reason, None);
    let mut step = refuse(config, masker, info, identity, (&[], &[]), reply, reason);
    step.record["event"] = "identity.unaccountable".into();
    Some(step)
}

/// The control plane did not acknowledge the audit record: fail closed.
pub fn audit_unavailable(body: Option<&[u8]>) -> LocalReply {
    let id = single_request_id(body);
    LocalReply::jsonrpc_error(
        503,
        id.as_ref(),
        jsonrpc::GATEWAY_ERROR,
        "audit log unavailable: request not forwarded",
        Some(json!({ "retryable": true })),
    )
}

/// Envoy answered itself because the upstream MCP server failed (its `response.code_details`
/// says why): the JSON-RPC error the client gets instead of Envoy's plain-text reply. 504 when
/// the server did not answer in time, 502 when it could not be reached or reset the stream.
/// `None` for anything else, above all an answer the server sent itself (`via_upstream`).
pub fn upstream_failure(details: &str, body: Option<&[u8]>) -> Option<LocalReply> {
    let (status, message) = match details {
        // Envoy 1.40 says `response_timeout` for the route timeout; older ones said `upstream_…`.
        "response_timeout"
        | "upstream_response_timeout"
        | "upstream_per_try_timeout"
        | "upstream_per_try_idle_timeout" => (504, "upstream MCP server did not answer in time"),
        d if d.starts_with("upstream_reset_before_response_started")
            || d == "no_healthy_upstream"
            || d == "upstream_max_stream_duration_reached" =>
        {
            (502, "upstream MCP server unavailable")
        }
        _ => return None,
    };
    let id = single_request_id(body);
    Some(LocalReply::jsonrpc_error(
        status,
        id.as_ref(),
        jsonrpc::GATEWAY_ERROR,
        message,
        Some(json!({ "retryable": true, "detail": details })),
    ))
}

#[cfg(test)]
mod upstream_failure_tests {
    use super::*;

    const CALL: &[u8] =
        br#"{"jsonrpc":"2.0","id":"c-7","method":"tools/call","params":{"name":"get_customer"}}"#;

    #[test]
    fn timeouts_are_504_and_resets_502_with_the_request_id() {
        assert_eq!(
            upstream_failure("response_timeout", None).unwrap().status,
            504
        );
        let timeout = upstream_failure("upstream_response_timeout", Some(CALL)).unwrap();
        assert_eq!(timeout.status, 504);
        let body: Value = serde_json::from_slice(&timeout.body).unwrap();
        assert_eq!(body["id"], "c-7");
        assert_eq!(body["error"]["code"], jsonrpc::GATEWAY_ERROR);
        assert_eq!(body["error"]["data"]["detail"], "upstream_response_timeout");

        let refused = upstream_failure(
            "upstream_reset_before_response_started{remote_connection_failure}",
            Some(CALL),
        )
        .unwrap();
        assert_eq!(refused.status, 502);
        assert_eq!(
            upstream_failure("no_healthy_upstream", None)
                .unwrap()
                .status,
            502
        );
        let body: Value =
            serde_json::from_slice(&upstream_failure("no_healthy_upstream", None).unwrap().body)
                .unwrap();
        assert_eq!(body["id"], Value::Null);
    }

    #[test]
    fn the_servers_own_answers_pass() {
        for details in [
            "via_upstream",
            "",
            "request_payload_too_large",
            "upstream_reset_after_response_started{connection_termination}",
        ] {
            assert_eq!(upstream_failure(details, Some(CALL)), None, "{details}");
        }
    }
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
            accountable: None,
        }
    }

    #[test]
    fn a_legacy_sse_path_is_told_the_transport_token_or_not() {
        let step = unauthenticated(
            &config(),
            &Masker::default(),
            &info("GET", "/sse"),
            &IdentityError::Missing,
        );
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        assert_eq!(reply.status, 404);
        assert!(!reply
            .headers
            .iter()
            .any(|(name, _)| name == "www-authenticate"));
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.contains("streamable HTTP to /mcp"), "{body}");
        assert_eq!(step.record["event"], "auth.failed");
        assert_eq!(step.record["status"], 404);
    }

    #[test]
    fn a_refused_token_is_told_why_in_the_challenge_and_the_record() {
        let step = unauthenticated(
            &config(),
            &Masker::default(),
            &info("POST", "/mcp"),
            &IdentityError::NotVerified(Some(crate::identity::TokenProblem::Expired)),
        );
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .iter()
            .any(|(name, value)| name == "www-authenticate"
                && value.contains("error=\"invalid_token\", error_description=\"token expired\"")));
        assert_eq!(step.record["reason"], "token not verified: expired");
    }

    #[test]
    fn missing_token_gets_challenge_naming_resource_metadata() {
        let step = unauthenticated(
            &config(),
            &Masker::default(),
            &info("POST", "/mcp"),
            &IdentityError::Missing,
        );
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
            &Policy::from_json(
                br#"{"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
            )
            .unwrap(),
            &Masker::default(),
            &RequestInfo::default(),
            &alice(),
            Some(body),
            &Mirrors::new(),
        );
        assert_eq!(step.next, Next::Forward);
        assert_eq!(step.record["messages"][0]["method"], "tools/call");
        assert_eq!(step.record["messages"][0]["target"], "get_customer");
    }

    fn info(method: &str, path: &str) -> RequestInfo {
        RequestInfo {
            http_method: method.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    fn reply_of(step: &Step) -> &LocalReply {
        match &step.next {
            Next::Reply(reply) => reply,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_the_mcp_path_is_decided_anything_else_is_404_and_recorded() {
        let policy = Policy::from_json(
            br#"{"rules":[{"id":"all","match":{"method":"*"},"action":"allow"}]}"#,
        )
        .unwrap();
        for path in ["/mcpX", "/mcp/", "/MCP", "/mcp%2F..", "/admin", "/"] {
            let step = headers_only(
                &config(),
                &policy,
                &Masker::default(),
                &info("POST", path),
                &alice(),
                false,
            )
            .unwrap_or_else(|| panic!("{path} went on to the body"));
            assert_eq!(reply_of(&step).status, 404, "{path}");
            assert_eq!(step.record["decision"], "deny", "{path}");
            assert_eq!(step.record["outcome"], "refused", "{path}");
        }
        // The query string is not part of the path.
        assert!(headers_only(
            &config(),
            &policy,
            &Masker::default(),
            &info("POST", "/mcp?x=1"),
            &alice(),
            false
        )
        .is_none());
    }

    #[test]
    fn bodiless_methods_are_decided_by_the_policy_and_others_refused() {
        let masker = Masker::default();
        let open = Policy::from_json(br#"{"rules":[]}"#).unwrap();
        let get = headers_only(
            &config(),
            &open,
            &masker,
            &info("GET", "/mcp"),
            &alice(),
            true,
        )
        .unwrap();
        assert_eq!(get.next, Next::Forward);
        assert_eq!(get.record["decision"], "allow");
        assert_eq!(get.record["messages"][0]["method"], "GET");
        let delete = headers_only(
            &config(),
            &open,
            &masker,
            &info("DELETE", "/mcp"),
            &alice(),
            true,
        )
        .unwrap();
        assert_eq!(delete.next, Next::Forward);

        let no_streams = Policy::from_json(
            br#"{"rules":[{"id":"no-get","match":{"method":"GET"},"action":"deny","reason":"no server streams"}]}"#,
        )
        .unwrap();
        let refused = headers_only(
            &config(),
            &no_streams,
            &masker,
            &info("GET", "/mcp"),
            &alice(),
            true,
        )
        .unwrap();
        assert_eq!(reply_of(&refused).status, 403);
        assert_eq!(refused.record["messages"][0]["rule"], "no-get");
        // Without allowProtocol, a bodiless request is no plumbing: the default decides.
        let strict = Policy::from_json(br#"{"allowProtocol":false,"rules":[]}"#).unwrap();
        let refused = headers_only(
            &config(),
            &strict,
            &masker,
            &info("DELETE", "/mcp"),
            &alice(),
            true,
        )
        .unwrap();
        assert_eq!(reply_of(&refused).status, 403);
        // A JSON-RPC message named "GET" is no plumbing.
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"GET"}"#;
        let step = request(
            &config(),
            &open,
            &masker,
            &info("POST", "/mcp"),
            &alice(),
            Some(body),
            &Mirrors::new(),
        );
        assert_ne!(step.next, Next::Forward);

        let get_with_body = headers_only(
            &config(),
            &open,
            &masker,
            &info("GET", "/mcp"),
            &alice(),
            false,
        )
        .unwrap();
        assert_eq!(reply_of(&get_with_body).status, 400);
        for method in ["PUT", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"] {
            let step = headers_only(
                &config(),
                &open,
                &masker,
                &info(method, "/mcp"),
                &alice(),
                true,
            )
            .unwrap();
            assert_eq!(reply_of(&step).status, 405, "{method}");
            assert_eq!(step.record["httpMethod"], method);
        }
    }

    #[test]
    fn a_post_without_a_body_is_invalid_and_one_with_a_body_waits_for_it() {
        let masker = Masker::default();
        let open = Policy::from_json(br#"{"rules":[]}"#).unwrap();
        let empty = headers_only(
            &config(),
            &open,
            &masker,
            &info("POST", "/mcp"),
            &alice(),
            true,
        )
        .unwrap();
        let reply = reply_of(&empty);
        assert_eq!(reply.status, 400);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], jsonrpc::INVALID_REQUEST);
        assert_eq!(empty.record["decision"], "deny");
        let blank = request(
            &config(),
            &open,
            &masker,
            &info("POST", "/mcp"),
            &alice(),
            Some(b" \r\n"),
            &Mirrors::new(),
        );
        assert_eq!(reply_of(&blank).status, 400);
        assert!(headers_only(
            &config(),
            &open,
            &masker,
            &info("POST", "/mcp"),
            &alice(),
            false
        )
        .is_none());
    }

    #[test]
    fn malformed_body_is_refused_with_parse_error() {
        let step = request(
            &config(),
            &Policy::from_json(
                br#"{"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
            )
            .unwrap(),
            &Masker::default(),
            &RequestInfo::default(),
            &alice(),
            Some(b"{nope"),
            &Mirrors::new(),
        );
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], jsonrpc::PARSE_ERROR);
        assert_eq!(step.record["decision"], "deny");
    }

    #[test]
    fn ambiguous_member_names_are_refused_as_invalid_requests() {
        let policy = Policy::from_json(
            br#"{"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
        )
        .unwrap();
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","name":"delete_merchant"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","Name":"delete_merchant"}}"#,
        ] {
            let step = request(
                &config(),
                &policy,
                &Masker::default(),
                &RequestInfo::default(),
                &alice(),
                Some(body),
            &Mirrors::new(),
        );
            let Next::Reply(reply) = step.next else {
                panic!("forwarded")
            };
            assert_eq!(reply.status, 400);
            let answer: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(answer["error"]["code"], jsonrpc::INVALID_REQUEST);
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("$.params"), "{message}");
            assert!(!message.contains("delete_merchant"), "{message}");
            assert_eq!(step.record["decision"], "deny");
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_and_the_refusal_is_a_record_the_log_takes() {
        let policy = Policy::from_json(
            br#"{"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
        )
        .unwrap();
        for (body, location) in [
            (
                &br#"{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{"name":"get_customer"}}"#[..],
                "$.id",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{"customer_id":12345678901234567890}}}"#,
                "$.params.arguments.customer_id",
            ),
        ] {
            let step = request(
                &config(),
                &policy,
                &Masker::default(),
                &RequestInfo::default(),
                &alice(),
                Some(body),
            &Mirrors::new(),
        );
            let Next::Reply(reply) = step.next else {
                panic!("forwarded")
            };
            assert_eq!(reply.status, 400);
            let answer: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(answer["error"]["code"], jsonrpc::INVALID_REQUEST);
            assert_eq!(answer["id"], Value::Null, "the id cannot be echoed exactly");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!(
                    "invalid request: integer outside ±2^53 in {location}: "
                )),
                "{message}"
            );
            assert_eq!(step.record["decision"], "deny");
            assert_eq!(step.record["status"], 400);
            assert_eq!(step.record["reason"], message);
            // The record is one the control plane chains: the refused number is not in it.
            let text = step.record.to_string();
            assert!(
                !text.contains("9007199254740993") && !text.contains("12345678901234567890"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_service_account_without_a_person_is_refused_and_one_with_an_owner_is_attributed() {
        let config = FilterConfig::from_json(br#"{"serviceAccounts":{"subs":["svc-*"]}}"#).unwrap();
        let mut svc = Identity {
            sub: "svc-reports".into(),
            claims: Map::new(),
            accountable: None,
        };
        let none = std::collections::BTreeMap::new();
        let step = attribute(
            &config,
            &Masker::default(),
            &RequestInfo::default(),
            &mut svc,
            &none,
        )
        .expect("refused");
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        assert_eq!(reply.status, 403);
        assert_eq!(step.record["event"], "identity.unaccountable");
        assert_eq!(step.record["sub"], "svc-reports");

        let owners = [("svc-reports".to_owned(), "dana".to_owned())].into();
        let step = attribute(
            &config,
            &Masker::default(),
            &RequestInfo::default(),
            &mut svc,
            &owners,
        );
        assert!(step.is_none());
        assert_eq!(svc.accountable.as_ref().unwrap().sub, "dana");

        // Not required: attributed when possible, served either way.
        let lenient = FilterConfig::from_json(
            br#"{"serviceAccounts":{"subs":["svc-*"],"requireAccountable":false}}"#,
        )
        .unwrap();
        let mut bare = Identity {
            sub: "svc-reports".into(),
            claims: Map::new(),
            accountable: None,
        };
        assert!(attribute(
            &lenient,
            &Masker::default(),
            &RequestInfo::default(),
            &mut bare,
            &none
        )
        .is_none());
        // A person is never a service account.
        let mut person = alice();
        assert!(attribute(
            &config,
            &Masker::default(),
            &RequestInfo::default(),
            &mut person,
            &none
        )
        .is_none());
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
    /// The mode for the masking engine's verdict on the response headers; `None`: refuse it.
    pub fn for_handling(handling: Handling) -> Option<ResponseMode> {
        match handling {
            Handling::Json | Handling::Text => Some(ResponseMode::Buffer),
            Handling::EventStream => Some(ResponseMode::Stream),
            Handling::Pass => Some(ResponseMode::Pass),
            Handling::Block => None,
        }
    }
}

/// The id of a single JSON-RPC request body, for errors that answer it.
fn single_request_id(body: Option<&[u8]>) -> Option<Value> {
    body.and_then(|b| jsonrpc::parse(b).ok())
        .and_then(|parsed| match parsed {
            Body::Single(m) => m.id,
            Body::Batch(_) => None,
        })
}

/// A response the gateway cannot mask (compressed, or binary with `mask.binary: block`): refuse it
/// rather than pass card numbers through.
pub fn unmaskable_response_refused(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    request_body: Option<&[u8]>,
) -> LocalReply {
    let message = match content_encoding.filter(|e| !e.eq_ignore_ascii_case("identity")) {
        Some(encoding) => {
            format!("upstream sent a {encoding}-encoded body, which the gateway cannot inspect")
        }
        None => format!(
            "upstream sent a {} body, which the gateway's mask.binary setting blocks",
            content_type.unwrap_or("binary")
        ),
    };
    LocalReply::jsonrpc_error(
        502,
        single_request_id(request_body).as_ref(),
        jsonrpc::GATEWAY_ERROR,
        &message,
        None,
    )
}

#[cfg(test)]
mod response_mode_tests {
    use super::*;
    use crate::mask::{BinaryAction, MaskConfig, Masker};

    fn mode(binary: BinaryAction, ct: Option<&str>, ce: Option<&str>) -> Option<ResponseMode> {
        let masker = Masker::new(MaskConfig {
            binary,
            ..MaskConfig::default()
        })
        .unwrap();
        ResponseMode::for_handling(masker.handling(ct, ce))
    }

    #[test]
    fn content_types_and_the_binary_setting() {
        use ResponseMode::*;
        let cases = [
            (Some("application/json"), None, Some(Buffer)),
            (Some("application/json; charset=utf-8"), None, Some(Buffer)),
            (Some("Text/Event-Stream"), None, Some(Stream)),
            (Some("text/plain"), None, Some(Buffer)),
            (
                Some("application/x-www-form-urlencoded"),
                None,
                Some(Buffer),
            ),
            (None, None, Some(Buffer)),
            (Some("application/json"), Some("gzip"), None),
            (Some("text/event-stream"), Some("br"), None),
            (Some("application/json"), Some("identity"), Some(Buffer)),
            (Some("image/png"), None, None),
        ];
        for (ct, ce, expected) in cases {
            assert_eq!(mode(BinaryAction::Block, ct, ce), expected, "{ct:?} {ce:?}");
        }
        assert_eq!(
            mode(BinaryAction::Pass, Some("image/png"), None),
            Some(Pass)
        );
        assert_eq!(
            mode(BinaryAction::Mask, Some("image/png"), None),
            Some(Buffer)
        );
        assert_eq!(
            mode(BinaryAction::Pass, Some("image/png"), Some("gzip")),
            None
        );
    }

    #[test]
    fn refusals_name_the_reason_and_answer_the_request() {
        let body = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call"}"#;
        let reply = unmaskable_response_refused(Some("image/png"), None, Some(body));
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(reply.status, 502);
        assert_eq!(json["id"], 4);
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mask.binary"));
        let reply = unmaskable_response_refused(None, Some("br"), None);
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("br-encoded"));
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use serde_json::Map;

    fn policy() -> Policy {
        Policy::from_json(
            br#"{"rules":[
                {"id":"reads","match":{"tool":"get_*"},"action":"allow"},
                {"id":"no-delete","match":{"tool":"delete_merchant"},"action":"deny","reason":"destructive"}
            ]}"#,
        )
        .unwrap()
    }

    fn decide(body: &[u8]) -> Step {
        let config = FilterConfig::from_json(b"{}").unwrap();
        let identity = Identity {
            sub: "alice".into(),
            claims: Map::new(),
            accountable: None,
        };
        request(
            &config,
            &policy(),
            &Masker::default(),
            &RequestInfo::default(),
            &identity,
            Some(body),
            &Mirrors::new(),
        )
    }

    #[test]
    fn denied_call_is_answered_with_the_rule_and_never_forwarded() {
        let step = decide(br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"delete_merchant","arguments":{"merchant_id":"m_1"}}}"#);
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        assert_eq!(reply.status, 200);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["id"], 5);
        assert_eq!(body["error"]["data"]["rule"], "no-delete");
        assert_eq!(step.record["decision"], "deny");
        assert_eq!(step.record["messages"][0]["rule"], "no-delete");
    }

    #[test]
    fn unlisted_tool_falls_to_the_default_deny() {
        let step = decide(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"refund_payment"}}"#,
        );
        assert!(matches!(step.next, Next::Reply(_)));
        assert_eq!(step.record["outcome"], "refused");
    }

    #[test]
    fn batch_with_one_denied_call_is_refused_whole() {
        let step = decide(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_merchant"}}]"#);
        let Next::Reply(reply) = step.next else {
            panic!("forwarded")
        };
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn protocol_messages_pass() {
        let step = decide(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(step.next, Next::Forward);
    }
}

/// The method of a body that is a single request whose answer the filter handles itself: the
/// lists (filtered, and `tools/list` teaches the mirrors) and `subscriptions/listen`. One parse
/// answers all of them, and a body that names no list is not parsed at all.
pub fn answered_method(body: &[u8]) -> Option<String> {
    if !memfind(body, b"list") {
        return None;
    }
    match jsonrpc::parse(body).ok()? {
        Body::Single(message) => message.method.filter(|m| {
            matches!(
                m.as_str(),
                "tools/list" | "resources/list" | "prompts/list" | "subscriptions/listen"
            )
        }),
        Body::Batch(_) => None,
    }
}

/// The list method (`tools/list`, `resources/list`, `prompts/list`) of a request whose answer
/// the policy filters, from [`answered_method`].
pub fn list_method(policy: &Policy, method: Option<&str>) -> Option<String> {
    method
        .filter(|m| policy.filter_lists() && *m != "subscriptions/listen")
        .map(str::to_owned)
}

fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The tools' mirrored parameters a `tools/list` answer (JSON, or the `data:` events of an SSE
/// body) names.
pub fn mirrors_in_answer(body: &[u8]) -> Option<Mirrors> {
    let from = |json: &[u8]| -> Option<Mirrors> {
        let value: Value = serde_json::from_slice(json).ok()?;
        Some(modern::mirrors_of_tools(value.get("result")?))
    };
    if let Some(mirrors) = from(body) {
        return Some(mirrors);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter_map(|line| line.strip_prefix("data:").map(str::trim_start))
        .find_map(|data| from(data.as_bytes()))
}

/// Drops from a list answer (plain JSON, or the `data:` events of an SSE body) the entries the
/// caller could never use. `None` when nothing changes.
pub fn filter_list_body(
    policy: &Policy,
    method: &str,
    ctx: &CallContext<'_>,
    body: &[u8],
) -> Option<Vec<u8>> {
    let filter = |json: &[u8]| -> Option<Vec<u8>> {
        let value: Value = serde_json::from_slice(json).ok()?;
        let filtered = policy.filter_list_response(method, &value, ctx)?;
        Some(crate::record::to_json(&filtered))
    };
    if let Some(filtered) = filter(body) {
        return Some(filtered);
    }
    // SSE: events separated by a blank line; each `data:` line of a JSON event is rewritten.
    let text = std::str::from_utf8(body).ok()?;
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        let ending = &line[content.len()..];
        match content.strip_prefix("data:").map(str::trim_start) {
            Some(data) => match filter(data.as_bytes()) {
                Some(filtered) => {
                    changed = true;
                    out.push_str("data: ");
                    out.push_str(&String::from_utf8_lossy(&filtered));
                    out.push_str(ending);
                }
                None => out.push_str(line),
            },
            None => out.push_str(line),
        }
    }
    changed.then(|| out.into_bytes())
}

#[cfg(test)]
mod list_tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn sse_list_answer_loses_the_unusable_tools() {
        let policy = Policy::from_json(
            br#"{"filterLists":true,"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
        )
        .unwrap();
        let claims = Map::new();
        let ctx = CallContext::new(&claims, "/mcp", "mcp");
        let body = b"id: 0\nretry: 3000\ndata: \n\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"get_customer\"},{\"name\":\"delete_merchant\"}]}}\n\n";
        let out = filter_list_body(&policy, "tools/list", &ctx, body).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("get_customer"), "{text}");
        assert!(!text.contains("delete_merchant"), "{text}");
        assert!(text.starts_with("id: 0\nretry: 3000\ndata: \n\n"), "{text}");
        assert_eq!(
            list_method(
                &policy,
                answered_method(br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).as_deref()
            ),
            Some("tools/list".to_owned())
        );
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn a_forwarded_request_in_a_session_is_checked_and_a_refused_one_is_not() {
        let alice = Identity {
            sub: "alice".into(),
            claims: serde_json::from_str(r#"{"iss":"https://idp","sub":"alice"}"#).unwrap(),
            accountable: None,
        };
        let mut info = RequestInfo {
            http_method: "POST".into(),
            session_id: Some("s1".into()),
            ..Default::default()
        };
        let check = session_check(&info, &alice, &Next::Forward).unwrap();
        assert_eq!(check.session_id, "s1");
        assert_eq!(check.subject, r#"["https://idp","alice"]"#);
        assert_eq!(check.step(), SessionStep::Use);
        let refused = Next::Reply(session_refused(None));
        assert_eq!(session_check(&info, &alice, &refused), None);
        info.http_method = "DELETE".into();
        let check = session_check(&info, &alice, &Next::Forward).unwrap();
        assert_eq!(check.step(), SessionStep::End);
        info.session_id = None;
        assert_eq!(session_check(&info, &alice, &Next::Forward), None);
    }

    #[test]
    fn only_an_answer_naming_a_new_session_opens_one() {
        let alice = Identity {
            sub: "alice".into(),
            claims: Map::new(),
            accountable: None,
        };
        let mut info = RequestInfo::default();
        assert_eq!(session_opened(&info, &alice, None), None);
        let check = session_opened(&info, &alice, Some("s9")).unwrap();
        assert_eq!(
            (check.session_id.as_str(), check.step()),
            ("s9", SessionStep::Open)
        );
        info.session_id = Some("s9".into());
        assert_eq!(session_opened(&info, &alice, Some("s9")), None);
    }

    #[test]
    fn a_refused_session_is_a_404_that_answers_the_request() {
        let reply = session_refused(Some(br#"{"jsonrpc":"2.0","id":12,"method":"tools/list"}"#));
        assert_eq!(reply.status, 404);
        let answer: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["id"], 12);
        assert_eq!(answer["error"]["code"], jsonrpc::GATEWAY_ERROR);
    }
}
