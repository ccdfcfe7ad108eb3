//! Retention: sealing the oldest records into archive segments, pruning them from the hot
//! store, and reading the segments back.
//!
//! A segment is an export bundle (`tollgate_log::bundle`, format 2) of one range of records,
//! every record of the range whole, zstd-compressed: `segment-<from>-<to>.bundle.zst` for the
//! records `[from, to)`. It carries the same proofs as any bundle (the leaves up to its own
//! signed checkpoint), so `tollgate-verify` checks one offline, and its filter names the range,
//! which the verifier holds it to. Beside it, `segment-<from>-<to>.json` says when its records
//! were written, for retention only; nothing is trusted from it.
//!
//! Archiving, in order, each step durable before the next:
//! 1. the records `[previous cut, cut)` are read once, their chain checked from the previous
//!    cut's chain hash (an archive of a broken chain is refused);
//! 2. each segment is exported (its `controlPlane.auditExport` record and checkpoint are in
//!    the chain), written to a temporary file, synced, verified with the log's keys, renamed;
//! 3. a `controlPlane.auditArchived` record lists the segments, their SHA-256 and the chain
//!    hash at the cut;
//! 4. the hot store prunes the records below the cut, except [`store::retained_blocks`].
//!
//! A crash before 4 leaves the records in the hot store (the segments are written again by the
//! next run); a crash during 4 is finished at the next open.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tollgate_log::bundle::{self as log_bundle, Trust, FROM_SEQ, TO_SEQ};
use tollgate_log::key_history::KEY_ROTATED;
use tollgate_log::verify::Finding;

use crate::bundle::{self, By, Picked, Selected};
use crate::chain::{self, Hash, StoredRecord, GENESIS};
use crate::clock::{self, Micros};
use crate::merkle;
use crate::note::NoteVerifier;
use crate::store::{self, ArchiveCut, Reads, Store, StoreError, RECEIVED_AT, STORED_LEVEL};

/// The `event` of the record that lists what an archive run sealed.
pub const ARCHIVED_EVENT: &str = "controlPlane.auditArchived";
/// The `event` of the record of segments deleted once their retention ended.
pub const EXPIRED_EVENT: &str = "controlPlane.archiveExpired";
/// Records per segment unless told otherwise: 2^20, about 300 MB of JSON before compression.
pub const SEGMENT_RECORDS: u64 = 1 << 20;
/// zstd level for segments: they are written once and kept a year, so a little more CPU than
/// the hot store's level 1 buys a smaller archive.
const ZSTD_LEVEL: i32 = 6;
const BLOCK: u64 = 1 << STORED_LEVEL;

/// `serve` options: where archive segments go and how long records are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// Directory for archive segments (point it at durable storage). With it, records older
    /// than --retain-online are sealed into verifiable segments there and pruned from the hot
    /// store, and segments older than --retain-archived are deleted; each run is recorded in
    /// the chain. Without it nothing is archived or pruned.
    #[arg(long, env = "TOLLGATE_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    /// How long records stay in the hot store (PCI DSS 10.5.1: three months immediately
    /// available).
    #[arg(long, env = "TOLLGATE_RETAIN_ONLINE", default_value = "90days", value_parser = humantime::parse_duration)]
    pub retain_online: Duration,
    /// How long archived records are kept, counted from when they were written (PCI DSS
    /// 10.5.1: at least twelve months).
    #[arg(long, env = "TOLLGATE_RETAIN_ARCHIVED", default_value = "365days", value_parser = humantime::parse_duration)]
    pub retain_archived: Duration,
    /// How often retention is enforced.
    #[arg(long, env = "TOLLGATE_RETENTION_CHECK", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention_check: Duration,
    /// Records per archive segment (rounded down to a multiple of 16).
    #[arg(long, env = "TOLLGATE_ARCHIVE_SEGMENT_RECORDS", default_value_t = SEGMENT_RECORDS)]
    pub archive_segment_records: u64,
}

/// Retention as a running control plane enforces it.
#[derive(Debug, Clone)]
pub struct Retention {
    pub dir: PathBuf,
    pub online: Duration,
    pub archived: Duration,
    pub check: Duration,
    pub segment_records: u64,
}

