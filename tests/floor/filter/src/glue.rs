//! Envoy glue: the root context (configuration, the worker's stream and its answers) and the
//! HTTP context (one per request: hold each body until its end, read it, let it go or wait for
//! its acknowledgement).
//!
//! The stream works as the real filter's (`filter/src/glue/channel.rs`), thinned: the root
//! context opens `Audit/AppendStream` on the control plane's cluster in `on_configure` (again
//! on a tick while it is closed), a request sends on it with the root as the effective context,
//! and the root hands each answer to the request waiting for it, found by the message's id, with
//! that request as the effective context. No unary fallback, no timeouts: a message that cannot
//! be sent, or a stream that closes with messages unanswered, fails the request (503 or reset),
//! which the benchmark counts as an error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::{append_message, read_answer, record, Mode, CONTROL_PLANE_CLUSTER};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(FloorRoot::new(context_id))
    });
}}

/// How often a closed (or not yet opened) stream is opened again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Body {
    Request,
    Response,
}

/// The worker's stream: owned by the root context, which receives its answers; the HTTP
/// contexts send on it.
#[derive(Default)]
struct AckStream {
    token: Option<u32>,
    /// The id of the last message sent (ids start at 1).
    last_id: u64,
    /// The request (context id) and the body held for each unanswered message, by its id.
    waiting: HashMap<u64, (u32, Body)>,
}

struct FloorRoot {
    context_id: u32,
    mode: Option<Mode>,
    stream: Rc<RefCell<AckStream>>,
}

impl FloorRoot {
    fn new(context_id: u32) -> Self {
        FloorRoot {
            context_id,
            mode: None,
            stream: Rc::default(),
        }
    }

    fn open_stream(&mut self) {
        if self.mode != Some(Mode::Grpc) || self.stream.borrow().token.is_some() {
            return;
        }
        match self.open_grpc_stream(
            CONTROL_PLANE_CLUSTER,
            tollgate_proto::service::AUDIT,
            "AppendStream",
            Vec::new(),
        ) {
            Ok(token) => self.stream.borrow_mut().token = Some(token),
            Err(status) => log(
                LogLevel::Warn,
                &format!("floor: AppendStream failed to open: {status:?}"),
            ),
        }
    }
}

