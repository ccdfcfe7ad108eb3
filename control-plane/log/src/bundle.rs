//! Export bundles, format 2, and their verification in one pass, in bounded memory.
//!
//! A bundle is evidence for exactly one signed checkpoint of `N` records: the export writes
//! its own `controlPlane.auditExport` record and the log signs the checkpoint at that record
//! in the same step, so the export record is leaf `N - 1`, the last one the checkpoint signs.
//! The bundle's `records` cover every leaf `0..N` in order: each selected record whole, the
//! leaves in between as the hashes of the tree's own perfect subtrees, split at the size of
//! every earlier checkpoint of the log. From that one stream the verifier rebuilds the root of
//! the tree at `N` and at every earlier checkpoint's size, so every checkpoint in the bundle,
//! and any saved checkpoint of those sizes, is checked against the leaves themselves.
//!
//! ```text
//! {"format":"tollgate-audit-bundle/2",
//!  "origin": the log,                          checked: the checkpoint's origin
//!  "checkpoint": signed note (+ cosignatures),  signed by the log (and witnesses)
//!  "checkpoints": [earlier signed notes],       signed; their roots rebuilt from the leaves
//!  "keyRecords": [seq, ...],                    checked: what the export record lists
//!  "chainBefore": hex chain hash of leaf N-2,   checked: with the export record it gives the
//!                                               checkpoint's signed chain line
//!  "filter": the selection,                     checked: what the export record states
//!  "records": [                                 last: streamed
//!    {"seq":s,"leafHash":h,"record":{...}}      a selected record, in its canonical bytes
//!    {"seq":s,...,"context":true}               a key rotation or the export record itself
//!    {"skip":k,"nodes":[h,...]}                 k leaves left out: their subtree hashes
//!  ]}
//! ```
//!
//! Trust never comes from the bundle: the checkpoints' signatures are checked against keys
//! pinned by whoever verifies (or a witness policy); without either the result is
//! "unauthenticated". Which key may sign what follows from the key rotations in the chain,
//! which the export record lists so that none can be left out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::chain::{self, Hash};
use crate::key_history::{later, KeyHistory, Rotation};
use crate::merkle::{self, Frontier};
use crate::note::{self, Checkpoint, NoteVerifier};
use crate::scan::{ScanError, Scanner};
use crate::verify::{Finding, Report, Trusted};

pub const FORMAT: &str = "tollgate-audit-bundle/2";
/// The `event` of the record an export writes about itself.
pub const EXPORT_EVENT: &str = "controlPlane.auditExport";
/// Largest record (or header field) a bundle may hold.
const MAX_VALUE: usize = 64 << 20;
/// Problems named one by one; past this, counted.
const MAX_FINDINGS: usize = 100;
/// How reports name the bundle's checkpoint.
const LATEST: &str = "the bundle's checkpoint";

/// `SHA-256` over each selected record's sequence number (8 bytes big-endian) and leaf hash:
/// what the export record states as `selectionDigest`.
#[derive(Default)]
pub struct SelectionDigest {
    hasher: Sha256,
    count: u64,
}

impl SelectionDigest {
    pub fn add(&mut self, seq: u64, leaf: &Hash) {
        self.hasher.update(seq.to_be_bytes());
        self.hasher.update(leaf);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> Hash {
        self.hasher.finalize().into()
    }
}

/// The leaves `[start, end)` as the bundle covers them: the tree's own perfect subtrees,
/// never crossing one of `splits` (the sizes of earlier checkpoints).
pub fn gap_cover(start: u64, end: u64, splits: &BTreeSet<u64>) -> Vec<(u32, u64)> {
    let mut cover = Vec::new();
    let mut at = start;
    for &split in splits.range(start + 1..end) {
        cover.extend(Frontier::aligned_cover(at, split));
        at = split;
    }
    cover.extend(Frontier::aligned_cover(at, end));
    cover
}

/// Where a bundle's leaves come from (the store, when the control plane exports).
pub trait Source {
    type Error: From<std::io::Error>;
    /// The canonical bytes of record `seq`.
    fn record(&self, seq: u64) -> Result<Vec<u8>, Self::Error>;
    /// The chain hash after record `seq`.
    fn chain_hash(&self, seq: u64) -> Result<Hash, Self::Error>;
    /// The hash of the perfect subtree `index` at `level`.
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
    /// Called when the record at `seq` hashes to `leaf` although it was selected as
    /// `expected`: it changed after the selection.
    fn changed(&self, seq: u64) -> Self::Error;
}

/// What one bundle holds, besides the leaves its [`Source`] supplies.
pub struct Contents<'a> {
    pub origin: &'a str,
    /// The signed checkpoint (with any cosignatures); its last leaf is the export record.
    pub note: &'a str,
    pub checkpoint: &'a Checkpoint,
    /// Earlier checkpoints of the log, one per size, in increasing sizes below the checkpoint's.
    pub earlier: &'a [String],
    /// Every key rotation record up to the checkpoint.
    pub key_records: &'a [u64],
    /// The selected records, in sequence order, with the leaf hashes they were selected with.
    pub selected: &'a [(u64, Hash)],
    pub filter: &'a Value,
}

/// Writes a bundle to `out` as `source` supplies it: one record, one skipped range at a
/// time, never the whole bundle in memory.
pub fn write<S: Source>(
    source: &S,
    contents: &Contents<'_>,
    out: &mut dyn std::io::Write,
) -> Result<(), S::Error> {
    let size = contents.checkpoint.size;
    let Some(export_seq) = size.checked_sub(1) else {
        return Err(std::io::Error::other(
            "a bundle's checkpoint signs at least its export record",
        )
        .into());
    };
    let json = |value: &dyn erased::Json, out: &mut dyn std::io::Write| -> std::io::Result<()> {
        value.write_to(out).map_err(std::io::Error::other)
    };
    let splits: BTreeSet<u64> = contents
        .earlier
        .iter()
        .filter_map(|note| Checkpoint::of_note(note).ok().map(|c| c.size))
        .collect();
    let chain_before = match export_seq.checked_sub(1) {
        None => chain::GENESIS,
        Some(seq) => source.chain_hash(seq)?,
    };
    out.write_all(b"{\"format\":")?;
    json(&FORMAT, out)?;
    out.write_all(b",\"origin\":")?;
    json(&contents.origin, out)?;
    out.write_all(b",\"checkpoint\":")?;
    json(&contents.note, out)?;
    out.write_all(b",\"checkpoints\":")?;
    json(&contents.earlier, out)?;
    out.write_all(b",\"keyRecords\":")?;
    json(&contents.key_records, out)?;
    out.write_all(b",\"chainBefore\":")?;
    json(&hex::encode(chain_before), out)?;
    out.write_all(b",\"filter\":")?;
    json(contents.filter, out)?;
    out.write_all(b",\"records\":[")?;

    // Selected records, then key rotations and the export record as context, in order.
    let selected = contents.selected;
    let mut leaves: Vec<(u64, Option<&Hash>)> = selected
        .iter()
        .map(|(seq, leaf)| (*seq, Some(leaf)))
        .collect();
    leaves.extend(
        contents
            .key_records
            .iter()
            .filter(|seq| selected.binary_search_by_key(*seq, |(s, _)| *s).is_err())
            .map(|seq| (*seq, None)),
    );
    leaves.push((export_seq, None));
    leaves.sort_by_key(|(seq, _)| *seq);
    leaves.dedup_by_key(|(seq, _)| *seq);
    let mut at = 0;
    let mut first = true;
    for (seq, expected) in leaves {
        if seq > at {
            if !std::mem::take(&mut first) {
                out.write_all(b",")?;
            }
            write!(out, "{{\"skip\":{},\"nodes\":[", seq - at)?;
            for (i, (level, index)) in gap_cover(at, seq, &splits).into_iter().enumerate() {
                let node = source.subtree(level, index)?;
                write!(
                    out,
                    "{}\"{}\"",
                    if i == 0 { "" } else { "," },
                    hex::encode(node)
                )?;
            }
            out.write_all(b"]}")?;
        }
        let record = source.record(seq)?;
        let leaf = merkle::leaf_hash(&record);
        if expected.is_some_and(|expected| *expected != leaf) {
            return Err(source.changed(seq));
        }
        if !std::mem::take(&mut first) {
            out.write_all(b",")?;
        }
        write!(
            out,
            "{{\"seq\":{seq},\"leafHash\":\"{}\",\"record\":",
            hex::encode(leaf)
        )?;
        out.write_all(&record)?;
        if expected.is_none() {
            out.write_all(b",\"context\":true")?;
        }
        out.write_all(b"}")?;
        at = seq + 1;
    }
    out.write_all(b"]}")?;
    Ok(())
}

