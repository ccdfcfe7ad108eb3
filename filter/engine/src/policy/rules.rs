//! Compiled rules: every glob, regex and pointer built once, matching in the order of cost.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::args::{loose_eq, Condition, Root};
use super::config::{CallerMatch, MatchConfig, Patterns, RuleConfig};
use super::glob::{any_matches, covers_all, Glob};
use super::{CallContext, Verdict};

/// The part of a message that rules look at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'m> {
    pub(crate) method: Option<&'m str>,
    /// What `target` names, from the method; worked out once per message, not once per rule.
    pub(crate) kind: Option<TargetKind>,
    pub(crate) target: Option<&'m str>,
    pub(crate) params: Option<&'m Value>,
}

impl<'m> Call<'m> {
    pub(crate) fn new(
        method: Option<&'m str>,
        target: Option<&'m str>,
        params: Option<&'m Value>,
    ) -> Self {
        Call {
            method,
            kind: method.and_then(TargetKind::of),
            target,
            params,
        }
    }
}

/// How a rule tests one kind of target, for the [`super::index::RuleIndex`].
pub(crate) enum TargetUse<'r> {
    /// No test for this kind: the rule never matches it.
    None,
    /// Exactly these names.
    Literals(Vec<&'r str>),
    /// At least one wildcard glob.
    Wildcard,
}

/// What a method's target is, for the methods that have one (as in `Message::target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Tool,
    Resource,
    Prompt,
}

impl TargetKind {
    pub(crate) fn of(method: &str) -> Option<TargetKind> {
        match method {
            "tools/call" => Some(TargetKind::Tool),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Some(TargetKind::Resource)
            }
            "prompts/get" => Some(TargetKind::Prompt),
            _ => None,
        }
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            TargetKind::Tool => &["tools/call"],
            TargetKind::Resource => &[
                "resources/read",
                "resources/subscribe",
                "resources/unsubscribe",
            ],
            TargetKind::Prompt => &["prompts/get"],
        }
    }

    fn field(self) -> &'static str {
        match self {
            TargetKind::Tool => "tool",
            TargetKind::Resource => "resource",
            TargetKind::Prompt => "prompt",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Targets {
    tool: Option<Vec<Glob>>,
    resource: Option<Vec<Glob>>,
    prompt: Option<Vec<Glob>>,
}

impl Targets {
    fn get(&self, kind: TargetKind) -> Option<&Vec<Glob>> {
        match kind {
            TargetKind::Tool => self.tool.as_ref(),
            TargetKind::Resource => self.resource.as_ref(),
            TargetKind::Prompt => self.prompt.as_ref(),
        }
    }

    fn kinds(&self) -> impl Iterator<Item = TargetKind> + '_ {
        [TargetKind::Tool, TargetKind::Resource, TargetKind::Prompt]
            .into_iter()
            .filter(|k| self.get(*k).is_some())
    }

    fn matches(&self, call: &Call<'_>) -> bool {
        let Some(kind) = call.method.and_then(TargetKind::of) else {
            return false;
        };
        match (self.get(kind), call.target) {
            (Some(globs), Some(target)) => any_matches(globs, target),
            _ => false,
        }
    }

    fn covers(&self, other: &Targets) -> bool {
        other.kinds().all(|k| match (self.get(k), other.get(k)) {
            (Some(a), Some(b)) => covers_all(a, b),
            _ => false,
        })
    }
}

#[derive(Debug, Clone)]
enum ClaimTest {
    Glob(Glob),
    Equals(Value),
}

impl ClaimTest {
    fn matches(&self, value: &Value) -> bool {
        match self {
            ClaimTest::Glob(g) => scalar_text(value).is_some_and(|t| g.matches(&t)),
            ClaimTest::Equals(want) => loose_eq(value, want),
        }
    }

    fn covers(&self, other: &ClaimTest) -> bool {
        match (self, other) {
            (ClaimTest::Glob(a), ClaimTest::Glob(b)) => a.covers(b),
            (ClaimTest::Equals(a), ClaimTest::Equals(b)) => a == b,
            _ => false,
        }
    }
}

fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

#[derive(Debug, Clone, Default)]
struct CallerMatcher {
    sub: Option<Vec<Glob>>,
    groups: Option<Vec<Glob>>,
    iss: Option<Vec<Glob>>,
    client_id: Option<Vec<Glob>>,
    claims: Vec<(String, Vec<ClaimTest>)>,
}

fn str_claim<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c str> {
    claims.get(name).and_then(Value::as_str)
}

/// The caller's groups: the `groups` claim, an array of strings or one string.
pub(crate) fn groups(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let (list, single) = match claims.get("groups") {
        Some(Value::Array(items)) => (Some(items), None),
        Some(Value::String(s)) => (None, Some(s.as_str())),
        _ => (None, None),
    };
    list.into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(single)
}

