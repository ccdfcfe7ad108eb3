//! The hash chain over audit records: canonical form, chaining, and verification.
//!
//! Pure functions and a streaming [`Verifier`], shared by the store (which computes hashes on
//! append) and by `tollgate audit verify` (which recomputes them from the stored bytes). The
//! format is described in `docs/audit-chain.md`.

use sha2::{Digest, Sha256};

/// A chain hash: SHA-256 output.
pub type Hash = [u8; 32];

/// `hash_{-1}`: the value the first record is chained onto.
pub const GENESIS: Hash = [0u8; 32];

/// Errors of canonicalisation. Messages never quote the record: it may hold sensitive data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("record is not valid json (line {line}, column {column})")]
    InvalidJson { line: usize, column: usize },
    #[error(
        "record has a duplicate member name (line {line}, column {column}): refused rather than \
         keep one of the values"
    )]
    DuplicateMember { line: usize, column: usize },
    #[error(
        "record has an integer outside ±2^53 (line {line}, column {column}): I-JSON (RFC 7493) \
         cannot carry it exactly; send it as a string"
    )]
    IntegerOutOfRange { line: usize, column: usize },
    #[error("record must be a json object")]
    NotAnObject,
    #[error("record cannot be canonicalised")]
    Unserialisable,
}

/// `hash_n = SHA-256(hash_{n-1} || canonical_record_n)`.
pub fn chain(previous: &Hash, canonical_record: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical_record);
    hasher.finalize().into()
}

/// Parses `json` as a JSON object that is I-JSON (RFC 7493, see [`crate::ijson`]): a duplicate
/// member name or an integer outside ±2^53 is refused, never changed, so the chain holds what the
/// sender meant.
pub fn parse_object(
    json: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, CanonicalError> {
    use crate::ijson::{ErrorKind, IJsonError};
    // Only the kind and position are reported: serde_json's own message may quote input.
    match crate::ijson::parse(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(CanonicalError::NotAnObject),
        Err(IJsonError { kind, line, column }) => Err(match kind {
            ErrorKind::DuplicateMember => CanonicalError::DuplicateMember { line, column },
            ErrorKind::NumberOutOfRange => CanonicalError::IntegerOutOfRange { line, column },
            ErrorKind::Syntax | ErrorKind::Io => CanonicalError::InvalidJson { line, column },
        }),
    }
}

/// RFC 8785 (JCS) form of a JSON object.
pub fn canonicalise(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    crate::canonical::write_object(object, &mut out).map_err(|_| CanonicalError::Unserialisable)?;
    Ok(out)
}

/// One stored record as the verifier sees it: whatever the store or the API returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub canonical_json: Vec<u8>,
    /// The stored chain hash, hex as on the wire.
    pub chain_hash: String,
}

/// The first problem found in a chain. `seq` is the first sequence number that is not intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {problem}")]
pub struct Break {
    pub seq: u64,
    pub problem: Problem,
}

/// What is wrong with the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing (the next stored record is {found})")]
    Missing { found: u64 },
    #[error("out of order (found record {found} after record {previous})")]
    OutOfOrder { found: u64, previous: u64 },
    #[error("not a valid json object")]
    NotJson,
    #[error("bytes are not in canonical (rfc 8785) form")]
    NotCanonical,
    #[error("stored chain hash is malformed")]
    MalformedHash,
    #[error("chain hash mismatch (stored {stored}, computed {computed})")]
    HashMismatch { stored: String, computed: String },
}

