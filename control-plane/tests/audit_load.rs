//! Load for the verifier benchmark (`scripts/bench-verify.sh`): the records a gateway writes
//! (the filter's `mcp.request` and `mcp.response`: identity fields, masked card numbers, the
//! answer's masked excerpt) appended through the gRPC `Append` of a control plane the script
//! started, as the gateway connects (mutual TLS), from many concurrent writers. Ignored by
//! default (it loads, it does not check). Settings, from the environment:
//!
//! - `TOLLGATE_LOAD_SERVER`: the `https://` URL of the running `tollgate serve`
//! - `TOLLGATE_LOAD_HOME`: its home, whose dev PKI (`tls/`) holds the gateway's certificate
//! - `TOLLGATE_LOAD_FROM`, `TOLLGATE_LOAD_TO`: the record numbers to append, `[from, to)`, so
//!   that a load split around a key rotation goes on where it stopped
//! - `TOLLGATE_LOAD_WRITERS` (default 256), `TOLLGATE_LOAD_CONNECTIONS` (default 8),
//!   `TOLLGATE_LOAD_USERS` (callers, default 1000: one caller's records are about 1 in 1000)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tollgate_proto::pb;
use tollgate_proto::pb::audit_client::AuditClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &str, default: u64) -> u64 {
    setting(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

/// A cheap, well-spread function of `n`, so that callers, tools and cards interleave in the
/// log as real traffic does rather than in runs.
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A UUID (version 4 layout) from two numbers, as session, request and token ids are.
fn uuid(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// RFC 3339 UTC with microseconds, as the filter writes times: one call every 80 ms of a day.
fn time(call: u64, plus_micros: u64) -> String {
    let micros = (call * 80_000 + plus_micros) % 86_400_000_000;
    let (seconds, micros) = (micros / 1_000_000, micros % 1_000_000);
    format!(
        "2026-12-06T{:02}:{:02}:{:02}.{micros:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

const CARDS: [(&str, &str); 4] = [
    ("visa", "************1111"),
    ("mastercard", "************0004"),
    ("amex", "***********0005"),
    ("visa", "************4242"),
];

/// Record `n`: even numbers are a call (`mcp.request`), odd ones its answer (`mcp.response`),
/// as the filter builds them (field for field; the control plane adds `receivedAt`).
fn record(n: u64, users: u64) -> Vec<u8> {
    let call = n / 2;
    let r = mix(call);
    let user = r % users;
    let sub = format!("user{user:04}@example.com");
    let (brand, card) = CARDS[(r >> 20) as usize % CARDS.len()];
    let common = format!(
        r#""httpMethod":"POST","route":"/mcp","upstream":"payments","source":"10.0.{}.{}:{}","session":"{}","sub":"{sub}""#,
        (r >> 8) % 256,
        (r >> 16) % 256,
        32768 + (r >> 24) % 28000,
        // One session per caller.
        uuid(mix(user), mix(user + users)),
    );
    if n.is_multiple_of(2) {
        let (tool, arguments, masked) = match (r >> 44) % 4 {
            0 => (
                "get_customer",
                format!(r#"{{"customerId":"cus_{:06}"}}"#, r % 1_000_000),
                false,
            ),
            1 => (
                "list_transactions",
                format!(r#"{{"customerId":"cus_{:06}","limit":20}}"#, r % 1_000_000),
                false,
            ),
            2 => (
                "refund_payment",
                format!(
                    r#"{{"paymentId":"pay_{:010}","amount":{},"card":"{card}"}}"#,
                    r % 10_000_000_000,
                    (r >> 10) % 50_000
                ),
                true,
            ),
            _ => (
                "update_card",
                format!(
                    r#"{{"customerId":"cus_{:06}","card":"{card}"}}"#,
                    r % 1_000_000
                ),
                true,
            ),
        };
        let masked = if masked {
            format!(r#","maskedPans":{{"{brand}":1}}"#)
        } else {
            String::new()
        };
        format!(
            r#"{{"event":"mcp.request","time":"{}",{common},"identity":{{"groups":["payments"],"iss":"https://idp.example.com","sub":"{sub}"}},"messages":[{{"kind":"request","id":{call},"method":"tools/call","target":"{tool}","arguments":{arguments},"decision":"allow"}}],"decision":"allow","outcome":"forwarded"{masked}}}"#,
            time(call, 0),
        )
        .into_bytes()
    } else {
        let duration = 900 + (r >> 8) % 40_000;
        format!(
            r#"{{"event":"mcp.response","time":"{}","requestTime":"{}",{common},"status":200,"bytes":{},"durationMicros":{duration},"mode":"buffered","maskedPans":{{"{brand}":1}},"content":"{{\"jsonrpc\":\"2.0\",\"id\":{call},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"cus_{:06}: card {card}, last payment pay_{:010}\"}}]}}}}"}}"#,
            time(call, duration),
            time(call, 0),
            600 + (r >> 12) % 20_000,
            r % 1_000_000,
            r % 10_000_000_000,
        )
        .into_bytes()
    }
}

async fn gateway_channel(server: &str, home: &std::path::Path) -> Channel {
    let tls = home.join("tls");
    let read = |name: &str| {
        std::fs::read(tls.join(name))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", tls.join(name).display()))
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("gateway.pem"),
            read("gateway-key.pem"),
        ));
    Endpoint::from_shared(server.to_owned())
        .expect("TOLLGATE_LOAD_SERVER is a URL")
        .tls_config(config)
        .expect("TLS settings")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {server}: {e}"))
}

#[test]
fn records_are_realistic_in_size_and_valid_json() {
    for n in 0..1000 {
        let bytes = record(n, 1000);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            (300..600).contains(&bytes.len()),
            "{} bytes: {value}",
            bytes.len()
        );
        assert!(value["sub"].as_str().unwrap().ends_with("@example.com"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load for scripts/bench-verify.sh; run explicitly"]
async fn append_gateway_records() {
    let server = setting("TOLLGATE_LOAD_SERVER").expect("TOLLGATE_LOAD_SERVER");
    let home = std::path::PathBuf::from(setting("TOLLGATE_LOAD_HOME").expect("TOLLGATE_LOAD_HOME"));
    let (from, to) = (
        number("TOLLGATE_LOAD_FROM", 0),
        number("TOLLGATE_LOAD_TO", 0),
    );
    let writers = number("TOLLGATE_LOAD_WRITERS", 256);
    let connections = number("TOLLGATE_LOAD_CONNECTIONS", 8).max(1);
    let users = number("TOLLGATE_LOAD_USERS", 1000).max(1);

    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(AuditClient::new(gateway_channel(&server, &home).await));
    }
    // Writers take the next record number until none is left: the load ends exactly at `to`.
    let next = Arc::new(AtomicU64::new(from));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let mut client = clients[w as usize % clients.len()].clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        break;
                    }
                    let request = pb::AppendRequest {
                        record_json: record(n, users),
                        session: None,
                    };
                    if let Err(status) = client.append(request).await {
                        panic!("append of record {n}: {status}");
                    }
                    let done = n + 1 - from;
                    if done.is_multiple_of(100_000) {
                        eprintln!(
                            "load: {done} records in {:.0} s",
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a writer failed");
    }
    let seconds = start.elapsed().as_secs_f64();
    let appended = to.saturating_sub(from);
    println!(
        "load: appended {appended} records with {writers} writers over {connections} connections in {seconds:.1} s = {:.0} records/s",
        appended as f64 / seconds
    );
}
