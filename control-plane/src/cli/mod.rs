//! The `tollgate` command line: one file per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub(crate) mod approvals;
mod audit_archive;
mod audit_export;
mod audit_query;
pub(crate) mod audit_verify;
mod dev_init;
mod dev_token;
pub(crate) mod filter;
pub(crate) mod identities;
mod keys_cmd;
mod mask_cmd;
mod operator_client;
mod policy_check;
pub(crate) mod records;
mod revoke;
mod serve;
mod service_accounts;
pub(crate) mod sessions;
mod store_cmd;
mod witness;

/// Exit code of a command that could not do its work (bad input, unreachable store, I/O).
pub const EXIT_ERROR: u8 = 2;

/// Tollgate: the MCP gateway's control plane and operator command line.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
pub struct Cli {
    /// State directory: the audit store (`audit.sled`), checkpoint keys (`keys/`), the dev
    /// issuer (`dev/`) and the dev PKI (`tls/`).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_HOME",
        default_value = ".tollgate"
    )]
    home: PathBuf,

    /// CA certificate (PEM) the control plane's certificate must chain to, for commands that
    /// talk to it over https://. Default: <home>/tls/ca.pem (the dev PKI of `tollgate serve`).
    #[arg(long, global = true, env = "TOLLGATE_CA")]
    ca: Option<PathBuf>,

    #[command(flatten)]
    operator: records::OperatorArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (gRPC, and the operator console with --console) until SIGINT or
    /// SIGTERM.
    Serve(Box<serve::Args>),
    /// The development token issuer (a stand-in for a real OIDC provider).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Read, check and export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The gateway's records grouped by MCP session.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The keys that sign checkpoints.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a policy before deploying it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit store's database.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Mask card numbers in stdin with the gateway's own engine.
    Mask(mask_cmd::Args),
    /// Approval requests: list them, approve or deny (operator token in TOLLGATE_TOKEN).
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Revoke an identity: every gateway worker refuses it within seconds (operator token in
    /// TOLLGATE_TOKEN, member of the control plane's --revocation-group); prints the id.
    Revoke(revoke::RevokeArgs),
    /// The revocation list: show it, lift a revocation.
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// Who answers for each shared service account: set, remove, list (operator token in
    /// TOLLGATE_TOKEN; changes need the revocation group).
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(ServiceAccountsCommand),
    /// Who has used the gateway: first and last seen, calls, clients and workloads (an access
    /// review); `--inactive 90d` keeps those not seen for 90 days.
    Identities(identities::Args),
    /// A witness (C2SP tlog-witness): cosigns a log's checkpoints only when they extend the
    /// last one it cosigned. Its key and records are under <home>/witness/.
    #[command(subcommand)]
    Witness(WitnessCommand),
    /// Shell completions for tollgate, on stdout (e.g. `tollgate completions bash >
    /// /etc/bash_completion.d/tollgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Run a witness until SIGINT or SIGTERM.
    Serve(witness::ServeArgs),
    /// Print the witness's verifier key, for witness policies.
    Key(witness::KeyArgs),
}

#[derive(Debug, Subcommand)]
enum RevocationsCommand {
    /// The active revocations and the list's version.
    List(revoke::ListArgs),
    /// Lift a revocation: the identity is let through again.
    Lift(revoke::LiftArgs),
}

#[derive(Debug, Subcommand)]
enum ServiceAccountsCommand {
    /// Name the person answerable for a service account's calls (replaces any earlier owner).
    Set(service_accounts::SetArgs),
    /// Remove a service account's owner.
    Remove(service_accounts::RemoveArgs),
    /// Every service account and its owner.
    List(service_accounts::ListArgs),
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Approval requests, newest first, each with its (masked) arguments.
    List(approvals::ListArgs),
    /// The pending requests, then every new request and decision as it happens.
    Watch(approvals::WatchArgs),
    /// Approve a pending request: its grant lets the exact call through (once, or for the
    /// rule's time window).
    Approve(approvals::DecideArgs),
    /// Deny a pending request; the caller gets your reason.
    Deny(approvals::DecideArgs),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create or upgrade the PostgreSQL schema (idempotent; `serve` also creates a missing
    /// schema when its role may).
    Migrate(store_cmd::MigrateArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy (unknown fields, bad globs and regexes, unreachable rules) and show
    /// what it decides for sample calls; exit 0 only if valid and every sample is as expected.
    Check(policy_check::Args),
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
    /// Check every record's hash, the Merkle roots and every checkpoint signature (or an export
    /// bundle, offline); exit 0 if intact, 1 naming the first bad record, 2 if it could not
    /// check.
    Verify(audit_verify::Args),
    /// Print records matching filters.
    Query(audit_query::Args),
    /// Write a verifiable bundle (or JSON lines / CSV for a SIEM) of the records matching
    /// filters.
    Export(audit_export::Args),
    /// Seal the records older than a time into verifiable compressed segments and prune them
    /// from the hot store (security admins; `serve --archive-dir` also does it on a schedule).
    Archive(audit_archive::Args),
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// One line per session: when, who, how many calls and refusals, which tools.
    List(sessions::ListArgs),
    /// A session in order: who, when, each call with its arguments, each decision, each
    /// (masked) result.
    Replay(sessions::ReplayArgs),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print every verifier key the log has signed with (hand these to auditors).
    Show(keys_cmd::ShowArgs),
    /// Replace the signing key; checkpoints signed before stay verifiable with the old key.
    Rotate(keys_cmd::RotateArgs),
}

impl Cli {
    /// The async runtime: `serve` sizes its own (see `serve --worker-threads`).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Command::Serve(args) = &self.command {
            builder.worker_threads(args.worker_threads());
        }
        builder.enable_all().build()
    }