impl CallerMatcher {
    fn compile(config: &CallerMatch) -> Result<CallerMatcher, String> {
        let mut claims = Vec::new();
        for (name, test) in &config.claims {
            let tests = match test {
                Value::Array(items) if items.is_empty() => {
                    return Err(format!("`caller.claims.{name}` is an empty list"))
                }
                Value::Array(items) => items
                    .iter()
                    .map(|v| claim_test(name, v))
                    .collect::<Result<_, _>>()?,
                v => vec![claim_test(name, v)?],
            };
            claims.push((name.clone(), tests));
        }
        let m = CallerMatcher {
            sub: globs("caller.sub", config.sub.as_ref())?,
            groups: globs("caller.groups", config.groups.as_ref())?,
            iss: globs("caller.iss", config.iss.as_ref())?,
            client_id: globs("caller.clientId", config.client_id.as_ref())?,
            claims,
        };
        if m.sub.is_none()
            && m.groups.is_none()
            && m.iss.is_none()
            && m.client_id.is_none()
            && m.claims.is_empty()
        {
            return Err(
                "`caller` tests nothing: give sub, groups, iss, clientId or claims".to_owned(),
            );
        }
        Ok(m)
    }

    fn matches(&self, claims: &Map<String, Value>) -> bool {
        let one = |globs: &Option<Vec<Glob>>, value: Option<&str>| match globs {
            None => true,
            Some(g) => value.is_some_and(|v| any_matches(g, v)),
        };
        one(&self.sub, str_claim(claims, "sub"))
            && one(&self.iss, str_claim(claims, "iss"))
            && one(
                &self.client_id,
                str_claim(claims, "client_id").or_else(|| str_claim(claims, "azp")),
            )
            && self
                .groups
                .as_ref()
                .is_none_or(|g| groups(claims).any(|grp| any_matches(g, grp)))
            && self
                .claims
                .iter()
                .all(|(name, tests)| match claims.get(name) {
                    Some(Value::Array(items)) => {
                        items.iter().any(|v| tests.iter().any(|t| t.matches(v)))
                    }
                    Some(v) => tests.iter().any(|t| t.matches(v)),
                    None => false,
                })
    }

    fn covers(&self, other: &CallerMatcher) -> bool {
        opt_covers(&self.sub, &other.sub)
            && opt_covers(&self.groups, &other.groups)
            && opt_covers(&self.iss, &other.iss)
            && opt_covers(&self.client_id, &other.client_id)
            && self.claims.iter().all(|(name, tests)| {
                other
                    .claims
                    .iter()
                    .find(|(n, _)| n == name)
                    .is_some_and(|(_, theirs)| {
                        theirs.iter().all(|o| tests.iter().any(|t| t.covers(o)))
                    })
            })
    }
}

fn claim_test(name: &str, v: &Value) -> Result<ClaimTest, String> {
    match v {
        Value::String(s) => Glob::new(s)
            .map(ClaimTest::Glob)
            .map_err(|e| format!("bad glob {s:?} in `caller.claims.{name}`: {e}")),
        Value::Number(_) | Value::Bool(_) => Ok(ClaimTest::Equals(v.clone())),
        _ => Err(format!(
            "`caller.claims.{name}` must be a string, number, boolean or a list of them"
        )),
    }
}

fn opt_covers(general: &Option<Vec<Glob>>, specific: &Option<Vec<Glob>>) -> bool {
    match (general, specific) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(g), Some(s)) => covers_all(g, s),
    }
}

