//! Verification of the whole log: every record's chain hash and canonical form, the Merkle
//! root at every checkpoint's size, every checkpoint's signature, and the checkpoints against
//! each other (forks, roll-backs) and against checkpoints seen before (truncation).
//!
//! Pure logic over what a store or a server returned; `tollgate audit verify` feeds it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::chain::{self, Hash, StoredRecord};
use crate::merkle::{self, Frontier};
use crate::note::{self, Checkpoint, NoteError, NoteVerifier};

/// One problem found. `seq` is the first record it makes suspect, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub seq: Option<u64>,
    pub problem: String,
}

impl Finding {
    pub fn at(seq: u64, problem: impl Into<String>) -> Self {
        Self {
            seq: Some(seq),
            problem: problem.into(),
        }
    }

    pub fn log(problem: impl Into<String>) -> Self {
        Self {
            seq: None,
            problem: problem.into(),
        }
    }
}

/// A checkpoint whose signature verified, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// How reports name it: `checkpoint #12`, `checkpoint in FILE`.
    pub label: String,
    pub checkpoint: Checkpoint,
    pub signer: NoteVerifier,
    pub note: String,
}

/// Opens checkpoints with `keys`, keeps those that verify and belong to `origin`, and reports
/// the rest; then checks them against each other. `stored` are the log's own checkpoints in
/// the order it wrote them (their sizes and times must not go back); `external` are
/// checkpoints seen before (a saved file, a bundle).
pub fn check_checkpoints(
    origin: &str,
    stored: &[(String, String)],
    external: &[(String, String)],
    keys: &[NoteVerifier],
    findings: &mut Vec<Finding>,
) -> Vec<Trusted> {
    let mut trusted = Vec::new();
    let mut open_all = |list: &[(String, String)], trusted: &mut Vec<Trusted>| {
        let mut opened = Vec::new();
        for (label, text) in list {
            match note::open_checkpoint(text, keys) {
                Ok(signed) if signed.checkpoint.origin != origin => {
                    findings.push(Finding::log(format!(
                        "{label} is for log {:?}, not {origin:?}",
                        signed.checkpoint.origin
                    )))
                }
                Ok(signed) => {
                    let entry = Trusted {
                        label: label.clone(),
                        checkpoint: signed.checkpoint,
                        signer: signed.signer,
                        note: text.clone(),
                    };
                    opened.push(entry.clone());
                    trusted.push(entry);
                }
                Err(NoteError::BadSignature(key)) => findings.push(Finding::log(format!(
                    "{label} has a bad signature (key {key}): forged or altered"
                ))),
                Err(NoteError::NoTrustedSignature) => findings.push(Finding::log(format!(
                    "{label} is not signed by a trusted key"
                ))),
                Err(e) => findings.push(Finding::log(format!("{label}: {e}"))),
            }
        }
        opened
    };
    let own = open_all(stored, &mut trusted);
    open_all(external, &mut trusted);
    for pair in own.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.checkpoint.size < before.checkpoint.size {
            findings.push(Finding::at(
                after.checkpoint.size,
                format!(
                    "{} covers {} records, fewer than {} before it ({}): the log was rolled back",
                    after.label, after.checkpoint.size, before.label, before.checkpoint.size
                ),
            ));
        }
        if after.checkpoint.time < before.checkpoint.time {
            findings.push(Finding::log(format!(
                "{} is dated {}, before {} ({})",
                after.label, after.checkpoint.time, before.label, before.checkpoint.time
            )));
        }
    }
    let mut by_size: BTreeMap<u64, &Trusted> = BTreeMap::new();
    for entry in &trusted {
        match by_size.get(&entry.checkpoint.size) {
            Some(first)
                if first.checkpoint.root != entry.checkpoint.root
                    || first.checkpoint.chain_head != entry.checkpoint.chain_head =>
            {
                findings.push(Finding::log(format!(
                    "{} and {} both sign {} records with different roots: the log was forked",
                    first.label, entry.label, entry.checkpoint.size
                )));
            }
            Some(_) => {}
            None => {
                by_size.insert(entry.checkpoint.size, entry);
            }
        }
    }
    trusted
}

