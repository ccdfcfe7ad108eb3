//! Three `tollgate serve` replicas on one PostgreSQL database (a throwaway cluster): concurrent
//! appends from writers spread over all three, one replica killed with SIGKILL mid-load.
//! Afterwards every acknowledged record is in the chain exactly once at the sequence number it
//! was acknowledged with, the chain is dense and `tollgate audit verify` passes (over gRPC and
//! reading the database directly); an approval decided on one replica releases a call held on
//! another, and a revocation made on one is listed by another. Also: a replica with another
//! signing key is refused, the documented grants suffice (and keep records insert-only), and TLS
//! to the database verifies the server.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::Postgres;
use common::{stdout, Server, BIN};
use serde_json::{json, Value};
use tollgate_proto::pb;
use tollgate_proto::pb::approvals_client::ApprovalsClient;
use tollgate_proto::pb::audit_client::AuditClient;
use tollgate_proto::pb::revocations_client::RevocationsClient;

const REPLICAS: usize = 3;
const WRITERS: usize = 48;
/// Acknowledged appends before the kill, and in all.
const KILL_AFTER: usize = 600;
const TOTAL: usize = 1800;
/// Bound on waiting for progress, so a stalled cluster fails instead of hanging.
const STALL: Duration = Duration::from_secs(120);

/// Copies `name` (keys, dev issuer) from the first replica's home: every replica must sign
/// with the log's one key, and operators' tokens must verify everywhere.
fn share(from: &Path, to: &Path, name: &str) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from.join(name))
        .arg(to.join(name))
        .status()
        .unwrap();
    assert!(status.success(), "copying {name}");
}

/// One acknowledged append: who wrote it, and what the replica answered.
#[derive(Debug, Clone)]
struct Ack {
    writer: usize,
    n: usize,
    seq: u64,
    chain_hash: String,
}

