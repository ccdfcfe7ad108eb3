use std::rc::Rc;
use std::time::Duration;

use prost::Message as _;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel};
use tollgate_proto::pb::{AppendRequest, AppendResponse, ApprovalStatus, AwaitRequest};

use super::host;
use super::root::Runtime;
use super::stats;
use crate::approval::{self, Ask};
use crate::flow::{self, LocalReply, Next, ResponseMode, Step};
use crate::identity::Identity;
use crate::mask::{MaskReport, StreamMasker};
use crate::metrics;
use crate::policy::CallContext;
use crate::record::{self, RequestInfo, ResponseSummary};
use crate::timefmt::rfc3339_micros;

const JWT_AUTHN_METADATA: &str = "envoy.filters.http.jwt_authn";

/// What an outstanding gRPC call is for.
enum Waiting {
    /// The audit append of the request's record; then `Next`.
    Audit(Next),
    /// An approval request or long poll for the held call.
    Approval(Box<Ask>),
    /// The response record of a buffered answer, which is held until it is durable.
    ResponseAudit,
    /// The response record of a streamed answer, already passed on.
    StreamedResponseAudit,
    /// The record of an answer that opens a session, whose headers wait until the session is
    /// bound; then what the headers callback would have done.
    SessionOpen(AfterOpen),
}

/// What an answer's headers do once the session it opens is bound.
#[derive(Clone, Copy)]
enum AfterOpen {
    Resume,
    /// A headers-only answer: recorded next.
    RecordAnswer,
}

/// How much of the deferred-record queue a record may fill.
enum Room {
    All,
    Half,
}

/// One HTTP request through the gateway.
pub struct TollgateHttp {
    runtime: Rc<Runtime>,
    info: RequestInfo,
    identity: Option<Identity>,
    /// Set once the request is decided; later body callbacks only keep it paused.
    decided: bool,
    /// The audit append in flight and what to do once it is acknowledged.
    pending: Option<(u32, Waiting)>,
    /// Set once the held call has long-polled for its approval: a second "pending" ends the wait.
    approval_awaited: bool,
    request_body: Option<Vec<u8>>,
    /// Bytes of request body Envoy has buffered for this filter so far.
    request_body_size: usize,
    /// A list request whose answer the policy filters.
    list_method: Option<String>,
    /// The filter answered itself; its own reply passes back through it untouched.
    replied_locally: bool,
    /// Envoy answered itself because the upstream failed: the JSON-RPC error that replaces its
    /// plain-text body.
    upstream_failure: Option<LocalReply>,
    response_mode: ResponseMode,
    /// Microseconds spent masking this stream's chunks so far (for `tollgate.mask_us`).
    stream_mask_us: u64,
    response_status: Option<u32>,
    /// Bytes of the (masked) answer so far, and its first bytes for the record.
    response_bytes: usize,
    /// Bytes of a buffered answer Envoy holds for this filter so far.
    response_body_size: usize,
    response_excerpt: Vec<u8>,
    started: std::time::SystemTime,
    /// Read in the headers callback: Envoy refuses header access once they have been sent, and
    /// the SDK turns that refusal into a panic.
    response_content_type: Option<String>,
    stream: StreamMasker,
    masked: MaskReport,
    /// When the audit append in flight was sent, for its latency.
    append_sent: std::time::SystemTime,
    /// This call counts in the approvals-pending gauge until its long poll ends.
    holding_approval: bool,
    /// The request record, kept only when fail-open is configured: queued if its append fails.
    fail_open_record: Option<serde_json::Value>,
    /// Passed fail-open: its response record is queued too if it cannot be appended.
    failed_open: bool,
    /// The response record in flight, kept for the queue when the call passed fail-open.
    response_record: Option<Vec<u8>>,
    /// The response record was appended (or tried): nothing is due when the stream ends.
    response_recorded: bool,
    /// The request record as sent, until its append is acknowledged.
    request_record_json: Option<Vec<u8>>,
}

