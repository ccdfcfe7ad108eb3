//! The policy engine, table-driven: decisions, compile errors, batches, list filtering, checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tollgate_engine::jsonrpc::{self, Body, Message};
use tollgate_engine::policy::{
    check, BatchMode, BatchPlan, CallContext, Decision, Policy, PolicyConfig, Sample, Verdict,
};

fn message(v: Value) -> Message {
    match jsonrpc::parse(v.to_string().as_bytes()) {
        Ok(Body::Single(m)) => m,
        other => panic!("not a single message: {other:?}"),
    }
}

fn batch(v: &Value) -> Vec<Message> {
    match jsonrpc::parse(v.to_string().as_bytes()) {
        Ok(Body::Batch(ms)) => ms,
        other => panic!("not a batch: {other:?}"),
    }
}

fn call(tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

fn policy(v: Value) -> Policy {
    Policy::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn compile_err(v: Value) -> String {
    match Policy::from_json(v.to_string().as_bytes()) {
        Ok(_) => panic!("policy compiled: {v}"),
        Err(e) => e.to_string(),
    }
}

fn engine_policy() -> Policy {
    policy(json!({
        "rules": [
            {"id": "block-deletes", "match": {"tool": "delete_*"}, "action": "deny", "reason": "no deletes"},
            {"id": "admins", "match": {"method": "tools/call", "caller": {"groups": "payments-admins"}}, "action": "allow"},
            {"id": "big-refund", "match": {"tool": "refund_payment", "arguments": "/amount > 10000"},
             "action": "approve", "approverGroup": "payments-approvers", "grantTtlSeconds": 600, "reason": "large refund"},
            {"id": "small-refund", "match": {"tool": "refund_payment", "arguments": [{"pointer": "/amount", "lte": 10000}]}, "action": "allow"},
            {"id": "sql-guard", "match": {"tool": "run_query", "arguments": {"pointer": "/sql", "regex": "(?i)\\b(drop|delete|truncate)\\b"}},
             "action": "deny", "reason": "destructive SQL"},
            {"id": "queries", "match": {"tool": "run_query"}, "action": "allow"},
            {"id": "eu-only", "match": {"tool": "get_customer", "arguments": "/region == \"eu\""}, "action": "allow"},
            {"id": "ci-release", "match": {"tool": "deploy", "caller": {"claims": {"repository": "acme/*", "workflow": ["release.yml", "hotfix.yml"]}}}, "action": "allow"},
            {"id": "alice", "match": {"tool": "secret_tool", "caller": {"sub": "alice", "iss": "https://issuer.example.com"}}, "action": "allow"},
            {"id": "cli", "match": {"tool": "cli_tool", "caller": {"clientId": "tollgate-cli"}}, "action": "allow"},
            {"id": "internal", "match": {"tool": "debug_*", "route": "/internal/*"}, "action": "allow"},
            {"id": "staging", "match": {"tool": "reset_*", "upstream": "staging-*"}, "action": "allow"},
            {"id": "no-cancel", "match": {"method": "notifications/cancelled", "caller": {"groups": "no-cancel"}}, "action": "deny"},
            {"id": "docs", "match": {"resource": "file:///docs/*"}, "action": "allow"},
            {"id": "greeting", "match": {"prompt": "greet?"}, "action": "allow"},
            {"id": "roots-approval", "match": {"method": "notifications/roots/list_changed"}, "action": "approve", "approverGroup": "x"},
            {"id": "verified", "match": {"tool": "email_tool", "caller": {"claims": {"email_verified": true}}}, "action": "allow"},
            {"id": "report-size", "match": {"tool": "big_report", "arguments": {"pointer": "/kib", "gte": 1, "lt": 1024}}, "action": "allow"},
            {"id": "forced", "match": {"tool": "flagged", "arguments": {"pointer": "/force", "exists": true}}, "action": "deny", "reason": "no force"},
            {"id": "unforced", "match": {"tool": "flagged", "arguments": {"pointer": "/force", "exists": false}}, "action": "allow"},
            {"id": "prompt-completions", "match": {"method": "completion/complete", "params": "/ref/type == \"ref/prompt\""}, "action": "allow"},
            {"id": "nested", "match": {"tool": "transfer", "arguments": "/to/iban =~ ^DE"}, "action": "allow"}
        ]
    }))
}

/// (case, claims, route, upstream, message, decision, rule)
type DecideCase = (
    &'static str,
    Value,
    &'static str,
    &'static str,
    Value,
    &'static str,
    Option<&'static str>,
);

#[test]
fn decides_messages() {
    let p = engine_policy();
    let alice =
        json!({"sub": "alice", "iss": "https://issuer.example.com", "groups": ["payments-ops"]});
    let admin = json!({"sub": "root", "groups": ["payments-admins"]});
    let admin_single_group = json!({"sub": "root", "groups": "payments-admins"});
    let ci = |repo: Value, workflow: &str| json!({"sub": "ci", "repository": repo, "workflow": workflow});
    let notif = |method: &str| json!({"jsonrpc": "2.0", "method": method});
    let req = |method: &str, params: Value| json!({"jsonrpc": "2.0", "id": "r", "method": method, "params": params});
    #[rustfmt::skip]
    let cases: Vec<DecideCase> = vec![
        ("eu customer", alice.clone(), "/mcp", "", call("get_customer", json!({"region": "eu"})), "allow", Some("eu-only")),
        ("us customer", alice.clone(), "/mcp", "", call("get_customer", json!({"region": "us"})), "deny", None),
        ("delete beats admin", admin.clone(), "/mcp", "", call("delete_merchant", json!({})), "deny", Some("block-deletes")),
        ("admin refunds anything", admin.clone(), "/mcp", "", call("refund_payment", json!({"amount": 50000})), "allow", Some("admins")),
        ("groups claim as one string", admin_single_group, "/mcp", "", call("refund_payment", json!({"amount": 50000})), "allow", Some("admins")),
        ("refund above", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": 10001})), "approve", Some("big-refund")),
        ("refund at limit", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": 10000})), "allow", Some("small-refund")),
        ("refund float", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": 1e3})), "allow", Some("small-refund")),
        ("refund fraction above", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": 10000.01})), "approve", Some("big-refund")),
        ("refund as string", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": "20000"})), "approve", Some("big-refund")),
        ("refund padded string", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": " 20000 "})), "approve", Some("big-refund")),
        ("refund not a number", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": "lots"})), "deny", None),
        ("refund infinity", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": "inf"})), "deny", None),
        ("refund null", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": null})), "deny", None),
        ("refund missing", alice.clone(), "/mcp", "", call("refund_payment", json!({})), "deny", None),
        ("refund args array", alice.clone(), "/mcp", "", call("refund_payment", json!([20000])), "deny", None),
        ("refund nested amount", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": {"value": 1}})), "deny", None),
        // Larger ones (1e300) are refused before any policy sees them (jsonrpc::strict).
        ("largest exact integer", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": 9007199254740991u64})), "approve", Some("big-refund")),
        ("negative", alice.clone(), "/mcp", "", call("refund_payment", json!({"amount": -5})), "allow", Some("small-refund")),
        ("drop table", alice.clone(), "/mcp", "", call("run_query", json!({"sql": "select 1; DROP table x"})), "deny", Some("sql-guard")),
        ("select", alice.clone(), "/mcp", "", call("run_query", json!({"sql": "select 1"})), "allow", Some("queries")),
        ("sql number", alice.clone(), "/mcp", "", call("run_query", json!({"sql": 5})), "allow", Some("queries")),
        ("sql hidden in array", alice.clone(), "/mcp", "", call("run_query", json!({"sql": ["drop table x"]})), "allow", Some("queries")),
        ("ci release", ci(json!("acme/api"), "release.yml"), "/mcp", "", call("deploy", json!({})), "allow", Some("ci-release")),
        ("ci repo list claim", ci(json!(["other/x", "acme/api"]), "hotfix.yml"), "/mcp", "", call("deploy", json!({})), "allow", Some("ci-release")),
        ("ci wrong workflow", ci(json!("acme/api"), "build.yml"), "/mcp", "", call("deploy", json!({})), "deny", None),
        ("ci wrong repo", ci(json!("evil/api"), "release.yml"), "/mcp", "", call("deploy", json!({})), "deny", None),
        ("ci no claims", json!({"sub": "ci"}), "/mcp", "", call("deploy", json!({})), "deny", None),
        ("sub and iss", alice.clone(), "/mcp", "", call("secret_tool", json!({})), "allow", Some("alice")),
        ("sub, wrong iss", json!({"sub": "alice", "iss": "https://evil"}), "/mcp", "", call("secret_tool", json!({})), "deny", None),
        ("sub not a string", json!({"sub": 7, "iss": "https://issuer.example.com"}), "/mcp", "", call("secret_tool", json!({})), "deny", None),
        ("azp as client", json!({"sub": "x", "azp": "tollgate-cli"}), "/mcp", "", call("cli_tool", json!({})), "allow", Some("cli")),
        ("client_id wins over azp", json!({"sub": "x", "client_id": "other", "azp": "tollgate-cli"}), "/mcp", "", call("cli_tool", json!({})), "deny", None),
        ("internal route with query", alice.clone(), "/internal/x?debug=1", "", call("debug_dump", json!({})), "allow", Some("internal")),
        ("public route", alice.clone(), "/mcp", "", call("debug_dump", json!({})), "deny", None),
        ("query cannot fake route", alice.clone(), "/mcp?/internal/x", "", call("debug_dump", json!({})), "deny", None),
        ("staging upstream", alice.clone(), "/mcp", "staging-payments", call("reset_db", json!({})), "allow", Some("staging")),
        ("prod upstream", alice.clone(), "/mcp", "payments", call("reset_db", json!({})), "deny", None),
        ("cancel by blocked group", json!({"sub": "x", "groups": ["no-cancel"]}), "/mcp", "", notif("notifications/cancelled"), "deny", Some("no-cancel")),
        ("cancel by others", alice.clone(), "/mcp", "", notif("notifications/cancelled"), "allow", None),
        ("approval on a notification", alice.clone(), "/mcp", "", notif("notifications/roots/list_changed"), "deny", Some("roots-approval")),
        ("docs resource", alice.clone(), "/mcp", "", req("resources/read", json!({"uri": "file:///docs/a.md"})), "allow", Some("docs")),
        ("docs subscribe", alice.clone(), "/mcp", "", req("resources/subscribe", json!({"uri": "file:///docs/a.md"})), "allow", Some("docs")),
        ("other resource", alice.clone(), "/mcp", "", req("resources/read", json!({"uri": "file:///etc/passwd"})), "deny", None),
        ("resource uri not a string", alice.clone(), "/mcp", "", req("resources/read", json!({"uri": 5})), "deny", None),
        ("prompt", alice.clone(), "/mcp", "", req("prompts/get", json!({"name": "greet1"})), "allow", Some("greeting")),
        ("prompt too long", alice.clone(), "/mcp", "", req("prompts/get", json!({"name": "greet12"})), "deny", None),
        ("tool name is not a prompt", alice.clone(), "/mcp", "", call("greet1", json!({})), "deny", None),
        ("verified email", json!({"sub": "x", "email_verified": true}), "/mcp", "", call("email_tool", json!({})), "allow", Some("verified")),
        ("unverified email", json!({"sub": "x", "email_verified": false}), "/mcp", "", call("email_tool", json!({})), "deny", None),
        ("email_verified as string", json!({"sub": "x", "email_verified": "true"}), "/mcp", "", call("email_tool", json!({})), "deny", None),
        ("report in range", alice.clone(), "/mcp", "", call("big_report", json!({"kib": 512})), "allow", Some("report-size")),
        ("report too big", alice.clone(), "/mcp", "", call("big_report", json!({"kib": 1024})), "deny", None),
        ("report zero", alice.clone(), "/mcp", "", call("big_report", json!({"kib": 0})), "deny", None),
        ("forced", alice.clone(), "/mcp", "", call("flagged", json!({"force": false})), "deny", Some("forced")),
        ("not forced", alice.clone(), "/mcp", "", call("flagged", json!({})), "allow", Some("unforced")),
        ("no arguments at all", alice.clone(), "/mcp", "", req("tools/call", json!({"name": "flagged"})), "allow", Some("unforced")),
        ("prompt completion", alice.clone(), "/mcp", "", req("completion/complete", json!({"ref": {"type": "ref/prompt", "name": "g"}}),), "allow", Some("prompt-completions")),
        ("resource completion", alice.clone(), "/mcp", "", req("completion/complete", json!({"ref": {"type": "ref/resource"}}),), "deny", None),
        ("nested pointer", alice.clone(), "/mcp", "", call("transfer", json!({"to": {"iban": "DE89"}})), "allow", Some("nested")),
        ("nested pointer miss", alice.clone(), "/mcp", "", call("transfer", json!({"to": "DE89"})), "deny", None),
        ("tools/list", alice.clone(), "/mcp", "", req("tools/list", json!({})), "allow", None),
        ("initialize", json!({}), "/mcp", "", req("initialize", json!({})), "allow", None),
        ("ping without params", json!({}), "/mcp", "", json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}), "allow", None),
        ("client response", alice.clone(), "/mcp", "", json!({"jsonrpc": "2.0", "id": "s1", "result": {}}), "allow", None),
        ("client error response", alice.clone(), "/mcp", "", json!({"jsonrpc": "2.0", "id": "s1", "error": {"code": 1, "message": "x"}}), "allow", None),
        ("call without name", alice.clone(), "/mcp", "", req("tools/call", json!({"arguments": {}})), "deny", None),
        ("call with positional params", alice.clone(), "/mcp", "", req("tools/call", json!(["delete_merchant"])), "deny", None),
        ("name not a string", alice.clone(), "/mcp", "", req("tools/call", json!({"name": ["delete_merchant"]})), "deny", None),
        ("unknown method", alice.clone(), "/mcp", "", req("admin/shutdown", json!({})), "deny", None),
        ("request named like a notification", alice.clone(), "/mcp", "", req("notifications/initialized", json!({})), "deny", None),
        ("unicode tool", alice.clone(), "/mcp", "", call("délete_x", json!({})), "deny", None),
    ];
    for (case, c, route, upstream, msg, want, rule) in cases {
        let c = claims(c);
        let v = p.decide(&message(msg), &CallContext::new(&c, route, upstream));
        assert_eq!(v.action.name(), want, "{case}: {v:?}");
        assert_eq!(v.rule.as_deref(), rule, "{case}: {v:?}");
    }
}

#[test]
fn verdicts_carry_reasons_and_errors_name_the_rule() {
    let p = engine_policy();
    let c = claims(json!({"sub": "alice"}));
    let ctx = CallContext::new(&c, "/mcp", "");
    let deny = p.decide(&message(call("delete_merchant", json!({}))), &ctx);
    assert_eq!(
        deny.action,
        Decision::Deny {
            reason: "no deletes".to_owned()
        }
    );
    assert_eq!(deny.reason.as_deref(), Some("no deletes"));
    let body: Value =
        serde_json::from_slice(&deny.error_response(Some(&json!(7))).unwrap()).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], jsonrpc::GATEWAY_ERROR);
    assert_eq!(
        body["error"]["message"],
        "denied by policy rule \"block-deletes\": no deletes"
    );
    assert_eq!(
        body["error"]["data"],
        json!({"decision": "deny", "rule": "block-deletes", "reason": "no deletes"})
    );

    let approve = p.decide(
        &message(call("refund_payment", json!({"amount": 99999}))),
        &ctx,
    );
    assert_eq!(
        approve.action,
        Decision::Approve {
            approver_group: "payments-approvers".to_owned(),
            grant_ttl_seconds: Some(600),
            approvers: 1,
        }
    );
    let body: Value = serde_json::from_slice(&approve.error_response(None).unwrap()).unwrap();
    assert_eq!(body["id"], Value::Null);
    assert_eq!(body["error"]["data"]["approverGroup"], "payments-approvers");
    assert_eq!(body["error"]["data"]["grantTtlSeconds"], 600);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("approval required from payments-approvers"));

    let default = p.decide(&message(call("nope", json!({}))), &ctx);
    assert_eq!(default.rule, None);
    assert_eq!(
        default.reason.as_deref(),
        Some("no policy rule allows this call")
    );
    assert!(default.error_message().contains("the policy default"));

    let allow = p.decide(&message(call("run_query", json!({"sql": "select"}))), &ctx);
    assert!(allow.error_response(Some(&json!(1))).is_none());
    // Verdicts serialize for audit records and `--json`.
    assert_eq!(
        serde_json::to_value(&approve).unwrap(),
        json!({"action": {"decision": "approve", "approverGroup": "payments-approvers", "grantTtlSeconds": 600},
               "rule": "big-refund", "reason": "large refund"})
    );
}

#[test]
fn defaults_are_safe_and_configurable() {
    let c = claims(json!({"sub": "a"}));
    let ctx = CallContext::new(&c, "/mcp", "");
    let empty = Policy::compile(&PolicyConfig::default()).unwrap();
    assert_eq!(empty.batch_mode(), BatchMode::WholeBatch);
    assert!(!empty.filter_lists());
    let decide = |p: &Policy, m: Value| p.decide(&message(m), &ctx).action.name();
    assert_eq!(decide(&empty, call("anything", json!({}))), "deny");
    assert_eq!(
        decide(
            &empty,
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x"}})
        ),
        "deny"
    );
    assert_eq!(
        decide(
            &empty,
            json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "x"}})
        ),
        "deny"
    );
    assert_eq!(
        decide(
            &empty,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"})
        ),
        "allow"
    );
    assert_eq!(
        decide(
            &empty,
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/templates/list"})
        ),
        "allow"
    );
    assert_eq!(
        decide(
            &empty,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ),
        "allow"
    );

    let strict = policy(json!({"allowProtocol": false, "rules": [
        {"id": "init", "match": {"method": ["initialize", "notifications/initialized"]}, "action": "allow"}
    ]}));
    assert_eq!(
        decide(
            &strict,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"})
        ),
        "allow"
    );
    assert_eq!(
        decide(
            &strict,
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        ),
        "deny"
    );
    assert_eq!(
        decide(
            &strict,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled"})
        ),
        "deny"
    );
    assert_eq!(
        decide(&strict, json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
        "deny"
    );

    let open = policy(json!({"defaultAction": {"action": "allow"}, "rules": [
        {"id": "no-delete", "match": {"tool": "delete_*"}, "action": "deny"}
    ]}));
    assert_eq!(decide(&open, call("x", json!({}))), "allow");
    let v = open.decide(&message(call("delete_x", json!({}))), &ctx);
    assert_eq!(
        v.action,
        Decision::Deny {
            reason: "this call is not allowed".to_owned()
        }
    );

    let approve_all =
        policy(json!({"defaultAction": {"action": "approve", "approverGroup": "ops"}}));
    assert_eq!(decide(&approve_all, call("x", json!({}))), "approve");
    assert_eq!(
        decide(
            &approve_all,
            json!({"jsonrpc": "2.0", "id": 1, "method": "mystery"})
        ),
        "approve"
    );
    // A notification cannot wait for an approval.
    let p = policy(
        json!({"allowProtocol": false, "defaultAction": {"action": "approve", "approverGroup": "ops"}}),
    );
    assert_eq!(
        decide(&p, json!({"jsonrpc": "2.0", "method": "notifications/x"})),
        "deny"
    );
}

#[test]
fn refuses_bad_policies_naming_the_rule() {
    let rule = |m: Value| json!({"id": "r", "match": m, "action": "allow"});
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown top-level field", json!({"rule": []}), "unknown field `rule`"),
        ("unknown rule field", json!({"rules": [{"id": "x", "match": {"tool": "a"}, "action": "allow", "tol": 1}]}), "rule 1 (\"x\"): unknown field `tol`"),
        ("unknown match field", json!({"rules": [{"id": "x", "match": {"tools": "a"}, "action": "allow"}]}), "rule 1 (\"x\"): unknown field `tools`"),
        ("unknown caller field", json!({"rules": [{"id": "x", "match": {"caller": {"group": "a"}}, "action": "allow"}]}), "unknown field `group`"),
        ("unknown condition field", json!({"rules": [{"id": "x", "match": {"arguments": {"pointer": "/a", "greater": 1}}, "action": "allow"}]}), "unknown field `greater`"),
        ("unknown action", json!({"rules": [{"id": "x", "match": {"tool": "a"}, "action": "maybe"}]}), "unknown variant `maybe`"),
        ("match as a list", json!({"rules": [{"id": "x", "match": ["delete_merchant"], "action": "deny"}]}), "rule 1 (\"x\"): invalid type: sequence, expected a match object"),
        ("caller as a list", json!({"rules": [rule(json!({"caller": ["alice"]}))]}), "expected a caller object"),
        ("rule as a list", json!({"rules": [["r", {"tool": "x"}, "allow"]]}), "rule 1: invalid type: sequence, expected a rule object"),
        ("policy as a list", json!([[]]), "expected a policy object"),
        ("missing match", json!({"rules": [{"id": "x", "action": "allow"}]}), "rule 1 (\"x\"): missing field `match`"),
        ("missing id", json!({"rules": [{"match": {"tool": "a"}, "action": "allow"}]}), "rule 1: missing field `id`"),
        ("number as glob", json!({"rules": [rule(json!({"tool": 5}))]}), "a glob string or a list of glob strings"),
        ("unknown batch mode", json!({"batchMode": "some"}), "unknown variant `some`"),
        ("bad glob", json!({"rules": [rule(json!({"tool": "x"})), {"id": "g", "match": {"tool": "delete_["}, "action": "deny"}]}), "rule 2 (\"g\"): bad glob \"delete_[\" in `tool`: unclosed `[`"),
        ("bad route glob", json!({"rules": [rule(json!({"route": "/a\\"}))]}), "bad glob \"/a\\\\\" in `route`"),
        ("bad claim glob", json!({"rules": [rule(json!({"caller": {"claims": {"repo": "[x"}}}))]}), "bad glob \"[x\" in `caller.claims.repo`"),
        ("bad regex", json!({"rules": [rule(json!({"arguments": {"pointer": "/a", "regex": "(unclosed"}}))]}), "rule 1 (\"r\"): bad regex \"(unclosed\""),
        ("bad pointer", json!({"rules": [rule(json!({"arguments": {"pointer": "amount", "gt": 1}}))]}), "bad JSON pointer \"amount\""),
        ("bad pointer escape", json!({"rules": [rule(json!({"arguments": "/a~2 > 1"}))]}), "`~` must be followed by 0 or 1"),
        ("short form operator", json!({"rules": [rule(json!({"arguments": "/amount >> 5"}))]}), "unknown operator \">>\""),
        ("short form number", json!({"rules": [rule(json!({"arguments": "/amount > lots"}))]}), "`>` needs a number"),
        ("short form json", json!({"rules": [rule(json!({"arguments": "/currency == EUR"}))]}), "must be JSON"),
        ("short form shape", json!({"rules": [rule(json!({"arguments": "/amount"}))]}), "expected `POINTER OP VALUE`"),
        ("condition tests nothing", json!({"rules": [rule(json!({"arguments": {"pointer": "/a"}}))]}), "tests nothing"),
        ("exists false and more", json!({"rules": [rule(json!({"arguments": {"pointer": "/a", "exists": false, "gt": 1}}))]}), "`exists: false` cannot be combined"),
        ("empty match", json!({"rules": [rule(json!({}))]}), "rule 1 (\"r\"): empty match"),
        ("empty list", json!({"rules": [rule(json!({"tool": []}))]}), "`tool` is an empty list"),
        ("empty caller", json!({"rules": [rule(json!({"caller": {}}))]}), "`caller` tests nothing"),
        ("claim test object", json!({"rules": [rule(json!({"caller": {"claims": {"a": {"b": 1}}}}))]}), "`caller.claims.a` must be a string, number, boolean"),
        ("method excludes tool", json!({"rules": [rule(json!({"method": "tools/list", "tool": "x"}))]}), "can never match: `tool` applies only to tools/call"),
        ("approve without group", json!({"rules": [{"id": "a", "match": {"tool": "x"}, "action": "approve"}]}), "`approve` needs an `approverGroup`"),
        ("group on deny", json!({"rules": [{"id": "a", "match": {"tool": "x"}, "action": "deny", "approverGroup": "g"}]}), "`approverGroup` applies only to `approve`, not `deny`"),
        ("ttl on allow", json!({"rules": [{"id": "a", "match": {"tool": "x"}, "action": "allow", "grantTtlSeconds": 5}]}), "`grantTtlSeconds` applies only to `approve`"),
        ("zero ttl", json!({"rules": [{"id": "a", "match": {"tool": "x"}, "action": "approve", "approverGroup": "g", "grantTtlSeconds": 0}]}), "must be positive"),
        ("negative ttl", json!({"rules": [{"id": "a", "match": {"tool": "x"}, "action": "approve", "approverGroup": "g", "grantTtlSeconds": -1}]}), "invalid value"),
        ("bad default", json!({"defaultAction": {"action": "approve"}}), "defaultAction: `approve` needs an `approverGroup`"),
        ("duplicate id", json!({"rules": [rule(json!({"tool": "a"})), rule(json!({"tool": "b"}))]}), "rule 2 (\"r\"): duplicate id, first used by rule 1"),
        ("empty id", json!({"rules": [{"id": " ", "match": {"tool": "a"}, "action": "allow"}]}), "empty id"),
        ("after catch-all", json!({"rules": [
            {"id": "all", "match": {"method": "*"}, "action": "deny"},
            {"id": "late", "match": {"tool": "get_customer"}, "action": "allow"}]}),
            "rule 2 (\"late\"): unreachable: rule 1 (\"all\") already matches every message this rule matches"),
        ("identical", json!({"rules": [
            {"id": "a", "match": {"tool": ["x", "y"], "arguments": "/n > 1"}, "action": "deny"},
            {"id": "b", "match": {"arguments": "/n > 1", "tool": ["y", "x"]}, "action": "allow"}]}),
            "rule 2 (\"b\"): unreachable: rule 1 (\"a\")"),
        ("implied method", json!({"rules": [
            {"id": "a", "match": {"tool": "x"}, "action": "deny"},
            {"id": "b", "match": {"method": "tools/call", "tool": "x"}, "action": "allow"}]}),
            "unreachable"),
        ("narrower after broader", json!({"rules": [
            {"id": "deletes", "match": {"tool": "delete_*"}, "action": "deny"},
            {"id": "admin-delete", "match": {"tool": "delete_merchant", "caller": {"groups": ["admins"]}}, "action": "allow"}]}),
            "rule 2 (\"admin-delete\"): unreachable: rule 1 (\"deletes\")"),
        ("group glob covers", json!({"rules": [
            {"id": "a", "match": {"caller": {"groups": "payments-*"}}, "action": "deny"},
            {"id": "b", "match": {"tool": "x", "caller": {"groups": ["payments-ops", "payments-admins"]}}, "action": "allow"}]}),
            "unreachable"),
        ("method glob covers", json!({"rules": [
            {"id": "a", "match": {"method": "tools/*"}, "action": "deny"},
            {"id": "b", "match": {"tool": "x", "route": "/mcp"}, "action": "allow"}]}),
            "unreachable"),
    ];
    for (case, doc, want) in cases {
        let err = compile_err(doc);
        assert!(err.contains(want), "{case}: got {err:?}, want {want:?}");
        assert!(err.starts_with(|c: char| c.is_lowercase()), "{case}: {err}");
    }
}

#[test]
fn reachable_rules_are_not_called_unreachable() {
    // Each pair looks alike but the second rule can still decide something.
    #[rustfmt::skip]
    let pairs: Vec<(Value, Value)> = vec![
        (json!({"tool": "refund", "arguments": "/amount > 10"}), json!({"tool": "refund"})),
        (json!({"tool": "delete_merchant"}), json!({"tool": "delete_*"})),
        (json!({"tool": "x", "caller": {"groups": "a"}}), json!({"tool": "x"})),
        (json!({"tool": "x", "caller": {"groups": "a"}}), json!({"tool": "x", "caller": {"groups": ["a", "b"]}})),
        (json!({"method": "*"}), json!({"caller": {"sub": "alice"}})), // responses have no method
        (json!({"tool": "x"}), json!({"tool": "x", "prompt": "x"})),
        (json!({"tool": "a*"}), json!({"tool": "*a"})),
        (json!({"route": "/mcp"}), json!({"route": "/mcp*"})),
        (json!({"caller": {"claims": {"n": 1}}}), json!({"caller": {"claims": {"n": "1"}}})),
        (json!({"arguments": "/a > 1"}), json!({"arguments": "/a >= 2"})),
        (json!({"params": "/a > 1"}), json!({"arguments": "/a > 1"})),
    ];
    for (first, second) in pairs {
        let doc = json!({"rules": [
            {"id": "first", "match": first, "action": "deny"},
            {"id": "second", "match": second, "action": "allow"}
        ]});
        if let Err(e) = Policy::from_json(doc.to_string().as_bytes()) {
            panic!("{doc}: {e}");
        }
    }
}

#[test]
fn compile_all_reports_every_error_with_positions() {
    let config = PolicyConfig::from_json(
        json!({"rules": [
            {"id": "ok", "match": {"tool": "a"}, "action": "allow"},
            {"id": "glob", "match": {"tool": "["}, "action": "allow"},
            {"id": "regex", "match": {"arguments": {"pointer": "/a", "regex": "("}}, "action": "allow"},
            {"id": "dup", "match": {"tool": "a"}, "action": "deny"}
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let errors = Policy::compile_all(&config).unwrap_err();
    let at: Vec<(Option<usize>, Option<&str>)> = errors
        .iter()
        .map(|e| (e.position, e.rule.as_deref()))
        .collect();
    assert_eq!(
        at,
        vec![
            (Some(2), Some("glob")),
            (Some(3), Some("regex")),
            (Some(4), Some("dup"))
        ]
    );
    assert!(errors[2].message.contains("unreachable"), "{}", errors[2]);
}

#[test]
fn policy_json_errors_carry_the_line() {
    let text = b"{\n  \"rules\": [\n    {\"id\": \"a\", \"match\": {\"tool\": \"x\"}, \"action\": \"allow\", \"extra\": 1}\n  ]\n}";
    let err = Policy::from_json(text).unwrap_err().to_string();
    assert!(
        err.contains("rule 1 (\"a\"): unknown field `extra`") && err.contains("at line"),
        "{err}"
    );
    for junk in [&b""[..], b"[]", b"null", b"{", b"\xff", b"{\"rules\": {}}"] {
        assert!(Policy::from_json(junk).is_err());
    }
}

fn batch_policy(mode: &str) -> Policy {
    policy(json!({"batchMode": mode, "rules": [
        {"id": "reads", "match": {"tool": "get_*"}, "action": "allow"},
        {"id": "no-delete", "match": {"tool": "delete_*"}, "action": "deny", "reason": "never"},
        {"id": "refunds", "match": {"tool": "refund"}, "action": "approve", "approverGroup": "ops"},
        {"id": "quiet", "match": {"method": "notifications/cancelled"}, "action": "deny", "reason": "no cancelling"}
    ]}))
}

fn errors_of(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice(body).unwrap() {
        Value::Array(items) => items,
        other => vec![other],
    }
}

#[test]
fn whole_batch_is_refused_when_one_message_is() {
    let p = batch_policy("wholeBatch");
    let c = claims(json!({"sub": "a"}));
    let ctx = CallContext::new(&c, "/mcp", "");
    let raw = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_customer"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_merchant"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "s", "result": {}}
    ]);
    let msgs = batch(&raw);
    let d = p.decide_batch(&msgs, &ctx);
    let names: Vec<&str> = d.verdicts.iter().map(|v| v.action.name()).collect();
    assert_eq!(names, ["allow", "deny", "allow", "allow"]);
    assert!(!d.all_allowed());
    let BatchPlan::Refuse { status, body } = d.plan(&msgs, raw.to_string().as_bytes()) else {
        panic!("not refused")
    };
    assert_eq!(status, 200);
    let errors = errors_of(&body);
    assert_eq!(
        errors.len(),
        2,
        "one error per request, none for notifications and responses"
    );
    assert_eq!(errors[0]["id"], 1);
    assert_eq!(errors[0]["error"]["data"]["refusedBecauseOf"], 1);
    assert_eq!(errors[0]["error"]["data"]["rule"], "no-delete");
    assert!(errors[0]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("batch refused because message 1 was refused"));
    assert_eq!(errors[1]["id"], 2);
    assert_eq!(
        errors[1]["error"]["message"],
        "denied by policy rule \"no-delete\": never"
    );
    assert_eq!(errors[1]["error"]["data"]["batchIndex"], 1);
    assert!(errors[1]["error"]["data"].get("refusedBecauseOf").is_none());

    // All allowed: forwarded untouched.
    let ok = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_x"}}, {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    let msgs = batch(&ok);
    assert_eq!(
        p.decide_batch(&msgs, &ctx)
            .plan(&msgs, ok.to_string().as_bytes()),
        BatchPlan::ForwardAll
    );

    // Notifications only: 403 with one error, id null.
    let quiet = json!([{"jsonrpc": "2.0", "method": "notifications/cancelled"}, {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    let msgs = batch(&quiet);
    let BatchPlan::Refuse { status, body } = p
        .decide_batch(&msgs, &ctx)
        .plan(&msgs, quiet.to_string().as_bytes())
    else {
        panic!()
    };
    assert_eq!(status, 403);
    let errors = errors_of(&body);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["id"], Value::Null);
    assert_eq!(errors[0]["error"]["data"]["reason"], "no cancelling");

    // An approval inside a batch refuses it, with the approval's details.
    let approve =
        json!([{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "refund"}}]);
    let msgs = batch(&approve);
    let BatchPlan::Refuse { body, .. } = p
        .decide_batch(&msgs, &ctx)
        .plan(&msgs, approve.to_string().as_bytes())
    else {
        panic!()
    };
    let errors = errors_of(&body);
    assert_eq!(errors[0]["error"]["data"]["decision"], "approve");
    assert_eq!(errors[0]["error"]["data"]["approverGroup"], "ops");
}

#[test]
fn per_message_batch_forwards_the_allowed_bytes() {
    let p = batch_policy("perMessage");
    let c = claims(json!({"sub": "a"}));
    let ctx = CallContext::new(&c, "/mcp", "");
    // Spacing and a number serde_json would print otherwise must survive the rewrite byte for
    // byte.
    let raw = br#"[ {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","arguments":{"n":1.000000000000000000001E+2}}} ,
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_merchant"}},
        {"jsonrpc":"2.0","method":"notifications/cancelled"},
        {"jsonrpc":"2.0","method":"notifications/initialized"} ]"#;
    let Ok(Body::Batch(msgs)) = jsonrpc::parse(raw) else {
        panic!()
    };
    let d = p.decide_batch(&msgs, &ctx);
    let BatchPlan::Forward {
        body,
        forwarded,
        errors,
    } = d.plan(&msgs, raw)
    else {
        panic!("not forwarded")
    };
    assert_eq!(forwarded, [0, 3]);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","arguments":{"n":1.000000000000000000001E+2}}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#
    );
    assert_eq!(errors.len(), 1, "the refused notification gets no error");
    let e: Value = serde_json::from_slice(&errors[0]).unwrap();
    assert_eq!(e["id"], 2);
    assert_eq!(e["error"]["data"]["rule"], "no-delete");

    // The server's answer and the gateway's errors become one batch answer.
    let merged = tollgate_engine::policy::merge_batch_response(
        br#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
        &errors,
    );
    let merged = errors_of(&merged);
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[1]["id"], 2);

    // Everything refused: nothing to forward.
    let raw = json!([{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "delete_a"}}]);
    let msgs = batch(&raw);
    let BatchPlan::Refuse { status, body } = p
        .decide_batch(&msgs, &ctx)
        .plan(&msgs, raw.to_string().as_bytes())
    else {
        panic!()
    };
    assert_eq!(status, 200);
    assert_eq!(errors_of(&body)[0]["id"], 5);

    // The glue upgrades an approved call once it holds a grant.
    let raw = json!([{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "refund"}},
                     {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "get_a"}}]);
    let msgs = batch(&raw);
    let mut d = p.decide_batch(&msgs, &ctx);
    d.verdicts[0] = Verdict {
        action: Decision::Allow,
        rule: d.verdicts[0].rule.clone(),
        reason: None,
    };
    assert_eq!(
        d.plan(&msgs, raw.to_string().as_bytes()),
        BatchPlan::ForwardAll
    );

    // A missing verdict refuses its message; a body that does not match the parse is refused.
    d.verdicts.pop();
    assert!(
        matches!(d.plan(&msgs, raw.to_string().as_bytes()), BatchPlan::Forward { ref forwarded, .. } if forwarded == &[0])
    );
    assert!(matches!(
        d.plan(&msgs, b"[1]"),
        BatchPlan::Refuse { status: 400, .. }
    ));
}

#[test]
fn list_answers_lose_what_the_caller_can_never_use() {
    let p = policy(json!({"filterLists": true, "rules": [
        {"id": "no-delete", "match": {"tool": "delete_*"}, "action": "deny"},
        {"id": "contractors", "match": {"tool": ["refund", "update_*"], "caller": {"groups": "contractors"}}, "action": "deny"},
        {"id": "big-refund", "match": {"tool": "refund", "arguments": "/amount > 100"}, "action": "approve", "approverGroup": "ops"},
        {"id": "deny-big-export", "match": {"tool": "export", "arguments": "/rows > 1000"}, "action": "deny"},
        {"id": "reads", "match": {"tool": ["get_*", "export"]}, "action": "allow"},
        {"id": "ci-only", "match": {"tool": "deploy", "caller": {"sub": "ci"}}, "action": "allow"},
        {"id": "docs", "match": {"resource": "file:///docs/*"}, "action": "allow"},
        {"id": "prompts", "match": {"prompt": "summarize"}, "action": "allow"}
    ]}));
    let tools = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "get_customer"}, {"name": "delete_merchant"}, {"name": "refund"}, {"name": "update_payout"},
        {"name": "export"}, {"name": "deploy"}, {"name": "mystery"}, {"description": "no name"}
    ], "nextCursor": "c"}});
    let names = |v: &Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let alice = claims(json!({"sub": "alice"}));
    let bob = claims(json!({"sub": "bob", "groups": ["contractors"]}));
    let ci = claims(json!({"sub": "ci"}));
    let filtered = p
        .filter_list_response("tools/list", &tools, &CallContext::new(&alice, "/mcp", ""))
        .unwrap();
    // refund: approvable; export: denied only for big exports; the nameless entry is kept.
    assert_eq!(names(&filtered), ["get_customer", "refund", "export", "?"]);
    assert_eq!(filtered["result"]["nextCursor"], "c");
    assert_eq!(filtered["id"], 1);
    let filtered = p
        .filter_list_response("tools/list", &tools, &CallContext::new(&bob, "/mcp", ""))
        .unwrap();
    assert_eq!(names(&filtered), ["get_customer", "export", "?"]);
    let filtered = p
        .filter_list_response("tools/list", &tools, &CallContext::new(&ci, "/mcp", ""))
        .unwrap();
    assert_eq!(
        names(&filtered),
        ["get_customer", "refund", "export", "deploy", "?"]
    );

    let resources = json!({"jsonrpc": "2.0", "id": 2, "result": {"resources": [{"uri": "file:///docs/a"}, {"uri": "file:///etc/passwd"}]}});
    let filtered = p
        .filter_list_response(
            "resources/list",
            &resources,
            &CallContext::new(&alice, "/mcp", ""),
        )
        .unwrap();
    assert_eq!(
        filtered["result"]["resources"],
        json!([{"uri": "file:///docs/a"}])
    );
    let prompts = json!({"jsonrpc": "2.0", "id": 3, "result": {"prompts": [{"name": "summarize"}, {"name": "other"}]}});
    let filtered = p
        .filter_list_response(
            "prompts/list",
            &prompts,
            &CallContext::new(&alice, "/mcp", ""),
        )
        .unwrap();
    assert_eq!(
        filtered["result"]["prompts"],
        json!([{"name": "summarize"}])
    );

    let ctx = CallContext::new(&alice, "/mcp", "");
    // Nothing to remove, not a list, an error answer, odd shapes: unchanged.
    let clean = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "get_a"}]}});
    assert_eq!(p.filter_list_response("tools/list", &clean, &ctx), None);
    assert_eq!(p.filter_list_response("tools/call", &tools, &ctx), None);
    assert_eq!(
        p.filter_list_response("resources/templates/list", &tools, &ctx),
        None
    );
    assert_eq!(
        p.filter_list_response(
            "tools/list",
            &json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}),
            &ctx
        ),
        None
    );
    assert_eq!(
        p.filter_list_response(
            "tools/list",
            &json!({"result": {"tools": {"name": "x"}}}),
            &ctx
        ),
        None
    );
    assert_eq!(
        p.filter_list_response("tools/list", &json!([1, 2]), &ctx),
        None
    );
    // Filtering off: unchanged.
    let off =
        policy(json!({"rules": [{"id": "r", "match": {"tool": "get_*"}, "action": "allow"}]}));
    assert_eq!(off.filter_list_response("tools/list", &tools, &ctx), None);
}

