//! The policy as an operator writes it: JSON (or the YAML of an Istio `WasmPlugin`), camelCase,
//! unknown fields refused. [`super::Policy::compile`] turns it into the matcher that runs.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The policy: ordered rules, first match wins, and what happens when none matches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// The rules, in order. The first rule whose `match` holds decides the message.
    #[serde(default, deserialize_with = "rules_with_position")]
    pub rules: Vec<RuleConfig>,
    /// What a message that no rule matches gets, unless it is protocol plumbing and
    /// `allowProtocol` is on. Defaults to deny: a tool, resource, prompt or method nobody wrote a
    /// rule for never reaches the server.
    #[serde(default)]
    pub default_action: ActionConfig,
    /// Whether protocol plumbing that no rule matches is allowed (default `true`): `initialize`,
    /// `ping`, `tools/list`, `resources/list`, `resources/templates/list`, `prompts/list`,
    /// `logging/setLevel`, every notification and every client response. With `false` these get
    /// `defaultAction` too, and the policy must allow them by rule or no client can connect.
    #[serde(default = "yes")]
    pub allow_protocol: bool,
    /// Whether `tools/list`, `resources/list` and `prompts/list` answers lose the entries that
    /// this caller could never use (every rule that could match them denies, or nothing matches
    /// and the default denies). Default `false`.
    #[serde(default)]
    pub filter_lists: bool,
    /// How a JSON-RPC batch with a refused message is answered. Default `wholeBatch`.
    #[serde(default)]
    pub batch_mode: BatchMode,
    /// The protocol revisions this deployment serves, e.g. `["2025-11-25", "2026-07-28"]`; a
    /// request naming another is refused with `UnsupportedProtocolVersion` (-32022). Default:
    /// every revision.
    #[serde(default)]
    pub protocol_versions: Option<Vec<String>>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            rules: Vec::new(),
            default_action: ActionConfig::default(),
            allow_protocol: true,
            filter_lists: false,
            batch_mode: BatchMode::default(),
            protocol_versions: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// How a batch that contains a refused message is handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BatchMode {
    /// One refused message refuses the batch: nothing is forwarded and every request in it gets
    /// an error (the refused ones their own reason, the others the reason of the first refusal).
    #[default]
    WholeBatch,
    /// Each message on its own: the allowed ones are forwarded as a smaller batch and each
    /// refused request gets its own error, added to the server's answer.
    PerMessage,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name: unique, shown to the client in errors and kept in every audit record.
    pub id: String,
    /// Free text for reviewers; not used by the engine.
    #[serde(default)]
    pub description: Option<String>,
    /// What the message must look like for this rule to decide it. Every test given must hold.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// `allow`, `deny` or `approve`.
    pub action: ActionKind,
    /// Why: told to the client on deny and approve, kept in the audit record.
    #[serde(default)]
    pub reason: Option<String>,
    /// `approve` only: the group whose members may approve the call (never the caller).
    #[serde(default)]
    pub approver_group: Option<String>,
    /// `approve` only: how long a grant lets the same call through; absent, a grant is used once.
    #[serde(default)]
    pub grant_ttl_seconds: Option<u64>,
    /// `approve` only: how many different members of the group must approve (a quorum);
    /// absent, one.
    #[serde(default)]
    pub approvers: Option<u32>,
}

/// What the default gives (same fields as a rule's action).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionConfig {
    /// `allow`, `deny` or `approve`.
    pub action: ActionKind,
    /// Why: told to the client on deny and approve.
    #[serde(default)]
    pub reason: Option<String>,
    /// `approve` only: the group whose members may approve.
    #[serde(default)]
    pub approver_group: Option<String>,
    /// `approve` only: grant lifetime in seconds; absent, single use.
    #[serde(default)]
    pub grant_ttl_seconds: Option<u64>,
    /// `approve` only: how many different approvers; absent, one.
    #[serde(default)]
    pub approvers: Option<u32>,
}

impl Default for ActionConfig {
    fn default() -> Self {
        ActionConfig {
            action: ActionKind::Deny,
            reason: Some("no policy rule allows this call".to_owned()),
            approver_group: None,
            grant_ttl_seconds: None,
            approvers: None,
        }
    }
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    Allow,
    Deny,
    Approve,
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActionKind::Allow => "allow",
            ActionKind::Deny => "deny",
            ActionKind::Approve => "approve",
        })
    }
}

