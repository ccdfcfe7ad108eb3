//! The floor of Tollgate's architecture on Envoy: what a proxy-wasm filter costs Envoy when it
//! does only what every Tollgate call needs of Envoy, and nothing of Tollgate's own work
//! (identity, policy, masking, records worth the name). `scripts/bench-floor.sh` measures it
//! against plain Envoy and the full filter, with the same bootstrap otherwise.
//!
//! The plugin configuration's `"mode"` says how much:
//! - `"buffer"`: the request body is held until its end, read into the VM and let go; the
//!   response body likewise.
//! - `"grpc"`: the same, and at the end of each body one message of about a record's size goes
//!   out on the worker's long-lived `tollgate.v1.Audit/AppendStream`; the body is held until
//!   that message is acknowledged, as Tollgate holds a call for its durable audit record.
//!
//! This part is plain Rust (built natively too); the Envoy glue is `glue`, wasm32 only.

use prost::Message as _;
use tollgate_proto::pb::{AppendRequest, AppendStreamRequest, AppendStreamResponse};

#[cfg(target_arch = "wasm32")]
mod glue;

/// The cluster the rendered bootstrap defines for the control plane (the real filter's default
/// `controlPlaneCluster`), so that `envoy/render.py` serves both filters unchanged.
pub const CONTROL_PLANE_CLUSTER: &str = "tollgate_control_plane";

/// About the size of one of Tollgate's audit records as they go out on the stream.
pub const RECORD_BYTES: usize = 600;

/// At most this much of a body goes into its record (Tollgate's records carry a bounded excerpt).
const EXCERPT_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Buffer,
    Grpc,
}

impl Mode {
    /// From the plugin configuration, `{"mode": "buffer"}` or `{"mode": "grpc"}`. Other keys are
    /// ignored: render.py adds the real filter's `resourceMetadataUrl` to every configuration.
    pub fn from_config(bytes: &[u8]) -> Result<Mode, String> {
        let config: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("floor: the configuration is not JSON: {e}"))?;
        match config.get("mode").and_then(serde_json::Value::as_str) {
            Some("buffer") => Ok(Mode::Buffer),
            Some("grpc") => Ok(Mode::Grpc),
            other => Err(format!(
                "floor: \"mode\" must be \"buffer\" or \"grpc\", got {other:?}"
            )),
        }
    }
}

/// A JSON record of about [`RECORD_BYTES`] describing one body (`kind` "request" or
/// "response"): its path, time and size, the start of its bytes, padded to the size.
pub fn record(kind: &str, path: &str, time_micros: u128, body: &[u8]) -> Vec<u8> {
    let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]);
    let mut record = serde_json::json!({
        "type": format!("floor.{kind}"),
        "path": path,
        "timeMicros": time_micros.to_string(),
        "bytes": body.len(),
        "excerpt": excerpt,
    });
    let bare = record.to_string().len();
    // `,"pad":""` is 9 bytes before the padding itself.
    let pad = RECORD_BYTES.saturating_sub(bare + 9);
    if pad > 0 {
        record["pad"] = "x".repeat(pad).into();
    }
    record.to_string().into_bytes()
}

/// One `AppendStreamRequest` carrying `record` under the stream-unique `id`.
pub fn append_message(id: u64, record: Vec<u8>) -> Vec<u8> {
    AppendStreamRequest {
        id,
        append: Some(AppendRequest {
            record_json: record,
            session: None,
        }),
    }
    .encode_to_vec()
}

/// An answer on the stream: the id it answers and whether it acknowledges (code 0 and an ack
/// with a chain hash, as the real filter requires). `None` if it does not decode.
pub fn read_answer(bytes: &[u8]) -> Option<(u64, bool)> {
    let answer = AppendStreamResponse::decode(bytes).ok()?;
    let acked = answer.code == 0
        && answer
            .ack
            .as_ref()
            .is_some_and(|ack| !ack.chain_hash.is_empty());
    Some((answer.id, acked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_about_the_size_of_tollgates_and_goes_out_as_an_append() {
        let body =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fixed_result"}}"#;
        let record = record("request", "/mcp", 1_765_000_000_000_000, body);
        assert_eq!(record.len(), RECORD_BYTES);
        assert!(serde_json::from_slice::<serde_json::Value>(&record).is_ok());
        let message = AppendStreamRequest::decode(append_message(7, record.clone()).as_slice())
            .map(|m| (m.id, m.append.map(|a| a.record_json)));
        assert_eq!(message.ok(), Some((7, Some(record))));
    }
}