impl Context for FloorRoot {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if self.stream.borrow().token != Some(token_id) {
            return;
        }
        let bytes = read_buffer(BufferType::GrpcReceiveBuffer, message_size);
        let Some((id, acked)) = read_answer(&bytes) else {
            log(LogLevel::Warn, "floor: undecodable answer on the stream");
            return;
        };
        // The borrow ends before the request is resumed.
        let waiter = self.stream.borrow_mut().waiting.remove(&id);
        // None: the request ended meanwhile.
        if let Some((context_id, body)) = waiter {
            release(context_id, body, acked);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        let unanswered: Vec<(u32, Body)> = {
            let mut stream = self.stream.borrow_mut();
            if stream.token != Some(token_id) {
                return;
            }
            stream.token = None;
            stream.waiting.drain().map(|(_, waiter)| waiter).collect()
        };
        log(
            LogLevel::Warn,
            &format!(
                "floor: stream closed (grpc status {status_code}), {} message(s) unanswered",
                unanswered.len()
            ),
        );
        for (context_id, body) in unanswered {
            release(context_id, body, false);
        }
    }
}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = read_buffer(BufferType::PluginConfiguration, plugin_configuration_size);
        match Mode::from_config(&bytes) {
            Ok(mode) => {
                self.mode = Some(mode);
                if mode == Mode::Grpc {
                    if let Err(status) = hostcalls::set_tick_period(REOPEN_EVERY) {
                        log(
                            LogLevel::Warn,
                            &format!("floor: setting the tick failed: {status:?}"),
                        );
                    }
                    self.open_stream();
                }
                log(LogLevel::Info, &format!("floor: mode {mode:?}"));
                true
            }
            Err(error) => {
                log(LogLevel::Error, &error);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.open_stream();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            context_id,
            root_id: self.context_id,
            mode: self.mode?,
            stream: Rc::clone(&self.stream),
            path: String::new(),
            waiting: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    context_id: u32,
    root_id: u32,
    mode: Mode,
    stream: Rc<RefCell<AckStream>>,
    /// The request's `:path`, for both records (grpc mode).
    path: String,
    /// The id of the message this request last waited for.
    waiting: Option<u64>,
}

impl FloorHttp {
    /// A whole body is in the VM: let it go, or send its record and hold it for the ack.
    fn body_read(&mut self, body: Body, bytes: &[u8]) -> Action {
        if self.mode == Mode::Buffer {
            return Action::Continue;
        }
        let kind = match body {
            Body::Request => "request",
            Body::Response => "response",
        };
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros());
        let record = record(kind, &self.path, now, bytes);
        if self.send(body, record) {
            Action::Pause
        } else {
            log(LogLevel::Warn, "floor: could not send on the stream");
            fail(body);
            Action::Pause
        }
    }

    /// Sends `record` on the root context's stream and files this request as waiting for its
    /// answer; `false` if there is no open stream or the send failed.
    fn send(&mut self, body: Body, record: Vec<u8>) -> bool {
        // No borrow is held across the host calls: a callback they may cause reaches the root.
        let (token, id) = {
            let mut stream = self.stream.borrow_mut();
            let Some(token) = stream.token else {
                return false;
            };
            stream.last_id += 1;
            (token, stream.last_id)
        };
        let message = append_message(id, record);
        // The stream belongs to the root context: send as the root, then back to this request.
        if hostcalls::set_effective_context(self.root_id).is_err() {
            return false;
        }
        let sent = hostcalls::send_grpc_stream_message(token, Some(&message), false);
        let _ = hostcalls::set_effective_context(self.context_id);
        let mut stream = self.stream.borrow_mut();
        if sent.is_err() {
            // The root context opens a new one on its next tick.
            if stream.token == Some(token) {
                stream.token = None;
            }
            return false;
        }
        stream.waiting.insert(id, (self.context_id, body));
        self.waiting = Some(id);
        true
    }
}

impl Drop for FloorHttp {
    fn drop(&mut self) {
        // A request that ends before its answer: the answer is dropped when it comes.
        if let (Some(id), Ok(mut stream)) = (self.waiting, self.stream.try_borrow_mut()) {
            stream.waiting.remove(&id);
        }
    }
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Now or never: once this returns Continue, Envoy no longer lets the VM read the request
        // headers (a body callback gets BadArgument, on which the SDK panics).
        if self.mode == Mode::Grpc {
            self.path = hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")
                .ok()
                .flatten()
                .unwrap_or_default();
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let bytes = read_buffer(BufferType::HttpRequestBody, body_size);
        self.body_read(Body::Request, &bytes)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let bytes = read_buffer(BufferType::HttpResponseBody, body_size);
        self.body_read(Body::Response, &bytes)
    }
}

/// Hands request `context_id` the answer for its held `body`: it goes on if acknowledged.
fn release(context_id: u32, body: Body, acked: bool) {
    if hostcalls::set_effective_context(context_id).is_err() {
        return;
    }
    let resumed = match (acked, body) {
        (true, Body::Request) => hostcalls::resume_http_request(),
        (true, Body::Response) => hostcalls::resume_http_response(),
        (false, body) => {
            log(LogLevel::Warn, "floor: message not acknowledged");
            fail(body);
            Ok(())
        }
    };
    if let Err(status) = resumed {
        log(
            LogLevel::Error,
            &format!("floor: resuming failed: {status:?}"),
        );
    }
}

/// A body that cannot be acknowledged does not go on: a request is answered 503; a response,
/// whose headers are already on their way, is reset.
fn fail(body: Body) {
    let failed = match body {
        Body::Request => hostcalls::send_http_response(
            503,
            vec![("content-type", "text/plain")],
            Some(b"floor: not acknowledged\n"),
        ),
        Body::Response => hostcalls::reset_http_response(),
    };
    if let Err(status) = failed {
        log(
            LogLevel::Error,
            &format!("floor: failing failed: {status:?}"),
        );
    }
}

fn read_buffer(kind: BufferType, size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(kind, 0, size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("floor: reading buffer failed: {status:?}"),
            );
            Vec::new()
        }
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}
