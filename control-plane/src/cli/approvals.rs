//! `tollgate approvals list|approve|deny`: an operator's view of approval requests and their
//! decisions, signed in with the operator token in `TOLLGATE_TOKEN`.

use std::process::ExitCode;

use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::operator_client::{self, Bearer, ServerArgs};
use crate::pb;
use crate::pb::approvals_client::ApprovalsClient;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only requests still waiting for a decision.
    #[arg(long)]
    pending: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The approval id (`apr_...`), as `list` or the caller's error shows it.
    id: String,
    /// Why; recorded in the audit log and, for a denial, told to the caller.
    #[arg(long)]
    reason: String,
    /// Print the decided approval as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

type Client = ApprovalsClient<InterceptedService<Channel, Bearer>>;

async fn connect(server: &ServerArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = operator_client::connect(&server.server, "<approver group>").await?;
    Ok(ApprovalsClient::with_interceptor(channel, bearer))
}

fn refused(status: tonic::Status) -> anyhow::Result<ExitCode> {
    operator_client::refused(status, "cannot decide", "approvals")
}

fn state_word(approval: &pb::Approval) -> &'static str {
    match pb::ApprovalState::try_from(approval.state) {
        Ok(pb::ApprovalState::Pending) => "pending",
        Ok(pb::ApprovalState::Granted) => "approved",
        Ok(pb::ApprovalState::Denied) => "denied",
        Ok(pb::ApprovalState::Expired) => "expired",
        _ => "unknown",
    }
}

fn to_json(approval: &pb::Approval) -> Value {
    let arguments = serde_json::from_slice(&approval.masked_arguments_json).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&approval.masked_arguments_json).into_owned())
    });
    let some = |text: &str| (!text.is_empty()).then(|| text.to_string());
    json!({
        "approvalId": approval.approval_id,
        "state": state_word(approval),
        "requester": approval.requester,
        "upstream": approval.upstream,
        "method": approval.method,
        "tool": approval.target,
        "argumentsHash": approval.arguments_hash,
        "arguments": arguments,
        "rule": approval.rule,
        "reason": approval.reason,
        "approverGroup": approval.approver_group,
        "requestedAt": approval.requested_at,
        "expiresAt": approval.expires_at,
        "decidedBy": some(&approval.decided_by),
        "decidedAt": some(&approval.decided_at),
        "decisionReason": some(&approval.decision_reason),
        "grantTtlSeconds": approval.grant_ttl_seconds,
        "uses": approval.uses,
        "approversNeeded": approval.approvers_needed.max(1),
        "approvedBy": approval.approved_by,
    })
}

/// `2025-01-31T12:00:00.000001Z` shown to the second.
fn short_time(time: &str) -> &str {
    time.get(..19).unwrap_or(time)
}

pub async fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.server).await?;
    let approvals = match client
        .list(pb::ListApprovalsRequest {
            pending_only: args.pending,
        })
        .await
    {
        Ok(response) => response.into_inner().approvals,
        Err(status) => return refused(status),
    };
    if args.json {
        for approval in &approvals {
            println!("{}", to_json(approval));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if approvals.is_empty() {
        println!(
            "no {}approval requests",
            if args.pending { "pending " } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<9} {:<24} {:<24} {:<19} {:<19} {:<22} REASON",
        "ID", "STATE", "REQUESTER", "TOOL", "REQUESTED", "EXPIRES", "DECIDED BY"
    );
    for approval in &approvals {
        let reason = if approval.decision_reason.is_empty() {
            format!("{} (rule {})", approval.reason, approval.rule)
        } else {
            approval.decision_reason.clone()
        };
        println!(
            "{:<28} {:<9} {:<24} {:<24} {:<19} {:<19} {:<22} {}",
            approval.approval_id,
            state_word(approval),
            approval.requester,
            approval.target,
            short_time(&approval.requested_at),
            short_time(&approval.expires_at),
            if approval.decided_by.is_empty() {
                "-"
            } else {
                &approval.decided_by
            },
            reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    decide(args, true).await
}

pub async fn deny(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    decide(args, false).await
}

async fn decide(args: &DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    operator_client::require_reason(&args.reason)?;
    let mut client = connect(&args.server).await?;
    let approval = match client
        .decide(pb::DecideRequest {
            approval_id: args.id.clone(),
            approve,
            reason: args.reason.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    if args.json {
        println!("{}", to_json(&approval));
    } else {
        println!(
            "{} {} {}'s call to {} ({}): {}",
            if approve { "approved" } else { "denied" },
            approval.approval_id,
            approval.requester,
            approval.target,
            approval.upstream,
            approval.decision_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
