//! Just-in-time approvals, the filter's side: what to ask the control plane for a call that an
//! `approve` rule matched, and what each answer means for the held request. The protocol is in
//! docs/approvals.md: `Approvals.Request`, then while pending a long-polled `Approvals.Await`.

use serde_json::{json, Value};
use tollgate_proto::pb::{ApprovalRequest, ApprovalState, ApprovalStatus};

use crate::config::FilterConfig;
use crate::flow::LocalReply;
use crate::identity::Identity;
use crate::jsonrpc::{self, modern, Message};
use crate::mask::{MaskReport, Masker};
use crate::policy::{Decision, Verdict};
use crate::record::RequestInfo;

/// A held call and the approval it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub request: ApprovalRequest,
    /// The JSON-RPC id of the held call, for the error answering it.
    pub call_id: Option<Value>,
    /// The held call, when its client takes the approval as a multi round-trip request
    /// (2026-07-28, URL elicitation declared): it is answered `input_required` at once.
    pub mrtr: Option<Message>,
    /// The approval page (`approvalUrl` of the configuration, `{id}` standing for the id), for
    /// the answers that name it.
    pub approval_url: String,
}

/// What the filter does after an answer from the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A grant was used for this call: forward it.
    Forward,
    /// Still pending: keep holding and ask again (long poll) for this approval.
    Wait(String),
    /// Answer the caller.
    Reply(LocalReply),
}

/// The approval to ask for `message`, which `verdict` (an `approve` verdict) holds.
pub fn ask(
    config: &FilterConfig,
    masker: &Masker,
    info: &RequestInfo,
    identity: &Identity,
    message: &Message,
    verdict: &Verdict,
) -> Option<Ask> {
    let Decision::Approve {
        approver_group,
        grant_ttl_seconds,
        ..
    } = &verdict.action
    else {
        return None;
    };
    let arguments = message.arguments().cloned().unwrap_or(Value::Null);
    let mut report = MaskReport::default();
    let masked = masker.mask_body(arguments.to_string().as_bytes(), &mut report);
    Some(Ask {
        request: ApprovalRequest {
            requester: identity.sub.clone(),
            identity_json: identity
                .audit_json(&config.extra_claims)
                .to_string()
                .into_bytes(),
            upstream: config.upstream.clone(),
            method: message.method.clone().unwrap_or_default(),
            target: message.target().unwrap_or_default().to_owned(),
            arguments_hash: arguments_hash(&arguments),
            masked_arguments_json: masked,
            rule: verdict.rule.clone().unwrap_or_default(),
            reason: verdict.reason.clone().unwrap_or_default(),
            approver_group: approver_group.clone(),
            grant_ttl_seconds: grant_ttl_seconds.unwrap_or(0),
            session: info.session_id.clone().unwrap_or_default(),
            message_json: message.to_body(),
            claims_json: Value::Object(identity.claims.clone())
                .to_string()
                .into_bytes(),
            route: info.path.clone(),
            retry_of: info
                .approval_retry
                .as_ref()
                .map(|retry| retry.approval_id.clone())
                .unwrap_or_default(),
        },
        call_id: message.id.clone(),
        mrtr: (message.is_stateless() && message.accepts_url_elicitation())
            .then(|| message.clone()),
        approval_url: config.approval_url.clone(),
    })
}

/// The page of approval `approval_id` by the `approvalUrl` template; none when the deployment
/// set it empty (no console to send people to).
pub fn approval_page(template: &str, approval_id: &str) -> Option<String> {
    (!template.is_empty()).then(|| template.replace("{id}", approval_id))
}

impl Ask {
    fn page(&self, approval_id: &str) -> Option<String> {
        approval_page(&self.approval_url, approval_id)
    }
}

/// The answer that sends a 2026-07-28 client to the approval: `input_required` with a URL
/// elicitation of the approval's page, and the gateway's state naming the approval for the
/// retry. The state grants nothing (see [`modern::GATEWAY_STATE_PREFIX`]).
pub fn input_required(ask: &Ask, approval_id: &str) -> LocalReply {
    // A URL elicitation needs a URL: without a page, the client gets the error to retry.
    let (Some(held), Some(url)) = (&ask.mrtr, ask.page(approval_id)) else {
        return still_pending(ask, approval_id, "");
    };
    let message = format!(
        "{} needs approval {approval_id} from a member of {} (policy rule {:?}). Open {url}, or ask an approver to run: tollgate approvals approve {approval_id} --reason ... Then continue; the call is sent again and passes once approved.",
        ask.request.target, ask.request.approver_group, ask.request.rule
    );
    let state = modern::gateway_state(approval_id, held);
    LocalReply {
        status: 200,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: modern::input_required(ask.call_id.as_ref(), &message, &url, &state),
    }
}

