//! The audit store behind one interface, on one of two backends: sled (embedded, one process,
//! the default) or PostgreSQL (several `tollgate serve` replicas on one database).
//!
//! # Contract (both backends)
//!
//! - [`Store::append`] MUST return `Ok` only after the record, its sequence number, its chain
//!   hash and its Merkle nodes are durable (sled: written and flushed; PostgreSQL: in a
//!   committed transaction). An `Err` means the record MUST be treated as not written: it is
//!   never acknowledged, although it may be found later if the failure struck after it became
//!   durable.
//! - Sequence numbers MUST be assigned densely from 0 in one total order, and MUST NOT be reused,
//!   also when several replicas append to one PostgreSQL database at once.
//! - A stored record MUST be the RFC 8785 form of the submitted JSON object plus `receivedAt`
//!   (RFC 3339 UTC, microseconds), which MUST NOT decrease from one record to the next.
//! - The chain hash MUST be `SHA-256(previous hash || stored bytes)`, the first record chained
//!   onto 32 zero bytes; the Merkle tree MUST be RFC 6962's over the stored bytes.
//! - `append` MUST reject a body that is not a JSON object, that sets `receivedAt`, or whose
//!   `event` starts with `controlPlane.`, storing nothing; errors MUST NOT quote the body.
//! - Concurrent appends MUST share durable writes (group commit).
//! - Checkpoints MUST only cover records written before them, and are signed at least every
//!   `checkpoint_every` records and every `checkpoint_interval`.
//! - Records MUST NOT be changed through this module, and MUST NOT be removed except by
//!   [`Store::prune_archived`], below a cut that sealed archive segments cover, after the
//!   chain recorded the archive (`controlPlane.auditArchived`).
//!
//! Both backends are drivers of one writer ([`sequencer`]): the group commit, the stamping, the
//! chain, the Merkle tree and the checkpoint cadence are written once; a driver says where the
//! log's end is read from and what makes a write durable. Each backend's module says how it
//! keeps this: [`sled_backend`], [`pg`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::chain::{self, CanonicalError, Hash, StoredRecord};
use crate::clock::{self, Micros, STAMP_LEN};
use crate::keys::{KeyDir, KeyError};
use crate::merkle::{self, Frontier, NodeSource};
use crate::note::NoteVerifier;

mod pack;
pub mod pg;
pub(crate) mod sequencer;
pub mod sled_backend;
pub(crate) mod wal;

/// The field the store adds to every record.
pub const RECEIVED_AT: &str = "receivedAt";
/// Prefix of the `event` of the control plane's own records, refused from clients.
pub const RESERVED_EVENT_PREFIX: &str = "controlPlane.";
/// Every `event` prefix a client (the gateway) may not append: the control plane's own
/// records, and the approval, revocation and owner records that `audit verify` replays into
/// the state tables. A forged `approval.decided` never enters the chain.
pub const CONTROL_PLANE_EVENTS: [&str; 4] = [
    RESERVED_EVENT_PREFIX,
    "approval.",
    "revocation.",
    "serviceAccount.",
];

/// Lowest Merkle level kept in the store: nodes below it (16 leaves) are rehashed from the
/// records when a proof needs them, which saves most of the node writes on the append path.
pub const STORED_LEVEL: u32 = 4;

