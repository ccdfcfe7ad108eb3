//! `tollgate audit verify`: recompute the chain, the Merkle roots and every checkpoint
//! signature, and name the first bad record. Or, with `--bundle`, verify an export offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use tollgate_log::cli::{self, BundleArgs};
use tollgate_log::key_history::{may_be_rotation, KeyHistory, Rotation, KEY_ROTATED};

use super::records::{OperatorArgs, Source, SourceArgs};
use crate::chain::{Hash, StoredRecord};
use crate::keys::KeyDir;
use crate::note::NoteVerifier;
use crate::operator::Operator;
use crate::state;
use crate::store::{ArchiveCut, STORED_LEVEL};
use crate::verify::{self, Finding, LogCheck, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Verify this export bundle instead of the store: offline, no store or server needed
    /// (what `tollgate-verify` does).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Also check the archive segments in DIR (`serve --archive-dir`, `audit archive`): each
    /// one as a bundle with the log's keys, one after another up to the hot store, and their
    /// records chained to it.
    #[arg(long, value_name = "DIR", conflicts_with = "bundle")]
    archive: Option<PathBuf>,
    /// For the live log, --key defaults to its own list, <home>/keys/checkpoint.vkeys; a
    /// bundle has no default: trust comes from outside it.
    #[command(flatten)]
    check: BundleArgs,
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.bundle {
        let report = cli::verify_bundle(path, &args.check).map_err(|e| anyhow::anyhow!(e))?;
        cli::print(&report, "audit bundle", args.check.json);
        return Ok(ExitCode::from(report.exit_code()));
    }
    if args.check.witness_policy.is_some() || args.check.accept_older {
        anyhow::bail!("--witness-policy and --accept-older apply to --bundle");
    }
    let external = cli::read_saved(&args.check.checkpoints).map_err(|e| anyhow::anyhow!(e))?;
    let keys = if args.check.keys.is_empty() {
        KeyDir::at(home)
            .verifiers()
            .with_context(|| "no verifier keys to check checkpoints with; pass --key FILE")?
    } else {
        cli::read_keys(&args.check.keys).map_err(|e| anyhow::anyhow!(e))?
    };
    let report = verify_log(home, operator, args, &keys, &external).await?;
    if args.check.json {
        let mut out = report.to_json();
        if !report.intact() {
            out["verifiedRecords"] = report.records.into();
        }
        println!("{out}");
    } else {
        cli::print(&report, "audit chain", false);
    }
    if !report.intact() {
        return Ok(ExitCode::from(report.exit_code()));
    }
    if let (Some(path), Some(latest)) = (&args.check.save_checkpoint, &report.latest) {
        tollgate_log::bundle::save_latest(path, &latest.note)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The part of the log below an archive cut, walked as the stored subtree hash of each block
/// of 16 records, except the blocks the hot store kept whole, whose records come from the
/// store in order.
struct ArchivedPrefix {
    cut: ArchiveCut,
    nodes: Vec<Hash>,
    next_block: u64,
}

impl ArchivedPrefix {
    /// Walks the subtrees up to `record`'s block, then `record`.
    fn retained(&mut self, check: &mut LogCheck, record: &StoredRecord) -> bool {
        let block = record.seq >> STORED_LEVEL;
        if !self.subtrees_until(check, block) {
            return false;
        }
        let go_on = check.retained(record);
        if (record.seq + 1).is_multiple_of(1 << STORED_LEVEL) {
            self.next_block = block + 1;
        }
        go_on
    }

    /// Walks the subtrees of the blocks before `block` not yet walked.
    fn subtrees_until(&mut self, check: &mut LogCheck, block: u64) -> bool {
        while self.next_block < block {
            let Some(hash) = usize::try_from(self.next_block)
                .ok()
                .and_then(|i| self.nodes.get(i))
            else {
                check.fail(Finding::at(
                    self.next_block << STORED_LEVEL,
                    format!(
                        "the store has no subtree hash for archived records {}..{}: its tree is incomplete",
                        self.next_block << STORED_LEVEL,
                        (self.next_block + 1) << STORED_LEVEL
                    ),
                ));
                return false;
            };
            if !check.archived_subtree(STORED_LEVEL, *hash) {
                return false;
            }
            self.next_block += 1;
        }
        true
    }

    /// Walks the rest of the prefix and resumes the chain at the cut.
    fn finish(&mut self, check: &mut LogCheck) -> bool {
        if !self.subtrees_until(check, self.cut.cut >> STORED_LEVEL) {
            return false;
        }
        check.resume(self.cut.chain_hash);
        true
    }
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
        Some(json!({"checkpoints": args.check.checkpoints.len()})),
    );
    let source = Source::open(home, &args.source, &operator).await?;
    verify_source(source, &operator, keys, external, args.archive.as_deref()).await
}

/// Verifies the whole log behind `source` as `operator`: every stored checkpoint (and the
/// `external` ones) against `keys`, the chain and the Merkle tree record by record (across an
/// archive cut, and through the segments in `archive` when given), the key rotations, and the
/// state tables against the chain. The read is recorded like any other.
pub async fn verify_source(
    mut source: Source,
    operator: &Operator,
    keys: &[NoteVerifier],
    external: &[(String, String)],
    archive: Option<&Path>,
) -> anyhow::Result<Report> {
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
    let cut = source.archive_cut().await?;
    let mut prefix = match cut {
        Some(cut) => Some(ArchivedPrefix {
            cut,
            nodes: source.archived_nodes().await?,
            next_block: 0,
        }),
        None => None,
    };
    let mut replay = state::Replay::default();
    let mut rotations = Vec::new();
    let started = std::time::Instant::now();
    source
        .for_each(operator, |record| {
            let rotation = may_be_rotation(&record.canonical_json);
            if rotation || state::may_change_state(&record.canonical_json) {
                if let Ok(json) = serde_json::from_slice::<Value>(&record.canonical_json) {
                    replay.observe(record.seq, &json);
                    if json.get("event").and_then(Value::as_str) == Some(KEY_ROTATED) {
                        rotations.extend(Rotation::from_record(record.seq, &json));
                    }
                }
            }
            if let Some(walk) = &mut prefix {
                if record.seq < walk.cut.cut {
                    return Ok(walk.retained(&mut check, &record));
                }
                if !walk.finish(&mut check) {
                    return Ok(false);
                }
                prefix = None;
            }
            Ok(check.check(&record))
        })
        .await?;
    if let Some(walk) = &mut prefix {
        walk.finish(&mut check);
    }
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
    // Each checkpoint signed by the key the chain's rotations put in effect at its size.
    let history = KeyHistory::new(rotations);
    for checkpoint in &trusted {
        if let Err(why) = history.check(
            checkpoint.checkpoint.size,
            &checkpoint.checkpoint.time,
            &checkpoint.signer,
        ) {
            findings.push(Finding::log(format!("{} {why}", checkpoint.label)));
        }
    }
    let mut notes = Vec::new();
    if let Some(cut) = cut {
        notes.push(format!(
            "records 0..{} are archived: checked here through the hot store's subtree hashes and the records it kept{}",
            cut.cut,
            if archive.is_some() {
                ", and record by record in the archive's segments"
            } else {
                " (pass --archive DIR to check the segments record by record)"
            }
        ));
    }
    if let Some(dir) = archive {
        let archived = crate::archive::check_archive(dir, keys, cut);
        eprintln!(
            "tollgate: checked {} archived records in {} segment(s) of {}",
            archived.records,
            archived.segments,
            dir.display()
        );
        findings.extend(archived.findings);
        notes.extend(archived.notes);
    }
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
        ..Report::default()
    })
}