pub use tollgate_engine::jsonrpc::arguments_hash;

/// What an answer from `Request` or `Await` means for the held call.
pub fn on_status(ask: &Ask, status: &ApprovalStatus) -> Outcome {
    let id = status.approval_id.as_str();
    let group = ask.request.approver_group.as_str();
    match status.state() {
        ApprovalState::Granted => Outcome::Forward,
        ApprovalState::Pending => Outcome::Wait(id.to_owned()),
        ApprovalState::Denied => {
            let mut data = json!({"approvalId": id, "state": "denied", "decidedBy": status.decided_by, "reason": status.reason});
            // The page shows who decided and why, beside the request.
            if let Some(url) = ask.page(id) {
                data["approvalUrl"] = url.into();
            }
            reply(
                ask,
                &format!(
                    "approval {id} denied by {}: {}",
                    status.decided_by, status.reason
                ),
                data,
            )
        }
        ApprovalState::Expired => reply(
            ask,
            &format!("approval {id} expired; retry the call to ask again"),
            json!({"approvalId": id, "state": "expired", "approverGroup": group}),
        ),
        ApprovalState::Unspecified => unavailable(ask),
    }
}

/// The held call's wait ended with the approval still pending.
pub fn still_pending(ask: &Ask, approval_id: &str, expires_at: &str) -> LocalReply {
    let group = &ask.request.approver_group;
    let page = ask.page(approval_id);
    let open = page
        .as_deref()
        .map(|url| format!("open {url}, or "))
        .unwrap_or_default();
    let message = format!(
        "approval required: {} needs approval {approval_id} from a member of {group} \
         ({open}an approver runs: tollgate approvals approve {approval_id} --reason ...); \
         retry the same call once approved",
        ask.request.target
    );
    let mut data = json!({
        "approvalId": approval_id,
        "state": "pending",
        "approverGroup": group,
        "rule": ask.request.rule,
        "expiresAt": expires_at,
        "retry": true,
    });
    if let Some(url) = page {
        data["approvalUrl"] = url.into();
    }
    reply(ask, &message, data).into_reply()
}

/// The control plane could not be asked: fail closed.
pub fn unavailable(ask: &Ask) -> Outcome {
    Outcome::Reply(LocalReply::jsonrpc_error(
        503,
        ask.call_id.as_ref(),
        jsonrpc::GATEWAY_ERROR,
        "approval service unavailable: request not forwarded",
        Some(json!({"retryable": true})),
    ))
}

fn reply(ask: &Ask, message: &str, data: Value) -> Outcome {
    Outcome::Reply(LocalReply::jsonrpc_error(
        200,
        ask.call_id.as_ref(),
        jsonrpc::GATEWAY_ERROR,
        message,
        Some(data),
    ))
}

