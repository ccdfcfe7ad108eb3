//! The gate invariant, checked from the upstream's own request log: every request an upstream
//! received has a durable `mcp.request` record that allowed it (or used an approval grant),
//! stored before the upstream saw the request and naming what the upstream parsed; every refused
//! request is absent from that log; every forwarded request has its `mcp.response` record.
//!
//! The link between the two logs is Envoy's `x-request-id`: the filter records it as `requestId`,
//! Envoy forwards it, and the upstream logs it as `x_request_id`. Times compare the control
//! plane's `receivedAt` (when the record became durable) with the upstream's `ts_us` (when the
//! request arrived), both from this machine's clock.
//!
//! Also here: the attack clients (`tests/attack/`, Python) and the naive upstream they are
//! compared against.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::peers::{python_bin, run_bounded, Upstream};
use crate::{HttpAnswer, Stack};

/// Every way `server_log` and `records` break the gate invariant; empty when they keep it.
pub fn gate_invariant_violations(server_log: &[Value], records: &[Value]) -> Vec<String> {
    let mut violations = Vec::new();
    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .collect();
    for line in server_log {
        let Some(rid) = line["x_request_id"].as_str() else {
            violations.push(format!(
                "upstream got a request without x-request-id: {line}"
            ));
            continue;
        };
        let matching: Vec<&&Value> = requests.iter().filter(|r| r["requestId"] == rid).collect();
        let [record] = matching.as_slice() else {
            violations.push(format!(
                "upstream got request {rid} with {} mcp.request records (want 1): {line}",
                matching.len()
            ));
            continue;
        };
        if !allowed(record, records) {
            violations.push(format!(
                "upstream got request {rid}, which was not allowed (decision {}, outcome {}): {line}",
                record["decision"], record["outcome"]
            ));
        }
        match (
            record["receivedAt"].as_str().and_then(rfc3339_micros),
            line["ts_us"].as_u64(),
        ) {
            (Some(stored), Some(seen)) if stored <= seen => {}
            (stored, seen) => violations.push(format!(
                "request {rid}: record stored at {stored:?} µs, not before the upstream saw it at \
                 {seen:?} µs ({})",
                record["receivedAt"]
            )),
        }
        if record["httpMethod"] != line["http"] {
            violations.push(format!(
                "request {rid}: recorded as HTTP {} but the upstream got {}",
                record["httpMethod"], line["http"]
            ));
        }
        if let Some(route) = record["route"].as_str() {
            if line["target"].as_str() != Some(route) && line["path"].as_str() != Some(route) {
                violations.push(format!(
                    "request {rid}: recorded for {route} but the upstream got {}",
                    line["target"]
                ));
            }
        }
        let messages = record["messages"].as_array().cloned().unwrap_or_default();
        match line["method"].as_str() {
            Some(method) => {
                let target = line["rpc_target"].as_str();
                let named = messages.iter().any(|m| {
                    m["method"] == method && target.is_none_or(|t| m["target"].as_str() == Some(t))
                });
                if !named {
                    violations.push(format!(
                        "request {rid}: the upstream parsed {method} {target:?}, the record \
                         decided on {messages:?}"
                    ));
                }
            }
            // A bodiless GET or DELETE is decided as the method of its HTTP method.
            None if line["kind"] != "response"
                && messages.iter().any(|m| {
                    m["method"].is_string() && !(m["method"] == line["http"] && line["bytes"] == 0)
                }) =>
            {
                violations.push(format!(
                    "request {rid}: the record decided on {messages:?}, the upstream parsed no \
                     method from the same body: {line}"
                ));
            }
            None => {}
        }
        let answered = records
            .iter()
            .any(|r| r["event"] == "mcp.response" && r["requestId"] == rid);
        // Every answer is recorded, the empty 202 of a notification too.
        let expects_answer = true;
        if expects_answer && !answered {
            violations.push(format!(
                "request {rid} reached the upstream but has no mcp.response record"
            ));
        }
    }
    for record in &requests {
        if allowed(record, records) {
            continue;
        }
        let Some(rid) = record["requestId"].as_str() else {
            continue;
        };
        if server_log.iter().any(|l| l["x_request_id"] == rid) {
            violations.push(format!(
                "refused request {rid} (decision {}) reached the upstream anyway",
                record["decision"]
            ));
        }
    }
    violations
}

/// Panics with every violation of the gate invariant.
pub fn assert_gate_invariant(server_log: &[Value], records: &[Value]) {
    let violations = gate_invariant_violations(server_log, records);
    assert!(
        violations.is_empty(),
        "gate invariant broken ({} violations):\n{}\n\nupstream log:\n{}\n\nrecords:\n{}",
        violations.len(),
        violations.join("\n"),
        lines(server_log),
        lines(records)
    );
}