/// Checkpoints read at a time.
pub const CHECKPOINT_PAGE: usize = 256;
/// Most records in one group commit; bounds the memory of one group and the latency it adds.
pub(crate) const MAX_GROUP: usize = 4096;
/// The timestamp a record holds until the writer stamps it.
const PLACEHOLDER: &[u8; STAMP_LEN] = b"0000-00-00T00:00:00.000000Z";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Record(#[from] CanonicalError),
    #[error("record must not set \"receivedAt\": the control plane adds it")]
    ReservedField,
    #[error("record events starting with \"controlPlane.\", \"approval.\", \"revocation.\" or \"serviceAccount.\" are written by the control plane only")]
    ReservedEvent,
    #[error("no audit store at {0}")]
    NotFound(PathBuf),
    #[error("cannot open audit store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("audit store has unsupported format {0:?}")]
    Format(String),
    #[error("stored record at key {0} is malformed")]
    Corrupt(String),
    #[error("audit store is inconsistent: {0}; run `tollgate audit verify`")]
    Inconsistent(String),
    #[error("audit store i/o failed: {0}")]
    Io(#[from] sled::Error),
    #[error("audit database: {0}")]
    Postgres(String),
    #[error("checkpoint signing key: {0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Range(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "this log's checkpoints are signed with {log}, this replica's key is {replica}: every \
         replica must have the same keys directory (docs/postgres.md)"
    )]
    WrongKey { log: String, replica: String },
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("writing the bundle: {0}")]
    Write(#[from] std::io::Error),
    #[error("the checkpoint is not cosigned: {0}")]
    Witnesses(String),
    #[error(
        "audit store refuses appends after an earlier write failure; restart the control plane"
    )]
    Failed,
    #[error("audit store is closed")]
    Closed,
    /// A write that failed without failing the store (a database transaction): nothing of it
    /// was acknowledged, and the next write tries again.
    #[error("audit store write failed ({0}); the next append tries again")]
    WriteFailed(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // The driver's messages name the problem, never the parameters (records); the cause
        // (a TLS or server error) is often only in the source chain.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        Self::Postgres(message)
    }
}

/// What an acknowledged append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub chain_hash: Hash,
}

/// The end of the chain: how many records there are and the hash of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    pub hash: Hash,
}

/// A stored checkpoint: its number and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub number: u64,
    pub note: String,
}

/// How a store signs checkpoints, and what a new store is called.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the signing key lives (generated on first open).
    pub keys: KeyDir,
    /// Origin line for a new store; an existing store keeps its own. `None`: a random one.
    pub origin: Option<String>,
    /// Sign a checkpoint at least every this many records.
    pub checkpoint_every: u64,
    /// ... and at least this often, even when idle.
    pub checkpoint_interval: Duration,
    /// Generate a signing key when there is none (`serve`); otherwise a missing key is an
    /// error (a command that only reads must not invent a key).
    pub create_key: bool,
    /// sled: the records sampled before a packing dictionary is trained (0: never train).
    pub dictionary_after: usize,
}

impl Options {
    /// Defaults: keys under `<home>/keys`, a checkpoint every 1000 records or 10 seconds.
    pub fn new(home: &Path) -> Self {
        Self {
            keys: KeyDir::at(home),
            origin: None,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            create_key: true,
            dictionary_after: 1000,
        }
    }
}

/// What opening found about the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub records: u64,
    /// The previous opener's run marker when it did not close the store (sled only: a
    /// PostgreSQL transaction is all or nothing, so there is nothing to recover).
    pub unclean: Option<Value>,
    /// Records whose Merkle nodes were missing and were rebuilt.
    pub merkle_rebuilt: u64,
}

/// Where the audit store is: `sled:PATH` or a `postgres://` / `postgresql://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sled(PathBuf),
    Postgres(String),
}

impl Location {
    /// `--store` as given; `None`: the sled store under `home`.
    pub fn parse(text: Option<&str>, home: &Path) -> Result<Self, String> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Self::Sled(home.join("audit.sled")));
        };
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_string()));
        }
        match text.strip_prefix("sled:") {
            Some(path) if !path.is_empty() => Ok(Self::Sled(PathBuf::from(path))),
            _ => Err(format!(
                "--store must be sled:PATH or a postgres:// URL, not {:?}",
                redact(text)
            )),
        }
    }

    /// For log lines: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::Sled(path) => path.display().to_string(),
            Self::Postgres(url) => redact(url),
        }
    }
}

