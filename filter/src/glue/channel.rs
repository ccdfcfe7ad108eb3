//! The audit stream: one long-lived `tollgate.v1.Audit/AppendStream` per worker, opened by the
//! root context, carrying every request's `Append` as one message instead of one gRPC call each
//! (the per-call setup was most of what an append cost Envoy and the control plane; see
//! BENCHMARKS.md). A request still waits for its own acknowledgement, exactly as with `Append`.
//!
//! The stream belongs to the root context, so a request sends on it with the root as the
//! effective context, and the root hands each answer to the request it belongs to (found in
//! [`EXCHANGES`]) with that request as the effective context. One VM can host several root
//! contexts (Envoy shares a VM between plugin configurations of the same code, as when a
//! listener update brings a new policy while the old listener drains), so each has its own.
//! While the stream is not open (at start, after the control plane went away) appends are unary
//! calls, as before.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;
use tollgate_proto::pb::AppendStreamResponse;

use super::host::{self, EnvoyHost};
use crate::exchange::Exchange;

/// gRPC status codes the stream answers with when the control plane did not.
const DEADLINE_EXCEEDED: u32 = 4;
const UNAVAILABLE: u32 = 14;
/// gRPC codes of a stream the control plane will not take at all: PERMISSION_DENIED,
/// UNIMPLEMENTED, UNAUTHENTICATED.
const REFUSALS: [u32; 3] = [7, 12, 16];
/// Tokens of streamed appends have the high bit set, so they never equal a unary call's token.
const STREAM_TOKEN: u32 = 0x8000_0000;

thread_local! {
    /// The requests of this worker that may be waiting on the stream, by context id.
    static EXCHANGES: RefCell<HashMap<u32, Rc<RefCell<Exchange<EnvoyHost>>>>> =
        RefCell::new(HashMap::new());
    /// Each root context's stream, by root context id.
    static CHANNELS: RefCell<HashMap<u32, Channel>> = RefCell::new(HashMap::new());
    /// The acknowledgement being handed to a request: what its `GrpcReceive` buffer holds.
    static RECEIVED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// The request being handed an answer by the root context now.
    static DELIVERING: Cell<Option<u32>> = const { Cell::new(None) };
    /// Unary calls a request started while the root context was handing it an answer: the SDK
    /// files them under the root context, whose callback passes their answers on, by token.
    static CALLOUTS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

#[derive(Default)]
struct Channel {
    /// The open stream's token.
    stream: Option<u32>,
    next_id: u64,
    unanswered: HashMap<u64, Sent>,
    /// The control plane refused the stream itself (one without `AppendStream`, or whose mesh
    /// policy does not allow it): this root context appends with unary calls from then on.
    refused: bool,
    /// The open stream has answered: its end is news (a stream that never answered, to a
    /// control plane that is down, is retried every tick without a log line each).
    answered: bool,
}

struct Sent {
    context_id: u32,
    token: u32,
    deadline: SystemTime,
}

/// Runs `f` on root context `root_id`'s channel.
fn with_channel<T>(root_id: u32, f: impl FnOnce(&mut Channel) -> T) -> T {
    CHANNELS.with(|all| f(all.borrow_mut().entry(root_id).or_default()))
}

pub fn register(context_id: u32, exchange: Rc<RefCell<Exchange<EnvoyHost>>>) {
    EXCHANGES.with(|all| all.borrow_mut().insert(context_id, exchange));
}

pub fn unregister(context_id: u32) {
    EXCHANGES.with(|all| all.borrow_mut().remove(&context_id));
    // Envoy cancels the calls of a request that ends: their answers never come.
    CALLOUTS.with(|all| all.borrow_mut().retain(|_, owner| *owner != context_id));
}

/// The acknowledgement handed to the request now, if one is.
pub fn received() -> Option<Vec<u8>> {
    RECEIVED.with(|r| r.borrow().clone())
}

/// A unary call `token` just started by a request: if the root context is handing that request
/// an answer, the call's own answer will reach the root context and is passed on from there.
pub fn note_callout(token: u32) {
    if let Some(context_id) = DELIVERING.with(Cell::get) {
        CALLOUTS.with(|all| all.borrow_mut().insert(token, context_id));
    }
}

/// The answer to a unary call the root context received: `true` if it belonged to a request
/// (see [`note_callout`]), which then has it.
pub fn on_callout_response(token: u32, status: u32, size: usize) -> bool {
    let Some(context_id) = CALLOUTS.with(|all| all.borrow_mut().remove(&token)) else {
        return false;
    };
    // Envoy keeps the answer with the request that made the call: read it as that request.
    if hostcalls::set_effective_context(context_id).is_err() {
        return true;
    }
    let answer = if size > 0 {
        host::grpc_response(size)
    } else {
        Vec::new()
    };
    deliver(context_id, token, status, answer);
    true
}

/// Whether root context `root_id` should open its stream.
pub fn wants_stream(root_id: u32) -> bool {
    with_channel(root_id, |c| c.stream.is_none() && !c.refused)
}

pub fn opened(root_id: u32, token: u32) {
    with_channel(root_id, |c| {
        c.stream = Some(token);
        c.answered = false;
    });
}

/// Whether root context `root_id` still waits for answers on its stream.
pub fn waiting(root_id: u32) -> bool {
    with_channel(root_id, |c| !c.unanswered.is_empty())
}

/// Root context `root_id` is gone.
pub fn forget(root_id: u32) {
    CHANNELS.with(|all| all.borrow_mut().remove(&root_id));
}

/// Sends one encoded `AppendRequest` on the stream of root context `root_id` for request
/// `context_id`; the token its answer will carry, or `None` when there is no stream (the caller
/// makes a unary call).
pub fn send(root_id: u32, context_id: u32, append: &[u8], timeout: Duration) -> Option<u32> {
    with_channel(root_id, |c| {
        let stream = c.stream?;
        let id = c.next_id;
        c.next_id += 1;
        hostcalls::set_effective_context(root_id).ok()?;
        let sent = hostcalls::send_grpc_stream_message(stream, Some(&encode(id, append)), false);
        // Back to the request, for whatever it does next.
        let _ = hostcalls::set_effective_context(context_id);
        if sent.is_err() {
            c.stream = None;
            return None;
        }
        let token = STREAM_TOKEN | (u32::try_from(id & 0x7fff_ffff).unwrap_or(0));
        c.unanswered.insert(
            id,
            Sent {
                context_id,
                token,
                deadline: host::now() + timeout,
            },
        );
        Some(token)
    })
}

/// `AppendStreamRequest { id, append }`, written directly: the append is already encoded, and a
/// message field is a length-delimited field like bytes.
fn encode(id: u64, append: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, uint64, WireType};
    let mut out = Vec::with_capacity(append.len() + 16);
    uint64::encode(1, &id, &mut out);
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(append.len() as u64, &mut out);
    out.extend_from_slice(append);
    out
}

