//! What an Envoy crash loses, against the real processes: Envoy is SIGKILLed while callers are
//! busy, and the rows of the README's "What a crash loses" table for Envoy are checked against
//! the payments server's own request log and the audit chain. Then Envoy starts again on the same
//! ports and calls are served again over an intact chain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::faults::{
    concurrent_calls, forwarded_ids, get_customer, json_server, server_call_ids, tool_call,
    url_addr, wait_for_success, Ended,
};
use tollgate_e2e::{gate_invariant_violations, post_mcp, raw_pans_in, Stack, StackOptions};

/// Callers busy when Envoy is killed; each has at most one call in flight.
const CALLERS: usize = 6;
/// Calls the upstream holds for a minute: certain to be forwarded and unanswered at the kill.
const HELD_CALLS: usize = 2;
/// Load calls the upstream must have seen before the kill.
const CALLS_BEFORE_KILL: usize = 30;

fn held_call(id: &str) -> String {
    // One step after the longest interval the server allows: the answer comes after the kill.
    tool_call(
        id,
        "slow_stream",
        json!({"count": 1, "interval_ms": 60_000}),
    )
}

/// The ids of the calls whose answer has an `mcp.response` record.
fn response_record_ids(
    records: &[Value],
    ids: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let contents: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "mcp.response")
        .filter_map(|r| r["content"].as_str())
        .collect();
    ids.into_iter()
        .filter(|id| {
            let quoted = format!("\"{id}\"");
            contents.iter().any(|c| c.contains(&quoted))
        })
        .collect()
}

/// One call of the load and how it ended.
struct Call {
    id: String,
    ended: Ended,
    /// Whether the kill had been ordered when the call ended.
    after_kill: bool,
}

