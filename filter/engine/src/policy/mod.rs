//! The policy engine: ordered rules deciding each MCP message.
//!
//! Plain Rust, no proxy-wasm: the glue parses the body with [`crate::jsonrpc`], builds a
//! [`CallContext`] from the verified identity and the route, and asks [`Policy::decide`] (or
//! [`Policy::decide_batch`]). Everything a rule needs (globs, regexes, JSON pointers) is compiled
//! once by [`Policy::compile`], which refuses a policy with any error: a broken policy never
//! loads half-way. The rule language is described in `docs/policy.md`.

mod args;
mod batch;
mod check;
mod config;
pub(crate) mod glob;
mod index;
mod list;
pub mod listen;
mod rules;

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::jsonrpc::{self, Kind, Message};

pub use batch::{merge_batch_response, BatchDecision, BatchPlan};
pub use check::{check, parse_samples, CheckReport, CheckRow, Expect, Sample};
pub use config::{
    ActionConfig, ActionKind, ArgCondition, BatchMode, CallerMatch, MatchConfig, Patterns,
    PolicyConfig, RuleConfig,
};

use config::rule_label;
use index::RuleIndex;
use rules::{Call, Rule};

/// Methods that are protocol plumbing: they carry no tool, resource or prompt, and a client
/// cannot work without them. Allowed when no rule matches them, unless `allowProtocol` is off.
/// `completion/complete` is not among them: completions run server code on a prompt's or
/// resource's arguments and can reveal data.
pub const PROTOCOL_METHODS: [&str; 9] = [
    "initialize",
    "server/discover",
    "subscriptions/listen",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
];

/// What is known about the caller and where the call goes.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The claims that jwt_authn verified ([`Identity::claims`]); groups are in `groups`.
    pub claims: &'a Map<String, Value>,
    /// The HTTP path of the request (a query string is ignored).
    pub route: &'a str,
    /// The upstream (Envoy cluster) the route sends to.
    pub upstream: &'a str,
    /// The protocol revision the request speaks (see [`MatchConfig::protocol_version`]).
    pub protocol_version: &'a str,
}

impl<'a> CallContext<'a> {
    pub fn new(claims: &'a Map<String, Value>, route: &'a str, upstream: &'a str) -> Self {
        CallContext {
            claims,
            route,
            upstream,
            protocol_version: jsonrpc::modern::ASSUMED_VERSION,
        }
    }

    pub fn for_identity(identity: &'a Identity, route: &'a str, upstream: &'a str) -> Self {
        CallContext {
            claims: &identity.claims,
            route,
            upstream,
            protocol_version: jsonrpc::modern::ASSUMED_VERSION,
        }
    }

    /// The same context for a request that speaks `version`.
    pub fn speaking(self, version: &'a str) -> Self {
        CallContext {
            protocol_version: version,
            ..self
        }
    }
}

/// What a message gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    /// Forward it.
    Allow,
    /// Answer with a JSON-RPC error; the server never sees it.
    Deny { reason: String },
    /// Forward it only with a grant from a member of `approver_group`.
    #[serde(rename_all = "camelCase")]
    Approve {
        approver_group: String,
        /// How long a grant lasts; `None`: the grant is used once.
        grant_ttl_seconds: Option<u64>,
        /// Different members of the group who must approve (1 unless the rule sets a quorum).
        #[serde(skip_serializing_if = "is_one")]
        approvers: u32,
    },
}

impl Decision {
    /// `allow`, `deny` or `approve`, as in the policy and the audit record.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Approve { .. } => "approve",
        }
    }
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The most approvers a rule may ask for: a quorum larger than any real approver group would
/// only make the call impossible.
pub const MAX_APPROVERS: u32 = 5;

