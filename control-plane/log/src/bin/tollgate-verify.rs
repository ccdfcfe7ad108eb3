//! `tollgate-verify BUNDLE --key FILE | --witness-policy FILE`: the assessor's verifier, built
//! from the log crate alone. Exit 0 intact, 1 broken (the first bad record named), 2
//! unauthenticated or not checkable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tollgate_log::cli::{self, BundleArgs};
use tollgate_log::verify::EXIT_UNAUTHENTICATED;

#[derive(Parser)]
#[command(
    name = "tollgate-verify",
    version,
    about = "Verify a Tollgate audit export bundle offline"
)]
struct Args {
    /// The bundle (`-`: standard input). Read once, in bounded memory.
    bundle: PathBuf,
    #[command(flatten)]
    check: BundleArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = std::time::Instant::now();
    match cli::verify_bundle(&args.bundle, &args.check) {
        Ok(report) => {
            cli::print(&report, "audit bundle", args.check.json);
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "tollgate-verify: {} records in {elapsed:.3} s",
                report.records
            );
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("tollgate-verify: {e}");
            ExitCode::from(EXIT_UNAUTHENTICATED)
        }
    }
}
