//! Approval requests, decisions and grants, kept beside the audit log (sled trees, or rows of
//! `tollgate_state` on PostgreSQL).
//!
//! Table `approvals`: approval id = JSON [`Entry`]. Table `grants`: the call key (SHA-256 over
//! requester, upstream, method, target and arguments hash) = the id of the latest approval
//! asked for that exact call; a grant is that approval once approved, usable while
//! [`Entry::grant_usable`]. Every change is written durably, then its audit record appended
//! durably, before anyone hears of the change. Changes are serialised
//! by one lock (across every replica on PostgreSQL): approvals are human-paced, and it makes
//! "use a grant once" simple to prove. A decision made on another replica reaches a waiting
//! `Await` by polling the store (see [`SHARED_POLL`]).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tollgate_engine::identity::act_subjects;
use tollgate_engine::mask::{MaskReport, Masker};

use crate::revocations::registry::Registry;

use super::auth::VerifiedOperator;
use super::judge::{Judge, Misjudged, Terms};
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
    #[error("approval {id} was requested by service account {requester}, which you ({sub}) own; another approver must decide it")]
    Owner {
        id: String,
        sub: String,
        requester: String,
    },
    #[error("you ({sub}) already approved {id}; it needs {needed} different approvers")]
    AlreadyApproved {
        id: String,
        sub: String,
        needed: u32,
    },
    #[error("{0}")]
    Misjudged(#[from] Misjudged),
    #[error("approval requests are refused: this control plane has no policy to judge them by (serve --policy, the filter's policy file)")]
    NoPolicy,
    #[error("{requester} opened {count} approval requests in the last minute, the most allowed (--approval-requests-per-minute); retry later")]
    TooMany { requester: String, count: u32 },
    #[error("you ({sub}) are not in the approver group {group:?} of approval {id}")]
    NotMember {
        id: String,
        sub: String,
        group: String,
    },
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
            Self::Owner { .. } => "owner_of_requester",
            Self::AlreadyApproved { .. } => "already_approved",
            Self::Misjudged(Misjudged::Malformed(_)) => "invalid",
            Self::Misjudged(Misjudged::NotHeld { .. }) => "not_held_by_policy",
            Self::Misjudged(Misjudged::Disagrees { .. }) => "policy_disagrees",
            Self::NoPolicy => "no_policy",
            Self::TooMany { .. } => "rate_limited",
            Self::NotMember { .. } => "not_in_approver_group",
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
            | LedgerError::Owner { .. }
            | LedgerError::AlreadyApproved { .. }
            | LedgerError::NotMember { .. } => Status::permission_denied(error.to_string()),
            LedgerError::Misjudged(Misjudged::Malformed(_)) => {
                Status::invalid_argument(error.to_string())
            }
            LedgerError::Misjudged(_) | LedgerError::NoPolicy => {
                Status::failed_precondition(error.to_string())
            }
            LedgerError::TooMany { .. } => Status::resource_exhausted(error.to_string()),
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
    /// Different approvers the rule needs.
    #[serde(default = "one")]
    pub approvers_needed: u32,
    /// Who approved so far, in order (the last one completed the quorum).
    #[serde(default)]
    pub approved_by: Vec<String>,
}

