//! The console's JSON API: each answer comes from a gRPC call made with the signed-in
//! operator's token, so the access layer decides and records exactly as for the CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::signin::{cookie, same_secret, BrowserSession, SESSION_COOKIE};
use super::{ApiError, Console};
use crate::cli::filter::FilterArgs;
use crate::cli::records::Source;
use crate::clock;
use crate::operator::Operator;
use crate::pb;
use crate::pb::approvals_client::ApprovalsClient;
use crate::pb::audit_client::AuditClient;
use crate::pb::revocations_client::RevocationsClient;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/approvals", get(approvals))
        .route("/api/approvals/events", get(approval_events))
        .route("/api/approvals/{id}", get(approval))
        .route("/api/approvals/{id}/decision", post(decide))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}", get(session))
        .route("/api/evidence", get(evidence))
        .route("/api/verify", post(verify))
        .route("/api/export", get(export))
        .route("/api/identities", get(identities))
        .route("/api/revocations", get(revocations).post(revoke))
}

/// A signed-in operator's call: the session, and where the browser is. Any method but GET
/// must also carry the session's CSRF token in `x-csrf-token` and the console's own `Origin`.
pub struct Call {
    session_id: String,
    session: BrowserSession,
    browser: SocketAddr,
}

impl FromRequestParts<Arc<Console>> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let session_id = cookie(&parts.headers, SESSION_COOKIE)
            .unwrap_or_default()
            .to_owned();
        let session = console.signins.get(&session_id).ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "not signed in, or the session ended: sign in again".into(),
            )
        })?;
        if parts.method != Method::GET {
            let origin = parts
                .headers
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            if origin != Some(console.origin.as_str()) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!(
                        "refused: the request comes from {}, not from the console",
                        origin.unwrap_or("an unknown origin")
                    ),
                ));
            }
            let token = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same_secret(token, &session.csrf) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "refused: the request lacks this session's CSRF token (reload the page)".into(),
                ));
            }
        }
        let ConnectInfo(browser) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .cloned()
            .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "no peer".into()))?;
        Ok(Self {
            session_id,
            session,
            browser,
        })
    }
}

impl Call {
    /// The operator as the control plane records it: the console, and the browser behind it.
    fn operator(&self, purpose: &str, filter: Option<Value>) -> Operator {
        Operator {
            name: Some(format!("console (browser {})", self.browser)),
            ..Operator::default()
        }
        .with_purpose(purpose, filter)
    }

    fn request<T>(&self, purpose: &str, message: T) -> tonic::Request<T> {
        self.request_with(purpose, None, message)
    }

    /// A request as `request` makes it, recording `filter` as what the operator asked for.
    fn request_with<T>(
        &self,
        purpose: &str,
        filter: Option<Value>,
        message: T,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.operator(purpose, filter)
            .attach(request.metadata_mut(), Some(&self.session.token));
        request
    }
}

impl Console {
    fn approvals(&self) -> ApprovalsClient<tonic::transport::Channel> {
        ApprovalsClient::new(self.parts.services.clone())
    }

    fn audit(&self) -> AuditClient<tonic::transport::Channel> {
        AuditClient::new(self.parts.services.clone()).max_decoding_message_size(64 << 20)
    }

    fn source(&self, call: &Call, operator: &Operator) -> Source {
        Source::over(
            self.parts.services.clone(),
            "the control plane",
            operator,
            Some(call.session.token.clone()),
        )
    }
}

async fn me(State(console): State<Arc<Console>>, call: Call) -> Json<Value> {
    let operator = &call.session.operator;
    Json(json!({
        "sub": operator.sub,
        "email": operator.email,
        "groups": operator.groups,
        "csrf": call.session.csrf,
        "expiresAt": clock::format(call.session.expires.saturating_mul(1_000_000)),
        "devSignIn": console.settings.console_dev_sign_in,
    }))
}

/// Decided approvals the list shows beside every pending one.
const RECENT_DECISIONS: u32 = 50;