/// The decision for one message and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Decision,
    /// The id of the rule that matched; `None` when the default applied.
    pub rule: Option<String>,
    /// The rule's (or default's) reason; always present on deny.
    pub reason: Option<String>,
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        self.action == Decision::Allow
    }

    /// The error text a client sees for a refused message.
    pub fn error_message(&self) -> String {
        let by = match &self.rule {
            Some(rule) => format!("policy rule {rule:?}"),
            None => "the policy default".to_owned(),
        };
        match &self.action {
            Decision::Allow => format!("allowed by {by}"),
            Decision::Deny { reason } => format!("denied by {by}: {reason}"),
            Decision::Approve { approver_group, .. } => match &self.reason {
                Some(reason) => {
                    format!("approval required from {approver_group} by {by}: {reason}")
                }
                None => format!("approval required from {approver_group} by {by}"),
            },
        }
    }

    /// The error's `data`: `{"decision", "rule", "reason"}`, plus the approver group and grant
    /// lifetime for approvals.
    pub fn error_data(&self) -> Value {
        let mut data = Map::new();
        data.insert("decision".to_owned(), self.action.name().into());
        data.insert(
            "rule".to_owned(),
            self.rule.clone().map_or(Value::Null, Value::String),
        );
        data.insert(
            "reason".to_owned(),
            self.reason.clone().map_or(Value::Null, Value::String),
        );
        if let Decision::Approve {
            approver_group,
            grant_ttl_seconds,
            approvers,
        } = &self.action
        {
            data.insert("approverGroup".to_owned(), approver_group.clone().into());
            data.insert(
                "grantTtlSeconds".to_owned(),
                grant_ttl_seconds.map_or(Value::Null, Value::from),
            );
            if *approvers > 1 {
                data.insert("approvers".to_owned(), (*approvers).into());
            }
        }
        Value::Object(data)
    }

    /// The JSON-RPC error answering a refused message (`None` when it is allowed). `id` is the
    /// message's; for a notification it is `None` and the error has `"id": null`.
    pub fn error_response(&self, id: Option<&Value>) -> Option<Vec<u8>> {
        if self.is_allowed() {
            return None;
        }
        Some(jsonrpc::error_response(
            id,
            jsonrpc::GATEWAY_ERROR,
            &self.error_message(),
            Some(self.error_data()),
        ))
    }

    fn allow_protocol() -> Verdict {
        Verdict {
            action: Decision::Allow,
            rule: None,
            reason: Some("protocol message, allowed by default".to_owned()),
        }
    }

    /// Only a request can wait for an approval: a notification or response that would need one
    /// is denied instead, naming the same rule.
    fn fit_to(&self, kind: Kind) -> Verdict {
        match (&self.action, kind) {
            (Decision::Approve { approver_group, .. }, Kind::Notification | Kind::Response) => {
                let reason = format!(
                    "approval from {approver_group} required, but a notification or response cannot wait for one"
                );
                Verdict {
                    action: Decision::Deny {
                        reason: reason.clone(),
                    },
                    rule: self.rule.clone(),
                    reason: Some(reason),
                }
            }
            _ => self.clone(),
        }
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// The rule's position in `rules`, from 1; `None` for errors outside a rule.
    pub position: Option<usize>,
    /// The rule's id, when it has one.
    pub rule: Option<String>,
    pub message: String,
}

