//! The audit store: hash-chained canonical JSON records in sled, a Merkle tree over them, and
//! signed checkpoints.
//!
//! # Contract
//!
//! - [`Store::append`] MUST return `Ok` only after the record, its sequence number, its chain
//!   hash and its Merkle nodes are durable: they were written and sled's `flush` returned
//!   afterwards. An `Err` means the record MUST be treated as not written: it is never
//!   acknowledged, although it may be found after a restart if the failure struck after the
//!   write reached the disk.
//! - Sequence numbers MUST be assigned densely from 0 in the order records are written, and MUST
//!   NOT be reused: after a restart appends continue after the last durable record.
//! - A stored record MUST be the RFC 8785 form of the submitted JSON object plus `receivedAt`:
//!   this control plane's clock when the single writer sequenced it, RFC 3339 UTC with
//!   microseconds. `receivedAt` MUST NOT decrease from one record to the next: when the wall
//!   clock reads earlier than the last time written, the record carries the last time and a
//!   `controlPlane.clockBackwards` record, written just before it, says by how much the clock
//!   went back.
//! - The chain hash MUST be `SHA-256(previous hash || stored bytes)`, the first record chained
//!   onto 32 zero bytes; the Merkle tree MUST be RFC 6962's over the stored bytes.
//! - `append` MUST reject a body that is not a JSON object, that sets `receivedAt`, or whose
//!   `event` starts with `controlPlane.` (the control plane's own records), storing nothing.
//!   Errors MUST NOT quote the body: it may hold sensitive data.
//! - Concurrent appends MUST share flushes (group commit): one writer thread takes every pending
//!   append, writes them in one atomic batch, flushes once and then answers them all.
//! - A checkpoint MUST be signed at least every `checkpoint_every` records and every
//!   `checkpoint_interval` (also when no record arrived), and MUST only cover records written
//!   before it: it is stored in the same flush as the records it covers, after them.
//! - After a failed write or flush the store MUST refuse every later append, because it cannot
//!   tell what reached the disk; a restart recovers from what is durable.
//! - Opening MUST record a `controlPlane.recovery` record when the previous opener did not close
//!   the store (no clean-shutdown marker), and MUST refuse a store whose Merkle frontier or
//!   latest checkpoint covers more records than are stored, or whose latest checkpoint's root
//!   does not match the stored records (tampering; `tollgate audit verify` says where).
//! - Records MUST NOT be changed or removed through this module.
//!
//! # Layout
//!
//! Tree `records`: key = sequence number as 8 bytes big-endian (so sled's order is sequence
//! order), value = 32-byte chain hash followed by the canonical JSON bytes. Tree `merkle`: key
//! = level (1 byte) then index (8 bytes big-endian) = 32-byte hash of that perfect subtree, for
//! levels >= [`STORED_LEVEL`] (lower ones are recomputed from the records); key `frontier` =
//! the compact range of the whole tree. Tree `checkpoints`: key = checkpoint number (8 bytes
//! big-endian), value = the signed note. Tree `meta`: `format` = `1`, `origin` = the log's
//! origin line, `run` = present while a process has the store open.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, Semaphore};

use crate::canonical;
use crate::chain::{self, CanonicalError, Hash, StoredRecord, GENESIS};
use crate::clock::{self, Micros, STAMP_LEN};
use crate::keys::{KeyDir, KeyError};
use crate::merkle::{self, Frontier, NodeSource};
use crate::note::{self, Checkpoint, NoteSigner, NoteVerifier};

/// The field the store adds to every record.
pub const RECEIVED_AT: &str = "receivedAt";
/// Prefix of the `event` of the control plane's own records, refused from clients.
pub const RESERVED_EVENT_PREFIX: &str = "controlPlane.";

const RECORDS_TREE: &str = "records";
const MERKLE_TREE: &str = "merkle";
const CHECKPOINTS_TREE: &str = "checkpoints";
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"1";
const ORIGIN_KEY: &str = "origin";
const RUN_KEY: &str = "run";
const FRONTIER_KEY: &[u8] = b"frontier";

/// Lowest Merkle level kept in sled: nodes below it (16 leaves) are rehashed from the records
/// when a proof needs them, which saves most of the node writes on the append path.
pub const STORED_LEVEL: u32 = 4;

