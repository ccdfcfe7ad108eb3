//! `tollgate audit verify`: recompute the chain and name the first bad record.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::records::{self, SourceArgs};
use crate::chain::{Break, Verifier};

/// Exit code when the chain is not intact.
const EXIT_BROKEN: u8 = 1;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let mut verifier = Verifier::new();
    let mut broken: Option<Break> = None;
    records::for_each(home, &args.source, |record| match verifier.check(&record) {
        Ok(()) => Ok(true),
        Err(b) => {
            broken = Some(b);
            Ok(false)
        }
    })
    .await?;
    let head = hex::encode(verifier.head());
    match broken {
        None => {
            if args.json {
                println!(
                    "{}",
                    json!({"intact": true, "records": verifier.count(), "head": head})
                );
            } else {
                println!(
                    "audit chain intact: {} records, head {head}",
                    verifier.count()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            if args.json {
                println!(
                    "{}",
                    json!({"intact": false, "firstBadSeq": b.seq, "problem": b.problem.to_string(), "verifiedRecords": verifier.count(), "head": head})
                );
            } else {
                println!("audit chain broken at record {}: {}", b.seq, b.problem);
            }
            Ok(ExitCode::from(EXIT_BROKEN))
        }
    }
}
