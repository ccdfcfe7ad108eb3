//! Where `tollgate audit`, `sessions` and `keys` commands read and act: the running control
//! plane over gRPC, or, when the operator says so (`--direct`, `--store`), a store directly (sled
//! allows one process at a time). A control plane that does not answer is an error: reading
//! another log in its place would answer a question nobody asked.
//!
//! Every read of audit data is recorded in the log first, with who asked: over gRPC the server
//! writes the record (from the operator metadata sent here); directly, this process does. Only
//! when the store cannot be opened for writing (it refuses because it is inconsistent, or the
//! signing key is not readable) are records read without that record, with a warning.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::chain::Hash;
use crate::chain::StoredRecord;
use crate::note::NoteVerifier;
use crate::operator::Operator;
use crate::pb;
use crate::pb::audit_client::AuditClient;
use crate::store::{ArchiveCut, Location, Options, Reader, Store, StoreError, StoredCheckpoint};

/// An error and its causes, on one line (a connection error's cause is often only below it).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// The control plane to ask: host:port (https), or an https:// or http:// URL. The same
    /// setting as `serve --listen` and `make run`. A control plane that does not answer is an
    /// error: the store is read directly only when --store or --direct says so.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        default_value = "127.0.0.1:50051"
    )]
    server: String,
    /// Read this store directly instead of asking a control plane: sled:PATH or a postgres://
    /// URL (sled: only while no control plane has it open).
    #[arg(long, env = "TOLLGATE_STORE")]
    store: Option<String>,
    /// Read the store under --home (<home>/audit.sled) directly instead of asking a control
    /// plane.
    #[arg(long)]
    direct: bool,
}

/// Who runs this command, for the records of what it reads.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// A name for yourself, recorded with every read of the audit log beside the operator the
    /// control plane verified from TOLLGATE_TOKEN (the name itself proves nothing; reading a
    /// store with --direct verifies no token, and its records say so).
    #[arg(long, global = true, env = "TOLLGATE_OPERATOR")]
    pub operator: Option<String>,
}

impl OperatorArgs {
    pub fn operator(&self) -> Operator {
        Operator::local(self.operator.clone(), token().as_deref())
    }
}

