//! The sled backend: hash-chained canonical JSON records in one embedded database, written by
//! one writer thread, for one process.
//!
//! # Contract, beyond the one in [`super`]
//!
//! - `Ok` from an append means the record's group is in the store's write-ahead log and
//!   `fdatasync` returned ([`super::wal`]); sled gets the group after that, without a flush of
//!   its own. sled is flushed once per full log file, and opening puts back into sled every
//!   logged group it lost.
//! - Concurrent appends MUST share syncs (group commit): one writer thread takes every pending
//!   append, logs them as one entry, syncs once and then answers them all.
//! - A checkpoint MUST be signed at least every `checkpoint_every` records and every
//!   `checkpoint_interval` (also when no record arrived), and is stored in the same flush as the
//!   records it covers, after them.
//! - `receivedAt` is this process's clock when the writer sequenced the record; when the wall
//!   clock reads earlier than the last time written, the record carries the last time and a
//!   `controlPlane.clockBackwards` record, written just before it, says by how much.
//! - After a failed write or flush the store MUST refuse every later append, because it cannot
//!   tell what reached the disk; a restart recovers from what is durable.
//! - Opening MUST record a `controlPlane.recovery` record when the previous opener did not close
//!   the store (no clean-shutdown marker), and MUST refuse a store whose Merkle frontier or
//!   latest checkpoint covers more records than are stored, or whose latest checkpoint's root
//!   does not match the stored records (tampering; `tollgate audit verify` says where).
//!
//! # Layout
//!
//! Tree `records`: key = sequence number as 8 bytes big-endian (so sled's order is sequence
//! order), value = 32-byte chain hash followed by the canonical JSON bytes, as one zstd frame
//! ([`super::pack`]) in a store created without sled's own compression (one created before
//! keeps sled's compression and plain JSON). Tree `merkle`: key
//! = level (1 byte) then index (8 bytes big-endian) = 32-byte hash of that perfect subtree, for
//! levels >= [`STORED_LEVEL`] (lower ones are recomputed from the records); key `frontier` =
//! the compact range of the whole tree. Tree `checkpoints`: key = checkpoint number (8 bytes
//! big-endian), value = the signed note. Tree `meta`: `format` = `1`, `origin` = the log's
//! origin line, `run` = present while a process has the store open, `archive` = where the hot
//! store begins once records were archived ([`ArchiveCut`] as JSON), `pruning` = the same
//! while a prune is under way (finished at the next open if the process died), `dict/<id>` =
//! a packing dictionary, `dictionary` = the id of the one the writer packs with. Directory
//! `wal` beside sled's files: the write-ahead log.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::pack::{Dictionaries, Packer, Samples};
use super::sequencer::{
    Committed, Driver, Message, Pending, Plan, Sequencer, Shared, Sign, Tip, Writer,
};
use super::wal;
use super::RECEIVED_AT;
use super::{
    retained_blocks, split_value, Appended, ArchiveCut, Head, Opened, Options, Prepared, Reads,
    RecordIter, StoreError, StoredCheckpoint, STORED_LEVEL,
};
#[cfg(test)]
use crate::chain;
use crate::chain::{Hash, StoredRecord, GENESIS};
use crate::clock::{self, Micros};
use crate::keys::{KeyDir, KeyError};
use crate::merkle::{self, Frontier};
use crate::note::{self, Checkpoint, NoteVerifier};

const RECORDS_TREE: &str = "records";
const MERKLE_TREE: &str = "merkle";
const CHECKPOINTS_TREE: &str = "checkpoints";
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"1";
const ORIGIN_KEY: &str = "origin";
const RUN_KEY: &str = "run";
const FRONTIER_KEY: &[u8] = b"frontier";
const ARCHIVE_KEY: &str = "archive";
const PRUNING_KEY: &str = "pruning";
const WAL_DIR: &str = "wal";
/// Records removed per sled batch while pruning: bounds the memory of one batch.
const PRUNE_BATCH: u64 = 16 * 1024;

/// `meta` key prefix of a packing dictionary: `dict/` then its id (4 bytes big-endian).
const DICTIONARY_PREFIX: &[u8] = b"dict/";
/// `meta` key of the id of the dictionary the writer packs with.
const DICTIONARY_KEY: &str = "dictionary";

