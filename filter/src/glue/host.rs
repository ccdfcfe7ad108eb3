//! The host calls the filter uses, through the `Result`-returning `hostcalls` so that a host
//! error is handled (logged, treated as absent) instead of panicking inside the VM.

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};

use crate::exchange::{Buffer, Host, Level};

/// Envoy, as the host of a request's [`crate::exchange::Exchange`]: the HTTP context `context_id`,
/// created by the root context `root_id`.
pub struct EnvoyHost {
    pub root_id: u32,
    pub context_id: u32,
}

impl Host for EnvoyHost {
    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, message);
    }

    fn buffer(&self, kind: Buffer, size: usize) -> Vec<u8> {
        if kind == Buffer::GrpcReceive {
            // An answer from the audit stream is handed over, not in Envoy's buffer.
            if let Some(ack) = super::channel::received() {
                return ack;
            }
        }
        buffer(buffer_type(kind), size)
    }

    fn set_buffer(&self, kind: Buffer, size: usize, value: &[u8]) -> bool {
        set_buffer(buffer_type(kind), size, value)
    }

    fn request_header(&self, name: &str) -> Option<String> {
        request_header(name)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        response_header(name)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        set_request_header(name, value);
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        set_response_header(name, value);
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        property(path.to_vec())
    }

    fn now(&self) -> SystemTime {
        now()
    }

    fn send_reply(&self, status: u32, headers: &[(String, String)], body: &[u8]) {
        send_reply(status, headers, body);
    }

    fn resume_request(&self) {
        resume_request();
    }

    fn resume_response(&self) {
        resume_response();
    }

    fn reset_response(&self) {
        reset_response();
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Option<u32> {
        if service == tollgate_proto::service::AUDIT && method == "Append" {
            if let Some(token) =
                super::channel::send(self.root_id, self.context_id, message, timeout)
            {
                return Some(token);
            }
        }
        let token = grpc_call(cluster, service, method, message, timeout)?;
        super::channel::note_callout(token);
        Some(token)
    }

    fn shared_bytes(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        shared_bytes(key)
    }

    fn set_shared_bytes(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn count(&self, name: &str, n: u64) {
        super::stats::count(name, n);
    }

    fn gauge_add(&self, name: &str, delta: i64) {
        super::stats::gauge_add(name, delta);
    }

    fn record_metric(&self, name: &str, value: u64) {
        super::stats::record(name, value);
    }
}

fn buffer_type(kind: Buffer) -> BufferType {
    match kind {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::GrpcReceive => BufferType::GrpcReceiveBuffer,
    }
}

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(kind, 0, size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("tollgate: reading buffer failed: {status:?}"),
            );
            Vec::new()
        }
    }
}

pub fn set_buffer(kind: BufferType, size: usize, value: &[u8]) -> bool {
    hostcalls::set_buffer(kind, 0, size, value).is_ok()
}

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}

/// A property as UTF-8 text (Envoy returns strings raw).
pub fn property(path: Vec<&str>) -> Option<String> {
    let bytes = hostcalls::get_property(path).ok().flatten()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

pub fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn send_reply(status: u32, headers: &[(String, String)], body: &[u8]) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(status) = hostcalls::send_http_response(status, headers, Some(body)) {
        log(
            LogLevel::Error,
            &format!("tollgate: sending local reply failed: {status:?}"),
        );
    }
}

pub fn resume_request() {
    if let Err(status) = hostcalls::resume_http_request() {
        log(
            LogLevel::Error,
            &format!("tollgate: resuming request failed: {status:?}"),
        );
    }
}

pub fn resume_response() {
    if let Err(status) = hostcalls::resume_http_response() {
        log(
            LogLevel::Error,
            &format!("tollgate: resuming response failed: {status:?}"),
        );
    }
}

/// Starts a unary gRPC call; its answer arrives in `on_grpc_call_response` of the calling
/// context.
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Option<u32> {
    match hostcalls::dispatch_grpc_call(
        cluster,
        service,
        method,
        Vec::new(),
        Some(message),
        timeout,
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("tollgate: gRPC call to {cluster:?} failed to start: {status:?}"),
            );
            None
        }
    }
}

pub fn grpc_response(size: usize) -> Vec<u8> {
    buffer(BufferType::GrpcReceiveBuffer, size)
}

/// Ends the response stream abruptly: what is left of it never reaches the client.
pub fn reset_response() {
    if let Err(status) = hostcalls::reset_http_response() {
        log(
            LogLevel::Error,
            &format!("tollgate: resetting the response failed: {status:?}"),
        );
    }
}

/// Shared data with its CAS token (which changes whenever the value is replaced).
pub fn shared_bytes(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

pub fn set_shared_bytes(key: &str, value: &[u8]) {
    if let Err(status) = hostcalls::set_shared_data(key, Some(value), None) {
        log(
            LogLevel::Warn,
            &format!("tollgate: writing shared data failed: {status:?}"),
        );
    }
}

pub fn set_tick_period(period: Duration) {
    if let Err(status) = hostcalls::set_tick_period(period) {
        log(
            LogLevel::Warn,
            &format!("tollgate: setting the tick period failed: {status:?}"),
        );
    }
}