fn token() -> Option<String> {
    std::env::var("TOLLGATE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// Adds the operator to every call.
#[derive(Clone)]
pub struct Claims {
    operator: Operator,
    token: Option<String>,
}

impl tonic::service::Interceptor for Claims {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.operator
            .attach(request.metadata_mut(), self.token.as_deref());
        Ok(request)
    }
}

pub type Client = AuditClient<InterceptedService<Channel, Claims>>;

/// An open source of records.
pub enum Source {
    Server {
        client: Box<Client>,
        address: String,
    },
    /// The store, opened for writing: reads are recorded.
    Store(Arc<Store>),
    /// The store, read only: reads are not recorded.
    Reader(Reader),
}

impl Source {
    /// Connects to the server, or opens the store under `home`. `operator` (with its purpose
    /// and filter) is sent along or recorded here.
    pub async fn open(
        home: &Path,
        source: &SourceArgs,
        operator: &Operator,
    ) -> anyhow::Result<Self> {
        if source.direct || source.store.is_some() {
            return Self::open_store(home, source).await;
        }
        let address = crate::tls::control_plane_url(&source.server);
        let channel = crate::tls::endpoint(&address)?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| {
                // Never another log in its place: the operator says which store to read.
                anyhow::anyhow!(
                    "no control plane answers at {address} ({}). Set TOLLGATE_CONTROL_PLANE (or --server) to the address `tollgate serve` listens on, or read the store directly with --direct (the store under --home) or --store sled:PATH|postgres://…",
                    error_chain(&e)
                )
            })?;
        let token = token();
        if token.is_none() {
            eprintln!(
                "tollgate: no TOLLGATE_TOKEN: the control plane at {address} reads the audit log only to operators of group auditors or security-admins (for a dev setup: `tollgate dev token --sub you@example.com --groups auditors --aud tollgate-operators`)"
            );
        }
        Ok(Self::over(channel, &address, operator, token))
    }

    /// Reads through `channel`, open to a control plane (the CLI's connection, or the console's
    /// own, in process), as `operator` with the operator's `token`: the control plane checks and
    /// records the read.
    pub fn over(
        channel: Channel,
        address: &str,
        operator: &Operator,
        token: Option<String>,
    ) -> Self {
        let claims = Claims {
            operator: operator.clone(),
            token,
        };
        Self::Server {
            client: Box::new(
                AuditClient::with_interceptor(channel, claims).max_decoding_message_size(64 << 20),
            ),
            address: address.to_owned(),
        }
    }

    /// The store named by --store, or the one under `home` (--direct).
    async fn open_store(home: &Path, source: &SourceArgs) -> anyhow::Result<Self> {
        let location =
            Location::parse(source.store.as_deref(), home).map_err(anyhow::Error::msg)?;
        if let Location::Sled(path) = &location {
            if !path.exists() {
                // Reader::open names the missing store.
                Reader::open(&location).await?;
            }
        }
        let mut options = Options::new(home);
        options.create_key = false;
        match Store::open(&location, &options).await {
            Ok(store) => Ok(Self::Store(Arc::new(store))),
            Err(StoreError::Open { path, .. }) => anyhow::bail!(
                "the store {} is open in another process (a running `tollgate serve`? sled allows one process at a time): ask that control plane instead (omit --direct/--store; its address in TOLLGATE_CONTROL_PLANE or --server)",
                path.display()
            ),
            Err(error) => {
                eprintln!(
                    "tollgate: warning: cannot open the store for writing ({error}); reading it without recording this access"
                );
                Ok(Self::Reader(Reader::open(&location).await?))
            }
        }
    }

    /// Records a read by `operator` when reading the store directly (the server records its
    /// own reads).
    async fn record_read(&self, operator: &Operator) -> anyhow::Result<()> {
        if let Self::Store(store) = self {
            store
                .append_event(&operator.read_event("store", Map::new()))
                .await
                .context("recording this read in the audit log")?;
        }
        Ok(())
    }

    /// Calls `each` with every record in sequence order until it returns `false`; the read is
    /// recorded first.
    pub async fn for_each(
        &mut self,
        operator: &Operator,
        mut each: impl FnMut(StoredRecord) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.record_read(operator).await?;
        match self {
            Self::Server { client, address } => {
                let mut stream = client
                    .list_records(pb::ListRecordsRequest {
                        from_seq: 0,
                        limit: 0,
                    })
                    .await
                    .with_context(|| format!("listing records from {address}"))?
                    .into_inner();
                while let Some(record) = stream
                    .message()
                    .await
                    .with_context(|| format!("reading records from {address}"))?
                {
                    let record = StoredRecord {
                        seq: record.seq,
                        canonical_json: record.canonical_json,
                        chain_hash: record.chain_hash,
                    };
                    if !each(record)? {
                        break;
                    }
                }
            }
            Self::Store(store) => pipelined(store.records(0, 0), each)?,
            Self::Reader(reader) => pipelined(reader.reads().records(0, 0), each)?,
        }
        Ok(())
    }

    /// The log's origin.
    pub async fn origin(&mut self) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Self::Server { client, .. } => Some(
                client
                    .log_info(pb::LogInfoRequest {})
                    .await?
                    .into_inner()
                    .origin,
            ),
            Self::Store(store) => Some(store.origin().to_string()),
            Self::Reader(reader) => {
                let reader = reader.reads();
                tokio::task::block_in_place(|| reader.origin())?
            }
        })
    }

    /// Signs a checkpoint now, when the source can (so that verification covers everything).
    pub async fn fresh_checkpoint(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Server { client, .. } => {
                client.checkpoint(pb::CheckpointRequest {}).await?;
            }
            Self::Store(store) => {
                store.checkpoint().await?;
            }
            Self::Reader(_) => {}
        }
        Ok(())
    }

    /// Every stored checkpoint, oldest first, as stored.
    pub async fn checkpoints(&mut self) -> anyhow::Result<Vec<StoredCheckpoint>> {
        match self {
            Self::Server { client, .. } => {
                let mut stream = client
                    .list_checkpoints(pb::ListCheckpointsRequest {})
                    .await?
                    .into_inner();
                let mut out = Vec::new();
                while let Some(c) = stream.message().await? {
                    out.push(StoredCheckpoint {
                        number: c.number,
                        note: c.note,
                    });
                }
                Ok(out)
            }
            Self::Store(store) => Ok(tokio::task::block_in_place(|| {
                store.reader().checkpoints()
            })?),
            Self::Reader(reader) => {
                let reader = reader.reads();
                Ok(tokio::task::block_in_place(|| reader.checkpoints())?)
            }
        }
    }

    /// The state tables beside the chain, as they are now (see [`crate::state::snapshot`]);
    /// `None` from a read-only store opened without its state.
    pub async fn state(&mut self) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(match self {
            Self::Server { client, address } => {
                let answer = client
                    .state_tables(pb::StateTablesRequest {})
                    .await
                    .with_context(|| format!("reading the state tables from {address}"))?
                    .into_inner();
                Some(serde_json::from_slice(&answer.snapshot_json)?)
            }
            Self::Store(store) => Some(crate::state::snapshot(store).await?),
            Self::Reader(_) => None,
        })
    }

    /// Where the hot store begins, if records were archived and pruned.
    pub async fn archive_cut(&mut self) -> anyhow::Result<Option<ArchiveCut>> {
        Ok(match self {
            Self::Server { client, address } => {
                let info = log_info(client, address).await?;
                if info.archived_before == 0 {
                    None
                } else {
                    let chain_hash =
                        info.archive_chain_hash.as_slice().try_into().map_err(|_| {
                            anyhow::anyhow!(
                                "{address} sent a malformed chain hash for its archive cut"
                            )
                        })?;
                    Some(ArchiveCut {
                        cut: info.archived_before,
                        chain_hash,
                    })
                }
            }
            Self::Store(store) => tokio::task::block_in_place(|| store.reader().archive())?,
            Self::Reader(reader) => {
                let reader = reader.reads();
                tokio::task::block_in_place(|| reader.archive())?
            }
        })
    }

    /// The stored subtree hashes of the blocks below the archive cut, in order.
    pub async fn archived_nodes(&mut self) -> anyhow::Result<Vec<Hash>> {
        let mut nodes = Vec::new();
        match self {
            Self::Server { client, address } => {
                let mut stream = client
                    .archived_nodes(pb::ArchivedNodesRequest {})
                    .await
                    .with_context(|| format!("reading the archived subtrees from {address}"))?
                    .into_inner();
                while let Some(chunk) = stream.message().await? {
                    if chunk.hashes.len() % 32 != 0 {
                        anyhow::bail!("{address} sent a malformed list of subtree hashes");
                    }
                    nodes.extend(
                        chunk
                            .hashes
                            .chunks_exact(32)
                            .map(|h| <Hash>::try_from(h).unwrap_or_default()),
                    );
                }
            }
            Self::Store(store) => tokio::task::block_in_place(|| {
                crate::archive::archived_nodes(store.reader(), |h| {
                    nodes.push(*h);
                    true
                })
            })?,
            Self::Reader(reader) => {
                let reader = reader.reads();
                tokio::task::block_in_place(|| {
                    crate::archive::archived_nodes(reader, |h| {
                        nodes.push(*h);
                        true
                    })
                })?
            }
        }
        Ok(nodes)
    }

    /// The log's verifier keys, as the source knows them.
    pub async fn verifier_keys(&mut self, home: &Path) -> anyhow::Result<Vec<NoteVerifier>> {
        match self {
            Self::Server { client, address } => {
                let info = log_info(client, address).await?;
                info.verifier_keys
                    .iter()
                    .map(|k| {
                        NoteVerifier::parse(k)
                            .map_err(|e| anyhow::anyhow!("{address} sent a malformed key: {e}"))
                    })
                    .collect()
            }
            Self::Store(store) => Ok(store.verifiers()?),
            Self::Reader(_) => Ok(crate::keys::KeyDir::at(home).verifiers()?),
        }
    }

    /// Closes a store opened here (marking a clean shutdown).
    pub async fn close(self) -> anyhow::Result<()> {
        if let Self::Store(store) = self {
            store.close().await?;
        }
        Ok(())
    }
}