impl RetentionSettings {
    /// The retention to enforce, if an archive directory is set; archived records must be kept
    /// at least as long as online ones.
    pub fn retention(&self) -> anyhow::Result<Option<Retention>> {
        let Some(dir) = &self.archive_dir else {
            return Ok(None);
        };
        if self.retain_archived < self.retain_online {
            anyhow::bail!(
                "--retain-archived ({}) is shorter than --retain-online ({}): archived records would be deleted before they leave the hot store",
                humantime::format_duration(self.retain_archived),
                humantime::format_duration(self.retain_online)
            );
        }
        Ok(Some(Retention {
            dir: dir.clone(),
            online: self.retain_online,
            archived: self.retain_archived,
            check: self.retention_check.max(Duration::from_secs(1)),
            segment_records: self.archive_segment_records.max(BLOCK),
        }))
    }
}

impl Retention {
    pub fn to_json(&self) -> Value {
        json!({
            "archiveDir": self.dir.display().to_string(),
            "online": humantime::format_duration(self.online).to_string(),
            "archived": humantime::format_duration(self.archived).to_string(),
            "segmentRecords": self.segment_records,
        })
    }
}

/// Enforces `retention` every `retention.check`, from the first check on: archives what is
/// older than the online period, then deletes segments older than the archive period. A
/// failed run is logged and tried again at the next check; it never prunes anything.
pub fn spawn_retention(
    store: Arc<Store>,
    retention: Arc<Retention>,
    witnesses: Option<Arc<crate::witness::Witnesses>>,
) {
    tokio::spawn(async move {
        let operator = crate::operator::Operator::control_plane("retention");
        let by = By {
            operator: &operator,
            via: "retention",
            witnesses: witnesses.as_deref(),
        };
        let mut ticks = tokio::time::interval(retention.check);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = clock::now_micros();
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let before = now.saturating_sub(micros(retention.online));
            match archive(
                &store,
                &retention.dir,
                before,
                retention.segment_records,
                &by,
            )
            .await
            {
                Ok(outcome) if outcome.to > outcome.from => eprintln!(
                    "tollgate: retention: archived records {}..{} into {} segment(s), pruned {}",
                    outcome.from,
                    outcome.to,
                    outcome.segments.len(),
                    outcome.pruned
                ),
                Ok(_) => {}
                Err(e) => eprintln!("tollgate: retention: archiving failed, nothing pruned: {e}"),
            }
            let expire_before = now.saturating_sub(micros(retention.archived));
            match expire(&store, &retention.dir, expire_before, &by).await {
                Ok(expired) if !expired.is_empty() => eprintln!(
                    "tollgate: retention: deleted {} archive segment(s) past {}",
                    expired.len(),
                    humantime::format_duration(retention.archived)
                ),
                Ok(_) => {}
                Err(e) => eprintln!("tollgate: retention: expiring segments failed: {e}"),
            }
        }
    });
}

/// Hands `each` the stored subtree hash of every block of 2^[`STORED_LEVEL`] records below the
/// archive cut, in order (nothing when nothing was archived); `each` returns false to stop.
pub fn archived_nodes(
    reader: &dyn Reads,
    mut each: impl FnMut(&Hash) -> bool,
) -> Result<(), StoreError> {
    let Some(cut) = reader.archive()? else {
        return Ok(());
    };
    for index in 0..cut.cut >> STORED_LEVEL {
        let hash = reader.subtree(STORED_LEVEL, index)?;
        if !each(&hash) {
            break;
        }
    }
    Ok(())
}

/// What an archive run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The cut before and after the run; equal when there was nothing old enough.
    pub from: u64,
    pub to: u64,
    pub segments: Vec<Value>,
    /// Records removed from the hot store, and records kept below the cut.
    pub pruned: u64,
    pub kept: u64,
    /// The `controlPlane.auditArchived` record's sequence number.
    pub record: Option<u64>,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        json!({
            "fromSeq": self.from,
            "toSeq": self.to,
            "segments": self.segments,
            "pruned": self.pruned,
            "kept": self.kept,
            "record": self.record,
        })
    }
}

