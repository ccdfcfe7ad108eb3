//! Writing export bundles from a store. The format, and its verification, are the log
//! crate's (`tollgate_log::bundle`): one signed checkpoint whose last leaf is the export's own
//! `controlPlane.auditExport` record, and every leaf up to it, the selected records whole and
//! the rest as subtree hashes. Format: `docs/audit-chain.md`.

use std::sync::Arc;

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tollgate_log::bundle::{gap_cover, SelectionDigest, EXPORT_EVENT, FORMAT};
use tollgate_log::key_history::KEY_ROTATED;

use crate::chain::{Hash, GENESIS};
use crate::clock::{self, Micros};
use crate::merkle;
use crate::note::Checkpoint;
use crate::operator::Operator;
use crate::store::{Reads, Store, StoreError, RECEIVED_AT};

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
    let io = |e: std::io::Error| StoreError::Task(format!("writing the bundle: {e}"));
    let json = |value: &dyn erased::Json, out: &mut dyn std::io::Write| {
        value
            .write_to(out)
            .map_err(|e| StoreError::Task(format!("writing the bundle: {e}")))
    };

    // Earlier checkpoints, one per size (the first signed at it), read a page at a time.
    let mut earlier = Vec::new();
    let mut splits = BTreeSet::new();
    let mut next = 0;
    loop {
        let page = reader.checkpoints_from(next, crate::store::CHECKPOINT_PAGE)?;
        let last_page = page.len() < crate::store::CHECKPOINT_PAGE;
        for stored in page {
            next = stored.number + 1;
            let Some(parsed) = stored
                .note
                .split_once("\n\n")
                .and_then(|(b, _)| Checkpoint::parse(&format!("{b}\n")).ok())
            else {
                continue;
            };
            if parsed.size < size && splits.last().is_none_or(|last| parsed.size > *last) {
                splits.insert(parsed.size);
                earlier.push(stored.note);
            }
        }
        if last_page {
            break;
        }
    }
    let chain_before = match assembly.export_seq.checked_sub(1) {
        None => hex::encode(GENESIS),
        Some(seq) => stored_record(reader, seq)?.chain_hash,
    };

    out.write_all(b"{\"format\":").map_err(io)?;
    json(&FORMAT, out)?;
    out.write_all(b",\"origin\":").map_err(io)?;
    json(&assembly.origin, out)?;
    out.write_all(b",\"checkpoint\":").map_err(io)?;
    json(&assembly.note, out)?;
    out.write_all(b",\"checkpoints\":").map_err(io)?;
    json(&earlier, out)?;
    out.write_all(b",\"keyRecords\":").map_err(io)?;
    json(&assembly.selected.key_records, out)?;
    out.write_all(b",\"chainBefore\":").map_err(io)?;
    json(&chain_before, out)?;
    out.write_all(b",\"filter\":").map_err(io)?;
    json(assembly.filter, out)?;
    out.write_all(b",\"records\":[").map_err(io)?;

    // Every leaf up to the export record: selected and context records whole, the rest as
    // the subtrees that cover them.
    let selected = &assembly.selected.records;
    let keys: BTreeSet<u64> = assembly.selected.key_records.iter().copied().collect();
    let mut leaves: Vec<(u64, Option<&Hash>)> =
        selected.iter().map(|s| (s.seq, Some(&s.leaf))).collect();
    leaves.extend(
        keys.iter()
            .filter(|seq| selected.binary_search_by_key(*seq, |s| s.seq).is_err())
            .map(|seq| (*seq, None)),
    );
    leaves.push((assembly.export_seq, None));
    leaves.sort_by_key(|(seq, _)| *seq);
    let mut at = 0;
    let mut first = true;
    let mut separator = |out: &mut dyn std::io::Write| {
        if std::mem::take(&mut first) {
            Ok(())
        } else {
            out.write_all(b",")
        }
    };
    for (seq, selected_leaf) in leaves {
        if seq > at {
            separator(out).map_err(io)?;
            let nodes = gap_cover(at, seq, &splits)
                .into_iter()
                .map(|(level, index)| reader.subtree(level, index).map(hex::encode))
                .collect::<Result<Vec<_>, _>>()?;
            out.write_all(format!("{{\"skip\":{},\"nodes\":", seq - at).as_bytes())
                .map_err(io)?;
            json(&nodes, out)?;
            out.write_all(b"}").map_err(io)?;
        }
        let stored = stored_record(reader, seq)?;
        let leaf = merkle::leaf_hash(&stored.canonical_json);
        if selected_leaf.is_some_and(|l| *l != leaf) {
            return Err(StoreError::Inconsistent(format!(
                "record {seq} changed between its selection and the export"
            )));
        }
        separator(out).map_err(io)?;
        out.write_all(
            format!(
                "{{\"seq\":{seq},\"leafHash\":\"{}\",\"record\":",
                hex::encode(leaf)
            )
            .as_bytes(),
        )
        .map_err(io)?;
        out.write_all(&stored.canonical_json).map_err(io)?;
        if selected_leaf.is_none() {
            out.write_all(b",\"context\":true").map_err(io)?;
        }
        out.write_all(b"}").map_err(io)?;
        at = seq + 1;
    }
    out.write_all(b"]}").map_err(io)?;
    Ok(())
}

/// The stored record at `seq`.
fn stored_record(reader: &dyn Reads, seq: u64) -> Result<crate::chain::StoredRecord, StoreError> {
    reader
        .records(seq, 1)
        .next()
        .ok_or_else(|| StoreError::Corrupt(seq.to_string()))?
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

/// Exports `selection` from a running store: selects, records the export (with `operator`)
/// and signs the checkpoint whose last leaf that record is, in one step of the writer, and
/// writes the bundle to `out` on a blocking thread as it reads it. Returns the number of
/// records selected, and `out`.
pub async fn export(
    store: &Arc<Store>,
    selection: Selection,
    operator: &Operator,
    via: &str,
    mut out: Box<dyn std::io::Write + Send>,
) -> Result<(u64, Box<dyn std::io::Write + Send>), StoreError> {
    let task = |e: tokio::task::JoinError| StoreError::Task(e.to_string());
    let picked = {
        let store = store.clone();
        let selection = selection.clone();
        tokio::task::spawn_blocking(move || select(store.reader(), &selection))
            .await
            .map_err(task)??
    };
    let filter = selection.to_json();
    let mut event = export_event(&picked, &filter);
    event.insert("operator".into(), operator.to_json());
    event.insert("via".into(), via.into());
    let (appended, stored) = store.append_with_checkpoint(&event).await?;
    let keys = store.verifiers()?;
    let signed = crate::note::open_checkpoint(&stored.note, &keys)
        .map_err(|e| StoreError::Inconsistent(format!("a fresh checkpoint does not open: {e}")))?;
    let note = stored.note;
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
