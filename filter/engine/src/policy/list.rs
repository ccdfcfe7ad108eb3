//! `tools/list`, `resources/list` and `prompts/list` answers without the entries this caller
//! could never use, so an agent does not even see them.

use serde_json::Value;

use super::rules::Call;
use super::{CallContext, Decision, Policy};

impl Policy {
    /// The list answer `body` (a JSON-RPC response to `method`) without the entries that the
    /// caller could never use; `None` when nothing is removed, list filtering is off, or `body`
    /// is not a successful answer to a list method.
    ///
    /// An entry is removed when every rule that could match a call to it (for this caller,
    /// route and upstream, whatever the arguments) denies, and the default denies too if no rule
    /// surely matches. Calls needing approval are usable. Resource templates are kept: a rule
    /// glob cannot be tested against a URI template.
    pub fn filter_list_response(
        &self,
        method: &str,
        body: &Value,
        ctx: &CallContext<'_>,
    ) -> Option<Value> {
        if !self.filter_lists {
            return None;
        }
        let (key, name_key, call_method) = match method {
            "tools/list" => ("tools", "name", "tools/call"),
            "resources/list" => ("resources", "uri", "resources/read"),
            "prompts/list" => ("prompts", "name", "prompts/get"),
            _ => return None,
        };
        let entries = body.get("result")?.get(key)?.as_array()?;
        let keep: Vec<bool> = entries
            .iter()
            .map(|entry| match entry.get(name_key).and_then(Value::as_str) {
                Some(name) => self.could_use(call_method, name, ctx),
                // Not ours to judge: a nameless entry cannot be called anyway.
                None => true,
            })
            .collect();
        if keep.iter().all(|k| *k) {
            return None;
        }
        let mut out = body.clone();
        if let Some(Value::Array(items)) = out.get_mut("result").and_then(|r| r.get_mut(key)) {
            let mut flags = keep.iter();
            items.retain(|_| flags.next().copied().unwrap_or(true));
        }
        Some(out)
    }

    /// Whether some call of `method` on `target` by this caller could be anything but denied.
    pub(crate) fn could_use(&self, method: &str, target: &str, ctx: &CallContext<'_>) -> bool {
        let call = Call::new(Some(method), Some(target), None);
        for rule in self.candidates(&call) {
            if !rule.head_matches(&call, ctx) {
                continue;
            }
            let denies = matches!(rule.verdict.action, Decision::Deny { .. });
            if !rule.has_conditions() {
                // This rule decides every such call.
                return !denies;
            }
            if !denies {
                // Some arguments may reach it.
                return true;
            }
            // Some arguments may escape this deny: look further.
        }
        !matches!(self.default.action, Decision::Deny { .. })
    }
}