impl Outcome {
    fn into_reply(self) -> LocalReply {
        match self {
            Outcome::Reply(reply) => reply,
            // Only `reply` builds these; keep a safe answer rather than a panic.
            _ => LocalReply::jsonrpc_error(
                503,
                None,
                jsonrpc::GATEWAY_ERROR,
                "approval failed",
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{parse, Body};
    use serde_json::Map;

    fn held() -> Ask {
        held_with(b"")
    }

    /// A held call under the plugin configuration `config`.
    fn held_with(config: &[u8]) -> Ask {
        let Body::Single(message) = parse(br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"update_payout_account","arguments":{"merchant_id":"m_1","account_number":"4111111111111111"}}}"#).unwrap() else { panic!() };
        let verdict = Verdict {
            action: Decision::Approve {
                approver_group: "payments-approvers".into(),
                grant_ttl_seconds: None,
                approvers: 1,
            },
            rule: Some("approve-payout".into()),
            reason: Some("second person".into()),
        };
        let identity = Identity {
            sub: "alice".into(),
            claims: Map::new(),
            accountable: None,
        };
        let config = FilterConfig::from_json(config).unwrap();
        ask(
            &config,
            &Masker::default(),
            &RequestInfo::default(),
            &identity,
            &message,
            &verdict,
        )
        .unwrap()
    }

    #[test]
    fn the_request_is_bound_to_the_exact_arguments_and_masks_them() {
        let ask = held();
        assert_eq!(ask.request.target, "update_payout_account");
        assert_eq!(ask.request.requester, "alice");
        let masked = String::from_utf8(ask.request.masked_arguments_json.clone()).unwrap();
        assert!(!masked.contains("4111111111111111"), "{masked}");
        let same =
            arguments_hash(&json!({"account_number":"4111111111111111","merchant_id":"m_1"}));
        assert_eq!(
            ask.request.arguments_hash, same,
            "key order must not matter"
        );
        assert_ne!(
            ask.request.arguments_hash,
            arguments_hash(&json!({"merchant_id":"m_2","account_number":"4111111111111111"}))
        );
    }

    #[test]
    fn answers_map_to_outcomes() {
        let ask = held();
        let status = |state: ApprovalState| ApprovalStatus {
            approval_id: "apr_1".into(),
            state: state as i32,
            reason: "no".into(),
            decided_by: "bob".into(),
            expires_at: String::new(),
            ..Default::default()
        };
        assert_eq!(
            on_status(&ask, &status(ApprovalState::Granted)),
            Outcome::Forward
        );
        assert_eq!(
            on_status(&ask, &status(ApprovalState::Pending)),
            Outcome::Wait("apr_1".into())
        );
        let Outcome::Reply(denied) = on_status(&ask, &status(ApprovalState::Denied)) else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&denied.body).unwrap();
        assert_eq!(body["id"], 9);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bob: no"));
        let pending = still_pending(&ask, "apr_1", "2026-11-25T22:00:00Z");
        let body: Value = serde_json::from_slice(&pending.body).unwrap();
        assert_eq!(body["error"]["data"]["approvalId"], "apr_1");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tollgate approvals approve apr_1"));
    }

    fn error_of(reply: &LocalReply) -> Value {
        serde_json::from_slice::<Value>(&reply.body).unwrap()["error"].clone()
    }

    fn answer(ask: &Ask, state: ApprovalState) -> LocalReply {
        let status = ApprovalStatus {
            approval_id: "apr_1".into(),
            state: state as i32,
            reason: "no".into(),
            decided_by: "bob".into(),
            ..Default::default()
        };
        match on_status(ask, &status) {
            Outcome::Reply(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn held_call_answers_name_the_approval_page() {
        let ask = held();
        let pending = error_of(&still_pending(&ask, "apr_1", "2026-11-25T22:00:00Z"));
        let page = "http://127.0.0.1:9470/approvals/apr_1";
        assert_eq!(pending["data"]["approvalUrl"], page);
        let message = pending["message"].as_str().unwrap();
        assert!(message.contains(&format!("open {page}, or")), "{message}");
        assert!(
            message.contains("tollgate approvals approve apr_1 --reason"),
            "{message}"
        );
        let denied = error_of(&answer(&ask, ApprovalState::Denied));
        assert_eq!(denied["data"]["approvalUrl"], page);
        assert_eq!(denied["data"]["decidedBy"], "bob");
        // An expired approval's page offers nothing to do: the retry asks again.
        let expired = error_of(&answer(&ask, ApprovalState::Expired));
        assert!(expired["data"].get("approvalUrl").is_none(), "{expired}");

        let ask =
            held_with(br#"{"approvalUrl":"https://ops.example.com/tollgate/approvals/{id}"}"#);
        let pending = error_of(&still_pending(&ask, "apr_2", ""));
        assert_eq!(
            pending["data"]["approvalUrl"],
            "https://ops.example.com/tollgate/approvals/apr_2"
        );
    }

    #[test]
    fn without_an_approval_page_answers_name_the_command_only() {
        let config = br#"{"approvalUrl":""}"#;
        let mut ask = held_with(config);
        let pending = error_of(&still_pending(&ask, "apr_1", ""));
        assert!(pending["data"].get("approvalUrl").is_none(), "{pending}");
        let message = pending["message"].as_str().unwrap();
        assert!(!message.contains("open "), "{message}");
        assert!(
            message.contains("tollgate approvals approve apr_1"),
            "{message}"
        );
        // A URL elicitation needs a URL: a 2026-07-28 client is told to retry instead.
        let Body::Single(message) = parse(br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"update_payout_account","arguments":{}}}"#).unwrap() else { panic!() };
        ask.mrtr = Some(message.clone());
        let answer = input_required(&ask, "apr_1");
        assert_eq!(error_of(&answer)["data"]["state"], "pending");
        let mut with_default_page = held();
        with_default_page.mrtr = Some(message);
        let with_page = input_required(&with_default_page, "apr_1");
        let body: Value = serde_json::from_slice(&with_page.body).unwrap();
        assert_eq!(body["result"]["resultType"], "input_required", "{body}");
        assert!(body
            .to_string()
            .contains("http://127.0.0.1:9470/approvals/apr_1"));
    }
}
