//! `tollgate witness serve`: a C2SP tlog-witness over plain HTTP/1.1.
//!
//! `POST /add-checkpoint` takes `old <size>`, the consistency proof (one base64 hash a line), a
//! blank line and a signed checkpoint. The witness cosigns only when the checkpoint is signed by
//! a key it has for the checkpoint's origin, `old` is the size it last cosigned for that log,
//! and the proof shows the new tree extends that one; the new checkpoint is durable before the
//! cosignature is sent. So once it has cosigned a tree, it never cosigns a smaller one (a
//! rollback) or another tree of the same or a larger size that does not contain it (a fork).
//!
//! Its files are under `<home>/witness/` (0700): `witness.key` (0600), its private key, created
//! on first start; `logs/<hex SHA-256 of the origin>`, the last checkpoint it cosigned for each
//! log, replaced atomically. One process per home.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_log::witness::{
    CosignatureError, CosignatureSigner, CosignatureVerifier, SignedNote, TreeHead,
};

use crate::chain::Hash;
use crate::merkle;
use crate::note::{self, NoteError, NoteVerifier};

/// Largest request head; a witness request has a handful of short headers.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body: at most 63 proof lines and a checkpoint; a note with even 16
/// post-quantum signatures stays well under it.
const MAX_BODY: usize = 256 * 1024;
/// A client must send a whole request within this time (also the keep-alive idle limit).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol's limit on consistency proof lines.
const MAX_PROOF: usize = 63;
/// Content type of a 409 answer naming the size the witness has.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        source: CosignatureError,
    },
    #[error(transparent)]
    KeyFile(#[from] crate::keys::KeyError),
    #[error("the witness key {0} is named {1:?}, not {2:?}")]
    WrongName(PathBuf, String, String),
    #[error("no witness key at {0}; give --name to create one")]
    NoKey(PathBuf),
    #[error("the last checkpoint recorded for {origin} ({path}) is unreadable: {message}; a witness must not forget what it cosigned, so restore the file or remove it knowingly")]
    State {
        origin: String,
        path: PathBuf,
        message: String,
    },
    #[error("no log to witness: give --log or --log-key")]
    NoLogs,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The witness's directory, `<home>/witness`.
pub fn dir(home: &Path) -> PathBuf {
    home.join("witness")
}

fn key_path(home: &Path) -> PathBuf {
    dir(home).join("witness.key")
}

/// Creates `path` as a 0700 directory, or makes an existing one 0700.
fn private_dir(path: &Path) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot restrict", path))
}

/// The witness's signing key under `home`; created, named `name`, when there is none and a name
/// is given. A given name must match an existing key's.
pub fn key(home: &Path, name: Option<&str>) -> Result<CosignatureSigner, ServerError> {
    let path = key_path(home);
    if !path.exists() {
        let name = name.ok_or_else(|| ServerError::NoKey(path.clone()))?;
        let signer = CosignatureSigner::generate(name).map_err(|source| ServerError::Key {
            path: path.clone(),
            source,
        })?;
        private_dir(&dir(home))?;
        crate::keys::create_private(&path, &signer.encode_private())?;
        return Ok(signer);
    }
    let text = crate::keys::read_private(&path)?;
    let signer = CosignatureSigner::parse(&text).map_err(|source| ServerError::Key {
        path: path.clone(),
        source,
    })?;
    let actual = signer.verifier().name;
    match name {
        Some(name) if name != actual => Err(ServerError::WrongName(path, actual, name.into())),
        _ => Ok(signer),
    }
}

/// One witnessed log.
struct Log {
    /// Every key trusted to sign its checkpoints.
    keys: Vec<NoteVerifier>,
    file: PathBuf,
    /// The last checkpoint cosigned; locked from the check of `old` until the new checkpoint is
    /// durable, so two requests cannot both pass the check and one roll back the other.
    latest: tokio::sync::Mutex<Option<TreeHead>>,
}

