//! The `tollgate.v1.Approvals` gRPC service over the [`Ledger`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::auth::{OperatorAuth, OperatorInterceptor, VerifiedOperator};
use super::ledger::{Ledger, LedgerError};
use super::webhook::Webhook;
use super::Config;
use crate::pb;
use crate::pb::approvals_server::ApprovalsServer;
use crate::store::Store;

/// How often pending requests past their expiry are expired and recorded.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Changes buffered for one slow `Watch` reader.
const WATCH_BUFFER: usize = 256;

pub struct ApprovalsService {
    ledger: Arc<Ledger>,
}

pub type Server = InterceptedService<ApprovalsServer<ApprovalsService>, OperatorInterceptor>;

/// The service as `serve` mounts it: the ledger in the audit store's database, operator
/// sign-in in front, the expiry sweeper started.
pub async fn build(home: &Path, config: &Config, store: Arc<Store>) -> Result<Server, LedgerError> {
    let webhook = config
        .approval_webhook
        .clone()
        .map(|url| Arc::new(Webhook { url }));
    let ledger = Ledger::open(store, config.approval_ttl, config.max_grant_ttl, webhook)?;
    ledger.spawn_sweeper(SWEEP_EVERY);
    let auth = OperatorAuth::new(
        config.jwks_source(home),
        config.operator_issuer.clone(),
        config.operator_audience.clone(),
    )
    .await;
    Ok(ApprovalsServer::with_interceptor(
        ApprovalsService { ledger },
        OperatorInterceptor { auth },
    ))
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
        let pending_only = request.into_inner().pending_only;
        let entries = self.ledger.list(pending_only).await?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: entries.iter().map(|e| e.to_pb()).collect(),
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::Approval, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        VerifiedOperator::of(&request)?;
        let mut changes = self.ledger.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let item = match changes.recv().await {
                    Ok(entry) => Ok(entry.to_pb()),
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
        let operator = VerifiedOperator::of(&request);
        let pb::DecideRequest {
            approval_id,
            approve,
            reason,
        } = request.into_inner();
        let operator = match operator {
            Ok(operator) => operator,
            Err(status) => {
                let refusal = LedgerError::Unauthenticated(status.message().to_string());
                self.ledger
                    .refused(None, &approval_id, approve, &refusal)
                    .await?;
                return Err(status);
            }
        };
        let entry = self
            .ledger
            .decide(&operator, &approval_id, approve, &reason)
            .await?;
        Ok(Response::new(entry.to_pb()))
    }
}
