//! Which verified identity each MCP session (`Mcp-Session-Id`) belongs to, kept beside the
//! audit log so that the binding survives an Envoy restart and holds across Envoy replicas (and
//! control-plane replicas on PostgreSQL). The filter sends a [`pb::SessionCheck`] with the
//! `Append` of every forwarded request that names a session and of every answer that opens one;
//! the check is made, and the binding changed, before that record is chained.
//!
//! Only SHA-256 digests of the session id and of the identity are stored: a session id is a
//! bearer secret, and neither may hold a card number at rest.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{self, Micros};
use crate::pb;
use crate::store::{Store, StoreError, Table};

const TREE: &str = "sessions";
/// How often expired bindings are swept away.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A binding's last use is written at most this often (bounded by a tenth of the timeout):
/// most requests of a busy session cost a read, not a write.
const TOUCH_EVERY: Micros = 60_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SessionSettings {
    /// An MCP session unused for this long is over: its id is refused (404) from then on.
    #[arg(long, env = "TOLLGATE_SESSION_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub session_idle_timeout: Duration,
}

/// Why a session was refused (the `sessionRefused` field of the record and of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Never bound here, or ended with DELETE.
    Unknown,
    /// Idle past the timeout.
    Expired,
    /// Bound to another identity.
    OtherIdentity,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::OtherIdentity => "other_identity",
        }
    }

    /// The reason as the record states it (no session id: the record names it already).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "the session is unknown to the gateway or has ended",
            Self::Expired => "the session expired after being idle",
            Self::OtherIdentity => "the session belongs to another identity",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Binding {
    /// Hex SHA-256 of the bound identity.
    owner: String,
    opened: Micros,
    last_seen: Micros,
}

/// What a check does to the binding when it passes.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    Put(Binding),
    Remove,
}

