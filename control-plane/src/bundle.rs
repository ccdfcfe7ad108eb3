//! Writing export bundles from a store. The format, and its verification, are the log
//! crate's (`tollgate_log::bundle`): one signed checkpoint whose last leaf is the export's own
//! `controlPlane.auditExport` record, and every leaf up to it, the selected records whole and
//! the rest as subtree hashes. Format: `docs/audit-chain.md`.

use std::sync::Arc;

use serde_json::{Map, Value};
use tollgate_log::bundle::{SelectionDigest, EXPORT_EVENT};
use tollgate_log::key_history::KEY_ROTATED;

use crate::chain::Hash;
use crate::clock::{self, Micros};
use crate::merkle;
use crate::note::Checkpoint;
use crate::operator::Operator;
use crate::store::{Reads, Store, StoreError, RECEIVED_AT};
use crate::witness::Witnesses;

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

/// A selected record: where it is and what it hashes to. The record itself is read again when
/// the bundle is written, so that an export holds no more than this per record in memory.
pub struct Selected {
    pub seq: u64,
    pub leaf: Hash,
}

/// What an export takes from the log before it writes its record.
#[derive(Default)]
pub struct Picked {
    pub records: Vec<Selected>,
    /// Every key rotation in the log: the verifier needs them all to know which key signed
    /// what, selected or not.
    pub key_records: Vec<u64>,
}

/// Reads the records `selection` picks, and where the key rotations are.
pub fn select(reader: &dyn Reads, selection: &Selection) -> Result<Picked, StoreError> {
    let mut selected = Picked::default();
    for record in reader.records(0, 0) {
        let record = record?;
        // A record that is not JSON is not exportable; `audit verify` reports it.
        let Ok(value) = serde_json::from_slice::<Value>(&record.canonical_json) else {
            continue;
        };
        if value.get("event").and_then(Value::as_str) == Some(KEY_ROTATED) {
            selected.key_records.push(record.seq);
        }
        if selection.matches(&value) {
            selected.records.push(Selected {
                seq: record.seq,
                leaf: merkle::leaf_hash(&record.canonical_json),
            });
        }
    }
    Ok(selected)
}

/// The fields of the export record for `selected`.
pub fn export_event(selected: &Picked, filter: &Value) -> Map<String, Value> {
    let records = &selected.records;
    let mut event = Map::new();
    event.insert("event".into(), EXPORT_EVENT.into());
    event.insert("filter".into(), filter.clone());
    event.insert("records".into(), records.len().into());
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        event.insert("firstSeq".into(), first.seq.into());
        event.insert("lastSeq".into(), last.seq.into());
    }
    let mut digest = SelectionDigest::default();
    for record in records {
        digest.add(record.seq, &record.leaf);
    }
    event.insert(
        "selectionDigest".into(),
        hex::encode(digest.finish()).into(),
    );
    event.insert("keyRecords".into(), selected.key_records.clone().into());
    event
}

/// What a bundle is written from, once the export record (`export_seq`) is stored and the
/// checkpoint whose last leaf it is (`note`, with any cosignatures) is signed.
pub struct Assembly<'a> {
    pub origin: &'a str,
    pub selected: &'a Picked,
    pub filter: &'a Value,
    pub export_seq: u64,
    pub note: &'a str,
    pub checkpoint: &'a Checkpoint,
}

/// The store as a bundle's source of leaves.
struct Leaves<'a>(&'a dyn Reads);

impl tollgate_log::bundle::Source for Leaves<'_> {
    type Error = StoreError;

    fn record(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        Ok(stored_record(self.0, seq)?.canonical_json)
    }

    fn chain_hash(&self, seq: u64) -> Result<Hash, StoreError> {
        let stored = stored_record(self.0, seq)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&stored.chain_hash, &mut hash)
            .map_err(|_| StoreError::Corrupt(seq.to_string()))?;
        Ok(hash)
    }

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.0.subtree(level, index)
    }

    fn changed(&self, seq: u64) -> StoreError {
        StoreError::Inconsistent(format!(
            "record {seq} changed between its selection and the export"
        ))
    }
}