/// The `meta` key of the dictionary whose id is `id` (4 bytes big-endian).
fn dictionary_key(id: &[u8]) -> Vec<u8> {
    [DICTIONARY_PREFIX, id].concat()
}

/// Appends waiting for the writer; callers wait (backpressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;

/// Read access to a store, without a writer. `tollgate audit verify` uses it when no server
/// runs; it must not trust the head, so opening recovers and checks nothing beyond putting back
/// what the write-ahead log holds (acknowledged records, which are part of the log).
pub struct Reader {
    path: std::path::PathBuf,
    db: sled::Db,
    records: sled::Tree,
    merkle: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    dictionaries: Arc<Dictionaries>,
    /// Created with sled's page compression (plain JSON records) rather than packed records.
    sled_compresses: bool,
}

impl Reader {
    /// Opens an existing store at `path` (the `audit.sled` directory), with every group its
    /// write-ahead log holds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotFound(path.to_path_buf()));
        }
        let reader = Self::open_or_create(path)?;
        reader.replay()?;
        Ok(reader)
    }

    fn open_or_create(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let sled_compresses = sled_compresses(path);
        let config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled compresses every message with a zstd context of its own, Merkle nodes too:
            // creating them was the writer thread's largest cost (`make profile`). The writer
            // compresses records itself, with one context ([`pack`]).
            .use_compression(sled_compresses)
            .compression_factor(1)
            // Appends are durable in the write-ahead log; sled is flushed when a log file is
            // retired, and by writes outside the log (tables, pruning, opening, closing).
            .flush_every_ms(None);
        // A store just closed in this process may hold its file lock a moment longer (sled's
        // I/O threads let go of it last): wait a little for it, not for another process.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 20 =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(open_error(e)),
            }
        };
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
        let dictionaries = Dictionaries::default();
        for entry in meta.scan_prefix(DICTIONARY_PREFIX) {
            let (_, dictionary) = entry?;
            dictionaries.add(&dictionary);
        }
        Ok(Self {
            path: path.to_path_buf(),
            records: db.open_tree(RECORDS_TREE)?,
            merkle: db.open_tree(MERKLE_TREE)?,
            checkpoints: db.open_tree(CHECKPOINTS_TREE)?,
            meta,
            db,
            dictionaries: Arc::new(dictionaries),
            sled_compresses,
        })
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
        let value = self.dictionaries.unpack(&value);
        let time = value.get(32..).and_then(|json| {
            // A stored record, read as stored: one chained before appends were read as I-JSON
            // may hold an integer beyond 2^53, which `chain::parse_object` now refuses.
            let object: Map<String, Value> = serde_json::from_slice(json).ok()?;
            clock::parse(object.get(RECEIVED_AT)?.as_str()?)
        });
        Ok(time)
    }

    fn wal_dir(&self) -> std::path::PathBuf {
        self.path.join(WAL_DIR)
    }

    /// Puts back into sled what its write-ahead log holds beyond it: the records past sled's
    /// last (a crash took them before sled's flush), with their Merkle nodes, frontier and
    /// checkpoint; then flushes sled and removes the log. Refuses a log that would leave a gap,
    /// or one damaged anywhere but at the end of its last file (only the last write can be
    /// cut short, and it was never acknowledged).
    fn replay(&self) -> Result<Replayed, StoreError> {
        let dir = self.wal_dir();
        let files = wal::files(&dir).map_err(wal_error)?;
        let mut head = self.recover_head()?.len;
        let mut frontier_size = match self.merkle.get(FRONTIER_KEY)? {
            Some(bytes) => Frontier::decode(&bytes).map_or(0, |f| f.size()),
            None => 0,
        };
        // Records an archive pruned stay pruned; a prune under way is finished after this.
        let pruned_below = self.archive()?.map_or(0, |a| a.cut);
        let mut records = 0;
        for (n, (_, path)) in files.iter().enumerate() {
            let bytes = wal::read(path).map_err(wal_error)?;
            let (groups, end) = wal::decode(&bytes);
            if let (wal::End::Torn { offset }, true) = (&end, n + 1 < files.len()) {
                return Err(StoreError::Inconsistent(format!(
                    "the write-ahead log file {} is damaged at byte {offset}, before later files",
                    path.display()
                )));
            }
            for group in groups {
                for (seq, value) in group.records {
                    if seq > head {
                        return Err(StoreError::Inconsistent(format!(
                            "records {head} to {} are neither in sled nor in its write-ahead log",
                            seq - 1
                        )));
                    }
                    // Below sled's last too: the writer inserts without sled batches, so what
                    // sled kept of the log's span is checked record by record, not assumed.
                    let key = seq.to_be_bytes();
                    if seq >= pruned_below && !self.records.contains_key(key)? {
                        self.records.insert(key, value)?;
                        records += 1;
                    }
                    head = head.max(seq + 1);
                }
                // Nodes are fixed by the records: writing them again is harmless.
                for (level, index, hash) in &group.nodes {
                    self.merkle.insert(node_key(*level, *index), &hash[..])?;
                }
                let size = Frontier::decode(&group.frontier).map(|f| f.size());
                if let Some(size) = size.filter(|size| *size > frontier_size) {
                    self.merkle.insert(FRONTIER_KEY, group.frontier)?;
                    frontier_size = size;
                }
                if let Some((number, note)) = group.checkpoint {
                    let key = number.to_be_bytes();
                    if self.checkpoints.get(key)?.is_none() {
                        self.checkpoints.insert(key, note.as_bytes())?;
                    }
                }
            }
        }
        if !files.is_empty() {
            make_durable(&self.db, &self.path)?;
            wal::remove_all(&dir).map_err(wal_error)?;
        }
        Ok(Replayed {
            records,
            last_generation: files.last().map(|(generation, _)| *generation),
        })
    }
}

