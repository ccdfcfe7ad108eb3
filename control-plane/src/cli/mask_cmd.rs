//! `tollgate mask`: the gateway's own masking engine on stdin, for an operator scrubbing a log
//! file or checking the engine against their own samples. Never prints a raw card number.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use tollgate_engine::mask::{MaskConfig, MaskReport, Masker};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Treat the input as JSON (mask string values after unescaping; output stays valid JSON).
    #[arg(long)]
    json: bool,
    /// Print what was found (kind, byte offset, masked form) instead of the masked text.
    #[arg(long)]
    report: bool,
    /// Masking configuration as JSON (the filter's `mask` object), e.g. '{"display":"binLastFour"}'.
    #[arg(long, default_value = "{}")]
    config: String,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config: MaskConfig =
        serde_json::from_str(&args.config).context("invalid --config masking configuration")?;
    let masker = Masker::new(config).map_err(|e| anyhow::anyhow!("invalid --config: {e}"))?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let mut report = if args.report {
        MaskReport::detailed()
    } else {
        MaskReport::default()
    };
    let content_type = if args.json {
        "application/json"
    } else {
        "text/plain"
    };
    let masked = masker.mask_content(Some(content_type), &input, &mut report);
    let mut stdout = std::io::stdout().lock();
    if args.report {
        for finding in &report.findings {
            writeln!(
                stdout,
                "{}\t{}\t{}",
                finding.kind, finding.offset, finding.masked
            )?;
        }
        writeln!(
            stdout,
            "{} card numbers masked{}",
            report.total(),
            summary(&report)
        )?;
    } else {
        stdout.write_all(&masked)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(report: &MaskReport) -> String {
    let parts: Vec<String> = report
        .by_brand
        .iter()
        .map(|(brand, n)| format!("{brand} {n}"))
        .chain(
            report
                .by_detector
                .iter()
                .map(|(name, n)| format!("{name} {n}")),
        )
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
