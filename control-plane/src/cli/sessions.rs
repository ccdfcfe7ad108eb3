//! `tollgate sessions list` and `tollgate sessions replay ID`: the gateway's records grouped by
//! MCP session, in order, as an auditor reads them.
//!
//! A session is the `session` field (the client's Mcp-Session-Id); a record without one is its
//! own group, named `request:<requestId>` (or `seq:<n>` without a request id). The control
//! plane's own records (`controlPlane.*`) belong to no session.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};
use tollgate_engine::identity::act_subjects;

use super::filter::{messages, FilterArgs};
use super::records::{self, OperatorArgs, Source, SourceArgs};
use crate::operator::Operator;
use crate::store::RESERVED_EVENT_PREFIX;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// One JSON object per session per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The session: its Mcp-Session-Id, or `request:<id>` / `seq:<n>` from `sessions list`.
    id: String,
    /// Also read the records archived into the segments in DIR (each verified with the log's
    /// keys before it is read), for a session older than the hot store.
    #[arg(long, value_name = "DIR")]
    archive: Option<std::path::PathBuf>,
    /// One {"seq","chainHash","record"} object per line, in order.
    #[arg(long)]
    json: bool,
}

/// The group a record belongs to, if any.
fn session_of(seq: u64, record: &Value) -> Option<String> {
    let text = |name: &str| record.get(name).and_then(Value::as_str);
    if text("event").is_some_and(|e| e.starts_with(RESERVED_EVENT_PREFIX)) {
        return None;
    }
    if let Some(session) = text("session").filter(|s| !s.is_empty()) {
        return Some(session.to_string());
    }
    Some(match text("requestId") {
        Some(id) => format!("request:{id}"),
        None => format!("seq:{seq}"),
    })
}