/// Appends waiting for the writer; callers wait (backpressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;
/// Most records in one batch; bounds the memory of one group and the latency it adds.
const MAX_GROUP: usize = 4096;
/// The timestamp a record holds until the writer stamps it.
const PLACEHOLDER: &[u8; STAMP_LEN] = b"0000-00-00T00:00:00.000000Z";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Record(#[from] CanonicalError),
    #[error("record must not set \"receivedAt\": the control plane adds it")]
    ReservedField,
    #[error("record events starting with \"controlPlane.\" are reserved for the control plane")]
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
    #[error("checkpoint signing key: {0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Range(String),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error(
        "audit store refuses appends after an earlier write failure; restart the control plane"
    )]
    Failed,
    #[error("audit store is closed")]
    Closed,
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

/// A stored checkpoint: its number in the `checkpoints` tree and its signed note.
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
        }
    }
}

/// What opening found about the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub records: u64,
    /// The previous opener's run marker when it did not close the store.
    pub unclean: Option<Value>,
    /// Records whose Merkle nodes were missing and were rebuilt.
    pub merkle_rebuilt: u64,
}

/// Read access to a store, without a writer. `tollgate audit verify` uses it when no server
/// runs; it must not trust the head, so opening does not recover or check anything.
pub struct Reader {
    db: sled::Db,
    records: sled::Tree,
    merkle: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
}

impl Reader {
    /// Opens an existing store at `path` (the `audit.sled` directory).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotFound(path.to_path_buf()));
        }
        Self::open_or_create(path)
    }

    fn open_or_create(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(open_error)?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get(FORMAT_KEY)? {
            Some(format) if format.as_ref() != FORMAT => {
                return Err(StoreError::Format(
                    String::from_utf8_lossy(&format).into_owned(),
                ));
            }
            Some(_) => {}
            None => {
                meta.insert(FORMAT_KEY, FORMAT)?;
            }
        }
        Ok(Self {
            records: db.open_tree(RECORDS_TREE)?,
            merkle: db.open_tree(MERKLE_TREE)?,
            checkpoints: db.open_tree(CHECKPOINTS_TREE)?,
            meta,
            db,
        })
    }

    /// Records from `from_seq` on, in sequence order; `limit` 0 means all.
    ///
    /// Values are returned as stored, even malformed ones, so that the verifier (not this
    /// function) decides what is wrong with them.
    pub fn records(
        &self,
        from_seq: u64,
        limit: u64,
    ) -> impl Iterator<Item = Result<StoredRecord, StoreError>> + Send + 'static {
        let limit = if limit == 0 {
            usize::MAX
        } else {
            usize::try_from(limit).unwrap_or(usize::MAX)
        };
        self.records
            .range(from_seq.to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
    }

    /// Every stored checkpoint, oldest first, as stored (not verified).
    pub fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.checkpoints
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok(StoredCheckpoint {
                    number: seq_of(&key)?,
                    note: String::from_utf8_lossy(&value).into_owned(),
                })
            })
            .collect()
    }

    /// The log's origin (`None` for a store never opened for writing).
    pub fn origin(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(ORIGIN_KEY)?
            .map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    /// Number of records stored (one past the last key), not verified.
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.recover_head()?.len)
    }

    /// `PATH(seq, D[0:size])` from the stored nodes and records.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size)?;
        if seq >= size {
            return Err(StoreError::Range(format!(
                "record {seq} is not in a tree of {size} records"
            )));
        }
        merkle::inclusion_proof(&mut self.nodes(), seq, size)
    }

    /// `PROOF(old, D[0:new])` from the stored nodes and records.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new)?;
        if old > new {
            return Err(StoreError::Range(format!(
                "cannot prove size {old} consistent with the smaller size {new}"
            )));
        }
        merkle::consistency_proof(&mut self.nodes(), old, new)
    }

    /// `MTH(D[0:size])` from the stored nodes and records.
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        self.check_size(size)?;
        merkle::subtree_root(&mut self.nodes(), 0, size)
    }

    /// The leaf hash of record `seq`.
    pub fn leaf(&self, seq: u64) -> Result<Hash, StoreError> {
        self.nodes().node(0, seq)
    }

    fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let len = self.len()?;
        if size > len {
            return Err(StoreError::Range(format!(
                "tree size {size} is beyond the {len} records stored"
            )));
        }
        Ok(())
    }

    fn nodes(&self) -> StoredNodes<'_> {
        StoredNodes { reader: self }
    }

    /// The last stored record's sequence number and hash, as stored (not verified).
    fn recover_head(&self) -> Result<Head, StoreError> {
        let Some((key, value)) = self.records.last()? else {
            return Ok(Head {
                len: 0,
                hash: GENESIS,
            });
        };
        let seq = seq_of(&key)?;
        let hash: Hash = value
            .get(..32)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt(seq.to_string()))?;
        Ok(Head { len: seq + 1, hash })
    }

    /// `receivedAt` of the last record, to keep the clock from going back across restarts.
    fn last_received_at(&self) -> Result<Option<Micros>, StoreError> {
        let Some((_, value)) = self.records.last()? else {
            return Ok(None);
        };
        let time = value.get(32..).and_then(|json| {
            let object = chain::parse_object(json).ok()?;
            clock::parse(object.get(RECEIVED_AT)?.as_str()?)
        });
        Ok(time)
    }
}

