//! Approval requests, decisions and grants, kept beside the audit log (sled trees, or rows of
//! `tollgate_state` on PostgreSQL).
//!
//! Table `approvals`: approval id = JSON [`Entry`]. Table `grants`: the call key (SHA-256 over
//! requester, upstream, method, target and arguments hash) = the id of the latest approval
//! asked for that exact call; a grant is that approval once approved, usable while
//! [`Entry::grant_usable`]. Every change is written, then its audit record appended; the
//! append's flush makes both durable before anyone hears of the change. Changes are serialised
//! by one lock (across every replica on PostgreSQL): approvals are human-paced, and it makes
//! "use a grant once" simple to prove. A decision made on another replica reaches a waiting
//! `Await` by polling the store (see [`SHARED_POLL`]).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tollgate_filter::identity::act_subjects;

use super::auth::VerifiedOperator;
use super::webhook::Webhook;
use crate::clock::{self, Micros};
use crate::pb;
use crate::store::{Store, StoreError, Table};

const APPROVALS_TREE: &str = "approvals";
const GRANTS_TREE: &str = "grants";
/// How often a waiting `Await` looks at a shared store for a decision made by another replica.
pub const SHARED_POLL: Duration = Duration::from_millis(250);
/// Longest `Await` the control plane holds.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Changes buffered for slow watchers (a watcher that falls further behind is told it lagged).
const CHANGES_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no approval {0}")]
    NotFound(String),
    #[error("approval {id} expired at {at}; the caller must ask again")]
    Expired { id: String, at: String },
    #[error("approval {id} was already {state} by {by}")]
    AlreadyDecided {
        id: String,
        state: &'static str,
        by: String,
    },
    #[error("you ({sub}) cannot decide your own request {id}; another approver must")]
    SelfApproval { id: String, sub: String },
    #[error("approval {id} was requested by {requester} acting for you ({sub}); another approver must decide it")]
    OnBehalf {
        id: String,
        sub: String,
        requester: String,
    },
    #[error("you ({sub}) are not in the approver group {group:?} of approval {id}")]
    NotMember {
        id: String,
        sub: String,
        group: String,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Audit(#[from] StoreError),
    #[error("stored approval {0} is malformed")]
    Corrupt(String),
}

impl LedgerError {
    /// The `refusal` of an `approval.refused` record.
    fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Expired { .. } => "expired",
            Self::AlreadyDecided { .. } => "already_decided",
            Self::SelfApproval { .. } => "self_approval",
            Self::OnBehalf { .. } => "on_behalf_of_approver",
            Self::NotMember { .. } => "not_in_approver_group",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Invalid(_) => "invalid",
            Self::Audit(_) | Self::Corrupt(_) => "internal",
        }
    }
}

impl From<LedgerError> for tonic::Status {
    fn from(error: LedgerError) -> Self {
        use tonic::Status;
        match error {
            LedgerError::NotFound(_) => Status::not_found(error.to_string()),
            LedgerError::Expired { .. } | LedgerError::AlreadyDecided { .. } => {
                Status::failed_precondition(error.to_string())
            }
            LedgerError::SelfApproval { .. }
            | LedgerError::OnBehalf { .. }
            | LedgerError::NotMember { .. } => Status::permission_denied(error.to_string()),
            LedgerError::Unauthenticated(_) => Status::unauthenticated(error.to_string()),
            LedgerError::Invalid(_) => Status::invalid_argument(error.to_string()),
            LedgerError::Audit(e) => e.into(),
            LedgerError::Corrupt(_) => {
                eprintln!("tollgate: {error}");
                Status::unavailable(error.to_string())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }
}

/// One approval request and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    pub state: State,
    pub requester: String,
    /// The requester's verified claims, as the filter sent them (a JSON object, or null).
    pub identity: Value,
    pub upstream: String,
    pub method: String,
    pub target: String,
    pub arguments_hash: String,
    /// The arguments with card numbers masked (as sent, UTF-8).
    pub masked_arguments: String,
    pub rule: String,
    pub reason: String,
    pub approver_group: String,
    pub grant_ttl_seconds: u64,
    pub session: String,
    pub requested_at: Micros,
    pub expires_at: Micros,
    pub decided_by: Option<String>,
    pub decided_at: Option<Micros>,
    pub decision_reason: Option<String>,
    /// Times the grant was used.
    pub uses: u32,
}

impl Entry {
    /// Whether an approved entry's grant may be used at `now`: once, or within its window.
    pub fn grant_usable(&self, now: Micros) -> bool {
        if self.state != State::Approved {
            return false;
        }
        if self.grant_ttl_seconds == 0 {
            return self.uses == 0;
        }
        let decided = self.decided_at.unwrap_or(0);
        now < decided.saturating_add(self.grant_ttl_seconds.saturating_mul(1_000_000))
    }