/// The pure rule: given the stored binding, may `owner` take `step` at `now`, and what changes.
fn judge(
    stored: Option<&Binding>,
    owner: &str,
    step: pb::SessionStep,
    now: Micros,
    idle: Micros,
) -> Result<Change, Refusal> {
    let live = stored.filter(|b| now.saturating_sub(b.last_seen) <= idle);
    match (step, live) {
        (pb::SessionStep::Open, None) => Ok(Change::Put(Binding {
            owner: owner.to_owned(),
            opened: now,
            last_seen: now,
        })),
        (_, Some(binding)) if binding.owner != owner => Err(Refusal::OtherIdentity),
        (pb::SessionStep::Use | pb::SessionStep::End, None) => Err(if stored.is_some() {
            Refusal::Expired
        } else {
            Refusal::Unknown
        }),
        (pb::SessionStep::End, Some(_)) => Ok(Change::Remove),
        (pb::SessionStep::Use | pb::SessionStep::Open, Some(binding)) => {
            if now.saturating_sub(binding.last_seen) < TOUCH_EVERY.min(idle / 10) {
                Ok(Change::None)
            } else {
                Ok(Change::Put(Binding {
                    last_seen: now,
                    ..binding.clone()
                }))
            }
        }
    }
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The session bindings of one store.
pub struct SessionBindings {
    table: Table,
    idle: Micros,
}

impl SessionBindings {
    pub fn open(store: &Store, settings: &SessionSettings) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table(TREE)?,
            idle: u64::try_from(settings.session_idle_timeout.as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// Checks one step and changes the binding when it passes. The caller holds the store's
    /// `sessions` lock for anything but a plain use, and chains the record after this returns:
    /// the change is durable when this returns (sled flushes its table; PostgreSQL commits).
    pub async fn check(
        &self,
        check: &pb::SessionCheck,
        now: Micros,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let key = digest(&check.session_id);
        let stored = match self.table.get(key.as_bytes()).await? {
            // A binding that cannot be read is treated as absent: refused, never taken over
            // (an OPEN over it would need the same unreadable owner to be replaced).
            Some(bytes) => match serde_json::from_slice::<Binding>(&bytes) {
                Ok(binding) => Some(binding),
                Err(_) => return Ok(Err(Refusal::OtherIdentity)),
            },
            None => None,
        };
        let change = match judge(
            stored.as_ref(),
            &digest(&check.subject),
            check.step(),
            now,
            self.idle,
        ) {
            Ok(change) => change,
            Err(refusal) => return Ok(Err(refusal)),
        };
        match change {
            Change::None => {}
            Change::Put(binding) => {
                let value = serde_json::to_vec(&binding)
                    .map_err(|e| StoreError::Format(format!("session binding: {e}")))?;
                self.table.insert(key.as_bytes(), &value).await?;
            }
            Change::Remove => self.table.remove(key.as_bytes()).await?,
        }
        Ok(Ok(()))
    }

    /// Removes every binding idle past the timeout; returns how many.
    pub async fn sweep(&self, now: Micros) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (key, value) in self.table.scan_prefix(b"").await? {
            let live = matches!(serde_json::from_slice::<Binding>(&value),
                Ok(b) if now.saturating_sub(b.last_seen) <= self.idle);
            let expired = !live;
            if expired {
                self.table.remove(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Sweeps expired bindings for as long as the process runs, so that the table does not grow
/// with every session a client opens and never ends.
pub fn spawn_sweeper(bindings: std::sync::Arc<SessionBindings>, store: std::sync::Arc<Store>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let Ok(_lock) = store.lock(TREE).await else {
                continue;
            };
            if let Err(error) = bindings.sweep(clock::now_micros()).await {
                eprintln!("tollgate: sweeping expired sessions failed: {error}");
            }
        }
    });
}

/// The name of the store lock that serialises binding changes.
pub const LOCK: &str = TREE;

#[cfg(test)]
mod tests {
    use super::*;
    use pb::SessionStep::{End, Open, Use};

    const IDLE: Micros = 3_600_000_000;

    fn bound(owner: &str, last_seen: Micros) -> Binding {
        Binding {
            owner: owner.into(),
            opened: 0,
            last_seen,
        }
    }

    #[test]
    fn an_answer_binds_an_unknown_session_to_its_caller() {
        let change = judge(None, "alice", Open, 5, IDLE).unwrap();
        assert_eq!(change, Change::Put(bound_at("alice", 5)));
    }

    fn bound_at(owner: &str, at: Micros) -> Binding {
        Binding {
            owner: owner.into(),
            opened: at,
            last_seen: at,
        }
    }

    #[test]
    fn nobody_claims_an_unknown_session_by_using_it() {
        assert_eq!(judge(None, "mallory", Use, 5, IDLE), Err(Refusal::Unknown));
        assert_eq!(judge(None, "mallory", End, 5, IDLE), Err(Refusal::Unknown));
    }

    #[test]
    fn another_identity_is_refused_at_every_step() {
        let alice = bound("alice", 100);
        for step in [Use, End, Open] {
            assert_eq!(
                judge(Some(&alice), "mallory", step, 200, IDLE),
                Err(Refusal::OtherIdentity),
                "{step:?}"
            );
        }
    }

    #[test]
    fn the_owner_uses_and_ends_it() {
        let alice = bound("alice", 100);
        assert_eq!(
            judge(Some(&alice), "alice", Use, 200, IDLE),
            Ok(Change::None)
        );
        assert_eq!(
            judge(Some(&alice), "alice", End, 200, IDLE),
            Ok(Change::Remove)
        );
    }

    #[test]
    fn use_is_written_back_only_now_and_then() {
        let alice = bound("alice", 100);
        let later = 100 + TOUCH_EVERY;
        assert_eq!(
            judge(Some(&alice), "alice", Use, later, IDLE),
            Ok(Change::Put(bound("alice", later)))
        );
    }

    #[test]
    fn an_idle_session_is_over_and_may_be_opened_again() {
        let alice = bound("alice", 100);
        let later = 100 + IDLE + 1;
        assert_eq!(
            judge(Some(&alice), "alice", Use, later, IDLE),
            Err(Refusal::Expired)
        );
        assert_eq!(
            judge(Some(&alice), "mallory", Use, later, IDLE),
            Err(Refusal::Expired)
        );
        assert_eq!(
            judge(Some(&alice), "bob", Open, later, IDLE),
            Ok(Change::Put(bound_at("bob", later)))
        );
    }

    #[test]
    fn a_short_timeout_still_writes_back_before_it_runs_out() {
        let idle = 2_000_000;
        let alice = bound("alice", 0);
        assert_eq!(
            judge(Some(&alice), "alice", Use, idle / 10, idle),
            Ok(Change::Put(bound("alice", idle / 10)))
        );
    }
}