/// The tests of a rule. All that are present must hold; a list means "any of".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchConfig {
    /// JSON-RPC method globs, e.g. `"tools/call"` or `["notifications/*", "ping"]`. Client
    /// responses have no method: a rule with `method` never matches them.
    #[serde(default)]
    pub method: Option<Patterns>,
    /// Tool name globs; the rule then matches only `tools/call`.
    #[serde(default)]
    pub tool: Option<Patterns>,
    /// Resource URI globs; the rule then matches only `resources/read`, `resources/subscribe`
    /// and `resources/unsubscribe`. URIs are matched as sent, without normalisation.
    #[serde(default)]
    pub resource: Option<Patterns>,
    /// Prompt name globs; the rule then matches only `prompts/get`.
    #[serde(default)]
    pub prompt: Option<Patterns>,
    /// Tests on `params.arguments` (the tool's or prompt's arguments), by JSON pointer: either
    /// `"/amount > 10000"` or `{"pointer": "/amount", "gt": 10000}`. All must hold.
    #[serde(default, deserialize_with = "one_or_many")]
    pub arguments: Vec<ArgCondition>,
    /// The same tests on the whole `params` object, for methods that have no `arguments`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub params: Vec<ArgCondition>,
    /// Tests on the verified identity's claims.
    #[serde(default)]
    pub caller: Option<CallerMatch>,
    /// HTTP path globs (without the query string), e.g. `"/mcp"`.
    #[serde(default)]
    pub route: Option<Patterns>,
    /// Upstream (Envoy cluster) name globs.
    #[serde(default)]
    pub upstream: Option<Patterns>,
    /// Protocol revision globs, e.g. `"2025-*"`: the revision the request names in its `_meta`
    /// (2026-07-28 and later), its `MCP-Protocol-Version` header, or `initialize`'s
    /// `protocolVersion`; `2025-03-26` when it names none.
    #[serde(default)]
    pub protocol_version: Option<Patterns>,
}

/// Tests on the caller's verified claims. All that are present must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerMatch {
    /// Globs on the `sub` claim.
    #[serde(default)]
    pub sub: Option<Patterns>,
    /// Group globs: the caller is in at least one of them (the `groups` claim, an array of
    /// strings or a single string).
    #[serde(default)]
    pub groups: Option<Patterns>,
    /// Globs on the `iss` claim.
    #[serde(default)]
    pub iss: Option<Patterns>,
    /// Globs on the OAuth client: the `client_id` claim, or `azp` when the token has none.
    #[serde(default)]
    pub client_id: Option<Patterns>,
    /// Any claim by name. A string is a glob, a number or boolean must be equal, a list means
    /// any of; when the claim itself is a list, one element matching is enough.
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
}

/// A test on one value of the arguments (or params), found by JSON pointer (RFC 6901).
///
/// Every test given must hold. A missing value fails every test but `exists: false`.
/// Numeric tests accept numbers and strings that are numbers (`"20000"`), so a number sent as a
/// string cannot slip past; anything else fails them.
///
/// In JSON it is either the short form, a string (see [`ArgCondition::parse_short`]), or an
/// object with these fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArgCondition {
    /// JSON pointer into the arguments: `/amount`, `/customer/id`, `/items/0`; `""` is the
    /// whole object.
    pub pointer: String,
    /// Regular expression (regex-lite syntax) searched in the value (not anchored: write `^…$`
    /// for the whole value). Strings, numbers and booleans are tested by their text; objects and
    /// arrays never match.
    pub regex: Option<String>,
    /// The value equals this JSON value (a number also equals the same number sent as a string).
    pub equals: Option<Value>,
    /// Numerically greater than.
    pub gt: Option<f64>,
    /// Numerically greater than or equal.
    pub gte: Option<f64>,
    /// Numerically less than.
    pub lt: Option<f64>,
    /// Numerically less than or equal.
    pub lte: Option<f64>,
    /// `true`: the value is present; `false`: it is absent (then no other test may be given).
    pub exists: Option<bool>,
}

