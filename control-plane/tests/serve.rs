//! Starts the real `tollgate serve` binary on a free port with a temporary home, and drives it
//! over gRPC and through the `tollgate` commands.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{append_concurrently, json_of, list, record, stdout, tollgate, Server, BIN};
use serde_json::{json, Value};
use tollgate_proto::pb;

fn events(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("-"))
        .collect()
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_appends_and_the_chain_verifies() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());

    let channel = server.anonymous_channel().await;
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

    // Record 0 is the control plane's own start.
    let acks = append_concurrently(&server, 16, 25).await;
    assert_eq!(acks.len(), 400);
    assert!(
        (1..=400).all(|seq| acks.contains_key(&seq)),
        "sequence numbers are dense"
    );

    let records = list(&server).await;
    // 401 plus the record of this very read.
    assert_eq!(records.len(), 402);
    let values = json_of(&records);
    assert_eq!(values[0]["event"], "controlPlane.start");
    assert_eq!(values[0]["recovered"], false);
    assert!(values[0]["signingKey"]
        .as_str()
        .unwrap()
        .starts_with("tollgate.local/audit/"));
    assert_eq!(values[401]["event"], "controlPlane.auditRead");
    assert_eq!(values[401]["operator"]["verified"], true);
    assert_eq!(values[401]["operator"]["sub"], "auditor@example.com");
    for (seq, record) in records.iter().enumerate().skip(1).take(400) {
        assert_eq!(record.seq, seq as u64);
        assert_eq!(record.chain_hash, acks[&record.seq]);
    }
    let times: Vec<&str> = values
        .iter()
        .map(|v| v["receivedAt"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "receivedAt never decreases"
    );

    // Bad bodies are refused with a message that does not repeat them; so are records that
    // pretend to be the control plane's.
    let mut client = server.client().await;
    for body in [
        &b"[\"4111111111111111\"]"[..],
        b"{\"pan\":\"4111111111111111\"",
        b"{\"receivedAt\":\"x\"}",
        b"{\"event\":\"controlPlane.stop\"}",
    ] {
        let status = client
            .append(pb::AppendRequest {
                record_json: body.to_vec(),
                session: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(!status.message().contains("4111"), "{}", status.message());
        assert!(!status.message().is_empty());
    }

    let verify = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    let text = stdout(&verify);
    let first = text.lines().next().unwrap();
    assert!(
        // The appends, the start and verify's reads (the state tables before the fresh
        // checkpoint, the records after it).
        first.starts_with("audit chain intact: 404 records, head "),
        "{text}"
    );
    assert!(
        text.contains("checkpoints verified; latest covers 403 records"),
        "{text}"
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
    let lines = json_lines(&query);
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

    // A graceful stop records itself, then a restart continues the chain.
    assert!(server.terminate().success());
    let server = Server::start(home.path());
    let ack = server
        .client()
        .await
        .append(pb::AppendRequest {
            record_json: b"{}".to_vec(),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();
    let values = json_of(&list(&server).await);
    // After the appends and verify's first reads: the state tables read again after the
    // records, then the query's read.
    let tail: Vec<&str> = events(&values)[404..].to_vec();
    assert_eq!(
        tail,
        vec![
            "controlPlane.auditRead",
            "controlPlane.auditRead",
            "controlPlane.auditRead",
            "controlPlane.stop",
            "controlPlane.start",
            "-",
            "controlPlane.auditRead"
        ],
        "a clean stop leaves no recovery record"
    );
    assert_eq!(ack.seq, 409);
    assert_eq!(values[407]["signal"], "SIGTERM");
    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    let summary: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], true, "{summary}");
    assert_eq!(summary["records"], 413);
    assert_eq!(summary["latestCheckpoint"]["size"], 412);
    assert_eq!(summary["uncoveredRecords"], 1, "only the verify's own read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_and_the_recovery_is_recorded() {
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
                            session: None,
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
    while acked.len() < 3000 {
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
    let last_acked = *acked.keys().max().unwrap();

    let server = Server::start(home.path());
    let records = list(&server).await;
    let stored: HashMap<u64, String> = records
        .iter()
        .map(|r| (r.seq, r.chain_hash.clone()))
        .collect();
    for (seq, hash) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(hash),
            "acknowledged record {seq} lost or changed"
        );
    }
    // The restart's first records: the recovery, then the start.
    let values = json_of(&records);
    let recovery = values
        .iter()
        .position(|v| v["event"] == "controlPlane.recovery")
        .expect("a recovery record");
    assert!(recovery as u64 > last_acked);
    assert_eq!(values[recovery + 1]["event"], "controlPlane.start");
    assert_eq!(values[recovery + 1]["recovered"], true);
    assert_eq!(values[recovery]["records"], recovery as u64);
    // sled is flushed once per full write-ahead log file (4 MiB, more than these records), so
    // what the kill caught in sled's memory came back from the log.
    let replayed = values[recovery]["replayedFromLog"].as_u64().unwrap();
    assert!(replayed <= recovery as u64, "{replayed}");
    eprintln!("{replayed} of {recovery} records replayed from the write-ahead log");
    assert!(values[recovery]["previousRun"]["pid"].is_u64());
    let verify = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_the_store_offline_records_the_read_and_names_the_first_bad_record() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    append_concurrently(&server, 4, 5).await;
    assert!(server.terminate().success());

    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--direct", "--operator", "auditor-1"],
    );
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    // start + 20 + stop + the verify's own read.
    assert!(
        stdout(&verify).starts_with("audit chain intact: 23 records, head "),
        "{verify:?}"
    );

    // The offline read is on record, with who did it.
    let query = tollgate(
        home.path(),
        &[
            "audit",
            "query",
            "--direct",
            "--event",
            "controlPlane.auditRead",
            "--json",
        ],
    );
    let reads = json_lines(&query);
    assert_eq!(reads.len(), 2, "the verify's read and this query's own");
    assert_eq!(reads[0]["record"]["purpose"], "verify");
    assert_eq!(reads[0]["record"]["via"], "store");
    assert_eq!(reads[0]["record"]["operator"]["name"], "auditor-1");
    assert_eq!(reads[1]["record"]["purpose"], "query");
    assert_eq!(
        reads[1]["record"]["filter"]["event"],
        "controlPlane.auditRead"
    );

    // Change one byte of record 7's JSON, as someone with write access to the files could.
    let path: PathBuf = home.path().join("audit.sled");
    {
        let db = sled::Config::new()
            .path(&path)
            .use_compression(false)
            .open()
            .unwrap();
        let tree = db.open_tree("records").unwrap();
        let mut value = common::unpacked(&tree.get(7u64.to_be_bytes()).unwrap().unwrap());
        let at = value.windows(5).position(|w| w == b"allow").unwrap();
        value[at] = b'A';
        tree.insert(7u64.to_be_bytes(), common::packed(&value))
            .unwrap();
        db.flush().unwrap();
    }
    let verify = tollgate(home.path(), &["audit", "verify", "--direct"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    assert!(
        stdout(&verify).starts_with("audit chain broken at record 7: chain hash mismatch"),
        "{verify:?}"
    );

    let verify = tollgate(home.path(), &["audit", "verify", "--direct", "--json"]);
    let summary: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], false);
    assert_eq!(summary["firstBadSeq"], 7);
    assert_eq!(summary["verifiedRecords"], 7);

    // No store at all is an error to report, not an intact empty chain.
    let empty = tempfile::tempdir().unwrap();
    let verify = tollgate(empty.path(), &["audit", "verify", "--direct"]);
    assert_eq!(verify.status.code(), Some(2), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_over_grpc_need_a_verified_auditor_and_are_recorded_with_them() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let query = |token: &str| {
        Command::new(BIN)
            .args([
                "audit",
                "query",
                "--server",
                &server.url(),
                "--decision",
                "deny",
                "--operator",
                "carol",
            ])
            .env("TOLLGATE_HOME", home.path())
            .env("TOLLGATE_TOKEN", token)
            .env("USER", "ops")
            .output()
            .unwrap()
    };
    // A token nobody signed, and a real one of someone outside the auditor groups: no read.
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"carol@example.com","iss":"https://idp"}"#);
    let forged = query(&format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln"));
    assert!(!forged.status.success(), "{forged:?}");
    let outsider = common::operator_token(home.path(), "dave@example.com", "payments-approvers");
    let refused = query(&outsider);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("auditors"),
        "the refusal names the groups: {refused:?}"
    );

    let carol = common::operator_token(home.path(), "carol@example.com", "auditors");
    let output = query(&carol);
    assert!(output.status.success(), "{output:?}");
    let values = json_of(&list(&server).await);
    let read = values
        .iter()
        .find(|v| v["event"] == "controlPlane.auditRead" && v["purpose"] == "query")
        .unwrap();
    assert_eq!(
        read["operator"],
        json!({"name": "carol", "osUser": "ops", "tokenSub": "carol@example.com",
               "sub": "carol@example.com", "groups": ["auditors"],
               "peer": read["operator"]["peer"], "verified": true})
    );
    assert!(read["operator"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(read["filter"], json!({"decision": "deny"}));
    assert_eq!(read["via"], "grpc");
    let refusals: Vec<&Value> = values
        .iter()
        .filter(|v| v["event"] == "controlPlane.refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["claimedSub"], "carol@example.com");
    assert_eq!(refusals[0]["code"], "Unauthenticated");
    assert_eq!(refusals[1]["claimedSub"], "dave@example.com");
    assert_eq!(refusals[1]["code"], "PermissionDenied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_replay_show_who_what_and_which_decision() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;
    let records = [
        json!({"event": "mcp.request", "session": "s-1", "sub": "alice", "time": "2025-01-31T12:00:00.000001Z",
               "identity": {"sub": "alice", "email": "alice@example.com", "act": {"sub": "ci-runner"}},
               "messages": [{"kind": "request", "id": 1, "method": "tools/call", "target": "get_customer",
                             "arguments": {"customerId": "cus_1"}}],
               "decision": "allow", "outcome": "forwarded"}),
        json!({"event": "mcp.response", "session": "s-1", "sub": "alice", "status": 200, "bytes": 512,
               "durationMs": 7, "maskedPans": {"visa": 2}, "result": "card ************1111"}),
        json!({"event": "mcp.request", "requestId": "r-9", "sub": "bob",
               "messages": [{"kind": "request", "id": 2, "method": "tools/call", "target": "delete_merchant",
                             "arguments": {"merchant": "m-1"}}],
               "decision": "deny", "rule": "no-deletes", "reason": "never", "outcome": "refused", "status": 403}),
        json!({"event": "mcp.request", "session": "s-1", "sub": "alice",
               "messages": [{"kind": "request", "id": 3, "method": "tools/call", "target": "refund_payment",
                             "arguments": {"amount": 5}}],
               "decision": "deny", "rule": "refunds", "outcome": "refused", "status": 403}),
    ];
    for r in &records {
        client
            .append(pb::AppendRequest {
                record_json: r.to_string().into_bytes(),
                session: None,
            })
            .await
            .unwrap();
    }
    let list = tollgate(
        home.path(),
        &["sessions", "list", "--server", &server.url(), "--json"],
    );
    assert!(list.status.success(), "{list:?}");
    let sessions = json_lines(&list);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["session"], "s-1");
    assert_eq!(sessions[0]["records"], 3);
    assert_eq!(sessions[0]["calls"], 2);
    assert_eq!(sessions[0]["denied"], 1);
    assert_eq!(sessions[0]["onBehalfOf"], json!(["ci-runner (act)"]));
    assert_eq!(
        sessions[0]["tools"],
        json!(["get_customer", "refund_payment"])
    );
    assert_eq!(sessions[1]["session"], "request:r-9");
    let table = tollgate(
        home.path(),
        &["sessions", "list", "--server", &server.url()],
    );
    assert!(stdout(&table).starts_with("SESSION"));

    let replay = tollgate(
        home.path(),
        &["sessions", "replay", "s-1", "--server", &server.url()],
    );
    assert!(replay.status.success(), "{replay:?}");
    let text = stdout(&replay);
    for part in [
        "session s-1: 3 records",
        "who: alice (email alice@example.com), on behalf of ci-runner (act)",
        "tools/call get_customer {\"customerId\":\"cus_1\"}",
        "decision allow",
        "status 200; 512 bytes; 7 ms; masked PANs: visa 2",
        "result (masked): card ************1111",
        "decision deny; rule refunds",
    ] {
        assert!(text.contains(part), "{part:?} in\n{text}");
    }
    assert!(text.find("get_customer").unwrap() < text.find("refund_payment").unwrap());
    let replay = tollgate(
        home.path(),
        &[
            "sessions",
            "replay",
            "s-1",
            "--server",
            &server.url(),
            "--json",
        ],
    );
    let lines = json_lines(&replay);
    assert_eq!(lines.len(), 3);
    assert!(lines
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    let missing = tollgate(
        home.path(),
        &["sessions", "replay", "nope", "--server", &server.url()],
    );
    assert_eq!(missing.status.code(), Some(2));

    // Query by decision and time; SIEM exports.
    let denied = tollgate(
        home.path(),
        &[
            "audit",
            "query",
            "--server",
            &server.url(),
            "--decision",
            "deny",
            "--from",
            "1h",
            "--json",
        ],
    );
    assert_eq!(json_lines(&denied).len(), 2);
    let none = tollgate(
        home.path(),
        &[
            "audit",
            "query",
            "--server",
            &server.url(),
            "--to",
            "2020-01-01",
            "--json",
        ],
    );
    assert_eq!(json_lines(&none).len(), 0);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("out.jsonl");
    let csv = dir.path().join("out.csv");
    for (format, path) in [("jsonl", &jsonl), ("csv", &csv)] {
        let export = tollgate(
            home.path(),
            &[
                "audit",
                "export",
                "--server",
                &server.url(),
                "--format",
                format,
                "--event",
                "mcp.request",
                "--out",
                path.to_str().unwrap(),
            ],
        );
        assert!(export.status.success(), "{export:?}");
    }
    let jsonl = std::fs::read_to_string(jsonl).unwrap();
    assert_eq!(jsonl.lines().count(), 3);
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["record"]["session"], "s-1");
    let csv = std::fs::read_to_string(csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4);
    assert!(rows[0].starts_with("seq,receivedAt,time,event,sub,session"));
    assert!(
        rows[3].contains(",deny,refused,403,tools/call,refund_payment,"),
        "{}",
        rows[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_checkpoints_keep_coming_and_rotation_keeps_old_ones_verifiable() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with(home.path(), &["--checkpoint-interval", "200ms"]);
    let mut client = server.client().await;
    client
        .append(pb::AppendRequest {
            record_json: b"{}".to_vec(),
            session: None,
        })
        .await
        .unwrap();
    let checkpoints = |mut client: common::Reader| async move {
        let mut stream = client
            .list_checkpoints(pb::ListCheckpointsRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut notes = Vec::new();
        while let Some(c) = stream.message().await.unwrap() {
            notes.push(c.note);
        }
        notes
    };
    let reader = server.reader().await;
    let before = checkpoints(reader.clone()).await.len();
    // Poll: at least three more idle checkpoints, same size, later times.
    let mut notes = Vec::new();
    for _ in 0..100 {
        notes = checkpoints(reader.clone()).await;
        if notes.len() >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(notes.len() >= before + 3, "{notes:?}");
    let bodies: Vec<Vec<&str>> = notes[notes.len() - 3..]
        .iter()
        .map(|n| n.lines().collect())
        .collect();
    assert_eq!(bodies[0][1], bodies[2][1], "same size");
    assert_eq!(bodies[0][2], bodies[2][2], "same root");
    assert!(bodies[0][4] < bodies[2][4], "later time: {bodies:?}");

    let rotate = tollgate(home.path(), &["keys", "rotate", "--server", &server.url()]);
    assert!(rotate.status.success(), "{rotate:?}");
    assert!(stdout(&rotate).starts_with("new checkpoint key tollgate.local/audit/"));
    let show = tollgate(home.path(), &["keys", "show"]);
    assert_eq!(
        stdout(&show)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        2
    );
    let verify = tollgate(
        home.path(),
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    let summary: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(summary["intact"], true, "{summary}");
    let new_key =
        stdout(&rotate).lines().next().unwrap()["new checkpoint key ".len()..].to_string();
    let mut parts = new_key.splitn(3, '+');
    let label = format!("{}+{}", parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(summary["latestCheckpoint"]["key"], label);

    // Only the old key: the new checkpoints are not trusted.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.vkey");
    let first_key = stdout(&show)
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_string();
    std::fs::write(&old, format!("{first_key}\n")).unwrap();
    let verify = tollgate(
        home.path(),
        &[
            "audit",
            "verify",
            "--server",
            &server.url(),
            "--key",
            old.to_str().unwrap(),
        ],
    );
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    assert!(stdout(&verify).contains("is not signed by a trusted key"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_name_their_control_plane_and_never_read_another_log() {
    // Two logs on one machine: the one a control plane serves, and another home's.
    let served = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    {
        let server = Server::start(other.path());
        append_concurrently(&server, 1, 3).await;
        assert!(server.terminate().success());
    }
    let server = Server::start(served.path());
    append_concurrently(&server, 2, 5).await;
    let token = common::operator_token(served.path(), "auditor@example.com", "auditors");
    let run = |home: &std::path::Path, env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("TOLLGATE_HOME", home)
            .env("TOLLGATE_TOKEN", &token)
            .env("TOLLGATE_CA", served.path().join("tls/ca.pem"))
            .env_remove("TOLLGATE_CONTROL_PLANE");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // Nobody at the address: an error naming it, not the other home's log read instead.
    let nobody = run(
        other.path(),
        &[("TOLLGATE_CONTROL_PLANE", "127.0.0.1:1")],
        &["audit", "query", "--json"],
    );
    assert_eq!(nobody.status.code(), Some(2), "{nobody:?}");
    assert!(stdout(&nobody).is_empty(), "{nobody:?}");
    assert!(
        stderr(&nobody).contains("no control plane answers at https://127.0.0.1:1"),
        "{}",
        stderr(&nobody)
    );
    assert!(stderr(&nobody).contains("--direct"), "{}", stderr(&nobody));

    // host:port, as `serve --listen` and `make run` take it, from the one variable.
    // Trust is pinned from outside: the served log's keys, not this home's.
    let keys = served.path().join("keys/checkpoint.vkeys");
    let verified = run(
        other.path(),
        &[("TOLLGATE_CONTROL_PLANE", &server.address)],
        &["audit", "verify", "--json", "--key", keys.to_str().unwrap()],
    );
    assert!(verified.status.success(), "{verified:?}");
    let report: Value = serde_json::from_str(stdout(&verified).trim()).unwrap();
    assert!(
        report["records"].as_u64().unwrap() >= 11,
        "the served log, not the other: {report}"
    );

    // The other home's store, asked for by name, is read directly.
    let direct = run(
        other.path(),
        &[],
        &["audit", "verify", "--direct", "--json"],
    );
    assert!(direct.status.success(), "{direct:?}");
    let report: Value = serde_json::from_str(stdout(&direct).trim()).unwrap();
    assert!(report["records"].as_u64().unwrap() < 11, "{report}");

    // The served store, asked for directly while its control plane holds it: told why not.
    let held = run(served.path(), &[], &["audit", "query", "--direct"]);
    assert_eq!(held.status.code(), Some(2), "{held:?}");
    assert!(
        stderr(&held).contains("open in another process"),
        "{}",
        stderr(&held)
    );
    assert_eq!(stderr(&held).matches("open in another process").count(), 1);

    // The names the address had before are refused, not silently ignored.
    for old in ["TOLLGATE_SERVER", "TOLLGATE_LISTEN"] {
        let refused = run(other.path(), &[(old, &server.url())], &["audit", "query"]);
        assert_eq!(refused.status.code(), Some(2), "{refused:?}");
        assert!(
            stderr(&refused).contains("TOLLGATE_CONTROL_PLANE"),
            "{}",
            stderr(&refused)
        );
    }

    let completions = run(other.path(), &[], &["completions", "bash"]);
    assert!(completions.status.success(), "{completions:?}");
    assert!(stdout(&completions).contains("tollgate"));
}