fn lines(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An `mcp.request` record that let its request through: the policy allowed it, or it was held
/// for approval and a grant was used for it.
fn allowed(record: &Value, records: &[Value]) -> bool {
    if record["decision"] == "allow" && record["outcome"] == "forwarded" {
        return true;
    }
    if record["decision"] != "approve" {
        return false;
    }
    records.iter().any(|r| {
        r["event"] == "approval.grant_used"
            && ((r["requestId"].is_string() && r["requestId"] == record["requestId"])
                || approval_ids(record).iter().any(|id| r["approvalId"] == *id))
    })
}

/// Every `approvalId` anywhere in `value`.
fn approval_ids(value: &Value) -> Vec<Value> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| {
                let mut ids = approval_ids(v);
                if k == "approvalId" {
                    ids.push(v.clone());
                }
                ids
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(approval_ids).collect(),
        _ => Vec::new(),
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC time (`2025-01-31T12:00:00.000001Z`).
pub fn rfc3339_micros(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (parts.next()??, parts.next()??, parts.next()??);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

/// The audit records once every request the upstream received has its `mcp.response` record
/// (answers are recorded as they finish, a moment after the client has them), or after
/// `timeout` as they are; the invariant check then names what is missing.
pub fn settled_records(stack: &Stack, server_log: &[Value], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = stack.audit_records().unwrap_or_default();
        let complete = server_log.iter().all(|line| {
            records
                .iter()
                .any(|r| r["event"] == "mcp.response" && r["requestId"] == line["x_request_id"])
        });
        if complete || Instant::now() >= deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tests/attack`: the attack clients and the naive upstream.
pub fn attack_dir() -> PathBuf {
    crate::workspace().join("tests/attack")
}

/// Runs `tests/attack/gate_client.py` against `addr` (host:port) with `plan` (see the script);
/// returns one answer per request (a list of answers for a pipelined one).
pub fn run_attack(addr: &str, tls: bool, plan: &Value) -> Result<Vec<Value>> {
    let mut command = std::process::Command::new(python_bin());
    command
        .arg(attack_dir().join("gate_client.py"))
        .args(["--addr", addr]);
    if tls {
        command.arg("--tls");
    }
    command.arg(plan.to_string());
    let ran = run_bounded(command, Duration::from_secs(90))?.ok()?;
    let answers: Value = serde_json::from_str(&ran.stdout)
        .with_context(|| format!("attack client output: {}\n{}", ran.stdout, ran.stderr))?;
    match answers {
        Value::Array(answers) => Ok(answers),
        other => bail!("attack client printed {other}"),
    }
}

/// An attack client's answer as an [`HttpAnswer`] (status 0 when there was none).
pub fn as_http_answer(answer: &Value) -> HttpAnswer {
    let mut headers = reqwest::header::HeaderMap::new();
    for pair in answer["headers"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    HttpAnswer {
        status: answer["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0),
        headers,
        body: answer["body"].as_str().unwrap_or_default().to_owned(),
    }
}

/// `tests/attack/naive_upstream.py` as the stack's upstream, logging to `log` (the same fields
/// as the payments server's request log) and answering in `mode` (`mcp` or `trailers`).
pub fn naive_upstream(mode: &str, log: &Path) -> Upstream {
    Upstream {
        name: format!("naive-upstream-{mode}"),
        program: python_bin(),
        args: vec![attack_dir()
            .join("naive_upstream.py")
            .to_string_lossy()
            .into_owned()],
        env: vec![
            ("NAIVE_MODE".to_owned(), mode.to_owned()),
            ("NAIVE_LOG".to_owned(), log.to_string_lossy().into_owned()),
        ],
        port_env: "PORT".to_owned(),
        path: "/mcp".to_owned(),
    }
}

/// The JSON lines of a request-log file (missing file: none).
pub fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_to_micros() {
        assert_eq!(rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_micros("2025-01-31T12:00:00.000001Z"),
            Some(1_738_324_800_000_001)
        );
        assert_eq!(
            rfc3339_micros("2024-02-29T00:00:01.5Z"),
            Some(1_709_164_801_500_000)
        );
        assert_eq!(rfc3339_micros("nonsense"), None);
    }

    fn record(rid: &str, decision: &str, outcome: &str, at: &str) -> Value {
        json!({"event":"mcp.request","requestId":rid,"decision":decision,"outcome":outcome,
               "receivedAt":at,"httpMethod":"POST","route":"/mcp",
               "messages":[{"method":"tools/call","target":"get_customer"}]})
    }

    fn line(rid: &str, tool: &str, ts_us: u64) -> Value {
        json!({"x_request_id":rid,"http":"POST","path":"/mcp","target":"/mcp",
               "method":"tools/call","tool":tool,"rpc_target":tool,"ts_us":ts_us})
    }

    #[test]
    fn checker_accepts_a_kept_invariant_and_names_each_break() {
        let at = "2025-01-31T12:00:00.000000Z";
        let t = 1_738_324_800_000_000;
        let response = |rid: &str| json!({"event":"mcp.response","requestId":rid});
        let records = vec![
            record("a", "allow", "forwarded", at),
            response("a"),
            record("d", "deny", "refused", at),
        ];
        assert!(
            gate_invariant_violations(&[line("a", "get_customer", t + 5)], &records).is_empty()
        );

        let cases = [
            (line("x", "get_customer", t + 5), "0 mcp.request records"),
            (line("d", "get_customer", t + 5), "not allowed"),
            (line("a", "get_customer", t - 1), "not before"),
            (line("a", "delete_merchant", t + 5), "the upstream parsed"),
        ];
        for (l, want) in cases {
            let found = gate_invariant_violations(&[l], &records);
            assert!(found.iter().any(|v| v.contains(want)), "{want}: {found:?}");
        }
        let unanswered = vec![record("a", "allow", "forwarded", at)];
        let found = gate_invariant_violations(&[line("a", "get_customer", t + 5)], &unanswered);
        assert!(
            found.iter().any(|v| v.contains("no mcp.response")),
            "{found:?}"
        );
    }
}
