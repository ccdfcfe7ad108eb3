//! Export bundles: a selection of records with everything needed to verify them offline.
//!
//! A bundle holds the selected records (with their sequence numbers, leaf hashes and chain
//! hashes), the log's public keys, the checkpoint all proofs are against, an inclusion proof of
//! each record, earlier checkpoints with consistency proofs to the latest, and the
//! `controlPlane.auditExport` record that the export wrote into the log before the checkpoint
//! was signed. That record holds the count and a digest of the selection, so a record removed
//! from (or added to) the bundle afterwards is detected although the omitted records are not
//! in it. Format: `docs/audit-chain.md`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::chain::{self, Hash, GENESIS};
use crate::clock::{self, Micros};
use crate::merkle;
use crate::note::{NoteVerifier, SignedCheckpoint};
use crate::operator::Operator;
use crate::store::{Reads, Store, StoreError, RECEIVED_AT};
use crate::verify::{self, Finding, Report, Trusted};

pub const FORMAT: &str = "tollgate-audit-bundle/1";
/// How reports name the bundle's latest checkpoint.
const LATEST: &str = "the bundle's checkpoint";
/// The `event` of the record an export writes about itself.
pub const EXPORT_EVENT: &str = "controlPlane.auditExport";

/// Which records to export (or query, or replay). Every bound given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `receivedAt` at or after this.
    pub from: Option<Micros>,
    /// `receivedAt` before this.
    pub to: Option<Micros>,
    pub sub: Option<String>,
    pub session: Option<String>,
}

impl Selection {
    pub fn matches(&self, record: &Value) -> bool {
        let text = |name: &str| record.get(name).and_then(Value::as_str);
        if self.sub.as_deref().is_some_and(|s| text("sub") != Some(s)) {
            return false;
        }
        if self
            .session
            .as_deref()
            .is_some_and(|s| text("session") != Some(s))
        {
            return false;
        }
        if self.from.is_none() && self.to.is_none() {
            return true;
        }
        let Some(time) = text(RECEIVED_AT).and_then(clock::parse) else {
            return false;
        };
        self.from.is_none_or(|from| time >= from) && self.to.is_none_or(|to| time < to)
    }

    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(from) = self.from {
            out.insert("from".into(), clock::format(from).into());
        }
        if let Some(to) = self.to {
            out.insert("to".into(), clock::format(to).into());
        }
        if let Some(sub) = &self.sub {
            out.insert("sub".into(), sub.clone().into());
        }
        if let Some(session) = &self.session {
            out.insert("session".into(), session.clone().into());
        }
        Value::Object(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub origin: String,
    pub created_at: String,
    /// The selection, as the export record states it.
    pub filter: Value,
    /// Verifier keys of every key the log has signed with.
    pub keys: Vec<String>,
    /// The signed checkpoint every proof leads to.
    pub checkpoint: String,
    /// Earlier checkpoints (one per tree size), each with a consistency proof to `checkpoint`.
    pub checkpoints: Vec<EarlierCheckpoint>,
    pub records: Vec<BundleRecord>,
    /// The `controlPlane.auditExport` record of this export.
    pub export: BundleRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EarlierCheckpoint {
    pub note: String,
    /// Hex hashes of `PROOF(size, D[0:checkpoint size])`.
    pub consistency: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleRecord {
    pub seq: u64,
    /// Hex `SHA-256(0x00 || canonical record)`.
    pub leaf_hash: String,
    /// Hex chain hash after this record (checkable when the record before it is in the bundle).
    pub chain_hash: String,
    /// The record; its canonical (RFC 8785) form is what was hashed.
    pub record: Value,
    /// Hex hashes of the inclusion proof against `checkpoint`, leaf to root.
    pub inclusion: Vec<String>,
}

/// A selected record: where it is and what it hashes to. The record itself is read again when
/// the bundle is written, so that an export holds no more than this per record in memory.
pub struct Selected {
    pub seq: u64,
    pub leaf: Hash,
}

/// Reads the records `selection` picks.
pub fn select(reader: &dyn Reads, selection: &Selection) -> Result<Vec<Selected>, StoreError> {
    let mut selected = Vec::new();
    for record in reader.records(0, 0) {
        let record = record?;
        // A record that is not JSON is not exportable; `audit verify` reports it.
        let Ok(value) = serde_json::from_slice::<Value>(&record.canonical_json) else {
            continue;
        };
        if selection.matches(&value) {
            selected.push(Selected {
                seq: record.seq,
                leaf: merkle::leaf_hash(&record.canonical_json),
            });
        }
    }
    Ok(selected)
}

/// `SHA-256` over each selected record's sequence number (8 bytes big-endian) and leaf hash.
pub fn selection_digest<'a>(records: impl Iterator<Item = (u64, &'a Hash)>) -> Hash {
    let mut hasher = Sha256::new();
    for (seq, leaf) in records {
        hasher.update(seq.to_be_bytes());
        hasher.update(leaf);
    }
    hasher.finalize().into()
}

/// The fields of the export record for `selected`.
pub fn export_event(selected: &[Selected], filter: &Value) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("event".into(), EXPORT_EVENT.into());
    event.insert("filter".into(), filter.clone());
    event.insert("records".into(), selected.len().into());
    if let (Some(first), Some(last)) = (selected.first(), selected.last()) {
        event.insert("firstSeq".into(), first.seq.into());
        event.insert("lastSeq".into(), last.seq.into());
    }
    let digest = selection_digest(selected.iter().map(|s| (s.seq, &s.leaf)));
    event.insert("selectionDigest".into(), hex::encode(digest).into());
    event
}

