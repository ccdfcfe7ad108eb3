//! The revocation list beside the audit log (a sled tree, or rows of `tollgate_state` on
//! PostgreSQL, which every replica reads), and its audit records.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::approvals::auth::VerifiedOperator;
use crate::clock::{self, Micros};
use crate::pb;
use crate::store::{ChangeLock, Store, StoreError, Table};

const TREE: &str = "revocations";
const VERSION_KEY: &[u8] = b"version";
const ID_PREFIX: &str = "rev_";
/// Service account owners: `sa:<service account sub>` = JSON [`Owner`].
const OWNER_PREFIX: &str = "sa:";
const MAX_CLAIM_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("you ({sub}) are not in the revocation group {group:?}")]
    NotMember { sub: String, group: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no revocation {0}")]
    NotFound(String),
    #[error("service account {0:?} has no owner")]
    NoOwner(String),
    #[error("revocation {id} names you ({sub}); another security admin must lift it")]
    SelfLift { id: String, sub: String },
    #[error("revocation {id} was already lifted by {by} at {at}")]
    AlreadyLifted { id: String, by: String, at: String },
    #[error(transparent)]
    Audit(#[from] StoreError),
    #[error("stored revocation {0} is malformed")]
    Corrupt(String),
}

impl RevocationError {
    /// The `refusal` of a `revocation.refused` record.
    fn kind(&self) -> &'static str {
        match self {
            Self::NotMember { .. } => "not_in_revocation_group",
            Self::Invalid(_) => "invalid",
            Self::NotFound(_) | Self::NoOwner(_) => "not_found",
            Self::AlreadyLifted { .. } => "already_lifted",
            Self::SelfLift { .. } => "self_lift",
            Self::Audit(_) | Self::Corrupt(_) => "internal",
        }
    }
}

impl From<RevocationError> for tonic::Status {
    fn from(error: RevocationError) -> Self {
        use tonic::Status;
        match error {
            RevocationError::NotMember { .. } | RevocationError::SelfLift { .. } => {
                Status::permission_denied(error.to_string())
            }
            RevocationError::Invalid(_) => Status::invalid_argument(error.to_string()),
            RevocationError::NotFound(_) | RevocationError::NoOwner(_) => {
                Status::not_found(error.to_string())
            }
            RevocationError::AlreadyLifted { .. } => Status::failed_precondition(error.to_string()),
            RevocationError::Audit(e) => e.into(),
            RevocationError::Corrupt(_) => {
                eprintln!("tollgate: {error}");
                Status::unavailable(error.to_string())
            }
        }
    }
}

/// One revocation, active or lifted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    pub claim: String,
    pub value: String,
    pub reason: String,
    pub revoked_by: String,
    pub revoked_at: Micros,
    pub lifted_by: Option<String>,
    pub lifted_at: Option<Micros>,
    pub lift_reason: Option<String>,
}

impl Entry {
    pub fn active(&self) -> bool {
        self.lifted_at.is_none()
    }

    pub fn to_pb(&self) -> pb::Revocation {
        pb::Revocation {
            revocation_id: self.id.clone(),
            claim: self.claim.clone(),
            value: self.value.clone(),
            reason: self.reason.clone(),
            revoked_by: self.revoked_by.clone(),
            revoked_at: clock::format(self.revoked_at),
        }
    }
}

/// The person answerable for a shared service account's calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub service_account: String,
    pub owner: String,
    pub reason: String,
    pub set_by: String,
    pub set_at: Micros,
}

impl Owner {
    pub fn to_pb(&self) -> pb::ServiceAccountOwner {
        pb::ServiceAccountOwner {
            service_account: self.service_account.clone(),
            owner: self.owner.clone(),
            reason: self.reason.clone(),
            set_by: self.set_by.clone(),
            set_at: clock::format(self.set_at),
        }
    }
}

/// What an operator tried, for the records of refusals.
#[derive(Debug, Clone, Copy)]
enum Action {
    Revoke,
    Lift,
    SetOwner,
    RemoveOwner,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Lift => "lift",
            Self::SetOwner => "set-owner",
            Self::RemoveOwner => "remove-owner",
        }
    }
}

