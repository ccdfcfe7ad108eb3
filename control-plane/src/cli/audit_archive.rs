//! `tollgate audit archive`: seal the records older than a time into verifiable compressed
//! segments and prune them from the hot store (see `crate::archive`). Through the running
//! control plane (into its `--archive-dir`, security admins only), or, with none running, on
//! the store directly into `--dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::records::{OperatorArgs, Source, SourceArgs};
use crate::archive;
use crate::bundle::By;
use crate::clock;
use crate::pb;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["before", "older_than"])))]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Archive the records received before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    before: Option<String>,
    /// Archive the records older than this (e.g. 90days).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Where to write the segments when no control plane runs and the store is archived
    /// directly; a running control plane writes into its own --archive-dir.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Records per segment (default: the control plane's setting, 1048576 directly).
    #[arg(long, value_name = "N")]
    segment_records: Option<u64>,
    /// Print what was done as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let before = match (&args.before, args.older_than) {
        (Some(time), _) => clock::parse(time)
            .with_context(|| format!("--before {time:?} is not an RFC 3339 time"))?,
        (None, Some(age)) => {
            clock::now_micros().saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX))
        }
        (None, None) => anyhow::bail!("--before or --older-than is needed"),
    };
    let operator = operator.operator().with_purpose("archive", None);
    let source = Source::open(home, &args.source, &operator).await?;
    let outcome: Value = match source {
        Source::Server {
            mut client,
            address,
        } => {
            if args.dir.is_some() {
                anyhow::bail!(
                    "the control plane at {address} writes segments into its own --archive-dir; --dir is for a store read directly"
                );
            }
            let answer = client
                .archive(pb::ArchiveRequest {
                    before: clock::format(before),
                    segment_records: args.segment_records.unwrap_or(0),
                })
                .await
                .with_context(|| format!("archiving through {address}"))?
                .into_inner();
            serde_json::from_str(&answer.outcome_json)?
        }
        Source::Store(store) => {
            let Some(dir) = &args.dir else {
                anyhow::bail!("archiving the store directly needs --dir DIR for the segments");
            };
            let by = By {
                operator: &operator,
                via: "store",
                witnesses: None,
            };
            let outcome = archive::archive(
                &store,
                dir,
                before,
                args.segment_records.unwrap_or(archive::SEGMENT_RECORDS),
                &by,
            )
            .await;
            store.close().await?;
            outcome?.to_json()
        }
        Source::Reader(_) => {
            anyhow::bail!("the store cannot be opened for writing, so it cannot be archived")
        }
    };
    if args.json {
        println!("{outcome}");
    } else {
        let (from, to) = (outcome["fromSeq"].as_u64(), outcome["toSeq"].as_u64());
        if from == to {
            println!(
                "nothing to archive: no record before {} outside the archive",
                clock::format(before)
            );
        } else {
            println!(
                "archived records {}..{} into {} segment(s); pruned {}, kept {} below the cut (key rotations, state changes, checkpoint ends); recorded at seq {}",
                from.unwrap_or(0),
                to.unwrap_or(0),
                outcome["segments"].as_array().map_or(0, Vec::len),
                outcome["pruned"],
                outcome["kept"],
                outcome["record"]
            );
            for segment in outcome["segments"].as_array().into_iter().flatten() {
                println!(
                    "  {}  records {}..{}  {} bytes  sha256 {}",
                    segment["file"].as_str().unwrap_or(""),
                    segment["fromSeq"],
                    segment["toSeq"],
                    segment["bytes"],
                    segment["sha256"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