/// A URL with any `user:password@` reduced to `user:***@`, and any `password=` parameter
/// dropped, for messages.
fn redact(url: &str) -> String {
    let (url, query) = url.split_once('?').unwrap_or((url, ""));
    let query: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("password="))
        .collect();
    let url = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => url.to_string(),
            },
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    if query.is_empty() {
        url
    } else {
        format!("{url}?{}", query.join("&"))
    }
}

/// Read access to a log's records, Merkle nodes and checkpoints, as stored (not verified): the
/// verifier, not the store, decides what is wrong with them. Blocking; call it off the async
/// workers (`spawn_blocking`) or from a thread of its own.
pub trait Reads: Send + Sync {
    /// Records from `from_seq` on, in sequence order; `limit` 0 means all.
    fn records(&self, from_seq: u64, limit: u64) -> RecordIter;
    /// Every stored checkpoint, oldest first.
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut all = Vec::new();
        loop {
            let from = all.last().map_or(0, |c: &StoredCheckpoint| c.number + 1);
            let page = self.checkpoints_from(from, CHECKPOINT_PAGE)?;
            let last_page = page.len() < CHECKPOINT_PAGE;
            all.extend(page);
            if last_page {
                return Ok(all);
            }
        }
    }
    /// The newest stored checkpoint, if any.
    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError>;
    /// At most `limit` stored checkpoints numbered `from` or more, oldest first: a page, so that
    /// serving a long log's checkpoints does not hold them all in memory.
    fn checkpoints_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredCheckpoint>, StoreError>;
    /// The log's origin (`None` for a store never opened for writing).
    fn origin(&self) -> Result<Option<String>, StoreError>;
    /// Number of records stored, not verified.
    fn len(&self) -> Result<u64, StoreError>;
    /// The stored hash of a perfect subtree at `level` >= [`STORED_LEVEL`], if stored.
    fn stored_node(&self, level: u32, index: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Where the hot store begins, if records were archived and pruned.
    fn archive(&self) -> Result<Option<ArchiveCut>, StoreError> {
        Ok(None)
    }

    /// `PATH(seq, D[0:size])` from the stored nodes and records.
    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        check_size(self.len()?, size)?;
        if seq >= size {
            return Err(StoreError::Range(format!(
                "record {seq} is not in a tree of {size} records"
            )));
        }
        merkle::inclusion_proof(&mut StoredNodes { reader: self }, seq, size)
    }

    /// `PROOF(old, D[0:new])` from the stored nodes and records.
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        check_size(self.len()?, new)?;
        if old > new {
            return Err(StoreError::Range(format!(
                "cannot prove size {old} consistent with the smaller size {new}"
            )));
        }
        merkle::consistency_proof(&mut StoredNodes { reader: self }, old, new)
    }

    /// `MTH(D[0:size])` from the stored nodes and records.
    fn root(&self, size: u64) -> Result<Hash, StoreError> {
        check_size(self.len()?, size)?;
        merkle::subtree_root(&mut StoredNodes { reader: self }, 0, size)
    }

    /// The leaf hash of record `seq`.
    fn leaf(&self, seq: u64) -> Result<Hash, StoreError> {
        StoredNodes { reader: self }.node(0, seq)
    }

    /// The hash of the perfect subtree `index` at `level` (leaves `[index << level, (index + 1)
    /// << level)`), stored or computed from the records.
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        StoredNodes { reader: self }.node(level, index)
    }
}

/// Where the hot store begins after archiving: records before `cut` were sealed into archive
/// segments and pruned, except the ones [`retained_blocks`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveCut {
    /// The first record not archived (a multiple of 2^[`STORED_LEVEL`]).
    pub cut: u64,
    /// The chain hash of record `cut - 1`, which record `cut` chains onto.
    pub chain_hash: Hash,
}

