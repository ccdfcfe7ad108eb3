//! The `tollgate.v1.Revocations` gRPC service over the [`Registry`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::registry::Registry;
use crate::approvals::auth::VerifiedOperator;
use crate::pb;
use crate::pb::revocations_server::RevocationsServer;

pub struct RevocationsService {
    registry: Arc<Registry>,
}

/// The service as `serve` mounts it, over the registry the access layer also reads.
/// Operators are verified by the access layer in front.
pub fn build(registry: Arc<Registry>) -> RevocationsServer<RevocationsService> {
    RevocationsServer::new(RevocationsService { registry })
}

#[tonic::async_trait]
impl pb::revocations_server::Revocations for RevocationsService {
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::Revocation>, Status> {
        let operator = VerifiedOperator::of(&request)?;
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
        let operator = VerifiedOperator::of(&request)?;
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
        let operator = VerifiedOperator::of(&request)?;
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
        let operator = VerifiedOperator::of(&request)?;
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

    /// The gateway: the list. A verified operator: the list, and the read recorded. (A token
    /// that does not verify was refused and recorded by the access layer.)
    async fn list(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::RevocationList>, Status> {
        let operator = request.extensions().get::<VerifiedOperator>().cloned();
        let list = self.registry.list().await?;
        if let Some(operator) = operator {
            self.registry.listed(&operator, &list).await?;
        }
        Ok(Response::new(list))
    }
}