async fn log_info(client: &mut Client, address: &str) -> anyhow::Result<pb::LogInfoResponse> {
    Ok(client
        .log_info(pb::LogInfoRequest {})
        .await
        .with_context(|| format!("asking {address} about the log"))?
        .into_inner())
}

/// Records read from sled on another thread, in chunks, while `each` works on the previous
/// ones: reading and checking then use two cores, as they do over gRPC.
fn pipelined(
    records: impl Iterator<Item = Result<StoredRecord, crate::store::StoreError>> + Send + 'static,
    mut each: impl FnMut(StoredRecord) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    const CHUNK: usize = 1024;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<_>>(8);
    let reader = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for record in records {
            let failed = record.is_err();
            chunk.push(record);
            let full = chunk.len() == CHUNK || failed;
            if full
                && (tx
                    .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                    .is_err()
                    || failed)
            {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk);
        }
    });
    let result = (|| {
        for chunk in &rx {
            for record in chunk {
                if !each(record?)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    // Dropping the receiver stops a reader that is still going.
    drop(rx);
    let _ = reader.join();
    result
}

/// A record's JSON, for commands that read fields.
pub fn parse(stored: &StoredRecord) -> anyhow::Result<Value> {
    serde_json::from_slice(&stored.canonical_json).with_context(|| {
        format!(
            "record {} is not json; run `tollgate audit verify`",
            stored.seq
        )
    })
}

/// `{"seq":..,"chainHash":..,"record":{..}}`: one line of `--json` output.
pub fn json_line(seq: u64, chain_hash: &str, record: &Value) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct JsonLine<'a> {
        seq: u64,
        chain_hash: &'a str,
        record: &'a Value,
    }
    Ok(serde_json::to_string(&JsonLine {
        seq,
        chain_hash,
        record,
    })?)
}