/// Seals every record written before `before` (rounded down to a block of
/// 2^[`STORED_LEVEL`] records) into segments of at most `segment_records` in `dir`, records
/// the archive and prunes the hot store. Runs while the store takes appends.
pub async fn archive(
    store: &Arc<Store>,
    dir: &Path,
    before: Micros,
    segment_records: u64,
    by: &By<'_>,
) -> Result<Outcome, StoreError> {
    if store.shared() {
        return Err(StoreError::Unsupported(
            "archiving is not supported on the postgres store yet: keep its records in the \
             database and export bundles for the auditor (docs/postgres.md)"
                .into(),
        ));
    }
    let segment_records = segment_records.max(BLOCK) / BLOCK * BLOCK;
    // One run at a time (the retention task, an operator's `tollgate audit archive`).
    let _running = store.lock("archive").await?;
    std::fs::create_dir_all(dir)?;
    let reader_store = store.clone();
    let (previous, cut) = blocking(move || {
        let reader = reader_store.reader();
        let previous = reader.archive()?;
        let from = previous.map_or(0, |a| a.cut);
        let first_newer = first_record_at_or_after(reader, from, before)?;
        Ok((previous, first_newer / BLOCK * BLOCK))
    })
    .await?;
    let from = previous.map_or(0, |a| a.cut);
    let mut outcome = Outcome {
        from,
        to: from,
        ..Outcome::default()
    };
    if cut <= from {
        return Ok(outcome);
    }
    let keys = store.verifiers()?;
    let mut chain_head = previous.map_or(GENESIS, |a| a.chain_hash);
    let mut rotations = KeyRotations::default();
    let mut start = from;
    while start < cut {
        let end = (start + segment_records).min(cut);
        let (picked, head, last_time) = {
            let store = store.clone();
            let scan = std::mem::take(&mut rotations);
            let (picked, head, last_time, scan) = blocking(move || {
                let mut scan = scan;
                let (picked, head, last_time) =
                    pick_range(store.reader(), start, end, chain_head, &mut scan)?;
                Ok((picked, head, last_time, scan))
            })
            .await?;
            rotations = scan;
            (picked, head, last_time)
        };
        chain_head = head;
        let range = Range {
            from: start,
            to: end,
            picked,
            last_time,
        };
        let segment = write_segment(store, dir, range, by, &keys).await?;
        outcome.segments.push(segment);
        start = end;
    }

    let anchor = ArchiveCut {
        cut,
        chain_hash: chain_head,
    };
    let reader_store = store.clone();
    let keep = blocking(move || store::retained_blocks(reader_store.reader(), from, cut)).await?;
    let kept_records = keep.len() as u64 * BLOCK;
    let mut event = Map::new();
    event.insert("event".into(), ARCHIVED_EVENT.into());
    event.insert("fromSeq".into(), from.into());
    event.insert("toSeq".into(), cut.into());
    event.insert("chainHashAtCut".into(), hex::encode(chain_head).into());
    event.insert("segments".into(), outcome.segments.clone().into());
    event.insert("keptRecords".into(), kept_records.into());
    event.insert("before".into(), clock::format(before).into());
    event.insert("operator".into(), by.operator.to_json());
    event.insert("via".into(), by.via.into());
    let appended = store.append_event(&event).await?;
    let prune_store = store.clone();
    let pruned = blocking(move || prune_store.prune_archived(anchor, &keep)).await?;
    outcome.to = cut;
    outcome.pruned = pruned;
    outcome.kept = kept_records.min(cut - from);
    outcome.record = Some(appended.seq);
    Ok(outcome)
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// The first record at or after `from` whose `receivedAt` is `before` or later (the log's
/// length when none is): `receivedAt` never decreases, so a binary search over the hot
/// records finds it.
fn first_record_at_or_after(
    reader: &dyn Reads,
    from: u64,
    before: Micros,
) -> Result<u64, StoreError> {
    let time_of = |seq: u64| -> Result<Micros, StoreError> {
        let record = reader
            .records(seq, 1)
            .next()
            .ok_or_else(|| StoreError::Inconsistent(format!("record {seq} is missing")))??;
        if record.seq != seq {
            return Err(StoreError::Inconsistent(format!("record {seq} is missing")));
        }
        received_at(&record.canonical_json).ok_or_else(|| StoreError::Corrupt(seq.to_string()))
    };
    let (mut low, mut high) = (from, reader.len()?);
    while low < high {
        let middle = low + (high - low) / 2;
        if time_of(middle)? < before {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

fn received_at(canonical_json: &[u8]) -> Option<Micros> {
    let object: Map<String, Value> = serde_json::from_slice(canonical_json).ok()?;
    clock::parse(object.get(RECEIVED_AT)?.as_str()?)
}

/// The key rotations of the log, found by scanning it once and then only what was added.
#[derive(Default)]
struct KeyRotations {
    scanned_to: u64,
    seqs: Vec<u64>,
}

impl KeyRotations {
    fn update(&mut self, reader: &dyn Reads) -> Result<(), StoreError> {
        for record in reader.records(self.scanned_to, 0) {
            let record = record?;
            self.scanned_to = record.seq + 1;
            let json = &record.canonical_json;
            if tollgate_log::key_history::may_be_rotation(json)
                && serde_json::from_slice::<Value>(json)
                    .is_ok_and(|v| v.get("event").and_then(Value::as_str) == Some(KEY_ROTATED))
            {
                self.seqs.push(record.seq);
            }
        }
        Ok(())
    }
}

/// Reads the records `[start, end)` as a segment selects them, checking that they chain onto
/// `head`. Returns the selection, the chain hash of record `end - 1` and its time.
fn pick_range(
    reader: &dyn Reads,
    start: u64,
    end: u64,
    head: Hash,
    rotations: &mut KeyRotations,
) -> Result<(Picked, Hash, Micros), StoreError> {
    let mut check = chain::Verifier::resume(start, head);
    let mut picked = Picked::default();
    let mut last_time = 0;
    for record in reader.records(start, end - start) {
        let record = record?;
        if let Err(broken) = check.check(&record) {
            return Err(StoreError::Inconsistent(format!(
                "record {}: {}; nothing was archived",
                broken.seq, broken.problem
            )));
        }
        if record.seq + 1 == end {
            last_time = received_at(&record.canonical_json).unwrap_or(0);
        }
        picked.records.push(Selected {
            seq: record.seq,
            leaf: merkle::leaf_hash(&record.canonical_json),
        });
    }
    if check.count() != end {
        return Err(StoreError::Inconsistent(format!(
            "record {} is missing; nothing was archived",
            check.count()
        )));
    }
    rotations.update(reader)?;
    picked.key_records = rotations.seqs.clone();
    Ok((picked, check.head(), last_time))
}

/// Counts and hashes what passes through, on its way to the file.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A writer handed to the export while this module keeps a handle to finish it afterwards.
struct Shared<W>(Arc<std::sync::Mutex<W>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("the segment writer panicked"))?
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("the segment writer panicked"))?
            .flush()
    }
}

/// The file name of the segment of records `[from, to)`.
pub fn segment_name(from: u64, to: u64) -> String {
    format!("segment-{from:020}-{to:020}.bundle.zst")
}

/// The records of one segment, `[from, to)`, as picked, and when the last was written.
struct Range {
    from: u64,
    to: u64,
    picked: Picked,
    last_time: Micros,
}

/// Exports, writes, syncs and verifies one segment; returns its entry for the archive record.
async fn write_segment(
    store: &Arc<Store>,
    dir: &Path,
    range: Range,
    by: &By<'_>,
    keys: &[NoteVerifier],
) -> Result<Value, StoreError> {
    let Range {
        from,
        to,
        picked,
        last_time,
    } = range;
    let name = segment_name(from, to);
    let path = dir.join(&name);
    let partial = dir.join(format!("{name}.partial"));
    let file = std::fs::File::create(&partial)?;
    let hashing = Hashing {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let encoder = Arc::new(std::sync::Mutex::new(zstd::stream::write::Encoder::new(
        hashing, ZSTD_LEVEL,
    )?));
    let filter = json!({FROM_SEQ: from.to_string(), TO_SEQ: to.to_string()});
    let mut extra = Map::new();
    extra.insert("purpose".into(), "archive".into());
    let (records, out) = bundle::export_picked(
        store,
        picked,
        filter,
        extra,
        by,
        Box::new(Shared(encoder.clone())),
    )
    .await?;
    drop(out);
    // The export is done with the writer: finish the frame, then sync the file.
    let encoder = Arc::try_unwrap(encoder)
        .map_err(|_| StoreError::Task("the segment writer is still in use".into()))?
        .into_inner()
        .map_err(|_| StoreError::Task("the segment writer panicked".into()))?;
    let mut hashing = encoder.finish()?;
    hashing.flush()?;
    let digest: Hash = hashing.hasher.finalize().into();
    let bytes = hashing.bytes;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| StoreError::Write(e.into_error()))?;
    file.sync_all()?;
    drop(file);

    // Never prune what does not verify: read the segment back with the log's own keys.
    let report = {
        let (partial, keys) = (partial.clone(), keys.to_vec());
        blocking(move || {
            let input = log_bundle::decompressed(std::fs::File::open(&partial)?)?;
            log_bundle::verify(input, &Trust::Keys(&keys), &log_bundle::Options::default())
                .map_err(|e| StoreError::Task(format!("reading the segment back: {e}")))
        })
        .await?
    };
    if !report.intact() {
        let first = report
            .first()
            .map_or_else(|| "unauthenticated".to_string(), |f| f.problem.clone());
        return Err(StoreError::Inconsistent(format!(
            "segment {name} does not verify ({first}); nothing was pruned"
        )));
    }
    std::fs::rename(&partial, &path)?;
    let entry = json!({
        "file": name,
        "fromSeq": from,
        "toSeq": to,
        "records": records,
        "bytes": bytes,
        "sha256": hex::encode(digest),
        "checkpointSize": report.latest.as_ref().map(|l| l.checkpoint.size),
        "lastReceivedAt": clock::format(last_time),
    });
    std::fs::write(
        dir.join(name.replace(".bundle.zst", ".json")),
        format!("{entry}\n"),
    )?;
    sync_dir(dir)?;
    Ok(entry)
}

/// Makes the directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A segment file found in an archive directory.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub from: u64,
    pub to: u64,
}

