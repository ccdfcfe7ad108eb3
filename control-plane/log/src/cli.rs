//! What `tollgate-verify` and `tollgate audit verify --bundle` share: reading what the
//! verifier trusts, checking a bundle file, and printing the verdict.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::bundle::{self, Options, Trust};
use crate::note::{self, NoteVerifier};
use crate::scan::Scanner;
use crate::verify::Report;

/// The verifier's flags for a bundle, as both commands take them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BundleArgs {
    /// The log's verifier keys (signed-note `name+id+key` lines), pinned from where the log
    /// publishes them, repeatable. Without a key or a witness policy a bundle is at best
    /// "unauthenticated" (exit 2): the keys inside evidence cannot vouch for it.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// A witness policy (C2SP format: `log`, `witness`, `group`, `quorum` lines): the log keys
    /// it names, and the cosignatures its quorum requires on the bundle's checkpoint.
    #[arg(long, value_name = "FILE")]
    pub witness_policy: Option<PathBuf>,
    /// A checkpoint seen before (a signed note, or a bundle whose checkpoint is taken),
    /// repeatable: the bundle must not be older and must agree with it (roll-backs, forks).
    #[arg(long = "checkpoint", value_name = "FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// Accept a bundle older than a --checkpoint (an earlier range, asked for on purpose).
    #[arg(long)]
    pub accept_older: bool,
    /// After a successful check, keep the newest verified checkpoint here (never replaced by
    /// an older one): pass it back with --checkpoint next time.
    #[arg(long, value_name = "FILE")]
    pub save_checkpoint: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Reads verifier keys from `paths`.
pub fn read_keys(paths: &[PathBuf]) -> Result<Vec<NoteVerifier>, String> {
    let mut keys = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let listed =
            note::parse_verifier_list(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if listed.is_empty() {
            return Err(format!("{} lists no key", path.display()));
        }
        keys.extend(listed);
    }
    Ok(keys)
}

/// Reads checkpoints seen before: signed notes, or bundles (their checkpoint, read from the
/// bundle's start without reading the rest).
pub fn read_saved(paths: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    paths
        .iter()
        .map(|path| {
            let mut file = std::fs::File::open(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut start = [0u8; 1];
            let n = file.read(&mut start).map_err(|e| e.to_string())?;
            let note = if n == 1 && start[0] == b'{' {
                let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
                bundle_checkpoint(file).ok_or_else(|| {
                    format!("{} is not a bundle with a checkpoint", path.display())
                })?
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            };
            Ok((format!("the checkpoint in {}", path.display()), note))
        })
        .collect()
}

/// The `checkpoint` member of a bundle, read from the members before it.
fn bundle_checkpoint(input: impl Read) -> Option<String> {
    let mut scanner = Scanner::new(input, 64 << 20);
    let mut buf = Vec::new();
    scanner.expect(b'{', "").ok()?;
    loop {
        scanner.value(&mut buf).ok()?;
        let name: String = serde_json::from_slice(&buf).ok()?;
        scanner.expect(b':', "").ok()?;
        if name == "records" {
            return None;
        }
        scanner.value(&mut buf).ok()?;
        if name == "checkpoint" {
            return serde_json::from_slice(&buf).ok();
        }
        scanner.one_of(b",", "").ok()?;
    }
}

/// Verifies the bundle at `path` (`-`: standard input) as `args` ask.
pub fn verify_bundle(path: &Path, args: &BundleArgs) -> Result<Report, String> {
    let keys = read_keys(&args.keys)?;
    let policy = match &args.witness_policy {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| {
                    crate::policy::Policy::parse(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))
                })?,
        ),
        None => None,
    };
    let options = Options {
        saved: read_saved(&args.checkpoints)?,
        accept_older: args.accept_older,
    };
    let check;
    let policy_keys: Vec<NoteVerifier>;
    let trust = match &policy {
        Some(policy) => {
            policy_keys = policy.logs().iter().map(|l| l.key.clone()).collect();
            check = |note: &str| {
                policy
                    .check(note)
                    .map(|satisfied| satisfied.witnesses)
                    .map_err(|e| e.to_string())
            };
            Trust::Policy {
                log_keys: if keys.is_empty() { &policy_keys } else { &keys },
                check: &check,
            }
        }
        None if keys.is_empty() => Trust::Nothing,
        None => Trust::Keys(&keys),
    };
    let result = if path.as_os_str() == "-" {
        bundle::verify(std::io::stdin().lock(), &trust, &options)
    } else {
        let file = std::fs::File::open(path)
            .and_then(bundle::decompressed)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        bundle::verify(file, &trust, &options)
    };
    let report = result.map_err(|e| format!("{}: {e}", path.display()))?;
    if report.exit_code() == 0 {
        if let (Some(save), Some(latest)) = (&args.save_checkpoint, &report.latest) {
            bundle::save_latest(save, &latest.note)
                .map_err(|e| format!("cannot write {}: {e}", save.display()))?;
        }
    }
    Ok(report)
}

/// Prints `report` as lines about `what`, or as JSON.
pub fn print(report: &Report, what: &str, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        for line in report.lines(what) {
            println!("{line}");
        }
    }
}
