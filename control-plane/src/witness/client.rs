//! The control plane's side of witnessing: each checkpoint goes to the witnesses of the
//! witness policy (those with a URL) as C2SP tlog-witness `add-checkpoint` requests, with a
//! consistency proof from the size each witness last cosigned; the cosignature lines that come
//! back are checked and added to the note. A checkpoint counts as published once the policy's
//! quorum has cosigned it.
//!
//! Witnessing never holds up the log: appends and checkpoint signing go on while a witness is
//! down; only publication waits for the quorum.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::task::JoinSet;
use tollgate_log::policy::{Policy, PolicyError};
use tollgate_log::witness::{
    add_signatures, CosignatureError, CosignatureVerifier, NoteSignature, SignedNote, TreeHead,
};

use super::server::SIZE_CONTENT_TYPE;
use super::Published;
use crate::chain::Hash;
use crate::note::NoteVerifier;
use crate::store::{Store, StoreError};

/// How long a witness may take to answer (the control plane's HTTP client, shared with the
/// approval webhook and operator JWKS: web PKI roots and `serve --http-ca`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer read: a few signature lines.
const MAX_ANSWER: usize = 64 * 1024;
/// How often the publisher looks for a new checkpoint.
const POLL: Duration = Duration::from_millis(500);
/// How soon a checkpoint whose quorum was not met is sent again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("cannot read the witness policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("witness policy {path}: {source}")]
    Policy { path: PathBuf, source: PolicyError },
    #[error("witness {name}: {url:?} is not an http:// or https:// URL")]
    Url { name: String, url: String },
    #[error("the policy's quorum cannot be met by the witnesses it gives a URL for: {0}")]
    Unreachable(PolicyError),
    #[error("the witnesses' HTTP client: {0}")]
    Client(String),
    #[error("not a checkpoint: {0}")]
    Checkpoint(#[from] CosignatureError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(PolicyError),
    #[error("{quorum}{}", failures.iter().map(|f| format!("; {f}")).collect::<String>())]
    Quorum {
        quorum: PolicyError,
        /// Each witness asked that did not cosign, and why.
        failures: Vec<String>,
    },
}

/// A witness the control plane sends checkpoints to.
struct Target {
    /// Its name in the policy.
    name: String,
    key: CosignatureVerifier,
    /// `<submission prefix>/add-checkpoint`.
    url: reqwest::Url,
}

#[derive(Default)]
struct State {
    /// The tree size each witness last cosigned, as far as known (0 until learned: a 409
    /// answer tells).
    sizes: HashMap<String, u64>,
    /// The note text the lines below cosign.
    text: String,
    /// Cosignature line (with its newline) of each witness that cosigned `text`.
    lines: HashMap<String, String>,
    /// Why each failing witness failed last, so that only changes are reported.
    failing: HashMap<String, String>,
}

/// The witnesses of a witness policy, and what the control plane knows of them.
pub struct Witnesses {
    policy: Policy,
    targets: Vec<Target>,
    /// Held while gathering, so that two callers do not race on a witness's size.
    state: tokio::sync::Mutex<State>,
    /// Held from signing a checkpoint to its cosignatures (an export), and from reading the
    /// newest checkpoint to its cosignatures (the publisher): a witness cosigns only trees at
    /// least as large as the last it saw, so checkpoints must reach it in the order signed.
    order: tokio::sync::Mutex<()>,
}

/// A witness's answer.
struct Reply {
    status: u16,
    /// Whether it is `text/x.tlog.size` (a 409 naming the witness's size).
    size: bool,
    body: Vec<u8>,
}

