//! The control plane's second line of defence: whatever a client sends to `Append`, no card
//! number is chained. Starts the real `tollgate serve` on sled, appends a record carrying raw
//! card numbers in its route, JSON-RPC id (as a JSON number), method, session and a nested
//! field, and checks the stored bytes, the `maskedAtAppend` marker and the chain.

mod common;

use common::{json_of, list, stdout, tollgate, Server};
use serde_json::{json, Value};
use tollgate_proto::pb;

/// Card numbers in `text` by an independent check (not the masker's): runs of digits joined by
/// single spaces or dashes, every window of 13 to 19 digits with a valid Luhn check digit and a
/// Visa, Mastercard, Amex or Discover prefix. Hashes (runs of 24 or more hex digits, such as
/// the chain hashes the query prints) are left out first: a random one holds a Luhn-valid digit
/// run now and then, and no card number is written as one.
fn without_hashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() < 24 {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn raw_pans(text: &str) -> Vec<String> {
    let chars: Vec<char> = without_hashes(text).chars().collect();
    let mut runs: Vec<String> = Vec::new();
    let mut run = String::new();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_digit() {
            run.push(*c);
            continue;
        }
        let joins = matches!(c, ' ' | '-')
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if !joins {
            runs.push(std::mem::take(&mut run));
        }
    }
    runs.push(run);
    let mut found = Vec::new();
    for run in runs.iter().filter(|r| r.len() >= 13) {
        for start in 0..run.len() {
            for len in 13..=19 {
                let Some(window) = run.get(start..start + len) else {
                    break;
                };
                let branded = window.starts_with('4')
                    || (window.len() == 16 && ("51".."56").contains(&&window[..2]))
                    || (window.len() == 15
                        && (window.starts_with("34") || window.starts_with("37")))
                    || window.starts_with("6011");
                if branded && luhn(window) {
                    found.push(window.to_owned());
                }
            }
        }
    }
    found
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[test]
fn the_checker_finds_what_it_should() {
    assert_eq!(raw_pans("x 4111111111111111 y"), vec!["4111111111111111"]);
    assert_eq!(raw_pans("5500 0000 0000 0004"), vec!["5500000000000004"]);
    assert!(raw_pans("************1111 **** **** **** 0004 1234 5678").is_empty());
    assert!(raw_pans("2025-01-31T12:00:00.000001Z").is_empty());
}

fn without_received_at(mut record: Value) -> Value {
    record.as_object_mut().unwrap().remove("receivedAt");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_sent_to_append_are_masked_before_they_are_chained() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;

    // A raw JSON number id, a spaced Mastercard, card numbers in the route's path and query.
    let dirty = r#"{"event":"mcp.request","time":"2025-01-31T12:00:00.000001Z","sub":"alice@example.com",
        "route":"/mcp/4111111111111111?access_token=4111111111111111","session":"5500 0000 0000 0004",
        "messages":[{"kind":"request","id":4111111111111111,"method":"tools/4111111111111111",
                     "arguments":{"deep":{"list":["card 5500 0000 0000 0004"]}}}]}"#;
    assert_eq!(raw_pans(dirty).len(), 6, "the test record holds six");
    let dirty_ack = client
        .append(pb::AppendRequest {
            record_json: dirty.as_bytes().to_vec(),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();

    let clean = json!({
        "event": "mcp.request",
        "time": "2025-01-31T12:00:00.000002Z",
        "sub": "bob@example.com",
        "route": "/mcp",
        "session": "session-1",
        "messages": [{"kind": "request", "id": 7, "method": "tools/call", "target": "get_customer",
                      "arguments": {"customer": "c_123", "card": "************1111"}}],
        "maskedPans": {"visa": 1},
    });
    let clean_ack = client
        .append(pb::AppendRequest {
            record_json: clean.to_string().into_bytes(),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();

    // A client cannot claim the control plane's marker.
    let refused = client
        .append(pb::AppendRequest {
            record_json: br#"{"event":"x","maskedAtAppend":{"pans":1}}"#.to_vec(),
            session: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let records = list(&server).await;
    for record in &records {
        let text = String::from_utf8_lossy(&record.canonical_json);
        assert!(raw_pans(&text).is_empty(), "seq {}: {text}", record.seq);
    }
    let values = json_of(&records);
    let stored = &values[dirty_ack.seq as usize];
    assert_eq!(stored["maskedAtAppend"], json!({"pans": 6}), "{stored}");
    assert_eq!(stored["messages"][0]["id"], "************1111");
    assert_eq!(stored["messages"][0]["method"], "tools/************1111");
    assert_eq!(stored["session"], "**** **** **** 0004");
    assert_eq!(
        stored["route"],
        "/mcp/************1111?access_token=************1111"
    );
    assert_eq!(
        stored["messages"][0]["arguments"]["deep"]["list"][0],
        "card **** **** **** 0004"
    );
    assert_eq!(stored["sub"], "alice@example.com", "the rest is as sent");

    let stored_clean = &values[clean_ack.seq as usize];
    assert_eq!(without_received_at(stored_clean.clone()), clean);
    assert!(stored_clean.get("maskedAtAppend").is_none());

    // The command line reads the same.
    let query = tollgate(
        home.path(),
        &["audit", "query", "--server", &server.url(), "--json"],
    );
    assert_eq!(query.status.code(), Some(0), "{query:?}");
    let text = stdout(&query);
    assert!(raw_pans(&text).is_empty(), "{text}");
    assert!(text.contains("maskedAtAppend"), "{text}");

    let verify = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    assert!(
        stdout(&verify).starts_with("audit chain intact"),
        "{verify:?}"
    );

    // Nothing the store wrote holds the raw numbers either.
    assert!(server.terminate().success());
    let mut raw = Vec::new();
    let mut dirs = vec![home.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                raw.extend(std::fs::read(path).unwrap());
            }
        }
    }
    for pan in [&b"4111111111111111"[..], b"5500 0000 0000 0004"] {
        assert!(
            !raw.windows(pan.len()).any(|w| w == pan),
            "{} found in the store's files",
            String::from_utf8_lossy(pan)
        );
    }
}

#[test]
fn the_independent_check_finds_cards_but_not_inside_hashes() {
    assert_eq!(raw_pans("card 4111 1111 1111 1111."), ["4111111111111111"]);
    // A chain hash once printed by `audit query`, with a Luhn-valid Visa-like run inside.
    let hash = "ec1be6d9fccec60cb105efaaf75146663e8cd244cea91346400885805737b8a3";
    assert!(raw_pans(&format!("{{\"chainHash\":\"{hash}\"}}")).is_empty());
    assert!(
        !raw_pans("91346400885805737").is_empty(),
        "the same digits alone are a card"
    );
}
