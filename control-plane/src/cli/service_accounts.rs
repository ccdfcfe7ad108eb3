//! `tollgate service-accounts set|remove|list`: who answers for each shared service account.
//! The filter names that person on every record of the account's calls (when its token names
//! nobody itself, by `act.sub` or `actor`), and can refuse calls that name nobody. Operator
//! token in `TOLLGATE_TOKEN`; changing the mapping needs the revocation group, like `revoke`.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::operator_client::{self, ServerArgs};
use crate::pb;
use crate::pb::revocations_client::RevocationsClient;

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The service account's `sub`, as its tokens carry it.
    service_account: String,
    /// The accountable person's `sub`.
    #[arg(long)]
    owner: String,
    /// Why; recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Print the mapping as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The service account's `sub`.
    service_account: String,
    /// Why; recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Print the removed mapping as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON object per service account.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn to_json(owner: &pb::ServiceAccountOwner) -> Value {
    json!({
        "serviceAccount": owner.service_account,
        "owner": owner.owner,
        "reason": owner.reason,
        "setBy": owner.set_by,
        "setAt": owner.set_at,
    })
}

fn refused(status: tonic::Status) -> anyhow::Result<ExitCode> {
    operator_client::refused(status, "cannot change", "service account owners")
}

type Client = RevocationsClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        operator_client::Bearer,
    >,
>;

async fn connect(server: &ServerArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = operator_client::connect(&server.server, "security-admins").await?;
    Ok(RevocationsClient::with_interceptor(channel, bearer))
}

pub async fn set(args: &SetArgs) -> anyhow::Result<ExitCode> {
    operator_client::require_reason(&args.reason)?;
    let mut client = connect(&args.server).await?;
    let owner = match client
        .set_service_account_owner(pb::SetOwnerRequest {
            service_account: args.service_account.clone(),
            owner: args.owner.clone(),
            reason: args.reason.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        println!("{}", to_json(&owner));
    } else {
        println!(
            "{} is answered for by {} (set by {} at {})",
            owner.service_account, owner.owner, owner.set_by, owner.set_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(args: &RemoveArgs) -> anyhow::Result<ExitCode> {
    operator_client::require_reason(&args.reason)?;
    let mut client = connect(&args.server).await?;
    let owner = match client
        .remove_service_account_owner(pb::RemoveOwnerRequest {
            service_account: args.service_account.clone(),
            reason: args.reason.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        println!("{}", to_json(&owner));
    } else {
        println!(
            "{} no longer has an owner (was {})",
            owner.service_account, owner.owner
        );
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
        for owner in &list.owners {
            println!("{}", to_json(owner));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.owners.is_empty() {
        println!("no service account has an owner");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<32} {:<24} {:<19} REASON",
        "SERVICE ACCOUNT", "OWNER", "SET BY", "SET AT"
    );
    for o in &list.owners {
        println!(
            "{:<32} {:<32} {:<24} {:<19} {}",
            o.service_account,
            o.owner,
            o.set_by,
            o.set_at.get(..19).unwrap_or(&o.set_at),
            o.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
