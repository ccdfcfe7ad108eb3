//! The gate, attacked: requests framed every way HTTP allows (Content-Length, chunked, chunked
//! with trailers, HTTP/2 with END_STREAM or with a TRAILERS frame, many small DATA frames,
//! pipelining, resets mid-body, TLS with ALPN h2), bodiless and off-route requests, bodies that
//! two JSON parsers read differently, and answers that end in trailers. Each test proves from the
//! upstream's own request log (`tollgate_e2e::assert_gate_invariant`) that nothing reached the
//! upstream without a durable `allow` record written first, that every forwarded request's answer
//! was recorded, and that no raw card number reached the client.
//!
//! Every test sends an allowed call (`get_customer`) and a call the policy denies
//! (`delete_merchant`, rule `never-delete-merchant`) in each framing; JSON-RPC ids are unique
//! within a test, so each case can be found in the upstream log and in the audit records.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::gate::{as_http_answer, naive_upstream, read_log, run_attack, settled_records};
use tollgate_e2e::{
    assert_gate_invariant, has_masked_form, initialize_body, open_session, post_mcp_with,
    raw_pans_in, HttpAnswer, Stack, StackOptions,
};

const SETTLE: Duration = Duration::from_secs(10);

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
        .to_string()
}

fn allowed_call(id: u64) -> String {
    call(id, "get_customer", json!({"customer_id":"cus_1"}))
}

fn denied_call(id: u64) -> String {
    call(id, "delete_merchant", json!({"merchant_id":"m_1"}))
}

/// host:port of the gateway's MCP listener.
fn addr(stack: &Stack) -> String {
    let rest = stack
        .gateway_url
        .split_once("://")
        .map_or(stack.gateway_url.as_str(), |(_, rest)| rest);
    rest.trim_end_matches("/mcp").to_owned()
}

/// What the client got never holds a raw card number (body and trailers alike).
fn assert_no_raw_pan(what: &str, answer: &Value) {
    let text = answer.to_string();
    assert!(
        raw_pans_in(&text).is_empty(),
        "{what}: raw PANs reached the client: {:?}\n{text}",
        raw_pans_in(&text)
    );
}

/// The allowed call came back: 200 with a result, card numbers masked.
fn assert_allowed_answer(what: &str, answer: &Value) {
    assert_no_raw_pan(what, answer);
    let http = as_http_answer(answer);
    assert_eq!(http.status, 200, "{what}: {answer}");
    let message = http.json();
    assert!(
        message["result"]["content"].is_array(),
        "{what}: no result: {answer}"
    );
    assert!(
        has_masked_form(&http.body, "1111"),
        "{what}: no masked card in {}",
        http.body
    );
}

/// The denied call got the policy's JSON-RPC error naming its rule.
fn assert_denied_answer(what: &str, answer: &Value) {
    assert_no_raw_pan(what, answer);
    let http = as_http_answer(answer);
    assert_eq!(http.status, 200, "{what}: {answer}");
    let error = &http.json()["error"];
    assert_eq!(
        error["data"]["rule"], "never-delete-merchant",
        "{what}: {answer}"
    );
}

/// The upstream never saw a `delete_merchant` call, nor the JSON-RPC id of any request in `ids`.
fn assert_never_reached(server_log: &[Value], ids: &[u64]) {
    let reached: Vec<&Value> = server_log
        .iter()
        .filter(|l| l["tool"] == "delete_merchant" || ids.iter().any(|id| l["id"] == *id))
        .collect();
    assert!(
        reached.is_empty(),
        "the upstream saw requests it never should have: {reached:#?}"
    );
}

/// An audit record decided the message with this JSON-RPC id.
fn assert_recorded(records: &[Value], id: u64, decision: &str) {
    let found = records.iter().any(|r| {
        r["event"] == "mcp.request"
            && r["decision"] == decision
            && r["messages"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["id"] == id))
    });
    assert!(
        found,
        "no mcp.request record deciding `{decision}` for id {id}"
    );
}

/// The whole upstream log against the settled audit records.
fn check_invariant(stack: &Stack) -> (Vec<Value>, Vec<Value>) {
    let server_log = stack.server_requests();
    let records = settled_records(stack, &server_log, SETTLE);
    assert_gate_invariant(&server_log, &records);
    (server_log, records)
}