/// Walks the records from seq 0, checking the chain and, at each checkpoint's size, the Merkle
/// root and chain head it signs.
pub struct LogCheck {
    chain: chain::Verifier,
    frontier: Frontier,
    /// Checkpoints not yet reached, by size.
    pending: BTreeMap<u64, Vec<Trusted>>,
    /// Largest size at which every checkpoint matched.
    matched_size: u64,
    checkpoints_matched: usize,
    findings: Vec<Finding>,
    stopped: bool,
    /// Before an archive cut: the stored chain hash of the last retained record when it is
    /// the last leaf walked (a checkpoint's signed chain line is checked against it).
    prefix_head: Option<Hash>,
    /// The leaves before the cut, walked as subtrees and retained records.
    archived: u64,
}

/// What [`LogCheck`] found.
#[derive(Debug, Clone)]
pub struct LogSummary {
    pub records: u64,
    pub head: Hash,
    pub root: Hash,
    pub checkpoints_matched: usize,
    /// Records after the largest checkpoint: not yet covered by a signature.
    pub uncovered: u64,
    /// Records before the archive cut: checked through the stored subtrees and the retained
    /// records, not read one by one.
    pub archived: u64,
    pub findings: Vec<Finding>,
}

impl LogCheck {
    pub fn new(checkpoints: &[Trusted]) -> Self {
        let mut pending: BTreeMap<u64, Vec<Trusted>> = BTreeMap::new();
        for entry in checkpoints {
            pending
                .entry(entry.checkpoint.size)
                .or_default()
                .push(entry.clone());
        }
        let mut check = Self {
            chain: chain::Verifier::new(),
            frontier: Frontier::new(),
            pending,
            matched_size: 0,
            checkpoints_matched: 0,
            findings: Vec::new(),
            stopped: false,
            prefix_head: None,
            archived: 0,
        };
        check.reached(0);
        check
    }

    /// Before an archive cut, the next `2^level` leaves as one stored subtree hash (records
    /// pruned after archiving). Returns whether to go on.
    pub fn archived_subtree(&mut self, level: u32, hash: Hash) -> bool {
        if self.stopped {
            return false;
        }
        let at = self.frontier.size();
        if self.frontier.push_subtree(level, hash).is_none() {
            self.findings.push(Finding::at(
                at,
                format!("the stored subtree at level {level} does not start at leaf {at}: the store's tree is malformed"),
            ));
            self.stopped = true;
            return false;
        }
        self.prefix_head = None;
        self.reached(self.frontier.size());
        !self.stopped
    }

