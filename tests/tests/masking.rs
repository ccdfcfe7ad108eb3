//! PAN masking end to end: the demo payments server returns every test card in every shape
//! (brands, groupings, separators, Unicode digits, JSON number tokens, JSON inside text content,
//! `\u`-escaped digits, bodies cut into small pieces, events split mid-number), as JSON and as SSE
//! streams, and the client behind Envoy + Tollgate sees none of them, while look-alikes (IMEIs,
//! timestamps, IBANs, hashes...) arrive byte for byte. Each case first checks that the server
//! really sends the cards in clear when asked directly, so a test cannot pass by sending nothing.

use std::collections::BTreeMap;

use payments_server::shapes::{self, LOOK_ALIKES};
use serde_json::{json, Value};
use tollgate_e2e::{post_mcp, post_mcp_with, HttpAnswer, Stack, StackOptions};

fn start(server_args: &[&str]) -> Stack {
    Stack::start_with(StackOptions {
        server_args: server_args.iter().map(|a| (*a).to_owned()).collect(),
        ..StackOptions::default()
    })
    .expect("stack")
}

fn call(id: u64, tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
}

/// Every JSON-RPC message in an answer: the body itself, or each `data:` event of a stream.
fn messages(answer: &HttpAnswer) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(&answer.body) {
        return vec![v];
    }
    answer
        .event_data()
        .iter()
        .map(|data| serde_json::from_str(data))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("an event is not JSON ({e}): {}", answer.body))
}

/// Every string and number in `value`, decoded; strings that hold a JSON document are opened too.
fn texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Ok(inner @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str(s) {
                texts(&inner, out);
            }
            out.push(s.clone());
        }
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| texts(v, out)),
        Value::Object(map) => map.values().for_each(|v| texts(v, out)),
        _ => {}
    }
}

/// All the text a client reads, decoded, joined by spaces, in any digit script mapped to ASCII
/// and with separators between digits removed.
fn client_view(answer: &HttpAnswer) -> String {
    let mut all = Vec::new();
    for message in messages(answer) {
        texts(&message, &mut all);
    }
    shapes::normalize_digits(&all.join(" "))
}

fn cards_in(view: &str) -> Vec<String> {
    shapes::all_card_digits()
        .into_iter()
        .filter(|digits| view.contains(digits.as_str()))
        .collect()
}

/// The raw bytes too: no card in clear even before JSON decoding (an escaped one shows up above).
fn assert_no_card_anywhere(answer: &HttpAnswer, case: &str) {
    assert_eq!(answer.status, 200, "{case}: {}", answer.body);
    let decoded = cards_in(&client_view(answer));
    assert!(
        decoded.is_empty(),
        "{case}: cards reached the client: {decoded:?}"
    );
    let raw = cards_in(&shapes::normalize_digits(&answer.body));
    assert!(raw.is_empty(), "{case}: cards in the raw body: {raw:?}");
}

fn assert_every_card_sent(answer: &HttpAnswer, expected: &[String], case: &str) {
    assert_eq!(answer.status, 200, "{case}: {}", answer.body);
    let view = client_view(answer);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|d| !view.contains(d.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{case}: the server did not send {missing:?}"
    );
}