/// Writes the bundle to `out` as it reads the store: one record, one skipped range at a
/// time, never the whole bundle in memory.
pub fn write(
    reader: &dyn Reads,
    assembly: &Assembly<'_>,
    out: &mut dyn std::io::Write,
) -> Result<(), StoreError> {
    let size = assembly.checkpoint.size;
    if assembly.export_seq + 1 != size {
        return Err(StoreError::Inconsistent(format!(
            "the export record {} is not the last leaf of its checkpoint of {size} records",
            assembly.export_seq
        )));
    }
    // Earlier checkpoints, one per size (the first signed at it), read a page at a time.
    let mut earlier = Vec::new();
    let mut last_size = None;
    let mut next = 0;
    loop {
        let page = reader.checkpoints_from(next, crate::store::CHECKPOINT_PAGE)?;
        let last_page = page.len() < crate::store::CHECKPOINT_PAGE;
        for stored in page {
            next = stored.number + 1;
            let Ok(parsed) = Checkpoint::of_note(&stored.note) else {
                continue;
            };
            if parsed.size < size && last_size.is_none_or(|last| parsed.size > last) {
                last_size = Some(parsed.size);
                earlier.push(stored.note);
            }
        }
        if last_page {
            break;
        }
    }
    let selected: Vec<(u64, Hash)> = assembly
        .selected
        .records
        .iter()
        .map(|s| (s.seq, s.leaf))
        .collect();
    let contents = tollgate_log::bundle::Contents {
        origin: assembly.origin,
        note: assembly.note,
        checkpoint: assembly.checkpoint,
        earlier: &earlier,
        key_records: &assembly.selected.key_records,
        selected: &selected,
        filter: assembly.filter,
    };
    tollgate_log::bundle::write(&Leaves(reader), &contents, out)
}

/// The stored record at `seq`.
fn stored_record(reader: &dyn Reads, seq: u64) -> Result<crate::chain::StoredRecord, StoreError> {
    // The next stored record may be a later one when this one was archived and pruned.
    match reader.records(seq, 1).next() {
        Some(Ok(record)) if record.seq == seq => Ok(record),
        Some(Err(e)) => Err(e),
        _ => Err(StoreError::Range(format!(
            "record {seq} is not in the hot store: it was archived (read it from the archive segments)"
        ))),
    }
}

/// Exports `selection` from a running store: selects, then [`export_picked`]. Returns the
/// number of records selected, and `out`.
pub async fn export(
    store: &Arc<Store>,
    selection: Selection,
    operator: &Operator,
    via: &str,
    witnesses: Option<&Witnesses>,
    out: Box<dyn std::io::Write + Send>,
) -> Result<(u64, Box<dyn std::io::Write + Send>), StoreError> {
    let picked = {
        let store = store.clone();
        let selection = selection.clone();
        tokio::task::spawn_blocking(move || select(store.reader(), &selection))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
    };
    let filter = selection.to_json();
    let mut extra = Map::new();
    let reader_store = store.clone();
    let archived = tokio::task::spawn_blocking(move || reader_store.reader().archive())
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    if let Some(archived) = archived {
        // Said in the export record, which the bundle's checkpoint signs: records before the
        // cut are in the archive's segments, not selected here.
        extra.insert("archivedBefore".into(), archived.cut.into());
    }
    let by = By {
        operator,
        via,
        witnesses,
    };
    export_picked(store, picked, filter, extra, &by, out).await
}

/// Who asks for an export, how, and who cosigns its checkpoint.
pub struct By<'a> {
    pub operator: &'a Operator,
    pub via: &'a str,
    pub witnesses: Option<&'a Witnesses>,
}

/// Records the export of `picked` (with `operator` and the `extra` fields) and signs the
/// checkpoint whose last leaf that record is, in one step of the writer, has `witnesses` (if
/// any) cosign it, and writes the bundle to `out` on a blocking thread as it reads it. Returns
/// the number of records selected, and `out`.
pub async fn export_picked(
    store: &Arc<Store>,
    picked: Picked,
    filter: Value,
    extra: Map<String, Value>,
    by: &By<'_>,
    mut out: Box<dyn std::io::Write + Send>,
) -> Result<(u64, Box<dyn std::io::Write + Send>), StoreError> {
    let task = |e: tokio::task::JoinError| StoreError::Task(e.to_string());
    let witnesses = by.witnesses;
    let mut event = export_event(&picked, &filter);
    event.extend(extra);
    event.insert("operator".into(), by.operator.to_json());
    event.insert("via".into(), by.via.into());
    let order = match witnesses {
        Some(witnesses) => Some(witnesses.in_order().await),
        None => None,
    };
    let (appended, stored) = store.append_with_checkpoint(&event).await?;
    let keys = store.verifiers()?;
    let signed = crate::note::open_checkpoint(&stored.note, &keys)
        .map_err(|e| StoreError::Inconsistent(format!("a fresh checkpoint does not open: {e}")))?;
    // With witnesses, the checkpoint counts only once their quorum cosigned it.
    let note = match witnesses {
        Some(witnesses) => witnesses
            .cosign(store, &stored.note)
            .await
            .map_err(|e| StoreError::Witnesses(e.to_string()))?,
        None => stored.note,
    };
    drop(order);
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let assembly = Assembly {
            origin: store.origin(),
            selected: &picked,
            filter: &filter,
            export_seq: appended.seq,
            note: &note,
            checkpoint: &signed.checkpoint,
        };
        write(store.reader(), &assembly, &mut out)?;
        out.flush()
            .map_err(|e| StoreError::Task(format!("writing the bundle: {e}")))?;
        Ok((picked.records.len() as u64, out))
    })
    .await
    .map_err(task)?
}
