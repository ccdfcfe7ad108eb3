//! Which log key may sign a checkpoint of a given size: the chain's own
//! `controlPlane.keyRotated` records say so. A rotation at record `r` retires its
//! `previousKey`, which signed checkpoints of at most `r` records dated no later than the
//! rotation; its `newKey` signs from `r + 1` records on. A retired key that signs anything
//! else (a checkpoint over the rotation, or one dated after it) signs a forgery.

use serde_json::Value;

use crate::note::NoteVerifier;

/// The `event` of a rotation record.
pub const KEY_ROTATED: &str = "controlPlane.keyRotated";

/// Whether a record's canonical JSON may be a key rotation: the fast test for scans of the whole
/// log, without parsing each record (a nested `event` member can match too; parse to be sure).
pub fn may_be_rotation(canonical_json: &[u8]) -> bool {
    const MEMBER: &[u8] = b"\"event\":\"controlPlane.keyRotated\"";
    memchr::memmem::find(canonical_json, MEMBER).is_some()
}

/// One rotation, as its record states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub seq: u64,
    pub previous_key: String,
    pub new_key: String,
    /// The record's `receivedAt` (RFC 3339), when the old key stopped signing.
    pub at: String,
}

impl Rotation {
    /// Reads a rotation record; `None` if `record` is not one.
    pub fn from_record(seq: u64, record: &Value) -> Option<Self> {
        if record.get("event").and_then(Value::as_str) != Some(KEY_ROTATED) {
            return None;
        }
        let text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            seq,
            previous_key: text("previousKey")?,
            new_key: text("newKey")?,
            at: text("receivedAt")?,
        })
    }
}

/// Every rotation of a log up to some size, in record order.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    rotations: Vec<Rotation>,
}

impl KeyHistory {
    pub fn new(mut rotations: Vec<Rotation>) -> Self {
        rotations.sort_by_key(|r| r.seq);
        Self { rotations }
    }

    pub fn rotations(&self) -> &[Rotation] {
        &self.rotations
    }

    /// Whether `signer` may sign a checkpoint of `size` records dated `time`; the error says
    /// why not. With no rotation in the history every trusted key may.
    pub fn check(&self, size: u64, time: &str, signer: &NoteVerifier) -> Result<(), String> {
        let Some(first) = self.rotations.first() else {
            return Ok(());
        };
        let signer_text = signer.encode();
        let mut in_effect = &first.previous_key;
        let mut since = None;
        for rotation in &self.rotations {
            if rotation.seq < size {
                in_effect = &rotation.new_key;
                since = Some(rotation);
            }
        }
        if *in_effect != signer_text {
            let retired = self
                .rotations
                .iter()
                .find(|r| r.previous_key == signer_text);
            return Err(match (retired, since) {
                (Some(r), _) => format!(
                    "is signed by {}, a key retired by the rotation at record {} ({}): a retired key's signature",
                    signer.label(),
                    r.seq,
                    r.at
                ),
                (None, Some(r)) => format!(
                    "is signed by {}, not by the key the rotation at record {} put in effect",
                    signer.label(),
                    r.seq
                ),
                (None, None) => format!(
                    "is signed by {}, not by the log's first key",
                    signer.label()
                ),
            });
        }
        // The key in effect signs until its own rotation; nothing it signs is dated later.
        if let Some(next) = self
            .rotations
            .iter()
            .find(|r| r.previous_key == signer_text)
        {
            if later(time, &next.at) {
                return Err(format!(
                    "is dated {time}, after {} was retired at {} (record {}): a retired key's signature",
                    signer.label(),
                    next.at,
                    next.seq
                ));
            }
        }
        Ok(())
    }
}

/// Whether RFC 3339 time `a` is after `b` (an unparsable time counts as later: fail closed).
pub(crate) fn later(a: &str, b: &str) -> bool {
    match (humantime::parse_rfc3339(a), humantime::parse_rfc3339(b)) {
        (Ok(a), Ok(b)) => a > b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;

    #[test]
    fn each_key_signs_only_its_own_sizes_and_times() {
        let first = NoteSigner::generate("log.test").unwrap().verifier();
        let second = NoteSigner::generate("log.test").unwrap().verifier();
        let stranger = NoteSigner::generate("log.test").unwrap().verifier();
        let history = KeyHistory::new(vec![Rotation {
            seq: 10,
            previous_key: first.encode(),
            new_key: second.encode(),
            at: "2026-01-01T00:00:10.000000Z".into(),
        }]);
        let early = "2026-01-01T00:00:05.000000Z";
        let late = "2026-01-01T00:00:20.000000Z";
        assert!(history.check(10, early, &first).is_ok());
        assert!(history.check(11, late, &second).is_ok());
        // The retired key over the rotation, or dated after it.
        assert!(history
            .check(11, early, &first)
            .unwrap_err()
            .contains("retired"));
        assert!(history
            .check(10, late, &first)
            .unwrap_err()
            .contains("retired"));
        // The new key before the rotation, and a key the log never had.
        assert!(history.check(5, early, &second).is_err());
        assert!(history.check(11, late, &stranger).is_err());
        assert!(KeyHistory::default().check(3, late, &stranger).is_ok());
    }
}
