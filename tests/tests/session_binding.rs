//! Sessions, attacked: an `Mcp-Session-Id` is bound to the identity whose `initialize` answer
//! opened it, in the control plane, before that answer leaves the gateway. The binding survives
//! an Envoy restart and a control-plane restart, holds on a second Envoy (a replica), ends with
//! the owner's DELETE or after the idle timeout, and no other identity can use or claim a
//! session — not one it saw, not one the gateway never saw, not one opened behind its back
//! directly at the upstream. Every refusal is a 404 (what tells an MCP client to start a new
//! session), recorded with why, and proven from the upstream's own log never to have reached it.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::gate::settled_records;
use tollgate_e2e::{
    assert_gate_invariant, initialize_body, open_session, post_mcp, HttpAnswer, Stack, StackOptions,
};

const SETTLE: Duration = Duration::from_secs(10);

fn list_tools(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}).to_string()
}

async fn use_session(url: &str, token: &str, session: &str, id: u64) -> HttpAnswer {
    post_mcp(url, Some(token), Some(session), list_tools(id))
        .await
        .unwrap()
}

async fn delete_session(url: &str, token: &str, session: &str) -> u16 {
    reqwest::Client::new()
        .delete(url)
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A 404 JSON-RPC error that answers request `id` and says nothing about whose session it is.
fn assert_refused(what: &str, answer: &HttpAnswer, id: u64) {
    assert_eq!(answer.status, 404, "{what}: {}", answer.body);
    let body = answer.json();
    assert_eq!(body["id"], id, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("session"), "{what}: {body}");
    assert!(!message.contains("alice"), "{what} names the owner: {body}");
}

/// The records of request `id` (JSON-RPC id) by `sub`.
fn request_records<'a>(records: &'a [Value], sub: &str, id: u64) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"] == "mcp.request" && r["sub"] == sub && r["messages"][0]["id"] == id)
        .collect()
}

fn assert_refusal_recorded(records: &[Value], sub: &str, id: u64, why: &str) {
    let found = request_records(records, sub, id);
    assert_eq!(found.len(), 1, "request {id} of {sub}: {found:#?}");
    let record = found[0];
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["outcome"], "refused", "{record}");
    assert_eq!(record["status"], 404, "{record}");
    assert_eq!(record["sessionRefused"], why, "{record}");
}

