//! The `tollgate.v1.Audit` gRPC service over the [`Store`], and the one mapping of store errors
//! to gRPC statuses.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use serde_json::{Map, Value};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_engine::mask::{MaskReport, Masker};
use tonic::{Request, Response, Status};

use crate::bundle::{self, Selection};
use crate::chain;
use crate::clock;
use crate::pb;
use crate::session_binding::{self, Refusal, SessionBindings};
use crate::store::{Store, StoreError};
use crate::witness::Witnesses;

/// Records buffered between the store iterator and a slow `ListRecords` reader.
const LIST_BUFFER: usize = 256;
/// Answers buffered for a slow `AppendStream` reader; a full buffer stops reading its records.
const APPEND_STREAM_BUFFER: usize = 1024;
/// Archived subtree hashes per `ArchivedNodes` message (32 bytes each).
const NODES_PER_CHUNK: usize = 4096;
/// Export bundles are streamed in pieces of this size.
const EXPORT_CHUNK: usize = 1 << 20;

/// Field the control plane adds to a record in which it had to mask something at `Append` (the
/// second line of defence: the filter masks first): `{"pans": N}`, plus `"other": M` when other
/// detectors (card verification codes, track data) matched. Clients may not set it.
pub const MASKED_AT_APPEND: &str = "maskedAtAppend";

/// Field the control plane adds to a record whose session check failed (see
/// [`crate::session_binding`]): why. Clients may not set it.
pub const SESSION_REFUSED: &str = "sessionRefused";

/// Fields only the control plane writes into a client's record.
const CONTROL_PLANE_FIELDS: [&str; 2] = [MASKED_AT_APPEND, SESSION_REFUSED];

#[derive(Clone)]
pub struct AuditService {
    store: Arc<Store>,
    /// The default masking engine, run over every appended record.
    masker: Masker,
    sessions: Arc<SessionBindings>,
    /// The witnesses that cosign an export's checkpoint, when a policy names them.
    witnesses: Option<Arc<Witnesses>>,
    /// Where `Archive` writes segments (`serve --archive-dir`); `None`: it is refused.
    archive: Option<Arc<crate::archive::Retention>>,
}

impl AuditService {
    pub fn new(
        store: Arc<Store>,
        sessions: Arc<SessionBindings>,
        witnesses: Option<Arc<Witnesses>>,
    ) -> Self {
        Self {
            store,
            masker: Masker::default(),
            sessions,
            witnesses,
            archive: None,
        }
    }

    /// Lets operators archive on demand into `retention`'s directory.
    pub fn with_archive(mut self, retention: Option<Arc<crate::archive::Retention>>) -> Self {
        self.archive = retention;
        self
    }

    /// One `Append`: masked, session-checked, chained, durable.
    async fn append_one(&self, request: pb::AppendRequest) -> Result<pb::AppendResponse, Status> {
        let pb::AppendRequest {
            record_json: sent,
            session,
        } = request;
        let (mut record, masked) = prepare_append(&sent, &self.masker)?;
        if masked {
            // That it happened is logged, never what was masked.
            eprintln!("tollgate: an appended record held card data: masked before it was chained");
        }
        let refusal = match &session {
            Some(check) => self.check_session(&mut record, check).await?,
            None => None,
        };
        let appended = self.store.append_object(&record).await?;
        Ok(pb::AppendResponse {
            seq: appended.seq,
            chain_hash: hex::encode(appended.chain_hash),
            session_refused: refusal.map(Refusal::as_str).unwrap_or_default().to_owned(),
        })
    }

    /// One record of an `AppendStream`, answered as `Append` would have answered it.
    async fn append_streamed(&self, message: pb::AppendStreamRequest) -> pb::AppendStreamResponse {
        let id = message.id;
        let Some(append) = message.append else {
            return pb::AppendStreamResponse {
                id,
                ack: None,
                code: tonic::Code::InvalidArgument as u32,
                message: "an AppendStreamRequest carries an AppendRequest".into(),
            };
        };
        match self.append_one(append).await {
            Ok(ack) => pb::AppendStreamResponse {
                id,
                ack: Some(ack),
                code: 0,
                message: String::new(),
            },
            Err(status) => pb::AppendStreamResponse {
                id,
                ack: None,
                code: status.code() as u32,
                message: status.message().to_owned(),
            },
        }
    }

