//! One request's course through its callbacks, against a scripted host: what reaches the
//! upstream (`resume_request`), what reaches the client (`resume_response`, local replies,
//! resets) and what is recorded (gRPC appends), whatever order the callbacks come in.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use prost::Message as _;
use serde_json::{json, Value};
use tollgate_proto::pb::{AppendRequest, AppendResponse, SessionStep};

use super::*;

/// What the request did to its host, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    ResumeRequest,
    ResumeResponse,
    ResetResponse,
    Reply {
        status: u32,
        body: Value,
    },
    Append {
        token: u32,
        request: AppendRequest,
    },
    /// A call to the approvals service.
    Approvals {
        token: u32,
        method: String,
    },
}

#[derive(Default)]
struct Scripted {
    request_headers: HashMap<String, String>,
    response_headers: HashMap<String, String>,
    properties: HashMap<String, String>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    grpc_answer: Vec<u8>,
    next_token: u32,
    calls: Vec<Call>,
    gauges: HashMap<String, i64>,
    /// The control plane cannot be reached: no gRPC call starts.
    grpc_down: bool,
    shared: HashMap<String, (Vec<u8>, u32)>,
}

#[derive(Clone, Default)]
struct FakeHost(Rc<RefCell<Scripted>>);

impl Host for FakeHost {
    fn log(&self, _level: Level, _message: &str) {}

    fn buffer(&self, kind: Buffer, size: usize) -> Vec<u8> {
        let host = self.0.borrow();
        let bytes = match kind {
            Buffer::RequestBody => &host.request_body,
            Buffer::ResponseBody => &host.response_body,
            Buffer::GrpcReceive => &host.grpc_answer,
        };
        bytes[..size.min(bytes.len())].to_vec()
    }

    fn set_buffer(&self, kind: Buffer, size: usize, value: &[u8]) -> bool {
        let mut host = self.0.borrow_mut();
        let bytes = match kind {
            Buffer::RequestBody => &mut host.request_body,
            Buffer::ResponseBody => &mut host.response_body,
            Buffer::GrpcReceive => return false,
        };
        let size = size.min(bytes.len());
        bytes.splice(..size, value.iter().copied());
        true
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.0.borrow().request_headers.get(name).cloned()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        let host = self.0.borrow();
        host.request_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.0.borrow().response_headers.get(name).cloned()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let headers = &mut self.0.borrow_mut().request_headers;
        match value {
            Some(v) => headers.insert(name.to_owned(), v.to_owned()),
            None => headers.remove(name),
        };
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        let headers = &mut self.0.borrow_mut().response_headers;
        match value {
            Some(v) => headers.insert(name.to_owned(), v.to_owned()),
            None => headers.remove(name),
        };
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.0.borrow().properties.get(&path.join("/")).cloned()
    }

    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000)
    }

    fn send_reply(&self, status: u32, _headers: &[(String, String)], body: &[u8]) {
        let body = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.0.borrow_mut().calls.push(Call::Reply { status, body });
    }

    fn resume_request(&self) {
        self.0.borrow_mut().calls.push(Call::ResumeRequest);
    }

    fn resume_response(&self) {
        self.0.borrow_mut().calls.push(Call::ResumeResponse);
    }

    fn reset_response(&self) {
        self.0.borrow_mut().calls.push(Call::ResetResponse);
    }

    fn grpc_call(
        &self,
        _cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        _timeout: Duration,
    ) -> Option<u32> {
        let mut host = self.0.borrow_mut();
        if host.grpc_down {
            return None;
        }
        host.next_token += 1;
        let token = host.next_token;
        if service == tollgate_proto::service::APPROVALS {
            let method = method.to_owned();
            host.calls.push(Call::Approvals { token, method });
            return Some(token);
        }
        assert_eq!(
            (service, method),
            (tollgate_proto::service::AUDIT, "Append")
        );
        let request = AppendRequest::decode(message).unwrap_or_default();
        host.calls.push(Call::Append { token, request });
        Some(token)
    }

    fn shared_bytes(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let host = self.0.borrow();
        match host.shared.get(key) {
            Some((bytes, cas)) => (Some(bytes.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set_shared_bytes(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut host = self.0.borrow_mut();
        let current = host.shared.get(key).map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return false;
        }
        let next = current.unwrap_or(0) + 1;
        host.shared.insert(key.to_owned(), (value.to_vec(), next));
        true
    }

    fn count(&self, _name: &str, _n: u64) {}

    fn gauge_add(&self, name: &str, delta: i64) {
        *self
            .0
            .borrow_mut()
            .gauges
            .entry(name.to_owned())
            .or_default() += delta;
    }

    fn record_metric(&self, _name: &str, _value: u64) {}
}

impl FakeHost {
    fn calls(&self) -> Vec<Call> {
        self.0.borrow().calls.clone()
    }

    fn forwarded(&self) -> bool {
        self.calls().contains(&Call::ResumeRequest)
    }

    /// The appends sent so far: token and record.
    fn appends(&self) -> Vec<(u32, Value, AppendRequest)> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Append { token, request } => {
                    let record = serde_json::from_slice(&request.record_json).unwrap_or_default();
                    Some((token, record, request))
                }
                _ => None,
            })
            .collect()
    }

    fn last_append(&self) -> (u32, Value, AppendRequest) {
        self.appends().pop().expect("an append")
    }
}