/// Why a request is not cosigned, with the status C2SP tlog-witness gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("this witness does not witness {0:?}")]
    UnknownOrigin(String),
    #[error("{0}")]
    Forbidden(String),
    /// `old` is not the size last cosigned, which is this.
    #[error("{0}")]
    Conflict(u64),
    #[error("{0}")]
    Fork(String),
    #[error("{0}")]
    Inconsistent(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    /// Status line, content type and body of the answer.
    fn answer(&self) -> (&'static str, &'static str, String) {
        let status = match self {
            Self::Conflict(size) => {
                return ("409 Conflict", SIZE_CONTENT_TYPE, format!("{size}\n"));
            }
            Self::BadRequest(_) => "400 Bad Request",
            Self::UnknownOrigin(_) => "404 Not Found",
            Self::Forbidden(_) => "403 Forbidden",
            Self::Fork(_) => "409 Conflict",
            Self::Inconsistent(_) => "422 Unprocessable Entity",
            Self::Internal(_) => "500 Internal Server Error",
        };
        (status, "text/plain; charset=utf-8", format!("{self}\n"))
    }
}

/// A witness: its key and its record of each log it witnesses.
pub struct Witness {
    signer: CosignatureSigner,
    logs: HashMap<String, Log>,
}

impl Witness {
    /// Opens the witness under `home` for `logs` (origin: the key name), reading what it
    /// cosigned before. A record it cannot read stops it: forgetting would let it be rolled back.
    pub fn open(
        home: &Path,
        name: Option<&str>,
        logs: Vec<NoteVerifier>,
    ) -> Result<Self, ServerError> {
        if logs.is_empty() {
            return Err(ServerError::NoLogs);
        }
        let signer = key(home, name)?;
        let state = dir(home).join("logs");
        private_dir(&state)?;
        let mut by_origin: HashMap<String, Vec<NoteVerifier>> = HashMap::new();
        for key in logs {
            let keys = by_origin.entry(key.name.clone()).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let mut witnessed = HashMap::new();
        for (origin, keys) in by_origin {
            let file = state.join(hex::encode(Sha256::digest(origin.as_bytes())));
            let latest = read_state(&origin, &file)?;
            witnessed.insert(
                origin,
                Log {
                    keys,
                    file,
                    latest: tokio::sync::Mutex::new(latest),
                },
            );
        }
        Ok(Self {
            signer,
            logs: witnessed,
        })
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        self.signer.verifier()
    }

    /// The origins witnessed, sorted.
    pub fn origins(&self) -> Vec<&str> {
        let mut origins: Vec<&str> = self.logs.keys().map(String::as_str).collect();
        origins.sort_unstable();
        origins
    }

    /// Handles an add-checkpoint body: the cosignature line(s) to answer with, or why not.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refusal> {
        let bad = |m: &str| Refusal::BadRequest(m.to_string());
        let body = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
        let (old, proof, note) = parse_request(body)?;
        SignedNote::parse(note).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let origin = note.split('\n').next().unwrap_or_default();
        let log = self
            .logs
            .get(origin)
            .ok_or_else(|| Refusal::UnknownOrigin(origin.to_string()))?;
        let opened = note::open(note, &log.keys).map_err(|e| match e {
            NoteError::NoTrustedSignature | NoteError::BadSignature(_) => Refusal::Forbidden(
                format!("no valid signature by a key this witness has for {origin}: {e}"),
            ),
            other => Refusal::BadRequest(other.to_string()),
        })?;
        let head = TreeHead::parse(&opened.text).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        if old > head.size {
            return Err(Refusal::BadRequest(format!(
                "old size {old} is larger than the checkpoint's size {}",
                head.size
            )));
        }
        let mut latest = log.latest.lock().await;
        let known = latest.as_ref().map_or(0, |h| h.size);
        if old != known {
            return Err(Refusal::Conflict(known));
        }
        if let Some(known) = latest.as_ref().filter(|k| k.size == head.size) {
            if known.root != head.root {
                eprintln!(
                    "tollgate witness: REFUSED a fork of {origin}: size {} with root {}, but it cosigned root {}",
                    head.size,
                    STANDARD.encode(head.root),
                    STANDARD.encode(known.root)
                );
                return Err(Refusal::Fork(format!(
                    "a different tree of size {} was cosigned for {origin}: this checkpoint forks the log",
                    head.size
                )));
            }
        }
        let consistent = match latest.as_ref() {
            // First contact: nothing to be consistent with, and the proof must be empty.
            None => proof.is_empty(),
            Some(known) => {
                merkle::verify_consistency(known.size, head.size, &known.root, &head.root, &proof)
            }
        };
        if !consistent {
            eprintln!(
                "tollgate witness: REFUSED {origin} at size {}: no valid consistency proof from size {old}",
                head.size
            );
            return Err(Refusal::Inconsistent(format!(
                "the consistency proof does not show size {old} is a prefix of size {}",
                head.size
            )));
        }
        let file = log.file.clone();
        let stored = note.to_string();
        tokio::task::spawn_blocking(move || {
            super::write_atomically(&file, stored.as_bytes(), 0o600)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|written| written.map_err(|e| e.to_string()))
        .map_err(|e| Refusal::Internal(format!("cannot record the checkpoint: {e}")))?;
        *latest = Some(head);
        drop(latest);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.signer
            .cosign(&opened.text, now)
            .map_err(|e| Refusal::Internal(e.to_string()))
    }
}

/// The last checkpoint recorded for `origin` in `file`, if any.
fn read_state(origin: &str, file: &Path) -> Result<Option<TreeHead>, ServerError> {
    let broken = |message: String| ServerError::State {
        origin: origin.to_string(),
        path: file.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(broken(e.to_string())),
    };
    let note = SignedNote::parse(&text).map_err(|e| broken(e.to_string()))?;
    let head = TreeHead::parse(note.text).map_err(|e| broken(e.to_string()))?;
    if head.origin != origin {
        return Err(broken(format!("it is a checkpoint of {}", head.origin)));
    }
    Ok(Some(head))
}

/// `old <size>\n`, proof lines, a blank line, then the checkpoint note.
fn parse_request(body: &str) -> Result<(u64, Vec<Hash>, &str), Refusal> {
    let bad = |m: &str| Refusal::BadRequest(m.to_string());
    let (first, mut rest) = body
        .split_once('\n')
        .ok_or(bad("expected an old size line"))?;
    let old = first
        .strip_prefix("old ")
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .filter(|s| !s.starts_with('0') || *s == "0")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(bad("the first line must be old <decimal size>"))?;
    let mut proof = Vec::new();
    loop {
        let (line, after) = rest
            .split_once('\n')
            .ok_or(bad("expected a blank line before the checkpoint"))?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF {
            return Err(bad("more than 63 consistency proof lines"));
        }
        let hash = STANDARD
            .decode(line)
            .ok()
            .and_then(|h| Hash::try_from(h).ok())
            .ok_or(bad("a consistency proof line is not a base64 32-byte hash"))?;
        proof.push(hash);
    }
    Ok((old, proof, rest))
}

/// Serves the witness on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    witness: Arc<Witness>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, Arc::clone(&witness)));
            }
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