impl PolicyError {
    fn global(message: impl Into<String>) -> Self {
        PolicyError {
            position: None,
            rule: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "{}: {}",
                rule_label(p, self.rule.as_deref()),
                self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicyConfig {
    /// Parses a policy document; the error names the rule (position and id) and the line.
    pub fn from_json(json: &[u8]) -> Result<PolicyConfig, PolicyError> {
        serde_json::from_slice(json)
            .map_err(|e| PolicyError::global(format!("invalid policy: {e}")))
    }
}

/// A compiled policy, ready to decide messages.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    index: RuleIndex,
    default: Verdict,
    allow_protocol: bool,
    filter_lists: bool,
    batch_mode: BatchMode,
    protocol_versions: Option<Vec<String>>,
}

impl Policy {
    /// Compiles a policy, or returns its first error.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        Policy::compile_all(config).map_err(|mut errors| {
            if errors.is_empty() {
                PolicyError::global("invalid policy")
            } else {
                errors.swap_remove(0)
            }
        })
    }

    /// Compiles a policy, or returns every error found (for `tollgate policy check`).
    pub fn compile_all(config: &PolicyConfig) -> Result<Policy, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let default = match verdict_of(None, &config.default_action) {
            Ok(v) => v,
            Err(e) => {
                errors.push(PolicyError::global(format!("defaultAction: {e}")));
                Verdict::allow_protocol()
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(config.rules.len());
        // Where each compiled rule stands in `config.rules` (rules that failed are skipped).
        let mut positions: Vec<usize> = Vec::with_capacity(config.rules.len());
        for (i, rc) in config.rules.iter().enumerate() {
            let position = i + 1;
            let err = |message: String| PolicyError {
                position: Some(position),
                rule: (!rc.id.is_empty()).then(|| rc.id.clone()),
                message,
            };
            if rc.id.trim().is_empty() {
                errors.push(err("empty id".to_owned()));
            } else if let Some(first) = config.rules.iter().take(i).position(|r| r.id == rc.id) {
                errors.push(err(format!(
                    "duplicate id, first used by rule {}",
                    first + 1
                )));
            }
            let action = ActionConfig {
                action: rc.action,
                reason: rc.reason.clone(),
                approver_group: rc.approver_group.clone(),
                grant_ttl_seconds: rc.grant_ttl_seconds,
                approvers: rc.approvers,
            };
            let compiled = verdict_of(Some(&rc.id), &action).and_then(|v| Rule::compile(rc, v));
            let rule = match compiled {
                Ok(rule) => rule,
                Err(e) => {
                    errors.push(err(e));
                    continue;
                }
            };
            if let Some((earlier, at)) =
                rules.iter().zip(&positions).find(|(r, _)| r.shadows(&rule))
            {
                errors.push(err(format!(
                    "unreachable: {} already matches every message this rule matches",
                    rule_label(*at, Some(&earlier.id))
                )));
                continue;
            }
            rules.push(rule);
            positions.push(position);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            index: RuleIndex::build(&rules),
            rules,
            default,
            allow_protocol: config.allow_protocol,
            filter_lists: config.filter_lists,
            batch_mode: config.batch_mode,
            protocol_versions: config.protocol_versions.clone(),
        })
    }

    /// Parses and compiles a policy document.
    pub fn from_json(json: &[u8]) -> Result<Policy, PolicyError> {
        Policy::compile(&PolicyConfig::from_json(json)?)
    }

    /// Every group an `approve` rule (or the default) names: who may see approval requests.
    pub fn approver_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self
            .rules
            .iter()
            .map(|rule| &rule.verdict)
            .chain(std::iter::once(&self.default))
            .filter_map(|verdict| match &verdict.action {
                Decision::Approve { approver_group, .. } => Some(approver_group.clone()),
                _ => None,
            })
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn filter_lists(&self) -> bool {
        self.filter_lists
    }

    pub fn batch_mode(&self) -> BatchMode {
        self.batch_mode
    }

    /// What a message that no rule matches gets (protocol plumbing aside).
    pub fn default_verdict(&self) -> &Verdict {
        &self.default
    }

    pub fn allows_protocol(&self) -> bool {
        self.allow_protocol
    }

    /// The revisions this deployment serves; `None`: every one.
    pub fn protocol_versions(&self) -> Option<&[String]> {
        self.protocol_versions.as_deref()
    }

    /// Whether a request speaking `version` may pass at all.
    pub fn serves_version(&self, version: &str) -> bool {
        self.protocol_versions
            .as_ref()
            .is_none_or(|versions| versions.iter().any(|v| v == version))
    }

    /// Decides one message: the first rule that matches, else the default.
    pub fn decide(&self, message: &Message, ctx: &CallContext<'_>) -> Verdict {
        let call = Call::new(
            message.method.as_deref(),
            message.target(),
            message.params.as_ref(),
        );
        match self.candidates(&call).find(|r| r.matches(&call, ctx)) {
            Some(rule) => rule.verdict.fit_to(message.kind),
            None if self.allow_protocol && is_protocol(message) => Verdict::allow_protocol(),
            None => self.default.fit_to(message.kind),
        }
    }
}

impl Policy {
    /// Decides a request that carries no JSON-RPC message: `GET` (opens the server's stream)
    /// or `DELETE` (ends a session). Rules see the HTTP method as the method
    /// (`"match": {"method": "GET"}`); when none matches, both are protocol plumbing. A JSON-RPC
    /// message whose method is `"GET"` is decided by [`Policy::decide`] and is no plumbing.
    pub fn decide_bodiless(&self, http_method: &str, ctx: &CallContext<'_>) -> Verdict {
        let call = Call::new(Some(http_method), None, None);
        match self.candidates(&call).find(|r| r.matches(&call, ctx)) {
            Some(rule) => rule.verdict.fit_to(Kind::Request),
            None if self.allow_protocol => Verdict::allow_protocol(),
            None => self.default.fit_to(Kind::Request),
        }
    }

    /// The rules that may match `call`, in order.
    fn candidates<'p>(&'p self, call: &Call<'_>) -> impl Iterator<Item = &'p Rule> + 'p {
        self.index
            .candidates(call.kind, call.target)
            .filter_map(|i| self.rules.get(i))
    }
}

