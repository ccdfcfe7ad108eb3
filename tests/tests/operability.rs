//! Metrics and health of both processes, scraped after real traffic: Envoy's `/stats/prometheus`
//! (the filter's proxy-wasm metrics, with rule, action and brand as labels) and `/ready`, and the
//! control plane's `/metrics` and `/healthz` (`tollgate serve --metrics-listen`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use tollgate_e2e::faults::tool_call;
use tollgate_e2e::{admin_get, free_port, post_mcp, Stack, StackOptions};

/// GET on a plain HTTP listener: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `name{labels}` (labels exactly as printed, or none), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Sum of the samples of `name` whatever their labels.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_processes_report_health_and_metrics_that_follow_traffic() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stack = Stack::start_with(StackOptions {
        server_args: vec!["--json-response".to_owned()],
        control_plane_args: vec![
            "--metrics-listen".to_owned(),
            metrics_addr.clone(),
            "--checkpoint-interval".to_owned(),
            "1s".to_owned(),
        ],
        // A held call waits this long for its approval before it is told to retry.
        config: json!({ "approvalWaitMs": 3000 }),
        ..StackOptions::default()
    })
    .unwrap();

    assert_eq!(
        admin_get(stack.admin_port, "/ready").unwrap().trim(),
        "LIVE"
    );
    let (status, body) = http_get(&metrics_addr, "/healthz");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "ok\n");
    let (_, before) = http_get(&metrics_addr, "/metrics");
    let appends_before = sample(&before, "tollgate_audit_appends_total").unwrap();

    let token = stack.token("alice@example.com", &[]).unwrap();
    for i in 0..3 {
        let call = tool_call(
            &format!("read-{i}"),
            "get_customer",
            json!({"customer_id": "cus_1"}),
        );
        let answer = post_mcp(&stack.gateway_url, Some(&token), None, call)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let delete = tool_call("del-1", "delete_merchant", json!({"merchant_id": "m_1"}));
    let answer = post_mcp(&stack.gateway_url, Some(&token), None, delete)
        .await
        .unwrap();
    assert!(answer.json()["error"].is_object(), "{}", answer.body);

    // Counters move at once; histograms when Envoy next flushes its stats (every few seconds).
    let envoy = poll(|| {
        let text = admin_get(stack.admin_port, "/stats/prometheus").ok()?;
        (sample(&text, "tollgate_audit_append_ms_count{}")? >= 7.0).then_some(text)
    })
    .await;
    assert_eq!(sample(&envoy, "tollgate_calls{}"), Some(4.0));
    assert_eq!(
        sample(
            &envoy,
            "tollgate_decisions{rule=\"allow-reads\",action=\"allow\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &envoy,
            "tollgate_decisions{rule=\"never-delete-merchant\",action=\"deny\"}"
        ),
        Some(1.0)
    );
    // cus_1's record holds card numbers of several brands; each answer masks them all.
    let visa = sample(&envoy, "tollgate_masked_pans{brand=\"visa\"}").unwrap_or(0.0);
    assert!(visa >= 3.0, "visa: {visa}");
    assert!(sum(&envoy, "tollgate_masked_pans") > visa);
    // 4 request records and 3 response records (a refusal is answered without one).
    assert_eq!(
        sample(&envoy, "tollgate_audit_append_ms_count{}"),
        Some(7.0)
    );
    assert_eq!(
        sample(&envoy, "tollgate_audit_append_failures{}"),
        Some(0.0)
    );
    assert_eq!(sample(&envoy, "tollgate_approvals_pending{}"), Some(0.0));

    // The control plane appended exactly those, and signs checkpoints (every second here).
    let after = poll(|| {
        let (_, text) = http_get(&metrics_addr, "/metrics");
        (sample(&text, "tollgate_checkpoints_signed_total")? >= 1.0).then_some(text)
    })
    .await;
    let appends_after = sample(&after, "tollgate_audit_appends_total").unwrap();
    assert_eq!(appends_after, appends_before + 7.0, "{after}");
    let chain = sample(&after, "tollgate_audit_chain_records").unwrap();
    assert!(chain >= appends_after, "{after}");
    assert!(sample(&after, "tollgate_audit_flushes_total").unwrap() >= 1.0);
    assert!(
        sample(&after, "tollgate_checkpoint_age_seconds").is_some(),
        "{after}"
    );
    assert_eq!(sample(&after, "tollgate_store_healthy"), Some(1.0));

    // A call held for approval shows in the gauge while it waits, and leaves it after.
    let (url, held_token) = (stack.gateway_url.clone(), token.clone());
    let held = tokio::spawn(async move {
        let call = tool_call(
            "held-1",
            "update_payout_account",
            json!({"merchant_id": "m_1", "iban": "DE89370400440532013000"}),
        );
        post_mcp(&url, Some(&held_token), None, call).await
    });
    poll(|| {
        let text = admin_get(stack.admin_port, "/stats/prometheus").ok()?;
        (sample(&text, "tollgate_approvals_pending{}")? == 1.0).then_some(())
    })
    .await;
    let answer = held.await.unwrap().unwrap();
    assert!(answer.json()["error"].is_object(), "{}", answer.body);
    let text = admin_get(stack.admin_port, "/stats/prometheus").unwrap();
    assert_eq!(sample(&text, "tollgate_approvals_pending{}"), Some(0.0));
}

/// Polls `probe` until it gives a value (bounded).
async fn poll<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
