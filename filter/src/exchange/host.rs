//! What the request logic asks of its host: Envoy through proxy-wasm in the filter
//! (`glue/host.rs`), a scripted host in the native tests.

use std::time::{Duration, SystemTime};

/// What a callback tells the host to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// The buffers a request reads and replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    /// The answer of the gRPC call that just completed.
    GrpcReceive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// The host calls a request makes. Failures are the host's to log: the request sees an absent
/// value, `false`, or `None`, never a panic.
pub trait Host {
    fn log(&self, level: Level, message: &str);
    fn buffer(&self, kind: Buffer, size: usize) -> Vec<u8>;
    /// Replaces the first `size` bytes of the buffer; `false` when the host refused.
    fn set_buffer(&self, kind: Buffer, size: usize, value: &[u8]) -> bool;
    fn request_header(&self, name: &str) -> Option<String>;
    /// Every request header, names lower-case.
    fn request_headers(&self) -> Vec<(String, String)>;
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_request_header(&self, name: &str, value: Option<&str>);
    fn set_response_header(&self, name: &str, value: Option<&str>);
    /// A property as UTF-8 text.
    fn property(&self, path: &[&str]) -> Option<String>;
    fn now(&self) -> SystemTime;
    fn send_reply(&self, status: u32, headers: &[(String, String)], body: &[u8]);
    fn resume_request(&self);
    fn resume_response(&self);
    /// Ends the response stream abruptly: what is left of it never reaches the client.
    fn reset_response(&self);
    /// Starts a unary gRPC call; its answer arrives in `on_grpc_call_response`.
    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Option<u32>;
    /// Shared data with its CAS token.
    fn shared_bytes(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Replaces shared data if its CAS token is still `cas`; `false` when another worker wrote
    /// it first (or the host refused).
    fn set_shared_bytes(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    fn count(&self, name: &str, n: u64);
    fn gauge_add(&self, name: &str, delta: i64);
    fn record_metric(&self, name: &str, value: u64);
}

/// The counters an audit record adds to (decisions by rule, masked card numbers by brand).
pub fn count_record(host: &impl Host, record: &serde_json::Value) {
    for (name, n) in crate::metrics::counts(record) {
        host.count(&name, n);
    }
}