fn runtime() -> Rc<Runtime> {
    let config = FilterConfig::from_json(
        json!({"policy": {
            "defaultAction": {"action": "allow"},
            "rules": [{"id": "never-delete-merchant", "match": {"tool": "delete_merchant"},
                       "action": "deny", "reason": "never"},
                      {"id": "approve-payout", "match": {"tool": "update_payout_account"},
                       "action": "approve", "approverGroup": "approvers", "reason": "four eyes"}]
        }})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let masker = Masker::new(config.mask.clone()).unwrap();
    let policy = Policy::compile(&config.policy).unwrap();
    Rc::new(Runtime::new(config, masker, policy))
}

/// A POST by alice, with a verified token, its headers already read.
fn post(session: Option<&str>) -> (FakeHost, Exchange<FakeHost>) {
    post_with(session, &[])
}

/// [`post`] with more request headers.
fn post_with(session: Option<&str>, extra: &[(&str, &str)]) -> (FakeHost, Exchange<FakeHost>) {
    post_on(runtime(), session, extra)
}

/// [`post_with`] on a given runtime.
fn post_on(
    runtime: Rc<Runtime>,
    session: Option<&str>,
    extra: &[(&str, &str)],
) -> (FakeHost, Exchange<FakeHost>) {
    let host = FakeHost::default();
    {
        let mut scripted = host.0.borrow_mut();
        for (name, value) in [
            (":method", "POST"),
            (":path", "/mcp"),
            ("x-request-id", "rid-1"),
            ("authorization", "Bearer t"),
        ] {
            scripted
                .request_headers
                .insert(name.to_owned(), value.to_owned());
        }
        let payload = json!({"sub": "alice", "iss": "https://idp.example"}).to_string();
        scripted.request_headers.insert(
            "x-tollgate-jwt-payload".to_owned(),
            URL_SAFE_NO_PAD.encode(payload),
        );
        scripted.properties.insert(
            "metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_payload/sub".to_owned(),
            "alice".to_owned(),
        );
        if let Some(session) = session {
            scripted
                .request_headers
                .insert("mcp-session-id".to_owned(), session.to_owned());
        }
        for (name, value) in extra {
            scripted
                .request_headers
                .insert((*name).to_owned(), (*value).to_owned());
        }
    }
    let mut exchange = Exchange::new(host.clone(), runtime);
    assert_eq!(exchange.on_request_headers(false), Flow::Continue);
    (host, exchange)
}

fn call_body(id: u64, tool: &str) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
           "params":{"name":tool,"arguments":{"customer_id":"cus_1"}}})
    .to_string()
    .into_bytes()
}

/// `bytes` of body arrive (all of it buffered so far).
fn body_arrives(host: &FakeHost, bytes: &[u8]) -> usize {
    let mut scripted = host.0.borrow_mut();
    scripted.request_body.extend_from_slice(bytes);
    scripted.request_body.len()
}

/// The upstream's answer arrives whole: 200, JSON, `body`.
fn json_answer_arrives(host: &FakeHost, body: Vec<u8>) {
    let mut scripted = host.0.borrow_mut();
    scripted
        .response_headers
        .insert(":status".into(), "200".into());
    scripted
        .response_headers
        .insert("content-type".into(), "application/json".into());
    scripted.response_body = body;
}

/// The control plane answers call `token`: acknowledged (optionally refusing the session), or
/// failed with a gRPC status.
fn answer(
    host: &FakeHost,
    exchange: &mut Exchange<FakeHost>,
    token: u32,
    outcome: Result<&str, u32>,
) {
    let (status, bytes) = match outcome {
        Ok(session_refused) => (
            0,
            AppendResponse {
                seq: 1,
                chain_hash: "ab".repeat(32),
                session_refused: session_refused.to_owned(),
            }
            .encode_to_vec(),
        ),
        Err(status) => (status, Vec::new()),
    };
    let size = bytes.len();
    host.0.borrow_mut().grpc_answer = bytes;
    exchange.on_grpc_call_response(token, status, size);
}