impl TollgateHttp {
    pub fn new(runtime: Rc<Runtime>) -> Self {
        TollgateHttp {
            runtime,
            info: RequestInfo::default(),
            identity: None,
            decided: false,
            pending: None,
            approval_awaited: false,
            request_body: None,
            request_body_size: 0,
            list_method: None,
            replied_locally: false,
            upstream_failure: None,
            response_mode: ResponseMode::Pass,
            stream_mask_us: 0,
            response_status: None,
            response_bytes: 0,
            response_body_size: 0,
            response_excerpt: Vec::new(),
            started: std::time::SystemTime::UNIX_EPOCH,
            response_content_type: None,
            stream: StreamMasker::default(),
            masked: MaskReport::default(),
            append_sent: std::time::SystemTime::UNIX_EPOCH,
            holding_approval: false,
            fail_open_record: None,
            failed_open: false,
            response_record: None,
            response_recorded: false,
            request_record_json: None,
        }
    }

    fn read_request_info(&mut self) {
        self.started = host::now();
        let session_id = host::request_header("mcp-session-id");
        self.info = RequestInfo {
            time: rfc3339_micros(self.started),
            http_method: host::request_header(":method").unwrap_or_default(),
            path: host::request_header(":path").unwrap_or_default(),
            source: host::property(vec!["source", "address"]),
            node: host::property(vec!["node", "id"]),
            session_id,
            request_id: host::request_header("x-request-id"),
            peer_principal: host::property(vec!["connection", "uri_san_peer_certificate"]),
        };
    }

    fn verify_identity(&self) -> Result<Identity, crate::identity::IdentityError> {
        let config = &self.runtime.config;
        let sub = host::property(vec![
            "metadata",
            "filter_metadata",
            JWT_AUTHN_METADATA,
            &config.jwt_metadata_key,
            "sub",
        ]);
        let payload = host::request_header(&config.jwt_payload_header);
        let has_token = host::request_header("authorization").is_some();
        Identity::from_jwt_authn(sub.as_deref(), payload.as_deref(), has_token)
    }

    /// Appends the step's record; the request waits for the acknowledgement.
    fn audit_then(&mut self, step: Step) -> Action {
        self.decided = true;
        stats::count(metrics::CALLS, 1);
        stats::count_record(&step.record);
        self.append_sent = host::now();
        let config = &self.runtime.config;
        if step.next == Next::Forward && config.fail_open.allows(&step.record) {
            self.fail_open_record = Some(step.record.clone());
        }
        // A forwarded request in a session is checked against the session's owner by the
        // control plane, with its record.
        let session = self
            .identity
            .as_ref()
            .and_then(|identity| flow::session_check(&self.info, identity, &step.next));
        let append = AppendRequest {
            record_json: step.record.to_string().into_bytes(),
            session,
        };
        let message = append.encode_to_vec();
        // Kept (not copied) in case the append fails: see `audit_failed`.
        self.request_record_json = Some(append.record_json);
        let timeout = Duration::from_millis(config.audit_timeout_ms);
        match host::grpc_call(
            &config.control_plane_cluster,
            tollgate_proto::service::AUDIT,
            "Append",
            &message,
            timeout,
        ) {
            Some(token) => {
                self.pending = Some((token, Waiting::Audit(step.next)));
                Action::Pause
            }
            None => {
                // Could not even start: as if the control plane were unreachable (UNAVAILABLE).
                stats::count(metrics::AUDIT_APPEND_FAILURES, 1);
                self.audit_failed(step.next, 14);
                Action::Pause
            }
        }
    }

