//! Witness cosignatures: C2SP `tlog-cosignature/v1` with Ed25519 (signature type 0x04).
//!
//! A witness that has checked a checkpoint to be consistent with every earlier one it saw signs
//!
//! ```text
//! cosignature/v1
//! time <POSIX seconds>
//! <the checkpoint's note text, extension lines included>
//! ```
//!
//! and adds `— <witness name> base64(key id || 8-byte big-endian time || signature)` to the
//! note's signature lines. The key id is `SHA-256(name || 0x0A || 0x04 || public key)[:4]`; a
//! verifier key is `<name>+<hex key id>+<base64(0x04 || public key)>` and a private key
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 || seed)>`.
//!
//! The time is part of what is signed, so a cosignature says "this was the newest consistent
//! tree I knew of at that time", not only "I saw this tree".

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::chain::Hash;
use crate::note::{self, valid_key_name, TypedKey};

/// Signature type byte of Ed25519 cosignatures (`tlog-cosignature`).
pub const COSIGNATURE_ED25519: u8 = 0x04;
/// Signature type byte of plain Ed25519 note signatures: a private key written by Go's
/// `note.GenerateKey` has it, and the witness key derived from it is the same key.
const NOTE_ED25519: u8 = 0x01;
/// Every signature line starts with an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";
/// Header line of the signed message: domain separation from plain note signatures.
const HEADER: &str = "cosignature/v1\n";
/// Key id, timestamp, Ed25519 signature.
const BLOB_LEN: usize = 4 + 8 + 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error("malformed witness key: {0}")]
    Key(&'static str),
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("no cosignature by {0}")]
    Missing(String),
    #[error("cosignature by {0} does not verify")]
    BadSignature(String),
    #[error("cosignature time {0} is beyond 2^63 - 1")]
    Time(u64),
}

/// The 4-byte id of the Ed25519 witness key `public` named `name`.
pub fn cosigner_key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    key_id(name, COSIGNATURE_ED25519, public)
}

fn key_id(name: &str, kind: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', kind]);
    hasher.update(public);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The message a cosignature signs.
fn message(text: &str, time: u64) -> Vec<u8> {
    format!("{HEADER}time {time}\n{text}").into_bytes()
}

/// A witness's signing key.
pub struct CosignatureSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl CosignatureSigner {
    pub fn generate(name: &str) -> Result<Self, CosignatureError> {
        if !valid_key_name(name) {
            return Err(CosignatureError::Key("invalid key name"));
        }
        Ok(Self::from_key(
            name,
            SigningKey::generate(&mut rand::rngs::OsRng),
        ))
    }

    fn from_key(name: &str, key: SigningKey) -> Self {
        Self {
            id: cosigner_key_id(name, key.verifying_key().as_bytes()),
            name: name.to_string(),
            key,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(type || seed)>`, with type 0x04 (as
    /// [`CosignatureSigner::encode_private`] writes) or 0x01 (a plain note key; its id is that of
    /// the note key, and it cosigns under the 0x04 id).
    pub fn parse(text: &str) -> Result<Self, CosignatureError> {
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(CosignatureError::Key(
                "private key must start with PRIVATE+KEY+",
            ))?;
        let TypedKey {
            name,
            id,
            kind,
            key: seed,
        } = split_key(rest)?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| CosignatureError::Key("bad length"))?;
        let key = SigningKey::from_bytes(&seed);
        if key_id(name, kind, key.verifying_key().as_bytes()) != id {
            return Err(CosignatureError::Key("key id does not match the key"));
        }
        Ok(Self::from_key(name, key))
    }

    /// The private key text; whoever holds it can cosign as this witness.
    pub fn encode_private(&self) -> String {
        let key = note::typed_key_text(
            &self.name,
            &self.id,
            COSIGNATURE_ED25519,
            self.key.as_bytes(),
        );
        format!("{PRIVATE_PREFIX}{key}")
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The signature line (`— <name> <base64>\n`, newline included) cosigning the checkpoint
    /// whose note text is `text` (ending in a newline, signature lines excluded) at `unix_time`.
    pub fn cosign(&self, text: &str, unix_time: u64) -> Result<String, CosignatureError> {
        if i64::try_from(unix_time).is_err() {
            return Err(CosignatureError::Time(unix_time));
        }
        if !text.ends_with('\n') {
            return Err(CosignatureError::Malformed(
                "note text must end with a newline",
            ));
        }
        let signature = self.key.sign(&message(text, unix_time));
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&unix_time.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// A witness's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    pub name: String,
    pub id: [u8; 4],
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses `<name>+<hex id>+<base64(0x04 || public key)>`.
    pub fn parse(text: &str) -> Result<Self, CosignatureError> {
        let TypedKey {
            name,
            id,
            kind,
            key,
        } = split_key(text.trim())?;
        if kind != COSIGNATURE_ED25519 {
            return Err(CosignatureError::Key(
                "not an Ed25519 cosignature key (type 0x04)",
            ));
        }
        let public: [u8; 32] = key
            .try_into()
            .map_err(|_| CosignatureError::Key("bad length"))?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| CosignatureError::Key("not an Ed25519 key"))?;
        if cosigner_key_id(name, &public) != id {
            return Err(CosignatureError::Key("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_string(),
            id,
            key,
        })
    }

    pub fn encode(&self) -> String {
        note::typed_key_text(
            &self.name,
            &self.id,
            COSIGNATURE_ED25519,
            self.key.as_bytes(),
        )
    }

    /// `<name>+<hex id>`: how reports name a key.
    pub fn label(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.id))
    }

    /// The raw public key (two witness lines with the same one are the same witness).
    pub fn public_key(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Verifies this witness's cosignature in `note` and returns its time (the newest, should
    /// the note carry several). A line with this key's name and id that does not verify
    /// rejects the note, as C2SP signed-note requires; lines of other keys are ignored.
    pub fn verify(&self, note: &str) -> Result<u64, CosignatureError> {
        let parsed = SignedNote::parse(note)?;
        let mut newest = None;
        for signature in parsed.signatures.iter().filter(|s| self.signed(s)) {
            let time = self.check(parsed.text, &signature.signature)?;
            newest = newest.max(Some(time));
        }
        newest.ok_or_else(|| CosignatureError::Missing(self.label()))
    }

    /// Whether `signature` claims to be by this key.
    fn signed(&self, signature: &NoteSignature<'_>) -> bool {
        signature.name == self.name && signature.id == self.id
    }

    /// Checks `timestamped` (what follows the key id: time, then signature) over `text`.
    fn check(&self, text: &str, timestamped: &[u8]) -> Result<u64, CosignatureError> {
        let bad = || CosignatureError::BadSignature(self.label());
        if timestamped.len() != BLOB_LEN - 4 {
            return Err(bad());
        }
        let (time, signature) = timestamped.split_at(8);
        let time = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
        if i64::try_from(time).is_err() {
            return Err(CosignatureError::Time(time));
        }
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| bad())?;
        self.key
            .verify_strict(&message(text, time), &signature)
            .map_err(|_| bad())?;
        Ok(time)
    }
}

