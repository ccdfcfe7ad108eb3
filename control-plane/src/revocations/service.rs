//! The `tollgate.v1.Revocations` gRPC service over the [`Registry`].

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::registry::{Action, Registry, RevocationError};
use super::Settings;
use crate::approvals::auth::{OperatorAuth, OperatorInterceptor, SignInFailed, VerifiedOperator};
use crate::pb;
use crate::pb::revocations_server::RevocationsServer;
use crate::store::Store;

pub struct RevocationsService {
    registry: Arc<Registry>,
}

pub type Server = InterceptedService<RevocationsServer<RevocationsService>, OperatorInterceptor>;

/// The service as `serve` mounts it: the list in the audit store's database, operator sign-in
/// (the approvals' issuer settings) in front.
pub async fn build(
    home: &Path,
    operators: &crate::approvals::Config,
    config: &Settings,
    store: Arc<Store>,
) -> Result<Server, RevocationError> {
    let registry = Registry::open(store, config.revocation_group.clone())?;
    let auth = OperatorAuth::new(
        operators.jwks_source(home),
        operators.operator_issuer.clone(),
        operators.operator_audience.clone(),
    )
    .await;
    Ok(RevocationsServer::with_interceptor(
        RevocationsService { registry },
        OperatorInterceptor { auth },
    ))
}

impl RevocationsService {
    /// The signed-in operator, or the refusal recorded and returned.
    async fn operator<T>(
        &self,
        request: &Request<T>,
        action: Action,
        what: serde_json::Value,
    ) -> Result<VerifiedOperator, Status> {
        match VerifiedOperator::of(request) {
            Ok(operator) => Ok(operator),
            Err(status) => {
                let refusal = RevocationError::Unauthenticated(status.message().to_string());
                self.registry.refused(None, action, what, &refusal).await?;
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl pb::revocations_server::Revocations for RevocationsService {
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::Revocation>, Status> {
        let what = {
            let r = request.get_ref();
            json!({"claim": r.claim, "value": r.value, "reason": r.reason})
        };
        let operator = self.operator(&request, Action::Revoke, what).await?;
        let pb::RevokeRequest {
            claim,
            value,
            reason,
        } = request.into_inner();
        let entry = self
            .registry
            .revoke(&operator, claim.trim(), &value, &reason)
            .await?;
        Ok(Response::new(entry.to_pb()))
    }

    async fn lift(
        &self,
        request: Request<pb::LiftRequest>,
    ) -> Result<Response<pb::Revocation>, Status> {
        let what = {
            let r = request.get_ref();
            json!({"revocationId": r.revocation_id, "reason": r.reason})
        };
        let operator = self.operator(&request, Action::Lift, what).await?;
        let pb::LiftRequest {
            revocation_id,
            reason,
        } = request.into_inner();
        let entry = self
            .registry
            .lift(&operator, revocation_id.trim(), &reason)
            .await?;
        Ok(Response::new(entry.to_pb()))
    }

    async fn set_service_account_owner(
        &self,
        request: Request<pb::SetOwnerRequest>,
    ) -> Result<Response<pb::ServiceAccountOwner>, Status> {
        let what = {
            let r = request.get_ref();
            json!({"serviceAccount": r.service_account, "owner": r.owner, "reason": r.reason})
        };
        let operator = self.operator(&request, Action::SetOwner, what).await?;
        let pb::SetOwnerRequest {
            service_account,
            owner,
            reason,
        } = request.into_inner();
        let owner = self
            .registry
            .set_owner(&operator, service_account.trim(), owner.trim(), &reason)
            .await?;
        Ok(Response::new(owner.to_pb()))
    }

    async fn remove_service_account_owner(
        &self,
        request: Request<pb::RemoveOwnerRequest>,
    ) -> Result<Response<pb::ServiceAccountOwner>, Status> {
        let what = {
            let r = request.get_ref();
            json!({"serviceAccount": r.service_account, "reason": r.reason})
        };
        let operator = self.operator(&request, Action::RemoveOwner, what).await?;
        let pb::RemoveOwnerRequest {
            service_account,
            reason,
        } = request.into_inner();
        let owner = self
            .registry
            .remove_owner(&operator, service_account.trim(), &reason)
            .await?;
        Ok(Response::new(owner.to_pb()))
    }

    /// No token (the filter): the list. A verified operator: the list, and the read recorded.
    /// A token that does not verify: refused and recorded.
    async fn list(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::RevocationList>, Status> {
        let operator = request.extensions().get::<VerifiedOperator>().cloned();
        if operator.is_none() && request.extensions().get::<SignInFailed>().is_some() {
            self.operator(&request, Action::List, json!({})).await?;
        }
        let list = self.registry.list().await?;
        if let Some(operator) = operator {
            self.registry.listed(&operator, &list).await?;
        }
        Ok(Response::new(list))
    }
}