/// The `card_shapes` result through the gateway: nothing in clear, every card masked to its last
/// four, look-alikes untouched, and still the JSON a client expects.
fn assert_card_shapes_masked(answer: &HttpAnswer, case: &str) {
    assert_no_card_anywhere(answer, case);
    let result = messages(answer)
        .into_iter()
        .find(|m| m.get("result").is_some())
        .unwrap_or_else(|| panic!("{case}: no result: {}", answer.body));
    let result = &result["result"];
    let text = result["content"][0]["text"]
        .as_str()
        .expect("content[0].text");
    let document: Value = serde_json::from_str(
        result["content"][1]["text"]
            .as_str()
            .expect("content[1].text"),
    )
    .unwrap_or_else(|e| panic!("{case}: the JSON inside text content is no longer JSON: {e}"));
    for look_alike in LOOK_ALIKES {
        assert!(
            text.lines().any(|line| line == *look_alike),
            "{case}: look-alike changed in text: {look_alike}"
        );
    }
    assert_eq!(document["look_alikes"], json!(LOOK_ALIKES), "{case}");
    let structured = &result["structuredContent"];
    assert_eq!(structured["look_alikes"], json!(LOOK_ALIKES), "{case}");
    assert_eq!(
        structured["created_at"],
        json!(1_732_560_000_000u64),
        "{case}"
    );
    assert_eq!(
        structured["order"],
        json!(1_000_000_000_000_008u64),
        "{case}"
    );

    let view = client_view(answer);
    for (card, masked) in shapes::cards()
        .iter()
        .zip(structured["cards"].as_array().unwrap())
    {
        // A number token becomes a masked string: a masked number would not be JSON.
        let masked = masked["pan"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: {masked}"));
        assert!(masked.ends_with(card.last_four()), "{case}: {masked}");
        assert!(masked.starts_with("***"), "{case}: {masked}");
        assert!(
            view.contains(&format!("*{}", card.last_four())),
            "{case}: no masked form of the {} card ending {}",
            card.brand,
            card.last_four()
        );
    }
}

/// Masked-PAN counts per brand in the last response record.
fn last_response_counts(stack: &Stack) -> BTreeMap<String, u64> {
    let records = stack.audit_records().expect("audit records");
    let response = records
        .iter()
        .rev()
        .find(|r| r["event"] == "mcp.response")
        .expect("a response record");
    let text = response.to_string();
    let leaked = cards_in(&shapes::normalize_digits(&text));
    assert!(leaked.is_empty(), "cards in the audit record: {leaked:?}");
    response["maskedPans"]
        .as_object()
        .expect("maskedPans")
        .iter()
        .map(|(brand, n)| (brand.clone(), n.as_u64().unwrap_or_default()))
        .collect()
}

/// How many times each brand appears in `card_shapes`: every shape in prose (10), the URL, CSV and
/// log lines (3), every shape again in the JSON document (10), and once as a number token.
fn expected_card_shapes_counts() -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for card in shapes::cards() {
        *counts.entry(card.brand.to_owned()).or_default() += 24;
    }
    counts
}

