//! The Istio manifests of envoy/istio/ in a real Envoy: envoy/istio/sidecar.py renders the
//! bootstrap an Istio sidecar of the payments MCP server would run (jwt_authn from the
//! RequestAuthentication, the WasmPlugin, the EnvoyFilter's patches applied as istiod applies
//! them), and the payments server's own request log proves what reached it: a refused call whose
//! body ends in trailers never does, not even its headers' worth of a request; an allowed one
//! does, and its answer's card numbers are masked; paths are normalised before the decision.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{
    has_masked_form, post_mcp_with, raw_pans_in, workspace, Stack, StackOptions, DEMO_PANS,
};

/// An HTTP/2 (prior knowledge) client with python-h2: sends one POST, its body, optionally
/// trailers that end the stream, and prints what came back as one JSON line.
const H2_CLIENT: &str = r#"
import json, socket, sys
import h2.config, h2.connection, h2.events

port, path, token, body, trailers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
sock = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
headers = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1:" + port), (":path", path),
           ("content-type", "application/json"), ("accept", "application/json, text/event-stream"),
           ("mcp-protocol-version", "2025-06-18"), ("authorization", "Bearer " + token)]
conn.send_headers(1, headers)
conn.send_data(1, body.encode(), end_stream=not trailers)
if trailers:
    conn.send_headers(1, [(k, v) for k, v in trailers.items()], end_stream=True)
sock.sendall(conn.data_to_send())
out = {"status": None, "headers": {}, "body": "", "reset": False}
data = b""
done = False
while not done:
    chunk = sock.recv(65536)
    if not chunk:
        break
    for event in conn.receive_data(chunk):
        if isinstance(event, h2.events.ResponseReceived):
            out["headers"] = dict(event.headers)
            out["status"] = int(out["headers"][":status"])
        elif isinstance(event, h2.events.DataReceived):
            data += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            done = True
        elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
            out["reset"] = True
            done = True
    sock.sendall(conn.data_to_send())
out["body"] = data.decode("utf-8", "replace")
print(json.dumps(out))
"#;

fn python() -> PathBuf {
    std::env::var_os("TOLLGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

/// The sidecar of the payments MCP server, from the manifests, in front of a JSON-answering
/// payments server (no MCP sessions: every POST stands alone).
///
/// The manifests as they are (the pluginConfig names the control plane's cluster as istiod does,
/// `outbound|50051||HOST`).
fn sidecar() -> Stack {
    sidecar_with(json!({}))
}

fn sidecar_with(config: Value) -> Stack {
    Stack::start_with(StackOptions {
        config,
        renderer: Some(workspace().join("envoy/istio/sidecar.py")),
        // The dev issuer signs the test tokens instead of the RequestAuthentication's issuer.
        render_args: vec![
            "--issuer".to_owned(),
            "https://dev.tollgate.local".to_owned(),
        ],
        server_args: vec!["--json-response".to_owned()],
        ..StackOptions::default()
    })
    .expect("sidecar stack")
}

/// What the HTTP/2 client got back.
struct H2Answer {
    status: Option<u16>,
    body: String,
    reset: bool,
}

impl H2Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn h2_post(stack: &Stack, path: &str, token: &str, body: &str, trailers: Value) -> H2Answer {
    let port = stack
        .gateway_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp");
    let script = stack.dir.path().join("h2_client.py");
    std::fs::write(&script, H2_CLIENT).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .args([port, path, token, body, &trailers.to_string()])
        .output()
        .expect("python h2 client");
    assert!(
        out.status.success(),
        "h2 client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("h2 client output");
    H2Answer {
        status: answer["status"].as_u64().map(|s| s as u16),
        body: answer["body"].as_str().unwrap_or_default().to_owned(),
        reset: answer["reset"] == true,
    }
}

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}}).to_string()
}

fn server_saw_tool(stack: &Stack, tool: &str) -> bool {
    stack.server_requests().iter().any(|r| r["tool"] == tool)
}