#[test]
fn trailers_end_the_body_the_call_is_decided_and_recorded_before_anything_goes_on() {
    let (host, mut exchange) = post(None);
    let body = call_body(1, "get_customer");
    let (first, rest) = body.split_at(10);
    let size = body_arrives(&host, first);
    assert_eq!(exchange.on_request_body(size, false), Flow::Pause);
    let size = body_arrives(&host, rest);
    assert_eq!(exchange.on_request_body(size, false), Flow::Pause);
    assert!(host.appends().is_empty(), "decided before the body ended");
    // The body ends in trailers instead of END_STREAM.
    assert_eq!(exchange.on_request_trailers(), Flow::Pause);
    let (token, record, _) = host.last_append();
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["messages"][0]["target"], "get_customer");
    assert!(
        !host.forwarded(),
        "forwarded before the record was acknowledged"
    );
    // More callbacks before the acknowledgement change nothing.
    assert_eq!(exchange.on_request_trailers(), Flow::Pause);
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    assert_eq!(host.appends().len(), 1);
    answer(&host, &mut exchange, token, Ok(""));
    assert_eq!(host.calls().last(), Some(&Call::ResumeRequest));
    assert_eq!(
        exchange.state,
        RequestState::Forwarded { failed_open: false }
    );
}

#[test]
fn a_denied_call_ending_in_trailers_is_answered_and_never_released() {
    let (host, mut exchange) = post(None);
    let size = body_arrives(&host, &call_body(2, "delete_merchant"));
    assert_eq!(exchange.on_request_body(size, false), Flow::Pause);
    assert_eq!(exchange.on_request_trailers(), Flow::Pause);
    let (token, record, request) = host.last_append();
    assert_eq!(record["decision"], "deny");
    assert_eq!(
        request.session, None,
        "a refused call needs no session check"
    );
    answer(&host, &mut exchange, token, Ok(""));
    assert!(!host.forwarded());
    let Some(Call::Reply { status, body }) = host.calls().last().cloned() else {
        panic!("no reply: {:?}", host.calls())
    };
    assert_eq!((status, &body["id"]), (200, &json!(2)));
    // The reply passes back through the filter untouched.
    assert_eq!(exchange.on_response_headers(false), Flow::Continue);
}

#[test]
fn late_and_foreign_acknowledgements_release_nothing() {
    let (host, mut exchange) = post(None);
    let size = body_arrives(&host, &call_body(3, "get_customer"));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    let (token, _, _) = host.last_append();
    // An answer to a call this request did not make (a stale token) is ignored.
    answer(&host, &mut exchange, token + 7, Ok(""));
    assert!(!host.forwarded());
    // The append timed out: 503, never forwarded.
    answer(&host, &mut exchange, token, Err(4));
    assert!(!host.forwarded());
    assert!(matches!(
        host.calls().last(),
        Some(Call::Reply { status: 503, .. })
    ));
    // The acknowledgement arriving after the timeout releases nothing either.
    answer(&host, &mut exchange, token, Ok(""));
    assert!(!host.forwarded(), "{:?}", host.calls());
}

#[test]
fn a_client_that_resets_mid_body_gets_nothing_forwarded_or_recorded_as_decided() {
    let (host, mut exchange) = post(None);
    let body = call_body(4, "get_customer");
    let size = body_arrives(&host, &body[..body.len() / 2]);
    assert_eq!(exchange.on_request_body(size, false), Flow::Pause);
    // The client went away: only on_log follows.
    exchange.on_log();
    assert!(host.calls().is_empty(), "{:?}", host.calls());
    assert_eq!(exchange.state, RequestState::Reading);
}

#[test]
fn the_control_plane_down_at_the_start_is_a_503() {
    let (host, mut exchange) = post(None);
    host.0.borrow_mut().grpc_down = true;
    let size = body_arrives(&host, &call_body(5, "get_customer"));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    assert!(!host.forwarded());
    assert!(matches!(
        host.calls().last(),
        Some(Call::Reply { status: 503, .. })
    ));
}