impl ArchiveCut {
    pub fn to_json(self) -> Value {
        serde_json::json!({"cut": self.cut, "chainHash": hex::encode(self.chain_hash)})
    }

    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let mut chain_hash = [0u8; 32];
        hex::decode_to_slice(value.get("chainHash")?.as_str()?, &mut chain_hash).ok()?;
        Some(Self {
            cut: value.get("cut")?.as_u64()?,
            chain_hash,
        })
    }
}

/// The blocks of 2^[`STORED_LEVEL`] records below `cut` that pruning keeps whole, from
/// `from` (the previous cut) on: each block holding a key rotation or a change of state (so the
/// state tables and the key history still replay from the hot store), and each block holding
/// the last record of a checkpoint (so every checkpoint's root and chain line still verify, and
/// a bundle can still split its skipped ranges at every checkpoint's size). Everything else
/// below the cut is committed by the stored Merkle nodes, which are never pruned.
pub fn retained_blocks(
    reader: &dyn Reads,
    from: u64,
    cut: u64,
) -> Result<std::collections::BTreeSet<u64>, StoreError> {
    let mut blocks = std::collections::BTreeSet::new();
    for record in reader.records(from, cut.saturating_sub(from)) {
        let record = record?;
        if record.seq >= cut {
            break;
        }
        let json = &record.canonical_json;
        if crate::state::may_change_state(json) || tollgate_log::key_history::may_be_rotation(json)
        {
            blocks.insert(record.seq >> STORED_LEVEL);
        }
    }
    for checkpoint in reader.checkpoints()? {
        if let Ok(parsed) = crate::note::Checkpoint::of_note(&checkpoint.note) {
            if parsed.size > from && parsed.size <= cut {
                blocks.insert((parsed.size - 1) >> STORED_LEVEL);
            }
        }
    }
    Ok(blocks)
}

/// Records as a [`Reads`] returns them.
pub type RecordIter = Box<dyn Iterator<Item = Result<StoredRecord, StoreError>> + Send + 'static>;

fn check_size(len: u64, size: u64) -> Result<(), StoreError> {
    if size > len {
        return Err(StoreError::Range(format!(
            "tree size {size} is beyond the {len} records stored"
        )));
    }
    Ok(())
}

/// Perfect subtree hashes: stored nodes at [`STORED_LEVEL`] and above, rehashed records below.
struct StoredNodes<'a, R: Reads + ?Sized> {
    reader: &'a R,
}

impl<R: Reads + ?Sized> NodeSource for StoredNodes<'_, R> {
    type Error = StoreError;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level >= STORED_LEVEL {
            let value = self.reader.stored_node(level, index)?.ok_or_else(|| {
                StoreError::Inconsistent(format!("merkle node {level}/{index} is missing"))
            })?;
            return value.as_slice().try_into().map_err(|_| {
                StoreError::Inconsistent(format!("merkle node {level}/{index} is malformed"))
            });
        }
        let start = index << level;
        let count = 1u64 << level;
        let mut frontier = Frontier::new();
        let mut seq = start;
        for record in self.reader.records(start, count) {
            let record = record?;
            if record.seq != seq {
                return Err(StoreError::Inconsistent(format!("record {seq} is missing")));
            }
            frontier.push(merkle::leaf_hash(&record.canonical_json), |_, _, _| {});
            seq += 1;
        }
        if seq != start + count {
            return Err(StoreError::Inconsistent(format!("record {seq} is missing")));
        }
        Ok(frontier.root())
    }
}

/// A store opened only to read (`tollgate audit verify` with no server running and no key).
pub enum Reader {
    Sled(sled_backend::Reader),
    Postgres(pg::Reader),
}

impl Reader {
    /// Opens an existing store; it must not be created by reading it.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Sled(path) => {
                let path = path.clone();
                let reader = tokio::task::spawn_blocking(move || sled_backend::Reader::open(&path))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Self::Sled(reader))
            }
            Location::Postgres(url) => Ok(Self::Postgres(pg::Reader::open(url).await?)),
        }
    }

    pub fn reads(&self) -> &dyn Reads {
        match self {
            Self::Sled(reader) => reader,
            Self::Postgres(reader) => reader,
        }
    }
}

