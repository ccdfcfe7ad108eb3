//! `tollgate`: the control plane server and the operator's command line.

mod access;
mod approvals;
mod archive;
mod bundle;
mod cli;
mod clock;
mod console;
mod issuer;
mod keys;
mod metrics;
mod operator;
mod revocations;
mod service;
mod session_binding;
mod state;
mod store;
mod tls;
mod witness;

use tollgate_log::{canonical, chain, merkle, note, verify};
use tollgate_proto::pb;

use clap::Parser;

/// mimalloc, not glibc's malloc: records are many short-lived allocations of mixed sizes, and
/// glibc spent about a fifth of the gRPC workers' CPU consolidating and unlinking chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let fail = |error: anyhow::Error| {
        eprintln!("tollgate: {error:#}");
        std::process::ExitCode::from(cli::EXIT_ERROR)
    };
    let runtime = match cli.runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(error.into()),
    };
    runtime.block_on(cli.run()).unwrap_or_else(fail)
}
