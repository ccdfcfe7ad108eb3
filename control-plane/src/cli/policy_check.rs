//! `tollgate policy check FILE`: validate a policy with the gateway's own engine and show what it
//! decides for sample calls, before it is deployed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tollgate_engine::policy;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy: a JSON file holding the filter's `policy` object, or a whole plugin
    /// configuration with a `policy` field.
    file: PathBuf,
    /// Sample calls to decide (a JSON array; see docs/policy.md). Defaults to FILE with its
    /// `.json` replaced by `.samples.json`, when that exists.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let policy_json = policy_object(&text);
    let samples_path = args.samples.clone().or_else(|| {
        let default = args.file.with_extension("samples.json");
        default.exists().then_some(default)
    });
    let samples = match &samples_path {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            policy::parse_samples(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let report = policy::check(&policy_json, &samples);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The policy itself: a plugin configuration's `policy` field, or the document as it is.
fn policy_object(text: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(config)) if config.contains_key("policy") => config
            .get("policy")
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default(),
        _ => text.to_vec(),
    }
}
