//! `tollgate audit export`: a verifiable bundle for an assessor, or JSON lines / CSV for a SIEM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::filter::{messages, FilterArgs};
use super::records::{self, OperatorArgs, Source, SourceArgs};
use crate::bundle;
use crate::clock;
use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// JSON: the records, the signed checkpoint they end at, and earlier checkpoints; `tollgate audit verify --bundle` checks it
    /// offline. Selects on --from, --to, --sub and --session only.
    Bundle,
    /// One {"seq","chainHash","record"} object per line.
    Jsonl,
    /// A header line, then one line per record: the usual columns and the record as JSON.
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Where to write; `-` for standard output.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "bundle")]
    format: Format,
    #[command(flatten)]
    filter: FilterArgs,
}

/// How much of a streamed bundle's end is kept: its last entry is the export record.
const TAIL: usize = 64 * 1024;

/// The record count the export record at the end of a bundle states.
fn exported_records(tail: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind("{\"seq\":")?;
    let entry: serde_json::Value =
        serde_json::from_str(text[at..].trim_end().strip_suffix("]}")?).ok()?;
    entry["record"]["records"].as_u64()
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    if args.format == Format::Bundle && !args.filter.only_selection() {
        anyhow::bail!(
            "a bundle selects on --from, --to, --sub and --session only; use --format jsonl or csv for other filters"
        );
    }
    let operator = operator
        .operator()
        .with_purpose("export", Some(args.filter.to_json()));
    let mut source = Source::open(home, &args.source, &operator).await?;
    if let Some(cut) = source.archive_cut().await? {
        eprintln!(
            "tollgate: records before seq {} were archived: this export selects from the hot store only (the bundle's export record says so); the archive's segments are bundles of their own",
            cut.cut
        );
    }
    let mut out: Box<dyn Write + Send> = if args.out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let file = std::fs::File::create(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let mut count = 0u64;
    match args.format {
        Format::Bundle => {
            let selection = args.filter.selection();
            match &mut source {
                Source::Server { client, address } => {
                    let time = |t: Option<u64>| t.map(clock::format).unwrap_or_default();
                    let mut stream = client
                        .export(pb::ExportRequest {
                            from: time(selection.from),
                            to: time(selection.to),
                            sub: selection.sub.clone().unwrap_or_default(),
                            session: selection.session.clone().unwrap_or_default(),
                        })
                        .await
                        .with_context(|| format!("exporting from {address}"))?
                        .into_inner();
                    // Written as it arrives: a bundle of any size passes through in chunks.
                    let mut tail = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        out.write_all(&chunk.data)?;
                        tail.extend_from_slice(&chunk.data);
                        let keep = tail.len().saturating_sub(TAIL);
                        tail.drain(..keep);
                    }
                    count = exported_records(&tail)
                        .context("the control plane sent a bundle without its export record")?;
                }
                Source::Store(store) => {
                    let (records, writer) =
                        bundle::export(store, selection, &operator, "store", None, out).await?;
                    out = writer;
                    count = records;
                }
                Source::Reader(_) => anyhow::bail!(
                    "cannot export a bundle from a store that cannot be written: the export must be recorded and checkpointed"
                ),
            }
            out.write_all(b"\n")?;
        }
        Format::Jsonl | Format::Csv => {
            if args.format == Format::Csv {
                writeln!(out, "{}", CSV_COLUMNS.join(","))?;
            }
            source
                .for_each(&operator, |stored| {
                    let record = records::parse(&stored)?;
                    if !args.filter.matches(&record) {
                        return Ok(true);
                    }
                    count += 1;
                    if args.format == Format::Jsonl {
                        writeln!(
                            out,
                            "{}",
                            records::json_line(stored.seq, &stored.chain_hash, &record)?
                        )?;
                    } else {
                        writeln!(out, "{}", csv_row(stored.seq, &stored.chain_hash, &record))?;
                    }
                    Ok(true)
                })
                .await?;
        }
    }
    out.flush()?;
    drop(out);
    source.close().await?;
    if args.out.as_os_str() != "-" {
        eprintln!(
            "tollgate: exported {count} records to {}",
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

const CSV_COLUMNS: [&str; 14] = [
    "seq",
    "receivedAt",
    "time",
    "event",
    "sub",
    "session",
    "source",
    "decision",
    "outcome",
    "status",
    "methods",
    "targets",
    "chainHash",
    "record",
];

fn csv_row(seq: u64, chain_hash: &str, record: &Value) -> String {
    let text = |name: &str| match record.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let joined = |name: &str| {
        messages(record)
            .filter_map(|m| m.get(name).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cells = [
        seq.to_string(),
        text("receivedAt"),
        text("time"),
        text("event"),
        text("sub"),
        text("session"),
        text("source"),
        text("decision"),
        text("outcome"),
        text("status"),
        joined("method"),
        joined("target"),
        chain_hash.to_string(),
        record.to_string(),
    ];
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 4180 quoting; a leading formula character is defused for spreadsheet imports.
fn csv_cell(cell: &str) -> String {
    let cell = if cell.starts_with(['=', '+', '@']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_and_defuses() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=SUM(A1)"), "'=SUM(A1)");
        let row = csv_row(
            3,
            "ab",
            &json!({"event": "mcp.request", "sub": "a@b", "status": 403,
                    "messages": [{"method": "tools/call", "target": "refund_payment"}]}),
        );
        assert!(
            row.starts_with("3,,,mcp.request,a@b,,,,,403,tools/call,refund_payment,ab,\"{"),
            "{row}"
        );
    }
}