#[test]
fn check_reports_decisions_and_expectations() {
    let policy_json = json!({"rules": [
        {"id": "no-delete", "match": {"tool": "delete_*"}, "action": "deny", "reason": "never"},
        {"id": "refunds", "match": {"tool": "refund"}, "action": "approve", "approverGroup": "ops", "grantTtlSeconds": 60},
        {"id": "reads", "match": {"tool": "get_*"}, "action": "allow"}
    ]})
    .to_string();
    let samples: Vec<Sample> = tollgate_engine::policy::parse_samples(
        json!([
            {"name": "read", "claims": {"sub": "alice", "groups": ["ops"]}, "request": call("get_x", json!({"id": 1})), "expect": "allow"},
            {"name": "delete", "claims": {"sub": "alice"}, "request": call("delete_x", json!({})), "expect": "allow"},
            {"request": call("refund", json!({"amount": 5}))},
            {"name": "batch", "request": [call("get_x", json!({})), {"jsonrpc": "2.0", "method": "notifications/initialized"}], "expect": ["allow", "allow"]},
            {"name": "broken", "request": {"id": 1}},
            {"name": "short expect", "request": [call("get_x", json!({})), call("get_y", json!({}))], "expect": ["allow"]}
        ])
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let report = check(policy_json.as_bytes(), &samples);
    assert!(report.valid);
    assert!(!report.ok());
    let summary: Vec<(String, Option<&str>, Option<&str>, bool)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.sample.clone(),
                r.verdict.as_ref().map(|v| v.action.name()),
                r.verdict.as_ref().and_then(|v| v.rule.as_deref()),
                r.as_expected(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("read".to_owned(), Some("allow"), Some("reads"), true),
            ("delete".to_owned(), Some("deny"), Some("no-delete"), false),
            (
                "sample 3".to_owned(),
                Some("approve"),
                Some("refunds"),
                true
            ),
            ("batch [0]".to_owned(), Some("allow"), Some("reads"), true),
            ("batch [1]".to_owned(), Some("allow"), None, true),
            ("broken".to_owned(), None, None, false),
            ("short expect".to_owned(), None, None, false),
        ]
    );
    let text = report.to_string();
    for want in [
        "policy is valid: 3 rules",
        "SAMPLE",
        "DECISION",
        "alice [ops]",
        "tools/call get_x {\"id\":1}",
        "approve (ops, 60s)",
        "FAIL: expected allow",
        "(default)",
        "invalid request",
        "7 decisions, 3 NOT as expected",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The report serializes for `--json`.
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["rows"][1]["verdict"]["rule"], "no-delete");

    let bad = check(br#"{"rules": [{"id": "a", "match": {"tool": "["}, "action": "allow"}, {"id": "b", "match": {}, "action": "deny"}]}"#, &samples);
    assert!(!bad.valid && !bad.ok());
    assert!(bad.rows.is_empty());
    let text = bad.to_string();
    assert!(text.starts_with("policy is INVALID (2 errors):"), "{text}");
    assert!(
        text.contains("rule 1 (\"a\"): bad glob") && text.contains("rule 2 (\"b\"): empty match"),
        "{text}"
    );
    let unparsable = check(b"{\"rulez\": []}", &[]);
    assert!(unparsable.to_string().contains("unknown field `rulez`"));

    let err = tollgate_engine::policy::parse_samples(
        br#"[{"name": "x", "request": {}, "expected": "allow"}]"#,
    )
    .unwrap_err();
    assert!(
        err.contains("sample 1 (\"x\"): unknown field `expected`"),
        "{err}"
    );
}

#[test]
fn two_hundred_rules_compile_and_decide() {
    let mut rules: Vec<Value> = (0..199)
        .map(|i| json!({"id": format!("r{i}"), "match": {"tool": format!("tool_{i}_*"), "arguments": format!("/n > {i}"), "caller": {"groups": format!("g{i}")}}, "action": "allow"}))
        .collect();
    rules.push(json!({"id": "last", "match": {"tool": "target"}, "action": "allow"}));
    let p = policy(json!({"rules": rules}));
    assert_eq!(p.rule_count(), 200);
    let c = claims(json!({"sub": "a", "groups": ["g3"]}));
    let v = p.decide(
        &message(call("target", json!({"n": 5}))),
        &CallContext::new(&c, "/mcp", ""),
    );
    assert_eq!(v.rule.as_deref(), Some("last"));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_/*?\\[\\]~0-9 ]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z/~]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics_on_odd_messages(params in json_value(), name in "[a-z_*]{0,8}", method in "(tools/call|prompts/get|resources/read|ping|[a-z/]{0,10})", claims_v in json_value()) {
        let p = engine_policy();
        let c = match claims_v { Value::Object(m) => m, other => { let mut m = Map::new(); m.insert("groups".to_owned(), other); m } };
        let ctx = CallContext::new(&c, "/mcp", "");
        let mut params = params;
        if let Value::Object(m) = &mut params { m.insert("name".to_owned(), Value::from(name)); }
        let msg = Message { kind: jsonrpc::Kind::Request, id: Some(json!(1)), method: Some(method), params: Some(params) };
        let _ = p.decide(&msg, &ctx);
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [msg.params.clone().unwrap_or_default()]}});
        let _ = p.filter_list_response("tools/list", &body, &ctx);
    }

    #[test]
    fn never_panics_on_odd_policies(doc in json_value(), glob in "[a-z*?\\[\\]!^\\\\-]{0,10}", text in "[a-z*?\\[\\]!-]{0,10}") {
        let _ = Policy::from_json(doc.to_string().as_bytes());
        let one = json!({"rules": [{"id": "g", "match": {"tool": glob, "route": text}, "action": "allow"}]});
        if let Ok(p) = Policy::from_json(one.to_string().as_bytes()) {
            let c = Map::new();
            let _ = p.decide(&message(call(&text, json!({}))), &CallContext::new(&c, &text, ""));
        }
    }
}
