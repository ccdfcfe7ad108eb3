//! The audit store: hash-chained canonical JSON records in sled.
//!
//! # Contract
//!
//! - [`Store::append`] MUST return `Ok` only after the record, its sequence number and its chain
//!   hash are durable: they were written and sled's `flush` returned afterwards. An `Err` means
//!   the record MUST be treated as not written: it is never acknowledged, although it may be
//!   found after a restart if the failure struck after the write reached the disk.
//! - Sequence numbers MUST be assigned densely from 0 in the order records are written, and MUST
//!   NOT be reused: after a restart appends continue after the last durable record.
//! - A stored record MUST be the RFC 8785 form of the submitted JSON object plus `receivedAt`
//!   (this control plane's receive time, RFC 3339 UTC with microseconds), and its chain hash
//!   MUST be `SHA-256(previous hash || stored bytes)`, the first record chained onto 32 zero
//!   bytes.
//! - `append` MUST reject a body that is not a JSON object or that already sets `receivedAt`,
//!   storing nothing. Errors MUST NOT quote the body: it may hold sensitive data.
//! - Concurrent appends MUST share flushes (group commit): one writer thread takes every pending
//!   append, writes them in one atomic batch, flushes once and then answers them all.
//! - After a failed write or flush the store MUST refuse every later append, because it cannot
//!   tell what reached the disk; a restart recovers from what is durable.
//! - Records MUST NOT be changed or removed through this module.
//!
//! # Layout
//!
//! Tree `records`: key = sequence number as 8 bytes big-endian (so sled's order is sequence
//! order), value = 32-byte chain hash followed by the canonical JSON bytes. Tree `meta`: key
//! `format` = `1`. Later trees (checkpoints, Merkle nodes) go beside these.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::chain::{self, CanonicalError, Hash, StoredRecord, GENESIS};

/// The field the store adds to every record.
pub const RECEIVED_AT: &str = "receivedAt";

const RECORDS_TREE: &str = "records";
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"1";