async fn approvals(
    State(console): State<Arc<Console>>,
    call: Call,
) -> Result<Json<Value>, ApiError> {
    let list = |pending_only: bool, limit: u32| {
        let mut client = console.approvals();
        let request = call.request(
            "approvals.list",
            pb::ListApprovalsRequest {
                pending_only,
                limit,
            },
        );
        async move { client.list(request).await.map(|r| r.into_inner().approvals) }
    };
    let pending = list(true, 0).await?;
    let recent = list(
        false,
        RECENT_DECISIONS + u32::try_from(pending.len()).unwrap_or(u32::MAX),
    )
    .await?;
    let mut shown: Vec<Value> = pending.iter().map(crate::cli::approvals::to_json).collect();
    shown.extend(
        recent
            .iter()
            .filter(|a| a.state != pb::ApprovalState::Pending as i32)
            .map(crate::cli::approvals::to_json),
    );
    // Newest first: what an approver looks at.
    shown.sort_by(|a, b| b["requestedAt"].as_str().cmp(&a["requestedAt"].as_str()));
    Ok(Json(
        json!({"approvals": shown, "now": clock::format(clock::now_micros())}),
    ))
}

async fn approval(
    State(console): State<Arc<Console>>,
    call: Call,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let approval = console
        .approvals()
        .get(call.request("approvals.get", pb::GetApprovalRequest { approval_id: id }))
        .await?
        .into_inner();
    Ok(Json(json!({
        "approval": crate::cli::approvals::to_json(&approval),
        "now": clock::format(clock::now_micros()),
    })))
}

/// Every change to an approval (new, decided, expired, used) as a server-sent event, as it
/// happens: the pending list in the browser stays live.
async fn approval_events(
    State(console): State<Arc<Console>>,
    call: Call,
) -> Result<Response, ApiError> {
    let stream = console
        .approvals()
        .watch(call.request("approvals.watch", pb::WatchApprovalsRequest {}))
        .await?
        .into_inner();
    let events = stream.map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(approval) => Event::default()
                .event("approval")
                .data(crate::cli::approvals::to_json(&approval).to_string()),
            Err(status) => Event::default()
                .event("problem")
                .data(json!({"error": status.message()}).to_string()),
        })
    });
    // The stream ends with the browser session too (sign-out, expiry), checked every 2 s.
    let signed_in = console.clone();
    let session_ended = async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if signed_in.signins.get(&call.session_id).is_none() {
                return;
            }
        }
    };
    let events = events.take_until(session_ended);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Deserialize)]
struct Decision {
    approve: bool,
    reason: String,
}

async fn decide(
    State(console): State<Arc<Console>>,
    call: Call,
    Path(id): Path<String>,
    Json(decision): Json<Decision>,
) -> Result<Json<Value>, ApiError> {
    let reason = decision.reason.trim();
    if reason.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "give a reason: it is recorded with the decision".into(),
        ));
    }
    let approval = console
        .approvals()
        .decide(call.request(
            "approvals.decide",
            pb::DecideRequest {
                approval_id: id,
                approve: decision.approve,
                reason: reason.to_owned(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(
        json!({"approval": crate::cli::approvals::to_json(&approval)}),
    ))
}

#[derive(Deserialize, Default)]
struct SessionsQuery {
    sub: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn time_filter(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => clock::parse_cli(text)
            .map(Some)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{name}: {e}"))),
    }
}

async fn sessions(
    State(console): State<Arc<Console>>,
    call: Call,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let given = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = FilterArgs {
        from: time_filter("from", query.from.as_deref())?,
        to: time_filter("to", query.to.as_deref())?,
        sub: given(query.sub),
        tool: given(query.tool),
        decision: given(query.decision),
        ..FilterArgs::default()
    };
    let operator = call.operator("sessions.list", Some(filter.to_json()));
    let mut source = console.source(&call, &operator);
    let mut list = crate::cli::sessions::summaries(&mut source, &operator, &filter).await?;
    // Most recent first.
    list.reverse();
    Ok(Json(json!({"sessions": list})))
}

async fn session(
    State(console): State<Arc<Console>>,
    call: Call,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let operator = call.operator("sessions.replay", Some(json!({"session": id})));
    let mut source = console.source(&call, &operator);
    let found = crate::cli::sessions::session_records(&mut source, &operator, &id, 0).await?;
    if found.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no records for session {id} in the hot store (older sessions: `tollgate sessions replay --archive`)"),
        ));
    }
    let mut people: Vec<String> = found
        .iter()
        .map(|(_, _, r)| crate::cli::sessions::identity_line(r))
        .collect();
    people.sort();
    people.dedup();
    let items: Vec<Value> = found
        .iter()
        .map(|(seq, chain_hash, record)| {
            json!({
                "seq": seq,
                "chainHash": chain_hash,
                "event": record.get("event"),
                "time": record.get("time").or_else(|| record.get("receivedAt")),
                "decision": record.get("decision"),
                "lines": crate::cli::sessions::replay_lines(*seq, record),
                "record": record,
            })
        })
        .collect();
    Ok(Json(json!({"session": id, "who": people, "items": items})))
}