/// sled's `flush`, then [`sync_sled_files`]: what must hold before a log file is deleted.
fn make_durable(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    db.flush()?;
    sync_sled_files(path).map_err(wal_error)
}

/// `fsync` of sled's files: its `flush` waits for `sync_file_range`, which neither asks the
/// device to empty a volatile write cache nor covers its blob files, and a log file is deleted
/// on the strength of it.
fn sync_sled_files(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path.join("db"))?.sync_all()?;
    match std::fs::read_dir(path.join("blobs")) {
        Ok(blobs) => {
            for blob in blobs {
                std::fs::File::open(blob?.path())?.sync_all()?;
            }
            std::fs::File::open(path.join("blobs"))?.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What opening took from the write-ahead log.
struct Replayed {
    records: u64,
    last_generation: Option<u64>,
}

fn wal_error(e: std::io::Error) -> StoreError {
    StoreError::Io(sled::Error::Io(e))
}

impl Reads for Reader {
    fn records(&self, from_seq: u64, limit: u64) -> RecordIter {
        let limit = if limit == 0 {
            usize::MAX
        } else {
            usize::try_from(limit).unwrap_or(usize::MAX)
        };
        let dictionaries = self.dictionaries.clone();
        Box::new(
            self.records
                .range(from_seq.to_be_bytes()..)
                .take(limit)
                .map(move |entry| {
                    let (key, value) = entry?;
                    decode(&dictionaries, &key, &value)
                }),
        )
    }

    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.checkpoints
            .last()?
            .map(|(key, value)| {
                Ok(StoredCheckpoint {
                    number: seq_of(&key)?,
                    note: String::from_utf8_lossy(&value).into_owned(),
                })
            })
            .transpose()
    }

    fn checkpoints_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.checkpoints
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                Ok(StoredCheckpoint {
                    number: seq_of(&key)?,
                    note: String::from_utf8_lossy(&value).into_owned(),
                })
            })
            .collect()
    }

    fn origin(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(ORIGIN_KEY)?
            .map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(self.recover_head()?.len)
    }

    fn stored_node(&self, level: u32, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.merkle.get(node_key(level, index))?.map(|v| v.to_vec()))
    }

    fn archive(&self) -> Result<Option<ArchiveCut>, StoreError> {
        self.meta
            .get(ARCHIVE_KEY)?
            .map(|bytes| {
                ArchiveCut::from_json(&bytes).ok_or_else(|| StoreError::Corrupt(ARCHIVE_KEY.into()))
            })
            .transpose()
    }
}

