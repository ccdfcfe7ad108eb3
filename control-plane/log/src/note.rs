//! Signed checkpoints: the C2SP `tlog-checkpoint` body inside a C2SP `signed-note`, signed with
//! Ed25519.
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 Merkle root>
//! chain <hex chain head>          extension lines (the log's own, C2SP allows them)
//! time <RFC 3339 UTC, microseconds>
//!
//! — <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>
//! ```
//!
//! The key id is `SHA-256(key name || 0x0A || 0x01 || public key)[:4]`; a verifier key is
//! `<name>+<hex key id>+<base64(0x01 || public key)>` and a private key
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`, as Go's `golang.org/x/mod/sumdb/note`
//! writes them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::chain::Hash;

/// Signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// Every signature line starts with an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by a trusted key")]
    NoTrustedSignature,
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
}

/// The 4-byte id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519]);
    hasher.update(public);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Whether `name` can name a key: non-empty, no whitespace, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// A key that signs notes.
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl NoteSigner {
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::Key("invalid key name"));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(Self::from_key(name, key))
    }

    fn from_key(name: &str, key: SigningKey) -> Self {
        let id = key_id(name, key.verifying_key().as_bytes());
        Self {
            name: name.to_string(),
            id,
            key,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(NoteError::Key("private key must start with PRIVATE+KEY+"))?;
        let (name, id, key) = split_key(rest)?;
        let seed: [u8; 32] = key.try_into().map_err(|_| NoteError::Key("bad length"))?;
        let signer = Self::from_key(name, SigningKey::from_bytes(&seed));
        if signer.id != id {
            return Err(NoteError::Key("key id does not match the key"));
        }
        Ok(signer)
    }

    /// The private key text; whoever holds it can sign checkpoints.
    pub fn encode_private(&self) -> String {
        let key = typed_key_text(&self.name, &self.id, ED25519, self.key.as_bytes());
        format!("{PRIVATE_PREFIX}{key}")
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline and hold no blank line) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

/// A public key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex id>+<base64(0x01 || public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = split_key(text.trim())?;
        let public: [u8; 32] = key.try_into().map_err(|_| NoteError::Key("bad length"))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("not a key"))?;
        if key_id(name, &public) != id {
            return Err(NoteError::Key("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_string(),
            id,
            key,
        })
    }

    pub fn encode(&self) -> String {
        typed_key_text(&self.name, &self.id, ED25519, self.key.as_bytes())
    }

    /// `<name>+<hex id>`: how reports name a key.
    pub fn label(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.id))
    }
}

fn split_key(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    match split_typed_key(text).map_err(NoteError::Key)? {
        TypedKey {
            name,
            id,
            kind: ED25519,
            key,
        } => Ok((name, id, key)),
        _ => Err(NoteError::Key("not an ed25519 key")),
    }
}

/// A key's text taken apart.
pub(crate) struct TypedKey<'a> {
    pub name: &'a str,
    pub id: [u8; 4],
    /// The signature type byte: 0x01 signs notes, 0x04 cosigns checkpoints.
    pub kind: u8,
    pub key: Vec<u8>,
}

/// Splits a key's text, `<name>+<hex id>+<base64(type byte || key)>`.
pub(crate) fn split_typed_key(text: &str) -> Result<TypedKey<'_>, &'static str> {
    // The key is base64, which may itself hold '+'.
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected name+id+key");
    };
    if !valid_key_name(name) {
        return Err("invalid key name");
    }
    let id: [u8; 4] = hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("key id must be 8 hex digits")?;
    let key = STANDARD.decode(key).map_err(|_| "key is not base64")?;
    match key.split_first() {
        Some((&kind, rest)) => Ok(TypedKey {
            name,
            id,
            kind,
            key: rest.to_vec(),
        }),
        None => Err("key is empty"),
    }
}

/// The text of a key: `<name>+<hex id>+<base64(type byte || key)>`.
pub(crate) fn typed_key_text(name: &str, id: &[u8; 4], kind: u8, key: &[u8]) -> String {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(key);
    format!("{name}+{}+{}", hex::encode(id), STANDARD.encode(bytes))
}

/// A signed note opened with trusted keys: its text and the key that verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub text: String,
    pub signer: NoteVerifier,
}

/// Checks `note`'s signatures against `trusted`. A signature line from a trusted key name and
/// id that does not verify rejects the note (as the spec requires); lines from unknown keys
/// are ignored.
pub fn open(note: &str, trusted: &[NoteVerifier]) -> Result<Opened, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = &note[..=split];
    let signatures = &note[split + 2..];
    if !signatures.ends_with('\n') || text.len() < 2 {
        return Err(NoteError::Malformed("must end with a newline"));
    }
    let mut verified = None;
    for line in signatures[..signatures.len() - 1].split('\n') {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed(
                "signature line must start with an em dash",
            ))?;
        let (name, blob) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "signature line needs a name and a signature",
        ))?;
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if blob.len() < 4 {
            return Err(NoteError::Malformed("signature too short"));
        }
        let (id, signature) = blob.split_at(4);
        let Some(key) = trusted.iter().find(|k| k.name == name && k.id == id) else {
            continue;
        };
        let ok = ed25519_dalek::Signature::from_slice(signature)
            .and_then(|s| key.key.verify_strict(text.as_bytes(), &s))
            .is_ok();
        if !ok {
            return Err(NoteError::BadSignature(key.label()));
        }
        verified.get_or_insert_with(|| key.clone());
    }
    let signer = verified.ok_or(NoteError::NoTrustedSignature)?;
    Ok(Opened {
        text: text.to_string(),
        signer,
    })
}

/// The body of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    /// Merkle root of the first `size` records.
    pub root: Hash,
    /// Chain hash of record `size - 1` (32 zero bytes for an empty log).
    pub chain_head: Hash,
    /// When it was signed, by the control plane's (monotonic-safe) clock.
    pub time: String,
}

impl Checkpoint {
    /// The note text that gets signed.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\nchain {}\ntime {}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            hex::encode(self.chain_head),
            self.time
        )
    }

    /// The checkpoint in a signed note, its signatures not checked: for reading sizes and
    /// roots before (or without) checking signatures against trusted keys.
    pub fn of_note(note: &str) -> Result<Self, NoteError> {
        let text = unverified_text(note)
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        Self::parse(text)
    }

    /// Parses an opened note's text.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = NoteError::Checkpoint;
        let body = text
            .strip_suffix('\n')
            .ok_or(bad("must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(bad("no origin"))?;
        let size = lines
            .next()
            .filter(|s| !s.starts_with('0') || *s == "0")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(bad("tree size must be a decimal number"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(bad("root must be a base64 32-byte hash"))?;
        let (mut chain_head, mut time) = (None, None);
        for line in lines {
            if let Some(h) = line.strip_prefix("chain ") {
                chain_head = hex::decode(h).ok().and_then(|h| h.try_into().ok());
            } else if let Some(t) = line.strip_prefix("time ") {
                time = humantime::parse_rfc3339(t).ok().map(|_| t.to_string());
            }
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            chain_head: chain_head.ok_or(bad("no valid chain line"))?,
            time: time.ok_or(bad("no valid time line"))?,
        })
    }
}

/// A checkpoint that parsed and whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signer: NoteVerifier,
    pub note: String,
}

/// Opens `note` with `trusted` keys and parses its checkpoint.
pub fn open_checkpoint(
    note: &str,
    trusted: &[NoteVerifier],
) -> Result<SignedCheckpoint, NoteError> {
    let opened = open(note, trusted)?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint::parse(&opened.text)?,
        signer: opened.signer,
        note: note.to_string(),
    })
}

/// The text of a signed note (up to and including the newline before the blank line), its
/// signatures not checked.
pub fn unverified_text(note: &str) -> Option<&str> {
    note.rfind("\n\n").map(|at| &note[..=at])
}

/// Parses a list of verifier keys, one per line (blank lines and `#` comments skipped).
pub fn parse_verifier_list(text: &str) -> Result<Vec<NoteVerifier>, NoteError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(NoteVerifier::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "tollgate.test/audit".into(),
            size: 42,
            root: [7; 32],
            chain_head: [9; 32],
            time: "2025-01-31T12:00:00.000001Z".into(),
        }
    }

    #[test]
    fn signs_and_opens_a_checkpoint() {
        let signer = NoteSigner::generate("tollgate.test/audit").unwrap();
        let note = signer.sign(&checkpoint().text());
        assert!(note.starts_with("tollgate.test/audit\n42\nBwcH"));
        assert!(note.contains("\n\n\u{2014} tollgate.test/audit "));
        let opened = open_checkpoint(&note, &[signer.verifier()]).unwrap();
        assert_eq!(opened.checkpoint, checkpoint());
        assert_eq!(opened.signer, signer.verifier());
    }

    #[test]
    fn keys_round_trip_as_text() {
        let signer = NoteSigner::generate("example.com/log").unwrap();
        let again = NoteSigner::parse(&signer.encode_private()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let vkey = signer.verifier().encode();
        assert_eq!(NoteVerifier::parse(&vkey).unwrap(), signer.verifier());
        assert!(vkey.starts_with("example.com/log+"));
        assert!(NoteSigner::generate("bad name").is_err());
        assert!(NoteSigner::generate("a+b").is_err());
        // A key id that does not belong to the key.
        let mut parts: Vec<String> = vkey.split('+').map(String::from).collect();
        parts[1] = "00000000".into();
        assert!(NoteVerifier::parse(&parts.join("+")).is_err());
    }

    #[test]
    fn key_id_matches_the_go_reference() {
        // From golang.org/x/mod/sumdb/note's example: the verifier key below.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let key = NoteVerifier::parse(vkey).unwrap();
        assert_eq!(key.encode(), vkey);
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let opened = open(note, &[key]).unwrap();
        assert!(opened.text.starts_with("If you think"));
    }

    #[test]
    fn rejects_bad_and_untrusted_signatures() {
        let signer = NoteSigner::generate("log").unwrap();
        let other = NoteSigner::generate("log").unwrap();
        let note = signer.sign(&checkpoint().text());
        assert_eq!(
            open(&note, &[other.verifier()]),
            Err(NoteError::NoTrustedSignature)
        );
        // One changed byte of the body.
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            open(&forged, &[signer.verifier()]),
            Err(NoteError::BadSignature(signer.verifier().label()))
        );
        assert!(open("no signatures\n", &[signer.verifier()]).is_err());
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n1\nAAAA\n").is_err());
    }
}
