//! The control plane's own reading of a call held for approval. The filter asks for an
//! approval; what the approval is for (rule, approver group, quorum, grant lifetime, arguments
//! hash, the masked arguments approvers read) comes from the control plane's copy of the policy
//! (`serve --policy`, the same file the filter loads), judged on the held message itself. A
//! request whose own reading differs is refused and recorded: it is either a filter on another
//! policy version or a forgery, and neither may shape what an approver is asked.

use std::path::Path;

use serde_json::{Map, Value};
use tollgate_engine::jsonrpc::{self, Body, Kind};
use tollgate_engine::mask::{MaskReport, Masker};
use tollgate_engine::policy::{CallContext, Decision, Policy};

use crate::pb;

/// The policy `serve` loaded, and where from (named in refusals).
pub struct Judge {
    policy: Policy,
    source: String,
    masker: Masker,
}

/// What an approval is for, as the control plane reads the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub method: String,
    pub target: String,
    pub rule: String,
    pub reason: String,
    pub approver_group: String,
    /// 0: single use.
    pub grant_ttl_seconds: u64,
    pub approvers: u32,
    pub arguments_hash: String,
    /// The arguments with card numbers masked by the control plane (JSON).
    pub masked_arguments: String,
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misjudged {
    #[error("the approval request is malformed: {0}")]
    Malformed(String),
    #[error("the control plane's policy ({policy}) does not hold this call for approval: it decides {decision}{by}")]
    NotHeld {
        policy: String,
        decision: &'static str,
        by: String,
    },
    #[error("the request's {field} ({sent:?}) differs from the control plane's reading ({ours:?}) of the same call under {policy}")]
    Disagrees {
        field: &'static str,
        sent: String,
        ours: String,
        policy: String,
    },
}