impl Reader {
    /// Removes the records below `cut` outside `keep`, from the previous cut on, in batches;
    /// `pruning` marks the work so an interrupted prune is finished at the next open.
    fn prune(
        &self,
        cut: ArchiveCut,
        keep: &std::collections::BTreeSet<u64>,
    ) -> Result<u64, StoreError> {
        let from = self.archive()?.map_or(0, |a| a.cut);
        self.meta
            .insert(PRUNING_KEY, cut.to_json().to_string().as_bytes())?;
        self.db.flush()?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for entry in self
            .records
            .range(from.to_be_bytes()..cut.cut.to_be_bytes())
        {
            let (key, _) = entry?;
            if keep.contains(&(seq_of(&key)? >> STORED_LEVEL)) {
                continue;
            }
            batch.remove(key);
            in_batch += 1;
            if in_batch == PRUNE_BATCH {
                self.records.apply_batch(std::mem::take(&mut batch))?;
                removed += in_batch;
                in_batch = 0;
            }
        }
        self.records.apply_batch(batch)?;
        removed += in_batch;
        self.meta
            .insert(ARCHIVE_KEY, cut.to_json().to_string().as_bytes())?;
        self.meta.remove(PRUNING_KEY)?;
        self.db.flush()?;
        Ok(removed)
    }

    /// Finishes a prune that a dead process left under way.
    fn finish_pruning(&self) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.meta.get(PRUNING_KEY)? else {
            return Ok(None);
        };
        let cut =
            ArchiveCut::from_json(&bytes).ok_or_else(|| StoreError::Corrupt(PRUNING_KEY.into()))?;
        let from = self.archive()?.map_or(0, |a| a.cut);
        // What is kept follows from records that are never pruned and from the checkpoints.
        let keep = retained_blocks(self, from, cut.cut)?;
        self.prune(cut, &keep).map(Some)
    }
}

