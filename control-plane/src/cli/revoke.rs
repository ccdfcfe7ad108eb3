//! `tollgate revoke` and `tollgate revocations list|lift`: the operator's side of the revocation
//! list, signed in with the operator token in `TOLLGATE_TOKEN` (revoking and lifting need
//! membership of the control plane's `--revocation-group`).

use std::process::ExitCode;

use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::operator_client::{self, Bearer, ServerArgs};
use crate::pb;
use crate::pb::revocations_client::RevocationsClient;

/// Exactly one of the identity selectors.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct What {
    /// Revoke a subject: tokens with this `sub`, and tokens acting for it (`act.sub`, `actor`).
    #[arg(long)]
    sub: Option<String>,
    /// Revoke one token by its `jti`.
    #[arg(long)]
    jti: Option<String>,
    /// Revoke an OAuth client (`client_id` claim).
    #[arg(long)]
    client_id: Option<String>,
    /// Revoke tokens whose claim NAME equals VALUE (e.g. repository=acme/payments-ci).
    #[arg(long, value_name = "NAME=VALUE")]
    claim: Option<String>,
}

impl What {
    fn pair(&self) -> anyhow::Result<(String, String)> {
        let pair = |claim: &str, value: &String| Ok((claim.to_string(), value.clone()));
        if let Some(sub) = &self.sub {
            return pair("sub", sub);
        }
        if let Some(jti) = &self.jti {
            return pair("jti", jti);
        }
        if let Some(client) = &self.client_id {
            return pair("client_id", client);
        }
        let claim = self.claim.as_deref().unwrap_or_default();
        match claim.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() && !value.is_empty() => {
                Ok((name.trim().to_string(), value.to_string()))
            }
            _ => anyhow::bail!("--claim must be NAME=VALUE, e.g. repository=acme/payments-ci"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    what: What,
    /// Why; recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Print the revocation as one JSON object instead of its id.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON object: {"version": N, "revocations": [...]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct LiftArgs {
    /// The revocation id (`rev_...`), as `revoke` printed it or `revocations list` shows it.
    id: String,
    /// Why; recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Print the lifted revocation as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

type Client = RevocationsClient<InterceptedService<Channel, Bearer>>;

async fn connect(server: &ServerArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = operator_client::connect(&server.server, "security-admins").await?;
    Ok(RevocationsClient::with_interceptor(channel, bearer))
}

fn refused(status: tonic::Status) -> anyhow::Result<ExitCode> {
    operator_client::refused(status, "cannot lift", "revocations")
}

fn to_json(revocation: &pb::Revocation) -> Value {
    json!({
        "revocationId": revocation.revocation_id,
        "claim": revocation.claim,
        "value": revocation.value,
        "reason": revocation.reason,
        "revokedBy": revocation.revoked_by,
        "revokedAt": revocation.revoked_at,
    })
}

pub async fn revoke(args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let (claim, value) = args.what.pair()?;
    operator_client::require_reason(&args.reason)?;
    let mut client = connect(&args.server).await?;
    let revocation = match client
        .revoke(pb::RevokeRequest {
            claim,
            value,
            reason: args.reason.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        println!("{}", to_json(&revocation));
    } else {
        eprintln!(
            "tollgate: revoked {}={} (by {} at {}); every gateway worker refuses it within seconds",
            revocation.claim, revocation.value, revocation.revoked_by, revocation.revoked_at
        );
        println!("{}", revocation.revocation_id);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.server).await?;
    let list = match client.list(pb::ListRevocationsRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        let revocations: Vec<Value> = list.revocations.iter().map(to_json).collect();
        println!(
            "{}",
            json!({"version": list.version, "revocations": revocations})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "version {}: {} active revocation{}",
        list.version,
        list.revocations.len(),
        if list.revocations.len() == 1 { "" } else { "s" }
    );
    if list.revocations.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<14} {:<32} {:<24} {:<19} REASON",
        "ID", "CLAIM", "VALUE", "REVOKED BY", "REVOKED AT"
    );
    for r in &list.revocations {
        println!(
            "{:<28} {:<14} {:<32} {:<24} {:<19} {}",
            r.revocation_id,
            r.claim,
            r.value,
            r.revoked_by,
            r.revoked_at.get(..19).unwrap_or(&r.revoked_at),
            r.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn lift(args: &LiftArgs) -> anyhow::Result<ExitCode> {
    operator_client::require_reason(&args.reason)?;
    let mut client = connect(&args.server).await?;
    let revocation = match client
        .lift(pb::LiftRequest {
            revocation_id: args.id.clone(),
            reason: args.reason.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        println!("{}", to_json(&revocation));
    } else {
        println!(
            "lifted {} ({}={}, revoked by {} for {:?})",
            revocation.revocation_id,
            revocation.claim,
            revocation.value,
            revocation.revoked_by,
            revocation.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