    /// Checks the session step the record comes with; a refusal turns the record into the
    /// refusal it describes.
    async fn check_session(
        &self,
        object: &mut Map<String, Value>,
        check: &pb::SessionCheck,
    ) -> Result<Option<Refusal>, Status> {
        if check.session_id.is_empty() || check.subject.is_empty() {
            return Err(Status::invalid_argument(
                "a session check names the session and the subject",
            ));
        }
        // Binding changes are serialised; on one process the lock is a local mutex, so plain
        // uses take it too (a use must not write back a session its DELETE just removed).
        let lock = if !self.store.shared() || check.step() != pb::SessionStep::Use {
            Some(self.store.lock(session_binding::LOCK).await?)
        } else {
            None
        };
        let verdict = self.sessions.check(check, clock::now_micros()).await?;
        drop(lock);
        let Err(refusal) = verdict else {
            return Ok(None);
        };
        if check.step() == pb::SessionStep::Open {
            object.insert("outcome".into(), "refused".into());
        } else {
            object.insert("decision".into(), "deny".into());
            object.insert("outcome".into(), "refused".into());
            object.insert("status".into(), 404.into());
            object.insert("reason".into(), refusal.reason().into());
        }
        object.insert(SESSION_REFUSED.into(), refusal.as_str().into());
        Ok(Some(refusal))
    }
}

/// A client's record as it is to be chained: every card number in it masked (string values after
/// unescaping, keys, number tokens: [`Masker::mask_json`], the filter's engine; as text should the
/// engine ever read as not JSON what the parser accepts) and, when anything was masked, the fact
/// recorded in [`MASKED_AT_APPEND`]; `true` with it when anything was. Parsed once, here: the
/// store takes the object. Refusals never quote the record.
pub fn prepare_append(
    record_json: &[u8],
    masker: &Masker,
) -> Result<(Map<String, Value>, bool), Status> {
    let mut report = MaskReport::default();
    let masked = masker
        .mask_json(record_json, &mut report)
        .unwrap_or_else(|_| masker.mask_body(record_json, &mut report));
    let mut object = chain::parse_object(&masked).map_err(StoreError::from)?;
    if let Some(field) = CONTROL_PLANE_FIELDS
        .iter()
        .find(|field| object.contains_key(**field))
    {
        return Err(Status::invalid_argument(format!(
            "record must not set \"{field}\": the control plane adds it"
        )));
    }
    if masked == record_json {
        return Ok((object, false));
    }
    let mut marker = Map::new();
    marker.insert("pans".into(), report.total().into());
    if report.detector_total() > 0 {
        marker.insert("other".into(), report.detector_total().into());
    }
    object.insert(MASKED_AT_APPEND.into(), Value::Object(marker));
    Ok((object, true))
}

/// One of the control plane's own records that quotes what a caller sent (a refused call's path,
/// a refused approval request's tool), as the chain may hold it: masked as a client's `Append`.
pub fn masked_event(event: &Map<String, Value>) -> Option<Map<String, Value>> {
    // The control plane's own record is not refused for a number I-JSON cannot carry (a claim
    // relayed from a caller's token): it keeps the number's digits as a string.
    let mut event = Value::Object(event.clone());
    tollgate_engine::ijson::exact_numbers(&mut event);
    let json = serde_json::to_vec(&event).ok()?;
    prepare_append(&json, &Masker::default())
        .ok()
        .map(|(object, _)| object)
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            // Messages name the problem and never quote the record (see `chain::parse_object`).
            StoreError::Record(_) | StoreError::ReservedField | StoreError::ReservedEvent => {
                Status::invalid_argument(error.to_string())
            }
            StoreError::Range(_) => Status::out_of_range(error.to_string()),
            StoreError::Failed | StoreError::Closed | StoreError::Witnesses(_) => {
                Status::unavailable(error.to_string())
            }
            StoreError::Io(_) | StoreError::Postgres(_) | StoreError::WriteFailed(_) => {
                eprintln!("tollgate: {error}");
                Status::unavailable("audit store i/o failed")
            }
            StoreError::Unsupported(_) => Status::unimplemented(error.to_string()),
            StoreError::Corrupt(_) | StoreError::Inconsistent(_) => {
                Status::data_loss(error.to_string())
            }
            StoreError::NotFound(_)
            | StoreError::Open { .. }
            | StoreError::Format(_)
            | StoreError::Key(_)
            | StoreError::WrongKey { .. }
            | StoreError::Task(_)
            | StoreError::Write(_) => Status::internal(error.to_string()),
        }
    }
}

