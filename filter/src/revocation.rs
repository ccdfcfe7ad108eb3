//! Revoked identities: the list every worker refreshes from the control plane, and the check
//! made on each request. A revocation names a claim and a value; a revoked `sub` also stops
//! tokens that act on its behalf (`act.sub`, or a CI token's `actor`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_proto::pb::RevocationList;

use crate::identity::Identity;

/// One active revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub claim: String,
    pub value: String,
    pub reason: String,
}

/// The active revocations and service account owners, as shared between the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSet {
    pub version: u64,
    pub entries: Vec<Entry>,
    /// Service account `sub` -> the person answerable for it (`tollgate service-accounts`).
    #[serde(default)]
    pub owners: BTreeMap<String, String>,
}

impl RevocationSet {
    pub fn from_list(list: &RevocationList) -> Self {
        RevocationSet {
            version: list.version,
            entries: list
                .revocations
                .iter()
                .map(|r| Entry {
                    id: r.revocation_id.clone(),
                    claim: r.claim.clone(),
                    value: r.value.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
            owners: list
                .owners
                .iter()
                .map(|o| (o.service_account.clone(), o.owner.clone()))
                .collect(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The revocation that stops this caller, if any.
    pub fn find(&self, identity: &Identity) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|entry| identity.is_named_by(&entry.claim, &entry.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn identity(claims: Value) -> Identity {
        let claims = claims.as_object().cloned().unwrap_or_default();
        Identity {
            sub: claims["sub"].as_str().unwrap_or_default().to_owned(),
            claims,
            accountable: None,
        }
    }

    fn set(claim: &str, value: &str) -> RevocationSet {
        RevocationSet {
            version: 1,
            entries: vec![Entry {
                id: "rev_1".into(),
                claim: claim.into(),
                value: value.into(),
                reason: "offboarded".into(),
            }],
            owners: BTreeMap::new(),
        }
    }

    #[test]
    fn a_revoked_person_is_stopped_directly_and_through_their_ci_jobs() {
        let revoked = set("sub", "carol@contractor.example");
        assert!(revoked
            .find(&identity(json!({"sub":"carol@contractor.example"})))
            .is_some());
        let ci = json!({"sub":"repo:acme/payments:ref:refs/heads/main","actor":"carol@contractor.example"});
        assert!(revoked.find(&identity(ci)).is_some());
        let exchanged = json!({"sub":"svc-deploy","act":{"sub":"carol@contractor.example"}});
        assert!(revoked.find(&identity(exchanged)).is_some());
        // Exchanged twice: the contractor is the prior actor, one `act` deeper.
        let nested = json!({"sub":"svc-deploy","act":{"sub":"svc-ci","act":{"sub":"carol@contractor.example"}}});
        assert!(revoked.find(&identity(nested)).is_some());
        assert!(revoked
            .find(&identity(json!({"sub":"alice@example.com"})))
            .is_none());
    }

    #[test]
    fn a_revoked_owner_stops_the_service_accounts_they_answer_for() {
        let revoked = set("sub", "dana@example.com");
        let mut svc = identity(json!({"sub":"svc-reports"}));
        assert!(revoked.find(&svc).is_none());
        svc.accountable = Some(crate::identity::Accountable {
            sub: "dana@example.com".into(),
            via: "owner".into(),
        });
        assert!(revoked.find(&svc).is_some());
    }

    #[test]
    fn other_claims_match_by_value() {
        assert!(set("jti", "t-1")
            .find(&identity(json!({"sub":"a","jti":"t-1"})))
            .is_some());
        assert!(set("client_id", "ci-bot")
            .find(&identity(json!({"sub":"a","azp":"ci-bot"})))
            .is_some());
        assert!(set("groups", "contractors")
            .find(&identity(json!({"sub":"a","groups":["x","contractors"]})))
            .is_some());
        assert!(set("repository", "acme/payments")
            .find(&identity(json!({"sub":"a","repository":"acme/other"})))
            .is_none());
    }

    #[test]
    fn the_shared_form_round_trips() {
        let revoked = set("sub", "carol");
        assert_eq!(RevocationSet::from_json(&revoked.to_json()), Some(revoked));
    }
}
