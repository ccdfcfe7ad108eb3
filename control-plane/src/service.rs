//! The `tollgate.v1.Audit` gRPC service over the [`Store`], and the one mapping of store errors
//! to gRPC statuses.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::store::{Store, StoreError};

/// Records buffered between the store iterator and a slow `ListRecords` reader.
const LIST_BUFFER: usize = 256;

pub struct AuditService {
    store: Arc<Store>,
}

impl AuditService {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            // Messages name the problem and never quote the record (see `chain::parse_object`).
            StoreError::Record(_) | StoreError::ReservedField => {
                Status::invalid_argument(error.to_string())
            }
            StoreError::Failed | StoreError::Closed => Status::unavailable(error.to_string()),
            StoreError::Io(_) => {
                eprintln!("tollgate: {error}");
                Status::unavailable("audit store i/o failed")
            }
            StoreError::Corrupt(_) => Status::data_loss(error.to_string()),
            StoreError::NotFound(_) | StoreError::Open { .. } | StoreError::Format(_) => {
                Status::internal(error.to_string())
            }
        }
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let appended = self.store.append(&request.into_inner().record_json).await?;
        Ok(Response::new(pb::AppendResponse {
            seq: appended.seq,
            chain_hash: hex::encode(appended.chain_hash),
        }))
    }

    type ListRecordsStream = ReceiverStream<Result<pb::StoredRecord, Status>>;

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<Self::ListRecordsStream>, Status> {
        let pb::ListRecordsRequest { from_seq, limit } = request.into_inner();
        let records = self.store.records(from_seq, limit);
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BUFFER);
        // sled reads block; iterate on a blocking thread and stop when the reader goes away.
        tokio::task::spawn_blocking(move || {
            for record in records {
                let item = record.map_err(Status::from).map(|r| pb::StoredRecord {
                    seq: r.seq,
                    canonical_json: r.canonical_json,
                    chain_hash: r.chain_hash,
                });
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