/// The operator this call claims to come from (see `operator`).
fn operator<T>(request: &Request<T>) -> crate::operator::Operator {
    crate::operator::of_request(request)
}

fn blocking_error(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal task failed: {error}"))
}

fn optional(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

fn time_bound(text: String, name: &str) -> Result<Option<u64>, Status> {
    optional(text)
        .map(|t| {
            clock::parse(&t)
                .ok_or_else(|| Status::invalid_argument(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.append_one(request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendStreamStream = ReceiverStream<Result<pb::AppendStreamResponse, Status>>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(APPEND_STREAM_BUFFER);
        let service = self.clone();
        // One task per stream: the records in flight wait together (so they share a group
        // commit) without a task and a wake-up each.
        tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    next = incoming.message(), if reading => match next {
                        Ok(Some(message)) => in_flight.push(service.append_streamed(message)),
                        // The sender is gone or broke the stream: answer what is in flight.
                        Ok(None) | Err(_) => reading = false,
                    },
                    Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                        if tx.send(Ok(answer)).await.is_err() {
                            break;
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ListRecordsStream = ReceiverStream<Result<pb::StoredRecord, Status>>;

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<Self::ListRecordsStream>, Status> {
        let operator = operator(&request);
        let pb::ListRecordsRequest { from_seq, limit } = request.into_inner();
        // The read is on record, durably, before any record leaves.
        let mut extra = Map::new();
        extra.insert("fromSeq".into(), from_seq.into());
        extra.insert("limit".into(), limit.into());
        self.store
            .append_event(&operator.read_event("grpc", extra))
            .await?;
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

    async fn log_info(
        &self,
        _request: Request<pb::LogInfoRequest>,
    ) -> Result<Response<pb::LogInfoResponse>, Status> {
        let size = if self.store.shared() {
            // Other replicas append too: the database knows the length, this process does not.
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.reader().len())
                .await
                .map_err(blocking_error)??
        } else {
            self.store.durable_len()
        };
        let store = self.store.clone();
        let (archive, latest) = tokio::task::spawn_blocking(move || {
            let reader = store.reader();
            Ok::<_, crate::store::StoreError>((reader.archive()?, reader.latest_checkpoint()?))
        })
        .await
        .map_err(blocking_error)??;
        Ok(Response::new(pb::LogInfoResponse {
            origin: self.store.origin().to_string(),
            verifier_keys: self.store.verifiers()?.iter().map(|k| k.encode()).collect(),
            size,
            archived_before: archive.map_or(0, |a| a.cut),
            archive_chain_hash: archive.map_or_else(Vec::new, |a| a.chain_hash.to_vec()),
            latest_checkpoint: latest.map(|c| pb::SignedCheckpoint {
                number: c.number,
                note: c.note,
            }),
        }))
    }

    async fn checkpoint(
        &self,
        _request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        let checkpoint = self.store.checkpoint().await?;
        Ok(Response::new(pb::SignedCheckpoint {
            number: checkpoint.number,
            note: checkpoint.note,
        }))
    }

    type ListCheckpointsStream = ReceiverStream<Result<pb::SignedCheckpoint, Status>>;

    async fn list_checkpoints(
        &self,
        _request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<Self::ListCheckpointsStream>, Status> {
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BUFFER);
        // Page by page on a blocking thread: a long log's checkpoints are never all in memory.
        tokio::task::spawn_blocking(move || {
            let reader = store.reader();
            let mut from = 0;
            loop {
                let page = match reader.checkpoints_from(from, crate::store::CHECKPOINT_PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                };
                let last_page = page.len() < crate::store::CHECKPOINT_PAGE;
                for checkpoint in page {
                    from = checkpoint.number + 1;
                    let item = pb::SignedCheckpoint {
                        number: checkpoint.number,
                        note: checkpoint.note,
                    };
                    if tx.blocking_send(Ok(item)).is_err() {
                        return;
                    }
                }
                if last_page {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let pb::InclusionProofRequest { seq, tree_size } = request.into_inner();
        let store = self.store.clone();
        let (hashes, leaf) = tokio::task::spawn_blocking(move || {
            let reader = store.reader();
            Ok::<_, StoreError>((reader.inclusion_proof(seq, tree_size)?, reader.leaf(seq)?))
        })
        .await
        .map_err(blocking_error)??;
        Ok(Response::new(pb::InclusionProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            leaf_hash: leaf.to_vec(),
        }))
    }

    async fn consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let pb::ConsistencyProofRequest { from_size, to_size } = request.into_inner();
        let store = self.store.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            store.reader().consistency_proof(from_size, to_size)
        })
        .await
        .map_err(blocking_error)??;
        Ok(Response::new(pb::ConsistencyProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type ExportStream = ReceiverStream<Result<pb::ExportChunk, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let operator = operator(&request);
        let pb::ExportRequest {
            from,
            to,
            sub,
            session,
        } = request.into_inner();
        let selection = Selection {
            from: time_bound(from, "from")?,
            to: time_bound(to, "to")?,
            sub: optional(sub),
            session: optional(session),
        };
        // Written by a blocking thread into the stream as it is read: never the whole bundle
        // in this process's memory. A failure after the first chunk ends the stream with it.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.store.clone();
        let witnesses = self.witnesses.clone();
        tokio::spawn(async move {
            let writer = ChunkWriter {
                tx: tx.clone(),
                buffer: Vec::with_capacity(EXPORT_CHUNK),
            };
            if let Err(e) = bundle::export(
                &store,
                selection,
                &operator,
                "grpc",
                witnesses.as_deref(),
                Box::new(writer),
            )
            .await
            {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let operator = operator(&request);
        let mut event = Map::new();
        event.insert("operator".into(), operator.to_json());
        event.insert("via".into(), "grpc".into());
        let (appended, key) = self.store.rotate_key(event).await?;
        Ok(Response::new(pb::RotateKeyResponse {
            verifier_key: key.encode(),
            seq: appended.seq,
        }))
    }

    async fn archive(
        &self,
        request: Request<pb::ArchiveRequest>,
    ) -> Result<Response<pb::ArchiveResponse>, Status> {
        let operator = operator(&request);
        let pb::ArchiveRequest {
            before,
            segment_records,
        } = request.into_inner();
        let Some(retention) = &self.archive else {
            return Err(Status::failed_precondition(
                "this control plane has no archive directory: start it with --archive-dir DIR",
            ));
        };
        let before = time_bound(before, "before")?
            .ok_or_else(|| Status::invalid_argument("before: a time (RFC 3339) is needed"))?;
        let by = bundle::By {
            operator: &operator,
            via: "grpc",
            witnesses: self.witnesses.as_deref(),
        };
        let segment_records = if segment_records == 0 {
            retention.segment_records
        } else {
            segment_records
        };
        let outcome =
            crate::archive::archive(&self.store, &retention.dir, before, segment_records, &by)
                .await?;
        Ok(Response::new(pb::ArchiveResponse {
            outcome_json: outcome.to_json().to_string(),
        }))
    }

    type ArchivedNodesStream = ReceiverStream<Result<pb::ArchivedNodesChunk, Status>>;

    async fn archived_nodes(
        &self,
        request: Request<pb::ArchivedNodesRequest>,
    ) -> Result<Response<Self::ArchivedNodesStream>, Status> {
        let operator = operator(&request);
        let mut extra = Map::new();
        extra.insert("archivedNodes".into(), true.into());
        self.store
            .append_event(&operator.read_event("grpc", extra))
            .await?;
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(32 * NODES_PER_CHUNK);
            let result = crate::archive::archived_nodes(store.reader(), |hash| {
                chunk.extend_from_slice(hash);
                if chunk.len() == 32 * NODES_PER_CHUNK {
                    let hashes =
                        std::mem::replace(&mut chunk, Vec::with_capacity(32 * NODES_PER_CHUNK));
                    return tx
                        .blocking_send(Ok(pb::ArchivedNodesChunk { hashes }))
                        .is_ok();
                }
                true
            });
            let last = match result {
                Ok(()) if chunk.is_empty() => return,
                Ok(()) => Ok(pb::ArchivedNodesChunk { hashes: chunk }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn state_tables(
        &self,
        request: Request<pb::StateTablesRequest>,
    ) -> Result<Response<pb::StateTablesResponse>, Status> {
        let operator = operator(&request);
        let mut extra = Map::new();
        extra.insert("tables".into(), "approvals, revocations, owners".into());
        self.store
            .append_event(&operator.read_event("grpc", extra))
            .await?;
        let snapshot = crate::state::snapshot(&self.store).await?;
        Ok(Response::new(pb::StateTablesResponse {
            snapshot_json: snapshot.to_string().into_bytes(),
        }))
    }
}

/// The bundle's bytes as `Export` chunks, sent from the blocking thread that writes them.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<pb::ExportChunk, Status>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(EXPORT_CHUNK));
        self.tx
            .blocking_send(Ok(pb::ExportChunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= EXPORT_CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(json: &str) -> Result<Value, Status> {
        prepare_append(json.as_bytes(), &Masker::default()).map(|(object, _)| Value::Object(object))
    }

    #[test]
    fn a_record_without_card_data_is_kept_as_sent() {
        let json = r#"{"event":"mcp.request","route":"/mcp","messages":[{"id":7,"method":"tools/call"}],"maskedPans":{"visa":1}}"#;
        let (prepared, masked) = prepare_append(json.as_bytes(), &Masker::default()).unwrap();
        assert!(!masked);
        assert_eq!(
            Value::Object(prepared),
            serde_json::from_str::<Value>(json).unwrap()
        );
    }

    #[test]
    fn card_data_anywhere_is_masked_and_the_record_says_so() {
        let record = prepare(
            r#"{"event":"mcp.request","route":"/mcp/4111111111111111","session":"5500 0000 0000 0004",
                "messages":[{"id":4111111111111111,"method":"m"}],"deep":{"a":["x 4111111111111111"]},
                "note":"cvv: 123"}"#,
        )
        .unwrap();
        let text = record.to_string();
        assert!(!text.contains("4111111111111111"), "{text}");
        assert!(!text.contains("5500 0000 0000 0004"), "{text}");
        assert!(!text.contains("123"), "{text}");
        assert_eq!(record["messages"][0]["id"], "************1111");
        assert_eq!(record["session"], "**** **** **** 0004");
        assert_eq!(record[MASKED_AT_APPEND]["pans"], 4);
        assert_eq!(record[MASKED_AT_APPEND]["other"], 1);
    }

    #[test]
    fn the_marker_is_the_control_plane_s_and_refusals_do_not_quote_the_record() {
        for json in [
            r#"["4111111111111111"]"#,
            r#"{"pan":"4111111111111111""#,
            r#"{"maskedAtAppend":{"pans":0},"pan":"4111111111111111"}"#,
            r#"{"\u006daskedAtAppend":1}"#,
        ] {
            let status = prepare(json).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{json}");
            assert!(!status.message().contains("4111"), "{}", status.message());
        }
        // The control plane's events are left for the store, which refuses them (the
        // integration tests check how).
        let own = br#"{"event":"controlPlane.stop"}"#;
        let (object, masked) = prepare_append(own, &Masker::default()).unwrap();
        assert!(!masked);
        assert_eq!(object["event"], "controlPlane.stop");
    }

    #[test]
    fn records_that_would_be_chained_as_something_else_are_refused() {
        for (json, message) in [
            (
                r#"{"event":"x","id":1,"id":2}"#,
                "record has a duplicate member name (line 1, column 24): refused rather than keep \
                 one of the values",
            ),
            (
                r#"{"event":"x","id":9007199254740993}"#,
                "record has an integer outside ±2^53 (line 1, column 34): I-JSON (RFC 7493) \
                 cannot carry it exactly; send it as a string",
            ),
        ] {
            let status = prepare(json).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{json}");
            assert_eq!(status.message(), message);
        }
        // A card number sent as a number is masked first, so it is kept (masked), not refused.
        let record = prepare(r#"{"event":"x","id":4111111111111111110}"#).unwrap();
        assert_eq!(record["id"], "***************1110");
    }

    #[test]
    fn the_control_plane_s_own_records_keep_inexact_numbers_as_text() {
        let mut event = Map::new();
        event.insert("event".into(), "approval.requested".into());
        event.insert(
            "identity".into(),
            serde_json::json!({"client_id": 12345678901234567890u64, "n": [1e300, 7]}),
        );
        let masked = masked_event(&event).unwrap();
        assert_eq!(
            masked["identity"],
            serde_json::json!({"client_id": "12345678901234567890", "n": ["1e+300", 7]})
        );
    }
}
