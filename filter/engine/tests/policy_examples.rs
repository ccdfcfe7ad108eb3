//! The shipped example policy, its sample calls and the Istio manifests that embed it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::{json, Map, Value};
use tollgate_engine::jsonrpc::{self, Body};
use tollgate_engine::policy::{check, parse_samples, CallContext, Policy, PolicyConfig};

fn repo_file(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = String::from_utf8(repo_file(path)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn payments_policy_compiles_and_its_samples_get_what_they_expect() {
    let policy_json = repo_file("envoy/policy/payments.json");
    let policy = Policy::from_json(&policy_json).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.filter_lists());
    let samples = parse_samples(&repo_file("envoy/policy/payments.samples.json")).unwrap();
    let report = check(&policy_json, &samples);
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert!(
        samples.iter().all(|s| s.expect.is_some()),
        "every shipped sample states what it expects"
    );
}

#[test]
fn payments_policy_in_detail() {
    let policy = Policy::from_json(&repo_file("envoy/policy/payments.json")).unwrap();
    let alice: Map<String, Value> =
        serde_json::from_value(json!({"sub": "alice", "groups": ["payments-ops"]})).unwrap();
    let ctx = CallContext::new(&alice, "/mcp", "payments");
    let decide = |tool: &str, args: Value| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}});
        let Ok(Body::Single(m)) = jsonrpc::parse(body.to_string().as_bytes()) else {
            panic!()
        };
        policy.decide(&m, &ctx)
    };
    let v = decide("update_payout_account", json!({}));
    assert_eq!(v.action.name(), "approve");
    assert_eq!(v.error_data()["approverGroup"], "payments-approvers");
    assert_eq!(
        v.error_data()["grantTtlSeconds"],
        Value::Null,
        "payout changes: single-use grants"
    );
    assert_eq!(
        decide("set_fraud_threshold", json!({"threshold": 1})).error_data()["approverGroup"],
        "payments-approvers"
    );
    assert_eq!(
        decide("delete_merchant", json!({})).rule.as_deref(),
        Some("never-delete-merchant")
    );
    assert_eq!(
        decide("refund_payment", json!({"amount": 10000}))
            .action
            .name(),
        "allow"
    );
    assert_eq!(
        decide("refund_payment", json!({"amount": 10000.5}))
            .action
            .name(),
        "approve"
    );

    // The demo server's tools/list, as a contractor sees it.
    let bob: Map<String, Value> =
        serde_json::from_value(json!({"sub": "bob", "groups": ["contractors"]})).unwrap();
    let tools = [
        "get_customer",
        "list_transactions",
        "search_logs",
        "update_payout_account",
        "set_fraud_threshold",
        "refund_payment",
        "delete_merchant",
        "big_report",
        "slow_stream",
    ];
    let list = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": tools.iter().map(|t| json!({"name": t})).collect::<Vec<_>>()}});
    let names = |ctx: &CallContext<'_>| -> Vec<String> {
        let filtered = policy
            .filter_list_response("tools/list", &list, ctx)
            .unwrap();
        filtered["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&CallContext::new(&bob, "/mcp", "payments")),
        [
            "get_customer",
            "list_transactions",
            "search_logs",
            "big_report",
            "slow_stream"
        ]
    );
    assert_eq!(
        names(&ctx).len(),
        tools.len() - 1,
        "only delete_merchant is hidden from alice"
    );
}

#[test]
fn istio_wasmplugin_embeds_the_example_policy() {
    let docs = yaml_documents("envoy/istio/wasmplugin.yaml");
    assert_eq!(docs.len(), 1);
    let plugin = &docs[0];
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(plugin["kind"], "WasmPlugin");
    let spec = &plugin["spec"];
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    // After Istio's jwt_authn (AUTHN would run before it and see no verified identity).
    assert_eq!(spec["phase"], "AUTHZ");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(spec["selector"]["matchLabels"].is_object());

    let embedded = spec["pluginConfig"]["policy"].clone();
    let example: Value = serde_json::from_slice(&repo_file("envoy/policy/payments.json")).unwrap();
    assert_eq!(
        embedded, example,
        "pluginConfig.policy must equal envoy/policy/payments.json"
    );
    // The filter reads pluginConfig as JSON: the embedded policy must compile from that JSON.
    let config: PolicyConfig = serde_json::from_value(embedded).unwrap_or_else(|e| panic!("{e}"));
    Policy::compile(&config).unwrap_or_else(|e| panic!("{e}"));
    // Serialized the way Istio hands it to Envoy, the whole pluginConfig is a JSON object.
    let plugin_config = serde_json::to_vec(&spec["pluginConfig"]).unwrap();
    let whole: Value = serde_json::from_slice(&plugin_config).unwrap();
    Policy::from_json(&serde_json::to_vec(&whole["policy"]).unwrap()).unwrap();
}

#[test]
fn istio_control_plane_judges_approvals_by_the_example_policy() {
    let docs = yaml_documents("envoy/istio/control-plane.yaml");
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "tollgate-policy")
        .expect("a tollgate-policy ConfigMap");
    let text = config_map["data"]["policy.json"].as_str().unwrap();
    let mounted: Value = serde_json::from_str(text).unwrap();
    let example: Value = serde_json::from_slice(&repo_file("envoy/policy/payments.json")).unwrap();
    assert_eq!(
        mounted, example,
        "the control plane's policy must equal the filter's"
    );
    Policy::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--policy")
        .expect("serve --policy");
    let path = std::path::Path::new(args[at + 1]);
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "policy")
        .expect("the policy volume is mounted");
    assert_eq!(
        path.parent().unwrap(),
        std::path::Path::new(mount["mountPath"].as_str().unwrap())
    );
}

#[test]
fn istio_request_authentication_forwards_the_verified_payload() {
    let docs = yaml_documents("envoy/istio/requestauthentication.yaml");
    let ra = &docs[0];
    assert_eq!(ra["kind"], "RequestAuthentication");
    let plugin = &yaml_documents("envoy/istio/wasmplugin.yaml")[0];
    assert_eq!(
        ra["spec"]["selector"], plugin["spec"]["selector"],
        "both select the same workload"
    );
    let rule = &ra["spec"]["jwtRules"][0];
    assert_eq!(
        rule["outputPayloadToHeader"],
        plugin["spec"]["pluginConfig"]["jwtPayloadHeader"]
    );
    // Istio's jwt_authn (1.21 and later) keeps the verified payload under `payload`, whatever
    // the issuer.
    assert_eq!(plugin["spec"]["pluginConfig"]["jwtMetadataKey"], "payload");
    assert_eq!(rule["forwardOriginalToken"], false);
}
