//! `tollgate audit verify`: recompute the chain, the Merkle roots and every checkpoint
//! signature, and name the first bad record. Or, with `--bundle`, verify an export offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::records::{OperatorArgs, Source, SourceArgs};
use crate::bundle;
use crate::keys::{self, KeyDir};
use crate::note::NoteVerifier;
use crate::state;
use crate::verify::{self, LogCheck, Report};

/// Exit code when the log is not intact.
const EXIT_BROKEN: u8 = 1;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Verify this export bundle instead of the store: offline, no store or server needed.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Trusted verifier keys (signed-note `name+id+key` lines), repeatable. Default: the log's
    /// own list, <home>/keys/checkpoint.vkeys (for a bundle: the keys inside it).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// A checkpoint seen before (a signed note, or a bundle whose checkpoint is taken),
    /// repeatable: the log must still contain it (detects roll-back, truncation and forks).
    #[arg(long = "checkpoint", value_name = "FILE")]
    checkpoints: Vec<PathBuf>,
    /// After a successful check, write the latest verified checkpoint here (pass it back with
    /// --checkpoint next time).
    #[arg(long, value_name = "FILE")]
    save_checkpoint: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let external = read_checkpoints(&args.checkpoints)?;
    let trusted = read_keys(&args.keys)?;
    let report = match &args.bundle {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            bundle::verify(&bytes, trusted.as_deref(), &external)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            let keys = match trusted {
                Some(keys) => keys,
                None => KeyDir::at(home).verifiers().with_context(|| {
                    "no verifier keys to check checkpoints with; pass --key FILE"
                })?,
            };
            verify_log(home, operator, args, &keys, &external).await?
        }
    };
    let what = if args.bundle.is_some() {
        "audit bundle"
    } else {
        "audit chain"
    };
    if args.json {
        let mut out = report.to_json();
        if !report.intact() && args.bundle.is_none() {
            out["verifiedRecords"] = report.records.into();
        }
        println!("{out}");
    } else {
        for line in report.lines(what) {
            println!("{line}");
        }
    }
    if !report.intact() {
        return Ok(ExitCode::from(EXIT_BROKEN));
    }
    if let (Some(path), Some(latest)) = (&args.save_checkpoint, &report.latest) {
        std::fs::write(path, &latest.note)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_log(
    home: &Path,
    operator: &OperatorArgs,
    args: &Args,
    keys: &[NoteVerifier],
    external: &[(String, String)],
) -> anyhow::Result<Report> {
    let operator = operator.operator().with_purpose(
        "verify",
        Some(json!({"checkpoints": args.checkpoints.len()})),
    );
    let mut source = Source::open(home, &args.source, &operator).await?;
    // The state tables are read before and after the records: a change in flight agrees with
    // one of the two reads, a table edited without a record with neither. The first read comes
    // before the fresh checkpoint, which then covers its record too.
    let before = source.state().await?;
    // Checkpoints before records: every checkpoint then covers records that will be read.
    source.fresh_checkpoint().await?;
    let stored = source.checkpoints().await?;
    let Some(origin) = source.origin().await? else {
        anyhow::bail!("the store has never been opened by a control plane: it has no origin");
    };
    let stored: Vec<(String, String)> = stored
        .into_iter()
        .map(|c| (format!("checkpoint #{}", c.number), c.note))
        .collect();
    let mut findings = Vec::new();
    let trusted = verify::check_checkpoints(&origin, &stored, external, keys, &mut findings);
    let latest = trusted
        .iter()
        .rfind(|t| t.label.starts_with("checkpoint #"))
        .cloned();
    let mut check = LogCheck::new(&trusted);
    let mut replay = state::Replay::default();
    let started = std::time::Instant::now();
    source
        .for_each(&operator, |record| {
            if state::may_change_state(&record.canonical_json) {
                if let Ok(json) = serde_json::from_slice::<Value>(&record.canonical_json) {
                    replay.observe(record.seq, &json);
                }
            }
            Ok(check.check(&record))
        })
        .await?;
    let elapsed = started.elapsed();
    let after = source.state().await?;
    source.close().await?;
    let summary = check.finish();
    eprintln!(
        "tollgate: checked {} records in {:.3} s ({:.0} records/s)",
        summary.records,
        elapsed.as_secs_f64(),
        summary.records as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    findings.extend(summary.findings);
    let mut notes = Vec::new();
    match (before, after) {
        (Some(before), Some(after)) => {
            let read = |snapshot: &Value| {
                state::Facts::from_snapshot(snapshot).map_err(|e| anyhow::anyhow!("{e}"))
            };
            findings.extend(state::compare(&replay, &read(&before)?, &read(&after)?));
        }
        _ => notes.push(
            "the state tables were not checked against the chain (the store is open read-only)"
                .to_owned(),
        ),
    }
    Ok(Report {
        records: summary.records,
        head: Some(summary.head),
        root: Some(summary.root),
        checkpoints_matched: summary.checkpoints_matched,
        latest,
        uncovered: summary.uncovered,
        findings,
        notes,
    })
}

fn read_keys(paths: &[PathBuf]) -> anyhow::Result<Option<Vec<NoteVerifier>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut all = Vec::new();
    for path in paths {
        all.extend(keys::read_verifiers(path)?);
    }
    Ok(Some(all))
}

/// Reads `--checkpoint` files: a signed note, or a bundle (its checkpoint).
fn read_checkpoints(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let note = if text.trim_start().starts_with('{') {
                let bundle: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a bundle", path.display()))?;
                bundle["checkpoint"]
                    .as_str()
                    .with_context(|| format!("{} has no checkpoint", path.display()))?
                    .to_string()
            } else {
                text
            };
            Ok((format!("the checkpoint in {}", path.display()), note))
        })
        .collect()
}