/// Serialising any of the bundle's parts to a writer (`serde_json::to_writer` needs a sized
/// writer; the bundle is written through `dyn Write`).
mod erased {
    pub trait Json {
        fn write_to(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()>;
    }

    impl<T: serde::Serialize + ?Sized> Json for T {
        fn write_to(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()> {
            serde_json::to_writer(out, self)
        }
    }
}

/// What the verifier trusts, from outside the bundle.
pub enum Trust<'a> {
    /// Nothing: the bundle is checked, but the result is at best "unauthenticated".
    Nothing,
    /// Pinned log keys.
    Keys(&'a [NoteVerifier]),
    /// A witness policy: its log keys, and the cosignatures its quorum requires on the
    /// bundle's checkpoint. `check` opens a note under the policy and names the witnesses.
    Policy {
        log_keys: &'a [NoteVerifier],
        check: &'a dyn Fn(&str) -> Result<Vec<String>, String>,
    },
}

/// How to verify.
#[derive(Default)]
pub struct Options {
    /// Checkpoints seen before, as (label, signed note).
    pub saved: Vec<(String, String)>,
    /// Accept a bundle older than a saved checkpoint (an earlier range asked for on purpose).
    pub accept_older: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    leaf_hash: Option<&'a str>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
    #[serde(default)]
    context: bool,
    skip: Option<u64>,
    #[serde(borrow)]
    nodes: Option<Vec<&'a str>>,
}

/// The fields before `records`.
#[derive(Default)]
struct Header {
    format: Option<String>,
    origin: Option<String>,
    checkpoint: Option<String>,
    checkpoints: Option<Vec<String>>,
    key_records: Option<Vec<u64>>,
    chain_before: Option<String>,
    filter: Option<Value>,
}

fn hash_of(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Whether `text` is the lower-case hex of `hash` (the exporter's spelling).
fn hex_equals(text: &str, hash: &Hash) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let text = text.as_bytes();
    text.len() == 64
        && hash.iter().enumerate().all(|(i, b)| {
            text[2 * i] == DIGITS[usize::from(b >> 4)]
                && text[2 * i + 1] == DIGITS[usize::from(b & 15)]
        })
}

struct Walk {
    size: u64,
    /// Sizes at which to keep the root: earlier checkpoints (where the cover splits) and
    /// saved checkpoints (kept when the stream passes them).
    marks: BTreeSet<u64>,
    splits: BTreeSet<u64>,
    roots: BTreeMap<u64, Hash>,
    frontier: Frontier,
    selection: SelectionDigest,
    /// The first and last selected sequence numbers, for a filter that names a range.
    selected_range: Option<(u64, u64)>,
    key_records: BTreeSet<u64>,
    rotations: Vec<Rotation>,
    export: Option<(Vec<u8>, Value)>,
    findings: Vec<Finding>,
    unnamed: u64,
    /// The stream no longer lines up with the tree: nothing after this is checked.
    lost: bool,
}

impl Walk {
    fn finding(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.unnamed += 1;
        }
    }

    fn mark(&mut self) {
        let size = self.frontier.size();
        if self.marks.contains(&size) {
            self.roots.insert(size, self.frontier.root());
        }
    }

    fn entry(&mut self, bytes: &[u8]) {
        if self.lost {
            return;
        }
        let at = self.frontier.size();
        // The layout the exporter writes, read without a parser; anything else (or a record
        // that is not canonical, whose problem the parser below names) takes the long way.
        if let Some((seq, leaf_hash, record, context)) = written_record(bytes) {
            if canonical::is_canonical_object(record) {
                self.record(at, seq, leaf_hash, record, context);
                return;
            }
        }
        let entry: Entry = match serde_json::from_slice(bytes) {
            Ok(entry) => entry,
            Err(e) => {
                self.finding(Finding::at(
                    at,
                    format!(
                        "the entry for leaf {at} is malformed ({}): altered",
                        category(&e)
                    ),
                ));
                self.lost = true;
                return;
            }
        };
        match entry {
            Entry {
                seq: Some(seq),
                leaf_hash: Some(leaf_hash),
                record: Some(record),
                skip: None,
                nodes: None,
                context,
            } => self.record(at, seq, leaf_hash, record.get().as_bytes(), context),
            Entry {
                skip: Some(skip),
                nodes: Some(nodes),
                seq: None,
                leaf_hash: None,
                record: None,
                context: false,
            } => self.skip(at, skip, &nodes),
            _ => {
                self.finding(Finding::at(
                    at,
                    format!("the entry for leaf {at} is neither a record nor a skip: altered"),
                ));
                self.lost = true;
            }
        }
    }

    fn record(&mut self, at: u64, seq: u64, leaf_hash: &str, record: &[u8], context: bool) {
        let checked = Checked::of(seq, leaf_hash, record, context);
        self.apply(at, &checked, Some(record));
    }

    /// Takes a record checked (perhaps on another thread) into the walk; `record` is needed
    /// only for key rotations and the export record.
    fn apply(&mut self, at: u64, checked: &Checked, record: Option<&[u8]>) {
        let Checked {
            seq,
            leaf,
            leaf_matches,
            canonical,
            context,
        } = *checked;
        if seq != at || at >= self.size {
            self.finding(Finding::at(
                at,
                format!(
                    "record {seq} stands where leaf {at} of {} belongs: records reordered, duplicated, removed or added, or a skip altered",
                    self.size
                ),
            ));
            self.lost = true;
            return;
        }
        if !canonical {
            self.finding(Finding::at(
                seq,
                "record is not in its canonical form (or repeats a member name): altered",
            ));
        }
        if !leaf_matches {
            self.finding(Finding::at(
                seq,
                "record does not hash to its leaf hash: altered",
            ));
        }
        self.frontier.push(leaf, |_, _, _| {});
        if !context {
            self.selection.add(seq, &leaf);
            let first = self.selected_range.map_or(seq, |(first, _)| first);
            self.selected_range = Some((first, seq));
        }
        let is_export = seq + 1 == self.size;
        if self.key_records.contains(&seq) || is_export {
            let record = record.unwrap_or_default();
            let parsed = serde_json::from_slice::<Value>(record).unwrap_or(Value::Null);
            if self.key_records.contains(&seq) {
                match Rotation::from_record(seq, &parsed) {
                    Some(rotation) => self.rotations.push(rotation),
                    None => self.finding(Finding::at(
                        seq,
                        "the bundle lists this record as a key rotation, but it is not one",
                    )),
                }
            }
            if is_export {
                self.export = Some((record.to_vec(), parsed));
            }
        } else if context {
            self.finding(Finding::at(
                seq,
                "record is marked as context but is neither a key rotation nor the export record",
            ));
        }
        self.mark();
    }

    fn skip(&mut self, at: u64, skip: u64, nodes: &[&str]) {
        let end = at.saturating_add(skip);
        if skip == 0 || end > self.size {
            self.finding(Finding::at(
                at,
                format!("a skip of {skip} leaves at leaf {at} does not fit the tree of {} records: altered", self.size),
            ));
            self.lost = true;
            return;
        }
        let cover = gap_cover(at, end, &self.splits);
        if cover.len() != nodes.len() {
            self.finding(Finding::at(
                at,
                format!("the skip of leaves {at}..{end} has {} hashes where the tree has {} subtrees: altered", nodes.len(), cover.len()),
            ));
            self.lost = true;
            return;
        }
        for ((level, _), node) in cover.into_iter().zip(nodes) {
            let Some(hash) = hash_of(node) else {
                self.finding(Finding::at(at, "a skipped subtree's hash is malformed"));
                self.lost = true;
                return;
            };
            // `gap_cover` yields aligned subtrees only, so this cannot be refused.
            let _ = self.frontier.push_subtree(level, hash);
            self.mark();
        }
    }
}

/// What a record's own bytes say, independent of the rest of the bundle: the work that
/// can run on any thread.
#[derive(Clone, Copy)]
struct Checked {
    seq: u64,
    leaf: Hash,
    leaf_matches: bool,
    canonical: bool,
    context: bool,
}

impl Checked {
    fn of(seq: u64, leaf_hash: &str, record: &[u8], context: bool) -> Self {
        let leaf = merkle::leaf_hash(record);
        Self {
            seq,
            leaf,
            leaf_matches: hex_equals(leaf_hash, &leaf),
            canonical: canonical::is_canonical_object(record),
            context,
        }
    }
}

/// Entries read but not yet walked: their bytes end to end.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Entries per batch: enough to make handing a batch between threads cheap.
    const ENTRIES: usize = 512;

