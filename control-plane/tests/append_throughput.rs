//! The audit chain's speed, against the real binary: durable appends per second through the
//! gRPC API with 1, 16 and 64 concurrent writers, verify speed in records per second (reading
//! the store directly, and over gRPC), and bytes on disk per record. Ignored by default (it
//! measures, it does not check); run in release mode with
//! `cargo test --release -p tollgate-control-plane --test append_throughput -- --ignored --nocapture`.
//! `BENCH_SECONDS` sets how long each writer count runs (default 5), `BENCH_WRITERS` the writer
//! counts (default `1,16,64`).

mod common;

use std::time::{Duration, Instant};

use common::{stdout, tollgate, Server};
use tollgate_proto::pb;

/// A request record of a realistic size (~480 bytes stored), as the filter writes them. Built
/// from a template per writer so that the client spends its CPU on gRPC, not on JSON.
struct Template {
    before: Vec<u8>,
    after: Vec<u8>,
}

impl Template {
    fn new(writer: usize) -> Self {
        let text = String::from_utf8(record(writer, 999_999_999)).unwrap();
        let (before, after) = text.split_once("999999999").unwrap();
        Self {
            before: before.as_bytes().to_vec(),
            after: after.as_bytes().to_vec(),
        }
    }

    fn record(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.before.len() + 20 + self.after.len());
        out.extend_from_slice(&self.before);
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(&self.after);
        out
    }
}

fn record(writer: usize, n: usize) -> Vec<u8> {
    serde_json::json!({
        "event": "mcp.request",
        "time": "2025-01-31T12:00:00.000001Z",
        "sub": format!("writer{writer}@example.com"),
        "identity": {"iss": "https://dev.tollgate.local", "groups": ["payments"], "jti": "abc"},
        "httpMethod": "POST",
        "route": "/mcp",
        "upstream": "payments",
        "session": format!("session-{writer}"),
        "source": "127.0.0.1:50000",
        "messages": [{"kind": "request", "id": n, "method": "tools/call", "target": "get_customer", "arguments": {"customerId": "cus_0001"}}],
        "decision": "allow",
        "outcome": "forwarded"
    })
    .to_string()
    .into_bytes()
}

/// `BENCH_WRITERS` (comma separated) overrides the writer counts 1, 16, 64.
fn writer_counts() -> Vec<usize> {
    std::env::var("BENCH_WRITERS")
        .ok()
        .map(|w| w.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64])
}

fn run_for() -> Duration {
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn durable_appends_per_second() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let client = server.client().await;
    let run = run_for();
    let server_pid = server.child.id();
    println!("writers  appends  seconds  appends/s  server cpu µs/append  client cpu µs/append");
    for writers in writer_counts() {
        let (server_cpu, client_cpu) = (cpu_seconds(server_pid), cpu_seconds(std::process::id()));
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let mut client = client.clone();
                let template = Template::new(w);
                tokio::spawn(async move {
                    let mut n = 0;
                    while start.elapsed() < run {
                        client
                            .append(pb::AppendRequest {
                                record_json: template.record(n),
                                session: None,
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
        let per = |cpu: f64| cpu * 1e6 / total as f64;
        println!(
            "{writers:>7}  {total:>7}  {seconds:>7.2}  {:>9.0}  {:>20.1}  {:>20.1}",
            total as f64 / seconds,
            per(cpu_seconds(server_pid) - server_cpu),
            per(cpu_seconds(std::process::id()) - client_cpu),
        );
    }

    // Verify over gRPC while the server runs.
    let url = server.url();
    let start = Instant::now();
    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--server", &url, "--json"],
    );
    let seconds = start.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], true, "{summary}");
    let records = summary["records"].as_u64().unwrap();
    println!(
        "verify over gRPC: {records} records in {seconds:.2} s = {:.0} records/s ({})",
        records as f64 / seconds,
        checked_line(&verify)
    );
    assert!(server.terminate().success());

    // Verify reading the store directly (the server stopped).
    let start = Instant::now();
    let verify = tollgate(home.path(), &["audit", "verify", "--direct", "--json"]);
    let seconds = start.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], true, "{}", stdout(&verify));
    let records = summary["records"].as_u64().unwrap();
    println!(
        "verify from the store: {records} records in {seconds:.2} s = {:.0} records/s with process start and store open ({})",
        records as f64 / seconds,
        checked_line(&verify)
    );

    let size = walk(&home.path().join("audit.sled"));
    println!(
        "store size on disk: {size} bytes for {records} records = {:.0} bytes/record (record JSON ~{} bytes)",
        size as f64 / records as f64,
        record(0, 0).len() + "\"receivedAt\":\"2025-01-31T12:00:00.000000Z\",".len()
    );
}

/// The verifier's own timing of its pass over the records, from its stderr.
fn checked_line(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("tollgate: checked "))
        .map_or_else(String::new, |l| format!("record pass: {l}"))
}

/// User plus system CPU time of a process so far (Linux /proc), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
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