/// Protocol plumbing: notifications, client responses, and the [`PROTOCOL_METHODS`] requests.
pub fn is_protocol(message: &Message) -> bool {
    match message.kind {
        Kind::Notification | Kind::Response => true,
        Kind::Request => message
            .method
            .as_deref()
            .is_some_and(|m| PROTOCOL_METHODS.contains(&m)),
    }
}

fn verdict_of(rule: Option<&str>, a: &ActionConfig) -> Result<Verdict, String> {
    if a.action != ActionKind::Approve {
        if a.approver_group.is_some() {
            return Err(format!(
                "`approverGroup` applies only to `approve`, not `{}`",
                a.action
            ));
        }
        if a.grant_ttl_seconds.is_some() {
            return Err(format!(
                "`grantTtlSeconds` applies only to `approve`, not `{}`",
                a.action
            ));
        }
        if a.approvers.is_some() {
            return Err(format!(
                "`approvers` applies only to `approve`, not `{}`",
                a.action
            ));
        }
    }
    let action = match a.action {
        ActionKind::Allow => Decision::Allow,
        ActionKind::Deny => Decision::Deny {
            reason: a.reason.clone().unwrap_or_else(|| match rule {
                Some(_) => "this call is not allowed".to_owned(),
                None => "no policy rule allows this call".to_owned(),
            }),
        },
        ActionKind::Approve => {
            let group = match a.approver_group.as_deref().map(str::trim) {
                Some(g) if !g.is_empty() => g.to_owned(),
                _ => return Err("`approve` needs an `approverGroup`".to_owned()),
            };
            if a.grant_ttl_seconds == Some(0) {
                return Err(
                    "`grantTtlSeconds` must be positive (leave it out for a single-use grant)"
                        .to_owned(),
                );
            }
            let approvers = a.approvers.unwrap_or(1);
            if !(1..=MAX_APPROVERS).contains(&approvers) {
                return Err(format!(
                    "`approvers` must be between 1 and {MAX_APPROVERS}, not {approvers}"
                ));
            }
            Decision::Approve {
                approver_group: group,
                grant_ttl_seconds: a.grant_ttl_seconds,
                approvers,
            }
        }
    };
    let reason = match &action {
        Decision::Deny { reason } => Some(reason.clone()),
        _ => a.reason.clone(),
    };
    Ok(Verdict {
        action,
        rule: rule.map(str::to_owned),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn index_agrees_with_walking_every_rule() {
        let policy = Policy::from_json(
            json!({"rules": [
                {"id": "exact", "match": {"tool": ["a", "b"], "caller": {"sub": "y"}}, "action": "deny"},
                {"id": "caller", "match": {"caller": {"sub": "x"}}, "action": "allow"},
                {"id": "wild", "match": {"tool": "a*", "resource": "r"}, "action": "allow"},
                {"id": "mixed", "match": {"tool": ["c", "d*"], "prompt": "p"}, "action": "deny"},
                {"id": "method", "match": {"method": ["tools/list", "ping"]}, "action": "allow"},
                {"id": "res", "match": {"resource": ["r", "s"]}, "action": "allow"},
                {"id": "b-again", "match": {"tool": "b", "arguments": "/n > 1"}, "action": "allow"},
                {"id": "any-prompt", "match": {"prompt": "*"}, "action": "deny"}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let methods = [
            "tools/call",
            "resources/read",
            "prompts/get",
            "tools/list",
            "ping",
        ];
        let targets = ["a", "ab", "b", "c", "dd", "p", "r", "s", "zz"];
        for sub in ["x", "y"] {
            let claims: Map<String, Value> = serde_json::from_value(json!({"sub": sub})).unwrap();
            let ctx = CallContext::new(&claims, "/mcp", "");
            for method in methods {
                for target in targets {
                    let params = json!({"name": target, "uri": target, "arguments": {"n": 2}});
                    let m = Message {
                        kind: Kind::Request,
                        id: Some(json!(1)),
                        method: Some(method.to_owned()),
                        params: Some(params),
                    };
                    let call = Call::new(m.method.as_deref(), m.target(), m.params.as_ref());
                    let walked = policy.rules.iter().find(|r| r.matches(&call, &ctx));
                    let decided = policy.decide(&m, &ctx);
                    assert_eq!(
                        decided.rule.as_deref(),
                        walked.map(|r| r.id.as_str()),
                        "{sub} {method} {target}"
                    );
                }
            }
        }
    }
}