/// Whether the store at `path` was created with sled's page compression, which sled fixes at
/// creation (its `conf` file) and refuses to change. A new store is not: its writer packs
/// records instead ([`pack`]).
fn sled_compresses(path: &Path) -> bool {
    // Not text throughout: sled ends the file with a checksum.
    std::fs::read(path.join("conf")).is_ok_and(|conf| {
        conf.split(|b| *b == b'\n')
            .any(|line| line == b"use_compression: true")
    })
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

fn decode(
    dictionaries: &Dictionaries,
    key: &[u8],
    value: &[u8],
) -> Result<StoredRecord, StoreError> {
    Ok(split_value(seq_of(key)?, &dictionaries.unpack(value)))
}

/// The audit store with its single writer. See the module documentation for the contract.
pub struct Store {
    reader: Reader,
    queue: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    origin: String,
    keys: KeyDir,
    opened: Opened,
    locks: super::LocalLocks,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, checks and recovers the head, the Merkle
    /// frontier and the latest checkpoint, records an unclean previous shutdown, and starts the
    /// writer. Blocking.
    pub fn open(path: &Path, options: &Options) -> Result<Self, StoreError> {
        Self::open_with(path, options, |driver| driver)
    }

    /// [`Self::open`], the writer's driver wrapped by `wrap` (tests put faults there).
    pub(super) fn open_with<D: Driver>(
        path: &Path,
        options: &Options,
        wrap: impl FnOnce(SledDriver) -> D,
    ) -> Result<Self, StoreError> {
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
        let replayed = reader.replay()?;
        if let Some(removed) = reader.finish_pruning()? {
            eprintln!(
                "tollgate: finished an interrupted prune of archived records ({removed} removed)"
            );
        }
        let head = reader.recover_head()?;
        let (frontier, merkle_rebuilt) = recover_frontier(&reader, head.len)?;

        let latest = reader.checkpoints.last()?;
        let mut last_time = reader.last_received_at()?.unwrap_or(0);
        let mut checkpoint_number = 0;
        let mut checkpoint_size = None;
        if let Some((key, note)) = latest {
            checkpoint_number = seq_of(&key)? + 1;
            let checkpoint = Checkpoint::of_note(&String::from_utf8_lossy(&note)).map_err(|e| {
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
        let flushed = reader.db.clone();
        let store_path = path.to_path_buf();
        let log = wal::Log::start(&reader.wal_dir(), replayed.last_generation, move || {
            make_durable(&flushed, &store_path).map_err(|e| e.to_string())
        })
        .map_err(wal_error)?;
        let driver = wrap(SledDriver {
            log,
            packing: Packing::start(&reader, options)?,
            records: reader.records.clone(),
            merkle: reader.merkle.clone(),
            checkpoints: reader.checkpoints.clone(),
            tip: Tip {
                head,
                frontier,
                last_time,
                checkpoint_size,
                checkpoint_number,
                // The interval starts when the store is opened.
                checkpoint_time: clock::now_micros().max(last_time),
            },
        });
        let mut writer = Writer {
            driver,
            sequencer: Sequencer::new(
                signer,
                origin.clone(),
                options.checkpoint_every,
                options.checkpoint_interval,
            ),
            keys: Some(options.keys.clone()),
            interval: options.checkpoint_interval,
            shared: shared.clone(),
            answer_on: tokio::runtime::Handle::try_current().ok(),
        };
        let recovery = match &unclean {
            Some(previous) => {
                let mut event = Map::new();
                event.insert("event".into(), "controlPlane.recovery".into());
                event.insert(
                    "reason".into(),
                    "the previous run did not shut down cleanly".into(),
                );
                event.insert("previousRun".into(), previous.clone());
                event.insert("records".into(), head.len.into());
                event.insert("merkleRebuilt".into(), merkle_rebuilt.into());
                // Acknowledged records that only the write-ahead log still held.
                event.insert("replayedFromLog".into(), replayed.records.into());
                event.insert(
                    "latestCheckpointSize".into(),
                    checkpoint_size.map_or(Value::Null, Value::from),
                );
                Some(Prepared::new(&event)?)
            }
            None => None,
        };

        // The writer runs on a thread of its own (its log sync blocks), in a runtime of its own.
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (started_tx, started) = std_mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(StoreError::Io(sled::Error::Io(e))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Before anyone else can append: the first record after a crash.
                    if let Some(record) = recovery {
                        if let Err(e) = writer.write(vec![record], Sign::Always).await {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    }
                    let _ = started_tx.send(Ok(()));
                    writer.run(rx).await;
                });
            })
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(StoreError::Task("the audit writer did not start".into()));
            }
        }
        Ok(Self {
            opened: Opened {
                records: head.len,
                unclean,
                merkle_rebuilt,
            },
            reader,
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            origin,
            keys: options.keys.clone(),
            locks: super::LocalLocks::default(),
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
    /// (the approvals' own trees, written through [`super::Table`], which flushes).
    pub fn db(&self) -> &sled::Db {
        &self.reader.db
    }

    /// Appends one record from a client (a JSON object); tests of this backend alone.
    #[cfg(test)]
    pub async fn append(&self, record_json: &[u8]) -> Result<Appended, StoreError> {
        let object = chain::parse_object(record_json)?;
        if object
            .get("event")
            .and_then(Value::as_str)
            .is_some_and(|e| super::CONTROL_PLANE_EVENTS.iter().any(|p| e.starts_with(p)))
        {
            return Err(StoreError::ReservedEvent);
        }
        self.append_event(&object).await
    }

    /// Appends one of the control plane's own records; tests of this backend alone.
    #[cfg(test)]
    pub async fn append_event(&self, event: &Map<String, Value>) -> Result<Appended, StoreError> {
        if event.contains_key(super::RECEIVED_AT) {
            return Err(StoreError::ReservedField);
        }
        self.append_prepared(Prepared::new(event)?).await
    }

    /// Appends a canonicalised record (see [`super::Store::append`]).
    pub(super) async fn append_prepared(&self, record: Prepared) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Append(Pending {
            record,
            reply: Some(reply),
        }))
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The in-process lock named `name` (see [`super::Store::lock`]).
    pub(super) fn local_lock(&self, name: &'static str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.get(name)
    }

    /// Signs a checkpoint over every record written so far (after the appends already queued)
    /// and returns it once it is durable.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Checkpoint(reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends `record` and signs a checkpoint whose last leaf it is (see
    /// [`super::Store::append_with_checkpoint`]).
    pub(super) async fn append_with_checkpoint(
        &self,
        record: Prepared,
    ) -> Result<(Appended, StoredCheckpoint), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::AppendAndCheckpoint { record, reply })
            .await?;
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
        let queue = self.lock_queue().clone().ok_or(StoreError::Closed)?;
        queue.send(message).await.map_err(|_| StoreError::Closed)
    }

    /// See [`super::Store::prune_archived`]; the writer goes on appending meanwhile (it writes
    /// only past the cut).
    pub fn prune_archived(
        &self,
        cut: ArchiveCut,
        keep: &std::collections::BTreeSet<u64>,
    ) -> Result<u64, StoreError> {
        if !cut.cut.is_multiple_of(1 << STORED_LEVEL) || cut.cut > self.durable_len() {
            return Err(StoreError::Range(format!(
                "cannot prune below {}: a cut is a multiple of {} within the {} durable records",
                cut.cut,
                1u64 << STORED_LEVEL,
                self.durable_len()
            )));
        }
        self.reader.prune(cut, keep)
    }

    /// Appends waiting for the writer plus those in the write under way.
    #[cfg(test)]
    fn pending(&self) -> u64 {
        let queued = self
            .lock_queue()
            .as_ref()
            .map_or(0, |queue| QUEUE_CAPACITY - queue.capacity());
        queued as u64 + self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Records from `from_seq` on, in sequence order; `limit` 0 means all.
    #[cfg(test)]
    pub fn records(&self, from_seq: u64, limit: u64) -> RecordIter {
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
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
        // The writer catches nothing; a panic there already failed its callers.
        let _ = handle.join();
        let healthy = !self.shared.failed.load(Ordering::Acquire);
        if healthy {
            self.reader.meta.remove(RUN_KEY)?;
        }
        // After a failed write the log may hold a group sled lacks: the next open replays it.
        if healthy {
            make_durable(&self.reader.db, &self.reader.path)?;
            wal::remove_all(&self.reader.wal_dir()).map_err(wal_error)?;
        } else {
            self.reader.db.flush()?;
        }
        Ok(())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Message>>> {
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

/// sled as the writer's driver: the tip in memory (this process is the only writer), a write
/// is one entry of the write-ahead log, synced, then sled inserts: records, Merkle nodes, the
/// frontier and any checkpoint.
pub(super) struct SledDriver {
    log: wal::Log,
    /// Packs records when sled does not compress them.
    packing: Option<Packing>,
    records: sled::Tree,
    merkle: sled::Tree,
    checkpoints: sled::Tree,
    tip: Tip,
}

/// The writer's packing: its [`Packer`], and the dictionary it waits for.
struct Packing {
    packer: Packer,
    /// The first records, while the store has no dictionary.
    samples: Option<Samples>,
    /// A dictionary being trained (and stored) on a thread of its own.
    training: Option<std_mpsc::Receiver<Result<Vec<u8>, String>>>,
    dictionaries: Arc<Dictionaries>,
    db: sled::Db,
    meta: sled::Tree,
    path: std::path::PathBuf,
}

impl Packing {
    /// `None` for a store sled compresses.
    fn start(reader: &Reader, options: &Options) -> Result<Option<Self>, StoreError> {
        if reader.sled_compresses {
            return Ok(None);
        }
        let mut packer = Packer::default();
        let current = reader
            .meta
            .get(DICTIONARY_KEY)?
            .and_then(|id| reader.meta.get(dictionary_key(&id)).ok().flatten());
        if let Some(dictionary) = &current {
            packer.use_dictionary(dictionary);
        }
        Ok(Some(Self {
            packer,
            samples: (current.is_none() && options.dictionary_after > 0)
                .then(|| Samples::new(options.dictionary_after)),
            training: None,
            dictionaries: reader.dictionaries.clone(),
            db: reader.db.clone(),
            meta: reader.meta.clone(),
            path: reader.path.clone(),
        }))
    }

    /// Packs every value of a write in place; samples them first while there is no dictionary.
    fn pack(&mut self, records: &mut [(u64, Vec<u8>)]) -> std::io::Result<()> {
        self.take_trained();
        for (_, value) in records.iter_mut() {
            if let Some(samples) = &mut self.samples {
                if samples.add(value) {
                    self.train();
                }
            }
            *value = self.packer.pack(value)?;
        }
        Ok(())
    }

    /// Trains a dictionary on the samples off the writer's thread, and stores it durably
    /// before the writer packs with it: a logged record must never name a dictionary that a
    /// crash could lose.
    fn train(&mut self) {
        let Some(samples) = self.samples.take() else {
            return;
        };
        let (done, training) = std_mpsc::channel();
        let (db, meta, path) = (self.db.clone(), self.meta.clone(), self.path.clone());
        let spawned = std::thread::Builder::new()
            .name("audit-dictionary".into())
            .spawn(move || {
                let stored = samples
                    .train()
                    .map_err(|e| e.to_string())
                    .and_then(|dictionary| {
                        let id = zstd::zstd_safe::get_dict_id_from_dict(&dictionary);
                        if id == 0 {
                            return Err("the trained dictionary has no id".into());
                        }
                        meta.insert(dictionary_key(&id.to_be_bytes()), &dictionary[..])
                            .and_then(|_| meta.insert(DICTIONARY_KEY, &id.to_be_bytes()))
                            .map_err(|e| e.to_string())?;
                        make_durable(&db, &path).map_err(|e| e.to_string())?;
                        Ok(dictionary)
                    });
                let _ = done.send(stored);
            });
        match spawned {
            Ok(_) => self.training = Some(training),
            Err(e) => eprintln!("tollgate: could not start training a dictionary: {e}"),
        }
    }

    /// Packs with the trained dictionary once it is stored.
    fn take_trained(&mut self) {
        let Some(training) = &self.training else {
            return;
        };
        let stored = match training.try_recv() {
            Ok(stored) => stored,
            Err(std_mpsc::TryRecvError::Empty) => return,
            Err(std_mpsc::TryRecvError::Disconnected) => Err("its thread ended".into()),
        };
        self.training = None;
        match stored {
            Ok(dictionary) => {
                self.dictionaries.add(&dictionary);
                self.packer.use_dictionary(&dictionary);
            }
            // Records are still packed, only larger.
            Err(e) => eprintln!(
                "tollgate: no dictionary for the audit store ({e}): records are packed without one"
            ),
        }
    }
}

impl Driver for SledDriver {
    async fn write<'a>(&'a mut self, plan: Plan<'a>) -> Result<Committed, StoreError> {
        let Some(mut write) = plan(&self.tip, clock::now_micros()) else {
            return Ok(Committed {
                write: None,
                durable: Duration::ZERO,
            });
        };
        let frontier = write.tip.frontier.encode();
        if let Some(packing) = &mut self.packing {
            packing.pack(&mut write.records).map_err(wal_error)?;
        }
        let start = Instant::now();
        self.log
            .append(
                &write.records,
                &write.nodes,
                &frontier,
                write
                    .checkpoint
                    .as_ref()
                    .map(|c| (c.number, c.note.as_str())),
            )
            .map_err(wal_error)?;
        let durable = start.elapsed();
        // Readers see a record only once it is durable. Plain inserts, not sled batches: a
        // batch makes sled write and `sync_file_range` its buffer twice (most of sled's I/O
        // threads' CPU per call), and the log already makes the group atomic. Whatever of the
        // inserts a crash leaves, replay completes from the log, record by record, and the
        // frontier goes last.
        for (seq, value) in std::mem::take(&mut write.records) {
            self.records.insert(seq.to_be_bytes(), value)?;
        }
        for (level, index, hash) in &write.nodes {
            self.merkle.insert(node_key(*level, *index), &hash[..])?;
        }
        self.merkle.insert(FRONTIER_KEY, frontier)?;
        if let Some(checkpoint) = &write.checkpoint {
            self.checkpoints
                .insert(checkpoint.number.to_be_bytes(), checkpoint.note.as_bytes())?;
        }
        self.tip = write.tip.clone();
        Ok(Committed {
            write: Some(write),
            durable,
        })
    }

    /// After a failed log write or sled write the store cannot say what reached the disk: a
    /// restart recovers from what did.
    fn failure_is_final(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