    /// Before an archive cut, a record kept in the hot store (a key rotation, a change of
    /// state, or a neighbour of a checkpoint's last leaf), in leaf order. Its content is
    /// committed by the tree; its stored chain hash is checked against the record before it
    /// when that one was kept too, and against any checkpoint it ends. Returns whether to go on.
    pub fn retained(&mut self, record: &StoredRecord) -> bool {
        if self.stopped {
            return false;
        }
        let at = self.frontier.size();
        if record.seq != at {
            self.findings.push(Finding::at(
                at,
                format!("record {} stands where leaf {at} belongs before the archive cut: kept records are missing or out of order", record.seq),
            ));
            self.stopped = true;
            return false;
        }
        let stored: Option<Hash> = hex::decode(&record.chain_hash)
            .ok()
            .and_then(|b| b.try_into().ok());
        let linked = match (self.prefix_head, stored) {
            (Some(previous), Some(stored)) => {
                chain::chain(&previous, &record.canonical_json) == stored
            }
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if !linked {
            self.findings.push(Finding::at(
                record.seq,
                "the kept record's chain hash does not follow from the record before it: altered",
            ));
            self.stopped = true;
            return false;
        }
        self.frontier
            .push(merkle::leaf_hash(&record.canonical_json), |_, _, _| {});
        self.prefix_head = stored;
        self.reached(self.frontier.size());
        !self.stopped
    }

    /// Stops the walk at a problem found outside it (a source that could not supply a leaf).
    pub fn fail(&mut self, finding: Finding) {
        self.findings.push(finding);
        self.stopped = true;
    }

    /// Ends the archived prefix at the cut: the records from here on are checked one by one,
    /// chained onto `anchor`, the chain hash of the last archived record.
    pub fn resume(&mut self, anchor: Hash) {
        let cut = self.frontier.size();
        if let Some(kept) = self.prefix_head {
            if kept != anchor {
                self.findings.push(Finding::at(
                    cut.saturating_sub(1),
                    "the archive's chain hash at the cut differs from the kept record's: altered",
                ));
                self.stopped = true;
            }
        }
        self.prefix_head = None;
        self.archived = cut;
        self.chain = chain::Verifier::resume(cut, anchor);
    }

    /// Checks the next record; returns whether to go on (false after the first bad record).
    pub fn check(&mut self, record: &StoredRecord) -> bool {
        if self.stopped {
            return false;
        }
        if let Err(broken) = self.chain.check(record) {
            self.findings
                .push(Finding::at(broken.seq, broken.problem.to_string()));
            self.stopped = true;
            return false;
        }
        self.frontier
            .push(merkle::leaf_hash(&record.canonical_json), |_, _, _| {});
        self.reached(self.frontier.size());
        !self.stopped
    }

    fn reached(&mut self, size: u64) {
        let Some(checkpoints) = self.pending.remove(&size) else {
            return;
        };
        let root = self.frontier.root();
        let head = if self.frontier.size() > self.chain.count() {
            // Before the cut: only a kept record's stored hash says where the chain was.
            self.prefix_head
        } else {
            Some(self.chain.head())
        };
        for entry in checkpoints {
            if entry.checkpoint.root != root
                || head.is_some_and(|h| entry.checkpoint.chain_head != h)
            {
                let what = if entry.checkpoint.root != root {
                    "Merkle root"
                } else {
                    "chain head"
                };
                self.findings.push(Finding::at(
                    self.matched_size,
                    format!(
                        "records {}..{} do not match {} (size {size}, signed {}): its {what} differs — records changed and re-hashed, or the log was forked",
                        self.matched_size,
                        size.saturating_sub(1),
                        entry.label,
                        entry.checkpoint.time,
                    ),
                ));
                self.stopped = true;
            } else {
                self.checkpoints_matched += 1;
            }
        }
        if !self.stopped {
            self.matched_size = size;
        }
    }

    pub fn finish(mut self) -> LogSummary {
        let records = self.chain.count().max(self.frontier.size());
        if !self.stopped {
            // Checkpoints beyond the end: records were there and are gone.
            if let Some((size, entries)) = self.pending.iter().next_back() {
                let entry = &entries[0];
                self.findings.push(Finding::at(
                    records,
                    format!(
                        "missing: {} (signed {}) covers {size} records but only {records} are here: the tail was truncated or the store rolled back",
                        entry.label, entry.checkpoint.time
                    ),
                ));
            }
        }
        LogSummary {
            records,
            head: self.chain.head(),
            root: self.frontier.root(),
            checkpoints_matched: self.checkpoints_matched,
            uncovered: records.saturating_sub(self.matched_size),
            archived: self.archived,
            findings: self.findings,
        }
    }
}

/// The verdict printed by `tollgate audit verify` and `tollgate-verify`.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub records: u64,
    pub head: Option<Hash>,
    pub root: Option<Hash>,
    pub checkpoints_matched: usize,
    pub latest: Option<Trusted>,
    pub uncovered: u64,
    pub findings: Vec<Finding>,
    /// Things the reader should know that are not failures.
    pub notes: Vec<String>,
    /// Why nothing outside the evidence vouches for who signed it (no pinned key, no witness
    /// policy): the result is then "unauthenticated", never "intact".
    pub unauthenticated: Option<String>,
    /// Witnesses whose cosignatures on the latest checkpoint verified under the policy.
    pub cosigned_by: Vec<String>,
}

/// Exit code of a check that found a problem.
pub const EXIT_BROKEN: u8 = 1;
/// Exit code of a check that could not be completed, or found nothing wrong but had nothing
/// trusted to check signatures against.
pub const EXIT_UNAUTHENTICATED: u8 = 2;

impl Report {
    /// No problem found and the signatures checked against keys from outside the evidence.
    pub fn intact(&self) -> bool {
        self.findings.is_empty() && self.unauthenticated.is_none()
    }

    /// 0 intact, 1 broken, 2 unauthenticated (a broken result wins).
    pub fn exit_code(&self) -> u8 {
        if !self.findings.is_empty() {
            EXIT_BROKEN
        } else if self.unauthenticated.is_some() {
            EXIT_UNAUTHENTICATED
        } else {
            0
        }
    }