    fn arguments_json(&self) -> Value {
        serde_json::from_str(&self.masked_arguments)
            .unwrap_or_else(|_| Value::String(self.masked_arguments.clone()))
    }

    /// Who the requester acts for (`act.sub`, nested `act`s, or `actor`), from its identity.
    fn acting_for(&self) -> Vec<String> {
        let mut subjects = Vec::new();
        if let Some(actor) = self.identity.get("actor").and_then(Value::as_str) {
            subjects.push(actor.to_string());
        }
        subjects.extend(act_subjects(self.identity.get("act")).map(str::to_owned));
        subjects
    }

    pub fn to_pb(&self) -> pb::Approval {
        pb::Approval {
            approval_id: self.id.clone(),
            state: pb_state(self.state) as i32,
            requester: self.requester.clone(),
            upstream: self.upstream.clone(),
            method: self.method.clone(),
            target: self.target.clone(),
            arguments_hash: self.arguments_hash.clone(),
            masked_arguments_json: self.masked_arguments.clone().into_bytes(),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            approver_group: self.approver_group.clone(),
            requested_at: clock::format(self.requested_at),
            expires_at: clock::format(self.expires_at),
            decided_by: self.decided_by.clone().unwrap_or_default(),
            decided_at: self.decided_at.map(clock::format).unwrap_or_default(),
            decision_reason: self.decision_reason.clone().unwrap_or_default(),
            grant_ttl_seconds: self.grant_ttl_seconds,
            uses: self.uses,
        }
    }

    fn status(&self, state: pb::ApprovalState, reason: Option<String>) -> pb::ApprovalStatus {
        pb::ApprovalStatus {
            approval_id: self.id.clone(),
            state: state as i32,
            reason: reason.unwrap_or_default(),
            decided_by: self.decided_by.clone().unwrap_or_default(),
            expires_at: clock::format(self.expires_at),
        }
    }
}

fn pb_state(state: State) -> pb::ApprovalState {
    match state {
        State::Pending => pb::ApprovalState::Pending,
        State::Approved => pb::ApprovalState::Granted,
        State::Denied => pb::ApprovalState::Denied,
        State::Expired => pb::ApprovalState::Expired,
    }
}

/// The approvals and grants, and who is told of changes.
pub struct Ledger {
    audit: Arc<Store>,
    approvals: Table,
    grants: Table,
    ttl: Duration,
    /// The longest grant a request may ask for (`--max-grant-ttl`).
    max_grant_ttl: Duration,
    changes: broadcast::Sender<Entry>,
    webhook: Option<Arc<Webhook>>,
}

fn now() -> Micros {
    clock::now_micros()
}

/// What makes two requests the same call: a grant or an open request is found again only for
/// the same caller, call and arguments under the same rule, approver group and grant lifetime,
/// so that a request cannot reuse what was decided for different terms.
fn call_key(request: &pb::ApprovalRequest) -> Vec<u8> {
    let parts = json!([
        request.requester,
        request.upstream,
        request.method,
        request.target,
        request.arguments_hash,
        request.rule,
        request.approver_group,
        request.grant_ttl_seconds
    ]);
    Sha256::digest(parts.to_string().as_bytes()).to_vec()
}

fn new_id() -> String {
    let bytes: [u8; 12] = rand::random();
    format!("apr_{}", hex::encode(bytes))
}

impl Ledger {
    pub fn open(
        audit: Arc<Store>,
        ttl: Duration,
        max_grant_ttl: Duration,
        webhook: Option<Arc<Webhook>>,
    ) -> Result<Arc<Self>, LedgerError> {
        Ok(Arc::new(Self {
            approvals: audit.table(APPROVALS_TREE)?,
            grants: audit.table(GRANTS_TREE)?,
            audit,
            ttl,
            max_grant_ttl,
            changes: broadcast::channel(CHANGES_BUFFER).0,
            webhook,
        }))
    }