/// What a bundle is written from, once the export record (`export_seq`) is stored and
/// `checkpoint` (which covers it) is signed.
pub struct Assembly<'a> {
    pub origin: &'a str,
    pub keys: &'a [NoteVerifier],
    pub selected: &'a [Selected],
    pub filter: &'a Value,
    pub export_seq: u64,
    pub checkpoint: &'a SignedCheckpoint,
}

fn hexes(hashes: Vec<Hash>) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// The stored record at `seq`, with its inclusion proof in a tree of `size` records.
fn bundle_record(reader: &dyn Reads, seq: u64, size: u64) -> Result<BundleRecord, StoreError> {
    let stored = reader
        .records(seq, 1)
        .next()
        .ok_or_else(|| StoreError::Corrupt(seq.to_string()))??;
    Ok(BundleRecord {
        seq: stored.seq,
        leaf_hash: hex::encode(merkle::leaf_hash(&stored.canonical_json)),
        chain_hash: stored.chain_hash,
        record: serde_json::from_slice(&stored.canonical_json)
            .map_err(|_| StoreError::Corrupt(seq.to_string()))?,
        inclusion: hexes(reader.inclusion_proof(seq, size)?),
    })
}

/// Writes the bundle (the [`Bundle`] document, field by field) to `out` as it is read: one
/// record, one earlier checkpoint at a time, never the whole bundle in memory.
pub fn write(
    reader: &dyn Reads,
    assembly: &Assembly<'_>,
    out: &mut dyn std::io::Write,
) -> Result<(), StoreError> {
    let size = assembly.checkpoint.checkpoint.size;
    let io = |e: std::io::Error| StoreError::Task(format!("writing the bundle: {e}"));
    let json = |value: &dyn erased::Json, out: &mut dyn std::io::Write| {
        value
            .write_to(out)
            .map_err(|e| StoreError::Task(format!("writing the bundle: {e}")))
    };
    let keys: Vec<String> = assembly.keys.iter().map(NoteVerifier::encode).collect();
    out.write_all(b"{\"format\":").map_err(io)?;
    json(&FORMAT, out)?;
    out.write_all(b",\"origin\":").map_err(io)?;
    json(&assembly.origin, out)?;
    out.write_all(b",\"createdAt\":").map_err(io)?;
    json(&clock::format(clock::now_micros()), out)?;
    out.write_all(b",\"filter\":").map_err(io)?;
    json(assembly.filter, out)?;
    out.write_all(b",\"keys\":").map_err(io)?;
    json(&keys, out)?;
    out.write_all(b",\"checkpoint\":").map_err(io)?;
    json(&assembly.checkpoint.note, out)?;

    // One earlier checkpoint per size (the first signed at it), within the selected time
    // range, read a page at a time.
    out.write_all(b",\"checkpoints\":[").map_err(io)?;
    let bound = |name: &str| {
        assembly
            .filter
            .get(name)
            .and_then(Value::as_str)
            .and_then(clock::parse)
    };
    let (from, to) = (bound("from"), bound("to"));
    let mut last_size = None;
    let mut first = true;
    let mut next = 0;
    loop {
        let page = reader.checkpoints_from(next, crate::store::CHECKPOINT_PAGE)?;
        let last_page = page.len() < crate::store::CHECKPOINT_PAGE;
        for stored in page {
            next = stored.number + 1;
            let Some(body) = stored
                .note
                .split_once("\n\n")
                .map(|(b, _)| format!("{b}\n"))
            else {
                continue;
            };
            let Ok(parsed) = crate::note::Checkpoint::parse(&body) else {
                continue;
            };
            let time = clock::parse(&parsed.time).unwrap_or(0);
            if parsed.size >= size
                || last_size == Some(parsed.size)
                || from.is_some_and(|f| time < f)
                || to.is_some_and(|t| time >= t)
            {
                continue;
            }
            last_size = Some(parsed.size);
            if !std::mem::take(&mut first) {
                out.write_all(b",").map_err(io)?;
            }
            json(
                &EarlierCheckpoint {
                    note: stored.note,
                    consistency: hexes(reader.consistency_proof(parsed.size, size)?),
                },
                out,
            )?;
        }
        if last_page {
            break;
        }
    }
    out.write_all(b"],\"records\":[").map_err(io)?;
    for (i, selected) in assembly.selected.iter().enumerate() {
        if i > 0 {
            out.write_all(b",").map_err(io)?;
        }
        let record = bundle_record(reader, selected.seq, size)?;
        if hex::decode(&record.leaf_hash).ok().as_deref() != Some(&selected.leaf[..]) {
            return Err(StoreError::Inconsistent(format!(
                "record {} changed between its selection and the export",
                selected.seq
            )));
        }
        json(&record, out)?;
    }
    out.write_all(b"],\"export\":").map_err(io)?;
    json(&bundle_record(reader, assembly.export_seq, size)?, out)?;
    out.write_all(b"}").map_err(io)?;
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

/// Exports `selection` from a running store: selects, records the export (with `operator`),
/// signs a checkpoint covering that record, and writes the bundle to `out` on a blocking
/// thread as it reads it. Returns the number of records in it, and `out`.
pub async fn export(
    store: &Arc<Store>,
    selection: Selection,
    operator: &Operator,
    via: &str,
    mut out: Box<dyn std::io::Write + Send>,
) -> Result<(u64, Box<dyn std::io::Write + Send>), StoreError> {
    let task = |e: tokio::task::JoinError| StoreError::Task(e.to_string());
    let selected = {
        let store = store.clone();
        let selection = selection.clone();
        tokio::task::spawn_blocking(move || select(store.reader(), &selection))
            .await
            .map_err(task)??
    };
    let filter = selection.to_json();
    let mut event = export_event(&selected, &filter);
    event.insert("operator".into(), operator.to_json());
    event.insert("via".into(), via.into());
    let appended = store.append_event(&event).await?;
    let stored = store.checkpoint().await?;
    let keys = store.verifiers()?;
    let signed = crate::note::open_checkpoint(&stored.note, &keys)
        .map_err(|e| StoreError::Inconsistent(format!("a fresh checkpoint does not open: {e}")))?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let assembly = Assembly {
            origin: store.origin(),
            keys: &keys,
            selected: &selected,
            filter: &filter,
            export_seq: appended.seq,
            checkpoint: &signed,
        };
        write(store.reader(), &assembly, &mut out)?;
        out.flush()
            .map_err(|e| StoreError::Task(format!("writing the bundle: {e}")))?;
        Ok((selected.len() as u64, out))
    })
    .await
    .map_err(task)?
}