/// Every request line the server logged, whatever its kind (for "nothing at all arrived").
fn server_request_count(stack: &Stack) -> usize {
    std::fs::read_to_string(&stack.server_request_log)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_refused_call_ending_in_trailers_never_reaches_the_server() {
    let stack = sidecar();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let before = server_request_count(&stack);

    let refused = h2_post(
        &stack,
        "/mcp",
        &token,
        &call(7, "delete_merchant", json!({"merchant_id": "m_1"})),
        json!({"x-trailer": "end"}),
    );
    assert_eq!(refused.status, Some(200), "{}", refused.body);
    assert!(!refused.reset, "answered, not reset");
    let answer = refused.json();
    assert_eq!(answer["id"], 7, "{}", refused.body);
    assert_eq!(
        answer["error"]["data"]["rule"], "never-delete-merchant",
        "{}",
        refused.body
    );

    // Give a request that was (wrongly) forwarded time to be logged before looking.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server_saw_tool(&stack, "delete_merchant"),
        "the server saw a refused call"
    );
    assert_eq!(
        server_request_count(&stack),
        before,
        "nothing of the refused call reached the server: {:?}",
        stack.server_requests()
    );
    let records = stack.audit_records().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains("delete_merchant")),
        "the refusal is recorded"
    );
}

#[test]
fn an_allowed_call_ending_in_trailers_passes_with_its_cards_masked() {
    let stack = sidecar();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let body = call(2, "get_customer", json!({"customer_id": "cus_2"}));

    // Straight to the server, the answer holds card numbers in clear: the test is not vacuous.
    let direct = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(post_mcp_with(
            &stack.upstream_url,
            &[("mcp-protocol-version", "2025-06-18")],
            body.clone(),
        ))
        .unwrap();
    let clear = raw_pans_in(&direct.body);
    assert!(!clear.is_empty(), "{}", direct.body);

    let allowed = h2_post(&stack, "/mcp", &token, &body, json!({"x-trailer": "end"}));
    assert_eq!(allowed.status, Some(200), "{}", allowed.body);
    assert!(
        allowed.json()["result"]["content"].is_array(),
        "{}",
        allowed.body
    );
    assert_eq!(
        raw_pans_in(&allowed.body),
        Vec::<&str>::new(),
        "{}",
        allowed.body
    );
    for pan in clear {
        assert!(
            has_masked_form(&allowed.body, &pan[pan.len() - 4..]),
            "{pan} masked: {}",
            allowed.body
        );
    }
    let seen: Vec<Value> = stack
        .server_requests()
        .into_iter()
        .filter(|r| r["tool"] == "get_customer")
        .collect();
    assert_eq!(
        seen.len(),
        2,
        "direct and through the sidecar: {:?}",
        stack.server_requests()
    );
    assert!(seen.iter().all(|r| r["path"] == "/mcp"), "{seen:?}");
    assert!(DEMO_PANS.iter().all(|p| !allowed.body.contains(p)));
}

#[test]
fn paths_are_normalised_before_the_decision() {
    let stack = sidecar();
    let token = stack.token("alice@example.com", &[]).unwrap();

    // `/mcp/../admin` is `/admin`: not the MCP endpoint, refused before anything is forwarded.
    let escaped = h2_post(
        &stack,
        "/mcp/../admin",
        &token,
        &call(3, "get_customer", json!({"customer_id": "cus_1"})),
        Value::Null,
    );
    assert_eq!(escaped.status, Some(404), "{}", escaped.body);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server_saw_tool(&stack, "get_customer"),
        "{:?}",
        stack.server_requests()
    );

    // `//mcp` is `/mcp`: decided as the MCP endpoint, and forwarded as `/mcp`.
    let doubled = h2_post(
        &stack,
        "//mcp",
        &token,
        &call(4, "get_customer", json!({"customer_id": "cus_1"})),
        Value::Null,
    );
    assert_eq!(doubled.status, Some(200), "{}", doubled.body);
    assert!(doubled.json()["result"].is_object(), "{}", doubled.body);
    let refused = h2_post(
        &stack,
        "//mcp",
        &token,
        &call(5, "delete_merchant", json!({"merchant_id": "m_1"})),
        Value::Null,
    );
    assert_eq!(
        refused.json()["error"]["data"]["rule"],
        "never-delete-merchant",
        "{}",
        refused.body
    );

    let requests = stack.server_requests();
    let paths: Vec<&str> = requests.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| *p == "/mcp"), "{paths:?}");
    assert!(!server_saw_tool(&stack, "delete_merchant"));
}