#[test]
fn a_request_in_a_session_is_checked_and_a_refused_session_is_a_404() {
    let (host, mut exchange) = post(Some("sess-1"));
    let size = body_arrives(&host, &call_body(6, "get_customer"));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    let (token, _, request) = host.last_append();
    let check = request.session.expect("a session check");
    assert_eq!(check.session_id, "sess-1");
    assert_eq!(check.step(), SessionStep::Use);
    assert_eq!(check.subject, r#"["https://idp.example","alice"]"#);
    answer(&host, &mut exchange, token, Ok("other_identity"));
    assert!(!host.forwarded());
    let Some(Call::Reply { status, body }) = host.calls().last().cloned() else {
        panic!("no reply: {:?}", host.calls())
    };
    assert_eq!((status, &body["id"]), (404, &json!(6)));
    assert!(!body.to_string().contains("alice"), "{body}");
}

/// A forwarded POST whose answer's headers have just arrived.
fn answered(headers: &[(&str, &str)]) -> (FakeHost, Exchange<FakeHost>) {
    let (host, mut exchange) = post(None);
    let size = body_arrives(&host, &call_body(7, "get_customer"));
    exchange.on_request_body(size, true);
    let (token, _, _) = host.last_append();
    answer(&host, &mut exchange, token, Ok(""));
    assert!(host.forwarded());
    host.0.borrow_mut().calls.clear();
    for (name, value) in headers {
        host.0
            .borrow_mut()
            .response_headers
            .insert((*name).to_owned(), (*value).to_owned());
    }
    (host, exchange)
}

#[test]
fn an_answer_opening_a_session_waits_until_the_session_is_bound() {
    let (host, mut exchange) = answered(&[
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("mcp-session-id", "sess-new"),
    ]);
    assert_eq!(exchange.on_response_headers(false), Flow::Pause);
    let (token, record, request) = host.last_append();
    assert_eq!(record["event"], "mcp.session.opened");
    assert_eq!(record["session"], "sess-new");
    let check = request.session.expect("a session check");
    assert_eq!(
        (check.session_id.as_str(), check.step()),
        ("sess-new", SessionStep::Open)
    );
    assert!(!host.calls().contains(&Call::ResumeResponse));
    answer(&host, &mut exchange, token, Ok(""));
    assert_eq!(host.calls().last(), Some(&Call::ResumeResponse));
}

#[test]
fn an_answer_whose_session_cannot_be_bound_never_leaves() {
    for outcome in [Ok("other_identity"), Err(14)] {
        let (host, mut exchange) = answered(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("mcp-session-id", "sess-taken"),
        ]);
        assert_eq!(exchange.on_response_headers(false), Flow::Pause);
        let (token, _, _) = host.last_append();
        answer(&host, &mut exchange, token, outcome);
        let calls = host.calls();
        assert!(
            !calls.contains(&Call::ResumeResponse),
            "{outcome:?}: {calls:?}"
        );
        assert_eq!(calls.last(), Some(&Call::ResetResponse), "{outcome:?}");
        // Its record is queued for the root context to append.
        assert_eq!(exchange.runtime.deferred.borrow().len(), 1, "{outcome:?}");
    }
}