/// Walks a chain record by record, from seq 0, without holding it in memory.
#[derive(Debug)]
pub struct Verifier {
    next_seq: u64,
    head: Hash,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            next_seq: 0,
            head: GENESIS,
        }
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next record; the first error is the first bad record, stop there.
    pub fn check(&mut self, record: &StoredRecord) -> Result<(), Break> {
        let seq = self.next_seq;
        let fail = |problem| Err(Break { seq, problem });
        if record.seq > seq {
            return fail(Problem::Missing { found: record.seq });
        }
        if record.seq < seq {
            // seq 0 cannot be "after" anything, so `seq - 1` is only reached when seq > 0.
            return fail(Problem::OutOfOrder {
                found: record.seq,
                previous: seq.saturating_sub(1),
            });
        }
        // The fast check builds no value; only a record that fails it is parsed, to say why.
        if !crate::canonical::is_canonical_object(&record.canonical_json) {
            let object = match parse_object(&record.canonical_json) {
                Ok(object) => object,
                // JSON, but no canonical form is: a repeated name, an inexact integer.
                Err(
                    CanonicalError::DuplicateMember { .. }
                    | CanonicalError::IntegerOutOfRange { .. },
                ) => return fail(Problem::NotCanonical),
                Err(_) => return fail(Problem::NotJson),
            };
            match canonicalise(&object) {
                Ok(bytes) if bytes == record.canonical_json => {}
                _ => return fail(Problem::NotCanonical),
            }
        }
        let stored: Hash = match hex::decode(&record.chain_hash)
            .ok()
            .and_then(|b| b.try_into().ok())
        {
            Some(hash) => hash,
            None => return fail(Problem::MalformedHash),
        };
        let computed = chain(&self.head, &record.canonical_json);
        if stored != computed {
            return fail(Problem::HashMismatch {
                stored: record.chain_hash.clone(),
                computed: hex::encode(computed),
            });
        }
        self.head = computed;
        self.next_seq += 1;
        Ok(())
    }

    /// Continues a chain whose records before `next_seq` are archived: `head` is the chain
    /// hash of record `next_seq - 1`, as the archive left it.
    pub fn resume(next_seq: u64, head: Hash) -> Self {
        Self { next_seq, head }
    }

    /// Records verified so far (including any archived before a resume).
    pub fn count(&self) -> u64 {
        self.next_seq
    }

    /// Hash of the last verified record (`GENESIS` for an empty chain).
    pub fn head(&self) -> Hash {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records(n: u64) -> Vec<StoredRecord> {
        let mut head = GENESIS;
        (0..n)
            .map(|seq| {
                let object = json!({"event": "test", "n": seq, "sub": "alice"});
                let canonical = canonicalise(object.as_object().unwrap()).unwrap();
                head = chain(&head, &canonical);
                StoredRecord {
                    seq,
                    canonical_json: canonical,
                    chain_hash: hex::encode(head),
                }
            })
            .collect()
    }

    fn verify(records: &[StoredRecord]) -> Result<(u64, Hash), Break> {
        let mut verifier = Verifier::new();
        for record in records {
            verifier.check(record)?;
        }
        Ok((verifier.count(), verifier.head()))
    }

    #[test]
    fn chain_is_sha256_of_previous_then_record() {
        // Computed independently: printf '\0%.0s' {1..32} '{}' | sha256sum
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"{}");
        let expected: Hash = Sha256::digest(&input).into();
        assert_eq!(chain(&GENESIS, b"{}"), expected);
        assert_ne!(chain(&expected, b"{}"), expected);
    }

    #[test]
    fn matches_the_test_vector_in_docs_audit_chain_md() {
        let h0 = chain(
            &GENESIS,
            br#"{"event":"test","receivedAt":"2025-01-31T12:00:00.000000Z"}"#,
        );
        assert_eq!(
            hex::encode(h0),
            "b9c6fcc0c23abaf167b8a09a7c7ba0343acfdf912a00d1d9b7501094b62b9e61"
        );
        let h1 = chain(
            &h0,
            br#"{"event":"test","n":1,"receivedAt":"2025-01-31T12:00:00.000001Z"}"#,
        );
        assert_eq!(
            hex::encode(h1),
            "ab1284390c5722afa02e21d5fda0357eb7e81cbbeae66c62bef7e207a1ee23df"
        );
    }

    #[test]
    fn canonical_form_sorts_keys_and_normalises_numbers_and_strings() {
        let object =
            parse_object(br#"{ "b": 1.0, "a": [ "\u0041", 1e2 ], "\u00e9": "x" }"#).unwrap();
        let canonical = canonicalise(&object).unwrap();
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            r#"{"a":["A",100],"b":1,"é":"x"}"#
        );
    }

    #[test]
    fn rejects_non_objects_without_quoting_input() {
        assert_eq!(parse_object(b"[1]"), Err(CanonicalError::NotAnObject));
        let err = parse_object(b"{\"pan\": 4111111111111111").unwrap_err();
        assert!(matches!(err, CanonicalError::InvalidJson { .. }));
        assert!(!err.to_string().contains("4111"));
    }

    #[test]
    fn refuses_what_would_be_chained_as_something_else() {
        let err = parse_object(br#"{"event":"x","pan":"4111111111111111","pan":"x"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record has a duplicate member name (line 1, column 43): refused rather than keep \
             one of the values"
        );
        let err = parse_object(br#"{"client":12345678901234567890}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record has an integer outside ±2^53 (line 1, column 30): I-JSON (RFC 7493) cannot \
             carry it exactly; send it as a string"
        );
        assert!(parse_object(br#"{"client":"12345678901234567890","n":9007199254740991}"#).is_ok());
    }

    #[test]
    fn the_verifier_refuses_duplicates_and_keeps_old_canonical_numbers() {
        let mut chain = records(2);
        let duplicate = br#"{"event":"test","n":1,"n":1,"sub":"alice"}"#.to_vec();
        chain[1].chain_hash = hex::encode(super::chain(&chain_head(&chain[0]), &duplicate));
        chain[1].canonical_json = duplicate;
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 1,
                problem: Problem::NotCanonical
            }
        );
        // Appends refuse it now, but a record chained before (rounded, in canonical form)
        // still verifies.
        let old = br#"{"client":12345678901234567000,"event":"test"}"#.to_vec();
        chain[1].chain_hash = hex::encode(super::chain(&chain_head(&chain[0]), &old));
        chain[1].canonical_json = old;
        assert_eq!(verify(&chain).unwrap().0, 2);
    }

    fn chain_head(record: &StoredRecord) -> Hash {
        hex::decode(&record.chain_hash).unwrap().try_into().unwrap()
    }

    #[test]
    fn intact_chain_verifies() {
        let chain = records(5);
        let (count, head) = verify(&chain).unwrap();
        assert_eq!(count, 5);
        assert_eq!(hex::encode(head), chain[4].chain_hash);
        assert_eq!(verify(&[]).unwrap(), (0, GENESIS));
    }

    #[test]
    fn detects_a_changed_byte() {
        let mut chain = records(5);
        // "alice" -> "alicf": still canonical JSON, so only the hash can tell.
        let pos = chain[2]
            .canonical_json
            .windows(5)
            .position(|w| w == b"alice")
            .unwrap();
        chain[2].canonical_json[pos + 4] = b'f';
        let err = verify(&chain).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(matches!(err.problem, Problem::HashMismatch { .. }));
    }

    #[test]
    fn detects_a_changed_hash_byte() {
        let mut chain = records(3);
        let flipped = if chain[1].chain_hash.starts_with('0') {
            "1"
        } else {
            "0"
        };
        chain[1].chain_hash.replace_range(0..1, flipped);
        assert_eq!(verify(&chain).unwrap_err().seq, 1);
    }

    #[test]
    fn detects_non_canonical_bytes() {
        let mut chain = records(3);
        chain[1].canonical_json.insert(1, b' ');
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 1,
                problem: Problem::NotCanonical
            }
        );
        chain[1].canonical_json = b"{not json".to_vec();
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 1,
                problem: Problem::NotJson
            }
        );
    }

    #[test]
    fn detects_a_deleted_record() {
        let mut chain = records(5);
        chain.remove(3);
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 3,
                problem: Problem::Missing { found: 4 }
            }
        );
    }

    #[test]
    fn detects_a_deleted_record_that_was_renumbered() {
        // An attacker who deletes record 3 and shifts the later ones down keeps seq continuous;
        // the hash of the shifted record no longer follows from record 2.
        let mut chain = records(5);
        chain.remove(3);
        for (seq, record) in chain.iter_mut().enumerate() {
            record.seq = seq as u64;
        }
        let err = verify(&chain).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(matches!(err.problem, Problem::HashMismatch { .. }));
    }

    #[test]
    fn detects_swapped_records() {
        // Contents swapped under their keys (what an edit of the store does).
        let mut chain = records(5);
        let (a, b) = (chain[1].clone(), chain[2].clone());
        chain[1].canonical_json = b.canonical_json;
        chain[1].chain_hash = b.chain_hash;
        chain[2].canonical_json = a.canonical_json;
        chain[2].chain_hash = a.chain_hash;
        let err = verify(&chain).unwrap_err();
        assert_eq!(err.seq, 1);
        assert!(matches!(err.problem, Problem::HashMismatch { .. }));

        // Records delivered out of order.
        let mut chain = records(5);
        chain.swap(1, 2);
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 1,
                problem: Problem::Missing { found: 2 }
            }
        );
    }

    #[test]
    fn detects_a_repeated_record() {
        let mut chain = records(3);
        chain.insert(2, chain[1].clone());
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 2,
                problem: Problem::OutOfOrder {
                    found: 1,
                    previous: 1
                }
            }
        );
    }

    #[test]
    fn detects_a_malformed_hash() {
        let mut chain = records(2);
        chain[0].chain_hash = "abc".into();
        assert_eq!(
            verify(&chain).unwrap_err(),
            Break {
                seq: 0,
                problem: Problem::MalformedHash
            }
        );
    }
}