/// The allowed and denied call in each framing, for one protocol.
fn framing_plan(
    proto: &str,
    framings: &[&str],
    token: &str,
    session: &str,
    first_id: u64,
) -> Value {
    let mut plan = Vec::new();
    for (i, framing) in framings.iter().enumerate() {
        let id = first_id + 10 * i as u64;
        for body in [allowed_call(id), denied_call(id + 1)] {
            plan.push(json!({"proto":proto,"framing":framing,"token":token,"session":session,"body":body}));
        }
    }
    Value::Array(plan)
}

/// Sends the allowed and denied call in each framing and checks each answer; returns the ids
/// of the denied calls.
fn attack_framings(
    stack: &Stack,
    tls: bool,
    proto: &str,
    framings: &[&str],
    token: &str,
    session: &str,
    first_id: u64,
) -> Vec<u64> {
    let plan = framing_plan(proto, framings, token, session, first_id);
    let answers = run_attack(&addr(stack), tls, &plan).unwrap();
    let mut denied = Vec::new();
    for (i, framing) in framings.iter().enumerate() {
        let id = first_id + 10 * i as u64;
        let what = format!("{proto} {framing}{}", if tls { " over TLS" } else { "" });
        assert_allowed_answer(&format!("{what}, allowed id {id}"), &answers[2 * i]);
        assert_denied_answer(
            &format!("{what}, denied id {}", id + 1),
            &answers[2 * i + 1],
        );
        denied.push(id + 1);
    }
    denied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framings_pipelining_and_aborted_bodies_are_decided_before_the_upstream() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    // a, b, c: Content-Length, chunked, chunked with a trailer.
    let mut denied = attack_framings(
        &stack,
        false,
        "h1",
        &["cl", "chunked", "chunked-trailers"],
        &token,
        &session,
        100,
    );

    // g: an allowed and a denied call written back-to-back on one connection, and the reverse.
    let plan = json!([
        {"proto":"h1","framing":"pipeline","token":token,"session":session,
         "bodies":[allowed_call(200), denied_call(201)]},
        {"proto":"h1","framing":"pipeline","token":token,"session":session,
         "bodies":[denied_call(211), allowed_call(210)]},
    ]);
    let answers = run_attack(&addr(&stack), false, &plan).unwrap();
    assert_no_raw_pan("pipelined", &Value::Array(answers.clone()));
    // Each pipelined request is answered on its own, or the connection is closed before the
    // second; never is the denied one forwarded (checked below on the upstream's log).
    assert_allowed_answer("pipelined allowed first", &answers[0][0]);
    if answers[0][1]["status"].is_number() {
        assert_denied_answer("pipelined denied second", &answers[0][1]);
    }
    assert_denied_answer("pipelined denied first", &answers[1][0]);
    if answers[1][1]["status"].is_number() {
        assert_allowed_answer("pipelined allowed second", &answers[1][1]);
    }
    denied.extend([201, 211]);

    // h: the connection closed after half the body: nothing reaches the upstream.
    let plan = json!([
        {"proto":"h1","framing":"abort","token":token,"session":session,"body":allowed_call(300)},
        {"proto":"h1","framing":"abort","token":token,"session":session,"body":denied_call(301)},
    ]);
    run_attack(&addr(&stack), false, &plan).unwrap();

    let (server_log, records) = check_invariant(&stack);
    assert_never_reached(&server_log, &[&denied[..], &[300, 301]].concat());
    for id in [100, 110, 120, 200] {
        assert_recorded(&records, id, "allow");
    }
    for id in denied.iter().copied() {
        assert_recorded(&records, id, "deny");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_end_stream_and_resets_are_decided_before_the_upstream() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    // d: END_STREAM on the last DATA frame.
    let denied = attack_framings(&stack, false, "h2", &["end-stream"], &token, &session, 100);

    // h: RST_STREAM after half the body: nothing reaches the upstream.
    let plan = json!([
        {"proto":"h2","framing":"rst","token":token,"session":session,"body":allowed_call(300)},
        {"proto":"h2","framing":"rst","token":token,"session":session,"body":denied_call(301)},
    ]);
    run_attack(&addr(&stack), false, &plan).unwrap();

    let (server_log, records) = check_invariant(&stack);
    assert_never_reached(&server_log, &[&denied[..], &[300, 301]].concat());
    assert_recorded(&records, 100, "allow");
    assert_recorded(&records, 101, "deny");
}

/// The known bypass: an HTTP/2 request body ended by a TRAILERS frame instead of END_STREAM on
/// the last DATA frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_ending_in_trailers_are_decided_before_the_upstream() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    // Before anything is judged: whatever the answers were, the denied call must not have run.
    let plan = framing_plan("h2", &["trailers", "split-trailers"], &token, &session, 100);
    let answers = run_attack(&addr(&stack), false, &plan).unwrap();
    let server_log = stack.server_requests();
    assert_never_reached(&server_log, &[101, 111]);

    // e, f: the body then trailers; the body in 7-byte DATA frames then trailers.
    assert_allowed_answer("h2 trailers, allowed", &answers[0]);
    assert_denied_answer("h2 trailers, denied", &answers[1]);
    assert_allowed_answer("h2 split-trailers, allowed", &answers[2]);
    assert_denied_answer("h2 split-trailers, denied", &answers[3]);

    let (_, records) = check_invariant(&stack);
    assert_recorded(&records, 100, "allow");
    assert_recorded(&records, 101, "deny");
    assert_recorded(&records, 110, "allow");
    assert_recorded(&records, 111, "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_and_unexpected_methods_are_decided_and_recorded() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    let mut plan = Vec::new();
    for proto in ["h1", "h2"] {
        let empty = if proto == "h1" { "cl" } else { "end-stream" };
        let bodiless = "none";
        plan.extend([
            // GET without a session: a stand-alone SSE stream would stay open.
            json!({"proto":proto,"framing":bodiless,"method":"GET","token":token}),
            json!({"proto":proto,"framing":empty,"method":"POST","token":token,"session":session,"body":""}),
            json!({"proto":proto,"framing":empty,"method":"PUT","token":token,"session":session,"body":allowed_call(400)}),
        ]);
    }
    // DELETE ends the session: last.
    plan.push(
        json!({"proto":"h1","framing":"none","method":"DELETE","token":token,"session":session}),
    );
    let answers = run_attack(&addr(&stack), false, &Value::Array(plan)).unwrap();
    assert_no_raw_pan("bodiless", &Value::Array(answers.clone()));

    let (server_log, records) = check_invariant(&stack);
    assert_never_reached(&server_log, &[400]);
    for (i, proto) in ["h1", "h2"].iter().enumerate() {
        let get = as_http_answer(&answers[3 * i]);
        assert!(get.status > 0, "{proto} GET: no answer: {}", answers[3 * i]);
        let empty = as_http_answer(&answers[3 * i + 1]);
        assert_eq!(
            empty.status,
            400,
            "{proto} empty POST: {}",
            answers[3 * i + 1]
        );
        assert_eq!(
            empty.json()["error"]["code"],
            -32600,
            "{proto} empty POST: {}",
            empty.body
        );
        let put = as_http_answer(&answers[3 * i + 2]);
        assert_eq!(put.status, 405, "{proto} PUT: {}", answers[3 * i + 2]);
    }
    let delete = as_http_answer(&answers[6]);
    assert!(delete.status > 0, "DELETE: no answer: {}", answers[6]);
    for (method, sent) in [("GET", 2), ("DELETE", 1), ("PUT", 2)] {
        let recorded = records
            .iter()
            .filter(|r| r["event"] == "mcp.request" && r["httpMethod"] == method)
            .count();
        assert!(
            recorded >= sent,
            "{sent} {method} requests sent, {recorded} mcp.request records of them"
        );
    }
    let empty_posts = records
        .iter()
        .filter(|r| {
            r["event"] == "mcp.request"
                && r["httpMethod"] == "POST"
                && r["status"] == 400
                && r["decision"] != "allow"
        })
        .count();
    assert!(
        empty_posts >= 2,
        "2 empty POSTs sent, {empty_posts} refusals recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_route_paths_never_reach_the_upstream_undecided() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let session = open_session(&stack, &token).await;

    // `//mcp` is not among them: Envoy merges the slashes, and it is the MCP path, decided as
    // such (see below).
    let paths = ["/mcpX", "/mcp/../admin", "/MCP", "/mcp%2F.."];
    let mut plan = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let id = 500 + 10 * i as u64;
        plan.push(json!({"proto":"h1","framing":"cl","path":path,"token":token,"session":session,"body":allowed_call(id)}));
        plan.push(json!({"proto":"h1","framing":"cl","path":path,"token":token,"session":session,"body":denied_call(id + 1)}));
    }
    for path in ["/mcpX", "/mcp%2F.."] {
        plan.push(json!({"proto":"h2","framing":"end-stream","path":path,"token":token,"session":session,"body":denied_call(601)}));
    }
    let answers = run_attack(&addr(&stack), false, &Value::Array(plan.clone())).unwrap();
    assert_no_raw_pan("off-route", &Value::Array(answers.clone()));

    let (server_log, records) = check_invariant(&stack);
    let mut denied: Vec<u64> = (0..paths.len()).map(|i| 501 + 10 * i as u64).collect();
    denied.push(601);
    assert_never_reached(&server_log, &denied);
    for (i, answer) in answers.iter().enumerate() {
        let path = plan[i]["path"].as_str().unwrap_or_default();
        assert_eq!(
            answer["status"], 404,
            "{} {path}: {answer}",
            plan[i]["proto"]
        );
    }
    for path in paths {
        // The record names the path as Envoy normalised it.
        let normalised = if path == "/mcp/../admin" {
            "/admin"
        } else {
            path
        };
        let recorded = records
            .iter()
            .any(|r| r["event"] == "mcp.request" && r["route"] == normalised);
        assert!(recorded, "no mcp.request record for {path}");
    }

    // Repeated slashes are merged before the route and the filter see the path: `//mcp` is the
    // MCP endpoint, decided exactly like `/mcp`.
    let merged = json!([
        {"proto":"h1","framing":"cl","path":"//mcp","token":token,"session":session,"body":allowed_call(700)},
        {"proto":"h1","framing":"cl","path":"//mcp","token":token,"session":session,"body":denied_call(701)},
    ]);
    let answers = run_attack(&addr(&stack), false, &merged).unwrap();
    assert_no_raw_pan("//mcp", &Value::Array(answers.clone()));
    assert_eq!(answers[0]["status"], 200, "{}", answers[0]);
    assert!(
        answers[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("never-delete-merchant"),
        "{}",
        answers[1]
    );
    let (server_log, _) = check_invariant(&stack);
    assert_never_reached(&server_log, &[701]);
    assert!(
        server_log
            .iter()
            .any(|line| line["id"] == 700 && line["path"] == "/mcp"),
        "the allowed call on //mcp did not reach /mcp: {server_log:#?}"
    );
}

/// Needs `envoy/render.py --tls-cert/--tls-key` (`StackOptions::gateway_tls`): without that
/// flag the stack fails at render.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_h2_bodies_with_and_without_trailers_are_decided_needs_render_tls_flag() {
    let stack = Stack::start_with(StackOptions {
        gateway_tls: true,
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    // The session is opened over TLS with HTTP/1.1 (ALPN http/1.1), by the attack client.
    let init = json!([{"proto":"h1","framing":"cl","token":token,"body":initialize_body(1)}]);
    let answers = run_attack(&addr(&stack), true, &init).unwrap();
    let init = as_http_answer(&answers[0]);
    assert_eq!(init.status, 200, "{}", answers[0]);
    let session = init
        .header("mcp-session-id")
        .expect("session id")
        .to_owned();
    let ack = json!([{"proto":"h2","framing":"end-stream","token":token,"session":session,
        "body":json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string()}]);
    let answers = run_attack(&addr(&stack), true, &ack).unwrap();
    assert_eq!(answers[0]["status"], 202, "{}", answers[0]);

    let plan = framing_plan("h2", &["end-stream", "trailers"], &token, &session, 100);
    let answers = run_attack(&addr(&stack), true, &plan).unwrap();
    assert_never_reached(&stack.server_requests(), &[101, 111]);
    assert_allowed_answer("TLS h2 end-stream, allowed", &answers[0]);
    assert_denied_answer("TLS h2 end-stream, denied", &answers[1]);
    assert_allowed_answer("TLS h2 trailers, allowed", &answers[2]);
    assert_denied_answer("TLS h2 trailers, denied", &answers[3]);
    let (_, records) = check_invariant(&stack);
    assert_recorded(&records, 111, "deny");
}

/// Bodies two JSON parsers read differently: what the gateway decides on must be what the
/// upstream runs, so the gateway refuses them all.
fn differential_bodies() -> Vec<(&'static str, Vec<u8>, i64, bool)> {
    let args = r#""arguments":{"customer_id":"cus_1","merchant_id":"m_1"}"#;
    let head = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"#;
    let text = |params: String| format!("{head}{params}}}").into_bytes();
    // (what, body, JSON-RPC error code expected, whether the naive upstream runs delete_merchant)
    vec![
        (
            "name then Name",
            text(format!(r#"{{"name":"get_customer","Name":"delete_merchant",{args}}}"#)),
            -32600,
            false,
        ),
        (
            "Name then name",
            text(format!(r#"{{"Name":"delete_merchant","name":"get_customer",{args}}}"#)),
            -32600,
            true,
        ),
        (
            "duplicate name, delete first",
            text(format!(r#"{{"name":"delete_merchant","name":"get_customer",{args}}}"#)),
            -32600,
            true,
        ),
        (
            "duplicate name, delete last",
            text(format!(r#"{{"name":"get_customer","name":"delete_merchant",{args}}}"#)),
            -32600,
            false,
        ),
        (
            "duplicate method",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","method":"tools/list","params":{{"name":"delete_merchant",{args}}}}}"#
            )
            .into_bytes(),
            -32600,
            true,
        ),
        (
            "Method beside method",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"Method":"tools/call","method":"tools/list","params":{{"name":"delete_merchant",{args}}}}}"#
            )
            .into_bytes(),
            -32600,
            true,
        ),
        (
            "fullwidth name",
            text(format!(
                r#"{{"ｎａｍｅ":"delete_merchant","name":"get_customer",{args}}}"#
            )),
            -32600,
            true,
        ),
        (
            // A JavaScript server reads it as 9007199254740992: another call's id.
            "id beyond 2^53",
            format!(
                r#"{{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{{"name":"get_customer",{args}}}}}"#
            )
            .into_bytes(),
            -32600,
            false,
        ),
        (
            "argument beyond 2^53",
            text(r#"{"name":"get_customer","arguments":{"customer_id":12345678901234567890}}"#.to_owned()),
            -32600,
            false,
        ),
        (
            "lone surrogate",
            text(r#"{"name":"get_customer","arguments":{"customer_id":"cus_1\ud800"}}"#.to_owned()),
            // Not JSON at all (RFC 8259 text must be Unicode; I-JSON forbids lone surrogates).
            -32700,
            false,
        ),
        (
            "invalid UTF-8",
            [
                head.as_bytes(),
                br#"{"name":"get_customer","arguments":{"customer_id":"cus_"#,
                b"\xff\xfe",
                br#""}}}"#,
            ]
            .concat(),
            -32700,
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_differential_bodies_are_refused_recorded_and_never_forwarded() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("naive-upstream.jsonl");
    let stack = Stack::start_with(StackOptions {
        upstream: Some(naive_upstream("mcp", &log)),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();

    // First, straight to the naive upstream: these bodies would run delete_merchant there.
    for (what, body, _, runs_delete) in differential_bodies() {
        let direct = post_mcp_with(&stack.upstream_url, &[], body).await.unwrap();
        let executed = direct.json()["result"]["executed"].clone();
        if runs_delete {
            assert_eq!(executed, "delete_merchant", "{what}: {}", direct.body);
        }
    }
    let direct_lines = read_log(&log).len();
    assert_eq!(direct_lines, differential_bodies().len());

    // Then through the gateway: refused, recorded, never forwarded.
    let bearer = format!("Bearer {token}");
    let mut answers: Vec<(&str, HttpAnswer, i64)> = Vec::new();
    for (what, body, code, _) in differential_bodies() {
        let answer = post_mcp_with(&stack.gateway_url, &[("authorization", &bearer)], body)
            .await
            .unwrap();
        answers.push((what, answer, code));
    }
    let through: Vec<Value> = read_log(&log).split_off(direct_lines);
    assert!(
        through.is_empty(),
        "differential bodies reached the upstream through the gateway: {through:#?}"
    );
    for (what, answer, code) in &answers {
        assert_eq!(answer.status, 400, "{what}: {}", answer.body);
        assert_eq!(
            answer.json()["error"]["code"],
            *code,
            "{what}: {}",
            answer.body
        );
    }
    let records = stack.audit_records().unwrap();
    let refusals = records
        .iter()
        .filter(|r| r["event"] == "mcp.request" && r["status"] == 400)
        .count();
    assert_eq!(
        refusals,
        answers.len(),
        "one refusal record per differential body: {records:#?}"
    );
    assert_gate_invariant(&through, &records);

    // The refusals say what is wrong and where, never the value.
    let message_of = |what: &str| {
        let (_, answer, _) = answers.iter().find(|(w, _, _)| *w == what).unwrap();
        answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        message_of("duplicate name, delete last"),
        r#"invalid request: duplicate member "name" in $.params"#
    );
    let big_id = message_of("id beyond 2^53");
    assert!(
        big_id.starts_with("invalid request: integer outside ±2^53 in $.id: ")
            && big_id.ends_with("send it as a string"),
        "{big_id}"
    );
    assert!(
        message_of("argument beyond 2^53").starts_with(
            "invalid request: integer outside ±2^53 in $.params.arguments.customer_id"
        ),
        "{}",
        message_of("argument beyond 2^53")
    );
    for record in &records {
        let text = record.to_string();
        assert!(
            !text.contains("9007199254740993") && !text.contains("12345678901234567890"),
            "a refused number reached the log: {text}"
        );
    }
}

/// A verified token may carry a claim the IdP wrote as a number beyond 2^53: the call goes on,
/// and its records carry the claim as its digits (the control plane refuses a record holding the
/// number, which would fail every call of this caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_beyond_2_pow_53_is_recorded_as_its_digits() {
    let stack = Stack::start().unwrap();
    let token = stack
        .token(
            "alice@example.com",
            &["--claim", "client_id=12345678901234567890"],
        )
        .unwrap();
    let session = open_session(&stack, &token).await;
    let answer = post_mcp_with(
        &stack.gateway_url,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("mcp-session-id", &session),
        ],
        allowed_call(31),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["result"]["content"].is_array(),
        "{}",
        answer.body
    );
    let (_, records) = check_invariant(&stack);
    assert_recorded(&records, 31, "allow");
    let request = records
        .iter()
        .find(|r| r["event"] == "mcp.request" && r["messages"][0]["id"] == 31)
        .unwrap();
    assert_eq!(request["identity"]["client_id"], "12345678901234567890");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_ending_in_trailers_are_masked_and_recorded() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("naive-upstream.jsonl");
    let stack = Stack::start_with(StackOptions {
        upstream: Some(naive_upstream("trailers", &log)),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();

    let sse = call(2, "get_customer", json!({"customer_id":"cus_sse"}));
    let plan = json!([
        {"proto":"h1","framing":"cl","token":token,"body":allowed_call(1)},
        {"proto":"h1","framing":"cl","token":token,"body":sse},
        {"proto":"h2","framing":"end-stream","token":token,"body":allowed_call(3)},
        {"proto":"h2","framing":"end-stream","token":token,"body":call(4, "get_customer", json!({"customer_id":"cus_sse"}))},
    ]);
    let answers = run_attack(&addr(&stack), false, &plan).unwrap();
    for (i, answer) in answers.iter().enumerate() {
        let what = format!("answer {i} ({})", plan[i]["proto"]);
        assert_no_raw_pan(&what, answer);
        let http = as_http_answer(answer);
        assert_eq!(http.status, 200, "{what}: {answer}");
        assert!(
            has_masked_form(&http.body, "1111"),
            "{what}: no masked card in {answer}"
        );
    }

    let server_log = read_log(&log);
    assert_eq!(server_log.len(), 4, "{server_log:#?}");
    let records = settled_records(&stack, &server_log, SETTLE);
    assert_gate_invariant(&server_log, &records);
    for record in records.iter().filter(|r| r["event"] == "mcp.response") {
        assert_no_raw_pan("response record", record);
    }
}