impl ArgCondition {
    /// Parses the short form `POINTER OP VALUE`: `/amount > 10000`, `/amount <= 10000`,
    /// `/currency == "EUR"` (JSON value), `/query =~ (?i)drop\s+table` (regex to the end).
    pub fn parse_short(text: &str) -> Result<ArgCondition, String> {
        let text = text.trim();
        let bad = |why: &str| format!("bad condition {text:?}: {why}");
        let (pointer, rest) = text
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `POINTER OP VALUE`, e.g. `/amount > 10000`"))?;
        let rest = rest.trim_start();
        let op_len = rest
            .find(|c: char| !matches!(c, '<' | '>' | '=' | '~' | '!'))
            .unwrap_or(rest.len());
        let (op, value) = rest.split_at(op_len);
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("missing value after the operator"));
        }
        let number = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| bad(&format!("`{op}` needs a number, not {value:?}")))
        };
        let mut cond = ArgCondition {
            pointer: pointer.to_owned(),
            ..ArgCondition::default()
        };
        match op {
            ">" => cond.gt = Some(number()?),
            ">=" => cond.gte = Some(number()?),
            "<" => cond.lt = Some(number()?),
            "<=" => cond.lte = Some(number()?),
            "==" => {
                cond.equals = Some(serde_json::from_str(value).map_err(|_| {
                    bad("the value after `==` must be JSON (quote strings: \"EUR\")")
                })?)
            }
            "=~" => cond.regex = Some(value.to_owned()),
            _ => {
                return Err(bad(&format!(
                    "unknown operator {op:?} (use >, >=, <, <=, == or =~)"
                )))
            }
        }
        Ok(cond)
    }
}

// The short form is a string, the long form an object: a visitor keeps serde's own messages
// (unknown field, wrong type) for the object instead of "did not match any variant".
struct ArgConditionVisitor;

impl<'de> Visitor<'de> for ArgConditionVisitor {
    type Value = ArgCondition;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a condition: \"/pointer > 10\" or {\"pointer\": ..., \"gt\": ...}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgCondition, E> {
        ArgCondition::parse_short(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ArgCondition, A::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Long {
            pointer: String,
            #[serde(default)]
            regex: Option<String>,
            #[serde(default)]
            equals: Option<Value>,
            #[serde(default)]
            gt: Option<f64>,
            #[serde(default)]
            gte: Option<f64>,
            #[serde(default)]
            lt: Option<f64>,
            #[serde(default)]
            lte: Option<f64>,
            #[serde(default)]
            exists: Option<bool>,
        }
        let l = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(ArgCondition {
            pointer: l.pointer,
            regex: l.regex,
            equals: l.equals,
            gt: l.gt,
            gte: l.gte,
            lt: l.lt,
            lte: l.lte,
            exists: l.exists,
        })
    }
}

impl<'de> Deserialize<'de> for ArgCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ArgConditionVisitor)
    }
}

// Each of these is a JSON object and nothing else: serde's derive would also take a list of
// values by position (`"match": ["delete_merchant"]` would become a method test). The derive
// (`remote = "Self"`) provides the inherent `deserialize` used once an object is seen.
macro_rules! object_only {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$t, A::Error> {
                        <$t>::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(V)
            }
        }
    )*};
}

object_only! {
    PolicyConfig => "a policy object",
    RuleConfig => "a rule object",
    ActionConfig => "an action object",
    MatchConfig => "a match object",
    CallerMatch => "a caller object",
}

/// One glob or a list of globs (any of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(pub Vec<String>);

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Patterns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a glob string or a list of glob strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Patterns, E> {
                Ok(Patterns(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Patterns, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Patterns(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `arguments` and `params`: one condition or a list.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ArgCondition>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<ArgCondition>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a condition or a list of conditions")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            ArgConditionVisitor.visit_str(v).map(|c| vec![c])
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ArgConditionVisitor.visit_map(map).map(|c| vec![c])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(c) = seq.next_element::<ArgCondition>()? {
                out.push(c);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Deserializes the rules one by one so that an error names the rule (its position from 1, and
/// id).
fn rules_with_position<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RuleConfig>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<RuleConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of rules")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut rules = Vec::new();
            while let Some(item) = seq.next_element::<Value>()? {
                let label = rule_label(rules.len() + 1, item.get("id").and_then(Value::as_str));
                let rule = from_value::<RuleConfig>(item)
                    .map_err(|e| de::Error::custom(format!("{label}: {e}")))?;
                rules.push(rule);
            }
            Ok(rules)
        }
    }
    d.deserialize_seq(V)
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    T::deserialize(v)
}

/// `rule 3 ("refund-large")`, or `rule 3` when the id is unknown.
pub(crate) fn rule_label(position: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("rule {position} ({id:?})"),
        None => format!("rule {position}"),
    }
}
