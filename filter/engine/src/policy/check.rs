//! `tollgate policy check`: validate a policy and show what it decides for sample calls.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::rules::groups;
use super::{
    ActionKind, BatchMode, CallContext, Decision, Policy, PolicyConfig, PolicyError, Verdict,
};
use crate::jsonrpc::{self, Kind, Message};

/// A sample call: a JSON-RPC body and who sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sample {
    /// Shown in the report; defaults to the sample's position.
    #[serde(default)]
    pub name: Option<String>,
    /// The caller's verified claims (`sub`, `groups`, `iss`, `client_id`, ...).
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// The HTTP path; default `/mcp`.
    #[serde(default)]
    pub route: Option<String>,
    /// The upstream name; default empty.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The JSON-RPC body: one message or a batch.
    pub request: Value,
    /// What the policy should decide (`allow`, `deny`, `approve`): one for every message, or
    /// one per message of a batch. A sample that gets something else fails the check.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// One expected action, or one per message of a batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    One(ActionKind),
    Each(Vec<ActionKind>),
}

/// Parses a samples file: a JSON array of [`Sample`]s. Errors name the sample.
pub fn parse_samples(json: &[u8]) -> Result<Vec<Sample>, String> {
    let items: Vec<Value> =
        serde_json::from_slice(json).map_err(|e| format!("samples must be a JSON array: {e}"))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
            Sample::deserialize(item).map_err(|e| match name {
                Some(name) => format!("sample {} ({name:?}): {e}", i + 1),
                None => format!("sample {}: {e}", i + 1),
            })
        })
        .collect()
}

/// One decided message of a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    /// The sample's name; a batch's messages get ` [i]` after it.
    pub sample: String,
    /// `sub` and groups.
    pub caller: String,
    /// Method, target and arguments, shortened.
    pub call: String,
    /// What the policy decides; `None` when the sample itself is broken (see `error`).
    pub verdict: Option<Verdict>,
    pub error: Option<String>,
    pub expected: Option<ActionKind>,
    /// Allowed on its own, but in a batch that `wholeBatch` mode refuses because another
    /// message in it is refused.
    pub refused_with_batch: bool,
}

impl CheckRow {
    /// Whether the row got what the sample expects (always, when it expects nothing).
    pub fn as_expected(&self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match (&self.expected, &self.verdict) {
            (None, _) => true,
            (Some(want), Some(v)) => kind_of(&v.action) == *want,
            (Some(_), None) => false,
        }
    }
}

fn kind_of(d: &Decision) -> ActionKind {
    match d {
        Decision::Allow => ActionKind::Allow,
        Decision::Deny { .. } => ActionKind::Deny,
        Decision::Approve { .. } => ActionKind::Approve,
    }
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// Whether the policy compiles.
    pub valid: bool,
    /// Every error found; empty when valid.
    pub errors: Vec<PolicyError>,
    pub rules: usize,
    /// What unmatched calls get.
    pub default_action: Option<Verdict>,
    pub allow_protocol: bool,
    pub filter_lists: bool,
    pub batch_mode: BatchMode,
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    /// Valid, and every sample got what it expects: the exit status of `tollgate policy check`.
    pub fn ok(&self) -> bool {
        self.valid && self.rows.iter().all(CheckRow::as_expected)
    }
}

