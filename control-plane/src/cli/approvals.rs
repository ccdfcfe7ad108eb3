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
pub struct WatchArgs {
    /// One JSON object per line (as `list --json`) instead of text.
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

pub(crate) fn to_json(approval: &pb::Approval) -> Value {
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
        "actingFor": approval.acting_for,
        "session": some(&approval.session),
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
            limit: 0,
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
    for (i, approval) in approvals.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", describe(approval));
    }
    Ok(ExitCode::SUCCESS)
}

/// An approval as an approver reads it before deciding: who asks, for which call with which
/// (masked) arguments, under which rule, and how long is left.
fn describe(approval: &pb::Approval) -> String {
    let mut out = format!(
        "{}  {}  requested {}  expires {}\n",
        approval.approval_id,
        state_word(approval),
        short_time(&approval.requested_at),
        short_time(&approval.expires_at),
    );
    let mut line = |label: &str, value: &str| {
        out.push_str(&format!("  {label:<10} {value}\n"));
    };
    line("requester", &approval.requester);
    if !approval.acting_for.is_empty() {
        line("for", &approval.acting_for.join(", "));
    }
    line(
        "call",
        &format!(
            "{} {} on {}",
            approval.method, approval.target, approval.upstream
        ),
    );
    // The control plane stores arguments masked (card numbers as the filter masked them).
    line(
        "arguments",
        &String::from_utf8_lossy(&approval.masked_arguments_json),
    );
    let needed = approval.approvers_needed.max(1);
    line(
        "rule",
        &format!(
            "{} ({}): group {}, {} approver{}",
            approval.rule,
            approval.reason,
            approval.approver_group,
            needed,
            if needed == 1 { "" } else { "s" }
        ),
    );
    if !approval.approved_by.is_empty() {
        line("approved", &approval.approved_by.join(", "));
    }
    if !approval.decided_by.is_empty() {
        line(
            "decided",
            &format!(
                "by {} at {}: {}",
                approval.decided_by,
                short_time(&approval.decided_at),
                approval.decision_reason
            ),
        );
    }
    out
}

/// `tollgate approvals watch`: the pending requests, then every change as it happens, until
/// interrupted.
pub async fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.server).await?;
    // Subscribed before listing: a request made in between shows twice rather than never.
    let mut changes = match client.watch(pb::WatchApprovalsRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refused(status),
    };
    let pending = match client
        .list(pb::ListApprovalsRequest {
            pending_only: true,
            limit: 0,
        })
        .await
    {
        Ok(response) => response.into_inner().approvals,
        Err(status) => return refused(status),
    };
    let show = |approval: &pb::Approval| {
        if args.json {
            println!("{}", to_json(approval));
        } else {
            println!("{}", describe(approval));
        }
    };
    if !args.json {
        println!(
            "{} pending; watching for new requests and decisions (Ctrl-C stops)\n",
            pending.len()
        );
    }
    for approval in &pending {
        show(approval);
    }
    loop {
        match changes.message().await {
            Ok(Some(approval)) => show(&approval),
            Ok(None) => anyhow::bail!("the control plane ended the watch (it is stopping)"),
            Err(status) => return refused(status),
        }
    }
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