/// The log's head, its latest checkpoint with the witnesses that cosigned it, and the last
/// verification run from the console.
async fn evidence(
    State(console): State<Arc<Console>>,
    call: Call,
) -> Result<Json<Value>, ApiError> {
    let info = console
        .audit()
        .log_info(call.request("evidence", pb::LogInfoRequest {}))
        .await?
        .into_inner();
    let latest = info.latest_checkpoint.as_ref();
    // Checkpoints are numbered from 0 and never removed.
    let count = latest.map_or(0, |c| c.number + 1);
    let log_names: Vec<&str> = info
        .verifier_keys
        .iter()
        .filter_map(|k| k.split('+').next())
        .collect();
    // The published note carries the witnesses' cosignatures once the quorum is reached.
    let published = console
        .parts
        .published
        .latest()
        .or_else(|| std::fs::read_to_string(console.parts.published.file()).ok());
    let latest_json = latest.map(|c| {
        json!({
            "number": c.number,
            "note": c.note,
            "size": note_size(&c.note),
            "signers": signers(&c.note),
        })
    });
    let published_json = published.as_ref().map(|note| {
        let signed_by = signers(note);
        let witnesses: Vec<&String> = signed_by
            .iter()
            .filter(|name| !log_names.contains(&name.as_str()))
            .collect();
        json!({"note": note, "size": note_size(note), "signers": signed_by, "witnesses": witnesses})
    });
    let last = console
        .last_verification
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Json(json!({
        "origin": info.origin,
        "size": info.size,
        "verifierKeys": info.verifier_keys,
        "archivedBefore": info.archived_before,
        "checkpoints": count,
        "latestCheckpoint": latest_json,
        "published": published_json,
        "lastVerification": last,
    })))
}

/// The tree size of a checkpoint note (its second line).
fn note_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.trim().parse().ok()
}

