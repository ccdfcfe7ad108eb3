//! One HTTP request through the gateway, from its headers to its log: everything the Envoy glue
//! used to do between host calls, behind the [`Host`] seam so that trailers, resets, late
//! acknowledgements and local replies are tested natively (`tests.rs`, against a scripted host),
//! not only end to end. The glue (`glue/http.rs`) only forwards proxy-wasm callbacks here.

mod host;
mod state;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tollgate_proto::pb::{AppendRequest, AppendResponse, ApprovalStatus, AwaitRequest};

pub use host::{count_record, Buffer, Flow, Host, Level};
pub use state::RequestState;

use crate::approval::{self, Ask};
use crate::config::{FilterConfig, ResponseRecord};
use crate::failopen::Queue;
use crate::flow::{self, LocalReply, Next, ResponseMode, Step};
use crate::identity::Identity;
use crate::jsonrpc::modern::{self, McpHeaders, Mirrors};
use crate::mask::{MaskReport, Masker, StreamMasker};
use crate::metrics;
use crate::policy::listen::ListenFilter;
use crate::policy::{CallContext, Policy};
use crate::record::{self, RequestInfo, ResponseSummary};
use crate::revocation::RevocationSet;
use crate::timefmt::rfc3339_micros;

const JWT_AUTHN_METADATA: &str = "envoy.filters.http.jwt_authn";

/// Shared-data key of the revocation list: written by every worker's root context, read by
/// every request.
pub const REVOCATIONS_KEY: &str = "tollgate.revocations";

/// Shared-data key prefix of the tools' mirrored parameters (`x-mcp-header`), per upstream, as
/// the `tools/list` answers that passed any worker said: every worker checks `Mcp-Param-*`
/// headers against them. Per upstream: two servers may name different tools alike.
pub const MIRRORS_KEY: &str = "tollgate.mirrors.";

/// Everything a request needs from the configuration, built once per configuration load.
pub struct Runtime {
    pub config: FilterConfig,
    pub masker: Masker,
    pub policy: Policy,
    /// The revocation list last parsed from shared data, by its CAS token: parsed again only
    /// when another worker (or this one) stored a new list.
    pub revocations: RefCell<(Option<u32>, Rc<RevocationSet>)>,
    /// The tools' mirrored parameters last parsed from shared data, by CAS token.
    pub mirrors: RefCell<(Option<u32>, Rc<Mirrors>)>,
    /// Records this worker's root context appends later: those of calls that passed fail-open
    /// while the control plane was unreachable, and those of streams their client abandoned.
    pub deferred: RefCell<Queue>,
}

impl Runtime {
    pub fn new(config: FilterConfig, masker: Masker, policy: Policy) -> Self {
        Runtime {
            config,
            masker,
            policy,
            revocations: RefCell::default(),
            mirrors: RefCell::default(),
            deferred: RefCell::default(),
        }
    }

    /// The current revocations, from shared data.
    pub fn revocations(&self, host: &impl Host) -> Rc<RevocationSet> {
        cached_shared(host, REVOCATIONS_KEY, &self.revocations, |b| {
            RevocationSet::from_json(b)
        })
    }
}

impl Runtime {
    fn mirrors_key(&self) -> String {
        format!("{MIRRORS_KEY}{}", self.config.upstream)
    }

    /// The mirrored parameters every worker has learned, from shared data.
    pub fn mirrors(&self, host: &impl Host) -> Rc<Mirrors> {
        cached_shared(host, &self.mirrors_key(), &self.mirrors, |b| {
            serde_json::from_slice(b).ok()
        })
    }

    /// Adds what a `tools/list` answer says to the shared mirrors. Tools keep their latest
    /// schema; a tool no answer names again keeps what was learned (lists come in pages).
    pub fn learn_mirrors(&self, host: &impl Host, learned: Mirrors) {
        let key = self.mirrors_key();
        for _ in 0..3 {
            let (bytes, cas) = host.shared_bytes(&key);
            let mut all: Mirrors = bytes
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let before = all.len();
            let mut changed = false;
            for (tool, mirrors) in &learned {
                if all.get(tool) != Some(mirrors) {
                    all.insert(tool.clone(), mirrors.clone());
                    changed = true;
                }
            }
            if !changed && all.len() == before {
                return;
            }
            let json = serde_json::to_vec(&all).unwrap_or_default();
            if host.set_shared_bytes(&key, &json, cas) {
                return;
            }
            // Another worker wrote first: merge again over what it wrote.
        }
        host.log(
            Level::Warn,
            "tollgate: could not store the tools' mirrored parameters (shared data kept changing)",
        );
    }
}