/// The audit store with its writer, on either backend. See the module documentation for the
/// contract.
pub enum Store {
    Sled(sled_backend::Store),
    Postgres(pg::Store),
}

impl Store {
    /// Opens (creating if needed) the store at `location` and starts its writer.
    pub async fn open(location: &Location, options: &Options) -> Result<Self, StoreError> {
        match location {
            Location::Sled(path) => {
                let (path, options) = (path.clone(), options.clone());
                let store =
                    tokio::task::spawn_blocking(move || sled_backend::Store::open(&path, &options))
                        .await
                        .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Self::Sled(store))
            }
            Location::Postgres(url) => Ok(Self::Postgres(pg::Store::open(url, options).await?)),
        }
    }

    /// Whether other processes (replicas) may change this store's state, so that waiting for a
    /// change must also look at the store, not only at this process's own notifications.
    pub fn shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    pub fn opened(&self) -> &Opened {
        match self {
            Self::Sled(s) => s.opened(),
            Self::Postgres(s) => s.opened(),
        }
    }

    pub fn origin(&self) -> &str {
        match self {
            Self::Sled(s) => s.origin(),
            Self::Postgres(s) => s.origin(),
        }
    }

    /// Every public key this log has signed with (rotated ones included).
    pub fn verifiers(&self) -> Result<Vec<NoteVerifier>, StoreError> {
        match self {
            Self::Sled(s) => s.verifiers(),
            Self::Postgres(s) => s.verifiers(),
        }
    }

    /// Reads, blocking (see [`Reads`]).
    pub fn reader(&self) -> &dyn Reads {
        match self {
            Self::Sled(s) => s.reader(),
            Self::Postgres(s) => s.reader(),
        }
    }

    /// [`Store::append_object`] of a record's JSON text.
    #[cfg(test)]
    pub async fn append(&self, record_json: &[u8]) -> Result<Appended, StoreError> {
        self.append_object(&chain::parse_object(record_json)?).await
    }

    /// Appends one record from a client, parsed by `chain::parse_object` (which refuses what
    /// cannot be chained); see the contract for what `Ok` promises and what is refused.
    pub async fn append_object(&self, object: &Map<String, Value>) -> Result<Appended, StoreError> {
        if object
            .get("event")
            .and_then(Value::as_str)
            .is_some_and(|e| CONTROL_PLANE_EVENTS.iter().any(|p| e.starts_with(p)))
        {
            return Err(StoreError::ReservedEvent);
        }
        self.append_event(object).await
    }

    /// Appends one of the control plane's own records (its `event` should start with
    /// `controlPlane.`).
    pub async fn append_event(&self, event: &Map<String, Value>) -> Result<Appended, StoreError> {
        if event.contains_key(RECEIVED_AT) {
            return Err(StoreError::ReservedField);
        }
        // Canonicalised here, on the caller's task, so the writer only stamps, hashes and writes.
        let record = Prepared::new(event)?;
        match self {
            Self::Sled(s) => s.append_prepared(record).await,
            Self::Postgres(s) => s.append_prepared(record).await,
        }
    }

    /// Appends one of the control plane's own records and signs a checkpoint whose last leaf
    /// it is, with nothing written between: an export is tied to exactly that checkpoint.
    pub async fn append_with_checkpoint(
        &self,
        event: &Map<String, Value>,
    ) -> Result<(Appended, StoredCheckpoint), StoreError> {
        if event.contains_key(RECEIVED_AT) {
            return Err(StoreError::ReservedField);
        }
        let record = Prepared::new(event)?;
        match self {
            Self::Sled(s) => s.append_with_checkpoint(record).await,
            Self::Postgres(s) => s.append_with_checkpoint(record).await,
        }
    }

    /// Signs a checkpoint over every record written so far and returns it once it is durable.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, StoreError> {
        match self {
            Self::Sled(s) => s.checkpoint().await,
            Self::Postgres(s) => s.checkpoint().await,
        }
    }

    /// Replaces the signing key (sled only; see `docs/postgres.md` for replicas).
    pub async fn rotate_key(
        &self,
        event: Map<String, Value>,
    ) -> Result<(Appended, NoteVerifier), StoreError> {
        match self {
            Self::Sled(s) => s.rotate_key(event).await,
            Self::Postgres(_) => Err(StoreError::Unsupported(
                "key rotation is not supported on the postgres store yet: every replica must \
                 sign with the same key (docs/postgres.md)"
                    .into(),
            )),
        }
    }

    /// Removes the records below `cut.cut` that are not in `keep` (blocks of
    /// 2^[`STORED_LEVEL`] records), once archive segments hold them and the chain recorded
    /// it; Merkle nodes and checkpoints stay. Blocking. Resumed at the next open if
    /// interrupted.
    pub fn prune_archived(
        &self,
        cut: ArchiveCut,
        keep: &std::collections::BTreeSet<u64>,
    ) -> Result<u64, StoreError> {
        match self {
            Self::Sled(s) => s.prune_archived(cut, keep),
            Self::Postgres(_) => Err(StoreError::Unsupported(
                "archiving is not supported on the postgres store yet: keep its records in the \
                 database and export bundles for the auditor (docs/postgres.md)"
                    .into(),
            )),
        }
    }

    /// Records from `from_seq` on, in sequence order; `limit` 0 means all. Blocking.
    pub fn records(&self, from_seq: u64, limit: u64) -> RecordIter {
        self.reader().records(from_seq, limit)
    }

    /// Number of records known durable (PostgreSQL: as of this replica's latest write or
    /// checkpoint; other replicas may have added more).
    pub fn durable_len(&self) -> u64 {
        match self {
            Self::Sled(s) => s.durable_len(),
            Self::Postgres(s) => s.durable_len(),
        }
    }

    /// Number of durable writes (flushes, commits) this process has done.
    pub fn flushes(&self) -> u64 {
        match self {
            Self::Sled(s) => s.flushes(),
            Self::Postgres(s) => s.flushes(),
        }
    }

    /// Total time spent waiting for durable writes.
    pub fn flush_time(&self) -> Duration {
        match self {
            Self::Sled(s) => s.flush_time(),
            Self::Postgres(s) => s.flush_time(),
        }
    }

    /// Whether the store still takes appends (sled: false once a write failed; PostgreSQL: while
    /// its writer runs, since a failed transaction is retried on a new connection).
    pub fn healthy(&self) -> bool {
        match self {
            Self::Sled(s) => s.healthy(),
            Self::Postgres(s) => s.healthy(),
        }
    }

    /// Number of checkpoints this process signed.
    pub fn checkpoints_signed(&self) -> u64 {
        match self {
            Self::Sled(s) => s.checkpoints_signed(),
            Self::Postgres(s) => s.checkpoints_signed(),
        }
    }

    /// Answers the appends already queued, signs a last checkpoint and stops the writer.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => tokio::task::block_in_place(|| s.close()),
            Self::Postgres(s) => s.close().await,
        }
    }

    /// A named table of state kept with the log (approvals, revocations).
    pub fn table(&self, name: &'static str) -> Result<Table, StoreError> {
        Ok(match self {
            Self::Sled(s) => Table::Sled(s.db().open_tree(name)?),
            Self::Postgres(s) => Table::Postgres(s.table(name)),
        })
    }

    /// Serialises changes to the state named `name` across every process on this store (one
    /// process on sled; every replica on PostgreSQL, with an advisory lock).
    pub async fn lock(&self, name: &'static str) -> Result<ChangeLock, StoreError> {
        match self {
            Self::Sled(s) => Ok(ChangeLock::new(LockHeld::Local {
                _guard: s.local_lock(name).lock_owned().await,
            })),
            Self::Postgres(s) => s.lock(name).await,
        }
    }
}