async fn card_shapes_case(server_args: &[&str], case: &str) {
    let stack = start(server_args);
    let token = stack.token("ana@example.com", &[]).unwrap();
    let expected: Vec<String> = shapes::cards().into_iter().map(|c| c.digits).collect();

    let direct = post_mcp(&stack.upstream_url, None, None, call(1, "card_shapes"))
        .await
        .unwrap();
    assert_every_card_sent(&direct, &expected, case);
    if server_args.contains(&"--escape-json") {
        assert!(
            direct.body.is_ascii(),
            "{case}: escaping left non-ASCII bytes"
        );
        assert!(
            direct.body.contains("\\u0034"),
            "{case}: digits not escaped"
        );
    }

    let through = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        call(2, "card_shapes"),
    )
    .await
    .unwrap();
    assert_card_shapes_masked(&through, case);
    assert_eq!(
        last_response_counts(&stack),
        expected_card_shapes_counts(),
        "{case}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_mask_every_card_shape() {
    card_shapes_case(&["--stateless", "--json-response"], "JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_json_cut_in_small_pieces_is_masked() {
    card_shapes_case(
        &[
            "--stateless",
            "--json-response",
            "--escape-json",
            "--chunk-bytes",
            "61",
        ],
        "JSON, \\u-escaped, 61-byte pieces",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_mask_every_card_shape_across_chunk_splits() {
    card_shapes_case(
        &["--stateless", "--chunk-bytes", "61"],
        "SSE, 61-byte pieces",
    )
    .await;
    card_shapes_case(
        &["--stateless", "--escape-json", "--chunk-bytes", "37"],
        "SSE, \\u-escaped, 37-byte pieces",
    )
    .await;
}

/// Log messages streamed one event each, every card in every shape, and one card split across two
/// events; the body arrives in 13-byte pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_mask_cards_split_across_chunks_and_events() {
    let stack = start(&["--stateless", "--chunk-bytes", "13"]);
    let token = stack.token("ana@example.com", &[]).unwrap();
    let expected: Vec<String> = shapes::cards().into_iter().map(|c| c.digits).collect();

    let direct = post_mcp(
        &stack.upstream_url,
        None,
        None,
        call(1, "card_shapes_stream"),
    )
    .await
    .unwrap();
    assert!(
        direct
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{:?}",
        direct.headers
    );
    assert_every_card_sent(&direct, &expected, "stream, direct");
    let direct_lines = logged_lines(&messages(&direct));
    let split = shapes::split_card();
    let last_two = direct_lines[direct_lines.len() - 2..].concat();
    assert!(
        shapes::normalize_digits(&last_two).contains(&split.digits),
        "the server splits a card across two events: {last_two}"
    );

    let through = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        call(2, "card_shapes_stream"),
    )
    .await
    .unwrap();
    assert_no_card_anywhere(&through, "stream through the gateway");
    let events = messages(&through);
    let logged = logged_lines(&events);
    let lines = shapes::stream_lines();
    assert_eq!(logged.len(), lines.len() + 2, "every event arrives");
    for look_alike in LOOK_ALIKES {
        assert!(
            logged.iter().any(|l| l == look_alike),
            "look-alike changed: {look_alike}"
        );
    }
    assert!(
        !shapes::normalize_digits(&logged.concat()).contains(&split.digits),
        "the card split across two events reached the client"
    );
    let tail = logged.last().unwrap();
    assert!(tail.ends_with(split.last_four()), "{tail}");
    assert!(events.iter().any(|m| m["result"]["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("streamed"))));
    let counts = last_response_counts(&stack);
    let total: u64 = counts.values().sum();
    assert_eq!(
        total,
        (shapes::cards().len() * shapes::SHAPES.len() + 1) as u64,
        "{counts:?}"
    );
}

/// The text of each log message, in the order the events came.
fn logged_lines(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .filter_map(|m| m["params"]["data"].as_str().map(str::to_owned))
        .collect()
}

/// A well-behaved server compresses only when asked; the gateway never asks, so it gets a body it
/// can mask. A server that compresses anyway is refused: never a compressed body unmasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_answers_are_never_passed_unmasked() {
    let asks = [("accept-encoding", "gzip")];
    let stack = start(&["--stateless", "--json-response", "--gzip", "when-asked"]);
    let token = stack.token("ana@example.com", &[]).unwrap();
    let direct = post_mcp_with(&stack.upstream_url, &asks, call(1, "card_shapes"))
        .await
        .unwrap();
    assert_eq!(
        direct.header("content-encoding"),
        Some("gzip"),
        "the server compresses"
    );
    let bearer = format!("Bearer {token}");
    let through = post_mcp_with(
        &stack.gateway_url,
        &[asks[0], ("authorization", &bearer)],
        call(2, "card_shapes"),
    )
    .await
    .unwrap();
    assert_eq!(through.header("content-encoding"), None);
    assert_card_shapes_masked(&through, "asked for gzip");
    drop(stack);

    let stack = start(&["--stateless", "--json-response", "--gzip", "always"]);
    let token = stack.token("ana@example.com", &[]).unwrap();
    let through = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        call(3, "card_shapes"),
    )
    .await
    .unwrap();
    assert_eq!(through.status, 502, "{}", through.body);
    let error = through.json();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("gzip"),
        "{error}"
    );
    assert_eq!(error["id"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pan_ref_tokens_are_keyed_from_envoys_environment_never_its_configuration() {
    const KEY: &str = "k3y-from-a-kubernetes-secret-0001";
    let stack = Stack::start_with(StackOptions {
        config: json!({"mask": {"display": "panRef"}}),
        envoy_env: vec![("TOLLGATE_PAN_REF_KEY".into(), KEY.into())],
        server_args: vec!["--stateless".into(), "--json-response".into()],
        ..StackOptions::default()
    })
    .expect("stack");
    let token = stack.token("ana@example.com", &[]).unwrap();
    let expected: Vec<String> = shapes::cards().into_iter().map(|c| c.digits).collect();
    let direct = post_mcp(&stack.upstream_url, None, None, call(1, "card_shapes"))
        .await
        .unwrap();
    assert_every_card_sent(&direct, &expected, "panRef");
    let first = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        call(2, "card_shapes"),
    )
    .await
    .unwrap();
    assert_no_card_anywhere(&first, "panRef");
    assert!(first.body.contains("pan_ref:"), "{}", first.body);
    // Keyed, so stable: the same cards give the same tokens.
    let second = post_mcp(
        &stack.gateway_url,
        Some(&token),
        None,
        call(3, "card_shapes"),
    )
    .await
    .unwrap();
    let tokens = |answer: &HttpAnswer| -> Vec<String> {
        answer
            .body
            .match_indices("pan_ref:")
            .map(|(at, _)| answer.body[at..at + 32].to_owned())
            .collect()
    };
    assert_eq!(tokens(&first), tokens(&second));
    // Whoever reads Envoy's configuration does not read the key.
    let dump = tollgate_e2e::admin_get(stack.admin_port, "/config_dump").unwrap();
    assert!(dump.contains("tollgate"), "not the filter's config dump");
    assert!(
        !dump.contains(KEY),
        "the panRef key is in Envoy's config_dump"
    );
}