/// Shared data `key`, parsed by `parse` (absent or unparsable: the default), and kept in `cache`
/// until another worker (or this one) stores a new value: parsed again only when its CAS token
/// changes.
fn cached_shared<T: Default>(
    host: &impl Host,
    key: &str,
    cache: &RefCell<(Option<u32>, Rc<T>)>,
    parse: impl FnOnce(&[u8]) -> Option<T>,
) -> Rc<T> {
    let (bytes, cas) = host.shared_bytes(key);
    let mut cached = cache.borrow_mut();
    if cas.is_some() && cached.0 == cas {
        return Rc::clone(&cached.1);
    }
    let value = bytes.and_then(|b| parse(&b)).unwrap_or_default();
    *cached = (cas, Rc::new(value));
    Rc::clone(&cached.1)
}

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
pub struct Exchange<H: Host> {
    host: H,
    runtime: Rc<Runtime>,
    info: RequestInfo,
    identity: Option<Identity>,
    state: RequestState,
    /// The audit append in flight and what to do once it is acknowledged.
    pending: Option<(u32, Waiting)>,
    request_body: Option<Vec<u8>>,
    /// Bytes of request body Envoy has buffered for this filter so far.
    request_body_size: usize,
    /// A list request whose answer the policy filters.
    list_method: Option<String>,
    /// A `tools/list` request: its answer teaches the gateway the tools' mirrored parameters.
    learns_tools: bool,
    /// A `subscriptions/listen` request: its stream is filtered like the lists.
    listen: Option<ListenFilter>,
    /// The body the upstream gets instead of the client's: a retry without the gateway's
    /// multi-round-trip state.
    forward_body: Option<Vec<u8>>,
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
    started: SystemTime,
    /// Read in the headers callback: Envoy refuses header access once they have been sent, and
    /// the SDK turns that refusal into a panic.
    response_content_type: Option<String>,
    stream: StreamMasker,
    masked: MaskReport,
    /// When the audit append in flight was sent, for its latency.
    append_sent: SystemTime,
    /// The request record, kept only when fail-open is configured: queued if its append fails.
    fail_open_record: Option<serde_json::Value>,
    /// The response record in flight, kept for the queue when the call passed fail-open.
    response_record: Option<Vec<u8>>,
    /// The response record was appended (or tried): nothing is due when the stream ends.
    response_recorded: bool,
    /// The request record as sent, until its append is acknowledged.
    request_record_json: Option<Vec<u8>>,
}

impl<H: Host> Exchange<H> {
    pub fn new(host: H, runtime: Rc<Runtime>) -> Self {
        Exchange {
            host,
            runtime,
            info: RequestInfo::default(),
            identity: None,
            state: RequestState::Reading,
            pending: None,
            request_body: None,
            request_body_size: 0,
            list_method: None,
            learns_tools: false,
            listen: None,
            forward_body: None,
            upstream_failure: None,
            response_mode: ResponseMode::Pass,
            stream_mask_us: 0,
            response_status: None,
            response_bytes: 0,
            response_body_size: 0,
            response_excerpt: Vec::new(),
            started: SystemTime::UNIX_EPOCH,
            response_content_type: None,
            stream: StreamMasker::default(),
            masked: MaskReport::default(),
            append_sent: SystemTime::UNIX_EPOCH,
            fail_open_record: None,
            response_record: None,
            response_recorded: false,
            request_record_json: None,
        }
    }

    fn read_request_info(&mut self) {
        self.started = self.host.now();
        let session_id = self.host.request_header("mcp-session-id");
        self.info = RequestInfo {
            time: rfc3339_micros(self.started),
            http_method: self.host.request_header(":method").unwrap_or_default(),
            path: self.host.request_header(":path").unwrap_or_default(),
            source: self.host.property(&["source", "address"]),
            node: self.host.property(&["node", "id"]),
            session_id,
            request_id: self.host.request_header("x-request-id"),
            peer_principal: self
                .host
                .property(&["connection", "uri_san_peer_certificate"]),
            mcp_headers: McpHeaders::from_headers(
                self.host
                    .request_headers()
                    .iter()
                    .filter(|(name, _)| name.starts_with("mcp-"))
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            ),
            approval_retry: None,
        };
    }

