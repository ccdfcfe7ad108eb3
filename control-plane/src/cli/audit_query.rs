//! `tollgate audit query`: print the records that match filters.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::records::{self, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Only records whose `sub` is this subject.
    #[arg(long)]
    sub: Option<String>,
    /// Only records with a message whose `target` (tool, resource or prompt name) is this.
    #[arg(long)]
    tool: Option<String>,
    /// Only records with a message whose JSON-RPC `method` is this (e.g. tools/call).
    #[arg(long)]
    method: Option<String>,
    /// Only records whose `event` is this (e.g. mcp.request).
    #[arg(long)]
    event: Option<String>,
    /// One JSON object per line: {"seq":..,"chainHash":..,"record":{..}}.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        if self
            .sub
            .as_deref()
            .is_some_and(|sub| field("sub") != Some(sub))
        {
            return false;
        }
        if self
            .event
            .as_deref()
            .is_some_and(|event| field("event") != Some(event))
        {
            return false;
        }
        if self.tool.is_none() && self.method.is_none() {
            return true;
        }
        // --tool and --method together must hold for the same message.
        messages(record).any(|message| {
            let field = |name: &str| message.get(name).and_then(Value::as_str);
            self.tool
                .as_deref()
                .is_none_or(|tool| field("target") == Some(tool))
                && self
                    .method
                    .as_deref()
                    .is_none_or(|method| field("method") == Some(method))
        })
    }
}

fn messages(record: &Value) -> impl Iterator<Item = &Value> {
    record
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLine<'a> {
    seq: u64,
    chain_hash: &'a str,
    record: &'a Value,
}

pub async fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{}",
            table_row(["SEQ", "TIME", "EVENT", "SUB", "DECISION", "METHOD", "TARGET"])
        )?;
    }
    records::for_each(home, &args.source, |stored| {
        let record: Value = serde_json::from_slice(&stored.canonical_json).with_context(|| {
            format!(
                "record {} is not json; run `tollgate audit verify`",
                stored.seq
            )
        })?;
        if !args.matches(&record) {
            return Ok(true);
        }
        if args.json {
            let line = JsonLine {
                seq: stored.seq,
                chain_hash: &stored.chain_hash,
                record: &record,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(out, "{}", human_row(stored.seq, &record))?;
        }
        Ok(true)
    })
    .await?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn human_row(seq: u64, record: &Value) -> String {
    let text = |name: &str| {
        record
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    let joined = |name: &str| {
        let values: Vec<&str> = messages(record)
            .filter_map(|m| m.get(name).and_then(Value::as_str))
            .collect();
        if values.is_empty() {
            "-".to_string()
        } else {
            values.join(",")
        }
    };
    // The gateway's own event time when it sent one, else the control plane's receive time.
    let time = record
        .get("time")
        .and_then(Value::as_str)
        .map_or_else(|| text("receivedAt"), str::to_string);
    table_row([
        &seq.to_string(),
        &time,
        &text("event"),
        &text("sub"),
        &text("decision"),
        &joined("method"),
        &joined("target"),
    ])
}

fn table_row<S: AsRef<str>>(cells: [S; 7]) -> String {
    let [seq, time, event, sub, decision, method, target] = cells;
    format!(
        "{:>6}  {:<27}  {:<14}  {:<24}  {:<8}  {:<16}  {}",
        seq.as_ref(),
        time.as_ref(),
        event.as_ref(),
        sub.as_ref(),
        decision.as_ref(),
        method.as_ref(),
        target.as_ref()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        Cli::parse_from(std::iter::once("query").chain(argv.iter().copied())).args
    }

    fn record() -> Value {
        json!({
            "event": "mcp.request", "sub": "alice@example.com", "decision": "allow",
            "messages": [
                {"kind": "request", "id": 1, "method": "tools/call", "target": "get_customer"},
                {"kind": "request", "id": 2, "method": "tools/list"}
            ]
        })
    }

    #[test]
    fn filters_on_subject_event_method_and_tool() {
        let r = record();
        assert!(args(&[]).matches(&r));
        assert!(args(&["--sub", "alice@example.com"]).matches(&r));
        assert!(!args(&["--sub", "bob@example.com"]).matches(&r));
        assert!(args(&["--event", "mcp.request"]).matches(&r));
        assert!(!args(&["--event", "mcp.response"]).matches(&r));
        assert!(args(&["--tool", "get_customer"]).matches(&r));
        assert!(!args(&["--tool", "delete_merchant"]).matches(&r));
        assert!(args(&["--method", "tools/list"]).matches(&r));
        assert!(args(&["--method", "tools/call", "--tool", "get_customer"]).matches(&r));
        // Both must hold for one message: tools/list has no target get_customer.
        assert!(!args(&["--method", "tools/list", "--tool", "get_customer"]).matches(&r));
        assert!(!args(&["--tool", "x"]).matches(&json!({"event": "auth.failed"})));
    }

    #[test]
    fn human_row_shows_the_essentials() {
        let row = human_row(7, &record());
        for part in [
            "7",
            "mcp.request",
            "alice@example.com",
            "allow",
            "tools/call,tools/list",
            "get_customer",
        ] {
            assert!(row.contains(part), "{row}");
        }
    }
}