fn globs(field: &str, patterns: Option<&Patterns>) -> Result<Option<Vec<Glob>>, String> {
    let Some(Patterns(list)) = patterns else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(format!("`{field}` is an empty list: it would never match"));
    }
    list.iter()
        .map(|p| Glob::new(p).map_err(|e| format!("bad glob {p:?} in `{field}`: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) verdict: Verdict,
    methods: Option<Vec<Glob>>,
    /// `methods`, or the methods the targets imply: for shadowing checks only.
    effective_methods: Option<Vec<Glob>>,
    targets: Option<Targets>,
    route: Option<Vec<Glob>>,
    upstream: Option<Vec<Glob>>,
    protocol_version: Option<Vec<Glob>>,
    caller: Option<CallerMatcher>,
    conditions: Vec<Condition>,
}

impl Rule {
    pub(crate) fn compile(config: &RuleConfig, verdict: Verdict) -> Result<Rule, String> {
        let m: &MatchConfig = &config.matches;
        let methods = globs("method", m.method.as_ref())?;
        let targets = Targets {
            tool: globs("tool", m.tool.as_ref())?,
            resource: globs("resource", m.resource.as_ref())?,
            prompt: globs("prompt", m.prompt.as_ref())?,
        };
        let has_targets = targets.kinds().next().is_some();
        if let (Some(methods), true) = (&methods, has_targets) {
            let compatible = targets
                .kinds()
                .any(|k| k.methods().iter().any(|name| any_matches(methods, name)));
            if !compatible {
                let fields: Vec<&str> = targets.kinds().map(TargetKind::field).collect();
                return Err(format!(
                    "can never match: `{}` applies only to {}, which `method` excludes",
                    fields.join("`/`"),
                    targets
                        .kinds()
                        .flat_map(|k| k.methods().iter().copied())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let effective_methods = match (&methods, has_targets) {
            (Some(m), _) => Some(m.clone()),
            (None, true) => Some(
                targets
                    .kinds()
                    .flat_map(|k| k.methods().iter())
                    .map(|name| Glob::new(name))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (None, false) => None,
        };
        let mut conditions = Vec::new();
        for (root, list) in [(Root::Arguments, &m.arguments), (Root::Params, &m.params)] {
            for c in list {
                conditions.push(Condition::compile(root, c)?);
            }
        }
        let caller = m.caller.as_ref().map(CallerMatcher::compile).transpose()?;
        let route = globs("route", m.route.as_ref())?;
        let upstream = globs("upstream", m.upstream.as_ref())?;
        let protocol_version = globs("protocolVersion", m.protocol_version.as_ref())?;
        if methods.is_none()
            && !has_targets
            && conditions.is_empty()
            && caller.is_none()
            && route.is_none()
            && upstream.is_none()
            && protocol_version.is_none()
        {
            return Err(
                "empty match: a rule must test something (to match every method, write \"method\": \"*\")"
                    .to_owned(),
            );
        }
        Ok(Rule {
            id: config.id.clone(),
            verdict,
            methods,
            effective_methods,
            targets: has_targets.then_some(targets),
            route,
            upstream,
            protocol_version,
            caller,
            conditions,
        })
    }

    /// Every test but the argument conditions, cheapest first.
    pub(crate) fn head_matches(&self, call: &Call<'_>, ctx: &CallContext<'_>) -> bool {
        if let Some(methods) = &self.methods {
            match call.method {
                Some(m) if any_matches(methods, m) => {}
                _ => return false,
            }
        }
        if let Some(targets) = &self.targets {
            if !targets.matches(call) {
                return false;
            }
        }
        if let Some(route) = &self.route {
            let path = ctx
                .route
                .split_once('?')
                .map_or(ctx.route, |(path, _)| path);
            if !any_matches(route, path) {
                return false;
            }
        }
        if let Some(upstream) = &self.upstream {
            if !any_matches(upstream, ctx.upstream) {
                return false;
            }
        }
        if let Some(versions) = &self.protocol_version {
            if !any_matches(versions, ctx.protocol_version) {
                return false;
            }
        }
        self.caller.as_ref().is_none_or(|c| c.matches(ctx.claims))
    }

    pub(crate) fn has_targets(&self) -> bool {
        self.targets.is_some()
    }

    pub(crate) fn target_use(&self, kind: TargetKind) -> TargetUse<'_> {
        let Some(globs) = self.targets.as_ref().and_then(|t| t.get(kind)) else {
            return TargetUse::None;
        };
        match globs
            .iter()
            .map(Glob::literal)
            .collect::<Option<Vec<&str>>>()
        {
            Some(names) => TargetUse::Literals(names),
            None => TargetUse::Wildcard,
        }
    }

    pub(crate) fn has_conditions(&self) -> bool {
        !self.conditions.is_empty()
    }

    pub(crate) fn conditions_hold(&self, params: Option<&Value>) -> bool {
        self.conditions.iter().all(|c| c.holds(params))
    }

    pub(crate) fn matches(&self, call: &Call<'_>, ctx: &CallContext<'_>) -> bool {
        self.head_matches(call, ctx) && self.conditions_hold(call.params)
    }

    /// Whether every message `later` matches, `self` matches too (so `later` can never decide
    /// anything). Sound, not complete: it never calls a reachable rule unreachable.
    pub(crate) fn shadows(&self, later: &Rule) -> bool {
        opt_covers(&self.effective_methods, &later.effective_methods)
            && match (&self.targets, &later.targets) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a.covers(b),
            }
            && opt_covers(&self.route, &later.route)
            && opt_covers(&self.upstream, &later.upstream)
            && opt_covers(&self.protocol_version, &later.protocol_version)
            && match (&self.caller, &later.caller) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a.covers(b),
            }
            && self.conditions.iter().all(|mine| {
                later
                    .conditions
                    .iter()
                    .any(|theirs| theirs.root == mine.root && theirs.config == mine.config)
            })
    }
}