/// Splits a key's text (Ed25519 keys of either type).
fn split_key(text: &str) -> Result<TypedKey<'_>, CosignatureError> {
    let key = note::split_typed_key(text).map_err(CosignatureError::Key)?;
    if key.kind != COSIGNATURE_ED25519 && key.kind != NOTE_ED25519 {
        return Err(CosignatureError::Key("not an Ed25519 key"));
    }
    Ok(key)
}

/// A signed note taken apart, nothing verified: its text (with the final newline) and its
/// signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote<'a> {
    pub text: &'a str,
    pub signatures: Vec<NoteSignature<'a>>,
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature<'a> {
    pub name: &'a str,
    pub id: [u8; 4],
    /// What follows the key id.
    pub signature: Vec<u8>,
    /// The whole line, without its newline.
    pub line: &'a str,
}

impl<'a> SignedNote<'a> {
    /// Splits `note` at its last blank line; every line after it must be a signature line.
    pub fn parse(note: &'a str) -> Result<Self, CosignatureError> {
        let bad = CosignatureError::Malformed;
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(bad("no blank line before the signatures"))?;
        let text = &note[..=split];
        let lines = note[split + 2..]
            .strip_suffix('\n')
            .ok_or(bad("must end with a newline"))?;
        let signatures = lines
            .split('\n')
            .map(NoteSignature::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { text, signatures })
    }
}

impl<'a> NoteSignature<'a> {
    /// Parses `— <name> <base64(key id || signature)>`.
    pub fn parse(line: &'a str) -> Result<Self, CosignatureError> {
        let bad = CosignatureError::Malformed;
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(bad("signature line must start with an em dash"))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or(bad("signature line needs a name and a signature"))?;
        if !valid_key_name(name) {
            return Err(bad("invalid key name in a signature line"));
        }
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| bad("signature is not base64"))?;
        if blob.len() < 4 {
            return Err(bad("signature too short"));
        }
        let (id, signature) = blob.split_at(4);
        Ok(Self {
            name,
            id: [id[0], id[1], id[2], id[3]],
            signature: signature.to_vec(),
            line,
        })
    }
}