/// Answers requests on one connection until the client closes it, asks to, or goes quiet.
async fn connection(mut stream: TcpStream, witness: Arc<Witness>) {
    let mut buffer = Vec::new();
    loop {
        let request = match tokio::time::timeout(
            READ_TIMEOUT,
            read_request(&mut stream, &mut buffer),
        )
        .await
        {
            Ok(Ok(Some(request))) => request,
            Ok(Err((status, message))) => {
                let _ = respond(&mut stream, status, "text/plain", &message, true).await;
                return;
            }
            _ => return,
        };
        let (status, content_type, body) = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/add-checkpoint") => match witness.add_checkpoint(&request.body).await {
                Ok(lines) => ("200 OK", "text/plain; charset=utf-8", lines),
                Err(refusal) => refusal.answer(),
            },
            (_, "/add-checkpoint") => (
                "405 Method Not Allowed",
                "text/plain",
                "only POST\n".to_string(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        };
        if respond(&mut stream, status, content_type, &body, request.close)
            .await
            .is_err()
            || request.close
        {
            return;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    close: bool,
) -> std::io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    if close {
        stream.shutdown().await?;
    }
    Ok(())
}

/// Reads one request (head and `content-length` body) from `stream`, keeping what follows it in
/// `buffer`. `Ok(None)`: the client closed the connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, (&'static str, String)> {
    let bad = |m: &str| ("400 Bad Request", format!("{m}\n"));
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_HEAD {
            return Err(("431 Request Header Fields Too Large", "too large\n".into()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| bad(&e.to_string()))?;
        if n == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(bad("the request ended early"))
            };
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| bad("not a request"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, target, version) = (
        request_line.next().unwrap_or_default().to_string(),
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") || target.is_empty() {
        return Err(bad("not an HTTP/1.1 request"));
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut length = 0usize;
    let mut close = version == "HTTP/1.0";
    let mut expect_continue = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| bad("bad content-length"))?;
            }
            "transfer-encoding" => {
                return Err((
                    "501 Not Implemented",
                    "send a content-length, not a transfer-encoding\n".into(),
                ));
            }
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if length > MAX_BODY {
        return Err(("413 Content Too Large", "the body is too large\n".into()));
    }
    if expect_continue && buffer.len() < head_end + length {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| bad(&e.to_string()))?;
    }
    while buffer.len() < head_end + length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| bad(&e.to_string()))?;
        if n == 0 {
            return Err(bad("the body ended early"));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Ok(Some(Request {
        method,
        path,
        body,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Frontier, NodeSource};
    use crate::note::{Checkpoint, NoteSigner};

    const ORIGIN: &str = "tollgate.test/witnessed";

    /// A log of `n` leaves, kept whole so proofs can be made.
    struct Tree(Vec<Hash>);

    impl NodeSource for Tree {
        type Error = ();
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, ()> {
            let start = usize::try_from(index << level).map_err(|_| ())?;
            let mut frontier = Frontier::new();
            for leaf in &self.0[start..start + (1 << level)] {
                frontier.push(*leaf, |_, _, _| {});
            }
            Ok(frontier.root())
        }
    }

    impl Tree {
        fn new(n: u64, salt: &str) -> Self {
            Self(
                (0..n)
                    .map(|i| merkle::leaf_hash(format!("{salt}{i}").as_bytes()))
                    .collect(),
            )
        }

        fn root(&mut self, size: u64) -> Hash {
            merkle::subtree_root(self, 0, size).unwrap()
        }

        fn proof(&mut self, old: u64, new: u64) -> Vec<Hash> {
            merkle::consistency_proof(self, old, new).unwrap()
        }
    }

    fn checkpoint(log: &NoteSigner, size: u64, root: Hash) -> String {
        log.sign(
            &Checkpoint {
                origin: ORIGIN.into(),
                size,
                root,
                chain_head: [0; 32],
                time: "2025-01-31T12:00:00.000001Z".into(),
            }
            .text(),
        )
    }

    fn request(old: u64, proof: &[Hash], note: &str) -> Vec<u8> {
        let mut body = format!("old {old}\n");
        for hash in proof {
            body.push_str(&STANDARD.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(note);
        body.into_bytes()
    }

    fn witness(home: &Path, log: &NoteSigner) -> Witness {
        Witness::open(home, Some("witness.test/w1"), vec![log.verifier()]).unwrap()
    }

    #[tokio::test]
    async fn cosigns_consistent_checkpoints_and_refuses_the_rest() {
        let home = tempfile::tempdir().unwrap();
        let log = NoteSigner::generate(ORIGIN).unwrap();
        let witness = witness(home.path(), &log);
        let mut tree = Tree::new(20, "leaf");

        let first = checkpoint(&log, 5, tree.root(5));
        let line = witness
            .add_checkpoint(&request(0, &[], &first))
            .await
            .unwrap();
        let cosigned = format!("{first}{line}");
        assert!(witness.verifier().verify(&cosigned).is_ok());

        // The same checkpoint again: cosigned again (a client may ask twice).
        assert!(witness
            .add_checkpoint(&request(5, &[], &first))
            .await
            .is_ok());
        // A wrong old size: 409 naming the size it has.
        assert_eq!(
            witness.add_checkpoint(&request(0, &[], &first)).await,
            Err(Refusal::Conflict(5))
        );

        let proof = tree.proof(5, 12);
        let second = checkpoint(&log, 12, tree.root(12));
        witness
            .add_checkpoint(&request(5, &proof, &second))
            .await
            .unwrap();

        // Rollback: an older checkpoint, with the size the witness has or with its own.
        assert!(matches!(
            witness.add_checkpoint(&request(12, &[], &first)).await,
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            witness.add_checkpoint(&request(5, &[], &first)).await,
            Err(Refusal::Conflict(12))
        );
        // Fork at the same size: 409; at a larger size: the proof cannot verify, 422.
        let mut other = Tree::new(20, "forged");
        let fork = checkpoint(&log, 12, other.root(12));
        assert!(matches!(
            witness.add_checkpoint(&request(12, &[], &fork)).await,
            Err(Refusal::Fork(_))
        ));
        let fork = checkpoint(&log, 16, other.root(16));
        let forged_proof = other.proof(12, 16);
        assert!(matches!(
            witness
                .add_checkpoint(&request(12, &forged_proof, &fork))
                .await,
            Err(Refusal::Inconsistent(_))
        ));
        // An honest checkpoint with a proof from another size does not verify either.
        let honest = checkpoint(&log, 16, tree.root(16));
        assert!(matches!(
            witness
                .add_checkpoint(&request(12, &tree.proof(5, 16), &honest))
                .await,
            Err(Refusal::Inconsistent(_))
        ));

        // None of that moved it: the next honest checkpoint is cosigned, also after a restart.
        drop(witness);
        let witness = self::witness(home.path(), &log);
        let line = witness
            .add_checkpoint(&request(12, &tree.proof(12, 16), &honest))
            .await
            .unwrap();
        assert!(witness
            .verifier()
            .verify(&format!("{honest}{line}"))
            .is_ok());
    }

    #[tokio::test]
    async fn refuses_unknown_logs_untrusted_signatures_and_bad_requests() {
        let home = tempfile::tempdir().unwrap();
        let log = NoteSigner::generate(ORIGIN).unwrap();
        let witness = witness(home.path(), &log);
        let mut tree = Tree::new(4, "leaf");
        let stranger = NoteSigner::generate("another.test/log").unwrap();
        let note = stranger.sign(
            &Checkpoint {
                origin: "another.test/log".into(),
                size: 4,
                root: tree.root(4),
                chain_head: [0; 32],
                time: "2025-01-31T12:00:00.000001Z".into(),
            }
            .text(),
        );
        assert!(matches!(
            witness.add_checkpoint(&request(0, &[], &note)).await,
            Err(Refusal::UnknownOrigin(_))
        ));
        let impostor = NoteSigner::generate(ORIGIN).unwrap();
        let note = checkpoint(&impostor, 4, tree.root(4));
        assert!(matches!(
            witness.add_checkpoint(&request(0, &[], &note)).await,
            Err(Refusal::Forbidden(_))
        ));
        let note = checkpoint(&log, 4, tree.root(4));
        for body in [
            b"old 01\n\n".to_vec(),
            b"new 0\n\n".to_vec(),
            request(5, &[], &note),
            format!("old 0\nnot base64\n\n{note}").into_bytes(),
            format!("old 0\n{note}").into_bytes(),
        ] {
            assert!(
                matches!(
                    witness.add_checkpoint(&body).await,
                    Err(Refusal::BadRequest(_))
                ),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        // First contact with a proof: the proof must be empty.
        assert!(matches!(
            witness.add_checkpoint(&request(0, &[[1; 32]], &note)).await,
            Err(Refusal::Inconsistent(_))
        ));
        assert_eq!(
            Refusal::Conflict(7).answer(),
            ("409 Conflict", SIZE_CONTENT_TYPE, "7\n".to_string())
        );
    }

    #[test]
    fn the_key_is_private_and_keeps_its_name() {
        let home = tempfile::tempdir().unwrap();
        assert!(matches!(key(home.path(), None), Err(ServerError::NoKey(_))));
        let signer = key(home.path(), Some("witness.test/w1")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path(home.path())), 0o600);
        assert_eq!(mode(&dir(home.path())), 0o700);
        assert_eq!(
            key(home.path(), None).unwrap().verifier(),
            signer.verifier()
        );
        assert!(matches!(
            key(home.path(), Some("witness.test/other")),
            Err(ServerError::WrongName(..))
        ));
    }
}
