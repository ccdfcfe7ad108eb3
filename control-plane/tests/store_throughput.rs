//! Durable appends per second through the gRPC API, by store: sled (one process) and
//! PostgreSQL with one and with three `tollgate serve` replicas on one database (a throwaway
//! cluster on this machine, fsync on). Writers are spread evenly over the replicas; sled also
//! gets a row of records sent as the filter sends them, on two `AppendStream`s. Prints a
//! markdown table. Ignored by default (it measures, it does not check); `scripts/bench-store.sh`
//! runs it in release mode. `BENCH_SECONDS` sets how long each row runs (default 5),
//! `BENCH_WRITERS` the writer counts (default `16,64`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use common::pg::Postgres;
use common::Server;
use tollgate_proto::pb;
use tollgate_proto::pb::audit_client::AuditClient;

/// A request record as the filter writes one, built from a template so that the client spends
/// its CPU on gRPC, not on JSON.
struct Template {
    before: Vec<u8>,
    after: Vec<u8>,
}

impl Template {
    fn new(writer: usize) -> Self {
        let text = String::from_utf8(common::record(writer, 999_999_999)).unwrap();
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

fn writer_counts() -> Vec<usize> {
    std::env::var("BENCH_WRITERS")
        .ok()
        .map(|w| w.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 64])
}

fn run_for() -> Duration {
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

/// Appends from `writers` tasks spread over `servers` for `run`; returns appends per second.
async fn measure(servers: &[Server], writers: usize, run: Duration) -> f64 {
    let mut clients = Vec::new();
    for server in servers {
        clients.push(AuditClient::new(server.gateway_channel().await));
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let mut client = clients[w % clients.len()].clone();
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
    rate(tasks, start).await
}

/// Appends as the filter sends them: `writers` records in flight at once over `streams`
/// `AppendStream`s (one per Envoy worker), each writer waiting for its acknowledgement before
/// its next record. Returns appends per second.
async fn measure_streamed(server: &Server, streams: usize, writers: usize, run: Duration) -> f64 {
    type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<u32>>>>;
    let mut senders = Vec::new();
    for _ in 0..streams {
        let mut client = AuditClient::new(server.gateway_channel().await);
        let (tx, rx) = mpsc::channel::<pb::AppendStreamRequest>(writers);
        let mut answers = client
            .append_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let waiting: Waiting = Arc::default();
        let answered = waiting.clone();
        tokio::spawn(async move {
            while let Some(answer) = answers.message().await.unwrap() {
                if let Some(done) = answered.lock().unwrap().remove(&answer.id) {
                    let _ = done.send(answer.code);
                }
            }
        });
        senders.push((tx, waiting));
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (tx, waiting) = senders[w % streams].clone();
            let template = Template::new(w);
            tokio::spawn(async move {
                let mut n = 0;
                while start.elapsed() < run {
                    let id = ((w as u64) << 40) | n as u64;
                    let (done, acknowledged) = oneshot::channel();
                    waiting.lock().unwrap().insert(id, done);
                    let append = pb::AppendRequest {
                        record_json: template.record(n),
                        session: None,
                    };
                    tx.send(pb::AppendStreamRequest {
                        id,
                        append: Some(append),
                    })
                    .await
                    .unwrap();
                    assert_eq!(acknowledged.await.unwrap(), 0, "appended");
                    n += 1;
                }
                n
            })
        })
        .collect();
    rate(tasks, start).await
}

/// Appends per second of `tasks`, each returning how many it made, since `start`.
async fn rate(tasks: Vec<tokio::task::JoinHandle<usize>>, start: Instant) -> f64 {
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn share(from: &Path, to: &Path, name: &str) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from.join(name))
        .arg(to.join(name))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `replicas` servers on a fresh database of `cluster`.
fn postgres_replicas(
    cluster: &Postgres,
    database: &str,
    replicas: usize,
) -> (Vec<tempfile::TempDir>, Vec<Server>) {
    let url = cluster.database(database);
    let homes: Vec<tempfile::TempDir> = (0..replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut servers = vec![Server::start_with(homes[0].path(), &["--store", &url])];
    for home in &homes[1..] {
        share(homes[0].path(), home.path(), "keys");
        servers.push(Server::start_with(home.path(), &["--store", &url]));
    }
    (homes, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn durable_appends_per_second_by_store() {
    let run = run_for();
    let mut rows = Vec::new();
    for writers in writer_counts() {
        let home = tempfile::tempdir().unwrap();
        let sled = [Server::start(home.path())];
        rows.push(("sled", 1, writers, measure(&sled, writers, run).await));
        drop(sled);
        let home = tempfile::tempdir().unwrap();
        let sled = Server::start(home.path());
        let rate = measure_streamed(&sled, 2, writers, run).await;
        rows.push((
            "sled, 2 AppendStreams (as Envoy's workers send)",
            1,
            writers,
            rate,
        ));
        drop(sled);

        let cluster = Postgres::start();
        for replicas in [1, 3] {
            let (_homes, servers) =
                postgres_replicas(&cluster, &format!("bench_{writers}_{replicas}"), replicas);
            let rate = measure(&servers, writers, run).await;
            rows.push(("PostgreSQL", replicas, writers, rate));
        }
    }
    println!();
    println!("| store | replicas | writers | durable appends/s |");
    println!("|---|---:|---:|---:|");
    for (store, replicas, writers, rate) in rows {
        println!("| {store} | {replicas} | {writers} | {rate:.0} |");
    }
}