/// `note` with the signature lines of `lines` (each `— ...\n`, as a witness answers) appended,
/// leaving out lines the note already carries.
pub fn add_signatures(note: &str, lines: &str) -> Result<String, CosignatureError> {
    let parsed = SignedNote::parse(note)?;
    let added = lines.strip_suffix('\n').ok_or(CosignatureError::Malformed(
        "signature lines must end with a newline",
    ))?;
    let mut present: Vec<&str> = parsed.signatures.iter().map(|s| s.line).collect();
    let mut out = note.to_string();
    for line in added.split('\n') {
        NoteSignature::parse(line)?;
        if !present.contains(&line) {
            present.push(line);
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The first three lines of a checkpoint, which are what a witness vouches for: the origin,
/// the tree size and the root hash. Extension lines are signed but carry no witness statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl TreeHead {
    /// Parses a checkpoint's note text (ending in a newline).
    pub fn parse(text: &str) -> Result<Self, CosignatureError> {
        let bad = CosignatureError::Checkpoint;
        let mut lines = text
            .strip_suffix('\n')
            .ok_or(bad("must end with a newline"))?
            .split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(bad("no origin"))?;
        let size = lines
            .next()
            .filter(|s| !s.starts_with('0') || *s == "0")
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(bad("tree size must be a decimal number"))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(bad("root must be a base64 32-byte hash"))?;
        if lines.any(str::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{open, NoteSigner};

    const BODY: &str = "example.com/log\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n";

    #[test]
    fn cosigns_and_verifies_a_note() {
        let log = NoteSigner::generate("example.com/log").unwrap();
        let witness = CosignatureSigner::generate("witness.example/w1").unwrap();
        let note = log.sign(BODY);
        let line = witness.cosign(BODY, 1_700_000_000).unwrap();
        assert!(line.starts_with("\u{2014} witness.example/w1 "));
        let cosigned = add_signatures(&note, &line).unwrap();
        assert_eq!(witness.verifier().verify(&cosigned), Ok(1_700_000_000));
        // The log's signature still opens; the witness line is ignored by a note verifier.
        assert_eq!(open(&cosigned, &[log.verifier()]).unwrap().text, BODY);
        // Adding the same line again changes nothing.
        assert_eq!(add_signatures(&cosigned, &line).unwrap(), cosigned);
        // Without the line: missing, not bad.
        assert_eq!(
            witness.verifier().verify(&note),
            Err(CosignatureError::Missing(witness.verifier().label()))
        );
    }

    #[test]
    fn the_time_and_every_line_are_signed() {
        let witness = CosignatureSigner::generate("w").unwrap();
        let body = format!("{BODY}extension line\n");
        let note = format!("{body}\n{}", witness.cosign(&body, 7).unwrap());
        assert_eq!(witness.verifier().verify(&note), Ok(7));
        let forged = note.replace("extension line", "extension lime");
        assert_eq!(
            witness.verifier().verify(&forged),
            Err(CosignatureError::BadSignature(witness.verifier().label()))
        );
        // Another time in the blob: the signature no longer matches.
        let parsed = SignedNote::parse(&note).unwrap();
        let mut blob = witness.verifier().id.to_vec();
        blob.extend_from_slice(&8u64.to_be_bytes());
        blob.extend_from_slice(&parsed.signatures[0].signature[8..]);
        let retimed = format!("{body}\n\u{2014} w {}\n", STANDARD.encode(blob));
        assert!(matches!(
            witness.verifier().verify(&retimed),
            Err(CosignatureError::BadSignature(_))
        ));
        assert!(witness.cosign(BODY, 1 << 63).is_err());
        assert!(witness.cosign("no newline", 1).is_err());
    }

    #[test]
    fn keys_round_trip_and_key_ids_match_published_ones() {
        let signer = CosignatureSigner::generate("witness.example/w1").unwrap();
        let again = CosignatureSigner::parse(&signer.encode_private()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let vkey = signer.verifier().encode();
        assert_eq!(
            CosignatureVerifier::parse(&vkey).unwrap(),
            signer.verifier()
        );
        // A production witness's key as transparency-dev/formats' tests carry it: the id is
        // SHA-256(name || 0x0A || 0x04 || key)[:4].
        let remora = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2";
        assert_eq!(CosignatureVerifier::parse(remora).unwrap().encode(), remora);
        // A plain note key (type 0x01) is not a witness key.
        let note_key = NoteSigner::generate("w").unwrap().verifier().encode();
        assert!(CosignatureVerifier::parse(&note_key).is_err());
        // ... but its private half can be used as one (Go's note.GenerateKey writes those).
        let note_signer = NoteSigner::generate("w").unwrap();
        let converted = CosignatureSigner::parse(&note_signer.encode_private()).unwrap();
        assert_ne!(converted.verifier().id, note_signer.verifier().id);
        assert!(CosignatureSigner::generate("bad name").is_err());
        let mut parts: Vec<&str> = vkey.splitn(3, '+').collect();
        parts[1] = "00000000";
        assert!(CosignatureVerifier::parse(&parts.join("+")).is_err());
    }

    /// A Sigsum checkpoint cosigned by two production witnesses (witness.glasklar.is and
    /// witness.mullvad.net), as sigsum-py's monitor tests carry it: keys, times and
    /// signatures in hex there, put into C2SP note form here.
    #[test]
    fn verifies_cosignatures_of_production_witnesses() {
        let log_key = "0ec7e16843119b120377a73913ac6acbc2d03d82432e2c36b841b09a95841f25";
        let origin = format!(
            "sigsum.org/v1/tree/{}",
            hex::encode(Sha256::digest(hex::decode(log_key).unwrap()))
        );
        let root = hex::decode("4ccedda0c3e6afc83cfcddfad7df3d95cbd1e857ecf3cf0569b8f69ce32727f8")
            .unwrap();
        let text = format!("{origin}\n12851\n{}\n", STANDARD.encode(root));
        let witnesses = [
            ("witness.glasklar.is", "b2106db9065ec97f25e09c18839216751a6e26d8ed8b41e485a563d3d1498536",
             "9ab58c0f6cbfd02549891b3b9d7e68fd7fefd42b6dc22fbbee7ed3119d1ed1807edc74c8b12fd430e4ee6084b59077d4c8eafe09eefdbbe31666828c34d24702"),
            ("witness.mullvad.net", "15d6d0141543247b74bab3c1076372d9c894f619c376d64b29aa312cc00f61ad",
             "82f16ff572ba54e6f0b2f27e0e34fa729ab42d566b1d54a0b689d345c373fd0d87a61a6b6e81b4d17b3ca9f13f01a6c1325d701e6350ecddfa54b6b453691d0f"),
        ];
        let mut note = format!("{text}\n");
        let mut verifiers = Vec::new();
        for (name, key, signature) in witnesses {
            let public: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
            let mut vkey = vec![COSIGNATURE_ED25519];
            vkey.extend_from_slice(&public);
            let id = cosigner_key_id(name, &public);
            verifiers.push(
                CosignatureVerifier::parse(&format!(
                    "{name}+{}+{}",
                    hex::encode(id),
                    STANDARD.encode(vkey)
                ))
                .unwrap(),
            );
            let mut blob = id.to_vec();
            blob.extend_from_slice(&1_754_020_861u64.to_be_bytes());
            blob.extend_from_slice(&hex::decode(signature).unwrap());
            note.push_str(&format!("\u{2014} {name} {}\n", STANDARD.encode(blob)));
        }
        for verifier in &verifiers {
            assert_eq!(
                verifier.verify(&note),
                Ok(1_754_020_861),
                "{}",
                verifier.name
            );
        }
        let head = TreeHead::parse(&text).unwrap();
        assert_eq!((head.origin, head.size), (origin, 12851));
        // One changed digit of the size and neither verifies.
        let forged = note.replacen("\n12851\n", "\n12852\n", 1);
        assert!(verifiers.iter().all(|v| v.verify(&forged).is_err()));
    }

    #[test]
    fn reads_the_timestamp_of_a_published_cosignature() {
        // transparency-dev/formats' TestCosignatureTimestamp: 1727964367.
        let blob = STANDARD
            .decode("ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==")
            .unwrap();
        assert_eq!(blob.len(), BLOB_LEN);
        assert_eq!(
            u64::from_be_bytes(blob[4..12].try_into().unwrap()),
            1_727_964_367
        );
    }

    #[test]
    fn parses_notes_and_tree_heads_strictly() {
        assert!(SignedNote::parse("text\n\n\u{2014} k AAAAAA==\n").is_ok());
        for bad in [
            "no blank line\n",
            "text\n\n\u{2014} k AAAAAA==",
            "text\n\nnot a signature\n",
            "text\n\n\u{2014} k AAA\n",
            "te\u{1}xt\n\n\u{2014} k AAAAAA==\n",
        ] {
            assert!(SignedNote::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TreeHead::parse(BODY).is_ok());
        for bad in [
            "o\n01\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
            "o\n+1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
            "o\n1\nAAAA\n",
            "\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
            "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\nx\n",
        ] {
            assert!(TreeHead::parse(bad).is_err(), "{bad:?}");
        }
    }
}