/// Held while changing state that other processes may change too; released on drop.
pub struct ChangeLock {
    _held: LockHeld,
}

/// What a [`ChangeLock`] holds; dropping it releases the lock.
pub(crate) enum LockHeld {
    Local {
        _guard: tokio::sync::OwnedMutexGuard<()>,
    },
    Remote {
        _lock: pg::AdvisoryLock,
    },
}

impl ChangeLock {
    pub(crate) fn new(held: LockHeld) -> Self {
        Self { _held: held }
    }
}

/// Key-value state beside the log: a sled tree, or rows of `tollgate_state` in PostgreSQL.
/// A write is durable when it returns: sled is flushed (its records are made durable by their
/// own write-ahead log, not by sled's flush), PostgreSQL commits.
pub enum Table {
    Sled(sled::Tree),
    Postgres(pg::Table),
}

impl Table {
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Sled(tree) => Ok(tree.get(key)?.map(|v| v.to_vec())),
            Self::Postgres(table) => table.get(key).await,
        }
    }

    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Sled(tree) => {
                tree.insert(key, value)?;
                tree.flush_async().await?;
                Ok(())
            }
            Self::Postgres(table) => table.insert(key, value).await,
        }
    }

    pub async fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Sled(tree) => {
                tree.remove(key)?;
                tree.flush_async().await?;
                Ok(())
            }
            Self::Postgres(table) => table.remove(key).await,
        }
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        match self {
            Self::Sled(tree) => tree
                .scan_prefix(prefix)
                .map(|entry| {
                    let (k, v) = entry?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect(),
            Self::Postgres(table) => table.scan_prefix(prefix).await,
        }
    }
}

