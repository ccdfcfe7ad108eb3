//! Just-in-time approvals end to end: an MCP client as the agent, the `tollgate` CLI as the
//! operator, real Envoy with the filter and the real control plane between them.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{initialize_body, post_mcp, HttpAnswer, Stack, StackOptions};

async fn session(stack: &Stack, token: &str) -> String {
    let init = post_mcp(&stack.gateway_url, Some(token), None, initialize_body(1))
        .await
        .unwrap();
    assert_eq!(init.status, 200, "{}", init.body);
    let session = init.header("mcp-session-id").unwrap().to_owned();
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    post_mcp(&stack.gateway_url, Some(token), Some(&session), initialized)
        .await
        .unwrap();
    session
}

fn payout_change(id: u64, account: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"update_payout_account",
        "arguments":{"merchant_id":"m_2","account_number":account,"routing_number":"110000000"}}})
    .to_string()
}

fn stack(wait_ms: u64) -> Stack {
    Stack::start_with(StackOptions {
        config: json!({ "approvalWaitMs": wait_ms }),
        ..StackOptions::default()
    })
    .unwrap()
}

/// The approval id a held call was answered with.
fn approval_id(answer: &HttpAnswer) -> String {
    let data = &answer.json()["error"]["data"];
    assert_eq!(data["state"], "pending", "{}", answer.body);
    let id = data["approvalId"].as_str().unwrap().to_owned();
    // The answer names the approval's page in the console (the filter's default address).
    assert_eq!(
        data["approvalUrl"],
        format!("http://127.0.0.1:9470/approvals/{id}"),
        "{}",
        answer.body
    );
    id
}

