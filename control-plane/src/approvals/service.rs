//! The `tollgate.v1.Approvals` gRPC service over the [`Ledger`].

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::VerifiedOperator;
use super::judge::Judge;
use super::ledger::{Ledger, LedgerError, LedgerOptions};
use super::webhook::{Webhook, WebhookFormat};
use super::Config;
use crate::pb;
use crate::pb::approvals_server::ApprovalsServer;
use crate::revocations::registry::Registry;
use crate::store::Store;

/// How often pending requests past their expiry are expired and recorded.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Changes buffered for one slow `Watch` reader.
const WATCH_BUFFER: usize = 256;

pub struct ApprovalsService {
    ledger: Arc<Ledger>,
}

/// The service as `serve` mounts it: the ledger in the audit store's database, judged by
/// `judge`, the expiry sweeper started. Operators are verified by the access layer in front.
pub fn build(
    config: &Config,
    store: Arc<Store>,
    judge: Option<Arc<Judge>>,
    owners: Arc<Registry>,
) -> Result<ApprovalsServer<ApprovalsService>, LedgerError> {
    // Checked again: `serve` may have filled it in from its own console address.
    let console_url = config
        .console_url
        .as_deref()
        .map(super::check_console_url)
        .transpose()
        .map_err(|e| LedgerError::Invalid(format!("--console-url: {e}")))?;
    if config.approval_webhook.is_some()
        && console_url.is_none()
        && config.approval_webhook_format != WebhookFormat::Json
    {
        eprintln!("tollgate: no --console-url: approval notifications carry no link, only the tollgate approvals command");
    }
    let webhook = config.approval_webhook.clone().map(|url| {
        Arc::new(Webhook {
            url,
            format: config.approval_webhook_format,
            console_url,
        })
    });
    let ledger = Ledger::open(
        store,
        LedgerOptions {
            ttl: config.approval_ttl,
            max_grant_ttl: config.max_grant_ttl,
            webhook,
            judge,
            owners,
            requests_per_minute: config.approval_requests_per_minute,
        },
    )?;
    ledger.spawn_sweeper(SWEEP_EVERY);
    Ok(ApprovalsServer::new(ApprovalsService { ledger }))
}

#[tonic::async_trait]
impl pb::approvals_server::Approvals for ApprovalsService {
    async fn request(
        &self,
        request: Request<pb::ApprovalRequest>,
    ) -> Result<Response<pb::ApprovalStatus>, Status> {
        Ok(Response::new(
            self.ledger.request(request.into_inner()).await?,
        ))
    }

    async fn r#await(
        &self,
        request: Request<pb::AwaitRequest>,
    ) -> Result<Response<pb::ApprovalStatus>, Status> {
        let pb::AwaitRequest {
            approval_id,
            wait_ms,
        } = request.into_inner();
        let wait = Duration::from_millis(wait_ms.into());
        Ok(Response::new(
            self.ledger.await_decision(&approval_id, wait).await?,
        ))
    }

    async fn get(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        VerifiedOperator::of(&request)?;
        let entry = self.ledger.get(&request.into_inner().approval_id).await?;
        Ok(Response::new(entry.to_pb()))
    }

    async fn list(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        VerifiedOperator::of(&request)?;
        let pb::ListApprovalsRequest {
            pending_only,
            limit,
        } = request.into_inner();
        let mut entries = self.ledger.list(pending_only).await?;
        if limit > 0 {
            // Newest first: the limit keeps the latest.
            entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: entries.iter().map(|e| e.to_pb()).collect(),
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::Approval, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let operator = VerifiedOperator::of(&request)?;
        let mut changes = self.ledger.subscribe();
        let registry = self.ledger.registry();
        // A watch is one call that lasts: the operator's token and revocation, checked when it
        // began, are checked again for every change it would send, and it ends with the token.
        let expires = operator.expires().map(|exp| {
            tokio::time::Instant::now()
                + Duration::from_secs(exp.saturating_sub(crate::clock::now_secs()))
        });
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let token_ends = async {
                match expires {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(token_ends);
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    () = &mut token_ends => {
                        let _ = tx.send(Err(Status::unauthenticated(
                            "operator token expired; sign in again and watch again",
                        ))).await;
                        return;
                    }
                };
                let item = match change {
                    Ok(entry) => match registry.revoking(&operator.identity()).await {
                        Ok(None) => Ok(entry.to_pb()),
                        Ok(Some(revocation)) => Err(Status::permission_denied(format!(
                            "{} is revoked ({}): a revoked operator may not call the control plane",
                            operator.sub, revocation.id
                        ))),
                        Err(e) => Err(Status::unavailable(format!(
                            "cannot read the revocation list: {e}"
                        ))),
                    },
                    Err(RecvError::Lagged(missed)) => Err(Status::data_loss(format!(
                        "watch fell behind and missed {missed} changes; list and watch again"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let operator = VerifiedOperator::of(&request)?;
        let pb::DecideRequest {
            approval_id,
            approve,
            reason,
        } = request.into_inner();
        let entry = self
            .ledger
            .decide(&operator, &approval_id, approve, &reason)
            .await?;
        Ok(Response::new(entry.to_pb()))
    }
}
