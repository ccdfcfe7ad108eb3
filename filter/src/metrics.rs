//! What the filter counts, and under which names, derived from the audit records it appends so
//! that the numbers and the chain cannot disagree. No proxy-wasm types: the glue defines the
//! metrics in Envoy (`define_metric`), where they appear as `wasmcustom.<name>`; the bootstrap's
//! `stats_tags` turn the `.rule.`, `.action.` and `.brand.` parts into Prometheus labels.

use serde_json::Value;

/// Counter: MCP requests the filter decided (each HTTP request, whatever its outcome).
pub const CALLS: &str = "tollgate.calls";
/// Histogram: how long the control plane took to acknowledge an audit append, in milliseconds.
pub const AUDIT_APPEND_MS: &str = "tollgate.audit_append_ms";
/// Counter: audit appends that failed or timed out (the call failed closed).
pub const AUDIT_APPEND_FAILURES: &str = "tollgate.audit_append_failures";
/// Counter: reads that passed fail-open while the control plane was unreachable.
pub const FAIL_OPEN: &str = "tollgate.fail_open";
/// Histogram: time the filter spent masking one response (a buffered body whole, or every chunk
/// of a stream together), in microseconds; Envoy's admin `/stats` prints its quantiles.
pub const MASK_US: &str = "tollgate.mask_us";
/// Histogram: time the filter spent on a request body, from reading it to its audit record sent
/// (parse, policy, the record built, masked and encoded), in microseconds: the VM's part of
/// the per-stage budget in BENCHMARKS.md.
pub const DECIDE_US: &str = "tollgate.decide_us";
/// Histogram: time the filter spent building, masking, encoding and sending a response record,
/// in microseconds.
pub const RESPONSE_RECORD_US: &str = "tollgate.response_record_us";
/// Counter: requests the control plane refused because of their session (unknown, ended, idle
/// too long, or another identity's); their records were chained as refusals.
pub const SESSIONS_REFUSED: &str = "tollgate.sessions_refused";
/// Gauge: calls held right now waiting for an approver's decision.
pub const APPROVALS_PENDING: &str = "tollgate.approvals_pending";

/// Counter of decisions made by `rule` (`default` when no rule matched) with `action`.
pub fn decision(rule: &str, action: &str) -> String {
    format!(
        "tollgate.decisions.rule.{}.action.{}",
        label(rule),
        label(action)
    )
}

/// Counter of card numbers of `brand` masked.
pub fn masked_pans(brand: &str) -> String {
    format!("tollgate.masked_pans.brand.{}", label(brand))
}

/// A label value that cannot break the name apart: only `[A-Za-z0-9_-]`, at most 64 bytes.
fn label(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "none".to_owned()
    } else {
        cleaned
    }
}

/// The counters an audit record adds to, with how much: a decision per message of a request
/// record, and the masked card numbers by brand of any record.
pub fn counts(record: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Some(messages) = record["messages"].as_array() {
        for message in messages {
            if let Some(action) = message["decision"].as_str() {
                let rule = message["rule"].as_str().unwrap_or("default");
                out.push((decision(rule, action), 1));
            }
        }
    }
    if let Some(brands) = record["maskedPans"].as_object() {
        for (brand, n) in brands {
            if let Some(n) = n.as_u64().filter(|n| *n > 0) {
                out.push((masked_pans(brand), n));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_record_counts_each_message_decision_and_masked_arguments() {
        let record = json!({
            "event": "mcp.request",
            "messages": [
                {"kind": "request", "decision": "allow", "rule": "allow-reads"},
                {"kind": "request", "decision": "deny"},
                {"kind": "notification"}
            ],
            "maskedPans": {"visa": 2, "amex": 0}
        });
        assert_eq!(
            counts(&record),
            vec![
                (
                    "tollgate.decisions.rule.allow-reads.action.allow".to_owned(),
                    1
                ),
                ("tollgate.decisions.rule.default.action.deny".to_owned(), 1),
                ("tollgate.masked_pans.brand.visa".to_owned(), 2),
            ]
        );
    }

    #[test]
    fn labels_cannot_split_names() {
        assert_eq!(
            decision("a.b c/d", ""),
            "tollgate.decisions.rule.a_b_c_d.action.none"
        );
        assert_eq!(
            masked_pans(&"x".repeat(100)).len(),
            "tollgate.masked_pans.brand.".len() + 64
        );
    }

    #[test]
    fn a_response_record_counts_brands_only() {
        let record = json!({"event": "mcp.response", "maskedPans": {"mastercard": 3}});
        assert_eq!(
            counts(&record),
            vec![("tollgate.masked_pans.brand.mastercard".to_owned(), 3)]
        );
        assert!(counts(&json!({"event": "auth.failed"})).is_empty());
    }
}
