//! Starts the real `tollgate serve` binary on a free port with a temporary home, and drives it
//! over gRPC and through the `tollgate audit` commands.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, BIN};
use tollgate_proto::pb;
use tonic::transport::Channel;
/// An address where no control plane listens, so `audit` commands read the store directly.
const NO_SERVER: &str = "http://127.0.0.1:1";

fn tollgate(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_HOME", home)
        .output()
        .expect("run tollgate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn record(writer: usize, n: usize) -> Vec<u8> {
    serde_json::json!({
        "event": "mcp.request",
        "time": "2025-01-31T12:00:00.000001Z",
        "sub": format!("writer{writer}@example.com"),
        "httpMethod": "POST",
        "route": "/mcp",
        "messages": [{"kind": "request", "id": n, "method": "tools/call", "target": "get_customer", "arguments": {"id": n}}],
        "decision": "allow"
    })
    .to_string()
    .into_bytes()
}

/// Appends from `writers` concurrent tasks, `each` records per task; returns seq → chain hash.
async fn append_concurrently(server: &Server, writers: usize, each: usize) -> HashMap<u64, String> {
    let client = server.client().await;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for n in 0..each {
                    let ack = client
                        .append(pb::AppendRequest {
                            record_json: record(w, n),
                        })
                        .await
                        .unwrap();
                    acks.push(ack.into_inner());
                }
                acks
            })
        })
        .collect();
    let mut acks = HashMap::new();
    for task in tasks {
        for ack in task.await.unwrap() {
            assert!(
                acks.insert(ack.seq, ack.chain_hash).is_none(),
                "seq {} acknowledged twice",
                ack.seq
            );
        }
    }
    acks
}