    /// `intact`, `broken` or `unauthenticated`.
    pub fn status(&self) -> &'static str {
        match self.exit_code() {
            0 => "intact",
            EXIT_BROKEN => "broken",
            _ => "unauthenticated",
        }
    }

    /// The finding to name first: the lowest record, else the first found.
    pub fn first(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.seq.is_some())
            .min_by_key(|f| f.seq)
            .or_else(|| self.findings.first())
    }

    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "intact": self.intact(),
            "status": self.status(),
            "authenticated": self.unauthenticated.is_none(),
            "records": self.records,
        });
        if let Some(why) = &self.unauthenticated {
            out["unauthenticated"] = why.clone().into();
        }
        if !self.cosigned_by.is_empty() {
            out["cosignedBy"] = self.cosigned_by.clone().into();
        }
        if let Some(head) = self.head {
            out["head"] = hex::encode(head).into();
        }
        if let Some(root) = self.root {
            out["root"] = hex::encode(root).into();
        }
        out["checkpointsVerified"] = self.checkpoints_matched.into();
        if let Some(latest) = &self.latest {
            out["latestCheckpoint"] = json!({
                "size": latest.checkpoint.size,
                "time": latest.checkpoint.time,
                "key": latest.signer.label(),
            });
        }
        out["uncoveredRecords"] = self.uncovered.into();
        if let Some(first) = self.first() {
            out["firstBadSeq"] = first.seq.map_or(Value::Null, Value::from);
            out["problem"] = first.problem.clone().into();
            out["problems"] = self
                .findings
                .iter()
                .map(|f| json!({"seq": f.seq, "problem": f.problem}))
                .collect();
        }
        if !self.notes.is_empty() {
            out["notes"] = self.notes.clone().into();
        }
        out
    }

    /// Human lines; the first says intact or names the first bad record.
    pub fn lines(&self, what: &str) -> Vec<String> {
        let mut lines = Vec::new();
        match self.first() {
            None if self.unauthenticated.is_some() => lines.push(format!(
                "{what} unauthenticated: {} records check out, but {}",
                self.records,
                self.unauthenticated.as_deref().unwrap_or_default()
            )),
            None => {
                let mut line = format!("{what} intact: {} records", self.records);
                if let Some(head) = self.head {
                    line.push_str(&format!(", head {}", hex::encode(head)));
                }
                lines.push(line);
            }
            Some(Finding {
                seq: Some(seq),
                problem,
            }) => lines.push(format!("{what} broken at record {seq}: {problem}")),
            Some(Finding { seq: None, problem }) => {
                lines.push(format!("{what} broken: {problem}"));
            }
        }
        if let Some(first) = self.first() {
            for finding in self.findings.iter().filter(|f| *f != first) {
                lines.push(format!("also: {}", finding.problem));
            }
        }
        if let Some(latest) = &self.latest {
            lines.push(format!(
                "{} checkpoints verified; latest covers {} records, signed {} by {}",
                self.checkpoints_matched,
                latest.checkpoint.size,
                latest.checkpoint.time,
                latest.signer.label()
            ));
        } else if self.intact() {
            lines.push("no signed checkpoint yet".into());
        }
        if !self.cosigned_by.is_empty() {
            lines.push(format!("cosigned by {}", self.cosigned_by.join(", ")));
        }
        if self.uncovered > 0 && self.intact() {
            lines.push(format!(
                "{} records after the latest checkpoint are not yet covered by a signature",
                self.uncovered
            ));
        }
        for note in &self.notes {
            lines.push(format!("note: {note}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;

    struct Log {
        records: Vec<StoredRecord>,
        signer: NoteSigner,
    }

    impl Log {
        fn new(n: u64) -> Self {
            let mut head = chain::GENESIS;
            let records = (0..n)
                .map(|seq| {
                    let canonical = format!(r#"{{"n":{seq}}}"#).into_bytes();
                    head = chain::chain(&head, &canonical);
                    StoredRecord {
                        seq,
                        canonical_json: canonical,
                        chain_hash: hex::encode(head),
                    }
                })
                .collect();
            Self {
                records,
                signer: NoteSigner::generate("log.test").unwrap(),
            }
        }

        fn checkpoint(&self, size: u64, time: &str) -> (String, String) {
            let mut frontier = Frontier::new();
            for r in &self.records[..size as usize] {
                frontier.push(merkle::leaf_hash(&r.canonical_json), |_, _, _| {});
            }
            let head = if size == 0 {
                chain::GENESIS
            } else {
                let h = &self.records[size as usize - 1].chain_hash;
                hex::decode(h).unwrap().try_into().unwrap()
            };
            let checkpoint = Checkpoint {
                origin: "log.test".into(),
                size,
                root: frontier.root(),
                chain_head: head,
                time: time.into(),
            };
            (
                format!("checkpoint at {size}"),
                self.signer.sign(&checkpoint.text()),
            )
        }

        fn verify(&self, stored: &[(String, String)], records: &[StoredRecord]) -> LogSummary {
            let mut findings = Vec::new();
            let trusted = check_checkpoints(
                "log.test",
                stored,
                &[],
                &[self.signer.verifier()],
                &mut findings,
            );
            let mut check = LogCheck::new(&trusted);
            for r in records {
                if !check.check(r) {
                    break;
                }
            }
            let mut summary = check.finish();
            findings.append(&mut summary.findings);
            summary.findings = findings;
            summary
        }
    }

    #[test]
    fn intact_log_matches_its_checkpoints() {
        let log = Log::new(30);
        let cps = [
            log.checkpoint(0, "2025-01-01T00:00:00.000000Z"),
            log.checkpoint(10, "2025-01-01T00:00:01.000000Z"),
            log.checkpoint(25, "2025-01-01T00:00:02.000000Z"),
        ];
        let summary = log.verify(&cps, &log.records);
        assert_eq!(summary.findings, vec![]);
        assert_eq!(summary.checkpoints_matched, 3);
        assert_eq!(summary.uncovered, 5);
    }

    #[test]
    fn a_forged_chain_is_caught_by_the_checkpoint_root() {
        let log = Log::new(30);
        let cps = [
            log.checkpoint(10, "2025-01-01T00:00:01.000000Z"),
            log.checkpoint(25, "2025-01-01T00:00:02.000000Z"),
        ];
        // Record 17 changed and every chain hash from it recomputed: the chain alone passes.
        let mut forged = log.records.clone();
        forged[17].canonical_json = br#"{"n":1700}"#.to_vec();
        let mut head: Hash = hex::decode(&forged[16].chain_hash)
            .unwrap()
            .try_into()
            .unwrap();
        for r in &mut forged[17..] {
            head = chain::chain(&head, &r.canonical_json);
            r.chain_hash = hex::encode(head);
        }
        let summary = log.verify(&cps, &forged);
        assert_eq!(summary.findings.len(), 1);
        assert_eq!(summary.findings[0].seq, Some(10));
        assert!(summary.findings[0].problem.contains("records 10..24"));
    }

    #[test]
    fn truncation_rollback_fork_and_bad_signatures_are_named() {
        let log = Log::new(30);
        let cp25 = log.checkpoint(25, "2025-01-01T00:00:02.000000Z");
        let summary = log.verify(std::slice::from_ref(&cp25), &log.records[..20]);
        assert_eq!(summary.findings[0].seq, Some(20));
        assert!(summary.findings[0].problem.starts_with("missing:"));

        // A second checkpoint at 25 over another log: a fork.
        let other = Log {
            records: Log::new(31).records[1..].to_vec(),
            signer: NoteSigner::parse(&log.signer.encode_private()).unwrap(),
        };
        let forked = other.checkpoint(25, "2025-01-01T00:00:03.000000Z");
        let summary = log.verify(&[cp25.clone(), forked], &log.records);
        assert!(summary
            .findings
            .iter()
            .any(|f| f.problem.contains("the log was forked")));

        // A later checkpoint smaller than an earlier one.
        let cp5 = log.checkpoint(5, "2025-01-01T00:00:04.000000Z");
        let summary = log.verify(&[cp25.clone(), cp5], &log.records);
        assert!(summary.findings[0].problem.contains("rolled back"));

        // A signature that does not verify.
        let bad = (cp25.0.clone(), cp25.1.replacen("\n25\n", "\n26\n", 1));
        let summary = log.verify(&[bad], &log.records);
        assert!(summary.findings[0].problem.contains("bad signature"));
    }
}