/// Validates `policy_json` and decides each sample with it.
pub fn check(policy_json: &[u8], samples: &[Sample]) -> CheckReport {
    let mut report = CheckReport {
        valid: false,
        errors: Vec::new(),
        rules: 0,
        default_action: None,
        allow_protocol: true,
        filter_lists: false,
        batch_mode: BatchMode::default(),
        rows: Vec::new(),
    };
    let config = match PolicyConfig::from_json(policy_json) {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    report.rules = config.rules.len();
    report.allow_protocol = config.allow_protocol;
    report.filter_lists = config.filter_lists;
    report.batch_mode = config.batch_mode;
    let policy = match Policy::compile_all(&config) {
        Ok(p) => p,
        Err(errors) => {
            report.errors = errors;
            return report;
        }
    };
    report.valid = true;
    report.default_action = Some(policy.default_verdict().clone());
    for (i, sample) in samples.iter().enumerate() {
        report.rows.extend(decide_sample(&policy, i + 1, sample));
    }
    report
}

fn decide_sample(policy: &Policy, position: usize, sample: &Sample) -> Vec<CheckRow> {
    let name = sample
        .name
        .clone()
        .unwrap_or_else(|| format!("sample {position}"));
    let caller = describe_caller(&sample.claims);
    let route = sample.route.as_deref().unwrap_or("/mcp");
    let upstream = sample.upstream.as_deref().unwrap_or("");
    let ctx = CallContext::new(&sample.claims, route, upstream);
    let broken = |call: String, error: String| CheckRow {
        sample: name.clone(),
        caller: caller.clone(),
        call,
        verdict: None,
        error: Some(error),
        expected: None,
        refused_with_batch: false,
    };
    let bytes = sample.request.to_string().into_bytes();
    let body = match jsonrpc::parse(&bytes) {
        Ok(body) => body,
        Err(e) => {
            return vec![broken(
                shorten(&sample.request.to_string(), 50),
                e.message(),
            )]
        }
    };
    let messages = body.messages();
    let batch = matches!(body, jsonrpc::Body::Batch(_));
    let expected: Vec<Option<ActionKind>> = match &sample.expect {
        None => vec![None; messages.len()],
        Some(Expect::One(k)) => vec![Some(*k); messages.len()],
        Some(Expect::Each(ks)) if ks.len() == messages.len() => {
            ks.iter().copied().map(Some).collect()
        }
        Some(Expect::Each(ks)) => {
            return vec![broken(
                format!("batch of {}", messages.len()),
                format!(
                    "`expect` lists {} actions for {} messages",
                    ks.len(),
                    messages.len()
                ),
            )]
        }
    };
    let decision = policy.decide_batch(messages, &ctx);
    let batch_refused = batch && decision.mode == BatchMode::WholeBatch && !decision.all_allowed();
    messages
        .iter()
        .zip(decision.verdicts)
        .zip(expected)
        .enumerate()
        .map(|(i, ((m, verdict), expected))| CheckRow {
            sample: if batch {
                format!("{name} [{i}]")
            } else {
                name.clone()
            },
            caller: caller.clone(),
            call: describe_call(m),
            refused_with_batch: batch_refused && verdict.is_allowed(),
            verdict: Some(verdict),
            error: None,
            expected,
        })
        .collect()
}

fn describe_caller(claims: &Map<String, Value>) -> String {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("(no sub)");
    let groups: Vec<&str> = groups(claims).collect();
    if groups.is_empty() {
        sub.to_owned()
    } else {
        format!("{sub} [{}]", groups.join(","))
    }
}

fn describe_call(m: &Message) -> String {
    match m.kind {
        Kind::Response => format!(
            "response to id {}",
            m.id.as_ref().map_or("null".to_owned(), Value::to_string)
        ),
        _ => {
            let mut out = m.method.clone().unwrap_or_default();
            if m.kind == Kind::Notification {
                out.push_str(" (notification)");
            }
            if let Some(target) = m.target() {
                out.push(' ');
                out.push_str(target);
            }
            if let Some(args) = m.arguments() {
                out.push(' ');
                out.push_str(&args.to_string());
            }
            shorten(&out, 50)
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn describe_decision(v: &Verdict) -> String {
    match &v.action {
        Decision::Allow => "allow".to_owned(),
        Decision::Deny { .. } => "deny".to_owned(),
        Decision::Approve {
            approver_group,
            grant_ttl_seconds,
            approvers,
        } => {
            let lasts = grant_ttl_seconds.map_or("once".to_owned(), |ttl| format!("{ttl}s"));
            let quorum = if *approvers > 1 {
                format!(", {approvers} approvers")
            } else {
                String::new()
            };
            format!("approve ({approver_group}, {lasts}{quorum})")
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid {
            let n = self.errors.len();
            writeln!(
                f,
                "policy is INVALID ({n} error{}):",
                if n == 1 { "" } else { "s" }
            )?;
            for e in &self.errors {
                writeln!(f, "  {e}")?;
            }
            return Ok(());
        }
        let default = self
            .default_action
            .as_ref()
            .map_or("deny".to_owned(), |v| match &v.reason {
                Some(reason) => format!("{} ({reason})", describe_decision(v)),
                None => describe_decision(v),
            });
        writeln!(
            f,
            "policy is valid: {} rule{}; no rule matching: {default}; protocol plumbing: {}; batches: {}; list filtering: {}",
            self.rules,
            if self.rules == 1 { "" } else { "s" },
            if self.allow_protocol { "allowed" } else { "default action" },
            match self.batch_mode {
                BatchMode::WholeBatch => "refused whole on any refusal",
                BatchMode::PerMessage => "decided per message",
            },
            if self.filter_lists { "on" } else { "off" },
        )?;
        if self.rows.is_empty() {
            return Ok(());
        }
        let with_expect = self
            .rows
            .iter()
            .any(|r| r.expected.is_some() || r.error.is_some());
        let mut header = vec!["SAMPLE", "CALLER", "CALL", "DECISION", "RULE", "REASON"];
        if with_expect {
            header.push("CHECK");
        }
        let table: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let (decision, rule, reason) = match (&r.verdict, &r.error) {
                    (Some(v), _) if r.refused_with_batch => (
                        format!("{} (batch refused)", describe_decision(v)),
                        v.rule.clone().unwrap_or_else(|| "(default)".to_owned()),
                        "another message of the batch is refused".to_owned(),
                    ),
                    (Some(v), _) => (
                        describe_decision(v),
                        v.rule.clone().unwrap_or_else(|| "(default)".to_owned()),
                        shorten(v.reason.as_deref().unwrap_or("-"), 50),
                    ),
                    (None, error) => (
                        "error".to_owned(),
                        "-".to_owned(),
                        shorten(error.as_deref().unwrap_or("-"), 50),
                    ),
                };
                let mut row = vec![
                    shorten(&r.sample, 36),
                    shorten(&r.caller, 30),
                    r.call.clone(),
                    decision,
                    rule,
                    reason,
                ];
                if with_expect {
                    row.push(match (r.as_expected(), r.expected) {
                        (true, Some(_)) => "ok".to_owned(),
                        (true, None) => "-".to_owned(),
                        (false, Some(want)) => format!("FAIL: expected {want}"),
                        (false, None) => "FAIL".to_owned(),
                    });
                }
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &table {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        writeln!(f)?;
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            let last = cells.len().saturating_sub(1);
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    writeln!(f, "{cell}")?;
                } else {
                    write!(
                        f,
                        "{cell}{}  ",
                        " ".repeat(w.saturating_sub(cell.chars().count()))
                    )?;
                }
            }
            Ok(())
        };
        line(f, &header)?;
        for row in &table {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(f, &cells)?;
        }
        if with_expect {
            let failed = self.rows.iter().filter(|r| !r.as_expected()).count();
            writeln!(f)?;
            match failed {
                0 => writeln!(f, "{} decisions, all as expected", self.rows.len())?,
                n => writeln!(f, "{} decisions, {n} NOT as expected", self.rows.len())?,
            }
        }
        Ok(())
    }
}