    fn entries(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// A batch's entries as the walk takes them: checked records in the exporter's layout, or
/// `None` for an entry the walk reads itself.
fn check_batch(batch: &Batch) -> Vec<Option<Checked>> {
    batch
        .entries()
        .map(|entry| {
            let (seq, leaf_hash, record, context) = written_record(entry)?;
            let checked = Checked::of(seq, leaf_hash, record, context);
            // A record that is not canonical takes the long way, which names what is wrong.
            checked.canonical.then_some(checked)
        })
        .collect()
}

impl Walk {
    /// Walks a batch checked by [`check_batch`].
    fn walk_batch(&mut self, batch: &Batch, checked: &[Option<Checked>]) {
        for (entry, checked) in batch.entries().zip(checked) {
            if self.lost {
                return;
            }
            match checked {
                Some(checked) => {
                    let at = self.frontier.size();
                    let needs_record =
                        self.key_records.contains(&checked.seq) || checked.seq + 1 == self.size;
                    let record = if needs_record {
                        written_record(entry).map(|(_, _, record, _)| record)
                    } else {
                        None
                    };
                    self.apply(at, checked, record);
                }
                None => self.entry(entry),
            }
        }
    }
}

/// Streams the `records` array through `walk`: this thread reads entries into batches, worker
/// threads check the records' bytes (canonical form, leaf hash), and one thread walks the
/// batches in order. Channels are bounded, so memory stays a few batches per thread.
fn stream_records<R: Read>(scanner: &mut Scanner<R>, walk: &mut Walk) -> Result<(), ScanError> {
    use std::sync::mpsc::sync_channel;
    use std::sync::{Arc, Mutex};
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|scope| {
        let (work, jobs) = sync_channel::<(u64, Batch)>(workers * 2);
        let jobs = Arc::new(Mutex::new(jobs));
        let (done, finished) = sync_channel::<(u64, Batch, Vec<Option<Checked>>)>(workers * 2);
        for _ in 0..workers {
            let (jobs, done) = (Arc::clone(&jobs), done.clone());
            scope.spawn(move || loop {
                // A poisoned lock means another worker panicked; stop too.
                let job = match jobs.lock() {
                    Ok(jobs) => jobs.recv(),
                    Err(_) => return,
                };
                let Ok((number, batch)) = job else {
                    return;
                };
                let checked = check_batch(&batch);
                if done.send((number, batch, checked)).is_err() {
                    return;
                }
            });
        }
        drop(done);
        let walker = scope.spawn(move || {
            let mut waiting = BTreeMap::new();
            let mut next = 0u64;
            for (number, batch, checked) in finished {
                waiting.insert(number, (batch, checked));
                while let Some((batch, checked)) = waiting.remove(&next) {
                    walk.walk_batch(&batch, &checked);
                    next += 1;
                }
            }
        });
        let mut read = || -> Result<(), ScanError> {
            let mut buf = Vec::new();
            let mut batch = Batch::default();
            let mut number = 0u64;
            loop {
                scanner.value(&mut buf)?;
                batch.bytes.extend_from_slice(&buf);
                batch.ends.push(batch.bytes.len());
                let last = scanner.one_of(b",]", "a comma or the end of the records")? == b']';
                if last || batch.ends.len() == Batch::ENTRIES {
                    if work.send((number, std::mem::take(&mut batch))).is_err() {
                        return Ok(());
                    }
                    number += 1;
                }
                if last {
                    return Ok(());
                }
            }
        };
        let result = read();
        drop(work);
        // The walker ends once every batch sent has been walked.
        let _ = walker.join();
        result
    })
}

/// A record entry exactly as the exporter writes it:
/// `{"seq":N,"leafHash":"<64 hex>","record":{…}}`, or with `,"context":true` before the end.
fn written_record(bytes: &[u8]) -> Option<(u64, &str, &[u8], bool)> {
    let rest = bytes.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"leafHash\":\"")?;
    let (hash, rest) = (rest.get(..64)?, rest.get(64..)?);
    let leaf_hash = std::str::from_utf8(hash).ok()?;
    let rest = rest.strip_prefix(b"\",\"record\":")?;
    let (record, context) = match rest.strip_suffix(b",\"context\":true}") {
        Some(record) => (record, true),
        None => (rest.strip_suffix(b"}")?, false),
    };
    Some((seq, leaf_hash, record, context))
}

/// The filter members of a bundle that holds every record of a range whole (an archive
/// segment): `fromSeq` and `toSeq`, decimal strings, the range `[fromSeq, toSeq)`.
pub const FROM_SEQ: &str = "fromSeq";
pub const TO_SEQ: &str = "toSeq";

/// The range a filter names, if it names one: `Err` when it names one badly.
pub fn filter_range(filter: &Value) -> Result<Option<(u64, u64)>, String> {
    let member = |name: &str| filter.get(name).and_then(Value::as_str);
    match (member(FROM_SEQ), member(TO_SEQ)) {
        (None, None) => Ok(None),
        (Some(from), Some(to)) => match (from.parse::<u64>(), to.parse::<u64>()) {
            (Ok(from), Ok(to)) if from < to => Ok(Some((from, to))),
            _ => Err(format!(
                "the bundle's filter names the range {from:?}..{to:?}, which is not one"
            )),
        },
        _ => Err("the bundle's filter names one end of a range only".into()),
    }
}

/// Why a bundle whose filter names a range does not hold that range whole, if it does not.
/// Selected records come in increasing order (the walk refuses any other), so the right
/// count, first and last mean every record of the range is there.
fn range_incomplete(
    filter: Option<&Value>,
    count: u64,
    selected: Option<(u64, u64)>,
) -> Option<String> {
    let (from, to) = match filter.map(filter_range)? {
        Ok(Some(range)) => range,
        Ok(None) => return None,
        Err(problem) => return Some(problem),
    };
    if selected == Some((from, to - 1)) && count == to - from {
        return None;
    }
    Some(format!(
        "the bundle's filter selects every record of {from}..{to} but it holds {count} of them whole: a record of the range was left out"
    ))
}

/// The bytes of a bundle file, decompressed when it is zstd-compressed (an archive segment):
/// told by zstd's magic number, not by the file's name.
pub fn decompressed<R: Read + 'static>(input: R) -> std::io::Result<Box<dyn Read>> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let head = std::io::BufRead::fill_buf(&mut input)?;
    if head.starts_with(&ZSTD_MAGIC) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(input)?))
    } else {
        Ok(Box::new(input))
    }
}