impl Judge {
    /// Loads and compiles a policy file; any error in it stops `serve`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the policy {}: {e}", path.display()))?;
        let policy = Policy::from_json(&bytes)
            .map_err(|e| anyhow::anyhow!("the policy {} is not valid: {e}", path.display()))?;
        Ok(Self {
            policy,
            source: path.display().to_string(),
            masker: Masker::default(),
        })
    }

    /// The groups the policy's `approve` rules name.
    pub fn approver_groups(&self) -> Vec<String> {
        self.policy.approver_groups()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Judges the held call in `request` and checks the filter's reading against it.
    pub fn terms(&self, request: &pb::ApprovalRequest) -> Result<Terms, Misjudged> {
        let malformed = |why: &str| Misjudged::Malformed(why.to_owned());
        let message = match jsonrpc::parse(&request.message_json) {
            Ok(Body::Single(message)) if message.kind == Kind::Request => message,
            Ok(_) => return Err(malformed("message_json must be one JSON-RPC request")),
            Err(e) => {
                return Err(Misjudged::Malformed(format!(
                    "message_json: {}",
                    e.message()
                )))
            }
        };
        let claims: Map<String, Value> = serde_json::from_slice(&request.claims_json)
            .map_err(|_| malformed("claims_json must be a JSON object"))?;
        if claims.get("sub").and_then(Value::as_str) != Some(request.requester.as_str()) {
            return Err(malformed("claims_json must carry the requester's sub"));
        }
        // The revision the held message names itself (2026-07-28 `_meta`, `initialize`); a
        // session-based call names none here, and rules on `protocolVersion` that approve see
        // 2025-03-26 (docs/policy.md).
        let version = message
            .protocol_version()
            .unwrap_or(tollgate_engine::jsonrpc::modern::ASSUMED_VERSION)
            .to_owned();
        let ctx = CallContext::new(&claims, &request.route, &request.upstream).speaking(&version);
        let verdict = self.policy.decide(&message, &ctx);
        let Decision::Approve {
            approver_group,
            grant_ttl_seconds,
            approvers,
        } = verdict.action.clone()
        else {
            return Err(Misjudged::NotHeld {
                policy: self.source.clone(),
                decision: verdict.action.name(),
                by: verdict
                    .rule
                    .map_or(" by the policy default".to_owned(), |r| {
                        format!(" by rule {r:?}")
                    }),
            });
        };
        let arguments = message.arguments().cloned().unwrap_or(Value::Null);
        let mut report = MaskReport::default();
        let masked = self
            .masker
            .mask_body(arguments.to_string().as_bytes(), &mut report);
        let terms = Terms {
            method: message.method.clone().unwrap_or_default(),
            target: message.target().unwrap_or_default().to_owned(),
            rule: verdict.rule.unwrap_or_default(),
            reason: verdict.reason.unwrap_or_default(),
            approver_group,
            grant_ttl_seconds: grant_ttl_seconds.unwrap_or(0),
            approvers,
            arguments_hash: jsonrpc::arguments_hash(&arguments),
            masked_arguments: String::from_utf8_lossy(&masked).into_owned(),
        };
        let sent: [(&'static str, String, String); 6] = [
            ("method", request.method.clone(), terms.method.clone()),
            ("target", request.target.clone(), terms.target.clone()),
            ("rule", request.rule.clone(), terms.rule.clone()),
            (
                "approver_group",
                request.approver_group.clone(),
                terms.approver_group.clone(),
            ),
            (
                "grant_ttl_seconds",
                request.grant_ttl_seconds.to_string(),
                terms.grant_ttl_seconds.to_string(),
            ),
            (
                "arguments_hash",
                request.arguments_hash.clone(),
                terms.arguments_hash.clone(),
            ),
        ];
        if let Some((field, sent, ours)) = sent.into_iter().find(|(_, sent, ours)| sent != ours) {
            return Err(Misjudged::Disagrees {
                field,
                sent,
                ours,
                policy: self.source.clone(),
            });
        }
        Ok(terms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judge() -> Judge {
        let policy = json!({
            "rules": [
                {"id": "approve-payout", "match": {"tool": "update_payout_account"},
                 "action": "approve", "approverGroup": "payments-approvers", "approvers": 2},
                {"id": "allow-reads", "match": {"tool": "get_customer"}, "action": "allow"}
            ]
        });
        Judge {
            policy: Policy::from_json(policy.to_string().as_bytes()).unwrap(),
            source: "policy.json".into(),
            masker: Masker::default(),
        }
    }

    fn request(tool: &str, arguments: Value) -> pb::ApprovalRequest {
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": tool, "arguments": arguments}});
        pb::ApprovalRequest {
            requester: "alice".into(),
            upstream: "payments".into(),
            method: "tools/call".into(),
            target: tool.into(),
            arguments_hash: jsonrpc::arguments_hash(&arguments),
            rule: "approve-payout".into(),
            approver_group: "payments-approvers".into(),
            message_json: message.to_string().into_bytes(),
            claims_json: br#"{"sub":"alice"}"#.to_vec(),
            route: "/mcp".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_terms_come_from_the_policy_and_the_arguments_are_masked_here() {
        let arguments = json!({"merchant_id": "m_1", "account_number": "4111111111111111"});
        let terms = judge()
            .terms(&request("update_payout_account", arguments))
            .unwrap();
        assert_eq!(terms.approvers, 2);
        assert_eq!(judge().approver_groups(), ["payments-approvers"]);
        assert_eq!(terms.approver_group, "payments-approvers");
        assert_eq!(terms.grant_ttl_seconds, 0);
        assert!(!terms.masked_arguments.contains("4111111111111111"));
        assert!(terms.masked_arguments.contains("1111"));
    }

    #[test]
    fn a_request_that_reads_the_call_otherwise_is_refused() {
        let arguments = json!({"merchant_id": "m_1"});
        let judge = judge();
        let mut shaped = request("update_payout_account", arguments.clone());
        shaped.approver_group = "friends-of-alice".into();
        assert!(matches!(
            judge.terms(&shaped),
            Err(Misjudged::Disagrees {
                field: "approver_group",
                ..
            })
        ));
        let mut longer = request("update_payout_account", arguments.clone());
        longer.grant_ttl_seconds = u64::MAX;
        assert!(matches!(
            judge.terms(&longer),
            Err(Misjudged::Disagrees {
                field: "grant_ttl_seconds",
                ..
            })
        ));
        // The hash of other arguments than those the approver reads.
        let mut swapped = request("update_payout_account", arguments);
        swapped.arguments_hash = jsonrpc::arguments_hash(&json!({"merchant_id": "m_2"}));
        assert!(matches!(
            judge.terms(&swapped),
            Err(Misjudged::Disagrees {
                field: "arguments_hash",
                ..
            })
        ));
        // A call the policy allows is no approval's business.
        let read = request("get_customer", json!({}));
        assert!(matches!(
            judge.terms(&read),
            Err(Misjudged::NotHeld {
                decision: "allow",
                ..
            })
        ));
        let mut impostor = request("update_payout_account", json!({}));
        impostor.claims_json = br#"{"sub":"bob"}"#.to_vec();
        assert!(matches!(
            judge.terms(&impostor),
            Err(Misjudged::Malformed(_))
        ));
    }
}
