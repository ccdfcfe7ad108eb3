//! `floor-acks`: the far end of the floor filter's stream (tests/floor/filter). It serves
//! `tollgate.v1.Audit/AppendStream` in plaintext h2c and answers every message at once with an
//! acknowledgement (the sequence number counting up, a fixed chain hash): no store, no parsing
//! beyond decoding the message. Every other method is unimplemented.
//!
//! With `--durable FILE` it is the floor of a *durable* store instead: as many bytes as every
//! message's record holds are written to FILE and made stable with `fdatasync` before it is
//! acknowledged, the messages that wait together sharing one write and one sync (group commit,
//! on a thread of its own, as the control plane's writer does), and nothing else: no chain, no
//! index, no masking. Only the records' sizes reach the disk, never their content: the floor
//! filter's records quote the bodies, card numbers included, and it masks nothing. FILE is made
//! full of zeros and synced first, as the control plane's write-ahead log is, so a sync has no
//! file size to journal; it is written round and round.
//!
//! `--listen ADDR`; prints `floor-acks listening on ADDR` once it accepts connections, and
//! `floor-acks: N messages on M streams` on SIGUSR1 and when stopped (SIGTERM, Ctrl-C), so a
//! benchmark can check that every request sent what it should.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use clap::Parser;
use futures_util::{Stream, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
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
    /// Acknowledge a message only once as many bytes as its record holds are synced to this
    /// file (group commit).
    #[arg(long)]
    durable: Option<PathBuf>,
}

/// Size of the durable floor's file, written round and round.
const DURABLE_FILE_SIZE: u64 = 64 << 20;
/// Messages a stream has waiting for the durable writer at most.
const IN_FLIGHT_PER_STREAM: usize = 256;

/// The size of one record for the durable writer, and where to say it is stable.
type Job = (usize, oneshot::Sender<()>);

/// Stands in for every byte of a record on disk.
const FILLER: u8 = b'x';

/// The durable floor's writer: takes every record waiting as one group, writes the group (each
/// record as its length and that many filler bytes), syncs it, then answers the group.
fn durable_writer(file: File, jobs: mpsc::Receiver<Job>) -> std::io::Result<()> {
    let mut offset = 0u64;
    let mut group = Vec::with_capacity(64 << 10);
    let mut waiting = Vec::new();
    while let Ok(first) = jobs.recv() {
        waiting.push(first);
        while let Ok(next) = jobs.try_recv() {
            waiting.push(next);
        }
        group.clear();
        for (size, _) in &waiting {
            group.extend_from_slice(&(*size as u32).to_le_bytes());
            group.resize(group.len() + size, FILLER);
        }
        if offset + group.len() as u64 > DURABLE_FILE_SIZE {
            offset = 0;
        }
        file.write_all_at(&group, offset)?;
        file.sync_data()?;
        offset += group.len() as u64;
        for (_, stable) in waiting.drain(..) {
            let _ = stable.send(());
        }
    }
    Ok(())
}

/// `path` made full of zeros and synced, open for writing.
fn zeroed(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..DURABLE_FILE_SIZE / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(file)
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
    /// The durable writer's queue, with `--durable`.
    durable: Option<mpsc::Sender<Job>>,
}

fn ack(id: u64, seq: u64) -> pb::AppendStreamResponse {
    pb::AppendStreamResponse {
        id,
        ack: Some(pb::AppendResponse {
            seq,
            chain_hash: CHAIN_HASH.to_owned(),
            session_refused: String::new(),
        }),
        code: 0,
        message: String::new(),
    }
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
        let messages = request.into_inner();
        let Some(durable) = self.durable.clone() else {
            // Each answer is made as its message is read, on the connection's own task: no
            // channel or task in between, so the floor is the transport's alone.
            let answers = messages.map(move |message| {
                let message = message?;
                Ok(ack(
                    message.id,
                    counts.messages.fetch_add(1, Ordering::Relaxed),
                ))
            });
            return Ok(Response::new(Box::pin(answers)));
        };
        // The messages in flight on a stream wait for the writer together, so they can share a
        // sync; each is answered once its record is stable.
        let answers = messages
            .map(move |message| {
                let counts = Arc::clone(&counts);
                let durable = durable.clone();
                async move {
                    let message = message?;
                    let size = message.append.map_or(0, |a| a.record_json.len());
                    let (stable, wait) = oneshot::channel();
                    durable
                        .send((size, stable))
                        .map_err(|_| Status::unavailable("the durable writer stopped"))?;
                    wait.await
                        .map_err(|_| Status::unavailable("the durable writer failed"))?;
                    Ok(ack(
                        message.id,
                        counts.messages.fetch_add(1, Ordering::Relaxed),
                    ))
                }
            })
            .buffer_unordered(IN_FLIGHT_PER_STREAM);
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
        .block_on(serve(args.listen, args.durable.as_deref()))
}

async fn serve(listen: SocketAddr, durable: Option<&Path>) -> anyhow::Result<()> {
    let durable = match durable {
        Some(path) => {
            let file = zeroed(path)?;
            let (jobs, queue) = mpsc::channel();
            std::thread::Builder::new()
                .name("floor-durable".into())
                .spawn(move || {
                    if let Err(e) = durable_writer(file, queue) {
                        eprintln!("floor-acks: the durable writer failed: {e}");
                        std::process::exit(1);
                    }
                })?;
            Some(jobs)
        }
        None => None,
    };
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
            durable,
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
