//! `tools/list`, `resources/list` and `prompts/list` answers without the entries this caller
//! could never use, so an agent does not even see them.

use serde_json::Value;

use super::rules::Call;
use super::{CallContext, Decision, Policy};

impl Policy {
    /// The list answer `body` (a JSON-RPC response to `method`) without the entries that the
    /// caller could never use, and, in a 2026-07-28 answer, `cacheScope: "private"`; `None` when
    /// nothing changes, list filtering is off, or `body` is not a successful answer to a list
    /// method.
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
        let result = body.get("result")?;
        let entries = result.get(key)?.as_array()?;
        let keep: Vec<bool> = entries
            .iter()
            .map(|entry| match entry.get(name_key).and_then(Value::as_str) {
                Some(name) => self.could_use(call_method, name, ctx),
                // Not ours to judge: a nameless entry cannot be called anyway.
                None => true,
            })
            .collect();
        // The list depends on who asks, so no shared cache may serve it to another caller
        // (2026-07-28 `cacheScope`; answers of earlier revisions carry no such field).
        let modern = result.get("cacheScope").is_some() || result.get("resultType").is_some();
        let private =
            !modern || result.get("cacheScope").and_then(Value::as_str) == Some("private");
        if keep.iter().all(|k| *k) && private {
            return None;
        }
        let mut out = body.clone();
        if let Some(result) = out.get_mut("result").and_then(Value::as_object_mut) {
            if let Some(Value::Array(items)) = result.get_mut(key) {
                let mut flags = keep.iter();
                items.retain(|_| flags.next().copied().unwrap_or(true));
            }
            if modern {
                result.insert("cacheScope".to_owned(), "private".into());
            }
        }
        Some(out)
    }

    /// Whether some call of `method` on `target` by this caller could be anything but denied.
    pub fn could_use(&self, method: &str, target: &str, ctx: &CallContext<'_>) -> bool {
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::super::{CallContext, Policy};

    #[test]
    fn a_filtered_list_is_private_whatever_the_server_said() {
        let policy = Policy::from_json(
            br#"{"filterLists":true,"rules":[{"id":"reads","match":{"tool":"get_*"},"action":"allow"}]}"#,
        )
        .unwrap();
        let claims = Map::new();
        let ctx = CallContext::new(&claims, "/mcp", "mcp");
        let answer = |tools: serde_json::Value, scope: &str| {
            json!({"jsonrpc": "2.0", "id": 1, "result": {
                "resultType": "complete", "tools": tools, "ttlMs": 60000, "cacheScope": scope
            }})
        };
        let both = json!([{"name": "get_customer"}, {"name": "delete_merchant"}]);
        let out = policy
            .filter_list_response("tools/list", &answer(both, "public"), &ctx)
            .unwrap();
        assert_eq!(out["result"]["cacheScope"], "private");
        assert_eq!(out["result"]["tools"], json!([{"name": "get_customer"}]));
        assert_eq!(out["result"]["ttlMs"], 60000);
        // Nothing removed for this caller: still private, another caller's list differs.
        let reads = json!([{"name": "get_customer"}]);
        let out = policy
            .filter_list_response("tools/list", &answer(reads.clone(), "public"), &ctx)
            .unwrap();
        assert_eq!(out["result"]["cacheScope"], "private");
        assert!(policy
            .filter_list_response("tools/list", &answer(reads, "private"), &ctx)
            .is_none());
        // A 2025 answer gains no field it never had.
        let old =
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "get_customer"}]}});
        assert!(policy
            .filter_list_response("tools/list", &old, &ctx)
            .is_none());
    }
}