fn one() -> u32 {
    1
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

    /// Who the requester acts for (`act.sub`, nested `act`s, `actor`, or the accountable
    /// person the gateway named for a service account), from its identity.
    fn acting_for(&self) -> Vec<String> {
        let mut subjects = Vec::new();
        if let Some(actor) = self.identity.get("actor").and_then(Value::as_str) {
            subjects.push(actor.to_string());
        }
        if let Some(accountable) = self
            .identity
            .pointer("/accountable/sub")
            .and_then(Value::as_str)
        {
            subjects.push(accountable.to_string());
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
            approvers_needed: self.approvers_needed,
            approved_by: self.approved_by.clone(),
            acting_for: self.acting_for(),
            session: self.session.clone(),
        }
    }

    fn status(&self, state: pb::ApprovalState, reason: Option<String>) -> pb::ApprovalStatus {
        pb::ApprovalStatus {
            approval_id: self.id.clone(),
            state: state as i32,
            reason: reason.unwrap_or_default(),
            decided_by: self.decided_by.clone().unwrap_or_default(),
            expires_at: clock::format(self.expires_at),
            approved_by: self.approved_by.clone(),
            grant_use: if state == pb::ApprovalState::Granted {
                self.uses
            } else {
                0
            },
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
    /// The policy that decides what each request is for; none: every request is refused.
    judge: Option<Arc<Judge>>,
    /// Service account owners (and revocations): an owner does not approve their account's call.
    owners: Arc<Registry>,
    limiter: RequestLimiter,
    /// Pending requests and when they expire: what the sweeper looks at, instead of reading the
    /// whole (ever-growing) approvals table every few seconds.
    pending: std::sync::Mutex<std::collections::BTreeMap<String, Micros>>,
}

/// New approval requests per requester per minute: a caller cannot flood approvers (or the
/// log) with requests. Joining an open request or using a grant is not a new request.
struct RequestLimiter {
    per_minute: u32,
    opened: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl RequestLimiter {
    const WINDOW: Duration = Duration::from_secs(60);

    /// Counts one more request of `requester`, or says how many it already opened.
    fn admit(&self, requester: &str) -> Result<(), u32> {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        opened.retain(|_, (since, _)| now.duration_since(*since) < Self::WINDOW);
        let (_, count) = opened.entry(requester.to_owned()).or_insert((now, 0));
        if *count >= self.per_minute {
            return Err(*count);
        }
        *count += 1;
        Ok(())
    }
}

/// What a ledger is opened with.
pub struct LedgerOptions {
    pub ttl: Duration,
    pub max_grant_ttl: Duration,
    pub webhook: Option<Arc<Webhook>>,
    pub judge: Option<Arc<Judge>>,
    pub owners: Arc<Registry>,
    pub requests_per_minute: u32,
}

fn now() -> Micros {
    clock::now_micros()
}

/// What makes two requests the same call: a grant or an open request is found again only for
/// the same caller, call and arguments under the same rule, approver group and grant lifetime,
/// so that a request cannot reuse what was decided for different terms.
fn call_key(requester: &str, upstream: &str, terms: &Terms) -> Vec<u8> {
    let parts = json!([
        requester,
        upstream,
        terms.method,
        terms.target,
        terms.arguments_hash,
        terms.rule,
        terms.approver_group,
        terms.grant_ttl_seconds,
        terms.approvers
    ]);
    Sha256::digest(parts.to_string().as_bytes()).to_vec()
}

fn new_id() -> String {
    let bytes: [u8; 12] = rand::random();
    format!("apr_{}", hex::encode(bytes))
}

impl Ledger {
    pub fn open(audit: Arc<Store>, options: LedgerOptions) -> Result<Arc<Self>, LedgerError> {
        Ok(Arc::new(Self {
            approvals: audit.table(APPROVALS_TREE)?,
            grants: audit.table(GRANTS_TREE)?,
            audit,
            ttl: options.ttl,
            max_grant_ttl: options.max_grant_ttl,
            changes: broadcast::channel(CHANGES_BUFFER).0,
            webhook: options.webhook,
            judge: options.judge,
            owners: options.owners,
            limiter: RequestLimiter {
                per_minute: options.requests_per_minute,
                opened: Default::default(),
            },
            pending: Default::default(),
        }))
    }

    /// Reads the table once for the pending requests (at start, and now and then on a shared
    /// store, where other replicas open requests too).
    async fn index_pending(&self) -> Result<(), LedgerError> {
        let mut found = std::collections::BTreeMap::new();
        for (_, bytes) in self.approvals.scan_prefix(b"").await? {
            if let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) {
                if entry.state == State::Pending {
                    found.insert(entry.id, entry.expires_at);
                }
            }
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(())
    }

    /// Keeps the pending index in step with a saved entry.
    fn track(&self, entry: &Entry) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if entry.state == State::Pending {
            pending.insert(entry.id.clone(), entry.expires_at);
        } else {
            pending.remove(&entry.id);
        }
    }

    /// Every new request and every decision or expiry, as it happens.
    /// The revocation registry the ledger checks owners in, for callers that must recheck an
    /// operator during a long call.
    pub fn registry(&self) -> Arc<Registry> {
        self.owners.clone()
    }

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
        self.track(entry);
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
        // The requester's claims and the reasons are others' text: masked like an append.
        let record = crate::service::masked_event(&record)
            .ok_or_else(|| LedgerError::Invalid("the record could not be masked".into()))?;
        self.audit.append_event(&record).await?;
        Ok(())
    }

    fn publish(&self, entry: &Entry) {
        // No receiver is fine: nobody is waiting or watching.
        let _ = self.changes.send(entry.clone());
    }

    /// Uses the grant for a call in `session` (a window grant may serve calls of later
    /// sessions: the use is filed under the session of the call it let through).
    async fn use_grant(
        &self,
        entry: &mut Entry,
        via: &str,
        session: &str,
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
            "session": session,
            "requestedInSession": entry.session,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            "decidedBy": entry.decided_by,
            "approvedBy": entry.approved_by,
            "rule": entry.rule,
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
    /// open one. What the approval is for comes from the control plane's own policy (see
    /// [`Judge`]); a request that reads the call otherwise is refused and recorded.
    pub async fn request(
        &self,
        request: pb::ApprovalRequest,
    ) -> Result<pb::ApprovalStatus, LedgerError> {
        if request.requester.is_empty() {
            return Err(LedgerError::Invalid("requester is required".into()));
        }
        let terms = match self.terms(&request) {
            Ok(terms) => terms,
            Err(error) => {
                self.refused_request(&request, &error).await?;
                return Err(error);
            }
        };
        let identity = if request.identity_json.is_empty() {
            Value::Null
        } else {
            // Kept in the approvals table and shown to approvers: never a card number in it.
            let masked = Masker::default()
                .mask_json(&request.identity_json, &mut MaskReport::default())
                .map_err(|_| LedgerError::Invalid("identity_json is not JSON".into()))?;
            serde_json::from_slice(&masked)
                .map_err(|_| LedgerError::Invalid("identity_json is not JSON".into()))?
        };
        let key = call_key(&request.requester, &request.upstream, &terms);
        let _changing = self.changing().await?;
        let now = now();
        if !request.retry_of.is_empty() {
            if let Some(denied) = self.denial_of(&request.retry_of, &key).await? {
                return Ok(denied);
            }
        }
        if let Some(id) = self.grants.get(&key).await? {
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(mut entry) = self.load(&id).await? {
                match entry.state {
                    State::Approved if entry.grant_usable(now) => {
                        return self
                            .use_grant(&mut entry, "request", &request.session)
                            .await;
                    }
                    State::Pending if now < entry.expires_at => {
                        return Ok(entry.status(pb::ApprovalState::Pending, None));
                    }
                    State::Pending => self.expire(&mut entry).await?,
                    _ => {}
                }
            }
        }
        if let Err(count) = self.limiter.admit(&request.requester) {
            let error = LedgerError::TooMany {
                requester: request.requester.clone(),
                count,
            };
            self.refused_request(&request, &error).await?;
            return Err(error);
        }
        let ttl = u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX);
        let entry = Entry {
            id: new_id(),
            state: State::Pending,
            requester: request.requester,
            identity,
            upstream: request.upstream,
            method: terms.method,
            target: terms.target,
            arguments_hash: terms.arguments_hash,
            masked_arguments: terms.masked_arguments,
            rule: terms.rule,
            reason: terms.reason,
            approver_group: terms.approver_group,
            grant_ttl_seconds: terms.grant_ttl_seconds,
            session: request.session,
            requested_at: now,
            expires_at: now.saturating_add(ttl),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            uses: 0,
            approvers_needed: terms.approvers,
            approved_by: Vec::new(),
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
            "approversNeeded": entry.approvers_needed,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            "session": entry.session,
            "expiresAt": clock::format(entry.expires_at),
            "judgedBy": self.judge.as_ref().map(|j| j.source().to_owned()),
        });
        self.record("approval.requested", &entry, &entry.requester, extra)
            .await?;
        self.publish(&entry);
        if let Some(webhook) = &self.webhook {
            webhook.notify(self.audit.clone(), &entry);
        }
        Ok(entry.status(pb::ApprovalState::Pending, None))
    }

    /// The control plane's reading of the request, within its grant lifetime cap.
    /// The denial a retry is answered with: `retry_of`'s, if it was denied and is of exactly
    /// the call `key` names. A retry naming another call's approval learns nothing from it.
    async fn denial_of(
        &self,
        retry_of: &str,
        key: &[u8],
    ) -> Result<Option<pb::ApprovalStatus>, LedgerError> {
        let Some(entry) = self.load(retry_of).await? else {
            return Ok(None);
        };
        let terms = Terms {
            method: entry.method.clone(),
            target: entry.target.clone(),
            rule: entry.rule.clone(),
            reason: entry.reason.clone(),
            approver_group: entry.approver_group.clone(),
            grant_ttl_seconds: entry.grant_ttl_seconds,
            approvers: entry.approvers_needed,
            arguments_hash: entry.arguments_hash.clone(),
            masked_arguments: String::new(),
        };
        if entry.state != State::Denied
            || call_key(&entry.requester, &entry.upstream, &terms) != key
        {
            return Ok(None);
        }
        Ok(Some(entry.status(
            pb::ApprovalState::Denied,
            entry.decision_reason.clone(),
        )))
    }

    fn terms(&self, request: &pb::ApprovalRequest) -> Result<Terms, LedgerError> {
        let judge = self.judge.as_ref().ok_or(LedgerError::NoPolicy)?;
        let terms = judge.terms(request)?;
        let cap = self.max_grant_ttl.as_secs();
        if terms.grant_ttl_seconds > cap {
            return Err(LedgerError::Invalid(format!(
                "a grant lifetime of {} s exceeds this control plane's cap of {cap} s (--max-grant-ttl)",
                terms.grant_ttl_seconds
            )));
        }
        Ok(terms)
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
                let session = entry.session.clone();
                self.use_grant(&mut entry, "await", &session).await?
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
        // The gateway's view of who answers for a service account can be stale or absent:
        // the owner table here decides.
        if self
            .owners
            .owner_of(&entry.requester)
            .await
            .map_err(|e| LedgerError::Invalid(e.to_string()))?
            .is_some_and(|owner| owner == operator.sub)
        {
            return Err(LedgerError::Owner {
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
        if approve && entry.approved_by.contains(&operator.sub) {
            return Err(LedgerError::AlreadyApproved {
                id: entry.id,
                sub: operator.sub.clone(),
                needed: entry.approvers_needed,
            });
        }
        let decision = if !approve {
            entry.state = State::Denied;
            "denied"
        } else {
            entry.approved_by.push(operator.sub.clone());
            if entry.approved_by.len() < entry.approvers_needed as usize {
                // One approval of a quorum: still pending, still expiring at the same time.
                "approved (quorum not yet met)"
            } else {
                entry.state = State::Approved;
                "approved"
            }
        };
        if entry.state != State::Pending {
            entry.decided_by = Some(operator.sub.clone());
            entry.decided_at = Some(now);
            entry.decision_reason = Some(reason.to_string());
        }
        self.save(&entry).await?;
        let extra = json!({
            "decision": decision,
            "state": entry.state.word(),
            "reason": reason,
            "requester": entry.requester,
            "target": entry.target,
            "argumentsHash": entry.arguments_hash,
            "approverGroup": entry.approver_group,
            "approversNeeded": entry.approvers_needed,
            "approvedBy": entry.approved_by,
            "grantTtlSeconds": entry.grant_ttl_seconds,
            // Filed under the session the held call came from, for `sessions replay`.
            "session": entry.session,
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
            let mut sweeps: u64 = 0;
            loop {
                tick.tick().await;
                let Some(ledger) = weak.upgrade() else { return };
                // The whole table at start; again now and then where other replicas write.
                let reindex =
                    sweeps == 0 || (ledger.audit.shared() && sweeps.is_multiple_of(REINDEX_EVERY));
                sweeps += 1;
                if reindex {
                    if let Err(e) = ledger.index_pending().await {
                        eprintln!("tollgate: reading pending approvals: {e}");
                        continue;
                    }
                }
                if let Err(e) = ledger.sweep().await {
                    eprintln!("tollgate: expiring approvals: {e}");
                }
            }
        });
    }

    async fn sweep(&self) -> Result<(), LedgerError> {
        let now = now();
        let due: Vec<String> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, expires_at)| now >= **expires_at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let _changing = self.changing().await?;
            match self.load(&id).await? {
                Some(mut entry)
                    if entry.state == State::Pending && clock::now_micros() >= entry.expires_at =>
                {
                    self.expire(&mut entry).await?
                }
                Some(entry) => self.track(&entry),
                None => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
            }
        }
        Ok(())
    }
}

/// On a shared store, the sweeper reads the whole table again every this many sweeps (other
/// replicas' pending requests are not in this one's index).
const REINDEX_EVERY: u64 = 12;

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
            approvers_needed: 1,
            approved_by: vec!["olga".into()],
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
        let owned = entry(
            json!({"sub": "svc-reports", "accountable": {"sub": "dana", "via": "owner"}}),
            0,
        );
        assert_eq!(owned.acting_for(), ["dana"]);
        assert!(entry(json!({"sub": "ci-bot"}), 0).acting_for().is_empty());
    }
}