/// The revocation list.
pub struct Registry {
    audit: Arc<Store>,
    tree: Table,
    group: String,
}

fn new_id() -> String {
    let bytes: [u8; 12] = rand::random();
    format!("{ID_PREFIX}{}", hex::encode(bytes))
}

fn operator_json(operator: &VerifiedOperator) -> Value {
    json!({
        "sub": operator.sub,
        "email": operator.email,
        "groups": operator.groups,
        "jti": operator.jti,
        "verified": true,
    })
}

/// The claim names a filter can match: a JWT claim name, no spaces or control characters.
fn check_claim(claim: &str) -> Result<(), RevocationError> {
    if claim.is_empty() {
        return Err(RevocationError::Invalid(
            "a claim is required (sub, jti, client_id or another claim name)".into(),
        ));
    }
    if claim.len() > MAX_CLAIM_LEN
        || claim
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=')
    {
        return Err(RevocationError::Invalid(format!(
            "{claim:?} is not a claim name"
        )));
    }
    Ok(())
}

/// A `sub` as tokens carry it: not empty, no control characters, bounded.
fn check_subject(what: &str, sub: &str) -> Result<(), RevocationError> {
    if sub.trim().is_empty() || sub.len() > MAX_VALUE_LEN || sub.chars().any(char::is_control) {
        return Err(RevocationError::Invalid(format!(
            "the {what} must be a non-empty sub (at most {MAX_VALUE_LEN} bytes)"
        )));
    }
    Ok(())
}

impl Registry {
    pub fn open(audit: Arc<Store>, group: String) -> Result<Arc<Self>, RevocationError> {
        let tree = audit.table(TREE)?;
        Ok(Arc::new(Self { audit, tree, group }))
    }

    /// Serialises changes (across replicas on a shared store).
    async fn changing(&self) -> Result<ChangeLock, RevocationError> {
        Ok(self.audit.lock(TREE).await?)
    }

