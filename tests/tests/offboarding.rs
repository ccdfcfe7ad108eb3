//! The story identity and revocation must make true: a contractor leaves; their CI job still
//! runs under a shared service account. The log says the CI job's calls were the contractor's,
//! and one revocation stops both within seconds on every Envoy worker, leaving others alone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{initialize_body, post_mcp, Stack, StackOptions};

const CONTRACTOR: &str = "carol@contractor.example";

fn get_customer(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":"get_customer","arguments":{"customer_id":"cus_3"}}})
    .to_string()
}

/// Initializes a session and calls get_customer; returns the HTTP status of the call (or of
/// the initialize, when that was refused).
async fn call(stack: &Stack, token: &str) -> u16 {
    let init = post_mcp(&stack.gateway_url, Some(token), None, initialize_body(1))
        .await
        .unwrap();
    let Some(session) = init.header("mcp-session-id").map(str::to_owned) else {
        return init.status;
    };
    post_mcp(
        &stack.gateway_url,
        Some(token),
        Some(&session),
        get_customer(2),
    )
    .await
    .unwrap()
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarded_contractor_and_their_ci_job_are_stopped_within_seconds() {
    let stack = Stack::start_with(StackOptions {
        config: json!({"extraClaims": ["actor", "repository", "workflow", "ref", "run_id"]}),
        envoy_workers: 2,
        ..StackOptions::default()
    })
    .unwrap();
    let contractor = stack
        .token(CONTRACTOR, &["--groups", "contractors", "--ttl", "1h"])
        .unwrap();
    let ci_job = stack
        .token(
            "svc-payments-deploy",
            &[
                "--ttl",
                "1h",
                "--claim",
                &format!("actor={CONTRACTOR}"),
                "--claim",
                "repository=acme/payments",
                "--claim",
                "workflow=nightly-reconcile",
                "--claim",
                "run_id=9142",
            ],
        )
        .unwrap();
    let alice = stack.token("alice@example.com", &["--ttl", "1h"]).unwrap();
    let security = stack
        .token(
            "sam@example.com",
            &["--groups", "security-admins", "--aud", "tollgate-operators"],
        )
        .unwrap();

    for token in [&contractor, &ci_job, &alice] {
        assert_eq!(call(&stack, token).await, 200);
    }
    // The CI job's calls name the person behind the shared service account.
    let records = stack.audit_records().unwrap();
    let ci_call = records
        .iter()
        .find(|r| r["sub"] == "svc-payments-deploy" && r["messages"][0]["target"] == "get_customer")
        .expect("the CI job's call in the log");
    assert_eq!(ci_call["identity"]["actor"], CONTRACTOR, "{ci_call}");
    assert_eq!(ci_call["identity"]["repository"], "acme/payments");

    let revoke = stack
        .tollgate_as(
            Some(&security),
            &["revoke", "--sub", CONTRACTOR, "--reason", "contract ended"],
        )
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}{}",
        String::from_utf8_lossy(&revoke.stdout),
        String::from_utf8_lossy(&revoke.stderr)
    );
    let revoked_at = Instant::now();

    // Within 5 s both are refused; each call opens a new connection, so both workers answer.
    let mut stopped = None;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        if call(&stack, &contractor).await == 403 && call(&stack, &ci_job).await == 403 {
            stopped = Some(revoked_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped =
        stopped.expect("the contractor and the CI job were still served 5 s after the revocation");
    println!("revocation effective after {stopped:?}");
    for _ in 0..8 {
        assert_eq!(call(&stack, &contractor).await, 403);
        assert_eq!(call(&stack, &ci_job).await, 403);
        assert_eq!(call(&stack, &alice).await, 200, "another user was affected");
    }

    // The operator's reason is for the record: the person refused reads a neutral message and
    // the id to quote.
    let refused = post_mcp(
        &stack.gateway_url,
        Some(&contractor),
        None,
        initialize_body(1),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403);
    assert!(
        !refused.body.contains("contract ended"),
        "the operator's reason reached the client: {}",
        refused.body
    );
    assert!(
        refused.body.contains("ask your administrator") && refused.body.contains("rev_"),
        "{}",
        refused.body
    );

    let records = stack.audit_records().unwrap();
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "identity.revoked")
        .collect();
    assert!(refusals.iter().any(|r| r["sub"] == CONTRACTOR
        && r["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("contract ended"))));
    assert!(refusals.iter().any(|r| r["sub"] == "svc-payments-deploy"));

    // The auditor's view of what the CI job did before it was stopped.
    let sessions = stack.tollgate(&["sessions", "list", "--json"]).unwrap();
    let sessions = String::from_utf8_lossy(&sessions.stdout).into_owned();
    assert!(sessions.contains("svc-payments-deploy"), "{sessions}");
    let verify = stack.tollgate(&["audit", "verify"]).unwrap();
    assert!(verify.status.success());
}