#[test]
fn a_buffered_answer_leaves_masked_and_only_once_recorded() {
    let (host, mut exchange) =
        answered(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(exchange.on_response_headers(false), Flow::Continue);
    let answer_body = br#"{"jsonrpc":"2.0","id":7,"result":{"card":"4111111111111111"}}"#;
    host.0.borrow_mut().response_body = answer_body[..20].to_vec();
    assert_eq!(exchange.on_response_body(20, false), Flow::Pause);
    host.0.borrow_mut().response_body = answer_body.to_vec();
    assert_eq!(
        exchange.on_response_body(answer_body.len(), false),
        Flow::Pause
    );
    // The answer ends in trailers.
    assert_eq!(exchange.on_response_trailers(), Flow::Pause);
    let sent = String::from_utf8(host.0.borrow().response_body.clone()).unwrap();
    assert!(!sent.contains("4111111111111111"), "{sent}");
    let (token, record, _) = host.last_append();
    assert_eq!(record["event"], "mcp.response");
    assert!(!record.to_string().contains("4111111111111111"));
    assert!(!host.calls().contains(&Call::ResumeResponse));
    answer(&host, &mut exchange, token, Ok(""));
    assert_eq!(host.calls().last(), Some(&Call::ResumeResponse));
}

/// The same runtime with `"responseRecord": "pipelined"`.
fn pipelined_runtime() -> Rc<Runtime> {
    let base = runtime();
    let mut config = base.config.clone();
    config.response_record = crate::config::ResponseRecord::Pipelined;
    Rc::new(Runtime::new(
        config,
        base.masker.clone(),
        Policy::compile(&base.config.policy).unwrap(),
    ))
}

#[test]
fn a_pipelined_answer_leaves_once_its_record_is_sent_and_never_without_it() {
    let answer_body = br#"{"jsonrpc":"2.0","id":7,"result":{"card":"4111111111111111"}}"#;
    // The record is sent: the answer leaves at once, masked; a failed acknowledgement later
    // cannot call it back.
    let (host, mut exchange) =
        answered(&[(":status", "200"), ("content-type", "application/json")]);
    exchange.runtime = pipelined_runtime();
    assert_eq!(exchange.on_response_headers(false), Flow::Continue);
    host.0.borrow_mut().response_body = answer_body.to_vec();
    assert_eq!(
        exchange.on_response_body(answer_body.len(), true),
        Flow::Continue
    );
    let sent = String::from_utf8(host.0.borrow().response_body.clone()).unwrap();
    assert!(!sent.contains("4111111111111111"), "{sent}");
    let (token, record, _) = host.last_append();
    assert_eq!(record["event"], "mcp.response");
    answer(&host, &mut exchange, token, Err(14));
    assert!(!host.calls().contains(&Call::ResetResponse));

    // The record cannot even be sent: the answer does not leave.
    let (host, mut exchange) =
        answered(&[(":status", "200"), ("content-type", "application/json")]);
    exchange.runtime = pipelined_runtime();
    assert_eq!(exchange.on_response_headers(false), Flow::Continue);
    host.0.borrow_mut().grpc_down = true;
    host.0.borrow_mut().response_body = answer_body.to_vec();
    assert_eq!(
        exchange.on_response_body(answer_body.len(), true),
        Flow::Pause
    );
    assert_eq!(host.calls().last(), Some(&Call::ResetResponse));
}

#[test]
fn a_stream_ending_in_trailers_with_a_held_tail_is_reset_not_cut_short() {
    let (host, mut exchange) =
        answered(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(exchange.on_response_headers(false), Flow::Continue);
    // The chunk ends inside what may be a card number: the masker holds its tail back.
    let chunk = b"event: message\ndata: {\"card\":\"4111 1111";
    host.0.borrow_mut().response_body = chunk.to_vec();
    assert_eq!(
        exchange.on_response_body(chunk.len(), false),
        Flow::Continue
    );
    let passed = String::from_utf8(host.0.borrow().response_body.clone()).unwrap();
    assert!(!passed.contains("4111 1111"), "{passed}");
    assert_eq!(exchange.on_response_trailers(), Flow::Pause);
    let calls = host.calls();
    assert!(calls.contains(&Call::ResetResponse), "{calls:?}");
    let (_, record, _) = host.last_append();
    assert_eq!(record["event"], "mcp.response");
}

#[test]
fn a_held_call_counts_as_pending_until_its_client_goes_away() {
    let (host, mut exchange) = post(None);
    exchange.state = RequestState::Held {
        awaited: true,
        counted: true,
    };
    host.gauge_add(metrics::APPROVALS_PENDING, 1);
    exchange.on_log();
    exchange.on_log();
    assert_eq!(
        host.0.borrow().gauges.get(metrics::APPROVALS_PENDING),
        Some(&0)
    );
}

#[test]
fn a_held_call_leaves_the_pending_gauge_however_its_wait_ends() {
    let (host, mut exchange) = post(None);
    let size = body_arrives(&host, &call_body(8, "update_payout_account"));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    let (token, record, _) = host.last_append();
    assert_eq!(record["decision"], "approve");
    answer(&host, &mut exchange, token, Ok(""));
    let Some(Call::Approvals { token, method }) = host.calls().last().cloned() else {
        panic!("no approval request: {:?}", host.calls())
    };
    assert_eq!(method, "Request");
    // Still pending: the call is held and long-polls, counted as pending, but the long poll
    // cannot even start (the control plane went away).
    host.0.borrow_mut().grpc_down = true;
    let pending = tollgate_proto::pb::ApprovalStatus {
        approval_id: "apr_1".into(),
        state: tollgate_proto::pb::ApprovalState::Pending.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let size = pending.len();
    host.0.borrow_mut().grpc_answer = pending;
    exchange.on_grpc_call_response(token, 0, size);
    assert!(!host.forwarded());
    assert!(matches!(
        host.calls().last(),
        Some(Call::Reply { status: 503, .. })
    ));
    assert_eq!(
        host.0.borrow().gauges.get(metrics::APPROVALS_PENDING),
        Some(&0),
        "the answered call still counts as pending"
    );
    exchange.on_log();
    assert_eq!(
        host.0.borrow().gauges.get(metrics::APPROVALS_PENDING),
        Some(&0)
    );
}

/// Held, asked for, then granted: the answer the control plane gives to `Request`.
fn granted_call(host: &FakeHost, exchange: &mut Exchange<FakeHost>) {
    let size = body_arrives(host, &call_body(8, "update_payout_account"));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    let (token, record, _) = host.last_append();
    assert_eq!(record["outcome"], "held for approval");
    answer(host, exchange, token, Ok(""));
    let Some(Call::Approvals { token, .. }) = host.calls().last().cloned() else {
        panic!("no approval request: {:?}", host.calls())
    };
    let granted = tollgate_proto::pb::ApprovalStatus {
        approval_id: "apr_7".into(),
        state: tollgate_proto::pb::ApprovalState::Granted.into(),
        decided_by: "pat".into(),
        approved_by: vec!["olga".into(), "pat".into()],
        grant_use: 1,
        ..Default::default()
    }
    .encode_to_vec();
    let size = granted.len();
    host.0.borrow_mut().grpc_answer = granted;
    exchange.on_grpc_call_response(token, 0, size);
}

#[test]
fn a_granted_call_is_forwarded_only_after_its_record_names_the_approval() {
    let (host, mut exchange) = post(None);
    granted_call(&host, &mut exchange);
    assert!(
        !host.forwarded(),
        "forwarded before the grant's record was durable"
    );
    let (token, record, _) = host.last_append();
    assert_eq!(record["event"], "mcp.forwarded");
    assert_eq!(record["approvalId"], "apr_7");
    assert_eq!(record["approvedBy"], json!(["olga", "pat"]));
    assert_eq!(record["grantUse"], 1);
    assert_eq!(record["tool"], "update_payout_account");
    answer(&host, &mut exchange, token, Ok(""));
    assert!(host.forwarded());
}

#[test]
fn a_granted_call_whose_record_fails_is_not_forwarded() {
    let (host, mut exchange) = post(None);
    granted_call(&host, &mut exchange);
    let (token, _, _) = host.last_append();
    answer(&host, &mut exchange, token, Err(14));
    assert!(!host.forwarded());
    assert!(matches!(
        host.calls().last(),
        Some(Call::Reply { status: 503, .. })
    ));
}

/// A 2026-07-28 POST by alice: the MCP headers given, with a verified token.
fn modern_post(headers: &[(&str, &str)]) -> (FakeHost, Exchange<FakeHost>) {
    let mut all = vec![
        ("content-length", "999"),
        ("mcp-protocol-version", "2026-07-28"),
    ];
    all.extend_from_slice(headers);
    post_with(None, &all)
}

fn modern_call(id: u64, tool: &str, extra: Value) -> Vec<u8> {
    let mut params = json!({"name": tool, "arguments": {"customer_id": "cus_1"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1"},
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
                  "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}});
    if let (Some(params), Value::Object(extra)) = (params.as_object_mut(), extra) {
        params.extend(extra);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
        .to_string()
        .into_bytes()
}

fn approval_status(state: tollgate_proto::pb::ApprovalState) -> Vec<u8> {
    tollgate_proto::pb::ApprovalStatus {
        approval_id: "apr_9f".into(),
        state: state.into(),
        approved_by: vec!["olga".into()],
        grant_use: 1,
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn headers_that_contradict_the_body_are_refused_recorded_and_never_forwarded() {
    let (host, mut exchange) =
        modern_post(&[("mcp-method", "tools/call"), ("mcp-name", "get_customer")]);
    let size = body_arrives(&host, &modern_call(3, "delete_merchant", json!({})));
    assert_eq!(exchange.on_request_body(size, true), Flow::Pause);
    let (token, record, _) = host.last_append();
    assert_eq!(record["status"], 400);
    assert!(
        record["reason"].as_str().unwrap().contains("Mcp-Name"),
        "{record}"
    );
    assert_eq!(record["mcpHeaders"]["mcp-name"], "get_customer");
    assert_eq!(record["messages"][0]["protocolVersion"], "2026-07-28");
    assert_eq!(record["messages"][0]["clientInfo"]["name"], "agent");
    assert!(record["messages"][0]["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-4bf9"));
    answer(&host, &mut exchange, token, Ok(""));
    assert!(!host.forwarded());
    let Some(Call::Reply { status: 400, body }) = host.calls().last().cloned() else {
        panic!("{:?}", host.calls())
    };
    assert_eq!(body["error"]["code"], -32020);
    assert_eq!(body["id"], 3);
}

#[test]
fn a_tools_list_answer_teaches_the_mirrors_every_call_is_then_checked_against() {
    let (host, mut exchange) = modern_post(&[("mcp-method", "tools/list")]);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let size = body_arrives(&host, list.to_string().as_bytes());
    exchange.on_request_body(size, true);
    let (token, _, _) = host.last_append();
    answer(&host, &mut exchange, token, Ok(""));
    assert!(host.forwarded());
    json_answer_arrives(
        &host,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "by_region", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"}}}}]}})
        .to_string()
        .into_bytes(),
    );
    exchange.on_response_headers(false);
    let size = host.0.borrow().response_body.len();
    exchange.on_response_body(size, true);
    let runtime = runtime();
    let learned = runtime.mirrors(&host);
    assert_eq!(learned["by_region"][0].header, "region");

    // The shared data is the host's: a fresh exchange (another worker) checks against it.
    let check = |headers: &[(&str, &str)], region: &str| -> Option<i64> {
        let (call_host, mut exchange) = modern_post(headers);
        call_host.0.borrow_mut().shared = host.0.borrow().shared.clone();
        let body = modern_call(5, "by_region", json!({"arguments": {"region": region}}));
        let size = body_arrives(&call_host, &body);
        exchange.on_request_body(size, true);
        let (token, _, _) = call_host.last_append();
        answer(&call_host, &mut exchange, token, Ok(""));
        match call_host.calls().last() {
            Some(Call::Reply { body, .. }) => body["error"]["code"].as_i64(),
            _ => None,
        }
    };
    let base = [("mcp-method", "tools/call"), ("mcp-name", "by_region")];
    let with = |value: &'static str| {
        let mut headers = base.to_vec();
        headers.push(("mcp-param-region", value));
        headers
    };
    assert_eq!(
        check(&with("eu-west1"), "eu-west1"),
        None,
        "agreeing headers pass"
    );
    assert_eq!(check(&with("us-east1"), "eu-west1"), Some(-32020));
    assert_eq!(check(&base, "eu-west1"), Some(-32020), "a missing mirror");
}

#[test]
fn a_held_2026_call_is_sent_to_the_approval_and_its_retry_passes_once_granted() {
    // The first round: held, asked for, pending: answered input_required at once.
    let (host, mut exchange) = modern_post(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_payout_account"),
    ]);
    assert!(
        host.request_header("content-length").is_none(),
        "a 2026 request may be rewritten: its length is the buffer filter's to set"
    );
    let held = modern_call(
        10,
        "update_payout_account",
        json!({"requestState": "server-owned", "inputResponses": {"confirm": {"action": "accept"}}}),
    );
    let size = body_arrives(&host, &held);
    exchange.on_request_body(size, true);
    let (token, record, _) = host.last_append();
    assert_eq!(record["decision"], "approve");
    assert_eq!(
        record["messages"][0]["requestStateSha256"],
        crate::jsonrpc::modern::state_hash("server-owned")
    );
    answer(&host, &mut exchange, token, Ok(""));
    let Some(Call::Approvals { token, method }) = host.calls().last().cloned() else {
        panic!("{:?}", host.calls())
    };
    assert_eq!(method, "Request");
    let pending = approval_status(tollgate_proto::pb::ApprovalState::Pending);
    let size = pending.len();
    host.0.borrow_mut().grpc_answer = pending;
    exchange.on_grpc_call_response(token, 0, size);
    let Some(Call::Reply { status: 200, body }) = host.calls().last().cloned() else {
        panic!("not answered at once: {:?}", host.calls())
    };
    let result = &body["result"];
    assert_eq!(result["resultType"], "input_required");
    let ask = &result["inputRequests"]["tollgate-approval"]["params"];
    assert_eq!(ask["mode"], "url");
    assert!(ask["url"].as_str().unwrap().ends_with("/approvals/apr_9f"));
    let state = result["requestState"].as_str().unwrap().to_owned();
    assert!(state.starts_with("tollgate-approval.v1.apr_9f."));
    assert!(!host.forwarded());

    // The retry: the gateway's state comes back; granted, it is forwarded with the server's
    // own state and answers restored and nothing of the gateway's.
    let (host, mut exchange) = modern_post(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_payout_account"),
    ]);
    let retry = modern_call(
        11,
        "update_payout_account",
        json!({"requestState": state, "inputResponses": {"tollgate-approval": {"action": "accept"}}}),
    );
    let size = body_arrives(&host, &retry);
    exchange.on_request_body(size, true);
    let (token, record, _) = host.last_append();
    assert_eq!(record["approvalRetry"]["approvalId"], "apr_9f");
    answer(&host, &mut exchange, token, Ok(""));
    let Some(Call::Approvals { token, .. }) = host.calls().last().cloned() else {
        panic!("{:?}", host.calls())
    };
    let granted = approval_status(tollgate_proto::pb::ApprovalState::Granted);
    let size = granted.len();
    host.0.borrow_mut().grpc_answer = granted;
    exchange.on_grpc_call_response(token, 0, size);
    let (token, record, _) = host.last_append();
    assert_eq!(record["event"], "mcp.forwarded");
    assert!(!host.forwarded(), "forwarded before its record was durable");
    answer(&host, &mut exchange, token, Ok(""));
    assert!(host.forwarded());
    let sent: Value = serde_json::from_slice(&host.0.borrow().request_body).unwrap();
    assert_eq!(sent["id"], 11);
    assert_eq!(sent["params"]["requestState"], "server-owned");
    assert_eq!(
        sent["params"]["inputResponses"],
        json!({"confirm": {"action": "accept"}})
    );
    assert_eq!(sent["params"]["arguments"], json!({"customer_id": "cus_1"}));
}

#[test]
fn a_retry_whose_client_declined_or_whose_state_is_forged_is_answered_never_forwarded() {
    let (host, mut exchange) = modern_post(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_payout_account"),
    ]);
    let forged = modern_call(
        12,
        "update_payout_account",
        json!({"requestState": "tollgate-approval.v1.apr_1.%%%"}),
    );
    let size = body_arrives(&host, &forged);
    exchange.on_request_body(size, true);
    let (token, record, _) = host.last_append();
    assert_eq!(record["status"], 400);
    answer(&host, &mut exchange, token, Ok(""));
    assert!(!host.forwarded());

    let (host, mut exchange) = modern_post(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_payout_account"),
    ]);
    let held = modern_call(13, "update_payout_account", json!({}));
    let message = match crate::jsonrpc::parse(&held).unwrap() {
        crate::jsonrpc::Body::Single(m) => m,
        crate::jsonrpc::Body::Batch(_) => unreachable!(),
    };
    let state = crate::jsonrpc::modern::gateway_state("apr_9f", &message);
    let declined = modern_call(
        14,
        "update_payout_account",
        json!({"requestState": state, "inputResponses": {"tollgate-approval": {"action": "decline"}}}),
    );
    let size = body_arrives(&host, &declined);
    exchange.on_request_body(size, true);
    let (token, _, _) = host.last_append();
    answer(&host, &mut exchange, token, Ok(""));
    let Some(Call::Approvals { token, .. }) = host.calls().last().cloned() else {
        panic!("{:?}", host.calls())
    };
    let pending = approval_status(tollgate_proto::pb::ApprovalState::Pending);
    let size = pending.len();
    host.0.borrow_mut().grpc_answer = pending;
    exchange.on_grpc_call_response(token, 0, size);
    let Some(Call::Reply { body, .. }) = host.calls().last().cloned() else {
        panic!("{:?}", host.calls())
    };
    assert_eq!(body["error"]["data"]["state"], "pending", "{body}");
    assert!(!host.forwarded());
}

/// Native time of one 1 KiB call's exchange (both records built, masked and encoded), for
/// profiling the VM's share: `cargo test --release -p tollgate-filter exchange_cost --
/// --ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly"]
fn exchange_cost() {
    let request = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fixed_result","arguments":{"bytes":1024,"pans":1}}}"#;
    let text = format!(
        "card on file: 4111111111111111\\n{}",
        "settled without exception, nothing to report for this batch.\\n".repeat(16)
    );
    let response = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}}}"#
    );
    let rounds = std::env::var("EXCHANGE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000u32);
    let runtime = runtime();
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let (host, mut exchange) = post_on(runtime.clone(), None, &[]);
        let size = body_arrives(&host, request);
        exchange.on_request_body(size, true);
        let (token, _, _) = host.last_append();
        answer(&host, &mut exchange, token, Ok(""));
        json_answer_arrives(&host, response.as_bytes().to_vec());
        exchange.on_response_headers(false);
        exchange.on_response_body(response.len(), true);
        let (token, _, _) = host.last_append();
        answer(&host, &mut exchange, token, Ok(""));
        assert_eq!(host.calls().last(), Some(&Call::ResumeResponse));
    }
    eprintln!(
        "{:.1} µs per exchange",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
}