    fn verify_identity(&self) -> Result<Identity, crate::identity::IdentityError> {
        let config = &self.runtime.config;
        let sub = self.host.property(&[
            "metadata",
            "filter_metadata",
            JWT_AUTHN_METADATA,
            &config.jwt_metadata_key,
            "sub",
        ]);
        let payload = self.host.request_header(&config.jwt_payload_header);
        let has_token = self.host.request_header("authorization").is_some();
        // Why jwt_authn refused the token, read only when it did.
        let failure = if sub.is_none() && has_token {
            self.host.property(&[
                "metadata",
                "filter_metadata",
                JWT_AUTHN_METADATA,
                &config.jwt_failure_key,
                "message",
            ])
        } else {
            None
        };
        Identity::from_jwt_authn_or_why(
            sub.as_deref(),
            payload.as_deref(),
            has_token,
            failure.as_deref(),
        )
    }

    /// Appends the step's record; the request waits for the acknowledgement.
    fn audit_then(&mut self, step: Step) -> Flow {
        self.host.count(metrics::CALLS, 1);
        count_record(&self.host, &step.record);
        self.append_then(step)
    }

    /// Appends the step's record, then acts on it once it is durable (uncounted: a held call's
    /// second record is not a second call).
    fn append_then(&mut self, step: Step) -> Flow {
        self.enter(RequestState::Recording);
        if step.next == Next::Forward && self.runtime.config.fail_open.allows(&step.record) {
            self.fail_open_record = Some(step.record.clone());
        }
        // A forwarded request in a session is checked against the session's owner by the
        // control plane, with its record.
        let session = self
            .identity
            .as_ref()
            .and_then(|identity| flow::session_check(&self.info, identity, &step.next));
        let append = AppendRequest {
            record_json: record::to_json(&step.record),
            session,
        };
        let token = self.dispatch_append(&append);
        // Kept (not copied) in case the append fails: see `audit_failed`.
        self.request_record_json = Some(append.record_json);
        match token {
            Some(token) => {
                self.pending = Some((token, Waiting::Audit(step.next)));
                Flow::Pause
            }
            None => {
                // Could not even start: as if the control plane were unreachable (UNAVAILABLE).
                self.audit_failed(step.next, 14);
                Flow::Pause
            }
        }
    }

