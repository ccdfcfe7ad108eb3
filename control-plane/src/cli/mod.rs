//! The `tollgate` command line: one file per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit_query;
mod audit_verify;
mod dev_init;
mod dev_token;
mod records;
mod serve;

/// Exit code of a command that could not do its work (bad input, unreachable store, I/O).
pub const EXIT_ERROR: u8 = 2;

/// Tollgate: the MCP gateway's control plane and operator command line.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
pub struct Cli {
    /// State directory: the audit store (`audit.sled`) and the dev issuer (`dev/`).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_HOME",
        default_value = ".tollgate"
    )]
    home: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (gRPC) until SIGINT or SIGTERM.
    Serve(serve::Args),
    /// The development token issuer (a stand-in for a real OIDC provider).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Read and check the audit chain.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Create the dev issuer's key and JWKS under <home>/dev (kept if they exist).
    Init(dev_init::Args),
    /// Mint a token from the dev issuer; the token is the last line of stdout.
    Token(dev_token::Args),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every record's hash and sequence; exit 0 if intact, 1 naming the first bad record.
    Verify(audit_verify::Args),
    /// Print records matching filters.
    Query(audit_query::Args),
}

impl Cli {
    pub async fn run(&self) -> anyhow::Result<ExitCode> {
        let home = &self.home;
        match &self.command {
            Command::Serve(args) => serve::run(home, args).await,
            Command::Dev(DevCommand::Init(args)) => dev_init::run(home, args),
            Command::Dev(DevCommand::Token(args)) => dev_token::run(home, args),
            Command::Audit(AuditCommand::Verify(args)) => audit_verify::run(home, args).await,
            Command::Audit(AuditCommand::Query(args)) => audit_query::run(home, args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