/// Perfect subtree hashes: stored nodes at [`STORED_LEVEL`] and above, rehashed records below.
struct StoredNodes<'a> {
    reader: &'a Reader,
}

impl NodeSource for StoredNodes<'_> {
    type Error = StoreError;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level >= STORED_LEVEL {
            let value = self
                .reader
                .merkle
                .get(node_key(level, index))?
                .ok_or_else(|| {
                    StoreError::Inconsistent(format!("merkle node {level}/{index} is missing"))
                })?;
            return value.as_ref().try_into().map_err(|_| {
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

fn node_key(level: u32, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = u8::try_from(level).unwrap_or(u8::MAX);
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(hex::encode(key)))?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode(key: &[u8], value: &[u8]) -> Result<StoredRecord, StoreError> {
    let seq = seq_of(key)?;
    // A value shorter than a hash is passed on whole as the "hash": the verifier reports it as
    // malformed rather than the store hiding it.
    let split = if value.len() >= 32 { 32 } else { value.len() };
    let (hash, canonical) = value.split_at(split);
    Ok(StoredRecord {
        seq,
        canonical_json: canonical.to_vec(),
        chain_hash: hex::encode(hash),
    })
}

/// One record on its way to the writer: 32 bytes for the chain hash, then the canonical JSON
/// with a placeholder `receivedAt` at `stamp_at`. The writer fills both in place, so the
/// buffer becomes the sled value without another copy or allocation.
struct Prepared {
    buf: Vec<u8>,
    stamp_at: usize,
}

impl Prepared {
    /// Canonicalises `object` (which must not hold `receivedAt`) with room for the stamp.
    fn new(object: &Map<String, Value>) -> Result<Self, CanonicalError> {
        let mut buf = Vec::with_capacity(32 + 64 + 2 * object.len() * 16);
        buf.resize(32, 0);
        let received_at = RECEIVED_AT.to_string();
        let mut members: Vec<(&String, Option<&Value>)> =
            object.iter().map(|(k, v)| (k, Some(v))).collect();
        members.push((&received_at, None));
        members.sort_unstable_by(|a, b| canonical::utf16_cmp(a.0, b.0));
        let mut stamp_at = 0;
        buf.push(b'{');
        for (i, (key, value)) in members.into_iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            canonical::write_string(key, &mut buf);
            buf.push(b':');
            match value {
                Some(value) => canonical::write_value(value, &mut buf)
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

    fn stamp(&mut self, time: Micros) {
        let slot = self
            .buf
            .get_mut(self.stamp_at..self.stamp_at + STAMP_LEN)
            .and_then(|slot| <&mut [u8; STAMP_LEN]>::try_from(slot).ok());
        if let Some(slot) = slot {
            clock::format_into(time, slot);
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One append waiting for the writer.
struct Pending {
    record: Prepared,
    reply: Option<Reply<Appended>>,
}

enum Message {
    Append(Pending),
    /// Sign a checkpoint now.
    Checkpoint(Reply<StoredCheckpoint>),
    /// Switch to a new signing key: record `event` (fields of the rotation record), then sign a
    /// checkpoint with the new key.
    Rotate {
        event: Map<String, Value>,
        reply: Reply<(Appended, NoteVerifier)>,
    },
}

/// State shared between the store handle and its writer thread.
#[derive(Default)]
struct Shared {
    failed: AtomicBool,
    /// Records known durable: set after a flush returned, before its appends are answered.
    durable_len: AtomicU64,
    flushes: AtomicU64,
    /// Time spent in `flush`, for the stop record and the benchmark.
    flush_micros: AtomicU64,
    checkpoints: AtomicU64,
    /// Tests hold this to keep the writer from draining, so a group's size is deterministic.
    #[cfg(test)]
    gate: Mutex<()>,
    /// Tests set this to make the next flush fail.
    #[cfg(test)]
    fail_next_flush: AtomicBool,
    /// Tests set this to move the writer's clock back by this many microseconds.
    #[cfg(test)]
    clock_back: AtomicU64,
}

/// The audit store with its single writer. See the module documentation for the contract.
pub struct Store {
    reader: Reader,
    queue: Mutex<Option<std_mpsc::Sender<Message>>>,
    /// Free places in the queue; an append takes one and the writer gives it back.
    room: Arc<Semaphore>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    origin: String,
    keys: KeyDir,
    opened: Opened,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, checks and recovers the head, the Merkle
    /// frontier and the latest checkpoint, records an unclean previous shutdown, and starts the
    /// writer. Blocking.
    pub fn open(path: &Path, options: &Options) -> Result<Self, StoreError> {
        let reader = Reader::open_or_create(path)?;
        let origin = match reader.origin()? {
            Some(origin) => origin,
            None => {
                let origin = match &options.origin {
                    Some(origin) => origin.clone(),
                    None => {
                        let id: [u8; 8] = rand::random();
                        format!("tollgate.local/audit/{}", hex::encode(id))
                    }
                };
                if !note::valid_key_name(&origin) {
                    return Err(StoreError::Range(format!(
                        "origin {origin:?} must be non-empty, without spaces or '+'"
                    )));
                }
                reader.meta.insert(ORIGIN_KEY, origin.as_bytes())?;
                origin
            }
        };
        if let Some(wanted) = &options.origin {
            if *wanted != origin {
                return Err(StoreError::Range(format!(
                    "this store's origin is {origin:?}, not {wanted:?}"
                )));
            }
        }
        if !options.create_key && !options.keys.private_path().exists() {
            return Err(StoreError::Key(KeyError::Missing(
                options.keys.private_path(),
            )));
        }
        let signer = options.keys.signer(&origin)?;
        let head = reader.recover_head()?;
        let (frontier, merkle_rebuilt) = recover_frontier(&reader, head.len)?;

        let latest = reader.checkpoints.last()?;
        let mut last_time = reader.last_received_at()?.unwrap_or(0);
        let mut checkpoint_number = 0;
        let mut checkpoint_size = None;
        if let Some((key, note)) = latest {
            checkpoint_number = seq_of(&key)? + 1;
            let text = String::from_utf8_lossy(&note);
            let body = text.split_once("\n\n").map_or("", |(body, _)| body);
            let checkpoint = Checkpoint::parse(&format!("{body}\n")).map_err(|e| {
                StoreError::Inconsistent(format!("the latest checkpoint is unreadable ({e})"))
            })?;
            if checkpoint.size > head.len {
                return Err(StoreError::Inconsistent(format!(
                    "the latest checkpoint covers {} records but {} are stored",
                    checkpoint.size, head.len
                )));
            }
            if reader.root(checkpoint.size)? != checkpoint.root {
                return Err(StoreError::Inconsistent(format!(
                    "the stored records do not match the latest checkpoint (size {})",
                    checkpoint.size
                )));
            }
            last_time = last_time.max(clock::parse(&checkpoint.time).unwrap_or(0));
            checkpoint_size = Some(checkpoint.size);
        }

        let unclean = reader
            .meta
            .get(RUN_KEY)?
            .map(|run| serde_json::from_slice(&run).unwrap_or(Value::Null));
        let run =
            json!({"pid": std::process::id(), "openedAt": clock::format(clock::now_micros())});
        reader.meta.insert(RUN_KEY, run.to_string().as_bytes())?;
        reader.db.flush()?;

        let shared = Arc::new(Shared {
            durable_len: AtomicU64::new(head.len),
            ..Shared::default()
        });
        let room = Arc::new(Semaphore::new(QUEUE_CAPACITY));
        let mut writer = Writer {
            db: reader.db.clone(),
            records: reader.records.clone(),
            merkle: reader.merkle.clone(),
            checkpoints: reader.checkpoints.clone(),
            head,
            frontier,
            last_time,
            clock_behind: false,
            signer,
            keys: options.keys.clone(),
            origin: origin.clone(),
            every: options.checkpoint_every.max(1),
            interval: options.checkpoint_interval,
            checkpoint_number,
            checkpoint_size,
            checkpoint_at: Instant::now(),
            room: room.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            shared: shared.clone(),
        };
        if let Some(previous) = &unclean {
            let mut event = Map::new();
            event.insert("event".into(), "controlPlane.recovery".into());
            event.insert(
                "reason".into(),
                "the previous run did not shut down cleanly".into(),
            );
            event.insert("previousRun".into(), previous.clone());
            event.insert("records".into(), head.len.into());
            event.insert("merkleRebuilt".into(), merkle_rebuilt.into());
            event.insert(
                "latestCheckpointSize".into(),
                checkpoint_size.map_or(Value::Null, Value::from),
            );
            let record = Prepared::new(&event)?;
            let group = vec![Pending {
                record,
                reply: None,
            }];
            // Synchronously, before anyone else can append: the first record after a crash.
            writer.commit(group, true);
            if shared.failed.load(Ordering::Acquire) {
                return Err(StoreError::Failed);
            }
        }

        let (tx, rx) = std_mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        Ok(Self {
            opened: Opened {
                records: head.len,
                unclean,
                merkle_rebuilt,
            },
            reader,
            queue: Mutex::new(Some(tx)),
            room,
            writer: Mutex::new(Some(handle)),
            shared,
            origin,
            keys: options.keys.clone(),
        })
    }

    /// What opening found about the previous run.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Every public key this log has signed with (rotated ones included).
    pub fn verifiers(&self) -> Result<Vec<NoteVerifier>, StoreError> {
        Ok(self.keys.verifiers()?)
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The sled database holding the chain, for state that must be durable with the records
    /// (the approvals' own trees): the next append's flush covers writes made before it.
    pub fn db(&self) -> &sled::Db {
        &self.reader.db
    }

    /// Appends one record from a client (a JSON object); see the contract for what `Ok`
    /// promises and what is refused.
    pub async fn append(&self, record_json: &[u8]) -> Result<Appended, StoreError> {
        let object = chain::parse_object(record_json)?;
        if object
            .get("event")
            .and_then(Value::as_str)
            .is_some_and(|e| e.starts_with(RESERVED_EVENT_PREFIX))
        {
            return Err(StoreError::ReservedEvent);
        }
        self.append_object(&object).await
    }

    /// Appends one of the control plane's own records (its `event` should start with
    /// `controlPlane.`).
    pub async fn append_event(&self, event: &Map<String, Value>) -> Result<Appended, StoreError> {
        self.append_object(event).await
    }

    async fn append_object(&self, object: &Map<String, Value>) -> Result<Appended, StoreError> {
        if object.contains_key(RECEIVED_AT) {
            return Err(StoreError::ReservedField);
        }
        // Canonicalised here, on the caller's task, so the single writer only stamps, hashes
        // and writes.
        let record = Prepared::new(object)?;
        let (reply, answer) = oneshot::channel();
        self.send(Message::Append(Pending {
            record,
            reply: Some(reply),
        }))
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Signs a checkpoint over every record written so far (after the appends already queued)
    /// and returns it once it is durable.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Checkpoint(reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Replaces the signing key: the new key's public half is listed beside the old ones, a
    /// `controlPlane.keyRotated` record (with `event`'s fields added) is written, and a
    /// checkpoint is signed with the new key. Returns the record and the new public key.
    pub async fn rotate_key(
        &self,
        event: Map<String, Value>,
    ) -> Result<(Appended, NoteVerifier), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Rotate { event, reply }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, message: Message) -> Result<(), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let permit = self.room.acquire().await.map_err(|_| StoreError::Closed)?;
        let queue = self.lock_queue().clone().ok_or(StoreError::Closed)?;
        queue.send(message).map_err(|_| StoreError::Closed)?;
        // The writer returns the place once it has taken the message off the queue.
        permit.forget();
        Ok(())
    }

    /// Records from `from_seq` on, in sequence order; `limit` 0 means all.
    pub fn records(
        &self,
        from_seq: u64,
        limit: u64,
    ) -> impl Iterator<Item = Result<StoredRecord, StoreError>> + Send + 'static {
        self.reader.records(from_seq, limit)
    }

    /// Number of records known durable.
    pub fn durable_len(&self) -> u64 {
        self.shared.durable_len.load(Ordering::Acquire)
    }

    /// Number of flushes the writer has done since the store was opened.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Acquire)
    }

    /// Total time the writer spent waiting for flushes since the store was opened.
    pub fn flush_time(&self) -> Duration {
        Duration::from_micros(self.shared.flush_micros.load(Ordering::Acquire))
    }

    /// Whether the store still takes appends (false once a write failed).
    pub fn healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
    }

    /// Number of checkpoints signed since the store was opened.
    pub fn checkpoints_signed(&self) -> u64 {
        self.shared.checkpoints.load(Ordering::Acquire)
    }

    /// Stops taking appends, lets the writer answer those already queued, signs a last
    /// checkpoint over them, flushes, and marks the shutdown clean (unless a write failed).
    /// Blocks until done; calling it again does nothing more.
    pub fn close(&self) -> Result<(), StoreError> {
        drop(self.lock_queue().take());
        self.room.close();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
        // The writer catches nothing; a panic there already failed its callers.
        let _ = handle.join();
        if !self.shared.failed.load(Ordering::Acquire) {
            self.reader.meta.remove(RUN_KEY)?;
        }
        self.reader.db.flush()?;
        Ok(())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Option<std_mpsc::Sender<Message>>> {
        // A poisoned lock only means another caller panicked while cloning the sender.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("tollgate: closing the audit store failed: {e}");
        }
    }
}

/// The frontier as stored, caught up with the records if a crash left it behind.
fn recover_frontier(reader: &Reader, len: u64) -> Result<(Frontier, u64), StoreError> {
    let mut frontier = match reader.merkle.get(FRONTIER_KEY)? {
        Some(bytes) => Frontier::decode(&bytes)
            .ok_or_else(|| StoreError::Inconsistent("the merkle frontier is malformed".into()))?,
        None => Frontier::new(),
    };
    if frontier.size() > len {
        return Err(StoreError::Inconsistent(format!(
            "the merkle tree covers {} records but {} are stored",
            frontier.size(),
            len
        )));
    }
    let behind = len - frontier.size();
    if behind == 0 {
        return Ok((frontier, 0));
    }
    // The records batch reached the disk but the Merkle batch after it did not.
    let mut batch = sled::Batch::default();
    let from = frontier.size();
    for (expected, record) in (from..).zip(reader.records(from, 0)) {
        let record = record?;
        if record.seq != expected {
            return Err(StoreError::Inconsistent(format!(
                "record {expected} is missing"
            )));
        }
        frontier.push(
            merkle::leaf_hash(&record.canonical_json),
            |level, index, hash| {
                if level >= STORED_LEVEL {
                    batch.insert(&node_key(level, index), &hash[..]);
                }
            },
        );
    }
    batch.insert(FRONTIER_KEY, frontier.encode());
    reader.merkle.apply_batch(batch)?;
    reader.db.flush()?;
    Ok((frontier, behind))
}

/// The single writer: owns the head, the frontier and the signing key, so sequence numbers,
/// hashes and checkpoints need no lock.
struct Writer {
    db: sled::Db,
    records: sled::Tree,
    merkle: sled::Tree,
    checkpoints: sled::Tree,
    head: Head,
    frontier: Frontier,
    /// The last time written into a record or checkpoint.
    last_time: Micros,
    /// Whether the clock is (still) behind `last_time`, already recorded.
    clock_behind: bool,
    signer: NoteSigner,
    keys: KeyDir,
    origin: String,
    every: u64,
    interval: Duration,
    /// Number the next checkpoint gets.
    checkpoint_number: u64,
    /// Size of the last checkpoint, if any.
    checkpoint_size: Option<u64>,
    checkpoint_at: Instant,
    room: Arc<Semaphore>,
    /// The async runtime the appenders wait on, when the store was opened inside one.
    runtime: Option<tokio::runtime::Handle>,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, queue: std_mpsc::Receiver<Message>) {
        let mut carried: VecDeque<Message> = VecDeque::new();
        loop {
            let message = match carried.pop_front() {
                Some(message) => message,
                None => {
                    let due = self.interval.saturating_sub(self.checkpoint_at.elapsed());
                    match queue.recv_timeout(due) {
                        Ok(message) => {
                            self.give_back(1);
                            message
                        }
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {
                            // Idle: a checkpoint shows the log is alive and unchanged.
                            // A failure is already reported and fails the store.
                            let _ = self.checkpoint_only();
                            continue;
                        }
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match message {
                Message::Append(first) => {
                    #[cfg(test)]
                    let gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(Message::Append(pending)) => {
                                self.give_back(1);
                                group.push(pending);
                            }
                            Ok(other) => {
                                self.give_back(1);
                                carried.push_back(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    #[cfg(test)]
                    drop(gate);
                    self.commit(group, false);
                }
                Message::Checkpoint(reply) => {
                    let _ = reply.send(self.checkpoint_only());
                }
                Message::Rotate { event, reply } => {
                    let _ = reply.send(self.rotate(event));
                }
            }
        }
        // Closing: a last checkpoint covers everything written (the stop record included).
        if self.checkpoint_size != Some(self.head.len) {
            let _ = self.checkpoint_only();
        }
    }

    /// Returns queue places taken by `Store::send`.
    fn give_back(&self, n: usize) {
        self.room.add_permits(n);
    }

    /// Time for the next record or checkpoint: the wall clock, but never before the last time
    /// written. Returns the time and, the first time the clock is seen behind, a record of it.
    fn next_time(&mut self) -> (Micros, Option<Prepared>) {
        let now = clock::now_micros();
        #[cfg(test)]
        let now = now.saturating_sub(self.shared.clock_back.load(Ordering::Acquire));
        if now >= self.last_time {
            self.clock_behind = false;
            self.last_time = now;
            return (now, None);
        }
        if self.clock_behind {
            return (self.last_time, None);
        }
        self.clock_behind = true;
        let mut event = Map::new();
        event.insert("event".into(), "controlPlane.clockBackwards".into());
        event.insert("clockRead".into(), clock::format(now).into());
        event.insert("lastTime".into(), clock::format(self.last_time).into());
        event.insert("backwardsMicros".into(), (self.last_time - now).into());
        event.insert(
            "note".into(),
            "receivedAt holds the last time until the clock passes it again".into(),
        );
        (self.last_time, Prepared::new(&event).ok())
    }

    /// Time for a checkpoint: like [`Self::next_time`], but a clock found behind is left for
    /// the next record to report.
    fn checkpoint_time(&mut self) -> Micros {
        let now = clock::now_micros();
        #[cfg(test)]
        let now = now.saturating_sub(self.shared.clock_back.load(Ordering::Acquire));
        self.last_time = self.last_time.max(now);
        self.last_time
    }

    /// Writes `group` (and a checkpoint when one is due, or `force_checkpoint`) in one flush.
    fn commit(&mut self, group: Vec<Pending>, force_checkpoint: bool) {
        if self.shared.failed.load(Ordering::Acquire) {
            for pending in group {
                if let Some(reply) = pending.reply {
                    let _ = reply.send(Err(StoreError::Failed));
                }
            }
            return;
        }
        let mut batch = sled::Batch::default();
        let mut nodes = sled::Batch::default();
        let mut head = self.head;
        let mut frontier = self.frontier.clone();
        let mut replies = Vec::with_capacity(group.len());
        let mut write =
            |mut record: Prepared, time: Micros, head: &mut Head, frontier: &mut Frontier| {
                record.stamp(time);
                let (hash_slot, canonical) = record.buf.split_at_mut(32);
                let hash = chain::chain(&head.hash, canonical);
                frontier.push(merkle::leaf_hash(canonical), |level, index, node| {
                    if level >= STORED_LEVEL {
                        nodes.insert(&node_key(level, index), &node[..]);
                    }
                });
                hash_slot.copy_from_slice(&hash);
                let seq = head.len;
                batch.insert(&seq.to_be_bytes(), record.buf);
                *head = Head { len: seq + 1, hash };
                Appended {
                    seq,
                    chain_hash: hash,
                }
            };
        for pending in group {
            let (time, clock_event) = self.next_time();
            if let Some(event) = clock_event {
                write(event, time, &mut head, &mut frontier);
            }
            let appended = write(pending.record, time, &mut head, &mut frontier);
            replies.push((pending.reply, appended));
        }
        nodes.insert(FRONTIER_KEY, frontier.encode());

        let due = force_checkpoint
            || head.len - self.checkpoint_size.unwrap_or(0) >= self.every
            || self.checkpoint_at.elapsed() >= self.interval;
        let result = self
            .records
            .apply_batch(batch)
            .and_then(|()| self.merkle.apply_batch(nodes))
            .map_err(StoreError::from)
            .and_then(|()| {
                if due {
                    self.write_checkpoint(head, &frontier).map(Some)
                } else {
                    Ok(None)
                }
            })
            .and_then(|checkpoint| self.flush().map(|()| checkpoint));
        match result {
            Ok(checkpoint) => {
                self.head = head;
                self.frontier = frontier;
                self.shared.durable_len.store(head.len, Ordering::Release);
                self.shared.flushes.fetch_add(1, Ordering::AcqRel);
                if checkpoint.is_some() {
                    self.checkpoint_done(head.len);
                }
                self.answer(replies);
            }
            Err(e) => {
                self.fail(&e);
                for (reply, _) in replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(StoreError::Failed));
                    }
                }
            }
        }
    }

    /// Answers a durable group. Waking each waiting task from this thread costs a futex wake
    /// per task (measured: a quarter of the writer's time at 64 writers); one task on the
    /// runtime answers them all with cheap local wakes instead.
    fn answer(&self, replies: Vec<(Option<Reply<Appended>>, Appended)>) {
        fn send_all(replies: Vec<(Option<Reply<Appended>>, Appended)>) {
            for (reply, appended) in replies {
                // A caller that went away still has its record stored; nothing to undo.
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(appended));
                }
            }
        }
        match &self.runtime {
            // A lone reply costs one wake either way.
            Some(runtime) if replies.len() > 1 => {
                runtime.spawn(async move { send_all(replies) });
            }
            _ => send_all(replies),
        }
    }

    /// Signs and stores (unflushed) a checkpoint of `head`/`frontier`.
    fn write_checkpoint(
        &mut self,
        head: Head,
        frontier: &Frontier,
    ) -> Result<StoredCheckpoint, StoreError> {
        let time = self.checkpoint_time();
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: head.len,
            root: frontier.root(),
            chain_head: head.hash,
            time: clock::format(time),
        };
        let note = self.signer.sign(&checkpoint.text());
        let number = self.checkpoint_number;
        self.checkpoints
            .insert(number.to_be_bytes(), note.as_bytes())?;
        Ok(StoredCheckpoint { number, note })
    }

    fn checkpoint_done(&mut self, size: u64) {
        self.checkpoint_number += 1;
        self.checkpoint_size = Some(size);
        self.checkpoint_at = Instant::now();
        self.shared.checkpoints.fetch_add(1, Ordering::AcqRel);
    }

    /// A checkpoint with no new records: on the timer, on request, and at close.
    fn checkpoint_only(&mut self) -> Result<StoredCheckpoint, StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            // Nothing more is signed once the store cannot tell what is durable.
            self.checkpoint_at = Instant::now();
            return Err(StoreError::Failed);
        }
        let result = self
            .write_checkpoint(self.head, &self.frontier.clone())
            .and_then(|checkpoint| self.flush().map(|()| checkpoint));
        match result {
            Ok(checkpoint) => {
                self.shared.flushes.fetch_add(1, Ordering::AcqRel);
                self.checkpoint_done(self.head.len);
                Ok(checkpoint)
            }
            Err(e) => {
                self.fail(&e);
                Err(StoreError::Failed)
            }
        }
    }

    fn rotate(
        &mut self,
        mut event: Map<String, Value>,
    ) -> Result<(Appended, NoteVerifier), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let old = self.signer.verifier();
        let signer = self.keys.rotate(&self.origin)?;
        let new = signer.verifier();
        self.signer = signer;
        event.insert("event".into(), "controlPlane.keyRotated".into());
        event.insert("previousKey".into(), old.encode().into());
        event.insert("newKey".into(), new.encode().into());
        let record = Prepared::new(&event)?;
        let (reply, mut answer) = oneshot::channel();
        self.commit(
            vec![Pending {
                record,
                reply: Some(reply),
            }],
            true,
        );
        let appended = answer.try_recv().map_err(|_| StoreError::Closed)??;
        Ok((appended, new))
    }

    fn fail(&self, error: &StoreError) {
        self.shared.failed.store(true, Ordering::Release);
        eprintln!("tollgate: audit store write failed, refusing further appends: {error}");
    }

    fn flush(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.shared.fail_next_flush.swap(false, Ordering::AcqRel) {
            return Err(StoreError::Io(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            ))));
        }
        let start = Instant::now();
        self.db.flush()?;
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.flush_micros.fetch_add(micros, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
