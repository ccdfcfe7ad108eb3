//! What the gateway survives, against the real processes: the control plane killed under load or
//! slowed down for real, the upstream MCP server slow or gone. Every case fails closed with a
//! JSON-RPC error, and no call reaches the server without an acknowledged audit record.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_e2e::faults::{
    concurrent_calls, envoy_memory, envoy_stat, forwarded_ids, get_customer, json_server,
    post_head, raise_nofile, server_call_ids, tool_call, url_addr, wait_for_success, DelayProxy,
    Ended,
};
use tollgate_e2e::{post_mcp, HttpAnswer, Stack, StackOptions};

/// JSON-RPC error code of the gateway's own errors.
const GATEWAY_ERROR: i64 = -32001;

/// Polls until the chain holds a `mcp.request.failedClosed` note for each of `ids`: the gateway
/// appends it once the control plane answers again. Returns the records.
fn wait_for_failed_closed_notes(stack: &Stack, ids: &[&String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = stack.audit_records().unwrap();
        let noted: BTreeSet<String> = records
            .iter()
            .filter(|r| r["event"] == "mcp.request.failedClosed" && r["status"] == 503)
            .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&&String> = ids.iter().filter(|id| !noted.contains(**id)).collect();
        if missing.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no failedClosed note for {} calls, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fail-closed answer: 503 with the gateway's JSON-RPC error for exactly this call.
fn assert_fail_closed(id: &str, answer: &HttpAnswer) {
    assert_eq!(answer.status, 503, "{id}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{id}"
    );
    let body = answer.json();
    assert_eq!(body["id"], id, "{}", answer.body);
    assert_eq!(body["error"]["code"], GATEWAY_ERROR, "{}", answer.body);
}

/// Callers busy when the control plane is killed; each has at most one call in flight.
const KILL_CALLERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_killed_under_load_fails_closed_then_recovers() {
    control_plane_killed_under_load(json_server(), false).await;
}

/// `"responseRecord": "pipelined"`: the README's promise for it, under the same kill. Every
/// answer's request record is there; an answer may lack its response record only when that
/// record was in flight at the kill, so at most one per caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_killed_with_pipelined_answers_loses_only_records_in_flight() {
    let options = StackOptions {
        config: json!({"responseRecord": "pipelined"}),
        ..json_server()
    };
    control_plane_killed_under_load(options, true).await;
}

async fn control_plane_killed_under_load(options: StackOptions, pipelined: bool) {
    let mut stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;

    let (url, load_token) = (stack.gateway_url.clone(), token.clone());
    let load = tokio::spawn(async move {
        concurrent_calls(&url, &load_token, "load", KILL_CALLERS, 60, get_customer).await
    });
    // Kill the control plane (SIGKILL) while the callers are busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server_call_ids(&stack).len() < 30 {
        assert!(Instant::now() < deadline, "load never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.stop_control_plane();
    let ended = load.await.unwrap();

    // Same Envoy, control plane back on the same address and store: traffic resumes.
    stack.restart_control_plane().unwrap();
    let after = wait_for_success(&stack, &token, "after").await;
    assert!(after.json()["result"].is_object(), "{}", after.body);

    let records = stack.audit_records().unwrap();
    let forwarded: BTreeSet<String> = forwarded_ids(&records).into_iter().collect();
    let responses: Vec<String> = records
        .iter()
        .filter(|r| r["event"] == "mcp.response")
        .map(|r| r["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    let (mut completed, mut refused, mut broken) = (0, 0, 0);
    let mut unrecorded_answers = Vec::new();
    for (id, outcome) in &ended {
        match outcome {
            Ended::Answered(answer) if answer.status == 200 => {
                completed += 1;
                assert!(answer.json()["result"].is_object(), "{id}: {}", answer.body);
                assert!(forwarded.contains(id), "{id} answered without a record");
                // A buffered answer leaves only once its response record is durable (by
                // default), or once it is sent (pipelined).
                let quoted = format!("\"{id}\"");
                if !responses.iter().any(|c| c.contains(&quoted)) {
                    unrecorded_answers.push(id.clone());
                }
            }
            Ended::Answered(answer) => {
                refused += 1;
                assert_fail_closed(id, answer);
            }
            // Forwarded, but its answer could not be recorded: the gateway reset the stream
            // rather than release it. Its request record must be there (checked below).
            Ended::Broken(_) => broken += 1,
        }
    }
    assert!(
        completed > 0 && refused > 0,
        "{completed} completed, {refused} refused"
    );
    if pipelined {
        assert!(
            unrecorded_answers.len() <= KILL_CALLERS,
            "more answers without a response record than were in flight: {unrecorded_answers:?}"
        );
    } else {
        assert!(
            unrecorded_answers.is_empty(),
            "answers without a response record: {unrecorded_answers:?}"
        );
    }
    // Each refusal is on record too, once the control plane is back.
    let refused_ids: Vec<&String> = ended
        .iter()
        .filter(|(_, e)| matches!(e, Ended::Answered(a) if a.status == 503))
        .map(|(id, _)| id)
        .collect();
    let records = wait_for_failed_closed_notes(&stack, &refused_ids);
    let forwarded: BTreeSet<String> = forwarded_ids(&records).into_iter().collect();
    // Nothing reached the server without an acknowledged request record, killed or not.
    let seen = server_call_ids(&stack);
    let unrecorded: Vec<&String> = seen.difference(&forwarded).collect();
    assert!(
        unrecorded.is_empty(),
        "forwarded unrecorded: {unrecorded:?}"
    );
    eprintln!(
        "{} calls: {completed} completed ({} without a response record), {refused} refused with \
         503, {broken} reset",
        ended.len(),
        unrecorded_answers.len()
    );

    // The chain survived the SIGKILL intact.
    let verify = stack.tollgate(&["audit", "verify"]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// gRPC requests Envoy has made to the control plane (unary calls and streams).
fn control_plane_requests(stack: &Stack) -> u64 {
    envoy_stat(
        stack.admin_port,
        "cluster.tollgate_control_plane.upstream_rq_total",
    )
    .unwrap_or(0)
}

/// The records of a call travel on each worker's audit stream, not as a gRPC call each (two
/// per call), and the stream is opened again after the control plane comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_ride_one_stream_per_worker_which_reopens_after_a_restart() {
    const CALLS: usize = 40;
    let mut stack = Stack::start_with(json_server()).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;
    // A worker opens its stream when its configuration loads, or at its next tick (100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in ["before", "after"] {
        let started = control_plane_requests(&stack);
        let ended = concurrent_calls(
            &stack.gateway_url,
            &token,
            round,
            4,
            CALLS / 4,
            get_customer,
        )
        .await;
        let answered = ended
            .iter()
            .filter(|(_, e)| matches!(e, Ended::Answered(a) if a.status == 200))
            .count();
        assert_eq!(answered, CALLS, "{round}: {answered} of {CALLS} answered");
        let requests = control_plane_requests(&stack) - started;
        // One unary call per record would be 2 × CALLS; revocation refreshes (one a second per
        // worker) are the rest.
        assert!(
            requests < (CALLS / 2) as u64,
            "{round}: {requests} gRPC requests for {CALLS} calls"
        );
        let records = stack.audit_records().unwrap();
        let forwarded: BTreeSet<String> = forwarded_ids(&records).into_iter().collect();
        for (id, _) in &ended {
            assert!(
                forwarded.contains(id),
                "{round}: {id} has no request record"
            );
        }
        if round == "before" {
            stack.stop_control_plane();
            stack.restart_control_plane().unwrap();
            wait_for_success(&stack, &token, "back").await;
            // The stream is reopened on the next tick (100 ms); until then appends are unary.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_control_plane_times_out_closed_and_wedges_no_worker() {
    let proxy = DelayProxy::start().await.unwrap();
    let mut options = json_server();
    // Generous, so that a busy machine does not time out the calls meant to pass.
    options.config = json!({ "auditTimeoutMs": 2000 });
    options.render_args = vec!["--control-plane".to_owned(), proxy.addr.clone()];
    let stack = Stack::start_with(options).unwrap();
    proxy.set_target(&stack.control_plane_addr);
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;

    // Every byte to the control plane now takes longer than the filter waits.
    proxy.set_delay(Duration::from_millis(5_000));
    let ended = concurrent_calls(&stack.gateway_url, &token, "slow", 4, 2, get_customer).await;
    for (id, outcome) in &ended {
        match outcome {
            Ended::Answered(answer) => assert_fail_closed(id, answer),
            Ended::Broken(error) => panic!("{id}: {error}"),
        }
    }
    let seen = server_call_ids(&stack);
    for (id, _) in &ended {
        assert!(!seen.contains(id), "{id} reached the server");
    }

    // Delay gone: both workers answer again, many calls at once.
    proxy.set_delay(Duration::ZERO);
    wait_for_success(&stack, &token, "recovered").await;
    // The late request records reached the chain after all; the notes that follow say that
    // those calls were refused, not forwarded.
    let slow_ids: Vec<&String> = ended.iter().map(|(id, _)| id).collect();
    wait_for_failed_closed_notes(&stack, &slow_ids);
    let ended = concurrent_calls(&stack.gateway_url, &token, "fast", 8, 5, get_customer).await;
    assert_eq!(ended.len(), 40);
    for (id, outcome) in &ended {
        match outcome {
            Ended::Answered(answer) => assert_eq!(answer.status, 200, "{id}: {}", answer.body),
            Ended::Broken(error) => panic!("{id}: {error}"),
        }
    }
}

/// The response record the gateway appended for the call `id`.
fn response_record<'a>(records: &'a [Value], id: &str) -> Option<&'a Value> {
    let quoted = format!("\"{id}\"");
    records.iter().find(|r| {
        r["event"] == "mcp.response" && r["content"].as_str().is_some_and(|c| c.contains(&quoted))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_or_down_gets_504_or_502_jsonrpc_errors_audited() {
    let mut options = json_server();
    options.render_args = vec!["--route-timeout".to_owned(), "2s".to_owned()];
    let mut stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;

    // Slow: the server answers after 6 s, the route allows 2 s.
    let slow = tool_call(
        "slow-1",
        "slow_stream",
        json!({"count": 1, "interval_ms": 6000}),
    );
    let answer = post_mcp(&stack.gateway_url, Some(&token), None, slow)
        .await
        .unwrap();
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["id"], "slow-1", "{}", answer.body);
    assert_eq!(body["error"]["code"], GATEWAY_ERROR);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("in time"),
        "{body}"
    );

    // Down: the server is gone.
    stack.server.kill();
    let answer = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        get_customer("down-1"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["id"], "down-1", "{}", answer.body);
    assert_eq!(body["error"]["code"], GATEWAY_ERROR);

    let records = stack.audit_records().unwrap();
    for (id, status) in [("slow-1", 504), ("down-1", 502)] {
        let record =
            response_record(&records, id).unwrap_or_else(|| panic!("no response record for {id}"));
        assert_eq!(record["status"], status, "{record}");
        assert!(forwarded_ids(&records).contains(&id.to_owned()), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_is_off_by_default() {
    let mut stack = Stack::start_with(json_server()).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;
    stack.stop_control_plane();
    let answer = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        get_customer("read-1"),
    )
    .await
    .unwrap();
    assert_fail_closed("read-1", &answer);
    assert!(!server_call_ids(&stack).contains("read-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_listed_reads_pass_and_audits_them_once_back() {
    let mut options = json_server();
    options.config = json!({ "failOpen": { "tools": ["get_customer"] } });
    let mut stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;
    stack.stop_control_plane();

    // A listed read passes, masked as always.
    let answer = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        get_customer("fo-read"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["result"].is_object(), "{}", answer.body);
    assert!(
        tollgate_e2e::raw_pans_in(&answer.body).is_empty(),
        "{}",
        answer.body
    );
    // An unlisted read and a write (a small refund, which the policy allows) still fail closed.
    let unlisted = tool_call(
        "fo-list",
        "list_transactions",
        json!({"customer_id": "cus_1"}),
    );
    let answer = post_mcp(&stack.gateway_url, Some(&token), None, unlisted)
        .await
        .unwrap();
    assert_fail_closed("fo-list", &answer);
    let write = tool_call(
        "fo-refund",
        "refund_payment",
        json!({"payment_id": "pay_1", "amount": 100}),
    );
    let answer = post_mcp(&stack.gateway_url, Some(&token), None, write)
        .await
        .unwrap();
    assert_fail_closed("fo-refund", &answer);
    let seen = server_call_ids(&stack);
    assert!(seen.contains("fo-read"));
    assert!(
        !seen.contains("fo-list") && !seen.contains("fo-refund"),
        "{seen:?}"
    );

    // Back: the queued records reach the chain, marked, without any new traffic.
    stack.restart_control_plane().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = stack.audit_records().unwrap();
        let marked = records.iter().filter(|r| r["failOpen"] == true).count();
        if marked >= 2 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "fail-open records never appended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let request = records
        .iter()
        .find(|r| r["event"] == "mcp.request" && r["messages"][0]["id"] == "fo-read")
        .expect("the fail-open call's request record");
    assert_eq!(request["failOpen"], true, "{request}");
    assert_eq!(request["outcome"], "forwarded");
    let response = response_record(&records, "fo-read").expect("its response record");
    assert_eq!(response["failOpen"], true, "{response}");
    assert_eq!(response["status"], 200);
    assert!(tollgate_e2e::raw_pans_in(&response.to_string()).is_empty());
    // Exactly once each.
    assert_eq!(
        records.iter().filter(|r| r["failOpen"] == true).count(),
        2,
        "{records:?}"
    );
    let verify = stack.tollgate(&["audit", "verify"]).unwrap();
    assert!(verify.status.success());
}

/// The Envoy stat of requests in progress on the MCP listener.
const ACTIVE: &str = "http.mcp.downstream_rq_active";

/// Polls until Envoy has no request in progress any more on the MCP listener.
async fn wait_until_idle(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while envoy_stat(stack.admin_port, ACTIVE) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "requests still active: {:?}",
            envoy_stat(stack.admin_port, ACTIVE)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MIB: u64 = 1024 * 1024;

/// Polls until Envoy's allocated memory is below `limit` (connections are freed a little after
/// they close); returns it, or fails with the last figure.
async fn wait_for_memory_below(stack: &Stack, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = envoy_memory(stack.admin_port).unwrap();
        if now < limit {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "envoy holds {now} bytes, over {limit}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_leave_mid_stream_leave_nothing_behind() {
    let stack = Stack::start_with(StackOptions {
        // SSE answers without sessions: each POST streams on its own.
        server_args: vec!["--stateless".to_owned()],
        ..StackOptions::default()
    })
    .unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let bob = stack.token("bob@example.com", &[]).unwrap();
    wait_for_success(&stack, &bob, "warm").await;
    let baseline = envoy_memory(stack.admin_port).unwrap();

    for round in 0..10 {
        let mut leavers = Vec::new();
        for i in 0..10 {
            let (url, token) = (stack.gateway_url.clone(), alice.clone());
            leavers.push(tokio::spawn(async move {
                let body = json!({"jsonrpc":"2.0","id":format!("leave-{round}-{i}"),
                    "method":"tools/call","params":{"name":"slow_stream",
                    "arguments":{"count": 100, "interval_ms": 50},
                    "_meta":{"progressToken": format!("p-{round}-{i}")}}});
                let mut response = reqwest::Client::new()
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("authorization", format!("Bearer {token}"))
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                // The first event arrives, then the client goes away mid-stream.
                let mut seen = Vec::new();
                while !String::from_utf8_lossy(&seen).contains("data:") {
                    let chunk = response.chunk().await.unwrap().expect("stream ended early");
                    seen.extend_from_slice(&chunk);
                }
                assert!(tollgate_e2e::raw_pans_in(&String::from_utf8_lossy(&seen)).is_empty());
            }));
        }
        // Another user is served meanwhile.
        let answer = post_mcp(
            &stack.gateway_url,
            Some(&bob),
            None,
            get_customer(&format!("bob-{round}")),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.json()["result"].is_object(), "{}", answer.body);
        for leaver in leavers {
            leaver.await.unwrap();
        }
    }
    // Every abandoned stream is gone from Envoy, and its memory with it.
    wait_until_idle(&stack).await;
    let after = wait_for_memory_below(&stack, baseline + 16 * MIB).await;
    eprintln!("envoy allocated: {baseline} before, {after} after 100 abandoned streams");

    // Part of each answer reached its client: each has a response record, marked aborted, with
    // what was sent (masked).
    let deadline = Instant::now() + Duration::from_secs(30);
    let aborted = loop {
        let records = stack.audit_records().unwrap();
        let aborted: Vec<Value> = records
            .into_iter()
            .filter(|r| r["event"] == "mcp.response" && r["aborted"] == true)
            .collect();
        if aborted.len() >= 100 || Instant::now() > deadline {
            break aborted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(aborted.len(), 100);
    for round in 0..10 {
        for i in 0..10 {
            let token = format!("\"p-{round}-{i}\"");
            assert!(
                aborted
                    .iter()
                    .any(|r| r["content"].as_str().is_some_and(|c| c.contains(&token))),
                "no aborted record for {token}"
            );
        }
    }
    assert!(tollgate_e2e::raw_pans_in(&Value::from(aborted).to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_body_times_out_and_never_reaches_the_server() {
    let mut options = json_server();
    options.render_args = vec!["--request-timeout".to_owned(), "3s".to_owned()];
    let stack = Stack::start_with(options).unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let bob = stack.token("bob@example.com", &[]).unwrap();
    wait_for_success(&stack, &bob, "warm").await;
    let baseline = envoy_memory(stack.admin_port).unwrap();

    let mut lorises = Vec::new();
    for i in 0..20 {
        let (url, token) = (stack.gateway_url.clone(), alice.clone());
        lorises.push(tokio::spawn(async move {
            let body = get_customer(&format!("loris-{i}"));
            let stream = TcpStream::connect(url_addr(&url)).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            write
                .write_all(post_head(&url, &token, body.len()).as_bytes())
                .await
                .unwrap();
            // One byte every 200 ms: the whole body would take far longer than the timeout.
            let trickle = async move {
                for byte in body.bytes() {
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                std::future::pending::<()>().await;
            };
            let mut answer = Vec::new();
            tokio::select! {
                () = trickle => unreachable!(),
                _ = read.read_to_end(&mut answer) => {}
            }
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    // Meanwhile another user's calls are answered.
    for n in 0..5 {
        let answer = post_mcp(
            &stack.gateway_url,
            Some(&bob),
            None,
            get_customer(&format!("bob-{n}")),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    for loris in lorises {
        let answer = loris.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let seen = server_call_ids(&stack);
    assert!(seen.iter().all(|id| !id.starts_with("loris-")), "{seen:?}");
    // Each was answered by Envoy with 408, and that answer is on record.
    let records = stack.audit_records().unwrap();
    let timed_out = records
        .iter()
        .filter(|r| r["event"] == "mcp.response" && r["status"] == 408)
        .count();
    assert_eq!(timed_out, 20, "{records:?}");
    wait_until_idle(&stack).await;
    wait_for_memory_below(&stack, baseline + 16 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_idle_streams_stay_bounded_and_others_are_served() {
    const STREAMS: usize = 10_000;
    // Both ends of every stream are open files: this process's and Envoy's (which inherits it).
    let limit = raise_nofile(STREAMS as u64 * 2 + 2_000).unwrap();
    assert!(
        limit > STREAMS as u64 + 1_000,
        "open-file limit {limit} is too low"
    );
    let stack = Stack::start_with(json_server()).unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let bob = stack.token("bob@example.com", &[]).unwrap();
    wait_for_success(&stack, &bob, "warm").await;
    let baseline = envoy_memory(stack.admin_port).unwrap();

    // Each stream sends its headers (a verified token, a body announced) and then nothing.
    let head = post_head(&stack.gateway_url, &alice, 512);
    let addr = url_addr(&stack.gateway_url);
    let mut streams = Vec::with_capacity(STREAMS);
    for batch in 0..STREAMS / 500 {
        let mut opening = Vec::new();
        for _ in 0..500 {
            let (addr, head) = (addr.clone(), head.clone());
            opening.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(head.as_bytes()).await?;
                Ok::<_, std::io::Error>(stream)
            }));
        }
        for task in opening {
            let stream = task.await.unwrap();
            streams.push(stream.unwrap_or_else(|e| panic!("batch {batch}: {e}")));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while envoy_stat(stack.admin_port, ACTIVE).unwrap_or(0) < STREAMS as u64 {
        assert!(
            Instant::now() < deadline,
            "only {:?} streams active",
            envoy_stat(stack.admin_port, ACTIVE)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = envoy_memory(stack.admin_port).unwrap();

    // Another user is served while they are all open.
    let answer = post_mcp(&stack.gateway_url, Some(&bob), None, get_customer("bob-1"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["result"].is_object(), "{}", answer.body);

    drop(streams);
    wait_until_idle(&stack).await;
    // All of it given back.
    let after = wait_for_memory_below(&stack, baseline + 32 * MIB).await;
    eprintln!(
        "envoy allocated: {} MiB idle, {} MiB with {STREAMS} idle streams, {} MiB after they left",
        baseline / MIB,
        held / MIB,
        after / MIB
    );
    // A bounded cost per idle stream.
    let per_stream = held.saturating_sub(baseline) / STREAMS as u64;
    assert!(per_stream < 64 * 1024, "{per_stream} bytes per idle stream");
}

/// The JSON-RPC ids of every `mcp.request` record, whatever was decided.
fn request_ids(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_policy_is_loaded_under_load_without_losing_a_request_or_a_record() {
    let lds = tempfile::tempdir().unwrap();
    let mut options = json_server();
    options.render_args = vec![
        "--lds-dir".to_owned(),
        lds.path().to_string_lossy().into_owned(),
    ];
    let policy = options.policy.clone();
    let stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;
    let updates_before =
        envoy_stat(stack.admin_port, "listener_manager.lds.update_success").unwrap_or_default();

    let (url, load_token) = (stack.gateway_url.clone(), token.clone());
    let load = tokio::spawn(async move {
        concurrent_calls(&url, &load_token, "steady", 4, 60, get_customer).await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while server_call_ids(&stack).len() < 40 {
        assert!(Instant::now() < deadline, "load never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new policy freezes customer reads; Envoy swaps the listener while calls are in flight.
    let mut frozen = policy;
    let mut rules = vec![json!({
        "id": "freeze-customer-reads",
        "match": { "tool": "get_customer" },
        "action": "deny",
        "reason": "customer reads are frozen"
    })];
    rules.extend(frozen["rules"].as_array().cloned().unwrap_or_default());
    frozen["rules"] = rules.into();
    stack.reload_config(&json!({ "policy": frozen })).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while envoy_stat(stack.admin_port, "listener_manager.lds.update_success").unwrap_or_default()
        <= updates_before
    {
        assert!(Instant::now() < deadline, "the new listener was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = load.await.unwrap();

    // The switch is done: the new policy decides.
    let after = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        get_customer("after"),
    )
    .await
    .unwrap();
    assert_eq!(
        after.json()["error"]["data"]["rule"],
        "freeze-customer-reads",
        "{}",
        after.body
    );

    let records = stack.audit_records().unwrap();
    let recorded = request_ids(&records);
    let forwarded: BTreeSet<String> = forwarded_ids(&records).into_iter().collect();
    let (mut served, mut refused) = (0, 0);
    for (id, outcome) in &ended {
        let Ended::Answered(answer) = outcome else {
            panic!("{id} was lost: {outcome:?}");
        };
        assert_eq!(answer.status, 200, "{id}: {}", answer.body);
        let body = answer.json();
        if body["result"].is_object() {
            served += 1;
            assert!(forwarded.contains(id), "{id} served without a record");
        } else {
            refused += 1;
            assert_eq!(
                body["error"]["data"]["rule"], "freeze-customer-reads",
                "{body}"
            );
            assert!(recorded.contains(id), "{id} refused without a record");
            assert!(!forwarded.contains(id), "{id}");
        }
    }
    eprintln!(
        "{} calls across the reload: {served} served, {refused} refused by the new policy",
        ended.len()
    );
    assert!(served > 0, "no call before the switch");
    let seen = server_call_ids(&stack);
    assert!(seen.is_subset(&forwarded), "forwarded unrecorded");
    assert!(!seen.contains("after"));

    // A configuration the filter refuses is rejected whole: the last good policy stays.
    let rejected = "listener_manager.lds.update_rejected";
    let rejected_before = envoy_stat(stack.admin_port, rejected).unwrap_or_default();
    let broken = json!({ "policy": { "rules": [{ "id": "x", "action": "maybe" }] } });
    stack.reload_config(&broken).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while envoy_stat(stack.admin_port, rejected).unwrap_or_default() <= rejected_before {
        assert!(
            Instant::now() < deadline,
            "the bad configuration was not rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        get_customer("still"),
    )
    .await
    .unwrap();
    assert_eq!(
        still.json()["error"]["data"]["rule"],
        "freeze-customer-reads",
        "{}",
        still.body
    );
}
