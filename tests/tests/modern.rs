//! MCP 2026-07-28, the stateless revision, through Envoy and the filter, beside the session-based
//! revisions: headers that must agree with the body, lists that are private to their caller,
//! what records say about the revision, the client and the trace, the multi-round-trip
//! approval, and real 2026-07-28 clients (the Python SDK, rmcp) against the demo payments server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_e2e::gate::run_attack;
use tollgate_e2e::peers::{python_bin, run_python_script};
use tollgate_e2e::{post_mcp_with, raw_pans_in, HttpAnswer, Stack, StackOptions};

const VERSION: &str = "2026-07-28";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "tollgate-e2e", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
        "traceparent": TRACEPARENT
    })
}

fn request(id: u64, method: &str, params: Value) -> String {
    let mut params = params;
    params["_meta"] = meta();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

fn call(id: u64, tool: &str, arguments: Value) -> String {
    request(
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
}

/// A POST as a 2026-07-28 client sends it: the token, `MCP-Protocol-Version`, and `headers`.
async fn post(stack: &Stack, token: &str, headers: &[(&str, &str)], body: String) -> HttpAnswer {
    let auth = format!("Bearer {token}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", VERSION),
    ];
    all.extend_from_slice(headers);
    post_mcp_with(&stack.gateway_url, &all, body).await.unwrap()
}

/// Requests the payments server received with this JSON-RPC id.
fn received(stack: &Stack, id: u64) -> Vec<Value> {
    stack
        .server_requests()
        .into_iter()
        .filter(|r| r["id"] == id)
        .collect()
}

/// The `mcp.request` record of the request with this JSON-RPC id, once it is in the log.
fn request_record(stack: &Stack, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = stack.audit_records().unwrap();
        if let Some(record) = records.into_iter().find(|r| {
            r["event"] == "mcp.request"
                && r["messages"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"] == id))
        }) {
            return record;
        }
        assert!(Instant::now() < deadline, "no record of request {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn base64_sentinel(text: &str) -> String {
    format!(
        "=?base64?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// A request the gateway must refuse: its id, headers, body, and what the error must say.
type Refusal = (u64, Vec<(&'static str, String)>, String, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_disagree_with_the_body_are_refused_and_never_reach_the_server() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let get = json!({"customer_id": "cus_1"});

    // Refused: the header names what the policy would allow, the body what it denies; a
    // missing header; a version the body contradicts; a header sent twice; a mirror the gateway
    // cannot check (it never saw the tool's schema).
    let refused: Vec<Refusal> = vec![
        (
            101,
            vec![
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "get_customer".into()),
            ],
            call(101, "delete_merchant", json!({"merchant_id": "m_1"})),
            "Mcp-Name header",
        ),
        (
            102,
            vec![
                ("mcp-method", "tools/list".into()),
                ("mcp-name", "get_customer".into()),
            ],
            call(102, "get_customer", get.clone()),
            "Mcp-Method header",
        ),
        (
            103,
            vec![("mcp-name", "get_customer".into())],
            call(103, "get_customer", get.clone()),
            "Mcp-Method header is missing",
        ),
        (
            104,
            vec![
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "get_customer".into()),
                ("mcp-name", "delete_merchant".into()),
            ],
            call(104, "get_customer", get.clone()),
            "more than once",
        ),
        (
            105,
            vec![
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "list_payments_by_region".into()),
                ("mcp-param-region", "eu-west1".into()),
            ],
            call(
                105,
                "list_payments_by_region",
                json!({"region": "eu-west1"}),
            ),
            "tools/list",
        ),
    ];
    for (id, headers, body, expected) in &refused {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = post(&stack, &token, &headers, body.clone()).await;
        assert_eq!(answer.status, 400, "{id}: {}", answer.body);
        let error = &answer.json()["error"];
        assert_eq!(error["code"], -32020, "{id}: {}", answer.body);
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{id}: {}",
            answer.body
        );
        assert_eq!(answer.json()["id"], *id);
        let record = request_record(&stack, *id);
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["outcome"], "refused");
    }

    // Agreeing headers pass, the Base64 form too; the record names the revision, the client,
    // the trace and the headers.
    let answer = post(
        &stack,
        &token,
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", &base64_sentinel("get_customer")),
        ],
        call(106, "get_customer", get.clone()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(raw_pans_in(&answer.body).is_empty(), "{}", answer.body);
    let record = request_record(&stack, 106);
    assert_eq!(record["outcome"], "forwarded");
    let message = &record["messages"][0];
    assert_eq!(message["protocolVersion"], VERSION);
    assert_eq!(message["clientInfo"]["name"], "tollgate-e2e");
    assert_eq!(message["traceparent"], TRACEPARENT);
    assert_eq!(record["mcpHeaders"]["mcp-name"], "get_customer");
    assert_eq!(received(&stack, 106).len(), 1);

    // Over HTTP/2 with the body ending in trailers, the same disagreement is refused too.
    let plan = json!([{
        "proto": "h2", "framing": "trailers", "token": token,
        "headers": [["mcp-protocol-version", VERSION], ["mcp-method", "tools/call"],
                    ["mcp-name", "get_customer"]],
        "body": call(107, "delete_merchant", json!({"merchant_id": "m_1"}))
    }]);
    let answers = run_attack(&gateway_addr(&stack), false, &plan).unwrap();
    assert_eq!(answers[0]["status"], 400, "{}", answers[0]);
    assert!(answers[0]["body"].as_str().unwrap().contains("-32020"));

    std::thread::sleep(Duration::from_millis(500));
    for (id, ..) in &refused {
        assert!(
            received(&stack, *id).is_empty(),
            "request {id} reached the server"
        );
    }
    assert!(
        received(&stack, 107).is_empty(),
        "the h2 request reached the server"
    );
}

fn gateway_addr(stack: &Stack) -> String {
    let rest = stack.gateway_url.split_once("://").unwrap().1;
    rest.split('/').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_parameters_are_checked_once_the_tools_are_listed_and_masked_in_records() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let list = post(
        &stack,
        &token,
        &[("mcp-method", "tools/list")],
        request(200, "tools/list", json!({})),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let tools = list.json()["result"]["tools"].clone();
    let by_region = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "list_payments_by_region")
        .unwrap_or_else(|| panic!("no list_payments_by_region in {tools}"));
    assert_eq!(
        by_region["inputSchema"]["properties"]["region"]["x-mcp-header"],
        "Region"
    );
    let headers = |region: &'static str| {
        vec![
            ("mcp-method", "tools/call"),
            ("mcp-name", "list_payments_by_region"),
            ("mcp-param-region", region),
        ]
    };
    let ok = post(
        &stack,
        &token,
        &headers("eu-west1"),
        call(
            201,
            "list_payments_by_region",
            json!({"region": "eu-west1"}),
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(received(&stack, 201).len(), 1);

    let lying = post(
        &stack,
        &token,
        &headers("us-east1"),
        call(
            202,
            "list_payments_by_region",
            json!({"region": "eu-west1"}),
        ),
    )
    .await;
    assert_eq!(lying.status, 400, "{}", lying.body);
    assert_eq!(lying.json()["error"]["code"], -32020);
    let missing = post(
        &stack,
        &token,
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "list_payments_by_region"),
        ],
        call(
            203,
            "list_payments_by_region",
            json!({"region": "eu-west1"}),
        ),
    )
    .await;
    assert_eq!(missing.status, 400, "{}", missing.body);

    // A mirrored value holding a card number is masked in the record like the argument.
    let pan_region = "4111 1111 1111 1111";
    let answer = post(
        &stack,
        &token,
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "list_payments_by_region"),
            ("mcp-param-region", &base64_sentinel(pan_region)),
        ],
        call(
            204,
            "list_payments_by_region",
            json!({"region": pan_region}),
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let record = request_record(&stack, 204);
    let text = record.to_string();
    assert!(raw_pans_in(&text).is_empty(), "{text}");
    assert_eq!(
        record["mcpHeaders"]["mcp-param-region"],
        "**** **** **** 1111"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(received(&stack, 202).is_empty() && received(&stack, 203).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_filtered_for_its_caller_is_private_whatever_the_server_said() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let body = request(300, "tools/list", json!({}));
    let direct = post_mcp_with(
        &stack.upstream_url,
        &[
            ("mcp-protocol-version", VERSION),
            ("mcp-method", "tools/list"),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        direct.json()["result"]["cacheScope"],
        "public",
        "{}",
        direct.body
    );
    let gateway = post(&stack, &token, &[("mcp-method", "tools/list")], body).await;
    let result = &gateway.json()["result"];
    assert_eq!(result["cacheScope"], "private", "{}", gateway.body);
    assert_eq!(result["ttlMs"], direct.json()["result"]["ttlMs"]);
    let names = |v: &Value| -> Vec<String> {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(names(result).contains(&"get_customer".to_owned()));
    assert!(!names(result).contains(&"delete_merchant".to_owned()));
    assert!(names(&direct.json()["result"]).contains(&"delete_merchant".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_refuses_the_revisions_it_does_not_serve() {
    let mut policy: Value = serde_json::from_slice(
        &std::fs::read(tollgate_e2e::workspace().join("envoy/policy/payments.json")).unwrap(),
    )
    .unwrap();
    policy["protocolVersions"] = json!(["2025-11-25"]);
    let stack = Stack::start_with(StackOptions {
        policy,
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let answer = post(
        &stack,
        &token,
        &[("mcp-method", "server/discover")],
        request(400, "server/discover", json!({})),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], -32022);
    assert_eq!(error["data"]["supported"], json!(["2025-11-25"]));
    assert!(received(&stack, 400).is_empty());
    let record = request_record(&stack, 400);
    assert_eq!(record["messages"][0]["protocolVersion"], VERSION);
}

/// Runs the Python SDK client's `approve` scenario for `tool` with `arguments`: for each URL
/// elicitation it reports, `on_elicitation(url)` decides (after acting on the approval) whether
/// the client accepts. Returns the transcript.
fn python_approve(
    stack: &Stack,
    token: &str,
    tool: &str,
    arguments: &Value,
    mut on_elicitation: impl FnMut(&str) -> bool,
) -> Value {
    let script = tollgate_e2e::peers::node_dir().join("py_client_modern.py");
    let mut child = Command::new(python_bin())
        .arg(script)
        .args([
            stack.gateway_url.as_str(),
            token,
            "--scenario",
            "approve",
            "--tool",
            tool,
            "--args",
            &arguments.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, elicitations) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut noise = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = elicitations.recv_timeout(left.min(Duration::from_millis(200))) else {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(!left.is_zero(), "the client hangs: {noise:?}");
            continue;
        };
        let Some(url) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["elicitation"]["url"].as_str().map(str::to_owned))
        else {
            noise.push(line);
            continue;
        };
        let answer = if on_elicitation(&url) {
            "accept"
        } else {
            "decline"
        };
        writeln!(stdin, "{answer}").unwrap();
        stdin.flush().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("no transcript: {stdout}\n{noise:?}"))
}

/// An operator token for bob, a payments approver.
fn approver(stack: &Stack) -> String {
    stack
        .token(
            "bob@example.com",
            &[
                "--groups",
                "payments-approvers",
                "--aud",
                "tollgate-operators",
            ],
        )
        .unwrap()
}

fn approve(stack: &Stack, operator: &str, verb: &str, id: &str, reason: &str) {
    let out = stack
        .tollgate_as(Some(operator), &["approvals", verb, id, "--reason", reason])
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_is_a_multi_round_trip_request_for_a_2026_client() {
    let stack = Stack::start().unwrap();
    let alice = stack
        .token("alice@example.com", &["--groups", "payments-ops"])
        .unwrap();
    let bob = approver(&stack);
    let arguments = json!({"merchant_id": "m_2", "account_number": "DE89370400440532013000",
                           "routing_number": "110000000"});

    // Approved: the first round is answered at once with the approval's URL; the client's
    // retry while pending is asked again; after the approval the retry passes, once.
    let mut rounds = 0;
    let started = Instant::now();
    let transcript = python_approve(&stack, &alice, "update_payout_account", &arguments, |url| {
        rounds += 1;
        let id = url.rsplit('/').next().unwrap().to_owned();
        assert!(id.starts_with("apr_"), "{url}");
        assert!(
            stack.server_calls("update_payout_account") == 0,
            "forwarded before approval"
        );
        if rounds == 2 {
            approve(&stack, &bob, "approve", &id, "checked with the merchant");
        }
        true
    });
    assert!(rounds >= 2, "{transcript}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the client was held instead of asked"
    );
    let result = transcript["result"].to_string();
    assert!(transcript["error"].is_null(), "{transcript}");
    assert!(result.contains("payout"), "{transcript}");
    assert_eq!(stack.server_calls("update_payout_account"), 1);
    // What the server got carried nothing of the gateway's.
    let forwarded = stack
        .server_requests()
        .into_iter()
        .find(|r| r["tool"] == "update_payout_account")
        .unwrap();
    assert!(forwarded["request_state"].is_null(), "{forwarded}");
    let records = stack.audit_records().unwrap();
    assert!(records
        .iter()
        .any(|r| r["event"] == "mcp.forwarded" && r["decision"] == "approved"));
    assert!(records
        .iter()
        .any(|r| r["event"] == "mcp.request" && r["approvalRetry"]["approvalId"].is_string()));

    // Denied: the retry is refused with the approver's reason.
    let other = json!({"merchant_id": "m_3", "account_number": "GB29NWBK60161331926819",
                       "routing_number": "110000000"});
    let transcript = python_approve(&stack, &alice, "update_payout_account", &other, |url| {
        let id = url.rsplit('/').next().unwrap().to_owned();
        approve(
            &stack,
            &bob,
            "deny",
            &id,
            "account not on the merchant's letterhead",
        );
        true
    });
    let error = transcript["error"].to_string();
    assert!(error.contains("letterhead"), "{transcript}");
    assert_eq!(stack.server_calls("update_payout_account"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_gateway_state_grants_nothing() {
    let stack = Stack::start().unwrap();
    let alice = stack.token("alice@example.com", &[]).unwrap();
    let bob = approver(&stack);
    let headers = [
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_payout_account"),
    ];
    let arguments = json!({"merchant_id": "m_2", "account_number": "DE89370400440532013000",
                           "routing_number": "110000000"});
    let mut params = json!({"name": "update_payout_account", "arguments": arguments});
    params["_meta"] = meta();
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] =
        json!({"elicitation": {"url": {}}});
    let body = |id: u64, params: &Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
    };
    let first = post(&stack, &alice, &headers, body(500, &params)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let result = &first.json()["result"];
    assert_eq!(result["resultType"], "input_required", "{}", first.body);
    let state = result["requestState"].as_str().unwrap().to_owned();
    let retry = |id: u64, mut p: Value, state: &str| {
        p["requestState"] = state.into();
        p["inputResponses"] = json!({"tollgate-approval": {"action": "accept"}});
        body(id, &p)
    };
    // Nobody approved: an accepting retry, or one naming a made-up approval, is asked again.
    let made_up = state.replacen("apr_", "apr_0", 1);
    for (id, s) in [(501, state.clone()), (502, made_up)] {
        let answer = post(&stack, &alice, &headers, retry(id, params.clone(), &s)).await;
        let result = &answer.json()["result"];
        assert_eq!(
            result["resultType"], "input_required",
            "{id}: {}",
            answer.body
        );
        // The retry joins the approval that is already pending: approvers see one request.
        let again = result["requestState"].as_str().unwrap();
        assert_eq!(again.split('.').nth(2), state.split('.').nth(2), "{id}");
    }
    // Approved: the state of that approval does not carry another call (other arguments).
    let approval = state.split('.').nth(2).unwrap().to_owned();
    approve(&stack, &bob, "approve", &approval, "expected change");
    let mut other_call = params.clone();
    other_call["arguments"]["account_number"] = "GB29NWBK60161331926819".into();
    let answer = post(&stack, &alice, &headers, retry(503, other_call, &state)).await;
    assert_eq!(
        answer.json()["result"]["resultType"],
        "input_required",
        "{}",
        answer.body
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stack.server_calls("update_payout_account"), 0);
    // The approved call itself passes, once.
    let answer = post(&stack, &alice, &headers, retry(504, params.clone(), &state)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["result"]["resultType"] != "input_required",
        "{}",
        answer.body
    );
    assert_eq!(stack.server_calls("update_payout_account"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_in_2026_mode_works_through_the_gateway_with_card_numbers_masked() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let run = |url: &str, token: Option<&str>| -> Value {
        let mut args = vec![url];
        args.extend(token);
        let ran = run_python_script("py_client_modern.py", &args, Duration::from_secs(90))
            .unwrap()
            .ok()
            .unwrap();
        serde_json::from_str(ran.stdout.trim()).unwrap()
    };
    let direct = run(&stack.upstream_url, None);
    let gateway = run(&stack.gateway_url, Some(&token));
    let text = gateway.to_string();
    assert!(raw_pans_in(&text).is_empty(), "{text}");
    assert!(
        !raw_pans_in(&direct.to_string()).is_empty(),
        "the server sent no card numbers"
    );
    for key in [
        "protocolVersion",
        "server",
        "prompts",
        "resources",
        "progress",
    ] {
        assert_eq!(direct[key], gateway[key], "{key}");
    }
    // The gateway's list is the caller's: the tools the policy never allows are gone.
    let tools = gateway["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "get_customer"));
    assert!(!tools.iter().any(|t| t == "delete_merchant"));
    // The server's own multi round trip (a form elicitation) passes, masked both ways.
    let message = gateway["exportStatement"]["elicitationMessage"].to_string();
    assert!(
        message.contains("1111") && raw_pans_in(&message).is_empty(),
        "{message}"
    );
    assert!(gateway["exportStatement"]["result"]
        .to_string()
        .contains("2026-11"));
    let records = stack.audit_records().unwrap();
    let modern: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .filter(|r| r["messages"][0]["protocolVersion"] == VERSION)
        .collect();
    assert!(
        modern
            .iter()
            .any(|r| r["messages"][0]["method"] == "server/discover"),
        "no server/discover record"
    );
    assert!(modern
        .iter()
        .any(|r| r["messages"][0]["requestStateSha256"].is_string()));
    assert!(modern.iter().all(|r| r["session"].is_null()));
}

/// rmcp, the official Rust SDK, as a 2026-07-28 client (`server/discover`, no `initialize`):
/// discover, list, call, read, through the gateway.
async fn rmcp_tour(url: &str, token: Option<&str>) -> Value {
    use rmcp::model::{CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::{ClientLifecycleMode, ClientServiceExt};

    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let client = ()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let mut out = serde_json::Map::new();
    out.insert(
        "protocolVersion".into(),
        json!(client
            .peer_info()
            .map(|info| info.protocol_version.to_string())),
    );
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    out.insert("tools".into(), json!(names));
    let customer = client
        .call_tool(
            CallToolRequestParams::new("get_customer").with_arguments(
                json!({"customer_id": "cus_1"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    out.insert("customer".into(), serde_json::to_value(&customer).unwrap());
    // rmcp mirrors `region` into Mcp-Param-Region from the schema it listed, but now and then
    // sends the call before that schema is in its cache, and the gateway refuses it (-32020), as
    // a server must. The spec's client answer: list the tools again and retry.
    let by_region_call = || {
        client.call_tool(
            CallToolRequestParams::new("list_payments_by_region")
                .with_arguments(json!({"region": "eu-west1"}).as_object().cloned().unwrap()),
        )
    };
    let mut by_region = by_region_call().await;
    // rmcp fills its schema cache behind the list call, so one relist is not always enough.
    for _ in 0..3 {
        match &by_region {
            Err(rmcp::ServiceError::McpError(e)) if e.code.0 == -32020 => {
                client.list_all_tools().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                by_region = by_region_call().await;
            }
            _ => break,
        }
    }
    let by_region =
        by_region.unwrap_or_else(|e| panic!("list_payments_by_region through {url}: {e:?}"));
    out.insert("byRegion".into(), serde_json::to_value(&by_region).unwrap());
    let read = client
        .read_resource(ReadResourceRequestParams::new("payments://policy"))
        .await
        .unwrap();
    out.insert("policy".into(), serde_json::to_value(&read).unwrap());
    client.cancel().await.unwrap();
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rmcp_client_in_2026_mode_works_through_the_gateway() {
    let stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let direct = rmcp_tour(&stack.upstream_url, None).await;
    let gateway = rmcp_tour(&stack.gateway_url, Some(&token)).await;
    assert_eq!(gateway["protocolVersion"], VERSION, "{gateway}");
    assert_eq!(direct["protocolVersion"], gateway["protocolVersion"]);
    let policy = |v: &Value| v["policy"]["contents"][0]["uri"].clone();
    assert_eq!(policy(&direct), policy(&gateway));
    assert!(gateway["policy"]
        .to_string()
        .contains("**** **** **** 1111"));
    let text = gateway.to_string();
    assert!(raw_pans_in(&text).is_empty(), "{text}");
    assert!(!raw_pans_in(&direct["customer"].to_string()).is_empty());
    assert!(
        gateway["byRegion"]["isError"] != true,
        "{}",
        gateway["byRegion"]
    );
    let tools = gateway["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "list_payments_by_region"));
    assert!(!tools.iter().any(|t| t == "delete_merchant"));
    // Each request stood alone: identity, decision and record per request, no session.
    let records = stack.audit_records().unwrap();
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mcp.request" && r["messages"][0]["method"] == "tools/call")
        .filter(|r| r["outcome"] == "forwarded")
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for record in calls {
        assert_eq!(record["sub"], "alice@example.com");
        assert_eq!(record["messages"][0]["protocolVersion"], VERSION);
        assert!(record["session"].is_null());
        assert_eq!(record["mcpHeaders"]["mcp-method"], "tools/call");
    }
}

/// Opens a `subscriptions/listen` stream over a plain HTTP/1.1 socket and collects the `data:`
/// of its events as they arrive.
fn open_listen(addr: &str, token: &str, uris: &[&str]) -> mpsc::Receiver<String> {
    use std::net::TcpStream;
    let mut params = json!({"notifications": {"resourceSubscriptions": uris}});
    params["_meta"] = meta();
    let body =
        json!({"jsonrpc": "2.0", "id": 700, "method": "subscriptions/listen", "params": params})
            .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: {VERSION}\r\nmcp-method: subscriptions/listen\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let (events, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                if events.send(data.trim().to_owned()).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_stream_carries_only_what_its_caller_may_read() {
    let mut policy: Value = serde_json::from_slice(
        &std::fs::read(tollgate_e2e::workspace().join("envoy/policy/payments.json")).unwrap(),
    )
    .unwrap();
    policy["rules"].as_array_mut().unwrap().insert(
        0,
        json!({"id": "merchants-are-back-office", "match": {"resource": "payments://merchants/*"},
               "action": "deny", "reason": "merchant records are read in the back office"}),
    );
    let stack = Stack::start_with(StackOptions {
        policy,
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let events = open_listen(
        &gateway_addr(&stack),
        &token,
        &["payments://payments/pay_1001", "payments://merchants/m_1"],
    );
    let next = || events.recv_timeout(Duration::from_secs(10)).ok();
    let ack: Value = serde_json::from_str(&next().expect("an acknowledgement")).unwrap();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!(["payments://payments/pay_1001"]),
        "{ack}"
    );
    // The merchant changes first (set directly at the server: nobody at the gateway could), then
    // the payment is refunded through the gateway: only the payment's update reaches alice.
    let direct = post_mcp_with(
        &stack.upstream_url,
        &[
            ("mcp-protocol-version", VERSION),
            ("mcp-method", "tools/call"),
            ("mcp-name", "set_fraud_threshold"),
        ],
        call(
            701,
            "set_fraud_threshold",
            json!({"merchant_id": "m_1", "threshold": 80.0}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 200, "{}", direct.body);
    let refund = post(
        &stack,
        &token,
        &[("mcp-method", "tools/call"), ("mcp-name", "refund_payment")],
        call(
            702,
            "refund_payment",
            json!({"payment_id": "pay_1001", "amount": 5.0}),
        ),
    )
    .await;
    assert_eq!(refund.status, 200, "{}", refund.body);
    let update: Value = serde_json::from_str(&next().expect("the payment's update")).unwrap();
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(
        update["params"]["uri"], "payments://payments/pay_1001",
        "{update}"
    );
    assert!(
        events.recv_timeout(Duration::from_secs(2)).is_err(),
        "more than the payment's update"
    );
}