/// Appends waiting for the writer; callers wait (backpressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;
/// Most records in one batch; bounds the memory of one group and the latency it adds.
const MAX_GROUP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Record(#[from] CanonicalError),
    #[error("record must not set \"receivedAt\": the control plane adds it")]
    ReservedField,
    #[error("no audit store at {0}")]
    NotFound(PathBuf),
    #[error("cannot open audit store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("audit store has unsupported format {0:?}")]
    Format(String),
    #[error("stored record at key {0} is malformed")]
    Corrupt(String),
    #[error("audit store i/o failed: {0}")]
    Io(#[from] sled::Error),
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

/// Read access to a store, without a writer. `tollgate audit verify` uses it when no server
/// runs; it must not trust the head, so opening does not recover or check anything.
pub struct Reader {
    db: sled::Db,
    records: sled::Tree,
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
        let db = sled::Config::new().path(path).open().map_err(open_error)?;
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
        let records = db.open_tree(RECORDS_TREE)?;
        Ok(Self { db, records })
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

/// One append waiting for the writer.
struct Pending {
    canonical: Vec<u8>,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// State shared between the store handle and its writer thread.
#[derive(Default)]
struct Shared {
    failed: AtomicBool,
    /// Records known durable: set after a flush returned, before its appends are answered.
    durable_len: AtomicU64,
    flushes: AtomicU64,
    /// Tests hold this to keep the writer from draining, so a group's size is deterministic.
    #[cfg(test)]
    gate: Mutex<()>,
    /// Tests set this to make the next flush fail.
    #[cfg(test)]
    fail_next_flush: AtomicBool,
}

/// The audit store with its single writer. See the module documentation for the contract.
pub struct Store {
    reader: Reader,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, recovers the head and starts the writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let reader = Reader::open_or_create(path)?;
        let head = reader.recover_head()?;
        let shared = Arc::new(Shared {
            durable_len: AtomicU64::new(head.len),
            ..Shared::default()
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db: reader.db.clone(),
            records: reader.records.clone(),
            head,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        Ok(Self {
            reader,
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
        })
    }

    /// Appends one record (a JSON object); see the contract for what `Ok` promises.
    pub async fn append(&self, record_json: &[u8]) -> Result<Appended, StoreError> {
        let mut object = chain::parse_object(record_json)?;
        if object.contains_key(RECEIVED_AT) {
            return Err(StoreError::ReservedField);
        }
        object.insert(RECEIVED_AT.into(), now_rfc3339_micros().into());
        // Canonicalised here, on the caller's task, so the single writer only hashes and writes.
        let canonical = chain::canonicalise(&object)?;
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let queue = self.lock_queue().clone().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { canonical, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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

    /// Stops taking appends, lets the writer answer those already queued, and flushes.
    /// Blocks until done; calling it again does nothing more.
    pub fn close(&self) -> Result<(), StoreError> {
        drop(self.lock_queue().take());
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // The writer catches nothing; a panic there already failed its callers.
            let _ = handle.join();
        }
        self.reader.db.flush()?;
        Ok(())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Pending>>> {
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

/// The single writer: owns the head, so sequence numbers and hashes need no lock.
struct Writer {
    db: sled::Db,
    records: sled::Tree,
    head: Head,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Pending>) {
        while let Some(first) = queue.blocking_recv() {
            #[cfg(test)]
            let gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(pending) => group.push(pending),
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            drop(gate);
            self.commit(group);
        }
    }

    fn commit(&mut self, group: Vec<Pending>) {
        if self.shared.failed.load(Ordering::Acquire) {
            for pending in group {
                let _ = pending.reply.send(Err(StoreError::Failed));
            }
            return;
        }
        let mut batch = sled::Batch::default();
        let mut head = self.head;
        let mut acks = Vec::with_capacity(group.len());
        for pending in &group {
            let hash = chain::chain(&head.hash, &pending.canonical);
            let mut value = Vec::with_capacity(32 + pending.canonical.len());
            value.extend_from_slice(&hash);
            value.extend_from_slice(&pending.canonical);
            batch.insert(&head.len.to_be_bytes(), value);
            acks.push(Appended {
                seq: head.len,
                chain_hash: hash,
            });
            head = Head {
                len: head.len + 1,
                hash,
            };
        }
        match self.records.apply_batch(batch).and_then(|()| self.flush()) {
            Ok(()) => {
                self.head = head;
                self.shared.durable_len.store(head.len, Ordering::Release);
                self.shared.flushes.fetch_add(1, Ordering::AcqRel);
                for (pending, ack) in group.into_iter().zip(acks) {
                    // A caller that went away still has its record stored; nothing to undo.
                    let _ = pending.reply.send(Ok(ack));
                }
            }
            Err(e) => {
                self.shared.failed.store(true, Ordering::Release);
                eprintln!("tollgate: audit store write failed, refusing further appends: {e}");
                for pending in group {
                    let _ = pending.reply.send(Err(StoreError::Failed));
                }
            }
        }
    }

    fn flush(&self) -> sled::Result<()> {
        #[cfg(test)]
        if self.shared.fail_next_flush.swap(false, Ordering::AcqRel) {
            return Err(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            )));
        }
        self.db.flush()?;
        Ok(())
    }
}

/// Now, RFC 3339 UTC with microseconds, e.g. `2025-01-31T12:00:00.123456Z`.
pub fn now_rfc3339_micros() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Verifier;

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("audit.sled")).unwrap();
        (dir, store)
    }

    fn verify(store: &Store) -> (u64, Hash) {
        let mut verifier = Verifier::new();
        for record in store.records(0, 0) {
            verifier.check(&record.unwrap()).unwrap();
        }
        (verifier.count(), verifier.head())
    }

    #[tokio::test]
    async fn appends_get_dense_sequence_numbers_and_a_verifiable_chain() {
        let (_dir, store) = temp_store();
        let mut previous = GENESIS;
        for n in 0..5u64 {
            let ack = store
                .append(format!(r#"{{"n":{n},"event":"test"}}"#).as_bytes())
                .await
                .unwrap();
            assert_eq!(ack.seq, n);
            let stored = store.records(n, 1).next().unwrap().unwrap();
            assert_eq!(
                ack.chain_hash,
                chain::chain(&previous, &stored.canonical_json)
            );
            previous = ack.chain_hash;
        }
        assert_eq!(verify(&store), (5, previous));
    }

    #[tokio::test]
    async fn stored_record_is_canonical_and_carries_received_at() {
        let (_dir, store) = temp_store();
        store.append(br#"{ "z": 1.50, "a": "x" }"#).await.unwrap();
        let stored = store.records(0, 0).next().unwrap().unwrap();
        let text = String::from_utf8(stored.canonical_json).unwrap();
        let object: serde_json::Value = serde_json::from_str(&text).unwrap();
        let received = object[RECEIVED_AT].as_str().unwrap();
        humantime::parse_rfc3339(received).unwrap();
        assert_eq!(received.len(), "2025-01-31T12:00:00.123456Z".len());
        assert!(received.ends_with('Z'));
        assert_eq!(
            text,
            format!(r#"{{"a":"x","receivedAt":"{received}","z":1.5}}"#)
        );
    }

    #[tokio::test]
    async fn rejects_bad_bodies_without_storing_or_quoting_them() {
        let (_dir, store) = temp_store();
        for body in [
            &b"[1,2]"[..],
            b"\"4111111111111111\"",
            b"{\"pan\":\"4111111111111111\"",
            b"",
            b"\xff",
        ] {
            let err = store.append(body).await.unwrap_err();
            assert!(matches!(err, StoreError::Record(_)), "{err}");
            assert!(!err.to_string().contains("4111"));
        }
        let err = store
            .append(br#"{"receivedAt":"yesterday"}"#)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ReservedField));
        assert_eq!(store.records(0, 0).count(), 0);
        assert_eq!(store.append(b"{}").await.unwrap().seq, 0);
    }

    #[tokio::test]
    async fn reopening_recovers_the_head_and_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sled");
        let last = {
            let store = Store::open(&path).unwrap();
            for _ in 0..3 {
                store.append(b"{}").await.unwrap();
            }
            store.append(b"{}").await.unwrap()
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.durable_len(), 4);
        let next = store.append(b"{}").await.unwrap();
        assert_eq!(next.seq, 4);
        let stored = store.records(4, 1).next().unwrap().unwrap();
        assert_eq!(
            next.chain_hash,
            chain::chain(&last.chain_hash, &stored.canonical_json)
        );
        assert_eq!(verify(&store).0, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_one_flush() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        const N: usize = 64;
        let flushes_before = store.flushes();
        let gate = store.shared.gate.lock().unwrap();
        let tasks: Vec<_> = (0..N)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.append(format!(r#"{{"n":{n}}}"#).as_bytes()).await },
                )
            })
            .collect();
        // The writer takes one append, then waits at the gate; the rest queue up behind it.
        let queue = store.lock_queue().clone().unwrap();
        while queue.max_capacity() - queue.capacity() < N - 1 {
            // A blocking wait: the appends run on the runtime's workers, not on this thread.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(gate);
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap().seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..N as u64).collect::<Vec<_>>());
        assert_eq!(store.flushes() - flushes_before, 1);
        assert_eq!(verify(&store).0, N as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_records_are_durable_before_the_answer() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let ack = store.append(b"{}").await.unwrap();
                    // durable_len is only raised after flush returned, before any answer.
                    assert!(store.durable_len() > ack.seq);
                    ack.seq
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.durable_len(), 200);
        assert!(store.flushes() <= 200);
    }

    #[tokio::test]
    async fn a_failed_flush_is_not_acknowledged_and_fails_the_store() {
        let (_dir, store) = temp_store();
        store.append(b"{}").await.unwrap();
        store.shared.fail_next_flush.store(true, Ordering::Release);
        assert!(matches!(store.append(b"{}").await, Err(StoreError::Failed)));
        assert_eq!(store.durable_len(), 1);
        assert!(matches!(store.append(b"{}").await, Err(StoreError::Failed)));
    }

    #[tokio::test]
    async fn closing_answers_queued_appends_and_refuses_new_ones() {
        let (_dir, store) = temp_store();
        store.append(b"{}").await.unwrap();
        store.close().unwrap();
        store.close().unwrap();
        assert!(matches!(store.append(b"{}").await, Err(StoreError::Closed)));
    }

    #[tokio::test]
    async fn reader_returns_malformed_values_for_the_verifier_to_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sled");
        {
            let store = Store::open(&path).unwrap();
            for _ in 0..3 {
                store.append(b"{}").await.unwrap();
            }
            // Tamper through sled itself, as someone with access to the files could.
            store
                .reader
                .records
                .insert(1u64.to_be_bytes(), &b"short"[..])
                .unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        let mut verifier = Verifier::new();
        let broken = reader
            .records(0, 0)
            .map(|r| verifier.check(&r.unwrap()))
            .find_map(Result::err)
            .unwrap();
        assert_eq!(broken.seq, 1);
        assert!(Reader::open(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn tampering_in_sled_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sled");
        let store = Store::open(&path).unwrap();
        for n in 0..6 {
            store
                .append(format!(r#"{{"sub":"alice","n":{n}}}"#).as_bytes())
                .await
                .unwrap();
        }
        let tree = store.reader.records.clone();
        let first_break = |tree: &sled::Tree| {
            let mut verifier = Verifier::new();
            tree.iter()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    decode(&k, &v).unwrap()
                })
                .map(|r| verifier.check(&r))
                .find_map(Result::err)
                .map(|b| b.seq)
        };
        assert_eq!(first_break(&tree), None);
        let key = |n: u64| n.to_be_bytes();
        let original: Vec<_> = (0..6).map(|n| tree.get(key(n)).unwrap().unwrap()).collect();

        // A changed byte in a record.
        let mut changed = original[2].to_vec();
        let pos = changed.windows(5).position(|w| w == b"alice").unwrap();
        changed[pos] = b'A';
        tree.insert(key(2), changed).unwrap();
        assert_eq!(first_break(&tree), Some(2));
        tree.insert(key(2), original[2].clone()).unwrap();

        // A deleted record.
        tree.remove(key(3)).unwrap();
        assert_eq!(first_break(&tree), Some(3));
        tree.insert(key(3), original[3].clone()).unwrap();

        // Two swapped records.
        tree.insert(key(4), original[1].clone()).unwrap();
        tree.insert(key(1), original[4].clone()).unwrap();
        assert_eq!(first_break(&tree), Some(1));
        tree.insert(key(1), original[1].clone()).unwrap();
        tree.insert(key(4), original[4].clone()).unwrap();

        assert_eq!(first_break(&tree), None);
    }
}
