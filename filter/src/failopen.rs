//! Fail-open for reads: which calls may pass while the control plane cannot acknowledge their
//! audit record, and the bounded queue that keeps records until it can (those calls' records,
//! the notes of calls that failed closed, the records of abandoned streams). Fail-open is off
//! unless configured; a call that is not listed, or a full queue, still fails closed.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

/// `failOpen` in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailOpenConfig {
    /// MCP methods that may pass unrecorded for now (e.g. `tools/list`, `resources/read`).
    /// Only read-only methods belong here.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Tools whose `tools/call` may pass unrecorded for now. Only read-only tools belong here.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Records held per worker until the control plane takes them (fail-open calls' records,
    /// and those of streams their client abandoned); past it, fail-open calls fail closed.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
}

fn default_max_queued() -> usize {
    1000
}

impl Default for FailOpenConfig {
    fn default() -> Self {
        FailOpenConfig {
            methods: Vec::new(),
            tools: Vec::new(),
            max_queued: default_max_queued(),
        }
    }
}

impl FailOpenConfig {
    pub fn enabled(&self) -> bool {
        !self.methods.is_empty() || !self.tools.is_empty()
    }

    /// Whether the request behind `record` (an `mcp.request` record the policy forwarded) may
    /// pass without an acknowledged append: every message in it is a listed read.
    pub fn allows(&self, record: &Value) -> bool {
        if !self.enabled() || record["event"] != "mcp.request" || record["outcome"] != "forwarded" {
            return false;
        }
        let Some(messages) = record["messages"].as_array().filter(|m| !m.is_empty()) else {
            return false;
        };
        messages.iter().all(|m| {
            let method = m["method"].as_str().unwrap_or_default();
            if method == "tools/call" {
                let tool = m["target"].as_str().unwrap_or_default();
                self.tools.iter().any(|t| t == tool)
            } else {
                m["kind"] == "request" && self.methods.iter().any(|x| x == method)
            }
        })
    }
}

/// The record as it is kept and later appended: marked as having passed unrecorded.
pub fn mark(record: &Value) -> Value {
    let mut record = record.clone();
    record["failOpen"] = true.into();
    record
}

/// The note appended once the control plane answers again about a call that failed closed: its
/// request record (`request`, as sent) may have reached the chain late, after the gateway had
/// already refused the call, so the chain must say that it was not forwarded. `None` when the
/// request record is not a forwarded request.
pub fn failed_closed(request: &[u8], now: &str, grpc_status: u32) -> Option<Value> {
    let mut record: Value = serde_json::from_slice(request).ok()?;
    if record["event"] != "mcp.request" || record["outcome"] != "forwarded" {
        return None;
    }
    record["requestTime"] = record["time"].take();
    record["time"] = now.into();
    record["event"] = "mcp.request.failedClosed".into();
    record["outcome"] = "refused".into();
    record["status"] = 503.into();
    record["reason"] =
        format!("audit record not acknowledged (grpc status {grpc_status}); not forwarded").into();
    Some(record)
}

/// Records waiting for the control plane, oldest first, at most `max` of them.
#[derive(Debug, Default)]
pub struct Queue {
    records: VecDeque<Vec<u8>>,
}

/// The queue is full: the call must fail closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Queue {
    pub fn push(&mut self, record: Vec<u8>, max: usize) -> Result<(), Full> {
        if self.records.len() >= max {
            return Err(Full);
        }
        self.records.push_back(record);
        Ok(())
    }

    /// The oldest record, to append next.
    pub fn front(&self) -> Option<&[u8]> {
        self.records.front().map(Vec::as_slice)
    }

    /// The oldest record was acknowledged.
    pub fn pop(&mut self) {
        self.records.pop_front();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> FailOpenConfig {
        serde_json::from_value(json!({"methods": ["tools/list"], "tools": ["get_customer"]}))
            .unwrap()
    }

    fn request(messages: Value) -> Value {
        json!({"event": "mcp.request", "outcome": "forwarded", "messages": messages})
    }

    #[test]
    fn off_by_default() {
        let off = FailOpenConfig::default();
        assert!(!off.enabled());
        // The queue still has room (abandoned streams' records use it too).
        assert_eq!(off.max_queued, 1000);
        let absent = crate::config::FilterConfig::from_json(b"{}").unwrap();
        assert_eq!(absent.fail_open.max_queued, 1000);
        let read = request(json!([{"kind":"request","method":"tools/list"}]));
        assert!(!off.allows(&read));
    }

    #[test]
    fn only_listed_reads_pass() {
        let c = config();
        assert!(c.allows(&request(json!([{"kind":"request","method":"tools/list"}]))));
        assert!(c.allows(&request(
            json!([{"kind":"request","method":"tools/call","target":"get_customer"}])
        )));
        // A write, an unlisted method, a batch with one write in it.
        assert!(!c.allows(&request(
            json!([{"kind":"request","method":"tools/call","target":"refund_payment"}])
        )));
        assert!(!c.allows(&request(json!([{"kind":"request","method":"initialize"}]))));
        assert!(!c.allows(&request(json!([
            {"kind":"request","method":"tools/list"},
            {"kind":"request","method":"tools/call","target":"refund_payment"}
        ]))));
        // No messages (a GET), a refusal, another event.
        assert!(!c.allows(&request(json!([]))));
        let mut refused = request(json!([{"kind":"request","method":"tools/list"}]));
        refused["outcome"] = "refused".into();
        assert!(!c.allows(&refused));
        assert!(!c.allows(&json!({"event":"auth.failed"})));
    }

    #[test]
    fn the_queue_is_bounded_and_in_order() {
        let mut q = Queue::default();
        assert_eq!(q.push(b"a".to_vec(), 2), Ok(()));
        assert_eq!(q.push(b"b".to_vec(), 2), Ok(()));
        assert_eq!(q.push(b"c".to_vec(), 2), Err(Full));
        assert_eq!(q.front(), Some(&b"a"[..]));
        q.pop();
        assert_eq!(q.front(), Some(&b"b"[..]));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_failed_closed_note_names_the_call_and_says_it_was_not_forwarded() {
        let request = json!({"event":"mcp.request","outcome":"forwarded","time":"t0",
            "requestId":"r1","messages":[{"id":7,"method":"tools/call"}]});
        let note = failed_closed(request.to_string().as_bytes(), "t1", 4).unwrap();
        assert_eq!(note["event"], "mcp.request.failedClosed");
        assert_eq!(note["requestTime"], "t0");
        assert_eq!(note["time"], "t1");
        assert_eq!(note["outcome"], "refused");
        assert_eq!(note["status"], 503);
        assert_eq!(note["requestId"], "r1");
        assert_eq!(note["messages"][0]["id"], 7);
        assert!(note["reason"].as_str().unwrap().contains("grpc status 4"));
        // A refusal was sent as decided: nothing to correct.
        let refused = json!({"event":"mcp.request","outcome":"refused"});
        assert_eq!(failed_closed(refused.to_string().as_bytes(), "t1", 4), None);
        assert_eq!(failed_closed(b"not json", "t1", 4), None);
    }

    #[test]
    fn marked_records_say_so() {
        let marked = mark(&request(json!([])));
        assert_eq!(marked["failOpen"], true);
    }
}
