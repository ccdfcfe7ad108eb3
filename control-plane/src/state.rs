//! The state tables beside the chain (approvals, revocations, service account owners) checked
//! against the chain. Every change to them is written to its table and then recorded; the
//! chain is the evidence, the tables are what the control plane acts on. `tollgate audit
//! verify` replays the state records of the chain ([`Replay`]) and compares the outcome with
//! the tables ([`compare`]): a table edited without a record (an approval marked approved, a
//! revocation lifted, an owner changed) is a finding like a broken hash.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::store::{Store, StoreError};
use crate::verify::Finding;

/// What the checks compare for one approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFacts {
    pub state: String,
    pub uses: u64,
    pub approved_by: Vec<String>,
}

/// One revocation: its claim, value and whether it is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationFacts {
    pub claim: String,
    pub value: String,
    pub active: bool,
}

/// The state the checks compare, from the tables or from the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub approvals: BTreeMap<String, ApprovalFacts>,
    pub revocations: BTreeMap<String, RevocationFacts>,
    pub owners: BTreeMap<String, String>,
}

impl Facts {
    /// Reads a [`snapshot`] (or the `StateTables` answer).
    pub fn from_snapshot(snapshot: &Value) -> Result<Facts, String> {
        let mut facts = Facts::default();
        let object = |name: &str| {
            snapshot[name]
                .as_object()
                .ok_or_else(|| format!("the state snapshot has no {name}"))
        };
        for (id, entry) in object("approvals")? {
            let text = |k: &str| entry[k].as_str().unwrap_or_default().to_owned();
            facts.approvals.insert(
                id.clone(),
                ApprovalFacts {
                    state: text("state"),
                    uses: entry["uses"].as_u64().unwrap_or(0),
                    approved_by: strings(&entry["approvedBy"]),
                },
            );
        }
        for (id, entry) in object("revocations")? {
            let text = |k: &str| entry[k].as_str().unwrap_or_default().to_owned();
            facts.revocations.insert(
                id.clone(),
                RevocationFacts {
                    claim: text("claim"),
                    value: text("value"),
                    active: entry["liftedAt"].is_null(),
                },
            );
        }
        for (account, entry) in object("owners")? {
            if let Some(owner) = entry["owner"].as_str() {
                facts.owners.insert(account.clone(), owner.to_owned());
            }
        }
        Ok(facts)
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The state tables as they are now, as JSON: `{"approvals": {id: entry}, "revocations": {id:
/// entry}, "owners": {service account: owner entry}}`.
pub async fn snapshot(store: &Store) -> Result<Value, StoreError> {
    let mut approvals = Map::new();
    for (key, bytes) in store.table("approvals")?.scan_prefix(b"").await? {
        approvals.insert(key_text(&key), parse(&bytes));
    }
    let mut revocations = Map::new();
    let mut owners = Map::new();
    for (key, bytes) in store.table("revocations")?.scan_prefix(b"").await? {
        let key = key_text(&key);
        if key.starts_with("rev_") {
            revocations.insert(key, parse(&bytes));
        } else if let Some(account) = key.strip_prefix("sa:") {
            // An empty value is a removed owner (state rows are never deleted).
            if !bytes.is_empty() {
                owners.insert(account.to_owned(), parse(&bytes));
            }
        }
    }
    Ok(json!({"approvals": approvals, "revocations": revocations, "owners": owners}))
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// Whether a stored record (canonical JSON) may be a state change: parsing every record to
/// find the few that are would slow verification down.
pub fn may_change_state(canonical_json: &[u8]) -> bool {
    const EVENT: &[u8] = b"\"event\":\"";
    // Every occurrence: a nested "event" member (in masked arguments) may come first.
    canonical_json
        .windows(EVENT.len())
        .enumerate()
        .filter(|(_, w)| *w == EVENT)
        .any(|(at, _)| {
            let name = &canonical_json[at + EVENT.len()..];
            [&b"approval."[..], b"revocation.", b"serviceAccount."]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
}

/// The state the chain's records say the tables should hold.
#[derive(Debug, Default)]
pub struct Replay {
    facts: Facts,
    /// Where each approval, revocation and owner was last changed, for findings.
    changed_at: BTreeMap<String, u64>,
}

impl Replay {
    pub fn observe(&mut self, seq: u64, record: &Value) {
        let text = |k: &str| record[k].as_str().unwrap_or_default().to_owned();
        let event = record["event"].as_str().unwrap_or_default();
        let approval = text("approvalId");
        let facts = &mut self.facts;
        match event {
            "approval.requested" => {
                facts.approvals.insert(
                    approval.clone(),
                    ApprovalFacts {
                        state: "pending".into(),
                        uses: 0,
                        approved_by: Vec::new(),
                    },
                );
            }
            "approval.decided" => {
                if let Some(entry) = facts.approvals.get_mut(&approval) {
                    // Records before quorums carried only the decision.
                    let state = record["state"]
                        .as_str()
                        .or_else(|| record["decision"].as_str())
                        .unwrap_or_default();
                    entry.state = state.to_owned();
                    entry.approved_by = match record.get("approvedBy") {
                        Some(list) => strings(list),
                        None if state == "approved" => vec![text("sub")],
                        None => Vec::new(),
                    };
                }
            }
            "approval.expired" => {
                if let Some(entry) = facts.approvals.get_mut(&approval) {
                    entry.state = "expired".into();
                }
            }
            "approval.grant_used" => {
                if let Some(entry) = facts.approvals.get_mut(&approval) {
                    entry.uses = record["uses"].as_u64().unwrap_or(entry.uses + 1);
                }
            }
            "revocation.added" if record["alreadyRevoked"] != true => {
                facts.revocations.insert(
                    text("revocationId"),
                    RevocationFacts {
                        claim: text("claim"),
                        value: text("value"),
                        active: true,
                    },
                );
            }
            "revocation.lifted" => {
                if let Some(entry) = facts.revocations.get_mut(&text("revocationId")) {
                    entry.active = false;
                }
            }
            "serviceAccount.ownerSet" => {
                facts.owners.insert(text("serviceAccount"), text("owner"));
            }
            "serviceAccount.ownerRemoved" => {
                facts.owners.remove(&text("serviceAccount"));
            }
            _ => return,
        }
        let key = match event {
            e if e.starts_with("approval.") => approval,
            e if e.starts_with("revocation.") => text("revocationId"),
            _ => format!("owner of {}", text("serviceAccount")),
        };
        self.changed_at.insert(key, seq);
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    fn last_change(&self, key: &str) -> String {
        self.changed_at
            .get(key)
            .map_or_else(|| "no record".to_owned(), |seq| format!("record #{seq}"))
    }
}

/// Findings where the tables disagree with the chain. `before` and `after` are the tables
/// read before and after the chain was read: a change in flight matches one of them (its
/// table write and its record land between the two reads), a silent edit matches neither.
pub fn compare(replay: &Replay, before: &Facts, after: &Facts) -> Vec<Finding> {
    let chain = replay.facts();
    let mut findings = Vec::new();
    let mut problem = |text: String| {
        findings.push(Finding {
            seq: None,
            problem: text,
        })
    };

    let ids = chain.approvals.keys().chain(after.approvals.keys());
    for id in ids.collect::<std::collections::BTreeSet<_>>() {
        let said = chain.approvals.get(id);
        if [before.approvals.get(id), after.approvals.get(id)].contains(&said) {
            continue;
        }
        problem(match (said, after.approvals.get(id)) {
            (None, Some(held)) => format!(
                "state: approval {id} is in the approvals table ({}) but no record of the chain requested it",
                held.state
            ),
            (Some(s), None) => format!(
                "state: approval {id} ({}, {}) is missing from the approvals table",
                s.state,
                replay.last_change(id)
            ),
            (Some(s), Some(h)) => format!(
                "state: approval {id} is {} (uses {}, approved by {:?}) in the approvals table; the chain says {} (uses {}, approved by {:?}; last {})",
                h.state, h.uses, h.approved_by, s.state, s.uses, s.approved_by, replay.last_change(id)
            ),
            (None, None) => continue,
        });
    }
    let ids = chain.revocations.keys().chain(after.revocations.keys());
    for id in ids.collect::<std::collections::BTreeSet<_>>() {
        let said = chain.revocations.get(id);
        if [before.revocations.get(id), after.revocations.get(id)].contains(&said) {
            continue;
        }
        let describe = |r: Option<&RevocationFacts>| match r {
            None => "absent".to_owned(),
            Some(r) => format!(
                "{}={} {}",
                r.claim,
                r.value,
                if r.active { "active" } else { "lifted" }
            ),
        };
        problem(format!(
            "state: revocation {id} is {} in the revocations table; the chain says {} (last {})",
            describe(after.revocations.get(id)),
            describe(said),
            replay.last_change(id)
        ));
    }
    let accounts = chain.owners.keys().chain(after.owners.keys());
    for account in accounts.collect::<std::collections::BTreeSet<_>>() {
        let said = chain.owners.get(account);
        if [before.owners.get(account), after.owners.get(account)].contains(&said) {
            continue;
        }
        problem(format!(
            "state: service account {account} is owned by {:?} in the table; the chain says {:?} (last {})",
            after.owners.get(account),
            said,
            replay.last_change(&format!("owner of {account}"))
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(records: &[Value]) -> Replay {
        let mut replay = Replay::default();
        for (seq, record) in records.iter().enumerate() {
            replay.observe(seq as u64, record);
        }
        replay
    }

    fn approval(state: &str, uses: u64, by: &[&str]) -> ApprovalFacts {
        ApprovalFacts {
            state: state.into(),
            uses,
            approved_by: by.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn story() -> Vec<Value> {
        vec![
            json!({"event": "approval.requested", "approvalId": "apr_1", "sub": "alice"}),
            json!({"event": "approval.decided", "approvalId": "apr_1", "sub": "olga",
                   "decision": "approved", "state": "approved", "approvedBy": ["olga"]}),
            json!({"event": "approval.grant_used", "approvalId": "apr_1", "uses": 1}),
            json!({"event": "revocation.added", "revocationId": "rev_1", "claim": "sub", "value": "carol"}),
            json!({"event": "serviceAccount.ownerSet", "serviceAccount": "svc", "owner": "dana"}),
        ]
    }

    fn tables() -> Facts {
        let mut facts = Facts::default();
        facts
            .approvals
            .insert("apr_1".into(), approval("approved", 1, &["olga"]));
        facts.revocations.insert(
            "rev_1".into(),
            RevocationFacts {
                claim: "sub".into(),
                value: "carol".into(),
                active: true,
            },
        );
        facts.owners.insert("svc".into(), "dana".into());
        facts
    }

    #[test]
    fn tables_that_follow_the_chain_agree() {
        let replay = chain(&story());
        assert_eq!(compare(&replay, &tables(), &tables()), []);
    }

    #[test]
    fn every_silent_edit_is_found() {
        let replay = chain(&story());
        let mut approved = tables();
        approved
            .approvals
            .insert("apr_2".into(), approval("approved", 0, &["mallory"]));
        let mut reused = tables();
        reused.approvals.get_mut("apr_1").unwrap().uses = 0;
        let mut lifted = tables();
        lifted.revocations.get_mut("rev_1").unwrap().active = false;
        let mut owner = tables();
        owner.owners.insert("svc".into(), "mallory".into());
        for (edit, wanted) in [
            (approved, "apr_2 is in the approvals table"),
            (reused, "apr_1 is approved (uses 0"),
            (lifted, "rev_1 is sub=carol lifted"),
            (owner, "svc is owned by Some(\"mallory\")"),
        ] {
            let findings = compare(&replay, &edit, &edit);
            assert_eq!(findings.len(), 1, "{wanted}: {findings:?}");
            assert!(findings[0].problem.contains(wanted), "{findings:?}");
        }
    }

    #[test]
    fn only_state_events_are_parsed() {
        assert!(may_change_state(
            br#"{"approvalId":"a","event":"approval.decided"}"#
        ));
        assert!(may_change_state(br#"{"event":"serviceAccount.ownerSet"}"#));
        assert!(!may_change_state(
            br#"{"event":"mcp.request","tool":"approval."}"#
        ));
    }

    #[test]
    fn a_change_in_flight_matches_one_of_the_two_reads() {
        let mut records = story();
        records.push(json!({"event": "revocation.lifted", "revocationId": "rev_1"}));
        let replay = chain(&records);
        let mut after = tables();
        after.revocations.get_mut("rev_1").unwrap().active = false;
        assert_eq!(compare(&replay, &tables(), &after), []);
    }
}