    /// Keeps a record for the root context to append (once the control plane answers); `false`
    /// when the queue is full.
    fn defer_record(&self, record: Vec<u8>, room: Room) -> bool {
        let max = self.runtime.config.fail_open.max_queued;
        let max = match room {
            Room::All => max,
            // Notes and abandoned streams leave half the queue to fail-open calls, which would
            // otherwise fail closed during a long outage.
            Room::Half => max / 2,
        };
        let queued = self.runtime.deferred.borrow_mut().push(record, max).is_ok();
        if !queued {
            host::log(
                LogLevel::Warn,
                "tollgate: deferred-record queue full (failOpen.maxQueued)",
            );
        }
        queued
    }

    /// No acknowledged record: a forward becomes a 503 (unless it is a read configured to fail
    /// open and its record fits in the queue); a refusal is still sent. The record may still
    /// land late (a slow control plane), so a note that the call was not forwarded follows it
    /// once the control plane answers.
    fn audit_failed(&mut self, next: Next, grpc_status: u32) {
        if let (Next::Forward, Some(record)) = (&next, self.fail_open_record.take()) {
            let marked = crate::failopen::mark(&record).to_string().into_bytes();
            if self.defer_record(marked, Room::All) {
                self.failed_open = true;
                stats::count(metrics::FAIL_OPEN, 1);
                host::resume_request();
                return;
            }
        }
        let note = self.request_record_json.take().and_then(|request| {
            crate::failopen::failed_closed(&request, &rfc3339_micros(host::now()), grpc_status)
        });
        if let Some(note) = note {
            self.defer_record(note.to_string().into_bytes(), Room::Half);
        }
        let reply = match next {
            Next::Forward | Next::Approve(_) => {
                flow::audit_unavailable(self.request_body.as_deref())
            }
            Next::Reply(reply) => reply,
        };
        self.send(&reply);
    }

    /// The audit record is durable: act on the decision.
    fn audited(&mut self, next: Next) {
        self.request_record_json = None;
        match next {
            Next::Forward => host::resume_request(),
            Next::Reply(reply) => self.send(&reply),
            Next::Approve(ask) => {
                let message = ask.request.encode_to_vec();
                self.call_approvals(
                    "Request",
                    &message,
                    self.runtime.config.audit_timeout_ms,
                    ask,
                );
            }
        }
    }

    fn call_approvals(&mut self, method: &str, message: &[u8], timeout_ms: u64, ask: Box<Ask>) {
        let cluster = self.runtime.config.control_plane_cluster.clone();
        let timeout = Duration::from_millis(timeout_ms);
        match host::grpc_call(
            &cluster,
            tollgate_proto::service::APPROVALS,
            method,
            message,
            timeout,
        ) {
            Some(token) => self.pending = Some((token, Waiting::Approval(ask))),
            None => {
                let outcome = approval::unavailable(&ask);
                self.approval_outcome(ask, outcome, "");
            }
        }
    }

    fn on_approval_status(&mut self, ask: Box<Ask>, status_code: u32, response_size: usize) {
        self.release_approval_gauge();
        let status = (status_code == 0)
            .then(|| ApprovalStatus::decode(host::grpc_response(response_size).as_slice()).ok())
            .flatten()
            .filter(|status| !status.approval_id.is_empty());
        let Some(status) = status else {
            host::log(
                LogLevel::Warn,
                &format!(
                    "tollgate: approval call failed (grpc status {status_code}); failing closed"
                ),
            );
            let outcome = approval::unavailable(&ask);
            return self.approval_outcome(ask, outcome, "");
        };
        let outcome = approval::on_status(&ask, &status);
        self.approval_outcome(ask, outcome, &status.expires_at);
    }

