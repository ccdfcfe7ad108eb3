//! Policy and command blocking through real Envoy: every MCP call is decided before it reaches
//! the server, and the server's own request log proves what never arrived.

use serde_json::{json, Value};
use tollgate_e2e::{open_session, post_mcp, Stack, StackOptions};

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}}).to_string()
}

fn server_saw_tool(stack: &Stack, tool: &str) -> bool {
    stack.server_requests().iter().any(|r| r["tool"] == tool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_never_reach_the_server_and_name_the_rule() {
    let stack = Stack::start_with(StackOptions {
        config: json!({"approvalWaitMs": 300}),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    let allowed = post_mcp(
        &stack.gateway_url,
        Some(&token),
        Some(&session),
        call(2, "get_customer", json!({"customer_id":"cus_2"})),
    )
    .await
    .unwrap();
    assert_eq!(allowed.status, 200);
    assert!(
        allowed.json()["result"]["content"].is_array(),
        "{}",
        allowed.body
    );

    let denied = post_mcp(
        &stack.gateway_url,
        Some(&token),
        Some(&session),
        call(3, "delete_merchant", json!({"merchant_id":"m_1"})),
    )
    .await
    .unwrap();
    assert_eq!(denied.status, 200, "{}", denied.body);
    let error = &denied.json()["error"];
    assert_eq!(denied.json()["id"], 3);
    assert_eq!(error["data"]["rule"], "never-delete-merchant", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("back office"),
        "{error}"
    );

    let held = post_mcp(
        &stack.gateway_url,
        Some(&token),
        Some(&session),
        call(4, "update_payout_account", json!({"merchant_id":"m_1","account_number":"000123456789","routing_number":"110000000"})),
    )
    .await
    .unwrap();
    // Held for approval (tests/tests/approvals.rs has the whole story); without one it never
    // reaches the server.
    assert!(held.json()["error"].is_object(), "{}", held.body);

    assert!(server_saw_tool(&stack, "get_customer"));
    assert!(
        !server_saw_tool(&stack, "delete_merchant"),
        "the server saw a denied call"
    );
    assert!(
        !server_saw_tool(&stack, "update_payout_account"),
        "the server saw an unapproved call"
    );

    let records = stack.audit_records().unwrap();
    let denial = records
        .iter()
        .find(|r| r["messages"][0]["target"] == "delete_merchant")
        .expect("an audit record of the denied call");
    assert_eq!(denial["decision"], "deny");
    assert_eq!(denial["outcome"], "refused");
    assert_eq!(denial["messages"][0]["rule"], "never-delete-merchant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rules_give_two_users_different_answers_and_lists() {
    let stack = Stack::start().unwrap();
    let alice = stack
        .token("alice@example.com", &["--groups", "payments-ops"])
        .unwrap();
    let contractor = stack
        .token("carol@contractor.example", &["--groups", "contractors"])
        .unwrap();
    let refund = call(
        5,
        "refund_payment",
        json!({"payment_id":"pay_1","amount":50}),
    );

    let alice_session = open_session(&stack, &alice).await;
    let ok = post_mcp(
        &stack.gateway_url,
        Some(&alice),
        Some(&alice_session),
        refund.clone(),
    )
    .await
    .unwrap();
    assert!(
        ok.json()["result"].is_object(),
        "alice's small refund: {}",
        ok.body
    );

    let carol_session = open_session(&stack, &contractor).await;
    let no = post_mcp(
        &stack.gateway_url,
        Some(&contractor),
        Some(&carol_session),
        refund,
    )
    .await
    .unwrap();
    assert_eq!(
        no.json()["error"]["data"]["rule"],
        "contractors-read-only",
        "{}",
        no.body
    );

    let list = json!({"jsonrpc":"2.0","id":6,"method":"tools/list"}).to_string();
    let names = |answer: &tollgate_e2e::HttpAnswer| -> Vec<String> {
        answer.json()["result"]["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    let alice_tools = names(
        &post_mcp(
            &stack.gateway_url,
            Some(&alice),
            Some(&alice_session),
            list.clone(),
        )
        .await
        .unwrap(),
    );
    let carol_tools = names(
        &post_mcp(
            &stack.gateway_url,
            Some(&contractor),
            Some(&carol_session),
            list,
        )
        .await
        .unwrap(),
    );
    assert!(
        alice_tools.contains(&"refund_payment".to_owned()),
        "{alice_tools:?}"
    );
    assert!(
        alice_tools.contains(&"get_customer".to_owned()),
        "{alice_tools:?}"
    );
    assert!(
        !alice_tools.contains(&"delete_merchant".to_owned()),
        "{alice_tools:?}"
    );
    assert!(
        !carol_tools.contains(&"refund_payment".to_owned()),
        "{carol_tools:?}"
    );
    assert!(
        carol_tools.contains(&"get_customer".to_owned()),
        "{carol_tools:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_their_errors_are_audited_and_never_forwarded() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;
    let seen = stack.server_requests().len();

    let cases: Vec<(&str, Vec<u8>, u16, Option<i64>)> = vec![
        (
            "malformed JSON",
            b"{\"jsonrpc\":\"2.0\",".to_vec(),
            400,
            Some(-32700),
        ),
        (
            "not UTF-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}".to_vec(),
            400,
            Some(-32700),
        ),
        (
            "not JSON-RPC",
            br#"{"id":1,"method":"tools/list"}"#.to_vec(),
            400,
            Some(-32600),
        ),
        ("empty batch", b"[]".to_vec(), 400, Some(-32600)),
        (
            "oversized",
            {
                let mut big = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{"pad":""#.to_vec();
                big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
                big.extend(br#""}}}"#);
                big
            },
            413,
            None,
        ),
    ];
    for (what, body, status, code) in cases {
        let answer = post_mcp(&stack.gateway_url, Some(&token), Some(&session), body)
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        if let Some(code) = code {
            assert_eq!(
                answer.json()["error"]["code"],
                code,
                "{what}: {}",
                answer.body
            );
        }
    }
    assert_eq!(
        stack.server_requests().len(),
        seen,
        "the server saw a refused body"
    );
    let refused = stack
        .audit_records()
        .unwrap()
        .into_iter()
        .filter(|r| r["event"] == "mcp.request" && r["outcome"] == "refused")
        .count();
    assert_eq!(refused, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_is_refused_with_a_clear_message() {
    // The control plane refuses the same policy (control-plane/tests/approvals.rs): here it
    // gets the valid example, so that the filter's refusal is what stops the stack.
    let valid = StackOptions::default().policy;
    let options = StackOptions {
        policy: json!({"rules":[{"id":"bad-glob","match":{"tool":"get_[customer"},"action":"allow"}]}),
        control_plane_policy: Some(valid),
        ..StackOptions::default()
    };
    let error = match Stack::start_with(options) {
        Ok(_) => panic!("Envoy started with a broken policy"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("invalid policy"), "{error}");
    assert!(error.contains("bad-glob"), "{error}");
}
