//! A filter that fails at run time fails closed: a panic inside the wasm VM (injected through a
//! test-only build of the filter, `make wasm-fault`) answers the call with an error and forwards
//! nothing; Envoy reloads the VM (`failure_policy: FAIL_RELOAD`), and calls are decided again.
//! Meanwhile nothing reaches the upstream undecided, as its own request log shows.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::gate::settled_records;
use tollgate_e2e::{
    assert_gate_invariant, open_session, post_mcp_with, raw_pans_in, Stack, StackOptions,
};

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_vm_fails_closed_and_is_reloaded() {
    let fault_wasm = std::env::var("TOLLGATE_WASM_FAULT")
        .expect("TOLLGATE_WASM_FAULT: the fault-injection filter (make wasm-fault)");
    let stack = Stack::start_with(StackOptions {
        // One worker: the panic kills the only VM there is.
        envoy_workers: 1,
        render_args: vec!["--wasm".to_owned(), fault_wasm],
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;
    let bearer = format!("Bearer {token}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", session.as_str()),
    ];

    let read = call(1, "get_customer", json!({"customer_id":"cus_1"}));
    let before = post_mcp_with(&stack.gateway_url, &auth, read.clone())
        .await
        .unwrap();
    assert_eq!(before.status, 200, "{}", before.body);

    // The panic: a denied call and an allowed one, each in a request that kills the VM.
    let panic = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", session.as_str()),
        ("x-tollgate-fault", "panic"),
    ];
    for body in [
        call(2, "delete_merchant", json!({"merchant_id":"m_1"})),
        call(3, "get_customer", json!({"customer_id":"cus_1"})),
    ] {
        let failed = post_mcp_with(&stack.gateway_url, &panic, body)
            .await
            .unwrap();
        println!(
            "call through a panicking VM: {} {}",
            failed.status, failed.body
        );
        assert!(
            failed.status >= 500,
            "a failed VM must not answer as if it decided: {} {}",
            failed.status,
            failed.body
        );
        assert!(raw_pans_in(&failed.body).is_empty(), "{}", failed.body);
    }

    // Until the VM is back every call fails closed; then it is decided again, and the denied
    // call is still refused.
    let started = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let answer = post_mcp_with(&stack.gateway_url, &auth, read.clone())
            .await
            .unwrap();
        statuses.push(answer.status);
        if answer.status == 200 {
            assert!(raw_pans_in(&answer.body).is_empty(), "{}", answer.body);
            break;
        }
        assert!(answer.status >= 500, "{} {}", answer.status, answer.body);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the VM was not reloaded within 30 s: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "VM reloaded after {:?}; statuses while it was down: {statuses:?}",
        started.elapsed()
    );
    let denied = post_mcp_with(
        &stack.gateway_url,
        &auth,
        call(4, "delete_merchant", json!({"merchant_id":"m_1"})),
    )
    .await
    .unwrap();
    assert!(
        denied.body.contains("never-delete-merchant"),
        "{} {}",
        denied.status,
        denied.body
    );

    let server_log = stack.server_requests();
    let ids: Vec<&Value> = server_log.iter().map(|line| &line["id"]).collect();
    assert!(
        !ids.contains(&&json!(2)) && !ids.contains(&&json!(3)),
        "a call through the failed VM reached the upstream: {server_log:#?}"
    );
    let records = settled_records(&stack, &server_log, Duration::from_secs(10));
    assert_gate_invariant(&server_log, &records);
}