/// Runs `future` to its end from blocking code: a [`Reads`] method on the PostgreSQL backend.
/// On an async worker thread it first moves the worker's other tasks elsewhere.
pub(crate) fn block_on<F: Future>(handle: &tokio::runtime::Handle, future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => handle.block_on(future),
    }
}

/// A record's fields for the chain: the stored value's hash part and canonical part.
pub(crate) fn split_value(seq: u64, value: &[u8]) -> StoredRecord {
    // A value shorter than a hash is passed on whole as the "hash": the verifier reports it as
    // malformed rather than the store hiding it.
    let split = if value.len() >= 32 { 32 } else { value.len() };
    let (hash, canonical) = value.split_at(split);
    StoredRecord {
        seq,
        canonical_json: canonical.to_vec(),
        chain_hash: hex::encode(hash),
    }
}

/// One record on its way to a writer: 32 bytes for the chain hash, then the canonical JSON
/// with a placeholder `receivedAt` at `stamp_at`. The writer fills both in place, so the
/// buffer becomes the stored value without another copy or allocation.
pub(crate) struct Prepared {
    pub(crate) buf: Vec<u8>,
    stamp_at: usize,
}

impl Prepared {
    /// Canonicalises `object` (which must not hold `receivedAt`) with room for the stamp.
    pub(crate) fn new(object: &Map<String, Value>) -> Result<Self, CanonicalError> {
        let mut buf = Vec::with_capacity(32 + 64 + 2 * object.len() * 16);
        buf.resize(32, 0);
        let received_at = RECEIVED_AT.to_string();
        let mut members: Vec<(&String, Option<&Value>)> =
            object.iter().map(|(k, v)| (k, Some(v))).collect();
        members.push((&received_at, None));
        members.sort_unstable_by(|a, b| crate::canonical::utf16_cmp(a.0, b.0));
        let mut stamp_at = 0;
        buf.push(b'{');
        for (i, (key, value)) in members.into_iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            crate::canonical::write_string(key, &mut buf);
            buf.push(b':');
            match value {
                Some(value) => crate::canonical::write_value(value, &mut buf)
                    .map_err(|_| CanonicalError::Unserialisable)?,
                None => {
                    buf.push(b'"');
                    stamp_at = buf.len();
                    buf.extend_from_slice(PLACEHOLDER);
                    buf.push(b'"');
                }
            }
        }
        buf.push(b'}');
        Ok(Self { buf, stamp_at })
    }

    pub(crate) fn stamp(&mut self, time: Micros) {
        let slot = self
            .buf
            .get_mut(self.stamp_at..self.stamp_at + STAMP_LEN)
            .and_then(|slot| <&mut [u8; STAMP_LEN]>::try_from(slot).ok());
        if let Some(slot) = slot {
            clock::format_into(time, slot);
        }
    }

    /// Stamps `time`, chains onto `head` and pushes the leaf onto `frontier`; `node` gets every
    /// Merkle node completed at [`STORED_LEVEL`] or above. Returns the stored value (hash then
    /// canonical JSON) and what the append answers.
    pub(crate) fn write(
        mut self,
        time: Micros,
        head: &mut Head,
        frontier: &mut Frontier,
        mut node: impl FnMut(u32, u64, &Hash),
    ) -> (Vec<u8>, Appended) {
        self.stamp(time);
        let (hash_slot, canonical) = self.buf.split_at_mut(32);
        let hash = chain::chain(&head.hash, canonical);
        frontier.push(merkle::leaf_hash(canonical), |level, index, hash| {
            if level >= STORED_LEVEL {
                node(level, index, hash);
            }
        });
        hash_slot.copy_from_slice(&hash);
        let seq = head.len;
        *head = Head { len: seq + 1, hash };
        (
            self.buf,
            Appended {
                seq,
                chain_hash: hash,
            },
        )
    }
}

