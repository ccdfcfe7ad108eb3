//! Record filters shared by `audit query`, `audit export` and `sessions`.

use serde_json::{Map, Value};

use crate::bundle::Selection;
use crate::clock::{self, Micros};
use crate::store::RECEIVED_AT;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only records whose `sub` is this subject.
    #[arg(long)]
    pub sub: Option<String>,
    /// Only records of this session (`session`, the client's Mcp-Session-Id).
    #[arg(long)]
    pub session: Option<String>,
    /// Only records received at or after this time: RFC 3339, a date, or an age (15m, 2h, 7d).
    #[arg(long, value_parser = clock::parse_cli)]
    pub from: Option<Micros>,
    /// Only records received before this time: RFC 3339, a date, or an age (15m, 2h, 7d).
    #[arg(long, value_parser = clock::parse_cli)]
    pub to: Option<Micros>,
    /// Only records with this decision (allow, deny, approve, ...).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only records with a message whose `target` (tool, resource or prompt name) is this.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only records with a message whose JSON-RPC `method` is this (e.g. tools/call).
    #[arg(long)]
    pub method: Option<String>,
    /// Only records whose `event` is this (e.g. mcp.request); `*` matches any run of
    /// characters (`approval.*`, `*.failed`).
    #[arg(long)]
    pub event: Option<String>,
}

impl FilterArgs {
    /// The part a bundle export can select on.
    pub fn selection(&self) -> Selection {
        Selection {
            from: self.from,
            to: self.to,
            sub: self.sub.clone(),
            session: self.session.clone(),
        }
    }

    /// Whether only the bundle-selectable filters are set.
    pub fn only_selection(&self) -> bool {
        self.decision.is_none()
            && self.tool.is_none()
            && self.method.is_none()
            && self.event.is_none()
    }

    /// The filters given, as recorded with the read.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                out.insert(key.into(), value.into());
            }
        };
        put("sub", self.sub.clone());
        put("session", self.session.clone());
        put("from", self.from.map(clock::format));
        put("to", self.to.map(clock::format));
        put("decision", self.decision.clone());
        put("tool", self.tool.clone());
        put("method", self.method.clone());
        put("event", self.event.clone());
        Value::Object(out)
    }

    pub fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        let differs = |wanted: &Option<String>, name: &str| {
            wanted.as_deref().is_some_and(|w| field(name) != Some(w))
        };
        if differs(&self.sub, "sub")
            || differs(&self.session, "session")
            || self
                .event
                .as_deref()
                .is_some_and(|pattern| !field("event").is_some_and(|e| glob(pattern, e)))
        {
            return false;
        }
        if let Some(decision) = self.decision.as_deref() {
            let top = field("decision") == Some(decision);
            let any_message = messages(record)
                .any(|m| m.get("decision").and_then(Value::as_str) == Some(decision));
            if !top && !any_message {
                return false;
            }
        }
        if self.from.is_some() || self.to.is_some() {
            let Some(time) = field(RECEIVED_AT).and_then(clock::parse) else {
                return false;
            };
            if self.from.is_some_and(|from| time < from) || self.to.is_some_and(|to| time >= to) {
                return false;
            }
        }
        if self.tool.is_none() && self.method.is_none() {
            return true;
        }
        // --tool and --method together must hold for the same message.
        messages(record).any(|message| {
            let field = |name: &str| message.get(name).and_then(Value::as_str);
            self.tool
                .as_deref()
                .is_none_or(|tool| field("target") == Some(tool))
                && self
                    .method
                    .as_deref()
                    .is_none_or(|method| field("method") == Some(method))
        })
    }
}

/// The JSON-RPC messages a request record describes.
pub fn messages(record: &Value) -> impl Iterator<Item = &Value> {
    record
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FilterArgs,
    }

    fn args(argv: &[&str]) -> FilterArgs {
        Cli::parse_from(std::iter::once("query").chain(argv.iter().copied())).args
    }

    fn record() -> Value {
        json!({
            "event": "mcp.request", "sub": "alice@example.com", "decision": "allow",
            "session": "s1", "receivedAt": "2025-01-31T12:00:00.000000Z",
            "messages": [
                {"kind": "request", "id": 1, "method": "tools/call", "target": "get_customer"},
                {"kind": "request", "id": 2, "method": "tools/list"}
            ]
        })
    }

    #[test]
    fn filters_on_subject_event_method_tool_decision_session_and_time() {
        let r = record();
        assert!(args(&[]).matches(&r));
        assert!(args(&["--sub", "alice@example.com"]).matches(&r));
        assert!(!args(&["--sub", "bob@example.com"]).matches(&r));
        assert!(args(&["--event", "mcp.request"]).matches(&r));
        assert!(!args(&["--event", "mcp.response"]).matches(&r));
        assert!(args(&["--event", "mcp.*"]).matches(&r));
        assert!(args(&["--event", "*.request"]).matches(&r));
        assert!(args(&["--event", "*"]).matches(&r));
        assert!(!args(&["--event", "approval.*"]).matches(&r));
        assert!(glob("approval.*", "approval.decided"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("ab*ba", "aba"));
        assert!(args(&["--tool", "get_customer"]).matches(&r));
        assert!(!args(&["--tool", "delete_merchant"]).matches(&r));
        assert!(args(&["--method", "tools/list"]).matches(&r));
        assert!(args(&["--method", "tools/call", "--tool", "get_customer"]).matches(&r));
        // Both must hold for one message: tools/list has no target get_customer.
        assert!(!args(&["--method", "tools/list", "--tool", "get_customer"]).matches(&r));
        assert!(!args(&["--tool", "x"]).matches(&json!({"event": "auth.failed"})));
        assert!(args(&["--decision", "allow"]).matches(&r));
        assert!(!args(&["--decision", "deny"]).matches(&r));
        assert!(args(&["--session", "s1"]).matches(&r));
        assert!(!args(&["--session", "s2"]).matches(&r));
        assert!(args(&["--from", "2025-01-31", "--to", "2025-02-01"]).matches(&r));
        assert!(!args(&["--from", "2025-01-31T12:00:00.000001Z"]).matches(&r));
        assert!(!args(&["--to", "2025-01-31T12:00:00Z"]).matches(&r));
    }
}