async fn list(server: &Server) -> Vec<pb::StoredRecord> {
    let mut stream = server
        .client()
        .await
        .list_records(pb::ListRecordsRequest {
            from_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut records = Vec::new();
    while let Some(record) = stream.message().await.unwrap() {
        records.push(record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_appends_and_the_chain_verifies() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());

    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tollgate.v1.Audit".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let acks = append_concurrently(&server, 16, 25).await;
    assert_eq!(acks.len(), 400);
    assert!(
        (0..400).all(|seq| acks.contains_key(&seq)),
        "sequence numbers are dense"
    );

    let records = list(&server).await;
    assert_eq!(records.len(), 400);
    for (seq, record) in records.iter().enumerate() {
        assert_eq!(record.seq, seq as u64);
        assert_eq!(record.chain_hash, acks[&record.seq]);
        let object: serde_json::Value = serde_json::from_slice(&record.canonical_json).unwrap();
        assert!(object["receivedAt"].as_str().unwrap().ends_with('Z'));
    }

    // Bad bodies are refused with a message that does not repeat them.
    let mut client = server.client().await;
    for body in [
        &b"[\"4111111111111111\"]"[..],
        b"{\"pan\":\"4111111111111111\"",
        b"{\"receivedAt\":\"x\"}",
    ] {
        let status = client
            .append(pb::AppendRequest {
                record_json: body.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(!status.message().contains("4111"), "{}", status.message());
        assert!(!status.message().is_empty());
    }

    let verify = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    assert_eq!(
        stdout(&verify),
        format!("audit chain intact: 400 records, head {}\n", acks[&399])
    );

    let query = tollgate(
        home.path(),
        &[
            "audit",
            "query",
            "--server",
            &server.url(),
            "--sub",
            "writer3@example.com",
            "--json",
        ],
    );
    assert_eq!(query.status.code(), Some(0), "{query:?}");
    let lines: Vec<serde_json::Value> = stdout(&query)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    for line in &lines {
        assert_eq!(line["record"]["sub"], "writer3@example.com");
        assert_eq!(
            line["chainHash"],
            acks[&line["seq"].as_u64().unwrap()].as_str()
        );
    }
    let query = tollgate(
        home.path(),
        &[
            "audit",
            "query",
            "--server",
            &server.url(),
            "--tool",
            "delete_merchant",
        ],
    );
    assert_eq!(stdout(&query).lines().count(), 1, "only the header");

    // A graceful stop, then a restart continues the chain from the recovered head.
    assert!(server.terminate().success());
    let server = Server::start(home.path());
    let ack = server
        .client()
        .await
        .append(pb::AppendRequest {
            record_json: b"{}".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.seq, 400);
    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    let summary: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"intact": true, "records": 401, "head": ack.chain_hash})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Server::start(home.path());
    let client = server.client().await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let mut client = client.clone();
            let acked = acked_tx.clone();
            tokio::spawn(async move {
                // Bounded: the server is killed long before this runs out.
                for n in 0..100_000 {
                    match client
                        .append(pb::AppendRequest {
                            record_json: record(w, n),
                        })
                        .await
                    {
                        Ok(ack) => {
                            let ack = ack.into_inner();
                            let _ = acked.send((ack.seq, ack.chain_hash));
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked = HashMap::new();
    while acked.len() < 500 {
        let (seq, hash) = acked_rx.recv().await.expect("writers stopped early");
        acked.insert(seq, hash);
    }
    server.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    while let Some((seq, hash)) = acked_rx.recv().await {
        acked.insert(seq, hash);
    }
    drop(server);

    let server = Server::start(home.path());
    let records = list(&server).await;
    let stored: HashMap<u64, String> = records.into_iter().map(|r| (r.seq, r.chain_hash)).collect();
    for (seq, hash) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(hash),
            "acknowledged record {seq} lost or changed"
        );
    }
    let verify = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_the_store_offline_and_names_the_first_bad_record() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    append_concurrently(&server, 4, 5).await;
    assert!(server.terminate().success());

    let verify = tollgate(home.path(), &["audit", "verify", "--server", NO_SERVER]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    assert!(stdout(&verify).starts_with("audit chain intact: 20 records, head "));

    // Change one byte of record 7's JSON, as someone with write access to the files could.
    let path: PathBuf = home.path().join("audit.sled");
    {
        let db = sled::open(&path).unwrap();
        let tree = db.open_tree("records").unwrap();
        let mut value = tree.get(7u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let at = value.windows(5).position(|w| w == b"allow").unwrap();
        value[at] = b'A';
        tree.insert(7u64.to_be_bytes(), value).unwrap();
        db.flush().unwrap();
    }
    let verify = tollgate(home.path(), &["audit", "verify", "--server", NO_SERVER]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    assert!(
        stdout(&verify).starts_with("audit chain broken at record 7: chain hash mismatch"),
        "{verify:?}"
    );

    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--server", NO_SERVER, "--json"],
    );
    let summary: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], false);
    assert_eq!(summary["firstBadSeq"], 7);
    assert_eq!(summary["verifiedRecords"], 7);

    // No store at all is an error to report, not an intact empty chain.
    let empty = tempfile::tempdir().unwrap();
    let verify = tollgate(empty.path(), &["audit", "verify", "--server", NO_SERVER]);
    assert_eq!(verify.status.code(), Some(2), "{verify:?}");
}

#[test]
fn dev_token_is_the_last_stdout_line_and_init_is_implicit() {
    let home = tempfile::tempdir().unwrap();
    let token = tollgate(
        home.path(),
        &[
            "dev",
            "token",
            "--sub",
            "alice@example.com",
            "--groups",
            "a,b",
        ],
    );
    assert!(token.status.success(), "{token:?}");
    let text = stdout(&token);
    let jwt = text.lines().last().unwrap();
    assert_eq!(jwt.split('.').count(), 3);
    assert!(home.path().join("dev/issuer-key.pem").exists());
    assert!(home.path().join("dev/jwks.json").exists());
    let bad = tollgate(
        home.path(),
        &["dev", "token", "--sub", "x", "--key", "/nonexistent.pem"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
}