fn decode_hashes(hexes: &[String]) -> Option<Vec<Hash>> {
    hexes
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
        .collect()
}

/// Verifies a bundle with no store and no network. `trusted`: the keys to accept (`None`: the
/// bundle's own, which proves integrity but not who signed; the report says so). `external`:
/// checkpoints seen before, as (label, note).
pub fn verify(
    bytes: &[u8],
    trusted: Option<&[NoteVerifier]>,
    external: &[(String, String)],
) -> Result<Report, String> {
    let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not an export bundle (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if bundle.format != FORMAT {
        return Err(format!("unsupported bundle format {:?}", bundle.format));
    }
    let mut notes = Vec::new();
    let own_keys: Vec<NoteVerifier> = bundle
        .keys
        .iter()
        .map(|k| NoteVerifier::parse(k).map_err(|e| format!("bundle key: {e}")))
        .collect::<Result<_, _>>()?;
    let keys = match trusted {
        Some(keys) => keys.to_vec(),
        None => {
            notes.push(
                "checked against the bundle's own public keys; pass --key with the log's published key to know who signed"
                    .into(),
            );
            own_keys
        }
    };
    let mut findings = Vec::new();
    let mut stored: Vec<(String, String)> = bundle
        .checkpoints
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("earlier checkpoint {i}"), c.note.clone()))
        .collect();
    stored.push((LATEST.to_string(), bundle.checkpoint.clone()));
    let opened = verify::check_checkpoints(&bundle.origin, &stored, external, &keys, &mut findings);
    let Some(latest) = opened.iter().find(|t| t.label == LATEST).cloned() else {
        findings.push(Finding::log(
            "the bundle's checkpoint does not verify, so nothing in it can be trusted",
        ));
        return Ok(report(0, None, 0, findings, notes));
    };
    let size = latest.checkpoint.size;
    let root = latest.checkpoint.root;
    let mut matched = 1;

    // Earlier checkpoints: each must be a prefix of the latest (else the log forked).
    for (i, earlier) in bundle.checkpoints.iter().enumerate() {
        let label = format!("earlier checkpoint {i}");
        // One that did not open is already reported.
        let Some(trusted) = opened.iter().find(|t| t.label == label) else {
            continue;
        };
        let ok = decode_hashes(&earlier.consistency).is_some_and(|proof| {
            merkle::verify_consistency(
                trusted.checkpoint.size,
                size,
                &trusted.checkpoint.root,
                &root,
                &proof,
            )
        });
        if ok {
            matched += 1;
        } else {
            findings.push(Finding::log(format!(
                "{label} (size {}) is not consistent with the bundle's checkpoint: the log was forked",
                trusted.checkpoint.size
            )));
        }
    }
    // Checkpoints from elsewhere: same size must mean same root (checked above); a bigger one
    // means the bundle comes from an older (or rolled-back) log.
    for external in opened
        .iter()
        .filter(|t| external.iter().any(|(l, _)| *l == t.label))
    {
        let theirs = &external.checkpoint;
        if theirs.size > size {
            notes.push(format!(
                "{} covers {} records, more than this bundle's {size}: the bundle is older than it",
                external.label, theirs.size
            ));
        } else if !opened
            .iter()
            .any(|t| t.checkpoint.size == theirs.size && t.label != external.label)
        {
            notes.push(format!(
                "{} (size {}) cannot be compared: the bundle has no checkpoint of that size",
                external.label, theirs.size
            ));
        }
    }

    // Records: each proven in the signed tree, in order, and chained where neighbours allow.
    let mut previous: Option<(u64, Hash)> = None;
    for entry in &bundle.records {
        if let Some((last, _)) = previous {
            if entry.seq <= last {
                findings.push(Finding::at(
                    entry.seq,
                    format!(
                        "record {} listed after record {last}: reordered or duplicated",
                        entry.seq
                    ),
                ));
                continue;
            }
        }
        if let Some(chain_hash) = check_record(entry, size, &root, previous, &mut findings) {
            previous = Some((entry.seq, chain_hash));
        }
    }
    let export_ok = check_record(&bundle.export, size, &root, None, &mut findings).is_some();

    // The export record, now proven, says what the bundle must hold.
    if export_ok {
        let stated = &bundle.export.record;
        if stated.get("event").and_then(Value::as_str) != Some(EXPORT_EVENT) {
            findings.push(Finding::at(
                bundle.export.seq,
                "the export record is not a controlPlane.auditExport record",
            ));
        } else {
            let leaves: Option<Vec<(u64, Hash)>> = bundle
                .records
                .iter()
                .map(|r| {
                    let leaf = hex::decode(&r.leaf_hash).ok()?.try_into().ok()?;
                    Some((r.seq, leaf))
                })
                .collect();
            let digest =
                leaves.map(|l| hex::encode(selection_digest(l.iter().map(|(s, h)| (*s, h)))));
            let count = stated.get("records").and_then(Value::as_u64);
            if count != Some(bundle.records.len() as u64)
                || digest.as_deref() != stated.get("selectionDigest").and_then(Value::as_str)
            {
                findings.push(Finding::log(format!(
                    "the bundle holds {} records but its export record (seq {}) lists {}{}: a record was removed, added or replaced",
                    bundle.records.len(),
                    bundle.export.seq,
                    count.map_or_else(|| "?".to_string(), |c| c.to_string()),
                    if count == Some(bundle.records.len() as u64) { " with another digest" } else { "" },
                )));
            }
            if stated.get("filter") != Some(&bundle.filter) {
                findings.push(Finding::log(
                    "the bundle's filter differs from the one its export record states",
                ));
            }
        }
    }
    let records = bundle.records.len() as u64;
    let mut report = report(records, Some(latest), matched, findings, notes);
    report.root = Some(root);
    Ok(report)
}