#[test]
fn http1_chunked_trailers_are_parsed_and_decided() {
    let stack = sidecar();
    let token = stack.token("alice@example.com", &[]).unwrap();
    let port = stack
        .gateway_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .to_owned();
    let body = call(9, "delete_merchant", json!({"merchant_id": "m_1"}));
    let mut stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Protocol-Version: 2025-06-18\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nTrailer: x-trailer\r\n\
         Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\nx-trailer: end\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("never-delete-merchant"), "{answer}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server_request_count(&stack),
        0,
        "{:?}",
        stack.server_requests()
    );
}

/// The WasmPlugin's own controlPlaneCluster is istiod's `outbound|PORT||HOST` name, which is not
/// a valid `:authority` (an HTTP/2 server refuses the `|`). The filter then calls the cluster
/// with `HOST` as the authority (a serialized GrpcService in place of the cluster name), and the
/// call is recorded and forwarded as with any other cluster name.
#[test]
fn the_manifests_own_control_plane_cluster_is_reached() {
    let stack = sidecar_with(json!({}));
    let token = stack.token("alice@example.com", &[]).unwrap();
    let answer = h2_post(
        &stack,
        "/mcp",
        &token,
        &call(2, "get_customer", json!({"customer_id": "cus_2"})),
        Value::Null,
    );
    assert_eq!(answer.status, Some(200), "{}", answer.body);
    assert!(answer.json()["result"].is_object(), "{}", answer.body);
    let records = stack.audit_records().unwrap();
    assert!(
        records.iter().any(|r| r["event"] == "mcp.request"
            && r["messages"][0]["id"] == 2
            && r["decision"] == "allow"),
        "{records:#?}"
    );
    assert_eq!(server_request_count(&stack), 1);
}

#[test]
fn without_the_envoyfilter_the_sidecar_lacks_the_guarantees() {
    // The same rendering with the EnvoyFilter left out: what the patches change, in the
    // bootstrap (the running behaviour with them is what the tests above prove).
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let render = |extra: &[&str]| -> Value {
        let out = dir.path().join("envoy.json");
        let status = Command::new("python3")
            .arg(workspace().join("envoy/istio/sidecar.py"))
            .arg("--out")
            .arg(&out)
            .arg("--jwks")
            .arg(&jwks)
            .args([
                "--wasm",
                "tollgate_filter.wasm",
                "--control-plane-plaintext",
            ])
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success());
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
    };
    let names = |b: &Value| -> (Vec<String>, Value, Value) {
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let filters = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect();
        let inbound = b["static_resources"]["clusters"][0].clone();
        (filters, hcm.clone(), inbound)
    };
    let (with, hcm, inbound) = names(&render(&[]));
    assert_eq!(
        with,
        [
            "envoy.filters.http.jwt_authn",
            "payments.tollgate",
            "envoy.filters.http.buffer",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(hcm["merge_slashes"], true);
    assert_eq!(hcm["http_protocol_options"]["enable_trailers"], true);
    assert!(inbound["name"].as_str().unwrap().starts_with("inbound|"));
    assert_eq!(
        inbound["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http_protocol_options"]["enable_trailers"],
        true
    );

    let (without, hcm, inbound) = names(&render(&["--no-envoyfilter"]));
    assert_eq!(
        without,
        [
            "envoy.filters.http.jwt_authn",
            "payments.tollgate",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(hcm["merge_slashes"], Value::Null);
    assert_eq!(hcm["http_protocol_options"], Value::Null);
    assert_eq!(inbound["typed_extension_protocol_options"], Value::Null);
}