/// The segments in `dir`, in order of their ranges (by their names; their contents are what
/// verification checks).
pub fn segments(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(range) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".bundle.zst"))
        else {
            continue;
        };
        let Some((from, to)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(from), Ok(to)) = (from.parse(), to.parse()) {
            found.push(SegmentFile {
                path: entry.path(),
                from,
                to,
            });
        }
    }
    found.sort_by_key(|s| (s.from, s.to));
    Ok(found)
}

/// What checking an archive directory against the log found.
#[derive(Debug, Default)]
pub struct ArchiveCheck {
    pub segments: usize,
    pub records: u64,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

/// Verifies every segment in `dir` with `keys` (each a bundle whose filter names its range),
/// that they follow one another up to the hot store's `cut`, and, from the first record of
/// the log, that their records chain to the cut's chain hash.
pub fn check_archive(dir: &Path, keys: &[NoteVerifier], cut: Option<ArchiveCut>) -> ArchiveCheck {
    let mut check = ArchiveCheck::default();
    let found = match segments(dir) {
        Ok(found) => found,
        Err(e) => {
            check.findings.push(Finding::log(format!(
                "cannot read the archive {}: {e}",
                dir.display()
            )));
            return check;
        }
    };
    let cut_at = cut.map_or(0, |c| c.cut);
    let Some(first) = found.first() else {
        if cut_at > 0 {
            check.findings.push(Finding::at(
                0,
                format!(
                    "the archive {} holds no segment, but records 0..{cut_at} were archived",
                    dir.display()
                ),
            ));
        }
        return check;
    };
    if first.from > 0 {
        check.notes.push(format!(
            "records 0..{}: no segment in the archive (expired under retention, or kept elsewhere)",
            first.from
        ));
    }
    // The chain is recomputed only from the log's first record; after a gap, the tree alone
    // (each segment's signed checkpoint) vouches for the records.
    let mut head = (first.from == 0).then_some(GENESIS);
    let mut expected = first.from;
    for segment in &found {
        let name = segment
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        check.segments += 1;
        if segment.from != expected {
            check.findings.push(Finding::at(
                expected,
                format!("segment {name} starts at {} where {expected} was expected: a segment is missing or overlaps", segment.from),
            ));
            head = None;
        }
        expected = segment.to;
        match verify_segment(&segment.path, keys) {
            Ok(report) if report.intact() => {}
            Ok(report) => {
                for finding in report.findings {
                    check.findings.push(Finding {
                        seq: finding.seq,
                        problem: format!("{name}: {}", finding.problem),
                    });
                }
                if let Some(why) = report.unauthenticated {
                    check.findings.push(Finding::log(format!("{name}: {why}")));
                }
                head = None;
                continue;
            }
            Err(e) => {
                check.findings.push(Finding::log(format!("{name}: {e}")));
                head = None;
                continue;
            }
        }
        let mut records = 0;
        let mut chained = head;
        let read = std::fs::File::open(&segment.path)
            .and_then(log_bundle::decompressed)
            .map_err(|e| e.to_string())
            .and_then(|input| {
                log_bundle::for_each_record(input, |seq, record| {
                    if seq >= segment.from && seq < segment.to {
                        records += 1;
                        chained = chained.map(|h| chain::chain(&h, record));
                    }
                    true
                })
                .map_err(|e| e.to_string())
            });
        if let Err(e) = read {
            check.findings.push(Finding::log(format!("{name}: {e}")));
        }
        check.records += records;
        head = chained;
    }
    if let Some(cut) = cut {
        if expected != cut.cut {
            check.findings.push(Finding::at(
                expected.min(cut.cut),
                format!("the archive's segments end at {expected}, the hot store begins at {}: segments are missing", cut.cut),
            ));
        } else if head.is_some_and(|h| h != cut.chain_hash) {
            check.findings.push(Finding::at(
                cut.cut - 1,
                "the archived records do not chain to the hot store's chain hash at the cut: a segment was replaced",
            ));
        }
    }
    check
}

fn verify_segment(
    path: &Path,
    keys: &[NoteVerifier],
) -> Result<tollgate_log::verify::Report, String> {
    let input = std::fs::File::open(path)
        .and_then(log_bundle::decompressed)
        .map_err(|e| format!("cannot read: {e}"))?;
    log_bundle::verify(input, &Trust::Keys(keys), &log_bundle::Options::default())
        .map_err(|e| e.to_string())
}

/// Calls `each` with every archived record in `dir`, in order, after verifying its segment
/// with `keys`; a segment that does not verify is an error, not a silent gap.
pub fn for_each_archived(
    dir: &Path,
    keys: &[NoteVerifier],
    mut each: impl FnMut(StoredRecord) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    for segment in segments(dir)? {
        let report = verify_segment(&segment.path, keys).map_err(anyhow::Error::msg)?;
        if !report.intact() {
            anyhow::bail!(
                "archive segment {} does not verify: {}",
                segment.path.display(),
                report
                    .first()
                    .map_or("unauthenticated", |f| f.problem.as_str())
            );
        }
        let input = log_bundle::decompressed(std::fs::File::open(&segment.path)?)?;
        let mut failed = None;
        let mut go_on = true;
        log_bundle::for_each_record(input, |seq, record| {
            if seq < segment.from || seq >= segment.to {
                return true;
            }
            match each(StoredRecord {
                seq,
                canonical_json: record.to_vec(),
                chain_hash: String::new(),
            }) {
                Ok(more) => {
                    go_on = more;
                    more
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !go_on {
            return Ok(());
        }
    }
    Ok(())
}

/// Deletes the oldest segments in `dir` whose records all precede `before` (never one after a
/// segment that stays, so the archive keeps no hole), and records which in the chain.
pub async fn expire(
    store: &Arc<Store>,
    dir: &Path,
    before: Micros,
    by: &By<'_>,
) -> Result<Vec<Value>, StoreError> {
    let mut expired = Vec::new();
    for segment in segments(dir)? {
        let sidecar =
            segment
                .path
                .with_file_name(segment.path.file_name().map_or_else(String::new, |n| {
                    n.to_string_lossy().replace(".bundle.zst", ".json")
                }));
        let Some(entry) = std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            break;
        };
        let last = entry
            .get("lastReceivedAt")
            .and_then(Value::as_str)
            .and_then(clock::parse);
        if last.is_none_or(|last| last >= before) {
            break;
        }
        expired.push((segment, sidecar, entry));
    }
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Value> = expired.iter().map(|(_, _, e)| e.clone()).collect();
    // Recorded before the files go: a crash in between leaves a record of what is about to
    // be deleted, never a deletion without its record.
    let mut event = Map::new();
    event.insert("event".into(), EXPIRED_EVENT.into());
    event.insert("segments".into(), entries.clone().into());
    event.insert("before".into(), clock::format(before).into());
    event.insert("operator".into(), by.operator.to_json());
    event.insert("via".into(), by.via.into());
    store.append_event(&event).await?;
    for (segment, sidecar, _) in expired {
        std::fs::remove_file(&segment.path)?;
        let _ = std::fs::remove_file(sidecar);
    }
    sync_dir(dir)?;
    Ok(entries)
}