/// Hands every whole record of a bundle to `each` as `(seq, canonical bytes)`, in order, and
/// reads nothing else: for reading an archive segment that was verified (`verify`) already.
/// `each` returns false to stop.
pub fn for_each_record(
    input: impl Read,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), ScanError> {
    let mut scanner = Scanner::new(input, MAX_VALUE);
    let mut buf = Vec::new();
    scanner.expect(b'{', "a bundle is a JSON object")?;
    if scanner.peek()? == Some(b'}') {
        return Ok(());
    }
    loop {
        scanner.value(&mut buf)?;
        let name: String = serde_json::from_slice(&buf).map_err(|_| ScanError::Malformed {
            offset: scanner.offset(),
            what: "a member name was expected",
        })?;
        scanner.expect(b':', "a colon was expected")?;
        if name != "records" {
            scanner.value(&mut buf)?;
        } else {
            scanner.expect(b'[', "records must be an array")?;
            if scanner.peek()? == Some(b']') {
                scanner.one_of(b"]", "")?;
            } else {
                loop {
                    scanner.value(&mut buf)?;
                    let record = match written_record(&buf) {
                        Some((seq, _, record, _)) => Some((seq, record.to_vec())),
                        None => match serde_json::from_slice::<Entry>(&buf) {
                            Ok(Entry {
                                seq: Some(seq),
                                record: Some(record),
                                ..
                            }) => Some((seq, record.get().as_bytes().to_vec())),
                            _ => None,
                        },
                    };
                    if let Some((seq, record)) = record {
                        if !each(seq, &record) {
                            return Ok(());
                        }
                    }
                    if scanner.one_of(b",]", "a comma or the end of the records")? == b']' {
                        break;
                    }
                }
            }
        }
        if scanner.one_of(b",}", "a comma or the end of the bundle")? == b'}' {
            return Ok(());
        }
    }
}

fn category(e: &serde_json::Error) -> String {
    format!("{:?} at column {}", e.classify(), e.column())
}

/// Reads the header fields, then streams `records` through `walk`, built once the header is
/// known. Returns the header and the walk (`None` when the bundle ended before its records).
fn read(
    input: impl Read,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> Result<(Header, Option<Walk>), ScanError> {
    let mut scanner = Scanner::new(input, MAX_VALUE);
    let mut header = Header::default();
    let mut walk = None;
    let mut buf = Vec::new();
    scanner.expect(b'{', "a bundle is a JSON object")?;
    if scanner.peek()? == Some(b'}') {
        return Ok((header, None));
    }
    loop {
        scanner.value(&mut buf)?;
        let name: String = serde_json::from_slice(&buf).map_err(|_| ScanError::Malformed {
            offset: scanner.offset(),
            what: "a member name was expected",
        })?;
        scanner.expect(b':', "a colon was expected")?;
        if name == "records" {
            if walk.is_some() {
                findings.push(Finding::log("the bundle has two record lists"));
                return Ok((header, None));
            }
            let Some(mut w) = start_walk(&header, options, findings) else {
                return Ok((header, None));
            };
            scanner.expect(b'[', "records must be an array")?;
            if scanner.peek()? == Some(b']') {
                scanner.one_of(b"]", "")?;
            } else {
                stream_records(&mut scanner, &mut w)?;
            }
            walk = Some(w);
        } else {
            if walk.is_some() {
                findings.push(Finding::log(format!(
                    "the bundle has a {name:?} member after its records; a bundle ends with them"
                )));
                return Ok((header, None));
            }
            scanner.value(&mut buf)?;
            if !set_header(&mut header, &name, &buf) {
                findings.push(Finding::log(format!(
                    "the bundle's {name:?} member is unknown, repeated or malformed"
                )));
                return Ok((header, None));
            }
        }
        if scanner.one_of(b",}", "a comma or the end of the bundle")? == b'}' {
            break;
        }
    }
    if scanner.peek()?.is_some() {
        findings.push(Finding::log("the bundle has data after its end"));
    }
    Ok((header, walk))
}

fn set_header(header: &mut Header, name: &str, bytes: &[u8]) -> bool {
    fn put<T: serde::de::DeserializeOwned>(slot: &mut Option<T>, bytes: &[u8]) -> bool {
        if slot.is_some() {
            return false;
        }
        match serde_json::from_slice(bytes) {
            Ok(value) => {
                *slot = Some(value);
                true
            }
            Err(_) => false,
        }
    }
    match name {
        "format" => put(&mut header.format, bytes),
        "origin" => put(&mut header.origin, bytes),
        "checkpoint" => put(&mut header.checkpoint, bytes),
        "checkpoints" => put(&mut header.checkpoints, bytes),
        "keyRecords" => put(&mut header.key_records, bytes),
        "chainBefore" => put(&mut header.chain_before, bytes),
        "filter" => {
            // The filter is compared with the export record's: no repeated names in it.
            header.filter.is_none()
                && match serde_json::from_slice::<Value>(bytes) {
                    Ok(value) => {
                        let ok = no_repeated_names(bytes, &value);
                        header.filter = Some(value);
                        ok
                    }
                    Err(_) => false,
                }
        }
        _ => false,
    }
}

/// Whether parsing kept every member: a repeated name collapses two members into one, so the
/// parsed object has fewer members than the text names at its top level.
fn no_repeated_names(bytes: &[u8], value: &Value) -> bool {
    // The filter is a flat object of strings; count its top-level members by their colons.
    let Some(object) = value.as_object() else {
        return false;
    };
    if object.values().any(|v| !v.is_string()) {
        return false;
    }
    let text = String::from_utf8_lossy(bytes);
    let mut members = 0;
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, ':') => members += 1,
            _ => {}
        }
    }
    members == object.len()
}