    /// Starts the audit `Append` of `append`, timed from now; `None` (counted as a failed append)
    /// when the call could not even start.
    fn dispatch_append(&mut self, append: &AppendRequest) -> Option<u32> {
        self.append_sent = self.host.now();
        let config = &self.runtime.config;
        let token = self.host.grpc_call(
            &config.control_plane_target,
            tollgate_proto::service::AUDIT,
            "Append",
            &append.encode_to_vec(),
            Duration::from_millis(config.audit_timeout_ms),
        );
        if token.is_none() {
            self.host.count(metrics::AUDIT_APPEND_FAILURES, 1);
        }
        token
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
            self.host.log(
                Level::Warn,
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
            let marked = record::to_json(&crate::failopen::mark(&record));
            if self.defer_record(marked, Room::All) {
                self.host.count(metrics::FAIL_OPEN, 1);
                self.release(true);
                return;
            }
        }
        let note = self.request_record_json.take().and_then(|request| {
            crate::failopen::failed_closed(&request, &rfc3339_micros(self.host.now()), grpc_status)
        });
        if let Some(note) = note {
            self.defer_record(record::to_json(&note), Room::Half);
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
            Next::Forward => self.forward(),
            Next::Reply(reply) => self.send(&reply),
            Next::Approve(ask) => {
                self.enter(RequestState::Held {
                    awaited: false,
                    counted: false,
                });
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
        let cluster = self.runtime.config.control_plane_target.clone();
        let timeout = Duration::from_millis(timeout_ms);
        match self.host.grpc_call(
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
        let status = (status_code == 0)
            .then(|| {
                ApprovalStatus::decode(
                    self.host
                        .buffer(Buffer::GrpcReceive, response_size)
                        .as_slice(),
                )
                .ok()
            })
            .flatten()
            .filter(|status| !status.approval_id.is_empty());
        let Some(status) = status else {
            self.host.log(
                Level::Warn,
                &format!(
                    "tollgate: approval call failed (grpc status {status_code}); failing closed"
                ),
            );
            let outcome = approval::unavailable(&ask);
            return self.approval_outcome(ask, outcome, "");
        };
        let outcome = approval::on_status(&ask, &status);
        if outcome == approval::Outcome::Forward {
            return self.forward_granted(&ask, &status);
        }
        self.approval_outcome(ask, outcome, &status.expires_at);
    }

    /// A grant lets the held call through: first its record naming the approval, approvers and
    /// grant use, then the call. If that record cannot be written, the call is not forwarded.
    fn forward_granted(&mut self, ask: &Ask, status: &ApprovalStatus) {
        let Some(identity) = &self.identity else {
            return;
        };
        let record = record::approved_forward(
            &self.info,
            &self.runtime.config,
            identity,
            &ask.request,
            status,
            &rfc3339_micros(self.host.now()),
            &self.runtime.masker,
        );
        self.append_then(Step {
            record,
            next: Next::Forward,
        });
    }

    fn approval_outcome(&mut self, ask: Box<Ask>, outcome: approval::Outcome, expires_at: &str) {
        match outcome {
            approval::Outcome::Forward => self.forward(),
            approval::Outcome::Reply(reply) => self.send(&reply),
            // A 2026-07-28 client that handles URL elicitation is not held: it is sent to the
            // approval and retries (multi round-trip request). One that declined to go gets
            // today's answer.
            approval::Outcome::Wait(approval_id)
                if ask.mrtr.is_some()
                    && self
                        .info
                        .approval_retry
                        .as_ref()
                        .is_none_or(|retry| retry.accepted) =>
            {
                let reply = approval::input_required(&ask, &approval_id);
                self.send(&reply);
            }
            approval::Outcome::Wait(approval_id)
                if !self.state.awaited_approval() && ask.mrtr.is_none() =>
            {
                // Long poll: the control plane answers the moment the approval is decided.
                self.enter(RequestState::Held {
                    awaited: true,
                    counted: true,
                });
                self.host.gauge_add(metrics::APPROVALS_PENDING, 1);
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
    fn open_session_then(&mut self, then: Flow, after: AfterOpen) -> Flow {
        let Some(identity) = &self.identity else {
            return then;
        };
        let answered = self.host.response_header("mcp-session-id");
        let Some(check) = flow::session_opened(&self.info, identity, answered.as_deref()) else {
            return then;
        };
        let record = record::session_opened(
            &self.info,
            &self.runtime.config,
            identity,
            &check.session_id,
            &rfc3339_micros(self.host.now()),
            &self.runtime.masker,
        );
        count_record(&self.host, &record);
        let append = AppendRequest {
            record_json: record::to_json(&record),
            session: Some(check),
        };
        match self.dispatch_append(&append) {
            Some(token) => self.pending = Some((token, Waiting::SessionOpen(after))),
            None => self.session_not_bound(),
        }
        Flow::Pause
    }

    /// The session an answer opens could not be bound (control plane down, or the id is
    /// another identity's): the answer, which would hand out the id, never leaves.
    fn session_not_bound(&mut self) {
        self.host.log(
            Level::Warn,
            "tollgate: the session an answer opens could not be bound; resetting",
        );
        self.response_recorded = true;
        if let Some(mut record) = self.response_json(false, self.host.now()) {
            record["outcome"] = "reset: the session it opens could not be bound".into();
            count_record(&self.host, &record);
            self.defer_record(record::to_json(&record), Room::Half);
        }
        self.host.reset_response();
    }

    fn note_response_bytes(&mut self, bytes: &[u8]) {
        self.response_bytes += bytes.len();
        let room = record::RESPONSE_EXCERPT_BYTES.saturating_sub(self.response_excerpt.len());
        self.response_excerpt
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Appends the response record. A buffered answer waits for the acknowledgement; a
    /// streamed one has already passed and is recorded at its end.
    fn record_response(&mut self, streamed: bool) -> Flow {
        let started = self.host.now();
        let flow = self.append_response_record(streamed);
        self.host.record_metric(
            metrics::RESPONSE_RECORD_US,
            micros_since(&self.host, started),
        );
        flow
    }

    fn append_response_record(&mut self, streamed: bool) -> Flow {
        self.response_recorded = true;
        let now = self.host.now();
        let Some(mut record) = self.response_json(streamed, now) else {
            return Flow::Continue;
        };
        count_record(&self.host, &record);
        if self.state.failed_open() {
            record["failOpen"] = true.into();
            self.response_record = Some(record::to_json(&record));
        }
        let append = AppendRequest {
            record_json: record::to_json(&record),
            session: None,
        };
        let pipelined = self.runtime.config.response_record == ResponseRecord::Pipelined;
        match (self.dispatch_append(&append), streamed) {
            (Some(token), true) => {
                self.pending = Some((token, Waiting::StreamedResponseAudit));
                Flow::Continue
            }
            (Some(token), false) if pipelined => {
                // Sent: the answer goes now, its acknowledgement is only checked.
                self.pending = Some((token, Waiting::StreamedResponseAudit));
                Flow::Continue
            }
            (Some(token), false) => {
                self.pending = Some((token, Waiting::ResponseAudit));
                Flow::Pause
            }
            (None, true) => {
                self.queue_response_record();
                Flow::Continue
            }
            (None, false) if self.queue_response_record() => Flow::Continue,
            (None, false) => {
                self.host.reset_response();
                Flow::Pause
            }
        }
    }

    /// The response record of the answer so far.
    fn response_json(&self, streamed: bool, now: SystemTime) -> Option<serde_json::Value> {
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
        let mut record = record::mcp_response(
            &self.info,
            &self.runtime.config,
            identity,
            &summary,
            &self.runtime.masker,
        );
        if let Some(dropped) = self.listen.as_ref().map(|f| f.dropped).filter(|n| *n > 0) {
            // Notifications of resources this caller may not read, kept from it.
            record["droppedNotifications"] = dropped.into();
        }
        Some(record)
    }

    /// The client left in the middle of a stream: part of the answer reached it, so the record
    /// is still due. The context is going away, so the root context appends it later.
    fn record_abandoned_stream(&mut self) {
        let Some(mut record) = self.response_json(true, self.host.now()) else {
            return;
        };
        record["aborted"] = true.into();
        if self.state.failed_open() {
            record["failOpen"] = true.into();
        }
        count_record(&self.host, &record);
        self.defer_record(record::to_json(&record), Room::Half);
    }

    /// The response record of a fail-open call could not be appended: queue it. `false` when
    /// this call did not pass fail-open or the queue is full.
    fn queue_response_record(&mut self) -> bool {
        match self.response_record.take() {
            Some(record) => self.defer_record(record, Room::All),
            None => false,
        }
    }

    /// Moves to `next`. Leaving a held call that counts in the approvals-pending gauge takes it
    /// out, whichever way it leaves (forwarded, answered, or its long poll failed to start).
    fn enter(&mut self, next: RequestState) {
        self.release_approval_gauge();
        self.state = next;
    }

    fn release_approval_gauge(&mut self) {
        if let RequestState::Held {
            awaited,
            counted: true,
        } = self.state
        {
            self.state = RequestState::Held {
                awaited,
                counted: false,
            };
            self.host.gauge_add(metrics::APPROVALS_PENDING, -1);
        }
    }

    /// The record is durable: the upstream may have it.
    fn forward(&mut self) {
        self.release(false);
    }

    /// Lets the request go on to the upstream (its record durable, or passed fail-open), with
    /// the body the upstream must get.
    fn release(&mut self, failed_open: bool) {
        if let Some(body) = self.forward_body.take() {
            // The headers went on without a Content-Length (see `on_request_headers`): Envoy's
            // buffer filter sets the new body's.
            if !self
                .host
                .set_buffer(Buffer::RequestBody, self.request_body_size, &body)
            {
                self.host.log(
                    Level::Error,
                    "tollgate: could not replace the retried request's body; refusing it",
                );
                self.send(&flow::audit_unavailable(self.request_body.as_deref()));
                return;
            }
        }
        self.enter(RequestState::Forwarded { failed_open });
        self.host.resume_request();
    }

    /// Latency of an acknowledged append; a count of those that failed.
    fn note_append(&self, acked: bool) {
        if acked {
            let took = self
                .host
                .now()
                .duration_since(self.append_sent)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.host.record_metric(metrics::AUDIT_APPEND_MS, took);
        } else {
            self.host.count(metrics::AUDIT_APPEND_FAILURES, 1);
        }
    }

    /// The whole body is here (its end, trailers, or past the size limit): decide it. Without a
    /// verified identity the call was already refused at its headers; stay paused.
    fn decide_request_body(&mut self) -> Flow {
        let runtime = Rc::clone(&self.runtime);
        let Some(identity) = self.identity.clone() else {
            return Flow::Pause;
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
        let started = self.host.now();
        let mut body = self.host.buffer(Buffer::RequestBody, body_size);
        match flow::untangle_retry(&body) {
            None => {}
            Some(Ok((restored, retry))) => {
                self.info.approval_retry = Some(retry);
                self.forward_body = Some(restored.clone());
                body = restored;
            }
            Some(Err(why)) => {
                return self.audit_then(flow::malformed_retry(
                    &runtime.config,
                    &runtime.masker,
                    &self.info,
                    &identity,
                    why,
                ));
            }
        }
        let step = flow::request(
            &runtime.config,
            &runtime.policy,
            &runtime.masker,
            &self.info,
            &identity,
            Some(&body),
            &runtime.mirrors(&self.host),
        );
        let method = flow::answered_method(&body);
        self.list_method = flow::list_method(&runtime.policy, method.as_deref());
        self.learns_tools = method.as_deref() == Some("tools/list");
        self.listen =
            (method.as_deref() == Some("subscriptions/listen")).then(ListenFilter::default);
        if self.listen.is_some() {
            self.stream = StreamMasker::discrete();
        }
        self.request_body = Some(body);
        let flow = self.audit_then(step);
        self.host
            .record_metric(metrics::DECIDE_US, micros_since(&self.host, started));
        flow
    }

    /// The buffered answer is whole (its end, or trailers): filter a list, mask, replace the
    /// body, and hold it until its record is acknowledged.
    fn finish_buffered_response(&mut self) -> Flow {
        let runtime = Rc::clone(&self.runtime);
        let body_size = self.response_body_size;
        if let Some(reply) = self.upstream_failure.take() {
            if !self
                .host
                .set_buffer(Buffer::ResponseBody, body_size, &reply.body)
            {
                self.host.reset_response();
                return Flow::Pause;
            }
            self.note_response_bytes(&reply.body);
            return self.record_response(false);
        }
        let original = self.host.buffer(Buffer::ResponseBody, body_size);
        if self.learns_tools {
            if let Some(learned) = flow::mirrors_in_answer(&original) {
                runtime.learn_mirrors(&self.host, learned);
            }
        }
        let mut body = std::borrow::Cow::from(&original);
        if let (Some(method), Some(identity)) = (&self.list_method, &self.identity) {
            let ctx =
                CallContext::for_identity(identity, &self.info.path, &runtime.config.upstream);
            if let Some(filtered) = flow::filter_list_body(&runtime.policy, method, &ctx, &body) {
                body = filtered.into();
            }
        }
        let started = self.host.now();
        let masked = runtime.masker.mask_content(
            self.response_content_type.as_deref(),
            &body,
            &mut self.masked,
        );
        self.host
            .record_metric(crate::metrics::MASK_US, micros_since(&self.host, started));
        let Some(masked) = self.filter_listen(masked, true) else {
            return Flow::Pause;
        };
        if masked != original
            && !self
                .host
                .set_buffer(Buffer::ResponseBody, body_size, &masked)
        {
            self.host.log(
                Level::Error,
                "tollgate: could not replace the response body; resetting",
            );
            self.host.reset_response();
            return Flow::Pause;
        }
        self.note_response_bytes(&masked);
        self.record_response(false)
    }

    /// A listen stream's masked bytes without the notifications this caller may not hear of.
    /// `None` when the stream was reset (an event too large to judge).
    fn filter_listen(&mut self, bytes: Vec<u8>, end: bool) -> Option<Vec<u8>> {
        let (Some(mut filter), Some(identity)) = (self.listen.take(), self.identity.as_ref())
        else {
            return Some(bytes);
        };
        let runtime = Rc::clone(&self.runtime);
        let ctx = CallContext::for_identity(identity, &self.info.path, &runtime.config.upstream);
        let Ok(mut out) = filter.push(&bytes, &runtime.policy, &ctx) else {
            self.host.log(
                Level::Warn,
                "tollgate: a subscriptions/listen event exceeds the limit; resetting the stream",
            );
            self.host.reset_response();
            return None;
        };
        if end {
            out.extend(filter.finish(&runtime.policy, &ctx));
        }
        self.listen = Some(filter);
        Some(out)
    }

    fn send(&mut self, reply: &LocalReply) {
        self.enter(RequestState::Answered);
        self.response_mode = ResponseMode::Pass;
        self.host
            .send_reply(reply.status, &reply.headers, &reply.body);
    }
}

/// The proxy-wasm callbacks, by the SDK's names without `on_http_`.
impl<H: Host> Exchange<H> {
    pub fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
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
            .then(|| {
                AppendResponse::decode(
                    self.host
                        .buffer(Buffer::GrpcReceive, response_size)
                        .as_slice(),
                )
                .ok()
            })
            .flatten()
            .filter(|ack| !ack.chain_hash.is_empty());
        let acked = ack.is_some();
        let session_refused = ack.is_some_and(|ack| !ack.session_refused.is_empty());
        self.note_append(acked);
        match waiting {
            Waiting::Approval(_) => {}
            Waiting::Audit(_) if session_refused => {
                self.host.count(metrics::SESSIONS_REFUSED, 1);
                self.send(&flow::session_refused(self.request_body.as_deref()));
            }
            Waiting::Audit(next) if acked => self.audited(next),
            Waiting::Audit(next) => {
                self.host.log(
                    Level::Warn,
                    &format!(
                        "tollgate: audit append failed (grpc status {status_code}); failing closed"
                    ),
                );
                self.audit_failed(next, status_code);
            }
            Waiting::ResponseAudit if acked => self.host.resume_response(),
            Waiting::ResponseAudit if self.queue_response_record() => self.host.resume_response(),
            Waiting::ResponseAudit => {
                // An answer that cannot be recorded does not leave the gateway.
                self.host.log(
                    Level::Warn,
                    "tollgate: response record not acknowledged; resetting",
                );
                self.host.reset_response();
            }
            Waiting::SessionOpen(_) if !acked || session_refused => self.session_not_bound(),
            Waiting::SessionOpen(AfterOpen::Resume) => self.host.resume_response(),
            Waiting::SessionOpen(AfterOpen::RecordAnswer) => {
                if self.record_response(false) == Flow::Continue {
                    self.host.resume_response();
                }
            }
            Waiting::StreamedResponseAudit => {
                if !acked && !self.queue_response_record() {
                    self.host.log(
                        Level::Warn,
                        "tollgate: streamed response record not acknowledged",
                    );
                }
            }
        }
    }

    pub fn on_log(&mut self) {
        // A held call whose client went away leaves the approvals-pending gauge too.
        self.release_approval_gauge();
        if self.response_mode == ResponseMode::Stream && !self.response_recorded {
            self.record_abandoned_stream();
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Flow {
        self.read_request_info();
        // Masking needs plain bytes: ask the upstream not to compress.
        self.host.set_request_header("accept-encoding", None);
        let runtime = Rc::clone(&self.runtime);
        if self.info.mcp_headers.version() >= modern::STATELESS_SINCE {
            // A 2026-07-28 retry may come back with the gateway's multi-round-trip state, which
            // is taken out before it is forwarded: the body may shrink. Without a Content-Length
            // here, Envoy's buffer filter sets the length of the body that is released.
            self.host.set_request_header("content-length", None);
        }
        let mut identity = self.verify_identity();
        // The upstream learns nothing from the forwarded claims header; keep it inside Envoy.
        self.host
            .set_request_header(&runtime.config.jwt_payload_header, None);
        let revocations = runtime.revocations(&self.host);
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
                    return Flow::Pause;
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
                    None => Flow::Continue,
                }
            }
        }
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Flow {
        if self.state.decided() {
            return Flow::Pause;
        }
        self.request_body_size = body_size;
        if body_size > self.runtime.config.max_request_bytes {
            return self.decide_request_body();
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.decide_request_body()
    }

    /// Trailers end the body as surely as END_STREAM does: the call is decided and recorded
    /// now, and the trailers wait with the body until then.
    pub fn on_request_trailers(&mut self) -> Flow {
        if self.state.decided() {
            return Flow::Pause;
        }
        self.decide_request_body()
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Flow {
        if self.state == RequestState::Answered {
            return Flow::Continue;
        }
        if end_of_stream {
            // An answer without a body (a session's DELETE, a notification's 202) is an answer
            // too: recorded before it leaves.
            self.response_status = self
                .host
                .response_header(":status")
                .and_then(|s| s.parse().ok());
            if let Flow::Pause = self.open_session_then(Flow::Continue, AfterOpen::RecordAnswer) {
                return Flow::Pause;
            }
            return self.record_response(false);
        }
        let upstream_failure = self
            .host
            .property(&["response", "code_details"])
            .and_then(|details| flow::upstream_failure(&details, self.request_body.as_deref()));
        if let Some(reply) = upstream_failure {
            // Envoy's own reply (upstream down or too slow) becomes a JSON-RPC error; its body is
            // replaced at the end and recorded as the call's response.
            self.host
                .set_response_header(":status", Some(&reply.status.to_string()));
            self.host
                .set_response_header("content-type", Some("application/json"));
            self.host.set_response_header("content-length", None);
            self.response_status = Some(reply.status);
            self.response_mode = ResponseMode::Buffer;
            self.upstream_failure = Some(reply);
            return Flow::Continue;
        }
        self.response_status = self
            .host
            .response_header(":status")
            .and_then(|s| s.parse().ok());
        self.response_content_type = self.host.response_header("content-type");
        let encoding = self.host.response_header("content-encoding");
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
            return Flow::Pause;
        };
        self.response_mode = mode;
        if self.response_mode == ResponseMode::Pass {
            return self.open_session_then(Flow::Continue, AfterOpen::Resume);
        }
        // A list answer is short and complete: buffer it, even as SSE, to filter it whole. So is
        // a stream that announces trailers: the masker may hold its last event back (a card
        // number can go on in the next event), and nothing can be sent after trailers.
        if self.list_method.is_some()
            || self.learns_tools
            || self.host.response_header("trailer").is_some()
        {
            self.response_mode = ResponseMode::Buffer;
        }
        // Masking changes the length.
        self.host.set_response_header("content-length", None);
        // Never pause here to wait for the body: Envoy would then withhold it from this filter
        // as well. A pause for the session binding ends with its acknowledgement.
        self.open_session_then(Flow::Continue, AfterOpen::Resume)
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Flow {
        let runtime = Rc::clone(&self.runtime);
        match self.response_mode {
            ResponseMode::Pass => Flow::Continue,
            ResponseMode::Buffer => {
                if body_size > runtime.config.max_response_bytes {
                    // The headers are already on their way: end the stream rather than let an
                    // unmasked body through.
                    self.host.log(
                        Level::Warn,
                        &format!(
                            "tollgate: response body exceeds {} bytes; resetting the stream",
                            runtime.config.max_response_bytes
                        ),
                    );
                    self.response_mode = ResponseMode::Pass;
                    self.host.reset_response();
                    return Flow::Pause;
                }
                self.response_body_size = body_size;
                if !end_of_stream {
                    return Flow::Pause;
                }
                self.finish_buffered_response()
            }
            ResponseMode::Stream => {
                let chunk = self.host.buffer(Buffer::ResponseBody, body_size);
                let started = self.host.now();
                let mut out = self.stream.push(&runtime.masker, &chunk, &mut self.masked);
                if end_of_stream {
                    out.extend(self.stream.finish(&runtime.masker, &mut self.masked));
                }
                self.stream_mask_us += micros_since(&self.host, started);
                if end_of_stream {
                    self.host
                        .record_metric(crate::metrics::MASK_US, self.stream_mask_us);
                }
                let Some(out) = self.filter_listen(out, end_of_stream) else {
                    return Flow::Pause;
                };
                self.note_response_bytes(&out);
                if out != chunk && !self.host.set_buffer(Buffer::ResponseBody, body_size, &out) {
                    // The chunk cannot be replaced: end the stream rather than leak it.
                    self.host.log(
                        Level::Error,
                        "tollgate: could not replace a stream chunk; resetting",
                    );
                    self.host.reset_response();
                }
                if end_of_stream {
                    return self.record_response(true);
                }
                Flow::Continue
            }
        }
    }

    /// Trailers end the answer without a last body chunk carrying END_STREAM: a buffered answer
    /// is masked and recorded now, and the trailers follow it once its record is acknowledged;
    /// a streamed one is recorded at its end.
    pub fn on_response_trailers(&mut self) -> Flow {
        match self.response_mode {
            ResponseMode::Pass => Flow::Continue,
            ResponseMode::Buffer => self.finish_buffered_response(),
            ResponseMode::Stream => {
                let started = self.host.now();
                let tail = self.stream.finish(&self.runtime.masker, &mut self.masked);
                self.stream_mask_us += micros_since(&self.host, started);
                self.host
                    .record_metric(crate::metrics::MASK_US, self.stream_mask_us);
                if !tail.is_empty() {
                    // The held-back tail of the last chunk (a possible card number cut at the
                    // chunk's end) cannot be sent in front of trailers: end the stream rather
                    // than pass a truncated answer as whole.
                    self.host.log(
                        Level::Warn,
                        "tollgate: streamed answer ended in trailers with masked bytes pending; resetting",
                    );
                    self.note_response_bytes(&tail);
                    self.record_response(true);
                    self.host.reset_response();
                    return Flow::Pause;
                }
                self.record_response(true)
            }
        }
    }
}

/// Microseconds of host time since `started` (0 if the clock went backwards).
fn micros_since(host: &impl Host, started: SystemTime) -> u64 {
    host.now()
        .duration_since(started)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
