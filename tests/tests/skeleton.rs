//! The walking skeleton, end to end: a real MCP client (rmcp) through real Envoy with the
//! Tollgate filter, the real control plane on sled and the demo payments server.

use std::collections::BTreeSet;

use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tollgate_e2e::{initialize_body, post_mcp, raw_pans_in, Stack};

async fn client(stack: &Stack, token: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let config = StreamableHttpClientTransportConfig::with_uri(stack.gateway_url.as_str())
        .auth_header(token);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP initialize through the gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_get_401_with_the_mcp_challenge() {
    let stack = Stack::start().unwrap();

    let none = post_mcp(&stack.gateway_url, None, None, initialize_body(1))
        .await
        .unwrap();
    assert_eq!(none.status, 401, "{}", none.body);
    let challenge = none.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{challenge}"
    );

    let expired = stack.token("alice@example.com", &["--expired"]).unwrap();
    let other_home = stack.dir.path().join("other-issuer");
    let other = std::process::Command::new(tollgate_e2e::tollgate_bin())
        .arg("--home")
        .arg(&other_home)
        .args(["dev", "init"])
        .output()
        .unwrap();
    assert!(other.status.success());
    let wrong_key_path = other_home.join("dev/issuer-key.pem");
    let wrong_key = stack
        .token(
            "alice@example.com",
            &["--key", wrong_key_path.to_str().unwrap()],
        )
        .unwrap();
    let wrong_audience = stack
        .token("alice@example.com", &["--aud", "some-other-api"])
        .unwrap();
    // Each refusal names what is wrong with the token (never the token), to the client and
    // in the record.
    for (what, token, cause) in [
        ("expired", &expired, "expired"),
        ("wrong key", &wrong_key, "signature does not verify"),
        (
            "wrong audience",
            &wrong_audience,
            "issued for another audience",
        ),
    ] {
        let answer = post_mcp(&stack.gateway_url, Some(token), None, initialize_body(1))
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\"")
                && challenge.contains(&format!("error_description=\"token {cause}")),
            "{what}: {challenge}"
        );
        assert!(
            answer
                .body
                .contains(&format!("token not verified: {cause}")),
            "{what}: {}",
            answer.body
        );
    }
    let reasons: Vec<String> = stack
        .audit_records()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "auth.failed")
        .filter_map(|r| r["reason"].as_str().map(str::to_owned))
        .collect();
    for cause in [
        "expired",
        "signature does not verify",
        "issued for another audience",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(cause)),
            "{cause} in {reasons:?}"
        );
    }

    // A legacy HTTP+SSE client's `GET /sse` is told the transport, not blamed for its token.
    let sse_url = stack.gateway_url.replace("/mcp", "/sse");
    let legacy = reqwest::Client::new()
        .get(&sse_url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status().as_u16(), 404);
    assert!(legacy.headers().get("www-authenticate").is_none());
    let body = legacy.text().await.unwrap();
    assert!(
        body.contains("connect with streamable HTTP to /mcp"),
        "{body}"
    );

    // A forged claims header without a verified token is not an identity.
    let forged = tollgate_e2e::post_mcp_with(
        &stack.gateway_url,
        &[("x-tollgate-jwt-payload", "eyJzdWIiOiJtYWxsb3J5In0")],
        initialize_body(1),
    )
    .await
    .unwrap();
    assert_eq!(forged.status, 401);

    assert!(
        stack.server_requests().is_empty(),
        "the server saw an unauthenticated call"
    );
    let records = stack.audit_records().unwrap();
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "auth.failed")
        .collect();
    // Five refused tokens and the legacy `GET /sse`, recorded with the 404 it got.
    assert_eq!(failures.len(), 6, "{records:#?}");
    assert!(failures
        .iter()
        .any(|r| r["status"] == 404 && r["route"] == "/sse"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_client_calls_through_the_gateway_see_masked_pans_and_are_audited() {
    let stack = Stack::start().unwrap();
    let token = stack
        .token("alice@example.com", &["--groups", "payments-readers"])
        .unwrap();
    let client = client(&stack, &token).await;

    let tools = client.list_all_tools().await.unwrap();
    let names: BTreeSet<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert!(names.contains("get_customer"), "{names:?}");

    let arguments = json!({"customer_id": "cus_1"})
        .as_object()
        .cloned()
        .unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("get_customer").with_arguments(arguments))
        .await
        .unwrap();
    let text = serde_json::to_string(&result).unwrap();
    assert!(
        raw_pans_in(&text).is_empty(),
        "raw PANs reached the client: {:?}",
        raw_pans_in(&text)
    );
    for last_four in ["1111", "3222", "0005"] {
        assert!(
            tollgate_e2e::has_masked_form(&text, last_four),
            "no masked form ending in {last_four}: {text}"
        );
    }
    client.cancel().await.unwrap();

    let records = stack.audit_records().unwrap();
    let audit_text = serde_json::to_string(&records).unwrap();
    assert!(
        raw_pans_in(&audit_text).is_empty(),
        "raw PAN in the audit store"
    );
    let calls: Vec<(&str, &str, Option<&str>)> = records
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .flat_map(|r| {
            r["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |m| {
                    (
                        r["sub"].as_str().unwrap_or(""),
                        m["method"].as_str().unwrap_or(""),
                        m["target"].as_str(),
                    )
                })
        })
        .collect();
    for expected in [
        ("alice@example.com", "initialize", None),
        ("alice@example.com", "tools/list", None),
        ("alice@example.com", "tools/call", Some("get_customer")),
    ] {
        assert_eq!(
            calls.iter().filter(|c| **c == expected).count(),
            1,
            "{expected:?} in {calls:?}"
        );
    }
    for record in records.iter().filter(|r| r["event"] == "mcp.request") {
        let time = record["time"].as_str().unwrap_or_default();
        // RFC 3339 UTC with microseconds: 2026-11-25T21:18:58.768439Z
        assert_eq!(time.len(), 27, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    }
    // Each answer is recorded too, as the client got it: masked, with counts per brand.
    let masked_in_responses: u64 = records
        .iter()
        .filter(|r| r["event"] == "mcp.response")
        .filter_map(|r| r["maskedPans"].as_object())
        .flat_map(|counts| counts.values().filter_map(Value::as_u64))
        .sum();
    assert!(masked_in_responses >= 4, "{records:#?}");
    let verify = stack.tollgate(&["audit", "verify"]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_fails_closed_and_the_server_never_sees_the_call() {
    let mut stack = Stack::start().unwrap();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let init = post_mcp(&stack.gateway_url, Some(&token), None, initialize_body(1))
        .await
        .unwrap();
    assert_eq!(init.status, 200, "{}", init.body);
    let session = init.header("mcp-session-id").map(str::to_owned);
    let seen_before = stack.server_requests().len();

    stack.stop_control_plane();
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"get_customer","arguments":{"customer_id":"cus_2"}}});
    let answer = post_mcp(
        &stack.gateway_url,
        Some(&token),
        session.as_deref(),
        call.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["id"], 7);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("audit"),
        "{body}"
    );
    assert_eq!(
        stack.server_requests().len(),
        seen_before,
        "the server saw a call that was never audited"
    );

    // Back up: traffic resumes with no Envoy restart.
    stack.restart_control_plane().unwrap();
    let again = post_mcp(
        &stack.gateway_url,
        Some(&token),
        session.as_deref(),
        call.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(raw_pans_in(&again.body).is_empty());
}