/// The key names of a signed note's signature lines (`— name base64`).
fn signers(note: &str) -> Vec<String> {
    note.split("\n\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("\u{2014} "))
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Verifies the whole log now, as `tollgate audit verify` does, with the log's own keys; the
/// outcome is recorded and kept for the evidence page.
async fn verify(State(console): State<Arc<Console>>, call: Call) -> Result<Json<Value>, ApiError> {
    let operator = call.operator("verify", Some(json!({"via": "console"})));
    let keys = crate::keys::KeyDir::at(&console.parts.home)
        .verifiers()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let source = console.source(&call, &operator);
    let report =
        crate::cli::audit_verify::verify_source(source, &operator, &keys, &[], None).await?;
    let outcome = json!({
        "intact": report.intact(),
        "records": report.records,
        "report": report.to_json(),
        "by": call.session.operator.sub,
        "at": clock::format(clock::now_micros()),
    });
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.consoleVerification".into());
    event.insert(
        "operator".into(),
        Console::operator_json(&call.session.operator, call.browser),
    );
    event.insert("intact".into(), report.intact().into());
    event.insert("records".into(), report.records.into());
    event.insert("findings".into(), report.findings.len().into());
    console.record(event).await;
    *console
        .last_verification
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
    Ok(Json(outcome))
}

#[derive(Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    sub: Option<String>,
    session: Option<String>,
}

/// An export bundle of a range, as `tollgate audit export` writes it: verifiable offline with
/// `tollgate-verify` and the log's keys.
async fn export(
    State(console): State<Arc<Console>>,
    call: Call,
    Query(query): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let from = time_filter("from", query.from.as_deref())?;
    let to = time_filter("to", query.to.as_deref())?;
    let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).unwrap_or_default();
    let request = pb::ExportRequest {
        from: from.map(clock::format).unwrap_or_default(),
        to: to.map(clock::format).unwrap_or_default(),
        sub: text(query.sub),
        session: text(query.session),
    };
    let filter = json!({"from": request.from, "to": request.to, "sub": request.sub, "session": request.session});
    let stream = console
        .audit()
        .export(call.request_with("export", Some(filter), request))
        .await?
        .into_inner();
    let body = axum::body::Body::from_stream(stream.map(|chunk| {
        chunk
            .map(|c| axum::body::Bytes::from(c.data))
            .map_err(|status| std::io::Error::other(status.message().to_owned()))
    }));
    let name = format!(
        "tollgate-export-{}.bundle",
        clock::format(clock::now_micros()).replace(':', "")
    );
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
struct IdentitiesQuery {
    inactive: Option<String>,
}

async fn identities(
    State(console): State<Arc<Console>>,
    call: Call,
    Query(query): Query<IdentitiesQuery>,
) -> Result<Json<Value>, ApiError> {
    let inactive = match query
        .inactive
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(age) => Some(
            crate::cli::identities::parse_inactive(age)
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("inactive {e}")))?,
        ),
    };
    let operator = call.operator(
        "identities",
        query.inactive.as_ref().map(|age| json!({"inactive": age})),
    );
    let mut source = console.source(&call, &operator);
    let identities = crate::cli::identities::Identities::read(&mut source, &operator).await?;
    let now = clock::now_micros();
    let rows: Vec<Value> = identities
        .rows(inactive, now)
        .into_iter()
        .map(|((issuer, sub), seen)| identities.row_json(issuer, sub, seen, now))
        .collect();
    Ok(Json(json!({"identities": rows})))
}

async fn revocations(
    State(console): State<Arc<Console>>,
    call: Call,
) -> Result<Json<Value>, ApiError> {
    let list = RevocationsClient::new(console.parts.services.clone())
        .list(call.request("revocations.list", pb::ListRevocationsRequest {}))
        .await?
        .into_inner();
    let items: Vec<Value> = list
        .revocations
        .iter()
        .map(|r| {
            json!({
                "revocationId": r.revocation_id, "claim": r.claim, "value": r.value,
                "reason": r.reason, "revokedBy": r.revoked_by, "revokedAt": r.revoked_at,
            })
        })
        .collect();
    Ok(Json(json!({"revocations": items})))
}

#[derive(Deserialize)]
struct RevokeBody {
    claim: String,
    value: String,
    reason: String,
}

async fn revoke(
    State(console): State<Arc<Console>>,
    call: Call,
    Json(body): Json<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    if body.reason.trim().is_empty() || body.value.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name who to revoke and give a reason: both are recorded".into(),
        ));
    }
    let revocation = RevocationsClient::new(console.parts.services.clone())
        .revoke(call.request(
            "revocations.revoke",
            pb::RevokeRequest {
                claim: body.claim.trim().to_owned(),
                value: body.value.trim().to_owned(),
                reason: body.reason.trim().to_owned(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(json!({"revocationId": revocation.revocation_id})))
}

#[cfg(test)]
mod tests {
    #[test]
    fn signers_are_read_from_a_signed_note() {
        let note = "origin\n12\nAAAA\n\n\u{2014} log.example abc=\n\u{2014} witness-1 def=\n";
        assert_eq!(super::signers(note), ["log.example", "witness-1"]);
        assert_eq!(super::note_size(note), Some(12));
    }
}