    fn approval_outcome(&mut self, ask: Box<Ask>, outcome: approval::Outcome, expires_at: &str) {
        match outcome {
            approval::Outcome::Forward => host::resume_request(),
            approval::Outcome::Reply(reply) => self.send(&reply),
            approval::Outcome::Wait(approval_id) if !self.approval_awaited => {
                // Long poll: the control plane answers the moment the approval is decided.
                self.approval_awaited = true;
                self.holding_approval = true;
                stats::gauge_add(metrics::APPROVALS_PENDING, 1);
                let wait_ms = self.runtime.config.approval_wait_ms;
                let message = AwaitRequest {
                    approval_id,
                    wait_ms: u32::try_from(wait_ms).unwrap_or(u32::MAX),
                }
                .encode_to_vec();
                let timeout_ms = wait_ms + self.runtime.config.audit_timeout_ms;
                self.call_approvals("Await", &message, timeout_ms, ask);
            }
            approval::Outcome::Wait(approval_id) => {
                self.send(&approval::still_pending(&ask, &approval_id, expires_at));
            }
        }
    }

    /// An answer that names a new session (the answer to initialize) binds it to the caller
    /// in the control plane before its headers leave: the client cannot use the id before
    /// every Envoy would accept it, and nobody else can claim it. `then` is what the headers
    /// callback does otherwise.
    fn open_session_then(&mut self, then: Action, after: AfterOpen) -> Action {
        let Some(identity) = &self.identity else {
            return then;
        };
        let answered = host::response_header("mcp-session-id");
        let Some(check) = flow::session_opened(&self.info, identity, answered.as_deref()) else {
            return then;
        };
        let config = &self.runtime.config;
        let record = record::session_opened(
            &self.info,
            config,
            identity,
            &check.session_id,
            &rfc3339_micros(host::now()),
            &self.runtime.masker,
        );
        stats::count_record(&record);
        self.append_sent = host::now();
        let message = AppendRequest {
            record_json: record.to_string().into_bytes(),
            session: Some(check),
        }
        .encode_to_vec();
        match host::grpc_call(
            &config.control_plane_cluster,
            tollgate_proto::service::AUDIT,
            "Append",
            &message,
            Duration::from_millis(config.audit_timeout_ms),
        ) {
            Some(token) => {
                self.pending = Some((token, Waiting::SessionOpen(after)));
            }
            None => {
                stats::count(metrics::AUDIT_APPEND_FAILURES, 1);
                self.session_not_bound();
            }
        }
        Action::Pause
    }

    /// The session an answer opens could not be bound (control plane down, or the id is
    /// another identity's): the answer, which would hand out the id, never leaves.
    fn session_not_bound(&mut self) {
        host::log(
            LogLevel::Warn,
            "tollgate: the session an answer opens could not be bound; resetting",
        );
        self.response_recorded = true;
        if let Some(mut record) = self.response_json(false, host::now()) {
            record["outcome"] = "reset: the session it opens could not be bound".into();
            stats::count_record(&record);
            self.defer_record(record.to_string().into_bytes(), Room::Half);
        }
        host::reset_response();
    }