/// Waits (polling) until `counter` reaches `target`.
async fn reached(counter: &AtomicUsize, target: usize) {
    tokio::time::timeout(STALL, async {
        while counter.load(Ordering::Acquire) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("appends stalled before {target} were acknowledged"));
}

fn operator(server: &Server, home: &Path, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_HOME", home)
        .env("TOLLGATE_CONTROL_PLANE", server.url())
        .env("TOLLGATE_TOKEN", token)
        .output()
        .expect("run tollgate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_one_chain_through_a_killed_replica() {
    let cluster = Postgres::start();
    let url = cluster.database("tollgate");
    let homes: Vec<tempfile::TempDir> = (0..REPLICAS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let store = ["--store", url.as_str(), "--checkpoint-every", "100"];
    let mut replicas = vec![Server::start_with(homes[0].path(), &store)];
    for home in &homes[1..] {
        share(homes[0].path(), home.path(), "keys");
        share(homes[0].path(), home.path(), "dev");
        replicas.push(Server::start_with(home.path(), &store));
    }

    // Writers spread over the replicas, each appending until told to stop or its replica dies.
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(AuditClient::new(replica.gateway_channel().await));
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let replica = writer % REPLICAS;
            let mut client = clients[replica].clone();
            let (acks, acked, stop) = (acks.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    match client
                        .append(pb::AppendRequest {
                            record_json: common::record(writer, n),
                            session: None,
                        })
                        .await
                    {
                        Ok(ack) => {
                            let ack = ack.into_inner();
                            acks.lock().unwrap().push(Ack {
                                writer,
                                n,
                                seq: ack.seq,
                                chain_hash: ack.chain_hash,
                            });
                            acked.fetch_add(1, Ordering::AcqRel);
                        }
                        // Not acknowledged: the writer does not know whether it was stored.
                        Err(status) => return (replica, Some(status)),
                    }
                    n += 1;
                }
                (replica, None)
            })
        })
        .collect();

    reached(&acked, KILL_AFTER).await;
    let mut killed = replicas.pop().unwrap();
    killed.child.kill().unwrap(); // SIGKILL: no shutdown, no last checkpoint
    killed.child.wait().unwrap();
    reached(&acked, TOTAL).await;
    stop.store(true, Ordering::Release);
    let mut cut_off = 0;
    for task in tasks {
        let (replica, error) = task.await.unwrap();
        if replica < REPLICAS - 1 {
            assert!(
                error.is_none(),
                "replica {replica} failed an append: {error:?}"
            );
        } else {
            cut_off += usize::from(error.is_some());
        }
    }
    // The kill struck while the killed replica's writers were still appending.
    assert_eq!(cut_off, WRITERS / REPLICAS);
    drop(killed);

    // Every acknowledged record is there once, where it was acknowledged; the chain is dense.
    let records = common::list(&replicas[0]).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>(), "gap");
    let json = common::json_of(&records);
    let mut written: HashMap<(String, u64), usize> = HashMap::new();
    for record in json.iter().filter(|r| r["event"] == "mcp.request") {
        let key = (
            record["sub"].as_str().unwrap().to_string(),
            record["messages"][0]["id"].as_u64().unwrap(),
        );
        *written.entry(key).or_default() += 1;
    }
    assert!(written.values().all(|&count| count == 1), "a record twice");
    let acks = acks.lock().unwrap().clone();
    assert!(acks.len() >= TOTAL);
    for ack in &acks {
        let record = &json[ack.seq as usize];
        assert_eq!(
            record["sub"],
            format!("writer{}@example.com", ack.writer),
            "seq {}",
            ack.seq
        );
        assert_eq!(record["messages"][0]["id"], ack.n, "seq {}", ack.seq);
        assert_eq!(records[ack.seq as usize].chain_hash, ack.chain_hash);
    }
    for replica in 0..REPLICAS {
        assert!(
            acks.iter().any(|a| a.writer % REPLICAS == replica),
            "replica {replica} acknowledged nothing"
        );
    }
    let starts = json
        .iter()
        .filter(|r| r["event"] == "controlPlane.start")
        .count();
    assert_eq!(starts, REPLICAS);

    // The chain, the Merkle tree and checkpoints signed by several replicas verify.
    let verify = common::tollgate(
        homes[1].path(),
        &["audit", "verify", "--server", &replicas[1].url(), "--json"],
    );
    assert!(verify.status.success(), "{verify:?}");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["intact"], true, "{report}");
    assert!(
        report["checkpointsVerified"].as_u64().unwrap() >= 10,
        "{report}"
    );
    let direct = common::tollgate(
        homes[0].path(),
        &["audit", "verify", "--store", &url, "--json"],
    );
    assert!(direct.status.success(), "{direct:?}");
    let report: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(report["intact"], true, "{report}");

    // An approval decided on replica A releases the call held on replica B.
    let (a, b) = (&replicas[0], &replicas[1]);
    let olga = common::operator_token(homes[0].path(), "olga@example.com", "payments-approvers");
    let mut filter_b = ApprovalsClient::new(b.gateway_channel().await);
    let asked = filter_b
        .request(common::held_call(
            json!({"sub": "alice@example.com"}),
            "update_payout_account",
            json!({"merchant": "m_1", "accountNumber": "acct-1"}),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.state, pb::ApprovalState::Pending as i32);
    let held = {
        let mut filter_b = filter_b.clone();
        let id = asked.approval_id.clone();
        tokio::spawn(async move {
            filter_b
                .r#await(pb::AwaitRequest {
                    approval_id: id,
                    wait_ms: 60_000,
                })
                .await
                .unwrap()
                .into_inner()
        })
    };
    let approved = operator(
        a,
        homes[0].path(),
        &olga,
        &[
            "approvals",
            "approve",
            &asked.approval_id,
            "--reason",
            "PAY-9",
        ],
    );
    assert!(approved.status.success(), "{approved:?}");
    let released = held.await.unwrap();
    assert_eq!(
        released.state,
        pb::ApprovalState::Granted as i32,
        "{released:?}"
    );
    assert_eq!(released.decided_by, "olga@example.com");

    // A revocation made on A is listed by B (what B's Envoy workers poll).
    let sam = common::operator_token(homes[0].path(), "sam@example.com", "security-admins");
    let revoked = operator(
        a,
        homes[0].path(),
        &sam,
        &[
            "revoke",
            "--sub",
            "carol@example.com",
            "--reason",
            "offboarded",
        ],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    let list = RevocationsClient::new(b.gateway_channel().await)
        .list(pb::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.revocations.len(), 1);
    assert_eq!(list.revocations[0].value, "carol@example.com");
    assert_eq!(list.revocations[0].revocation_id, stdout(&revoked).trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_signing_key_refuses_to_start() {
    let cluster = Postgres::start();
    let url = cluster.database("tollgate");
    let first = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let _running = Server::start_with(first.path(), &["--store", &url]);
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &url])
        .env("TOLLGATE_HOME", other.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("every replica must have the same keys"),
        "{stderr}"
    );
}

