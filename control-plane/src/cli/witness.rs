//! `tollgate witness serve` and `tollgate witness key`: a C2SP tlog-witness for Tollgate logs
//! (or any log signing C2SP checkpoints with Ed25519), run apart from the control plane, with
//! its own key, under `<home>/witness/`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::note::NoteVerifier;
use crate::witness::server::{self, Witness};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address for `POST /add-checkpoint`; port 0 picks a free port (the address taken is
    /// printed).
    #[arg(
        long,
        env = "TOLLGATE_WITNESS_LISTEN",
        default_value = "127.0.0.1:9480"
    )]
    listen: SocketAddr,
    /// The witness's key name, a schema-less URL naming it (e.g. witness.example.com/w1):
    /// needed when its key is created (first start), checked against the key afterwards.
    #[arg(long)]
    name: Option<String>,
    /// A log to witness: a verifier key as `tollgate keys show` prints it; its name is the
    /// log's origin. Repeatable; all keys given for one origin are trusted (a rotated key).
    #[arg(long = "log", value_name = "VKEY")]
    logs: Vec<String>,
    /// A file of log verifier keys, one a line (`#` comments allowed), such as a control
    /// plane's `keys/checkpoint.vkeys`. Repeatable.
    #[arg(long = "log-key", value_name = "FILE")]
    log_keys: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Create the witness key with this name if there is none yet (or check an existing key
    /// is named so).
    #[arg(long)]
    name: Option<String>,
}

pub async fn serve(home: &Path, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let mut logs = Vec::new();
    for text in &args.logs {
        logs.push(NoteVerifier::parse(text).with_context(|| format!("--log {text}"))?);
    }
    for path in &args.log_keys {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --log-key {}", path.display()))?;
        logs.extend(
            crate::note::parse_verifier_list(&text)
                .with_context(|| format!("--log-key {}", path.display()))?,
        );
    }
    let witness = Arc::new(Witness::open(home, args.name.as_deref(), logs)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "tollgate witness: key {}; witnessing {}",
        witness.verifier().encode(),
        witness.origins().join(", ")
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "tollgate witness listening on {}",
        listener.local_addr()?
    )?;
    stdout.flush()?;
    drop(stdout);
    server::serve(listener, witness, shutdown_signal()).await;
    eprintln!("tollgate witness: stopped");
    Ok(ExitCode::SUCCESS)
}

pub fn key(home: &Path, args: &KeyArgs) -> anyhow::Result<ExitCode> {
    let signer = server::key(home, args.name.as_deref())?;
    println!("{}", signer.verifier().encode());
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