/// An answer on root context `root_id`'s stream: to the request it belongs to.
pub fn on_message(root_id: u32, token: u32, size: usize) {
    if with_channel(root_id, |c| c.stream) != Some(token) {
        return;
    }
    let Ok(answer) = AppendStreamResponse::decode(host::grpc_response(size).as_slice()) else {
        host::log(
            LogLevel::Warn,
            "tollgate: undecodable answer on the audit stream",
        );
        return;
    };
    let sent = with_channel(root_id, |c| {
        c.answered = true;
        c.unanswered.remove(&answer.id)
    });
    let Some(sent) = sent else {
        return;
    };
    let ack = answer
        .ack
        .map(|ack| ack.encode_to_vec())
        .unwrap_or_default();
    deliver(sent.context_id, sent.token, answer.code, ack);
}

/// Root context `root_id`'s stream ended: every record still unanswered is unknown, so not
/// written.
pub fn on_close(root_id: u32, token: u32, status: u32) {
    let (unanswered, news, refused) = with_channel(root_id, |c| {
        if c.stream != Some(token) {
            return (Vec::new(), false, false);
        }
        c.stream = None;
        // Refused before any answer: not the outage of a control plane that took the stream.
        c.refused |= !c.answered && REFUSALS.contains(&status);
        let unanswered: Vec<Sent> = c.unanswered.drain().map(|(_, sent)| sent).collect();
        (unanswered, c.answered || c.refused, c.refused)
    });
    if news || !unanswered.is_empty() {
        host::log(
            LogLevel::Warn,
            &format!(
                "tollgate: audit stream closed (grpc status {status}), {} record(s) unanswered; \
                 {}",
                unanswered.len(),
                if refused {
                    "the control plane refuses the stream: appends are unary calls from now on"
                } else {
                    "reopening"
                }
            ),
        );
    }
    for sent in unanswered {
        deliver(sent.context_id, sent.token, UNAVAILABLE, Vec::new());
    }
}

/// Fails the appends on root context `root_id`'s stream that waited longer than the audit
/// timeout.
pub fn expire(root_id: u32, now: SystemTime) {
    let expired: Vec<Sent> = with_channel(root_id, |c| {
        c.unanswered
            .extract_if(|_, sent| sent.deadline <= now)
            .map(|(_, sent)| sent)
            .collect()
    });
    for sent in expired {
        deliver(sent.context_id, sent.token, DEADLINE_EXCEEDED, Vec::new());
    }
}

/// Hands request `context_id` the answer `token`, as the request (effective context), with
/// `answer` as its `GrpcReceive` buffer.
fn deliver(context_id: u32, token: u32, code: u32, answer: Vec<u8>) {
    // A request that ended meanwhile has nothing left to do with its answer.
    let Some(exchange) = EXCHANGES.with(|all| all.borrow().get(&context_id).cloned()) else {
        return;
    };
    if hostcalls::set_effective_context(context_id).is_err() {
        return;
    }
    let Ok(mut exchange) = exchange.try_borrow_mut() else {
        return;
    };
    let size = answer.len();
    RECEIVED.with(|r| *r.borrow_mut() = Some(answer));
    let outer = DELIVERING.with(|d| d.replace(Some(context_id)));
    exchange.on_grpc_call_response(token, code, size);
    DELIVERING.with(|d| d.set(outer));
    RECEIVED.with(|r| r.borrow_mut().take());
}