    fn note_response_bytes(&mut self, bytes: &[u8]) {
        self.response_bytes += bytes.len();
        let room = record::RESPONSE_EXCERPT_BYTES.saturating_sub(self.response_excerpt.len());
        self.response_excerpt
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Appends the response record. A buffered answer waits for the acknowledgement; a
    /// streamed one has already passed and is recorded at its end.
    fn record_response(&mut self, streamed: bool) -> Action {
        self.response_recorded = true;
        let now = host::now();
        let Some(mut record) = self.response_json(streamed, now) else {
            return Action::Continue;
        };
        stats::count_record(&record);
        if self.failed_open {
            record["failOpen"] = true.into();
            self.response_record = Some(record.to_string().into_bytes());
        }
        self.append_sent = now;
        let config = &self.runtime.config;
        let message = AppendRequest {
            record_json: record.to_string().into_bytes(),
            session: None,
        }
        .encode_to_vec();
        let timeout = Duration::from_millis(config.audit_timeout_ms);
        let token = host::grpc_call(
            &config.control_plane_cluster,
            tollgate_proto::service::AUDIT,
            "Append",
            &message,
            timeout,
        );
        if token.is_none() {
            stats::count(metrics::AUDIT_APPEND_FAILURES, 1);
        }
        match (token, streamed) {
            (Some(token), true) => {
                self.pending = Some((token, Waiting::StreamedResponseAudit));
                Action::Continue
            }
            (Some(token), false) => {
                self.pending = Some((token, Waiting::ResponseAudit));
                Action::Pause
            }
            (None, true) => {
                self.queue_response_record();
                Action::Continue
            }
            (None, false) if self.queue_response_record() => Action::Continue,
            (None, false) => {
                host::reset_response();
                Action::Pause
            }
        }
    }

    /// The response record of the answer so far.
    fn response_json(
        &self,
        streamed: bool,
        now: std::time::SystemTime,
    ) -> Option<serde_json::Value> {
        let identity = self.identity.as_ref()?;
        let summary = ResponseSummary {
            time: rfc3339_micros(now),
            status: self.response_status,
            bytes: self.response_bytes,
            duration_micros: now
                .duration_since(self.started)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            masked: &self.masked,
            excerpt: &self.response_excerpt,
            streamed,
        };
        Some(record::mcp_response(
            &self.info,
            &self.runtime.config,
            identity,
            &summary,
            &self.runtime.masker,
        ))
    }

    /// The client left in the middle of a stream: part of the answer reached it, so the record
    /// is still due. The context is going away, so the root context appends it later.
    fn record_abandoned_stream(&mut self) {
        let Some(mut record) = self.response_json(true, host::now()) else {
            return;
        };
        record["aborted"] = true.into();
        if self.failed_open {
            record["failOpen"] = true.into();
        }
        stats::count_record(&record);
        self.defer_record(record.to_string().into_bytes(), Room::Half);
    }

    /// The response record of a fail-open call could not be appended: queue it. `false` when
    /// this call did not pass fail-open or the queue is full.
    fn queue_response_record(&mut self) -> bool {
        match self.response_record.take() {
            Some(record) => self.defer_record(record, Room::All),
            None => false,
        }
    }

    fn release_approval_gauge(&mut self) {
        if std::mem::take(&mut self.holding_approval) {
            stats::gauge_add(metrics::APPROVALS_PENDING, -1);
        }
    }

    /// Latency of an acknowledged append; a count of those that failed.
    fn note_append(&self, acked: bool) {
        if acked {
            let took = host::now()
                .duration_since(self.append_sent)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            stats::record(metrics::AUDIT_APPEND_MS, took);
        } else {
            stats::count(metrics::AUDIT_APPEND_FAILURES, 1);
        }
    }

    /// The whole body is here (its end, trailers, or past the size limit): decide it. Without a
    /// verified identity the call was already refused at its headers; stay paused.
    fn decide_request_body(&mut self) -> Action {
        let runtime = Rc::clone(&self.runtime);
        let Some(identity) = self.identity.clone() else {
            return Action::Pause;
        };
        let body_size = self.request_body_size;
        if body_size > runtime.config.max_request_bytes {
            return self.audit_then(flow::too_large(
                &runtime.config,
                &runtime.masker,
                &self.info,
                &identity,
            ));
        }
        let body = host::buffer(BufferType::HttpRequestBody, body_size);
        let step = flow::request(
            &runtime.config,
            &runtime.policy,
            &runtime.masker,
            &self.info,
            &identity,
            Some(&body),
        );
        self.list_method = flow::list_method(&runtime.policy, Some(&body));
        self.request_body = Some(body);
        self.audit_then(step)
    }

    /// The buffered answer is whole (its end, or trailers): filter a list, mask, replace the
    /// body, and hold it until its record is acknowledged.
    fn finish_buffered_response(&mut self) -> Action {
        let runtime = Rc::clone(&self.runtime);
        let body_size = self.response_body_size;
        if let Some(reply) = self.upstream_failure.take() {
            if !host::set_buffer(BufferType::HttpResponseBody, body_size, &reply.body) {
                host::reset_response();
                return Action::Pause;
            }
            self.note_response_bytes(&reply.body);
            return self.record_response(false);
        }
        let original = host::buffer(BufferType::HttpResponseBody, body_size);
        let mut body = std::borrow::Cow::from(&original);
        if let (Some(method), Some(identity)) = (&self.list_method, &self.identity) {
            let ctx =
                CallContext::for_identity(identity, &self.info.path, &runtime.config.upstream);
            if let Some(filtered) = flow::filter_list_body(&runtime.policy, method, &ctx, &body) {
                body = filtered.into();
            }
        }
        let started = host::now();
        let masked = runtime.masker.mask_content(
            self.response_content_type.as_deref(),
            &body,
            &mut self.masked,
        );
        stats::record(crate::metrics::MASK_US, micros_since(started));
        if masked != original && !host::set_buffer(BufferType::HttpResponseBody, body_size, &masked)
        {
            host::log(
                LogLevel::Error,
                "tollgate: could not replace the response body; resetting",
            );
            host::reset_response();
            return Action::Pause;
        }
        self.note_response_bytes(&masked);
        self.record_response(false)
    }

    fn send(&mut self, reply: &LocalReply) {
        self.replied_locally = true;
        self.response_mode = ResponseMode::Pass;
        host::send_reply(reply.status, &reply.headers, &reply.body);
    }
}

impl Context for TollgateHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some((token, waiting)) = self.pending.take() else {
            return;
        };
        if token != token_id {
            self.pending = Some((token, waiting));
            return;
        }
        if let Waiting::Approval(ask) = waiting {
            return self.on_approval_status(ask, status_code, response_size);
        }
        // An empty or undecodable reply is a failure, the same as a gRPC error.
        let ack = (status_code == 0)
            .then(|| AppendResponse::decode(host::grpc_response(response_size).as_slice()).ok())
            .flatten()
            .filter(|ack| !ack.chain_hash.is_empty());
        let acked = ack.is_some();
        let session_refused = ack.is_some_and(|ack| !ack.session_refused.is_empty());
        self.note_append(acked);
        match waiting {
            Waiting::Approval(_) => {}
            Waiting::Audit(_) if session_refused => {
                stats::count(metrics::SESSIONS_REFUSED, 1);
                self.send(&flow::session_refused(self.request_body.as_deref()));
            }
            Waiting::Audit(next) if acked => self.audited(next),
            Waiting::Audit(next) => {
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: audit append failed (grpc status {status_code}); failing closed"
                    ),
                );
                self.audit_failed(next, status_code);
            }
            Waiting::ResponseAudit if acked => host::resume_response(),
            Waiting::ResponseAudit if self.queue_response_record() => host::resume_response(),
            Waiting::ResponseAudit => {
                // An answer that cannot be recorded does not leave the gateway.
                host::log(
                    LogLevel::Warn,
                    "tollgate: response record not acknowledged; resetting",
                );
                host::reset_response();
            }
            Waiting::SessionOpen(_) if !acked || session_refused => self.session_not_bound(),
            Waiting::SessionOpen(AfterOpen::Resume) => host::resume_response(),
            Waiting::SessionOpen(AfterOpen::RecordAnswer) => {
                if self.record_response(false) == Action::Continue {
                    host::resume_response();
                }
            }
            Waiting::StreamedResponseAudit => {
                if !acked && !self.queue_response_record() {
                    host::log(
                        LogLevel::Warn,
                        "tollgate: streamed response record not acknowledged",
                    );
                }
            }
        }
    }
}

