//! The hop between Envoy and the control plane, as an attacker in the mesh would try it: the
//! filter's appends travel over mutual TLS (Envoy's own counters say so), and a control plane
//! with a PKI of its own at the control plane's address (an impostor that would acknowledge
//! appends without storing them and grant every approval) gets no call at all: the request
//! fails closed and nothing reaches the upstream.

use serde_json::{json, Value};
use tollgate_e2e::{
    admin_get, free_port, open_session, post_mcp, start_control_plane, Stack, StackOptions,
};

fn allowed_call(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
           "params":{"name":"get_customer","arguments":{"customer_id":"cus_1"}}})
    .to_string()
}

/// Envoy's counter `cluster.tollgate_control_plane.<name>`.
fn cluster_stat(stack: &Stack, name: &str) -> u64 {
    let stat = format!("cluster.tollgate_control_plane.{name}");
    admin_get(stack.admin_port, &format!("/stats?filter=^{stat}$"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{stat}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_appends_over_mutual_tls() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;
    let answer = post_mcp(
        &stack.gateway_url,
        Some(&token),
        Some(&session),
        allowed_call(1),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    assert!(
        cluster_stat(&stack, "ssl.handshake") > 0,
        "no TLS handshake on Envoy's cluster to the control plane"
    );
    assert_eq!(cluster_stat(&stack, "ssl.fail_verify_error"), 0);
    assert_eq!(cluster_stat(&stack, "ssl.fail_verify_san"), 0);

    let records = stack.audit_records().unwrap();
    let start = &records[0];
    assert_eq!(start["event"], "controlPlane.start");
    assert_eq!(
        start["transport"]["tls"]["gatewayIdentities"],
        json!(["spiffe://tollgate.local/gateway"]),
        "{start}"
    );
    assert!(records.iter().any(|r| r["event"] == "mcp.request"));
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "controlPlane.refused")
        .collect();
    assert!(refused.is_empty(), "the gateway was refused: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_control_plane_gets_no_call_and_the_request_fails_closed() {
    // What an attacker who took over the control plane's address would run: the real binary,
    // with a certificate of its own (its own dev CA).
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor_home = impostor_dir.path().join("home");
    let impostor_addr = format!("127.0.0.1:{}", free_port());
    let _impostor =
        start_control_plane(&impostor_home, &impostor_addr, &[], impostor_dir.path()).unwrap();
    let options = StackOptions {
        render_args: vec!["--control-plane".to_owned(), impostor_addr.clone()],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();

    let answer = post_mcp(&stack.gateway_url, Some(&token), None, allowed_call(2))
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        stack.server_requests().is_empty(),
        "the upstream saw a call no real control plane recorded: {:?}",
        stack.server_requests()
    );
    assert!(
        cluster_stat(&stack, "ssl.fail_verify_error") + cluster_stat(&stack, "ssl.fail_verify_san")
            > 0,
        "Envoy did not refuse the impostor's certificate"
    );

    // Nothing of the call reached the impostor either (read as an auditor of its own issuer).
    let tollgate = |args: &[&str], token: Option<&str>| {
        let mut command = std::process::Command::new(tollgate_e2e::tollgate_bin());
        command
            .arg("--home")
            .arg(&impostor_home)
            .args(args)
            .env("TOLLGATE_CONTROL_PLANE", format!("https://{impostor_addr}"));
        if let Some(token) = token {
            command.env("TOLLGATE_TOKEN", token);
        }
        command.output().unwrap()
    };
    let minted = tollgate(
        &[
            "dev",
            "token",
            "--sub",
            "auditor@example.com",
            "--groups",
            "auditors",
            "--aud",
            "tollgate-operators",
        ],
        None,
    );
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let out = tollgate(&["audit", "query", "--json"], Some(&token));
    assert!(out.status.success(), "{out:?}");
    let impostor_records = String::from_utf8_lossy(&out.stdout);
    assert!(
        !impostor_records.contains("mcp.request"),
        "{impostor_records}"
    );
}