/// Checks one bundle record against the signed tree (`size`, `root`); returns its chain hash.
fn check_record(
    entry: &BundleRecord,
    size: u64,
    root: &Hash,
    previous: Option<(u64, Hash)>,
    findings: &mut Vec<Finding>,
) -> Option<Hash> {
    let seq = entry.seq;
    let Value::Object(object) = &entry.record else {
        findings.push(Finding::at(seq, "record is not a JSON object"));
        return None;
    };
    let Ok(canonical) = chain::canonicalise(object) else {
        findings.push(Finding::at(seq, "record cannot be canonicalised"));
        return None;
    };
    let leaf = merkle::leaf_hash(&canonical);
    if hex::encode(leaf) != entry.leaf_hash {
        findings.push(Finding::at(
            seq,
            "record does not hash to its leaf hash: altered",
        ));
        return None;
    }
    let proven = decode_hashes(&entry.inclusion)
        .is_some_and(|proof| merkle::verify_inclusion(&leaf, seq, size, &proof, root));
    if !proven {
        findings.push(Finding::at(
            seq,
            format!(
                "record is not in the signed log of {size} records at this position: altered, moved or forged"
            ),
        ));
        return None;
    }
    Some(chain_check(&canonical, entry, previous, findings))
}

/// Checks a record's chain hash when it can be (the first record, or the one after a record
/// also in the bundle); returns the stored chain hash for the next.
fn chain_check(
    canonical: &[u8],
    entry: &BundleRecord,
    previous: Option<(u64, Hash)>,
    findings: &mut Vec<Finding>,
) -> Hash {
    let stored: Option<Hash> = hex::decode(&entry.chain_hash)
        .ok()
        .and_then(|b| b.try_into().ok());
    let before = match previous {
        _ if entry.seq == 0 => Some(GENESIS),
        Some((seq, hash)) if seq + 1 == entry.seq => Some(hash),
        _ => None,
    };
    match (stored, before) {
        (None, _) => {
            findings.push(Finding::at(entry.seq, "chain hash is malformed"));
            [0; 32]
        }
        (Some(stored), Some(before)) if chain::chain(&before, canonical) != stored => {
            findings.push(Finding::at(entry.seq, "chain hash mismatch"));
            stored
        }
        (Some(stored), _) => stored,
    }
}

fn report(
    records: u64,
    latest: Option<Trusted>,
    matched: usize,
    findings: Vec<Finding>,
    notes: Vec<String>,
) -> Report {
    Report {
        records,
        head: None,
        root: None,
        checkpoints_matched: matched,
        latest,
        uncovered: 0,
        findings,
        notes,
    }
}