impl HttpContext for TollgateHttp {
    fn on_log(&mut self) {
        // A held call whose client went away leaves the approvals-pending gauge too.
        self.release_approval_gauge();
        if self.response_mode == ResponseMode::Stream && !self.response_recorded {
            self.record_abandoned_stream();
        }
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if host::request_header("x-tollgate-fault").as_deref() == Some("panic") {
            #[allow(clippy::panic)]
            {
                panic!("tollgate: injected fault");
            }
        }
        self.read_request_info();
        // Masking needs plain bytes: ask the upstream not to compress.
        host::set_request_header("accept-encoding", None);
        let runtime = Rc::clone(&self.runtime);
        let mut identity = self.verify_identity();
        // The upstream learns nothing from the forwarded claims header; keep it inside Envoy.
        host::set_request_header(&runtime.config.jwt_payload_header, None);
        let revocations = runtime.revocations();
        if let Ok(id) = identity.as_mut() {
            // A service account's call names the person who answers for it, or stops here.
            if let Some(step) = flow::attribute(
                &runtime.config,
                &runtime.masker,
                &self.info,
                id,
                &revocations.owners,
            ) {
                return self.audit_then(step);
            }
        }
        // Revoked callers stop here, even with a token that is still valid.
        let revocation = identity
            .as_ref()
            .ok()
            .and_then(|id| revocations.find(id).cloned());
        match identity {
            Err(error) => self.audit_then(flow::unauthenticated(
                &runtime.config,
                &runtime.masker,
                &self.info,
                &error,
            )),
            Ok(identity) if revocation.is_some() => {
                let Some(entry) = revocation else {
                    return Action::Pause;
                };
                let step = flow::revoked(
                    &runtime.config,
                    &runtime.masker,
                    &self.info,
                    &identity,
                    &entry,
                );
                self.audit_then(step)
            }
            Ok(identity) => {
                let step = flow::headers_only(
                    &runtime.config,
                    &runtime.policy,
                    &runtime.masker,
                    &self.info,
                    &identity,
                    end_of_stream,
                );
                self.identity = Some(identity);
                match step {
                    Some(step) => self.audit_then(step),
                    // A POST whose body follows. The headers go on to Envoy's buffer filter,
                    // which holds them (and the router) until this filter releases the body:
                    // the upstream sees nothing of an undecided call. (Pausing here would stop
                    // the body from reaching this filter at all.)
                    None => Action::Continue,
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.decided {
            return Action::Pause;
        }
        self.request_body_size = body_size;
        if body_size > self.runtime.config.max_request_bytes {
            return self.decide_request_body();
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.decide_request_body()
    }

    /// Trailers end the body as surely as END_STREAM does: the call is decided and recorded
    /// now, and the trailers wait with the body until then.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.decided {
            return Action::Pause;
        }
        self.decide_request_body()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied_locally {
            return Action::Continue;
        }
        if end_of_stream {
            // An answer without a body (a session's DELETE, a notification's 202) is an answer
            // too: recorded before it leaves.
            self.response_status = host::response_header(":status").and_then(|s| s.parse().ok());
            if let Action::Pause = self.open_session_then(Action::Continue, AfterOpen::RecordAnswer)
            {
                return Action::Pause;
            }
            return self.record_response(false);
        }
        let upstream_failure = host::property(vec!["response", "code_details"])
            .and_then(|details| flow::upstream_failure(&details, self.request_body.as_deref()));
        if let Some(reply) = upstream_failure {
            // Envoy's own reply (upstream down or too slow) becomes a JSON-RPC error; its body is
            // replaced at the end and recorded as the call's response.
            host::set_response_header(":status", Some(&reply.status.to_string()));
            host::set_response_header("content-type", Some("application/json"));
            host::set_response_header("content-length", None);
            self.response_status = Some(reply.status);
            self.response_mode = ResponseMode::Buffer;
            self.upstream_failure = Some(reply);
            return Action::Continue;
        }
        self.response_status = host::response_header(":status").and_then(|s| s.parse().ok());
        self.response_content_type = host::response_header("content-type");
        let encoding = host::response_header("content-encoding");
        let handling = self
            .runtime
            .masker
            .handling(self.response_content_type.as_deref(), encoding.as_deref());
        let Some(mode) = ResponseMode::for_handling(handling) else {
            self.send(&flow::unmaskable_response_refused(
                self.response_content_type.as_deref(),
                encoding.as_deref(),
                self.request_body.as_deref(),
            ));
            return Action::Pause;
        };
        self.response_mode = mode;
        if self.response_mode == ResponseMode::Pass {
            return self.open_session_then(Action::Continue, AfterOpen::Resume);
        }
        // A list answer is short and complete: buffer it, even as SSE, to filter it whole. So is
        // a stream that announces trailers: the masker may hold its last event back (a card
        // number can go on in the next event), and nothing can be sent after trailers.
        if self.list_method.is_some() || host::response_header("trailer").is_some() {
            self.response_mode = ResponseMode::Buffer;
        }
        // Masking changes the length.
        host::set_response_header("content-length", None);
        // Never pause here to wait for the body: Envoy would then withhold it from this filter
        // as well. A pause for the session binding ends with its acknowledgement.
        self.open_session_then(Action::Continue, AfterOpen::Resume)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let runtime = Rc::clone(&self.runtime);
        match self.response_mode {
            ResponseMode::Pass => Action::Continue,
            ResponseMode::Buffer => {
                if body_size > runtime.config.max_response_bytes {
                    // The headers are already on their way: end the stream rather than let an
                    // unmasked body through.
                    host::log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: response body exceeds {} bytes; resetting the stream",
                            runtime.config.max_response_bytes
                        ),
                    );
                    self.response_mode = ResponseMode::Pass;
                    host::reset_response();
                    return Action::Pause;
                }
                self.response_body_size = body_size;
                if !end_of_stream {
                    return Action::Pause;
                }
                self.finish_buffered_response()
            }
            ResponseMode::Stream => {
                let chunk = host::buffer(BufferType::HttpResponseBody, body_size);
                let started = host::now();
                let mut out = self.stream.push(&runtime.masker, &chunk, &mut self.masked);
                if end_of_stream {
                    out.extend(self.stream.finish(&runtime.masker, &mut self.masked));
                }
                self.stream_mask_us += micros_since(started);
                if end_of_stream {
                    stats::record(crate::metrics::MASK_US, self.stream_mask_us);
                }
                self.note_response_bytes(&out);
                if out != chunk && !host::set_buffer(BufferType::HttpResponseBody, body_size, &out)
                {
                    // The chunk cannot be replaced: end the stream rather than leak it.
                    host::log(
                        LogLevel::Error,
                        "tollgate: could not replace a stream chunk; resetting",
                    );
                    host::reset_response();
                }
                if end_of_stream {
                    return self.record_response(true);
                }
                Action::Continue
            }
        }
    }