    pub async fn version(&self) -> Result<u64, RevocationError> {
        Ok(match self.tree.get(VERSION_KEY).await? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| RevocationError::Corrupt("version".into()))?,
            ),
            None => 0,
        })
    }

    async fn bump(&self) -> Result<u64, RevocationError> {
        let version = self.version().await?.saturating_add(1);
        self.tree
            .insert(VERSION_KEY, &version.to_be_bytes())
            .await?;
        Ok(version)
    }

    async fn load(&self, id: &str) -> Result<Option<Entry>, RevocationError> {
        if !id.starts_with(ID_PREFIX) {
            return Ok(None);
        }
        self.tree
            .get(id.as_bytes())
            .await?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|_| RevocationError::Corrupt(id.to_string()))
            })
            .transpose()
    }

    async fn save(&self, entry: &Entry) -> Result<(), RevocationError> {
        let bytes =
            serde_json::to_vec(entry).map_err(|e| RevocationError::Invalid(e.to_string()))?;
        self.tree.insert(entry.id.as_bytes(), &bytes).await?;
        Ok(())
    }

    /// Every revocation ever made (active and lifted), oldest first.
    pub async fn all(&self) -> Result<Vec<Entry>, RevocationError> {
        let mut entries = Vec::new();
        for (key, bytes) in self.tree.scan_prefix(ID_PREFIX.as_bytes()).await? {
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|_| {
                RevocationError::Corrupt(String::from_utf8_lossy(&key).into_owned())
            })?;
            entries.push(entry);
        }
        entries.sort_by(|a, b| (a.revoked_at, &a.id).cmp(&(b.revoked_at, &b.id)));
        Ok(entries)
    }

    /// The active revocation that names `identity`, if any (operators are checked on every
    /// call, like the gateway's callers).
    pub async fn revoking(
        &self,
        identity: &tollgate_engine::identity::Identity,
    ) -> Result<Option<Entry>, RevocationError> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .find(|e| e.active() && identity.is_named_by(&e.claim, &e.value)))
    }

    /// Every service account owner, by service account.
    pub async fn owners(&self) -> Result<Vec<Owner>, RevocationError> {
        let mut owners = Vec::new();
        for (key, bytes) in self.tree.scan_prefix(OWNER_PREFIX.as_bytes()).await? {
            // An empty value is a removed owner (the store's state tables are never deleted from).
            if bytes.is_empty() {
                continue;
            }
            let owner: Owner = serde_json::from_slice(&bytes).map_err(|_| {
                RevocationError::Corrupt(String::from_utf8_lossy(&key).into_owned())
            })?;
            owners.push(owner);
        }
        Ok(owners)
    }

    /// The active revocations, the service account owners and the list's version, read
    /// consistently with changes.
    pub async fn list(&self) -> Result<pb::RevocationList, RevocationError> {
        // Read under the change lock only on sled: PostgreSQL reads are consistent snapshots
        // per statement, and the filter's polls must not queue behind every replica's changes.
        let _guard = if self.audit.shared() {
            None
        } else {
            Some(self.changing().await?)
        };
        let version = self.version().await?;
        let revocations = self
            .all()
            .await?
            .iter()
            .filter(|e| e.active())
            .map(Entry::to_pb)
            .collect();
        let owners = self.owners().await?.iter().map(Owner::to_pb).collect();
        Ok(pb::RevocationList {
            version,
            revocations,
            owners,
        })
    }

    /// Names `owner` as the person answerable for `service_account` (replacing any earlier
    /// owner); refusals are recorded.
    pub async fn set_owner(
        &self,
        operator: &VerifiedOperator,
        service_account: &str,
        owner: &str,
        reason: &str,
    ) -> Result<Owner, RevocationError> {
        let outcome = self
            .try_set_owner(operator, service_account, owner, reason)
            .await;
        let what = json!({"serviceAccount": service_account, "owner": owner, "reason": reason});
        self.recording_refusal(operator, Action::SetOwner, what, outcome)
            .await
    }

    async fn try_set_owner(
        &self,
        operator: &VerifiedOperator,
        service_account: &str,
        owner: &str,
        reason: &str,
    ) -> Result<Owner, RevocationError> {
        self.check_member(operator)?;
        check_subject("service account", service_account)?;
        check_subject("owner", owner)?;
        if owner == service_account {
            return Err(RevocationError::Invalid(
                "a service account cannot answer for itself: name a person".into(),
            ));
        }
        if reason.trim().is_empty() {
            return Err(RevocationError::Invalid("a reason is required".into()));
        }
        let _guard = self.changing().await?;
        let key = format!("{OWNER_PREFIX}{service_account}");
        let previous = self.owner(&key).await?;
        let entry = Owner {
            service_account: service_account.to_string(),
            owner: owner.to_string(),
            reason: reason.to_string(),
            set_by: operator.sub.clone(),
            set_at: clock::now_micros(),
        };
        let bytes =
            serde_json::to_vec(&entry).map_err(|e| RevocationError::Invalid(e.to_string()))?;
        self.tree.insert(key.as_bytes(), &bytes).await?;
        let version = self.bump().await?;
        self.record(
            "serviceAccount.ownerSet",
            Some(&operator.sub),
            json!({
                "serviceAccount": service_account,
                "owner": owner,
                "previousOwner": previous.map(|p| p.owner),
                "reason": reason,
                "version": version,
                "operator": operator_json(operator),
            }),
        )
        .await?;
        Ok(entry)
    }

    /// Removes a service account's owner; refusals are recorded.
    pub async fn remove_owner(
        &self,
        operator: &VerifiedOperator,
        service_account: &str,
        reason: &str,
    ) -> Result<Owner, RevocationError> {
        let outcome = self
            .try_remove_owner(operator, service_account, reason)
            .await;
        let what = json!({"serviceAccount": service_account, "reason": reason});
        self.recording_refusal(operator, Action::RemoveOwner, what, outcome)
            .await
    }

    async fn try_remove_owner(
        &self,
        operator: &VerifiedOperator,
        service_account: &str,
        reason: &str,
    ) -> Result<Owner, RevocationError> {
        self.check_member(operator)?;
        if reason.trim().is_empty() {
            return Err(RevocationError::Invalid("a reason is required".into()));
        }
        let _guard = self.changing().await?;
        let key = format!("{OWNER_PREFIX}{service_account}");
        let Some(removed) = self.owner(&key).await? else {
            return Err(RevocationError::NoOwner(service_account.to_string()));
        };
        // A tombstone rather than a delete: the PostgreSQL role needs no DELETE right.
        self.tree.insert(key.as_bytes(), &[]).await?;
        let version = self.bump().await?;
        self.record(
            "serviceAccount.ownerRemoved",
            Some(&operator.sub),
            json!({
                "serviceAccount": service_account,
                "owner": removed.owner,
                "reason": reason,
                "version": version,
                "operator": operator_json(operator),
            }),
        )
        .await?;
        Ok(removed)
    }

    /// The person who answers for `service_account`, if it has an owner.
    pub async fn owner_of(&self, service_account: &str) -> Result<Option<String>, RevocationError> {
        Ok(self
            .owner(&format!("{OWNER_PREFIX}{service_account}"))
            .await?
            .map(|o| o.owner))
    }

    /// The owner stored under `key`, if there is one (not removed).
    async fn owner(&self, key: &str) -> Result<Option<Owner>, RevocationError> {
        match self.tree.get(key.as_bytes()).await? {
            Some(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| RevocationError::Corrupt(key.to_string())),
            _ => Ok(None),
        }
    }

    fn check_member(&self, operator: &VerifiedOperator) -> Result<(), RevocationError> {
        if operator.groups.iter().any(|g| g == &self.group) {
            return Ok(());
        }
        Err(RevocationError::NotMember {
            sub: operator.sub.clone(),
            group: self.group.clone(),
        })
    }

    async fn record(&self, event: &str, sub: Option<&str>, extra: Value) -> Result<(), StoreError> {
        let mut record = Map::new();
        record.insert("event".into(), event.into());
        record.insert("time".into(), clock::format(clock::now_micros()).into());
        record.insert("sub".into(), sub.map_or(Value::Null, Value::from));
        if let Value::Object(extra) = extra {
            record.extend(extra);
        }
        self.audit.append_event(&record).await?;
        Ok(())
    }

    /// Records a refusal (`operator` is `None` when the token did not verify).
    /// Passes `outcome` on; a refusal (any error but an internal failure) is recorded first.
    async fn recording_refusal<T>(
        &self,
        operator: &VerifiedOperator,
        action: Action,
        what: Value,
        outcome: Result<T, RevocationError>,
    ) -> Result<T, RevocationError> {
        if let Err(error) = &outcome {
            if error.kind() != "internal" {
                self.refused(operator, action, what, error).await?;
            }
        }
        outcome
    }

    async fn refused(
        &self,
        operator: &VerifiedOperator,
        action: Action,
        what: Value,
        error: &RevocationError,
    ) -> Result<(), RevocationError> {
        let mut extra = Map::new();
        extra.insert("action".into(), action.word().into());
        extra.insert("refusal".into(), error.kind().into());
        extra.insert("message".into(), error.to_string().into());
        extra.insert("operator".into(), operator_json(operator));
        if let Value::Object(what) = what {
            extra.extend(what);
        }
        self.record(
            "revocation.refused",
            Some(&operator.sub),
            Value::Object(extra),
        )
        .await?;
        Ok(())
    }

    /// Adds a revocation of `claim` = `value`; an active one for the same pair is answered
    /// again (and the attempt recorded) without changing the version.
    pub async fn revoke(
        &self,
        operator: &VerifiedOperator,
        claim: &str,
        value: &str,
        reason: &str,
    ) -> Result<Entry, RevocationError> {
        let outcome = self.try_revoke(operator, claim, value, reason).await;
        let what = json!({"claim": claim, "value": value, "reason": reason});
        self.recording_refusal(operator, Action::Revoke, what, outcome)
            .await
    }

    async fn try_revoke(
        &self,
        operator: &VerifiedOperator,
        claim: &str,
        value: &str,
        reason: &str,
    ) -> Result<Entry, RevocationError> {
        self.check_member(operator)?;
        check_claim(claim)?;
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return Err(RevocationError::Invalid(format!(
                "a value of {claim} is required (at most {MAX_VALUE_LEN} bytes)"
            )));
        }
        if reason.trim().is_empty() {
            return Err(RevocationError::Invalid("a reason is required".into()));
        }
        let _guard = self.changing().await?;
        if let Some(existing) = self
            .all()
            .await?
            .into_iter()
            .find(|e| e.active() && e.claim == claim && e.value == value)
        {
            self.record(
                "revocation.added",
                Some(&operator.sub),
                json!({
                    "revocationId": existing.id,
                    "claim": claim,
                    "value": value,
                    "reason": reason,
                    "alreadyRevoked": true,
                    "revokedBy": existing.revoked_by,
                    "version": self.version().await?,
                    "operator": operator_json(operator),
                }),
            )
            .await?;
            return Ok(existing);
        }
        let entry = Entry {
            id: new_id(),
            claim: claim.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            revoked_by: operator.sub.clone(),
            revoked_at: clock::now_micros(),
            lifted_by: None,
            lifted_at: None,
            lift_reason: None,
        };
        self.save(&entry).await?;
        let version = self.bump().await?;
        self.record(
            "revocation.added",
            Some(&operator.sub),
            json!({
                "revocationId": entry.id,
                "claim": claim,
                "value": value,
                "reason": reason,
                "version": version,
                "operator": operator_json(operator),
            }),
        )
        .await?;
        Ok(entry)
    }

    /// Lifts an active revocation.
    pub async fn lift(
        &self,
        operator: &VerifiedOperator,
        id: &str,
        reason: &str,
    ) -> Result<Entry, RevocationError> {
        let outcome = self.try_lift(operator, id, reason).await;
        let what = json!({"revocationId": id, "reason": reason});
        self.recording_refusal(operator, Action::Lift, what, outcome)
            .await
    }

    async fn try_lift(
        &self,
        operator: &VerifiedOperator,
        id: &str,
        reason: &str,
    ) -> Result<Entry, RevocationError> {
        self.check_member(operator)?;
        if reason.trim().is_empty() {
            return Err(RevocationError::Invalid("a reason is required".into()));
        }
        let _guard = self.changing().await?;
        let mut entry = self
            .load(id)
            .await?
            .ok_or_else(|| RevocationError::NotFound(id.to_string()))?;
        if let (Some(by), Some(at)) = (&entry.lifted_by, entry.lifted_at) {
            return Err(RevocationError::AlreadyLifted {
                id: id.to_string(),
                by: by.clone(),
                at: clock::format(at),
            });
        }
        if operator.identity().is_named_by(&entry.claim, &entry.value) {
            return Err(RevocationError::SelfLift {
                id: id.to_string(),
                sub: operator.sub.clone(),
            });
        }
        entry.lifted_by = Some(operator.sub.clone());
        entry.lifted_at = Some(clock::now_micros());
        entry.lift_reason = Some(reason.to_string());
        self.save(&entry).await?;
        let version = self.bump().await?;
        self.record(
            "revocation.lifted",
            Some(&operator.sub),
            json!({
                "revocationId": entry.id,
                "claim": entry.claim,
                "value": entry.value,
                "reason": reason,
                "revokedBy": entry.revoked_by,
                "revokedAt": clock::format(entry.revoked_at),
                "revokeReason": entry.reason,
                "version": version,
                "operator": operator_json(operator),
            }),
        )
        .await?;
        Ok(entry)
    }

    /// Records an operator's read of the list.
    pub async fn listed(
        &self,
        operator: &VerifiedOperator,
        list: &pb::RevocationList,
    ) -> Result<(), RevocationError> {
        self.record(
            "revocation.listed",
            Some(&operator.sub),
            json!({
                "version": list.version,
                "active": list.revocations.len(),
                "owners": list.owners.len(),
                "operator": operator_json(operator),
            }),
        )
        .await?;
        Ok(())
    }
}
