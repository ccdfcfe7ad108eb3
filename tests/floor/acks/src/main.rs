//! `floor-acks`: the far end of the floor filter's stream (tests/floor/filter). It serves
//! `tollgate.v1.Audit/AppendStream` in plaintext h2c and answers every message at once with an
//! acknowledgement (the sequence number counting up, a fixed chain hash): no store, no parsing
//! beyond decoding the message. Every other method is unimplemented.
//!
//! `--listen ADDR`; prints `floor-acks listening on ADDR` once it accepts connections, and
//! `floor-acks: N messages on M streams` on SIGUSR1 and when stopped (SIGTERM, Ctrl-C), so a
//! benchmark can check that every request sent what it should.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use futures_util::{Stream, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tollgate_proto::pb::{self, audit_server::Audit, audit_server::AuditServer};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// Any 32-byte hash, hex: the filter only checks that an acknowledgement carries one.
const CHAIN_HASH: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[derive(Parser)]
#[command(about = "Acknowledges every Audit/AppendStream message at once (benchmark floor)")]
struct Args {
    /// Address to serve h2c gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Counts {
    streams: AtomicU64,
    messages: AtomicU64,
}

impl Counts {
    fn print(&self) {
        println!(
            "floor-acks: {} messages on {} streams",
            self.messages.load(Ordering::Relaxed),
            self.streams.load(Ordering::Relaxed)
        );
    }
}

struct Acks {
    counts: Arc<Counts>,
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("floor-acks serves AppendStream only"))
}

#[tonic::async_trait]
impl Audit for Acks {
    type AppendStreamStream = Answers<pb::AppendStreamResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.counts.streams.fetch_add(1, Ordering::Relaxed);
        let counts = Arc::clone(&self.counts);
        // Each answer is made as its message is read, on the connection's own task: no channel
        // or task in between, so the floor is the transport's alone.
        let answers = request.into_inner().map(move |message| {
            let message = message?;
            let seq = counts.messages.fetch_add(1, Ordering::Relaxed);
            Ok(pb::AppendStreamResponse {
                id: message.id,
                ack: Some(pb::AppendResponse {
                    seq,
                    chain_hash: CHAIN_HASH.to_owned(),
                    session_refused: String::new(),
                }),
                code: 0,
                message: String::new(),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append(
        &self,
        _: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        unimplemented()
    }

    type ListRecordsStream = Answers<pb::StoredRecord>;

    async fn list_records(
        &self,
        _: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<Self::ListRecordsStream>, Status> {
        unimplemented()
    }

    async fn log_info(
        &self,
        _: Request<pb::LogInfoRequest>,
    ) -> Result<Response<pb::LogInfoResponse>, Status> {
        unimplemented()
    }

    async fn checkpoint(
        &self,
        _: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        unimplemented()
    }

    type ListCheckpointsStream = Answers<pb::SignedCheckpoint>;

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<Self::ListCheckpointsStream>, Status> {
        unimplemented()
    }

    async fn inclusion_proof(
        &self,
        _: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        unimplemented()
    }

    async fn consistency_proof(
        &self,
        _: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        unimplemented()
    }

    type ExportStream = Answers<pb::ExportChunk>;

    async fn export(
        &self,
        _: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        unimplemented()
    }

    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        unimplemented()
    }

    async fn state_tables(
        &self,
        _: Request<pb::StateTablesRequest>,
    ) -> Result<Response<pb::StateTablesResponse>, Status> {
        unimplemented()
    }

    async fn archive(
        &self,
        _: Request<pb::ArchiveRequest>,
    ) -> Result<Response<pb::ArchiveResponse>, Status> {
        unimplemented()
    }

    type ArchivedNodesStream = Answers<pb::ArchivedNodesChunk>;

    async fn archived_nodes(
        &self,
        _: Request<pb::ArchivedNodesRequest>,
    ) -> Result<Response<Self::ArchivedNodesStream>, Status> {
        unimplemented()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the few streams (one per Envoy worker) need no more, and the floor's CPU per
    // request is then not inflated by hand-offs between worker threads.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.listen))
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    // Small messages: Nagle's delay would hold acknowledgements back.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let counts = Arc::new(Counts::default());
    let mut report = signal(SignalKind::user_defined1())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let server = tonic::transport::Server::builder()
        .add_service(AuditServer::new(Acks {
            counts: Arc::clone(&counts),
        }))
        .serve_with_incoming(incoming);
    tokio::pin!(server);
    println!("floor-acks listening on {address}");
    loop {
        tokio::select! {
            served = &mut server => {
                served?;
                break;
            }
            _ = report.recv() => counts.print(),
            // No graceful shutdown: Envoy holds its streams open for good.
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    counts.print();
    Ok(())
}