    /// Trailers end the answer without a last body chunk carrying END_STREAM: a buffered answer
    /// is masked and recorded now, and the trailers follow it once its record is acknowledged;
    /// a streamed one is recorded at its end.
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.response_mode {
            ResponseMode::Pass => Action::Continue,
            ResponseMode::Buffer => self.finish_buffered_response(),
            ResponseMode::Stream => {
                let started = host::now();
                let tail = self.stream.finish(&self.runtime.masker, &mut self.masked);
                self.stream_mask_us += micros_since(started);
                stats::record(crate::metrics::MASK_US, self.stream_mask_us);
                if !tail.is_empty() {
                    // The held-back tail of the last chunk (a possible card number cut at the
                    // chunk's end) cannot be sent in front of trailers: end the stream rather
                    // than pass a truncated answer as whole.
                    host::log(
                        LogLevel::Warn,
                        "tollgate: streamed answer ended in trailers with masked bytes pending; resetting",
                    );
                    self.note_response_bytes(&tail);
                    self.record_response(true);
                    host::reset_response();
                    return Action::Pause;
                }
                self.record_response(true)
            }
        }
    }
}

/// Microseconds of host time since `started` (0 if the clock went backwards).
fn micros_since(started: std::time::SystemTime) -> u64 {
    host::now()
        .duration_since(started)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