fn decide(stack: &Stack, operator: &str, verb: &str, id: &str, reason: &str) -> (bool, String) {
    let out = stack
        .tollgate_as(Some(operator), &["approvals", verb, id, "--reason", reason])
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_is_released_the_moment_a_second_person_approves() {
    let stack = stack(20_000);
    let alice = stack
        .token("alice@example.com", &["--groups", "payments-ops"])
        .unwrap();
    let bob = stack
        .token(
            "bob@example.com",
            &[
                "--groups",
                "payments-approvers",
                "--aud",
                "tollgate-operators",
            ],
        )
        .unwrap();
    let session = session(&stack, &alice).await;

    let url = stack.gateway_url.clone();
    let (token, sid) = (alice.clone(), session.clone());
    let held = tokio::spawn(async move {
        post_mcp(
            &url,
            Some(&token),
            Some(&sid),
            payout_change(2, "000123456789"),
        )
        .await
    });
    // The operator sees the pending request and approves it.
    let mut pending = None;
    for _ in 0..100 {
        let out = stack
            .tollgate_as(Some(&bob), &["approvals", "list", "--pending", "--json"])
            .unwrap();
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = lines.lines().next() {
            let entry: Value = serde_json::from_str(line).unwrap();
            let id = entry["approvalId"]
                .as_str()
                .or(entry["id"].as_str())
                .map(str::to_owned);
            pending = id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = pending.expect("a pending approval to list");
    assert_eq!(
        stack.server_calls("update_payout_account"),
        0,
        "forwarded before approval"
    );
    let (ok, text) = decide(
        &stack,
        &bob,
        "approve",
        &id,
        "verified with the merchant by phone",
    );
    assert!(ok, "{text}");
    let answer = held.await.unwrap().unwrap();
    assert!(answer.json()["result"].is_object(), "{}", answer.body);
    assert_eq!(stack.server_calls("update_payout_account"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_call_passes_once_after_approval_and_only_for_its_own_arguments() {
    let stack = stack(300);
    let alice = stack
        .token("alice@example.com", &["--groups", "payments-ops"])
        .unwrap();
    let bob = stack
        .token(
            "bob@example.com",
            &[
                "--groups",
                "payments-approvers",
                "--aud",
                "tollgate-operators",
            ],
        )
        .unwrap();
    let mallory = stack
        .token(
            "mallory@example.com",
            &["--groups", "payments-ops", "--aud", "tollgate-operators"],
        )
        .unwrap();
    let expired = stack
        .token(
            "bob@example.com",
            &[
                "--groups",
                "payments-approvers",
                "--aud",
                "tollgate-operators",
                "--expired",
            ],
        )
        .unwrap();
    // The requester as an operator, even in the approver group.
    let alice_operator = stack
        .token(
            "alice@example.com",
            &[
                "--groups",
                "payments-approvers",
                "--aud",
                "tollgate-operators",
            ],
        )
        .unwrap();
    let session = session(&stack, &alice).await;
    let call = |id, account: &str| {
        post_mcp(
            &stack.gateway_url,
            Some(&alice),
            Some(&session),
            payout_change(id, account),
        )
    };

    let first = call(2, "000111222333").await.unwrap();
    let id = approval_id(&first);
    assert!(
        first.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("tollgate approvals approve {id}")),
        "{}",
        first.body
    );

    // Refused deciders, each with a clear reason; the request stays pending.
    let (ok, text) = decide(&stack, &alice, "approve", &id, "my MCP token");
    assert!(
        !ok && text.contains("tollgate-operators"),
        "an agent's MCP token used as an operator token: {text}"
    );
    let (ok, text) = decide(&stack, &alice_operator, "approve", &id, "me");
    assert!(
        !ok && text.to_lowercase().contains("own"),
        "self-approval: {text}"
    );
    let (ok, text) = decide(&stack, &mallory, "approve", &id, "not my group");
    assert!(
        !ok && text.contains("payments-approvers"),
        "non-member: {text}"
    );
    let (ok, text) = decide(&stack, &expired, "approve", &id, "stale");
    assert!(
        !ok && text.to_lowercase().contains("expired"),
        "expired token: {text}"
    );
    assert_eq!(
        approval_id(&call(3, "000111222333").await.unwrap()),
        id,
        "same call, same request"
    );

    let (ok, text) = decide(&stack, &bob, "approve", &id, "ticket PAY-1234");
    assert!(ok, "{text}");
    let retry = call(4, "000111222333").await.unwrap();
    assert!(retry.json()["result"].is_object(), "{}", retry.body);
    assert_eq!(stack.server_calls("update_payout_account"), 1);

    // Single use: the same call again needs a new approval, and so does another account.
    let again = call(5, "000111222333").await.unwrap();
    assert_ne!(approval_id(&again), id);
    let other = call(6, "999888777666").await.unwrap();
    let other_id = approval_id(&other);
    assert_ne!(other_id, id);

    let (ok, text) = decide(
        &stack,
        &bob,
        "deny",
        &other_id,
        "account not on file for m_2",
    );
    assert!(ok, "{text}");
    let denied = call(7, "999888777666").await.unwrap();
    let message = denied.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // A denied request is answered with the approver's reason (or asked afresh if the filter
    // opened a new request): either way it never reaches the server.
    assert!(
        message.contains("account not on file")
            || denied.json()["error"]["data"]["state"] == "pending",
        "{}",
        denied.body
    );
    assert_eq!(stack.server_calls("update_payout_account"), 1);

    // The chain tells the story in order and verifies.
    let records = stack.audit_records().unwrap();
    let events: Vec<String> = records
        .iter()
        .filter_map(|r| r["event"].as_str())
        .filter(|e| e.starts_with("approval."))
        .map(str::to_owned)
        .collect();
    let first_request = events.iter().position(|e| e == "approval.requested");
    let decision = events.iter().position(|e| e == "approval.decided");
    let grant_used = events.iter().position(|e| e == "approval.grant_used");
    assert!(
        first_request < decision && decision < grant_used,
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "approval.refused"), "{events:?}");

    // The forwarded call's own record names the approval, its approver and the grant use, in
    // the session where the call was made; so do the decision and the grant's use.
    let forwarded: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mcp.forwarded")
        .collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    let forwarded = forwarded[0];
    assert_eq!(forwarded["approvalId"], id.as_str());
    assert_eq!(forwarded["approvedBy"], json!(["bob@example.com"]));
    assert_eq!(forwarded["grantUse"], 1);
    assert_eq!(forwarded["sub"], "alice@example.com");
    assert_eq!(forwarded["session"], session.as_str());
    for event in ["approval.decided", "approval.grant_used"] {
        let record = records
            .iter()
            .find(|r| r["event"] == event && r["approvalId"] == id.as_str())
            .unwrap_or_else(|| panic!("no {event} for {id}"));
        assert_eq!(record["session"], session.as_str(), "{record}");
    }
    let replay = stack.tollgate(&["sessions", "replay", &session]).unwrap();
    let replay = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(
        replay.contains("mcp.forwarded")
            && replay.contains(&id)
            && replay.contains("bob@example.com"),
        "{replay}"
    );
    let verify = stack.tollgate(&["audit", "verify"]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_owner_of_a_service_account_nor_a_revoked_approver_releases_its_call() {
    let stack = Stack::start_with(StackOptions {
        config: json!({
            "approvalWaitMs": 300,
            "serviceAccounts": {"subs": ["svc-*"], "requireAccountable": false},
        }),
        ..StackOptions::default()
    })
    .unwrap();
    let operator = |sub: &str| {
        stack
            .token(
                sub,
                &[
                    "--groups",
                    "payments-approvers",
                    "--aud",
                    "tollgate-operators",
                ],
            )
            .unwrap()
    };
    let (dana, bob) = (operator("dana@example.com"), operator("bob@example.com"));
    let owner = stack
        .tollgate(&[
            "service-accounts",
            "set",
            "svc-payouts",
            "--owner",
            "dana@example.com",
            "--reason",
            "dana runs the payouts job",
        ])
        .unwrap();
    assert!(owner.status.success(), "{owner:?}");
    let revoked = stack
        .tollgate(&[
            "revoke",
            "--sub",
            "bob@example.com",
            "--reason",
            "left the approvers team",
        ])
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");

    let svc = stack
        .token("svc-payouts", &["--groups", "payments-ops"])
        .unwrap();
    let session = session(&stack, &svc).await;
    let held = post_mcp(
        &stack.gateway_url,
        Some(&svc),
        Some(&session),
        payout_change(2, "000444555666"),
    )
    .await
    .unwrap();
    let id = approval_id(&held);
    let (ok, text) = decide(&stack, &dana, "approve", &id, "my own job");
    assert!(!ok && text.contains("dana@example.com"), "owner: {text}");
    let (ok, text) = decide(&stack, &bob, "approve", &id, "still here");
    assert!(
        !ok && text.contains("is revoked"),
        "revoked approver: {text}"
    );
    assert_eq!(stack.server_calls("update_payout_account"), 0);

    let records = stack.audit_records().unwrap();
    let owner_refusal = records
        .iter()
        .find(|r| r["event"] == "approval.refused" && r["sub"] == "dana@example.com")
        .expect("the owner's attempt is recorded");
    assert!(
        ["owner_of_requester", "on_behalf_of_approver"]
            .contains(&owner_refusal["refusal"].as_str().unwrap()),
        "{owner_refusal}"
    );
    let revoked_refusal = records
        .iter()
        .find(|r| r["event"] == "controlPlane.refused" && r["sub"] == "bob@example.com")
        .expect("the revoked approver's attempt is recorded");
    assert_eq!(revoked_refusal["verified"], true);
    assert_eq!(revoked_refusal["method"], "/tollgate.v1.Approvals/Decide");
}