fn time_of(record: &Value) -> String {
    record
        .get("time")
        .or_else(|| record.get("receivedAt"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string()
}

/// Who a record speaks for: the verified subject, and on whose behalf (RFC 8693 `act`, CI
/// `actor`).
fn who(record: &Value) -> (Option<String>, Vec<String>) {
    let sub = record
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string);
    let identity = record.get("identity");
    let claim = |name: &str| identity.and_then(|i| i.get(name));
    let mut behalf = Vec::new();
    behalf.extend(act_subjects(claim("act")).map(|s| format!("{s} (act)")));
    if let Some(actor) = claim("actor").and_then(Value::as_str) {
        let mut text = format!("{actor} (actor");
        for extra in ["repository", "workflow"] {
            if let Some(v) = claim(extra).and_then(Value::as_str) {
                text.push_str(&format!(", {extra} {v}"));
            }
        }
        text.push(')');
        behalf.push(text);
    }
    // A service account mapped to its owner in the control plane (the filter resolved it).
    if let Some(accountable) = claim("accountable").filter(|a| a["via"] == "owner") {
        if let Some(owner) = accountable["sub"].as_str() {
            behalf.push(format!("{owner} (owner of the service account)"));
        }
    }
    (sub, behalf)
}

#[derive(Default)]
struct Summary {
    first: String,
    last: String,
    subs: BTreeSet<String>,
    behalf: BTreeSet<String>,
    records: u64,
    calls: u64,
    denied: u64,
    tools: BTreeSet<String>,
}

pub async fn list(
    home: &Path,
    operator: &OperatorArgs,
    args: &ListArgs,
) -> anyhow::Result<ExitCode> {
    let operator = operator
        .operator()
        .with_purpose("sessions.list", Some(args.filter.to_json()));
    let mut source = Source::open(home, &args.source, &operator).await?;
    let sessions = summaries(&mut source, &operator, &args.filter).await;
    source.close().await?;
    let sessions = sessions?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for line in &sessions {
            writeln!(out, "{line}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<38}  {:<27}  {:<27}  {:<24}  {:>7}  {:>5}  {:>6}  TOOLS",
        "SESSION", "FIRST", "LAST", "SUB", "RECORDS", "CALLS", "DENIED"
    )?;
    for s in &sessions {
        let text = |name: &str| s[name].as_str().unwrap_or_default().to_string();
        let joined = |name: &str| {
            let items: Vec<&str> = s[name]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            items.join(",")
        };
        let subs = Some(joined("subs"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_string());
        writeln!(
            out,
            "{:<38}  {:<27}  {:<27}  {:<24}  {:>7}  {:>5}  {:>6}  {}",
            text("session"),
            text("first"),
            text("last"),
            subs,
            s["records"],
            s["calls"],
            s["denied"],
            joined("tools")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every session with a record that `filter` matches, in the order each began: one JSON object
/// each (`session`, `first`, `last`, `subs`, `onBehalfOf`, `records`, `calls`, `denied`,
/// `tools`), as `sessions list --json` prints them.
pub async fn summaries(
    source: &mut Source,
    operator: &Operator,
    filter: &FilterArgs,
) -> anyhow::Result<Vec<Value>> {
    let mut sessions: BTreeMap<String, Summary> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    source
        .for_each(operator, |stored| {
            let record = records::parse(&stored)?;
            let Some(id) = session_of(stored.seq, &record) else {
                return Ok(true);
            };
            if !filter.matches(&record) {
                return Ok(true);
            }
            let summary = sessions.entry(id.clone()).or_insert_with(|| {
                order.push(id);
                Summary {
                    first: time_of(&record),
                    ..Summary::default()
                }
            });
            summary.last = time_of(&record);
            summary.records += 1;
            let (sub, behalf) = who(&record);
            summary.subs.extend(sub);
            summary.behalf.extend(behalf);
            if record.get("decision").and_then(Value::as_str) == Some("deny") {
                summary.denied += 1;
            }
            for message in messages(&record) {
                if message.get("method").and_then(Value::as_str) == Some("tools/call") {
                    summary.calls += 1;
                }
                if let Some(target) = message.get("target").and_then(Value::as_str) {
                    summary.tools.insert(target.to_string());
                }
            }
            Ok(true)
        })
        .await?;
    Ok(order
        .into_iter()
        .map(|id| {
            let s = &sessions[&id];
            json!({
                "session": id, "first": s.first, "last": s.last,
                "subs": s.subs, "onBehalfOf": s.behalf, "records": s.records,
                "calls": s.calls, "denied": s.denied, "tools": s.tools,
            })
        })
        .collect())
}

/// The hot store's records of session `id` from sequence number `from` on, in order, each with
/// its chain hash.
pub async fn session_records(
    source: &mut Source,
    operator: &Operator,
    id: &str,
    from: u64,
) -> anyhow::Result<Vec<(u64, String, Value)>> {
    let mut found = Vec::new();
    source
        .for_each(operator, |stored| {
            if stored.seq < from {
                return Ok(true);
            }
            let record = records::parse(&stored)?;
            if session_of(stored.seq, &record).as_deref() == Some(id) {
                found.push((stored.seq, stored.chain_hash, record));
            }
            Ok(true)
        })
        .await?;
    Ok(found)
}

pub async fn replay(
    home: &Path,
    operator: &OperatorArgs,
    args: &ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let operator = operator
        .operator()
        .with_purpose("sessions.replay", Some(json!({"session": args.id})));
    let mut source = Source::open(home, &args.source, &operator).await?;
    let mut found = Vec::new();
    // Archived records come from the segments; the hot store's kept copies of some of them
    // are skipped so that none is shown twice.
    let mut hot_from = 0;
    if let Some(dir) = &args.archive {
        hot_from = source.archive_cut().await?.map_or(0, |c| c.cut);
        let keys = source.verifier_keys(home).await?;
        let id = args.id.clone();
        let archived = tokio::task::block_in_place(|| {
            let mut archived = Vec::new();
            crate::archive::for_each_archived(dir, &keys, |stored| {
                let record = records::parse(&stored)?;
                if stored.seq < hot_from
                    && session_of(stored.seq, &record).as_deref() == Some(id.as_str())
                {
                    archived.push((stored.seq, "archived".to_string(), record));
                }
                Ok(true)
            })
            .map(|()| archived)
        })
        .with_context(|| format!("reading the archive {}", dir.display()))?;
        found.extend(archived);
    }
    let hot = session_records(&mut source, &operator, &args.id, hot_from).await;
    source.close().await?;
    found.extend(hot?);
    let mut out = std::io::stdout().lock();
    if args.json {
        for (seq, chain_hash, record) in &found {
            writeln!(out, "{}", records::json_line(*seq, chain_hash, record)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some((_, _, first)) = found.first() else {
        writeln!(out, "no records for session {}", args.id)?;
        return Ok(ExitCode::from(super::EXIT_ERROR));
    };
    let last = &found[found.len() - 1].2;
    writeln!(
        out,
        "session {}: {} records, {} .. {}",
        args.id,
        found.len(),
        time_of(first),
        time_of(last)
    )?;
    let mut people = BTreeSet::new();
    for (_, _, record) in &found {
        people.insert(identity_line(record));
    }
    for person in people {
        writeln!(out, "who: {person}")?;
    }
    for (seq, _, record) in &found {
        writeln!(out)?;
        for line in replay_lines(*seq, record) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn identity_line(record: &Value) -> String {
    let (sub, behalf) = who(record);
    let mut line = sub.unwrap_or_else(|| "(no verified identity)".into());
    if let Some(identity) = record.get("identity") {
        let mut details = Vec::new();
        for claim in ["email", "iss", "client_id"] {
            if let Some(v) = identity.get(claim).and_then(Value::as_str) {
                details.push(format!("{claim} {v}"));
            }
        }
        if let Some(groups) = identity.get("groups").and_then(Value::as_array) {
            let groups: Vec<&str> = groups.iter().filter_map(Value::as_str).collect();
            details.push(format!("groups {}", groups.join(",")));
        }
        if !details.is_empty() {
            line.push_str(&format!(" ({})", details.join("; ")));
        }
    }
    if !behalf.is_empty() {
        line.push_str(&format!(", on behalf of {}", behalf.join(" / ")));
    }
    line
}

/// How one record reads in a replay.
pub(crate) fn replay_lines(seq: u64, record: &Value) -> Vec<String> {
    let text = |name: &str| record.get(name).and_then(Value::as_str);
    let mut head = format!(
        "#{seq} {} {}",
        time_of(record),
        text("event").unwrap_or("record")
    );
    if let Some(sub) = text("sub") {
        head.push_str(&format!(" by {sub}"));
    }
    if let Some(source) = text("source") {
        head.push_str(&format!(" from {source}"));
    }
    if let (Some(method), Some(route)) = (text("httpMethod"), text("route")) {
        head.push_str(&format!(" ({method} {route})"));
    }
    let mut lines = vec![head];
    for message in messages(record) {
        let field = |name: &str| message.get(name).and_then(Value::as_str);
        let mut call = format!(
            "    {} {}",
            field("kind").unwrap_or("message"),
            field("method").unwrap_or("-")
        );
        if let Some(target) = field("target") {
            call.push_str(&format!(" {target}"));
        }
        if let Some(arguments) = message.get("arguments") {
            call.push_str(&format!(" {arguments}"));
        }
        if let Some(decision) = field("decision") {
            call.push_str(&format!(" -> {decision}"));
        }
        if let Some(rule) = field("rule") {
            call.push_str(&format!(" (rule {rule})"));
        }
        lines.push(call);
    }
    let mut outcome = Vec::new();
    if let Some(decision) = text("decision") {
        outcome.push(format!("decision {decision}"));
    }
    if let Some(rule) = text("rule") {
        outcome.push(format!("rule {rule}"));
    }
    if let Some(reason) = text("reason") {
        outcome.push(format!("reason: {reason}"));
    }
    if let Some(why) = text("sessionRefused") {
        outcome.push(format!("session refused: {why}"));
    }
    for approval in [
        "approvalId",
        "approval",
        "approver",
        "approvedBy",
        "grantUse",
    ] {
        if let Some(v) = record.get(approval) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            outcome.push(format!("{approval} {v}"));
        }
    }
    if let Some(outcome_field) = text("outcome") {
        outcome.push(format!("outcome {outcome_field}"));
    }
    if let Some(status) = record.get("status") {
        outcome.push(format!("status {status}"));
    }
    if let Some(bytes) = record.get("bytes") {
        outcome.push(format!("{bytes} bytes"));
    }
    if let Some(ms) = record.get("durationMs") {
        outcome.push(format!("{ms} ms"));
    }
    if let Some(Value::Object(masked)) = record.get("maskedPans") {
        let counts: Vec<String> = masked.iter().map(|(b, n)| format!("{b} {n}")).collect();
        outcome.push(format!("masked PANs: {}", counts.join(", ")));
    }
    if !outcome.is_empty() {
        lines.push(format!("    {}", outcome.join("; ")));
    }
    for content in ["result", "content", "error"] {
        if let Some(v) = record.get(content) {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            lines.push(format!("    {content} (masked): {}", shorten(&text, 400)));
        }
    }
    lines
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}… ({} characters)", text.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_session_then_request_and_skips_control_plane_records() {
        assert_eq!(session_of(1, &json!({"session": "abc"})).unwrap(), "abc");
        assert_eq!(
            session_of(1, &json!({"requestId": "r-1"})).unwrap(),
            "request:r-1"
        );
        assert_eq!(
            session_of(7, &json!({"event": "auth.failed"})).unwrap(),
            "seq:7"
        );
        assert_eq!(session_of(7, &json!({"event": "controlPlane.start"})), None);
    }

    #[test]
    fn replay_names_who_on_whose_behalf_each_call_and_decision() {
        let record = json!({
            "event": "mcp.request", "time": "2025-01-31T12:00:00.000001Z", "sub": "alice",
            "identity": {"sub": "alice", "email": "alice@example.com", "groups": ["payments"],
                         "act": {"sub": "ci-bot"}, "actor": "octocat", "repository": "org/repo"},
            "messages": [{"kind": "request", "method": "tools/call", "target": "refund_payment",
                          "arguments": {"amount": 10, "card": "************1111"}}],
            "decision": "deny", "rule": "no-refunds", "reason": "refunds need approval",
            "outcome": "refused", "status": 403
        });
        let identity = identity_line(&record);
        assert!(
            identity.starts_with("alice (email alice@example.com"),
            "{identity}"
        );
        assert!(
            identity.contains("on behalf of ci-bot (act) / octocat (actor, repository org/repo)"),
            "{identity}"
        );
        let lines = replay_lines(12, &record).join("\n");
        for part in [
            "#12 2025-01-31T12:00:00.000001Z mcp.request by alice",
            "tools/call refund_payment",
            "************1111",
            "decision deny; rule no-refunds",
            "status 403",
        ] {
            assert!(lines.contains(part), "{part} in {lines}");
        }
    }
}