fn start_walk(header: &Header, options: &Options, findings: &mut Vec<Finding>) -> Option<Walk> {
    if header.format.as_deref() != Some(FORMAT) {
        findings.push(Finding::log(format!(
            "not a bundle of format {FORMAT} (format {:?}); export it again with this version",
            header.format.as_deref().unwrap_or("missing")
        )));
        return None;
    }
    let (Some(note), Some(_), Some(_), Some(_), Some(_)) = (
        &header.checkpoint,
        &header.checkpoints,
        &header.key_records,
        &header.chain_before,
        &header.filter,
    ) else {
        findings.push(Finding::log(
            "the bundle lacks its checkpoint, checkpoints, keyRecords, chainBefore or filter before its records",
        ));
        return None;
    };
    let Some(checkpoint) = Checkpoint::of_note(note).ok() else {
        findings.push(Finding::log("the bundle's checkpoint is malformed"));
        return None;
    };
    let mut splits = BTreeSet::new();
    for earlier in header.checkpoints.iter().flatten() {
        if let Ok(c) = Checkpoint::of_note(earlier) {
            if c.size < checkpoint.size {
                splits.insert(c.size);
            }
        }
    }
    let mut marks = splits.clone();
    for (_, saved) in &options.saved {
        if let Ok(c) = Checkpoint::of_note(saved) {
            marks.insert(c.size);
        }
    }
    let mut walk = Walk {
        size: checkpoint.size,
        marks,
        splits,
        roots: BTreeMap::new(),
        frontier: Frontier::new(),
        selection: SelectionDigest::default(),
        selected_range: None,
        key_records: header.key_records.iter().flatten().copied().collect(),
        rotations: Vec::new(),
        export: None,
        findings: Vec::new(),
        unnamed: 0,
        lost: false,
    };
    walk.mark();
    Some(walk)
}

/// Verifies the bundle read from `input`. Errors only when it cannot be read at all.
pub fn verify(input: impl Read, trust: &Trust<'_>, options: &Options) -> Result<Report, ScanError> {
    let mut findings = Vec::new();
    let (header, walk) = match read(input, options, &mut findings) {
        Ok(read) => read,
        Err(ScanError::Io(e)) => return Err(ScanError::Io(e)),
        Err(e) => {
            findings.push(Finding::log(format!("the bundle is malformed: {e}")));
            (Header::default(), None)
        }
    };
    let Some(walk) = walk else {
        if findings.is_empty() {
            findings.push(Finding::log("the bundle has no records"));
        }
        return Ok(Report {
            findings,
            ..Report::default()
        });
    };
    Ok(finish(header, walk, trust, options, findings))
}

fn finish(
    header: Header,
    mut walk: Walk,
    trust: &Trust<'_>,
    options: &Options,
    mut findings: Vec<Finding>,
) -> Report {
    let mut notes = Vec::new();
    let note = header.checkpoint.clone().unwrap_or_default();
    let checkpoint = Checkpoint::of_note(&note).expect("parsed when the walk started");
    let size = checkpoint.size;

    // The leaves rebuild the signed tree.
    if !walk.lost && walk.frontier.size() != size {
        walk.finding(Finding::at(
            walk.frontier.size(),
            format!(
                "the records cover {} of the {size} leaves the checkpoint signs: records removed from the end",
                walk.frontier.size()
            ),
        ));
    } else if !walk.lost && walk.frontier.root() != checkpoint.root {
        walk.finding(Finding::log(
            "the records do not rebuild the root the checkpoint signs: a record or skipped subtree was altered, added, removed or moved",
        ));
    }
    if header.origin.as_deref() != Some(checkpoint.origin.as_str()) {
        findings.push(Finding::log(format!(
            "the bundle names log {:?}, its checkpoint log {:?}",
            header.origin.as_deref().unwrap_or(""),
            checkpoint.origin
        )));
    }

    // The export record is the checkpoint's last leaf and says what the bundle holds.
    let mut selected_count = walk.selection.count();
    match &walk.export {
        Some((bytes, record)) if record.get("event").and_then(Value::as_str) == Some(EXPORT_EVENT) => {
            let chained = header
                .chain_before
                .as_deref()
                .and_then(hash_of)
                .map(|before| chain::chain(&before, bytes));
            if chained != Some(checkpoint.chain_head) {
                findings.push(Finding::at(
                    size - 1,
                    "the checkpoint's signed chain line does not end at this export record: the chain hash was altered",
                ));
            }
            let stated_count = record.get("records").and_then(Value::as_u64);
            selected_count = walk.selection.count();
            let stated_digest = record.get("selectionDigest").and_then(Value::as_str);
            let count = walk.selection.count();
            let digest = hex::encode(std::mem::take(&mut walk.selection).finish());
            if stated_count != Some(count) || stated_digest != Some(digest.as_str()) {
                findings.push(Finding::log(format!(
                    "the bundle holds {count} selected records but its export record (seq {}) lists {}{}: a record was removed, added or replaced",
                    size - 1,
                    stated_count.map_or_else(|| "?".to_string(), |c| c.to_string()),
                    if stated_count == Some(count) { " with another digest" } else { "" },
                )));
            }
            if record.get("filter") != header.filter.as_ref() {
                findings.push(Finding::log(
                    "the bundle's filter differs from the one its export record states",
                ));
            }
            if let Some(problem) = range_incomplete(header.filter.as_ref(), count, walk.selected_range) {
                findings.push(Finding::log(problem));
            }
            let stated_keys: Option<Vec<u64>> = record
                .get("keyRecords")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect());
            let listed: Vec<u64> = walk.key_records.iter().copied().collect();
            let seen: Vec<u64> = walk.rotations.iter().map(|r| r.seq).collect();
            if stated_keys.as_ref() != Some(&listed) || seen != listed {
                findings.push(Finding::log(
                    "the key rotations in the bundle are not the ones its export record lists: a rotation was left out or added",
                ));
            }
        }
        _ if walk.lost => {}
        _ => findings.push(Finding::at(
            size.saturating_sub(1),
            "the checkpoint's last leaf is not this export's record: the bundle is not tied to its checkpoint",
        )),
    }

    // Earlier checkpoints: in order, of this log, and each a prefix of the leaves.
    let mut earlier = Vec::new();
    let mut previous: Option<Checkpoint> = None;
    for (i, text) in header.checkpoints.iter().flatten().enumerate() {
        let label = format!("earlier checkpoint {i}");
        let Ok(c) = Checkpoint::of_note(text) else {
            findings.push(Finding::log(format!("{label} is malformed")));
            continue;
        };
        if c.origin != checkpoint.origin || c.size >= size || later(&c.time, &checkpoint.time) {
            findings.push(Finding::log(format!(
                "{label} (size {}, {}) is not an earlier checkpoint of this log",
                c.size, c.time
            )));
            continue;
        }
        if let Some(p) = &previous {
            if c.size <= p.size || later(&p.time, &c.time) {
                findings.push(Finding::log(format!(
                    "{label} (size {}, {}) does not follow the one before it (size {}, {}): checkpoints reordered or the log rolled back",
                    c.size, c.time, p.size, p.time
                )));
            }
        }
        if !walk.lost && walk.roots.get(&c.size) != Some(&c.root) {
            findings.push(Finding::log(format!(
                "{label} (size {}, signed {}) signs another tree than these records: the log was forked",
                c.size, c.time
            )));
        }
        previous = Some(c.clone());
        earlier.push((label, text.clone(), c));
    }

    // Signatures, against what the verifier trusts.
    // Once the stream was lost the rotations seen are not all there are: which key signs
    // what is then not judged (the bundle is broken already).
    let history = KeyHistory::new(walk.rotations.clone());
    let history_complete = !walk.lost;
    let mut latest = None;
    let mut cosigned_by = Vec::new();
    let mut unauthenticated = None;
    let log_keys: &[NoteVerifier] = match trust {
        Trust::Nothing => {
            unauthenticated = Some(
                "nothing outside the bundle vouches for its signatures: pass the log's pinned key (--key FILE) or a witness policy (--witness-policy FILE)"
                    .to_string(),
            );
            &[]
        }
        Trust::Keys(keys) => keys,
        Trust::Policy { log_keys, check } => {
            match check(&note) {
                Ok(names) => cosigned_by = names,
                Err(e) => findings.push(Finding::log(format!(
                    "the bundle's checkpoint does not satisfy the witness policy: {e}"
                ))),
            }
            log_keys
        }
    };
    let mut matched = 0;
    // With no rotation in the bundle, one key signed the whole log up to it: a second signer
    // means a rotation was hidden (by whoever holds the retired key).
    let mut only_signer: Option<NoteVerifier> = None;
    if unauthenticated.is_none() {
        let mut check = |label: &str,
                         text: &str,
                         c: &Checkpoint,
                         count: bool|
         -> Option<NoteVerifier> {
            match note::open(text, log_keys) {
                Ok(opened) if !history_complete => {
                    matched += usize::from(count);
                    Some(opened.signer)
                }
                Ok(opened) => match history.check(c.size, &c.time, &opened.signer) {
                    Ok(())
                        if history.rotations().is_empty()
                            && only_signer
                                .get_or_insert_with(|| opened.signer.clone())
                                .clone()
                                != opened.signer =>
                    {
                        findings.push(Finding::log(format!(
                            "{label} is signed by {}, another key than {} which signs the bundle's checkpoint, and the bundle shows no key rotation: a rotation was hidden, or a retired key signs",
                            opened.signer.label(),
                            only_signer.as_ref().map(NoteVerifier::label).unwrap_or_default()
                        )));
                        None
                    }
                    Ok(()) => {
                        matched += usize::from(count);
                        Some(opened.signer)
                    }
                    Err(why) => {
                        findings.push(Finding::log(format!("{label} {why}")));
                        None
                    }
                },
                Err(note::NoteError::BadSignature(key)) => {
                    findings.push(Finding::log(format!(
                        "{label} has a bad signature (key {key}): forged or altered"
                    )));
                    None
                }
                Err(e) => {
                    findings.push(Finding::log(format!(
                        "{label} is not signed by a pinned log key ({e})"
                    )));
                    None
                }
            }
        };
        if let Some(signer) = check(LATEST, &note, &checkpoint, true) {
            latest = Some(Trusted {
                label: LATEST.to_string(),
                checkpoint: checkpoint.clone(),
                signer,
                note: note.clone(),
            });
        }
        for (label, text, c) in &earlier {
            check(label, text, c, true);
        }
        // Saved checkpoints the bundle reaches are held to the same keys.
        for (label, saved) in &options.saved {
            if let Ok(c) = Checkpoint::of_note(saved) {
                if c.size <= size {
                    check(label, saved, &c, false);
                }
            }
        }
    }

    // Checkpoints seen before: the bundle must not be older, and must agree with them.
    for (label, saved) in &options.saved {
        let opened = if unauthenticated.is_some() {
            Checkpoint::of_note(saved).ok()
        } else {
            match note::open_checkpoint(saved, log_keys) {
                Ok(signed) => Some(signed.checkpoint),
                Err(e) => {
                    findings.push(Finding::log(format!(
                        "{label} does not verify with the pinned keys ({e})"
                    )));
                    continue;
                }
            }
        };
        let Some(theirs) = opened else {
            findings.push(Finding::log(format!("{label} is not a checkpoint")));
            continue;
        };
        if theirs.origin != checkpoint.origin {
            findings.push(Finding::log(format!(
                "{label} is for log {:?}, not {:?}",
                theirs.origin, checkpoint.origin
            )));
        } else if theirs.size > size {
            let what = format!(
                "{label} covers {} records, more than this bundle's {size}: the bundle is older than what was seen before (stale, or the log was rolled back)",
                theirs.size
            );
            if options.accept_older {
                notes.push(format!(
                    "{what}; accepted on request, and consistency with it is not proven"
                ));
            } else {
                findings.push(Finding::log(format!(
                    "{what}; pass --accept-older to check an earlier range on purpose"
                )));
            }
        } else if walk.lost {
        } else if theirs.size == size {
            if theirs.root != checkpoint.root || theirs.chain_head != checkpoint.chain_head {
                findings.push(Finding::log(format!(
                    "{label} and the bundle's checkpoint both sign {size} records with different roots: the log was forked"
                )));
            }
        } else {
            match walk.roots.get(&theirs.size) {
                Some(root) if *root == theirs.root => {}
                Some(_) => findings.push(Finding::log(format!(
                    "{label} (size {}) signs another tree than the first {} records of this bundle: the log was forked",
                    theirs.size, theirs.size
                ))),
                None => findings.push(Finding::log(format!(
                    "{label} (size {}) cannot be checked: the log's checkpoints in this bundle never stop at that size, so the log that signed it is not this one (rolled back or forked)",
                    theirs.size
                ))),
            }
        }
    }

    findings.append(&mut walk.findings);
    if walk.unnamed > 0 {
        findings.push(Finding::log(format!(
            "and {} more problems not listed",
            walk.unnamed
        )));
    }
    Report {
        records: selected_count,
        head: None,
        root: Some(walk.frontier.root()),
        checkpoints_matched: matched,
        latest,
        uncovered: 0,
        findings,
        notes,
        unauthenticated,
        cosigned_by,
    }
}