/// How many requests the upstream has received so far (its own log).
fn upstream_lines(stack: &Stack) -> usize {
    stack.server_requests().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_its_openers_on_every_envoy_across_restarts_until_it_ends() {
    let mut stack = Stack::start().unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let mallory = stack.token("mallory@example.com", &[]).unwrap();
    let url = stack.gateway_url.clone();

    let session = open_session(&stack, &alice).await;
    let answer = use_session(&url, &alice, &session, 10).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Another identity presenting the id, on the same Envoy: refused, never forwarded.
    let before = upstream_lines(&stack);
    assert_refused(
        "mallory with alice's session",
        &use_session(&url, &mallory, &session, 11).await,
        11,
    );
    // Nor can anyone claim an id the gateway never bound: made up, or opened directly at the
    // upstream, bypassing the gateway.
    let direct = post_mcp(&stack.upstream_url, None, None, initialize_body(1))
        .await
        .unwrap();
    let behind_our_back = direct
        .header("mcp-session-id")
        .expect("the upstream opens a session")
        .to_owned();
    let before_unknown = upstream_lines(&stack);
    assert_refused(
        "a session opened at the upstream",
        &use_session(&url, &mallory, &behind_our_back, 12).await,
        12,
    );
    assert_refused(
        "a made-up session",
        &use_session(&url, &mallory, "0f1e2d3c-made-up", 13).await,
        13,
    );
    assert_eq!(
        upstream_lines(&stack),
        before_unknown,
        "a refused session reached the upstream"
    );
    assert_eq!(
        before + 1,
        before_unknown,
        "only the direct initialize may reach the upstream"
    );

    // Envoy forgets everything; the binding does not.
    stack.restart_envoy().unwrap();
    let answer = use_session(&url, &alice, &session, 14).await;
    assert_eq!(
        answer.status, 200,
        "after an Envoy restart: {}",
        answer.body
    );
    assert_refused(
        "mallory after the restart",
        &use_session(&url, &mallory, &session, 15).await,
        15,
    );

    // Neither does the control plane's own restart.
    stack.restart_control_plane().unwrap();
    let mut after_restart = None;
    for attempt in 0..50 {
        let answer = use_session(&url, &alice, &session, 100 + attempt).await;
        if answer.status != 503 {
            after_restart = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = after_restart.expect("the control plane came back");
    assert_eq!(
        answer.status, 200,
        "after a control-plane restart: {}",
        answer.body
    );

    // A replica in front of the same control plane knows the session too.
    let (_replica, replica_url) = stack.start_replica().unwrap();
    let answer = use_session(&replica_url, &alice, &session, 16).await;
    assert_eq!(answer.status, 200, "through the replica: {}", answer.body);
    assert_refused(
        "mallory through the replica",
        &use_session(&replica_url, &mallory, &session, 17).await,
        17,
    );
    let before_delete = upstream_lines(&stack);
    assert_eq!(
        delete_session(&replica_url, &mallory, &session).await,
        404,
        "mallory ends alice's session"
    );
    assert_eq!(upstream_lines(&stack), before_delete);

    // The owner ends it on one Envoy; it is over on the other.
    let ended = delete_session(&replica_url, &alice, &session).await;
    assert!((200..300).contains(&ended), "alice's DELETE: {ended}");
    let before_reuse = upstream_lines(&stack);
    assert_refused(
        "alice's ended session",
        &use_session(&url, &alice, &session, 18).await,
        18,
    );
    assert_eq!(upstream_lines(&stack), before_reuse);

    // The initialize sent directly to the upstream is the one line that did not come through
    // the gateway.
    let mut server_log = stack.server_requests();
    let direct_line = server_log.remove(before);
    assert!(direct_line["x_request_id"].is_null(), "{direct_line}");
    let records = settled_records(&stack, &server_log, SETTLE);
    assert_gate_invariant(&server_log, &records);
    for (sub, id, why) in [
        ("mallory@example.com", 11, "other_identity"),
        ("mallory@example.com", 12, "unknown"),
        ("mallory@example.com", 13, "unknown"),
        ("mallory@example.com", 15, "other_identity"),
        ("mallory@example.com", 17, "other_identity"),
        ("alice@example.com", 18, "unknown"),
    ] {
        assert_refusal_recorded(&records, sub, id, why);
    }
    let opened: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mcp.session.opened")
        .collect();
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0]["session"], session.as_str());
    assert_eq!(opened[0]["sub"], "alice@example.com");
    assert_eq!(opened[0]["outcome"], "bound");
    // The binding was on record before the answer carrying the id was: the client could not
    // have used the id earlier.
    let position = |event: &str| {
        records.iter().position(|r| {
            r["event"] == event && r["session"].is_null() == (event == "mcp.response")
        })
    };
    let (bound_at, answered_at) = (position("mcp.session.opened"), position("mcp.response"));
    assert!(
        bound_at.is_some() && answered_at.is_some() && bound_at < answered_at,
        "binding at {bound_at:?}, initialize answer recorded at {answered_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_and_its_id_is_refused_even_to_its_owner() {
    let stack = Stack::start_with(StackOptions {
        control_plane_args: vec!["--session-idle-timeout".to_owned(), "2s".to_owned()],
        ..Default::default()
    })
    .unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let url = stack.gateway_url.clone();
    let session = open_session(&stack, &alice).await;
    // Used within the timeout, again and again, it stays open past it.
    for id in 20..24 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let answer = use_session(&url, &alice, &session, id).await;
        assert_eq!(answer.status, 200, "use {id}: {}", answer.body);
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let before = upstream_lines(&stack);
    assert_refused(
        "an idle session",
        &use_session(&url, &alice, &session, 30).await,
        30,
    );
    assert_eq!(upstream_lines(&stack), before);
    // A new session works at once.
    let fresh = open_session(&stack, &alice).await;
    assert_ne!(fresh, session);
    let answer = use_session(&url, &alice, &fresh, 31).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let server_log = stack.server_requests();
    let records = settled_records(&stack, &server_log, SETTLE);
    assert_gate_invariant(&server_log, &records);
    assert_refusal_recorded(&records, "alice@example.com", 30, "expired");
}