    pub async fn run(&self) -> anyhow::Result<ExitCode> {
        // The address had three names once; one still set would now be ignored without a word.
        for old in ["TOLLGATE_SERVER", "TOLLGATE_LISTEN"] {
            if std::env::var_os(old).is_some_and(|v| !v.is_empty()) {
                anyhow::bail!(
                    "{old} is no longer read: the control plane's address is TOLLGATE_CONTROL_PLANE (host:port, or an http:// or https:// URL) for `make run`, `tollgate serve` and every command; unset {old}"
                );
            }
        }
        let home = &self.home;
        crate::tls::trust_for_clients(
            self.ca
                .clone()
                .unwrap_or_else(|| crate::tls::DevPki::at(home).ca()),
        );
        let operator = &self.operator;
        match &self.command {
            Command::Serve(args) => serve::run(home, args).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    *shell,
                    &mut Cli::command(),
                    "tollgate",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Dev(DevCommand::Init(args)) => dev_init::run(home, args),
            Command::Policy(PolicyCommand::Check(args)) => policy_check::run(args),
            Command::Store(StoreCommand::Migrate(args)) => store_cmd::migrate(home, args).await,
            Command::Mask(args) => mask_cmd::run(args),
            Command::Approvals(ApprovalsCommand::List(args)) => approvals::list(args).await,
            Command::Approvals(ApprovalsCommand::Watch(args)) => approvals::watch(args).await,
            Command::Approvals(ApprovalsCommand::Approve(args)) => approvals::approve(args).await,
            Command::Approvals(ApprovalsCommand::Deny(args)) => approvals::deny(args).await,
            Command::Dev(DevCommand::Token(args)) => dev_token::run(home, args),
            Command::Revoke(args) => revoke::revoke(args).await,
            Command::Identities(args) => identities::run(home, operator, args).await,
            Command::Revocations(RevocationsCommand::List(args)) => revoke::list(args).await,
            Command::Revocations(RevocationsCommand::Lift(args)) => revoke::lift(args).await,
            Command::ServiceAccounts(ServiceAccountsCommand::Set(args)) => {
                service_accounts::set(args).await
            }
            Command::ServiceAccounts(ServiceAccountsCommand::Remove(args)) => {
                service_accounts::remove(args).await
            }
            Command::ServiceAccounts(ServiceAccountsCommand::List(args)) => {
                service_accounts::list(args).await
            }
            Command::Audit(AuditCommand::Verify(args)) => {
                audit_verify::run(home, operator, args).await
            }
            Command::Audit(AuditCommand::Query(args)) => {
                audit_query::run(home, operator, args).await
            }
            Command::Audit(AuditCommand::Export(args)) => {
                audit_export::run(home, operator, args).await
            }
            Command::Audit(AuditCommand::Archive(args)) => {
                audit_archive::run(home, operator, args).await
            }
            Command::Sessions(SessionsCommand::List(args)) => {
                sessions::list(home, operator, args).await
            }
            Command::Sessions(SessionsCommand::Replay(args)) => {
                sessions::replay(home, operator, args).await
            }
            Command::Keys(KeysCommand::Show(args)) => keys_cmd::show(home, args),
            Command::Keys(KeysCommand::Rotate(args)) => {
                keys_cmd::rotate(home, operator, args).await
            }
            Command::Witness(WitnessCommand::Serve(args)) => witness::serve(home, args).await,
            Command::Witness(WitnessCommand::Key(args)) => witness::key(home, args),
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