    /// Every new request and every decision or expiry, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.changes.subscribe()
    }

    /// Serialises changes (across replicas on a shared store).
    async fn changing(&self) -> Result<crate::store::ChangeLock, LedgerError> {
        Ok(self.audit.lock(APPROVALS_TREE).await?)
    }

    async fn load(&self, id: &str) -> Result<Option<Entry>, LedgerError> {
        self.approvals
            .get(id.as_bytes())
            .await?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|_| LedgerError::Corrupt(id.to_string()))
            })
            .transpose()
    }

    async fn save(&self, entry: &Entry) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| LedgerError::Invalid(e.to_string()))?;
        self.approvals.insert(entry.id.as_bytes(), &bytes).await?;
        Ok(())
    }

    async fn record(
        &self,
        event: &str,
        entry: &Entry,
        sub: &str,
        extra: Value,
    ) -> Result<(), LedgerError> {
        let mut record = Map::new();
        record.insert("event".into(), event.into());
        record.insert("time".into(), clock::format(now()).into());
        record.insert("approvalId".into(), entry.id.clone().into());
        record.insert("sub".into(), sub.into());
        if let Value::Object(extra) = extra {
            record.extend(extra);
        }
        self.audit.append_event(&record).await?;
        Ok(())
    }

    fn publish(&self, entry: &Entry) {
        // No receiver is fine: nobody is waiting or watching.
        let _ = self.changes.send(entry.clone());
    }

    async fn use_grant(
        &self,
        entry: &mut Entry,
        via: &str,
    ) -> Result<pb::ApprovalStatus, LedgerError> {
        entry.uses += 1;
        self.save(entry).await?;
        let extra = json!({
            "via": via,
            "uses": entry.uses,
            "upstream": entry.upstream,
            "method": entry.method,
            "target": entry.target,
            "argumentsHash": entry.arguments_hash,
            "session": entry.session,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            "decidedBy": entry.decided_by,
        });
        let requester = entry.requester.clone();
        self.record("approval.grant_used", entry, &requester, extra)
            .await?;
        Ok(entry.status(pb::ApprovalState::Granted, entry.decision_reason.clone()))
    }

    async fn expire(&self, entry: &mut Entry) -> Result<(), LedgerError> {
        entry.state = State::Expired;
        self.save(entry).await?;
        let extra = json!({
            "expiresAt": clock::format(entry.expires_at),
            "target": entry.target,
            "reason": "nobody decided before the request expired",
        });
        let requester = entry.requester.clone();
        self.record("approval.expired", entry, &requester, extra)
            .await?;
        self.publish(entry);
        Ok(())
    }

    /// The filter's `Request`: use a grant for exactly this call, join its open request, or
    /// open one.
    pub async fn request(
        &self,
        request: pb::ApprovalRequest,
    ) -> Result<pb::ApprovalStatus, LedgerError> {
        for (name, value) in [
            ("requester", &request.requester),
            ("arguments_hash", &request.arguments_hash),
            ("approver_group", &request.approver_group),
            ("target", &request.target),
        ] {
            if value.is_empty() {
                return Err(LedgerError::Invalid(format!("{name} is required")));
            }
        }
        let cap = self.max_grant_ttl.as_secs();
        if request.grant_ttl_seconds > cap {
            let error = LedgerError::Invalid(format!(
                "a grant lifetime of {} s exceeds this control plane's cap of {cap} s (--max-grant-ttl)",
                request.grant_ttl_seconds
            ));
            self.refused_request(&request, &error).await?;
            return Err(error);
        }
        let identity = if request.identity_json.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&request.identity_json)
                .map_err(|_| LedgerError::Invalid("identity_json is not JSON".into()))?
        };
        let key = call_key(&request);
        let _changing = self.changing().await?;
        let now = now();
        if let Some(id) = self.grants.get(&key).await? {
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(mut entry) = self.load(&id).await? {
                match entry.state {
                    State::Approved if entry.grant_usable(now) => {
                        return self.use_grant(&mut entry, "request").await;
                    }
                    State::Pending if now < entry.expires_at => {
                        return Ok(entry.status(pb::ApprovalState::Pending, None));
                    }
                    State::Pending => self.expire(&mut entry).await?,
                    _ => {}
                }
            }
        }
        let ttl = u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX);
        let entry = Entry {
            id: new_id(),
            state: State::Pending,
            requester: request.requester,
            identity,
            upstream: request.upstream,
            method: request.method,
            target: request.target,
            arguments_hash: request.arguments_hash,
            masked_arguments: String::from_utf8_lossy(&request.masked_arguments_json).into_owned(),
            rule: request.rule,
            reason: request.reason,
            approver_group: request.approver_group,
            grant_ttl_seconds: request.grant_ttl_seconds,
            session: request.session,
            requested_at: now,
            expires_at: now.saturating_add(ttl),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            uses: 0,
        };
        self.save(&entry).await?;
        self.grants.insert(&key, entry.id.as_bytes()).await?;
        let extra = json!({
            "requester": entry.requester,
            "identity": entry.identity,
            "upstream": entry.upstream,
            "method": entry.method,
            "target": entry.target,
            "argumentsHash": entry.arguments_hash,
            "arguments": entry.arguments_json(),
            "rule": entry.rule,
            "reason": entry.reason,
            "approverGroup": entry.approver_group,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            "session": entry.session,
            "expiresAt": clock::format(entry.expires_at),
        });
        self.record("approval.requested", &entry, &entry.requester, extra)
            .await?;
        self.publish(&entry);
        if let Some(webhook) = &self.webhook {
            webhook.notify(self.audit.clone(), &entry);
        }
        Ok(entry.status(pb::ApprovalState::Pending, None))
    }

    /// Where an approval stands for the filter: a final status (a granted one uses the grant),
    /// or `None` and the entry while it is pending.
    async fn settle(&self, id: &str) -> Result<Result<pb::ApprovalStatus, Entry>, LedgerError> {
        let _changing = self.changing().await?;
        let mut entry = self
            .load(id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(id.to_string()))?;
        let now = now();
        Ok(Ok(match entry.state {
            State::Pending if now < entry.expires_at => return Ok(Err(entry)),
            State::Pending => {
                self.expire(&mut entry).await?;
                entry.status(
                    pb::ApprovalState::Expired,
                    Some("the request expired before anyone decided".into()),
                )
            }
            State::Approved if entry.grant_usable(now) => {
                self.use_grant(&mut entry, "await").await?
            }
            State::Approved if entry.grant_ttl_seconds == 0 => entry.status(
                pb::ApprovalState::Expired,
                Some("the grant was already used; ask again".into()),
            ),
            State::Approved => entry.status(
                pb::ApprovalState::Expired,
                Some("the grant's time window has ended; ask again".into()),
            ),
            State::Denied => entry.status(pb::ApprovalState::Denied, entry.decision_reason.clone()),
            State::Expired => entry.status(
                pb::ApprovalState::Expired,
                Some("the request expired before anyone decided".into()),
            ),
        }))
    }

    /// The filter's `Await`: the decision as soon as there is one, else PENDING after `wait`.
    pub async fn await_decision(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<pb::ApprovalStatus, LedgerError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Subscribed before looking, so a decision in between is not missed.
        let mut changes = self.subscribe();
        loop {
            let entry = match self.settle(id).await? {
                Ok(status) => return Ok(status),
                Err(entry) => entry,
            };
            let expires_in = Duration::from_micros(entry.expires_at.saturating_sub(now()));
            let wake = deadline.min(tokio::time::Instant::now() + expires_in);
            // Another replica's decision is not announced here: look at the store now and then.
            let shared = self.audit.shared();
            let mut next_poll = tokio::time::Instant::now() + SHARED_POLL;
            loop {
                let until = if shared { wake.min(next_poll) } else { wake };
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Err(_) if until < wake => {
                        next_poll = tokio::time::Instant::now() + SHARED_POLL;
                        match self.load(id).await? {
                            Some(current) if current.state == State::Pending => continue,
                            _ => break,
                        }
                    }
                    Err(_) if wake >= deadline => {
                        return Ok(entry.status(pb::ApprovalState::Pending, None))
                    }
                    Err(_) => break, // expired meanwhile
                    Ok(Ok(changed)) if changed.id != id => continue,
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        return Ok(entry.status(pb::ApprovalState::Pending, None))
                    }
                }
            }
        }
    }

    /// An operator's decision. Refusals are recorded and returned as errors.
    pub async fn decide(
        &self,
        operator: &VerifiedOperator,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Entry, LedgerError> {
        let _changing = self.changing().await?;
        let outcome = self.try_decide(operator, id, approve, reason).await;
        if let Err(error) = &outcome {
            if !matches!(error, LedgerError::Audit(_) | LedgerError::Corrupt(_)) {
                self.refused(Some(&operator.sub), id, approve, error)
                    .await?;
            }
        }
        outcome
    }

    /// Records a refused request (what it asked for, never its arguments).
    async fn refused_request(
        &self,
        request: &pb::ApprovalRequest,
        error: &LedgerError,
    ) -> Result<(), LedgerError> {
        let mut record = Map::new();
        record.insert("event".into(), "approval.refused".into());
        record.insert("time".into(), clock::format(now()).into());
        record.insert("sub".into(), request.requester.clone().into());
        record.insert("decision".into(), "request".into());
        record.insert("tool".into(), request.target.clone().into());
        record.insert("rule".into(), request.rule.clone().into());
        record.insert(
            "approverGroup".into(),
            request.approver_group.clone().into(),
        );
        record.insert("grantTtlSeconds".into(), request.grant_ttl_seconds.into());
        record.insert("refusal".into(), error.kind().into());
        record.insert("message".into(), error.to_string().into());
        let record = crate::service::masked_event(&record)
            .ok_or_else(|| LedgerError::Invalid("the request could not be recorded".into()))?;
        self.audit.append_event(&record).await?;
        Ok(())
    }

    /// Records a refused decision (also one whose token did not verify).
    pub async fn refused(
        &self,
        sub: Option<&str>,
        id: &str,
        approve: bool,
        error: &LedgerError,
    ) -> Result<(), LedgerError> {
        let mut record = Map::new();
        record.insert("event".into(), "approval.refused".into());
        record.insert("time".into(), clock::format(now()).into());
        record.insert("approvalId".into(), id.into());
        record.insert("sub".into(), sub.map_or(Value::Null, Value::from));
        record.insert(
            "decision".into(),
            if approve { "approve" } else { "deny" }.into(),
        );
        record.insert("refusal".into(), error.kind().into());
        record.insert("message".into(), error.to_string().into());
        self.audit.append_event(&record).await?;
        Ok(())
    }

    async fn try_decide(
        &self,
        operator: &VerifiedOperator,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Entry, LedgerError> {
        let reason = reason.trim();
        let mut entry = self
            .load(id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(id.to_string()))?;
        let now = now();
        if entry.state == State::Pending && now >= entry.expires_at {
            self.expire(&mut entry).await?;
        }
        match entry.state {
            State::Pending => {}
            State::Expired => {
                return Err(LedgerError::Expired {
                    id: entry.id,
                    at: clock::format(entry.expires_at),
                })
            }
            State::Approved | State::Denied => {
                return Err(LedgerError::AlreadyDecided {
                    id: entry.id,
                    state: entry.state.word(),
                    by: entry.decided_by.unwrap_or_default(),
                })
            }
        }
        if operator.sub == entry.requester {
            return Err(LedgerError::SelfApproval {
                id: entry.id,
                sub: operator.sub.clone(),
            });
        }
        if entry.acting_for().contains(&operator.sub) {
            return Err(LedgerError::OnBehalf {
                id: entry.id,
                sub: operator.sub.clone(),
                requester: entry.requester,
            });
        }
        if !operator.groups.contains(&entry.approver_group) {
            return Err(LedgerError::NotMember {
                id: entry.id,
                sub: operator.sub.clone(),
                group: entry.approver_group,
            });
        }
        if reason.is_empty() {
            return Err(LedgerError::Invalid("a reason is required".into()));
        }
        entry.state = if approve {
            State::Approved
        } else {
            State::Denied
        };
        entry.decided_by = Some(operator.sub.clone());
        entry.decided_at = Some(now);
        entry.decision_reason = Some(reason.to_string());
        self.save(&entry).await?;
        let extra = json!({
            "decision": entry.state.word(),
            "reason": reason,
            "requester": entry.requester,
            "target": entry.target,
            "argumentsHash": entry.arguments_hash,
            "approverGroup": entry.approver_group,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            "approver": {
                "sub": operator.sub,
                "email": operator.email,
                "groups": operator.groups,
                "jti": operator.jti,
                "verified": true,
            },
        });
        self.record("approval.decided", &entry, &operator.sub, extra)
            .await?;
        self.publish(&entry);
        Ok(entry)
    }

    pub async fn get(&self, id: &str) -> Result<Entry, LedgerError> {
        self.load(id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(id.to_string()))
    }

    /// Approvals newest first (pending ones past their expiry show as expired).
    pub async fn list(&self, pending_only: bool) -> Result<Vec<Entry>, LedgerError> {
        let now = now();
        let mut entries = Vec::new();
        for (key, bytes) in self.approvals.scan_prefix(b"").await? {
            let mut entry: Entry = serde_json::from_slice(&bytes)
                .map_err(|_| LedgerError::Corrupt(String::from_utf8_lossy(&key).into_owned()))?;
            if entry.state == State::Pending && now >= entry.expires_at {
                entry.state = State::Expired;
            }
            if !pending_only || entry.state == State::Pending {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| b.requested_at.cmp(&a.requested_at).then(b.id.cmp(&a.id)));
        Ok(entries)
    }

    /// Expires (and records) pending requests past their expiry, every `every`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(ledger) = weak.upgrade() else { return };
                if let Err(e) = ledger.sweep().await {
                    eprintln!("tollgate: expiring approvals: {e}");
                }
            }
        });
    }

    async fn sweep(&self) -> Result<(), LedgerError> {
        let now = now();
        let mut due = Vec::new();
        for (_, bytes) in self.approvals.scan_prefix(b"").await? {
            if let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) {
                if entry.state == State::Pending && now >= entry.expires_at {
                    due.push(entry.id);
                }
            }
        }
        for id in due {
            let _changing = self.changing().await?;
            if let Some(mut entry) = self.load(&id).await? {
                if entry.state == State::Pending && clock::now_micros() >= entry.expires_at {
                    self.expire(&mut entry).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: Value, ttl: u64) -> Entry {
        Entry {
            id: "apr_1".into(),
            state: State::Approved,
            requester: "ci-bot".into(),
            identity,
            upstream: "payments".into(),
            method: "tools/call".into(),
            target: "refund_payment".into(),
            arguments_hash: "00".into(),
            masked_arguments: "{}".into(),
            rule: "r".into(),
            reason: "why".into(),
            approver_group: "g".into(),
            grant_ttl_seconds: ttl,
            session: String::new(),
            requested_at: 0,
            expires_at: 10,
            decided_by: Some("olga".into()),
            decided_at: Some(1_000_000),
            decision_reason: Some("ok".into()),
            uses: 0,
        }
    }

    #[test]
    fn grants_are_single_use_or_last_their_window() {
        let mut once = entry(Value::Null, 0);
        assert!(once.grant_usable(u64::MAX));
        once.uses = 1;
        assert!(!once.grant_usable(0));
        let mut window = entry(Value::Null, 2);
        window.uses = 5;
        assert!(window.grant_usable(2_999_999));
        assert!(!window.grant_usable(3_000_000));
        window.state = State::Denied;
        assert!(!window.grant_usable(1_000_001));
    }

    #[test]
    fn the_requester_acts_for_act_chains_and_ci_actors() {
        let nested = entry(
            json!({"act": {"sub": "svc", "act": {"sub": "dave"}}, "actor": "erin"}),
            0,
        );
        assert_eq!(nested.acting_for(), ["erin", "svc", "dave"]);
        assert!(entry(json!({"sub": "ci-bot"}), 0).acting_for().is_empty());
    }
}
