//! Durable appends per second through the gRPC API, against the real binary. Ignored by default
//! (it measures, it does not check); run with
//! `cargo test -p tollgate-control-plane --test append_throughput -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use tollgate_proto::pb;

/// How long each concurrency level runs.
const RUN: Duration = Duration::from_secs(3);

fn record(writer: usize, n: usize) -> Vec<u8> {
    serde_json::json!({
        "event": "mcp.request",
        "time": "2025-01-31T12:00:00.000001Z",
        "sub": format!("writer{writer}@example.com"),
        "identity": {"iss": "https://dev.tollgate.local", "groups": ["payments"], "jti": "abc"},
        "httpMethod": "POST",
        "route": "/mcp",
        "messages": [{"kind": "request", "id": n, "method": "tools/call", "target": "get_customer", "arguments": {"customerId": "cus_0001"}}],
        "decision": "allow"
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn durable_appends_per_second() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let client = server.client().await;
    println!("writers  appends  seconds  appends/s");
    for writers in [1usize, 16, 64] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while start.elapsed() < RUN {
                        client
                            .append(pb::AppendRequest {
                                record_json: record(w, n),
                            })
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{writers:>7}  {total:>7}  {seconds:>7.2}  {:>9.0}",
            total as f64 / seconds
        );
    }
    let size: u64 = walk(&home.path().join("audit.sled"));
    println!("store size on disk: {size} bytes");
}

fn walk(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