impl Witnesses {
    /// Reads the policy at `path` (see [`Witnesses::new`]).
    pub fn load(path: &Path) -> Result<Self, WitnessError> {
        let text = std::fs::read_to_string(path).map_err(|source| WitnessError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let policy = Policy::parse(&text).map_err(|source| WitnessError::Policy {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(policy)
    }

    /// The witnesses of `policy` that have a URL. Refused when those cannot meet its quorum:
    /// nothing would ever be published.
    pub fn new(policy: Policy) -> Result<Self, WitnessError> {
        let mut targets = Vec::new();
        for witness in policy.witnesses() {
            let Some(url) = &witness.url else {
                continue;
            };
            let bad = || WitnessError::Url {
                name: witness.name.clone(),
                url: url.clone(),
            };
            let endpoint =
                reqwest::Url::parse(&format!("{}/add-checkpoint", url.trim_end_matches('/')))
                    .map_err(|_| bad())?;
            if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
                return Err(bad());
            }
            targets.push(Target {
                name: witness.name.clone(),
                key: witness.key.clone(),
                url: endpoint,
            });
        }
        let reachable: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        policy
            .check_quorum(&reachable)
            .map_err(WitnessError::Unreachable)?;
        Ok(Self {
            policy,
            targets,
            state: tokio::sync::Mutex::new(State::default()),
            order: tokio::sync::Mutex::new(()),
        })
    }

    /// Hold this from signing a checkpoint until [`Witnesses::cosign`] returns for it: no
    /// newer checkpoint reaches the witnesses in between.
    pub async fn in_order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// `note` (a checkpoint of `store`'s log) with the cosignatures of the policy's witnesses
    /// appended, once they meet its quorum; or which witnesses failed and why. Each witness
    /// with a URL whose cosignature is not yet in hand is asked, all at once; one that answers
    /// 409 with its size is asked once more with a proof from that size. Lines gathered for
    /// the note asked about last are kept, so asking again only asks the witnesses that did
    /// not cosign it. A witness only cosigns a tree at least as large as the last it cosigned:
    /// this is for the newest checkpoint; one older than a witness has seen fails for it.
    pub async fn cosign(&self, store: &Store, note: &str) -> Result<String, WitnessError> {
        let parsed = SignedNote::parse(note)?;
        let head = TreeHead::parse(parsed.text)?;
        let mut state = self.state.lock().await;
        if state.text != parsed.text {
            state.text = parsed.text.to_string();
            state.lines.clear();
        }
        let mut failures: Vec<(usize, String)> = Vec::new();
        let mut pending: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let target = &self.targets[i];
                !state.lines.contains_key(&target.name) && target.key.verify(note).is_err()
            })
            .collect();
        let attempted = pending.clone();
        for round in 0..2 {
            let mut requests = JoinSet::new();
            for &i in &pending {
                let target = &self.targets[i];
                let old = state.sizes.get(&target.name).copied().unwrap_or(0);
                if old > head.size {
                    failures.push((
                        i,
                        format!(
                            "it has cosigned a larger tree (size {old}) than this checkpoint's \
                             ({}); only a newer checkpoint can be cosigned",
                            head.size
                        ),
                    ));
                    continue;
                }
                let proof = blocking(|| store.reader().consistency_proof(old, head.size))?;
                let body = request_body(old, &proof, note);
                let client = crate::approvals::http::client()
                    .map_err(|e| WitnessError::Client(e.to_string()))?
                    .clone();
                let url = target.url.clone();
                requests.spawn(async move { (i, old, send(&client, url, body).await) });
            }
            let mut again = Vec::new();
            while let Some(joined) = requests.join_next().await {
                let Ok((i, old, reply)) = joined else {
                    continue;
                };
                let target = &self.targets[i];
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(reason) => {
                        failures.push((i, reason));
                        continue;
                    }
                };
                match (reply.status, reply.size) {
                    (200, _) => match cosignature(&target.key, note, &reply.body) {
                        Ok(line) => {
                            state.sizes.insert(target.name.clone(), head.size);
                            state.lines.insert(target.name.clone(), line);
                        }
                        Err(reason) => failures.push((i, reason)),
                    },
                    (409, true) => match parse_size(&reply.body) {
                        Some(size) if round == 0 && size != old => {
                            state.sizes.insert(target.name.clone(), size);
                            again.push(i);
                        }
                        _ => failures.push((
                            i,
                            format!("answered 409 naming size {}", first_line(&reply.body)),
                        )),
                    },
                    (status, _) => failures
                        .push((i, format!("answered {status}: {}", first_line(&reply.body)))),
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
        for i in attempted {
            let target = &self.targets[i];
            match failures.iter().find(|(f, _)| *f == i) {
                Some((_, reason)) => {
                    if state.failing.get(&target.name) != Some(reason) {
                        eprintln!(
                            "tollgate: witness {} ({}): {reason}",
                            target.name, target.url
                        );
                        state.failing.insert(target.name.clone(), reason.clone());
                    }
                }
                None => {
                    if state.failing.remove(&target.name).is_some() {
                        eprintln!("tollgate: witness {} cosigns again", target.name);
                    }
                }
            }
        }
        let lines: String = self
            .targets
            .iter()
            .filter_map(|t| state.lines.get(&t.name).map(String::as_str))
            .collect();
        let cosigned = if lines.is_empty() {
            note.to_string()
        } else {
            add_signatures(note, &lines)?
        };
        let cosigners = self
            .policy
            .cosigners(&cosigned)
            .map_err(WitnessError::Invalid)?;
        match self.policy.check_quorum(&cosigners) {
            Ok(()) => Ok(cosigned),
            Err(quorum) => Err(WitnessError::Quorum {
                quorum,
                failures: failures
                    .into_iter()
                    .map(|(i, reason)| {
                        let target = &self.targets[i];
                        format!("witness {} ({}): {reason}", target.name, target.url)
                    })
                    .collect(),
            }),
        }
    }
}

/// A warning when `policy` names logs but none of `keys` (this log's): verifying this log's
/// checkpoints with it would fail.
pub fn log_key_warning(policy: &Policy, keys: &[NoteVerifier]) -> Option<String> {
    let logs = policy.logs();
    if logs.is_empty() || logs.iter().any(|l| keys.contains(&l.key)) {
        return None;
    }
    Some(format!(
        "the witness policy's log lines name none of this log's keys ({}): `audit verify \
         --witness-policy` with it will refuse this log's checkpoints",
        keys.iter()
            .map(NoteVerifier::label)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Runs `read` (a store read, which may block) without stalling other tasks on this worker.
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(read),
        _ => read(),
    }
}

fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&STANDARD.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// This witness's cosignature line from an answer, checked against the note.
fn cosignature(key: &CosignatureVerifier, note: &str, body: &[u8]) -> Result<String, String> {
    let body = std::str::from_utf8(body).map_err(|_| "answered with non-UTF-8".to_string())?;
    let combined = add_signatures(note, body)
        .map_err(|e| format!("answered with something other than signature lines: {e}"))?;
    key.verify(&combined)
        .map_err(|e| format!("answered without a valid cosignature by its key: {e}"))?;
    body.lines()
        .find(|line| NoteSignature::parse(line).is_ok_and(|s| s.name == key.name && s.id == key.id))
        .map(|line| format!("{line}\n"))
        .ok_or_else(|| "answered without its cosignature".to_string())
}

fn parse_size(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

async fn send(client: &reqwest::Client, url: reqwest::Url, body: String) -> Result<Reply, String> {
    let mut response = client
        .post(url)
        .timeout(REQUEST_TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(|e| crate::approvals::http::describe(&e.without_url()))?;
    let status = response.status().as_u16();
    let size = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(SIZE_CONTENT_TYPE));
    let mut answer = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| crate::approvals::http::describe(&e))?
    {
        if answer.len() + chunk.len() > MAX_ANSWER {
            return Err("answered with more than 64 KiB".into());
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        size,
        body: answer,
    })
}

/// Publishes each new checkpoint the store signs: at once without witnesses, once cosigned by
/// the quorum with them (a checkpoint that misses it is tried again every [`RETRY`] until a
/// newer one replaces it). Runs until the runtime stops.
pub fn spawn_publisher(
    store: Arc<Store>,
    witnesses: Option<Arc<Witnesses>>,
    published: Arc<Published>,
) {
    tokio::spawn(async move {
        // The last checkpoint tried, when, and whether it was published.
        let mut tried: Option<(String, Instant, bool)> = None;
        // The last problem reported, so that a lasting one is reported once.
        let mut problem = String::new();
        let report = |problem: &mut String, text: String| {
            if text != *problem {
                eprintln!("tollgate: {text}");
                *problem = text;
            }
        };
        loop {
            tokio::time::sleep(POLL).await;
            let _order = match &witnesses {
                Some(witnesses) => Some(witnesses.in_order().await),
                None => None,
            };
            let reader = Arc::clone(&store);
            let latest = match tokio::task::spawn_blocking(move || {
                reader.reader().latest_checkpoint()
            })
            .await
            {
                Ok(Ok(Some(checkpoint))) => checkpoint.note,
                Ok(Ok(None)) | Err(_) => continue,
                Ok(Err(e)) => {
                    report(
                        &mut problem,
                        format!("cannot read the newest checkpoint to publish: {e}"),
                    );
                    continue;
                }
            };
            if let Some((note, at, done)) = &tried {
                if *note == latest && (*done || at.elapsed() < RETRY) {
                    continue;
                }
            }
            let cosigned = match &witnesses {
                None => Ok(latest.clone()),
                Some(witnesses) => witnesses.cosign(&store, &latest).await,
            };
            let done = match cosigned {
                Ok(note) => match published.publish(note).await {
                    Ok(()) => {
                        problem.clear();
                        true
                    }
                    Err(e) => {
                        report(
                            &mut problem,
                            format!(
                                "cannot write the published checkpoint {}: {e}",
                                published.file().display()
                            ),
                        );
                        false
                    }
                },
                Err(e) => {
                    report(
                        &mut problem,
                        format!("the newest checkpoint is not published: {e}"),
                    );
                    false
                }
            };
            tried = Some((latest, Instant::now(), done));
        }
    });
}