/// The `controlPlane.clockBackwards` record: the clock read `now`, earlier than the last time
/// written.
pub(crate) fn clock_backwards_event(now: Micros, last_time: Micros) -> Option<Prepared> {
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.clockBackwards".into());
    event.insert("clockRead".into(), clock::format(now).into());
    event.insert("lastTime".into(), clock::format(last_time).into());
    event.insert("backwardsMicros".into(), (last_time - now).into());
    event.insert(
        "note".into(),
        "receivedAt holds the last time until the clock passes it again".into(),
    );
    Prepared::new(&event).ok()
}

/// One in-process lock per name, created on first use.
#[derive(Default)]
pub(crate) struct LocalLocks {
    locks: std::sync::Mutex<std::collections::HashMap<&'static str, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalLocks {
    pub(crate) fn get(&self, name: &'static str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned lock only means another caller panicked while cloning an entry.
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_and_urls_are_redacted() {
        let home = Path::new("/h");
        assert_eq!(
            Location::parse(None, home).unwrap(),
            Location::Sled(home.join("audit.sled"))
        );
        assert_eq!(
            Location::parse(Some("sled:/x/y"), home).unwrap(),
            Location::Sled("/x/y".into())
        );
        let url = "postgres://app:secret@db:5432/tollgate";
        assert_eq!(
            Location::parse(Some(url), home).unwrap(),
            Location::Postgres(url.into())
        );
        assert_eq!(
            Location::parse(Some(url), home).unwrap().display(),
            "postgres://app:***@db:5432/tollgate"
        );
        assert_eq!(
            Location::parse(
                Some("postgres://app@db/t?password=pw&sslmode=require"),
                home
            )
            .unwrap()
            .display(),
            "postgres://app@db/t?sslmode=require"
        );
        let err = Location::parse(Some("mysql://u:pw@h/db"), home).unwrap_err();
        assert!(!err.contains("pw"), "{err}");
        assert!(Location::parse(Some("sled:"), home).is_err());
    }
}