/// Writes `note` to `path` unless `path` already holds a checkpoint of the same log covering
/// more records: a monitor's saved state only moves forward.
pub fn save_latest(path: &std::path::Path, note: &str) -> std::io::Result<bool> {
    let ours = Checkpoint::of_note(note).ok();
    if let Ok(existing) = std::fs::read_to_string(path) {
        let theirs = Checkpoint::of_note(&existing).ok();
        if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
            if theirs.origin == ours.origin && theirs.size > ours.size {
                return Ok(false);
            }
        }
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, note)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::NodeSource;
    use crate::note::NoteSigner;

    const ORIGIN: &str = "log.test";

    /// A log held in memory, written the way the store writes one.
    struct Log {
        records: Vec<Vec<u8>>,
        chain: Vec<Hash>,
        signer: NoteSigner,
        /// Signed checkpoints, oldest first.
        notes: Vec<String>,
        second: u64,
        frontier: Frontier,
    }

    impl NodeSource for &Log {
        type Error = std::io::Error;
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            let start = (index << level) as usize;
            let mut frontier = Frontier::new();
            for record in &self.records[start..start + (1 << level)] {
                frontier.push(merkle::leaf_hash(record), |_, _, _| {});
            }
            Ok(frontier.root())
        }
    }

    impl Source for Log {
        type Error = std::io::Error;
        fn record(&self, seq: u64) -> std::io::Result<Vec<u8>> {
            Ok(self.records[seq as usize].clone())
        }
        fn chain_hash(&self, seq: u64) -> std::io::Result<Hash> {
            Ok(self.chain[seq as usize])
        }
        fn subtree(&self, level: u32, index: u64) -> std::io::Result<Hash> {
            (&mut &*self).node(level, index)
        }
        fn changed(&self, seq: u64) -> std::io::Error {
            std::io::Error::other(format!("record {seq} changed"))
        }
    }

    impl Log {
        fn new() -> Self {
            Self {
                records: Vec::new(),
                chain: Vec::new(),
                signer: NoteSigner::generate(ORIGIN).unwrap(),
                notes: Vec::new(),
                second: 0,
                frontier: Frontier::new(),
            }
        }

        fn time(&mut self) -> String {
            self.second += 1;
            let at =
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600 + self.second);
            humantime::format_rfc3339_micros(at).to_string()
        }

        fn append(&mut self, mut record: serde_json::Map<String, Value>) -> u64 {
            let time = self.time();
            record.insert("receivedAt".into(), time.into());
            let bytes = chain::canonicalise(&record).unwrap();
            let previous = self.chain.last().copied().unwrap_or(chain::GENESIS);
            self.chain.push(chain::chain(&previous, &bytes));
            self.records.push(bytes);
            self.records.len() as u64 - 1
        }

        fn event(&mut self, sub: &str, n: u64) -> u64 {
            let record = serde_json::json!({"event": "mcp.request", "sub": sub, "n": n});
            self.append(record.as_object().unwrap().clone())
        }

        fn checkpoint(&mut self) -> String {
            let size = self.records.len() as u64;
            for record in &self.records[self.frontier.size() as usize..] {
                self.frontier.push(merkle::leaf_hash(record), |_, _, _| {});
            }
            let checkpoint = Checkpoint {
                origin: ORIGIN.into(),
                size,
                root: self.frontier.root(),
                chain_head: self.chain.last().copied().unwrap_or(chain::GENESIS),
                time: self.time(),
            };
            let note = self.signer.sign(&checkpoint.text());
            self.notes.push(note.clone());
            note
        }

        fn rotate(&mut self) -> NoteSigner {
            let old = std::mem::replace(&mut self.signer, NoteSigner::generate(ORIGIN).unwrap());
            let record = serde_json::json!({
                "event": "controlPlane.keyRotated",
                "previousKey": old.verifier().encode(),
                "newKey": self.signer.verifier().encode(),
            });
            self.append(record.as_object().unwrap().clone());
            self.checkpoint();
            old
        }

        /// Exports the records of `sub` (all with `None`), as the control plane does.
        fn export(&mut self, sub: Option<&str>) -> Vec<u8> {
            let filter = match sub {
                Some(sub) => serde_json::json!({ "sub": sub }),
                None => serde_json::json!({}),
            };
            self.export_where(filter, |_, value| sub.is_none_or(|s| value["sub"] == s))
        }

        /// Exports the records `picked` selects, stating `filter`.
        fn export_where(&mut self, filter: Value, picked: impl Fn(u64, &Value) -> bool) -> Vec<u8> {
            let mut selected = Vec::new();
            let mut key_records = Vec::new();
            let mut digest = SelectionDigest::default();
            for (seq, bytes) in self.records.iter().enumerate() {
                let value: Value = serde_json::from_slice(bytes).unwrap();
                if value["event"] == "controlPlane.keyRotated" {
                    key_records.push(seq as u64);
                }
                if picked(seq as u64, &value) {
                    let leaf = merkle::leaf_hash(bytes);
                    digest.add(seq as u64, &leaf);
                    selected.push((seq as u64, leaf));
                }
            }
            let event = serde_json::json!({
                "event": EXPORT_EVENT,
                "filter": filter,
                "records": selected.len(),
                "selectionDigest": hex::encode(digest.finish()),
                "keyRecords": key_records,
            });
            self.append(event.as_object().unwrap().clone());
            let note = self.checkpoint();
            let earlier: Vec<String> = self.notes[..self.notes.len() - 1].to_vec();
            let checkpoint = Checkpoint::parse(note::unverified_text(&note).unwrap()).unwrap();
            let mut out = Vec::new();
            let contents = Contents {
                origin: ORIGIN,
                note: &note,
                checkpoint: &checkpoint,
                earlier: &earlier,
                key_records: &key_records,
                selected: &selected,
                filter: &filter,
            };
            write(self, &contents, &mut out).unwrap();
            out
        }
    }

    #[test]
    fn a_segment_holds_its_whole_range_and_verifies_compressed() {
        let mut log = Log::new();
        for n in 0..40 {
            log.event("alice", n);
        }
        log.checkpoint();
        let keys = [log.signer.verifier()];
        let range = serde_json::json!({FROM_SEQ: "16", TO_SEQ: "32"});
        let whole = log.export_where(range.clone(), |seq, _| (16..32).contains(&seq));
        let report = check(&whole, &keys, &[], false);
        assert!(report.intact(), "{report:?}");
        let mut compressed = Vec::new();
        zstd::stream::copy_encode(&whole[..], &mut compressed, 3).unwrap();
        let input = decompressed(std::io::Cursor::new(compressed)).unwrap();
        let report = verify(input, &Trust::Keys(&keys), &Options::default()).unwrap();
        assert!(report.intact(), "{report:?}");
        let mut seqs = Vec::new();
        for_each_record(&whole[..], |seq, _| {
            seqs.push(seq);
            true
        })
        .unwrap();
        assert_eq!(seqs[..16], (16..32).collect::<Vec<u64>>()[..]);

        // Signed and self-consistent, but one record of the range left out as a hash.
        let holed = log.export_where(range, |seq, _| (16..32).contains(&seq) && seq != 20);
        let report = check(&holed, &keys, &[], false);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.problem.contains("a record of the range was left out")),
            "{report:?}"
        );
        let malformed = log.export_where(serde_json::json!({FROM_SEQ: "9"}), |seq, _| seq == 9);
        let report = check(&malformed, &keys, &[], false);
        assert!(!report.intact(), "{report:?}");
    }

    fn check(bundle: &[u8], keys: &[NoteVerifier], saved: &[&str], accept_older: bool) -> Report {
        let options = Options {
            saved: saved
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("saved {i}"), n.to_string()))
                .collect(),
            accept_older,
        };
        let trust = if keys.is_empty() {
            Trust::Nothing
        } else {
            Trust::Keys(keys)
        };
        verify(bundle, &trust, &options).unwrap()
    }

    /// A log of 60 records by two users with checkpoints every 10 and a rotation at 35.
    fn log() -> (Log, NoteSigner) {
        let mut log = Log::new();
        let mut stolen = None;
        for n in 0..60 {
            log.event(if n % 3 == 0 { "alice" } else { "bob" }, n);
            if n % 10 == 9 {
                log.checkpoint();
            }
            if n == 35 {
                stolen = Some(log.rotate());
            }
        }
        (log, stolen.unwrap())
    }

    fn keys(log: &Log, old: &NoteSigner) -> Vec<NoteVerifier> {
        vec![old.verifier(), log.signer.verifier()]
    }

    #[test]
    fn full_and_filtered_bundles_verify_with_pinned_keys_only() {
        let (mut log, old) = log();
        let keys = keys(&log, &old);
        for sub in [None, Some("alice")] {
            let bundle = log.export(sub);
            let report = check(&bundle, &keys, &[], false);
            assert_eq!(report.exit_code(), 0, "{:?}", report.findings);
            // Alice sent every third of 60 records; the full export selects every record
            // before its own, the rotation included.
            let expected = if sub.is_some() {
                20
            } else {
                log.records.len() as u64 - 1
            };
            assert_eq!(report.records, expected);
            let unpinned = check(&bundle, &[], &[], false);
            assert_eq!(unpinned.exit_code(), 2);
            assert!(!unpinned.intact());
            let stranger = NoteSigner::generate(ORIGIN).unwrap().verifier();
            assert_eq!(check(&bundle, &[stranger], &[], false).exit_code(), 1);
        }
    }

    #[test]
    fn an_altered_record_is_named_and_a_rehashed_one_breaks_the_root() {
        let (mut log, old) = log();
        let keys = keys(&log, &old);
        let bundle = String::from_utf8(log.export(Some("alice"))).unwrap();
        let edited = bundle.replacen(r#""n":3,"#, r#""n":4,"#, 1);
        assert_ne!(edited, bundle);
        let report = check(edited.as_bytes(), &keys, &[], false);
        assert_eq!(report.exit_code(), 1);
        assert_eq!(
            report.first().unwrap().seq,
            Some(3),
            "{:?}",
            report.findings
        );
        // The leaf hash recomputed too: the signed root no longer rebuilds.
        let at = edited.find(r#""n":4,"#).unwrap();
        let start = edited[..at].rfind(r#""record":"#).unwrap() + 9;
        let end = start + edited[start..].find('}').unwrap() + 1;
        let leaf = hex::encode(merkle::leaf_hash(&edited.as_bytes()[start..end]));
        let hash_at = edited[..start].rfind(r#""leafHash":""#).unwrap() + 12;
        let rehashed = format!("{}{leaf}{}", &edited[..hash_at], &edited[hash_at + 64..]);
        let report = check(rehashed.as_bytes(), &keys, &[], false);
        assert_eq!(report.exit_code(), 1);
        assert!(report
            .findings
            .iter()
            .any(|f| f.problem.contains("do not rebuild the root")));
    }

    #[test]
    fn saved_checkpoints_of_any_signed_size_stale_bundles_and_forks() {
        let (mut log, old) = log();
        let keys = keys(&log, &old);
        let early = log.export(Some("bob"));
        let saved_early = log.notes[2].clone();
        log.event("alice", 100);
        let later = log.export(Some("alice"));
        let saved_later = log.notes.last().unwrap().clone();
        // A saved checkpoint the bundle's leaves reach, of an earlier size: consistent.
        assert_eq!(check(&later, &keys, &[&saved_early], false).exit_code(), 0);
        // An older bundle than what was seen: stale, unless asked for.
        let stale = check(&early, &keys, &[&saved_later], false);
        assert_eq!(stale.exit_code(), 1);
        assert!(stale.findings[0].problem.contains("older"));
        assert_eq!(check(&early, &keys, &[&saved_later], true).exit_code(), 0);
        // A fork: another log under the same key, with a checkpoint of a size this one signed.
        let mut fork = Log::new();
        fork.signer = NoteSigner::parse(&log.signer.encode_private()).unwrap();
        fork.second = log.second;
        for n in 0..20 {
            fork.event("mallory", n);
        }
        let forked = fork.checkpoint();
        let report = check(&later, &keys, &[&forked], false);
        assert_eq!(report.exit_code(), 1);
        assert!(
            report.findings.iter().any(|f| f.problem.contains("forked")),
            "{:?}",
            report.findings
        );
        // A size the log never signed: where the leaves reach it, another root; where they
        // do not, it cannot be checked, and that fails too.
        fork.event("mallory", 21);
        let odd = fork.checkpoint();
        let report = check(&later, &keys, &[&odd], false);
        assert_eq!(report.exit_code(), 1);
        let bob = log.export(Some("bob"));
        let mut inside = Log::new();
        inside.signer = NoteSigner::parse(&log.signer.encode_private()).unwrap();
        inside.second = log.second;
        for n in 0..13 {
            inside.event("mallory", n);
        }
        let unreachable = inside.checkpoint();
        let report = check(&bob, &keys, &[&unreachable], false);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.problem.contains("cannot be checked") || f.problem.contains("forked")),
            "{:?}",
            report.findings
        );
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn a_retired_key_cannot_sign_after_its_rotation() {
        let (mut log, old) = log();
        let keys = keys(&log, &old);
        let bundle = String::from_utf8(log.export(Some("alice"))).unwrap();
        // The bundle's checkpoint, re-signed with the stolen old key.
        let note = log.notes.last().unwrap().clone();
        let forged = old.sign(note::unverified_text(&note).unwrap());
        let json = |n: &str| serde_json::to_string(n).unwrap();
        let edited = bundle.replacen(&json(&note), &json(&forged), 1);
        let report = check(edited.as_bytes(), &keys, &[], false);
        assert_eq!(report.exit_code(), 1);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.problem.contains("retired")),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn the_stream_and_the_header_are_checked() {
        let (mut log, old) = log();
        let keys = keys(&log, &old);
        let bundle = String::from_utf8(log.export(Some("alice"))).unwrap();
        let broken = |text: String, why: &str| {
            let report = check(text.as_bytes(), &keys, &[], false);
            assert_eq!(report.exit_code(), 1, "{why}");
            report
        };
        broken(bundle.replacen(ORIGIN, "other.log", 1), "origin");
        broken(
            bundle.replacen(
                r#""filter":{"sub":"alice"}"#,
                r#""filter":{"sub":"bob"}"#,
                1,
            ),
            "filter",
        );
        broken(
            bundle.replacen(
                r#""filter":{"sub":"alice"}"#,
                r#""filter":{"sub":"alice","sub":"alice"}"#,
                1,
            ),
            "repeated filter member",
        );
        broken(
            bundle.replacen(r#""chainBefore":""#, r#""chainBefore":"00"#, 1),
            "chainBefore",
        );
        broken(format!("{bundle} {{}}"), "trailing data");
        broken(
            bundle.replacen(r#"{"format""#, r#"{"format":"x","format""#, 1),
            "repeated member",
        );
        broken(
            bundle.replacen(r#""context":true"#, r#""context":false"#, 1),
            "context flag",
        );
        broken(
            bundle.replacen(r#""records":["#, r#""keys":[],"records":["#, 1),
            "unknown member",
        );
        let dup = bundle.replacen(r#""n":3,"#, r#""n":3,"n":3,"#, 1);
        let report = broken(dup, "repeated member in a record");
        assert_eq!(report.first().unwrap().seq, Some(3));
        assert!(check(b"[]", &keys, &[], false).exit_code() != 0);
        assert!(check(b"", &keys, &[], false).exit_code() != 0);
    }

    /// Verifier throughput on a full export of a synthetic log of realistic records (release:
    /// `cargo test --release -p tollgate-log verify_throughput -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn verify_throughput() {
        let mut log = Log::new();
        let count = 200_000;
        for n in 0..count {
            let record = serde_json::json!({
                "event": "mcp.response", "sub": format!("user{}@example.com", n % 50),
                "iss": "https://idp.example.com", "jti": format!("jti-{n}"), "client_id": "agent-7",
                "groups": ["payments", "support"], "method": "tools/call", "tool": "get_payment",
                "session": format!("s-{}", n / 20), "decision": "allow", "status": 200,
                "result": {"content": [{"type": "text", "text": "card ************1111 exp 12/29 amount 10.00 EUR"}]},
                "latencyMicros": 1234, "n": n,
            });
            log.append(record.as_object().unwrap().clone());
            if n % 1000 == 999 {
                log.checkpoint();
            }
        }
        let bundle = log.export(None);
        let keys = [log.signer.verifier()];
        // Kept for profiling the standalone binary on it, when asked.
        if let Ok(path) = std::env::var("TOLLGATE_BUNDLE_OUT") {
            std::fs::write(&path, &bundle).unwrap();
            std::fs::write(format!("{path}.vkeys"), keys[0].encode()).unwrap();
        }
        let started = std::time::Instant::now();
        let report = check(&bundle, &keys, &[], false);
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(report.exit_code(), 0, "{:?}", report.findings);
        println!(
            "{} records, {:.1} MiB, {elapsed:.3} s, {:.0} records/s",
            report.records,
            bundle.len() as f64 / (1 << 20) as f64,
            report.records as f64 / elapsed
        );
    }
}