/// Calls `get_customer` one after the other until a call fails at the transport (the kill), or
/// for a minute at most.
async fn call_until_cut(
    url: String,
    token: String,
    caller: usize,
    killed: Arc<AtomicBool>,
) -> Vec<Call> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calls = Vec::new();
    for n in 0.. {
        let id = format!("load-{caller}-{n}");
        let ended = match post_mcp(&url, Some(&token), None, get_customer(&id)).await {
            Ok(answer) => Ended::Answered(answer),
            Err(error) => Ended::Broken(format!("{error:#}")),
        };
        let cut = matches!(ended, Ended::Broken(_));
        calls.push(Call {
            id,
            ended,
            after_kill: killed.load(Ordering::SeqCst),
        });
        if cut || Instant::now() > deadline {
            break;
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_killed_under_load_loses_no_record_of_a_forwarded_call_or_a_released_answer() {
    envoy_killed_under_load(json_server(), false).await;
}

/// `"responseRecord": "pipelined"`: an answer may have left while its response record was still
/// on its way to the control plane, so at most the records in flight at the kill (one per
/// caller) are missing; every request record is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_killed_with_pipelined_answers_loses_only_response_records_in_flight() {
    let options = StackOptions {
        config: json!({"responseRecord": "pipelined"}),
        ..json_server()
    };
    envoy_killed_under_load(options, true).await;
}

async fn envoy_killed_under_load(options: StackOptions, pipelined: bool) {
    let mut stack = Stack::start_with(options).unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    wait_for_success(&stack, &token, "warm").await;

    let killed = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (url, token) = (stack.gateway_url.clone(), token.clone());
            tokio::spawn(call_until_cut(url, token, caller, Arc::clone(&killed)))
        })
        .collect();
    let held_ids: Vec<String> = (0..HELD_CALLS).map(|n| format!("held-{n}")).collect();
    let held: Vec<_> = held_ids
        .iter()
        .map(|id| {
            let (url, token, body) = (stack.gateway_url.clone(), token.clone(), held_call(id));
            tokio::spawn(async move { post_mcp(&url, Some(&token), None, body).await })
        })
        .collect();

    // Kill Envoy (SIGKILL, `Proc::kill`) once the load is flowing and the held calls are upstream.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = server_call_ids(&stack);
        let load_seen = seen.iter().filter(|id| id.starts_with("load-")).count();
        if load_seen >= CALLS_BEFORE_KILL && held_ids.iter().all(|id| seen.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "load never reached the server: {load_seen} calls, held calls seen: {:?}",
            held_ids
                .iter()
                .filter(|id| seen.contains(*id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_pid = stack.envoy.pid();
    killed.store(true, Ordering::SeqCst);
    stack.envoy.kill();
    // The process that died is Envoy itself (a wrapper that forked would leave it listening).
    assert!(
        std::net::TcpStream::connect(url_addr(&stack.gateway_url)).is_err(),
        "the gateway still listens after the kill"
    );

    let mut calls = Vec::new();
    for caller in load {
        calls.extend(caller.await.unwrap());
    }
    let mut held_ended = Vec::new();
    for (id, call) in held_ids.iter().zip(held) {
        held_ended.push((id.clone(), call.await.unwrap()));
    }

    // Same bootstrap, same ports: traffic resumes.
    stack.restart_envoy().unwrap();
    assert_ne!(stack.envoy.pid(), killed_pid);
    let after = wait_for_success(&stack, &token, "after").await;
    assert!(after.json()["result"].is_object(), "{}", after.body);

    // Both workers of the new Envoy serve, several callers at once.
    let resumed = concurrent_calls(&stack.gateway_url, &token, "resumed", 4, 5, get_customer).await;
    for (id, ended) in &resumed {
        match ended {
            Ended::Answered(answer) => assert_eq!(answer.status, 200, "{id}: {}", answer.body),
            Ended::Broken(error) => panic!("{id} after the restart: {error}"),
        }
    }

    // Pipelined, an answer may come before its record is stored: wait for these records.
    let mut answered_after: BTreeSet<String> = resumed.into_iter().map(|(id, _)| id).collect();
    answered_after.insert(after.json()["id"].as_str().unwrap_or_default().to_owned());
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = stack.audit_records().unwrap();
        let on_record = response_record_ids(&records, answered_after.iter().cloned());
        if on_record == answered_after {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "answers after the restart without a response record: {:?}",
            answered_after.difference(&on_record).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let server_log = stack.server_requests();
    let seen = server_call_ids(&stack);
    let forwarded: BTreeSet<String> = forwarded_ids(&records).into_iter().collect();
    let all_ids = calls.iter().map(|c| c.id.clone()).chain(held_ids.clone());
    let answered_on_record = response_record_ids(&records, all_ids);

    // The held calls: the upstream had them, the client got no answer, and the chain holds the
    // request record (forwarded) without a response record.
    for (id, ended) in &held_ended {
        assert!(ended.is_err(), "{id} got an answer through a dead Envoy");
        assert!(seen.contains(id), "{id} never reached the upstream");
        assert!(forwarded.contains(id), "{id} forwarded without its record");
        assert!(
            !answered_on_record.contains(id),
            "{id} has a response record, but the upstream never answered it"
        );
    }

    // Every caller's last call was cut by the kill; no call failed before it.
    let mut last_of_caller: BTreeMap<&str, &Call> = BTreeMap::new();
    for call in &calls {
        let caller = call.id.rsplit_once('-').map_or("", |(c, _)| c);
        last_of_caller.insert(caller, call);
    }
    assert_eq!(last_of_caller.len(), CALLERS);
    for (caller, last) in &last_of_caller {
        assert!(
            matches!(last.ended, Ended::Broken(_)),
            "{caller} never saw the kill (last call {})",
            last.id
        );
    }
    let (mut completed, mut cut_forwarded, mut cut_after_answer) = (0, 0, 0);
    let (mut cut_unforwarded, mut cut_unforwarded_on_record) = (0, 0);
    let mut unrecorded_answers = Vec::new();
    let mut cut_ids: BTreeSet<String> = held_ids.iter().cloned().collect();
    for call in &calls {
        let id = &call.id;
        match &call.ended {
            Ended::Answered(answer) => {
                completed += 1;
                // Envoy's death never turns into an HTTP error: a client gets the answer or a
                // broken connection.
                assert_eq!(answer.status, 200, "{id}: {}", answer.body);
                assert!(answer.json()["result"].is_object(), "{id}: {}", answer.body);
                assert!(
                    raw_pans_in(&answer.body).is_empty(),
                    "{id}: a raw card number reached the client"
                );
                assert!(forwarded.contains(id), "{id} answered without a record");
                if !answered_on_record.contains(id) {
                    unrecorded_answers.push(id.clone());
                }
            }
            Ended::Broken(error) => {
                assert!(call.after_kill, "{id} failed before the kill: {error}");
                cut_ids.insert(id.clone());
                match (seen.contains(id), answered_on_record.contains(id)) {
                    // The answer's record was stored, but Envoy died before the client had the
                    // whole answer (or before the acknowledgement reached it).
                    (true, true) => cut_after_answer += 1,
                    // Killed between the request record and the answer's record.
                    (true, false) => cut_forwarded += 1,
                    // Killed before the call reached the upstream (its request record may be
                    // stored already), or refused by the dead port.
                    (false, recorded) => {
                        assert!(!recorded, "{id}: an answer on record for a call never sent");
                        cut_unforwarded += 1;
                        if forwarded.contains(id) {
                            cut_unforwarded_on_record += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(completed > 0, "no call completed before the kill");
    if pipelined {
        assert!(
            unrecorded_answers.len() <= CALLERS,
            "more answers without a response record than were in flight: {unrecorded_answers:?}"
        );
    } else {
        assert!(
            unrecorded_answers.is_empty(),
            "answers released without a response record: {unrecorded_answers:?}"
        );
    }

    // Nothing reached the upstream without a request record that allowed it, stored before the
    // upstream saw it; the only answers missing from the chain are those of calls the kill cut
    // (and, pipelined, those just counted).
    assert!(
        seen.is_subset(&forwarded),
        "forwarded unrecorded: {:?}",
        seen.difference(&forwarded).collect::<Vec<_>>()
    );
    let excused: BTreeSet<String> = server_log
        .iter()
        .filter(|line| {
            line["id"].as_str().is_some_and(|id| {
                cut_ids.contains(id) || unrecorded_answers.iter().any(|u| u == id)
            })
        })
        .filter_map(|line| line["x_request_id"].as_str())
        .map(|rid| format!("request {rid} reached the upstream but has no mcp.response record"))
        .collect();
    let violations: Vec<String> = gate_invariant_violations(&server_log, &records)
        .into_iter()
        .filter(|v| !excused.contains(v))
        .collect();
    assert!(
        violations.is_empty(),
        "gate invariant broken by the kill:\n{}",
        violations.join("\n")
    );
    eprintln!(
        "{} load calls: {completed} completed ({} without a response record); cut by the kill: \
         {cut_forwarded} forwarded without an answer, {cut_after_answer} after the answer's \
         record was stored, {cut_unforwarded} never reached the upstream \
         ({cut_unforwarded_on_record} of them with a request record); {HELD_CALLS} held calls \
         cut upstream",
        calls.len(),
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