/// The grants docs/postgres.md gives the role `serve` runs as.
const RUNTIME_GRANTS: &str = "\
    GRANT SELECT, INSERT ON tollgate_records, tollgate_merkle, tollgate_checkpoints, tollgate_meta TO tollgate; \
    GRANT SELECT, INSERT, UPDATE ON tollgate_head, tollgate_state TO tollgate;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_grants_are_enough_and_records_stay_insert_only() {
    let cluster = Postgres::start();
    let admin_url = cluster.database("tollgate");
    let migrate = common::tollgate(
        tempfile::tempdir().unwrap().path(),
        &["store", "migrate", "--store", &admin_url],
    );
    assert!(migrate.status.success(), "{migrate:?}");
    cluster.psql("tollgate", "CREATE ROLE tollgate LOGIN");
    cluster.psql("tollgate", RUNTIME_GRANTS);
    let url = admin_url.replace("postgres@", "tollgate@");

    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start_with(home, &["--store", &url, "--checkpoint-every", "5"]);
    let acks = common::append_concurrently(&server, 4, 5).await;
    assert_eq!(acks.len(), 20);
    let sam = common::operator_token(home, "sam@example.com", "security-admins");
    let revoked = operator(
        &server,
        home,
        &sam,
        &[
            "revoke",
            "--sub",
            "carol@example.com",
            "--reason",
            "offboarded",
        ],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    let verify = common::tollgate(
        home,
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    assert!(verify.status.success(), "{verify:?}");

    // The runtime role cannot change or remove what it wrote.
    for sql in [
        "UPDATE tollgate_records SET record = 'x' WHERE seq = 1",
        "DELETE FROM tollgate_records WHERE seq = 1",
        "DELETE FROM tollgate_checkpoints",
    ] {
        let refused = cluster.psql_as("tollgate", "tollgate", sql);
        assert!(!refused.status.success(), "{sql} was allowed");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
            "{refused:?}"
        );
    }
}

/// TLS to the database: the server's certificate must chain to a trusted root (`sslrootcert`)
/// and name the host; an untrusted server is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_verifies_the_server() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate test database CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let cluster = Postgres::start_with_tls(Some((&server.pem(), &server_key.serialize_pem())));
    let plain = cluster.database("tollgate");
    let home = tempfile::tempdir().unwrap();
    let ca_path = home.path().join("db-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();

    // Not trusted: refused, whatever else the URL says.
    let untrusted = format!("{plain}?sslmode=require");
    let refused = common::tollgate(home.path(), &["store", "migrate", "--store", &untrusted]);
    assert!(!refused.status.success(), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("certificate"), "{why}");

    let url = format!(
        "{plain}?sslmode=verify-full&sslrootcert={}",
        ca_path.display()
    );
    let server = Server::start_with(home.path(), &["--store", &url]);
    let acks = common::append_concurrently(&server, 2, 3).await;
    assert_eq!(acks.len(), 6);
    let encrypted = cluster.psql(
        "tollgate",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name LIKE 'tollgate %'",
    );
    assert_eq!(encrypted.trim(), "t", "every tollgate connection uses TLS");
}
