//! `tollgate audit query`: print the records that match filters.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::filter::{messages, FilterArgs};
use super::records::{self, OperatorArgs, Source, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// One JSON object per line: {"seq":..,"chainHash":..,"record":{..}}.
    #[arg(long)]
    json: bool,
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let operator = operator
        .operator()
        .with_purpose("query", Some(args.filter.to_json()));
    let mut source = Source::open(home, &args.source, &operator).await?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{}",
            table_row(["SEQ", "TIME", "EVENT", "SUB", "DECISION", "METHOD", "TARGET"])
        )?;
    }
    source
        .for_each(&operator, |stored| {
            let record = records::parse(&stored)?;
            if !args.filter.matches(&record) {
                return Ok(true);
            }
            if args.json {
                writeln!(
                    out,
                    "{}",
                    records::json_line(stored.seq, &stored.chain_hash, &record)?
                )?;
            } else {
                writeln!(out, "{}", human_row(stored.seq, &record))?;
            }
            Ok(true)
        })
        .await?;
    out.flush()?;
    source.close().await?;
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
    use serde_json::json;

    #[test]
    fn human_row_shows_the_essentials() {
        let record = json!({
            "event": "mcp.request", "sub": "alice@example.com", "decision": "allow",
            "messages": [
                {"kind": "request", "id": 1, "method": "tools/call", "target": "get_customer"},
                {"kind": "request", "id": 2, "method": "tools/list"}
            ]
        });
        let row = human_row(7, &record);
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
