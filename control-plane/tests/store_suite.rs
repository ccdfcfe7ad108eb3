//! One store test suite, run against both backends through the real `tollgate` binary: sled
//! (the default) and PostgreSQL (a throwaway cluster per test, `--store postgres://...`).
//! Appends and the chain, rejected input, reopening, checkpoints and proofs (an export bundle
//! verified offline), queries, approvals and revocations.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::pg::Postgres;
use common::{stdout, Server, BIN};
use serde_json::{json, Value};
use tollgate_proto::pb;
use tollgate_proto::pb::approvals_client::ApprovalsClient;
use tollgate_proto::pb::revocations_client::RevocationsClient;

/// Where the store lives for one test.
enum Backend {
    Sled,
    Postgres { _cluster: Postgres, url: String },
}

impl Backend {
    fn sled() -> Self {
        Self::Sled
    }

    fn postgres() -> Self {
        let cluster = Postgres::start();
        let url = cluster.database("tollgate");
        Self::Postgres {
            _cluster: cluster,
            url,
        }
    }

    /// `--store` arguments (none: sled under the home directory).
    fn store_args(&self) -> Vec<String> {
        match self {
            Self::Sled => Vec::new(),
            Self::Postgres { url, .. } => vec!["--store".into(), url.clone()],
        }
    }

    fn start(&self, home: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = self.store_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(home, &args)
    }

    /// `tollgate ARGS` reading the store directly (no server), with this backend's `--store`.
    fn direct(&self, home: &Path, args: &[&str]) -> Output {
        let store = self.store_args();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--direct"]);
        all.extend(store.iter().map(String::as_str));
        common::tollgate(home, &all)
    }
}

/// Runs a test body against sled and against PostgreSQL.
macro_rules! both_backends {
    ($body:ident, $sled:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sled() {
            $body(Backend::sled()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $body(Backend::postgres()).await;
        }
    };
}

fn json_report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}\n{}",
            stdout(output),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn verify_over(server: &Server, home: &Path) -> Value {
    let output = common::tollgate(
        home,
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    assert!(output.status.success(), "{output:?}");
    json_report(&output)
}

both_backends!(
    appends_form_one_dense_verifiable_chain,
    sled_appends_form_one_dense_verifiable_chain,
    postgres_appends_form_one_dense_verifiable_chain
);

async fn appends_form_one_dense_verifiable_chain(backend: Backend) {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = backend.start(home, &[]);
    let acks = common::append_concurrently(&server, 16, 20).await;
    assert_eq!(acks.len(), 320);

    // Rejected bodies store nothing and do not quote the body.
    let mut client = server.client().await;
    for body in [
        &b"[1,2]"[..],
        br#"{"pan":"4111111111111111""#,
        br#"{"receivedAt":"yesterday"}"#,
        br#"{"event":"controlPlane.start"}"#,
    ] {
        let status = client
            .append(pb::AppendRequest {
                record_json: body.to_vec(),
                session: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(!status.message().contains("4111"), "{status:?}");
    }

    let records = common::list(&server).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>(), "dense");
    for (seq, hash) in &acks {
        assert_eq!(&records[*seq as usize].chain_hash, hash, "record {seq}");
    }
    let json = common::json_of(&records);
    assert_eq!(json[0]["event"], "controlPlane.start");
    assert!(json.iter().all(|r| r["receivedAt"].as_str().is_some()));
    let times: Vec<&str> = json
        .iter()
        .map(|r| r["receivedAt"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "receivedAt order");
    assert_eq!(
        json.iter().filter(|r| r["event"] == "mcp.request").count(),
        320
    );

    let report = verify_over(&server, home);
    assert_eq!(report["intact"], true, "{report}");

    // Queries read the same store.
    let query = common::tollgate(
        home,
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
    assert!(query.status.success(), "{query:?}");
    let lines: Vec<Value> = stdout(&query)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    assert!(lines
        .iter()
        .all(|l| l["record"]["sub"] == "writer3@example.com"));

    // Stopped and started again: the chain continues where it was.
    let len_before = common::list(&server).await.len() as u64;
    assert!(server.terminate().success());
    let report = json_report(&backend.direct(home, &["audit", "verify", "--json"]));
    assert_eq!(report["intact"], true, "{report}");
    let server = backend.start(home, &[]);
    let next = server
        .client()
        .await
        .append(pb::AppendRequest {
            record_json: common::record(99, 0),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.seq > len_before, "{} after {len_before}", next.seq);
    let report = verify_over(&server, home);
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["records"].as_u64().unwrap() > next.seq, "{report}");
}

both_backends!(
    checkpoints_and_proofs_cover_the_records,
    sled_checkpoints_and_proofs_cover_the_records,
    postgres_checkpoints_and_proofs_cover_the_records
);

/// The size a signed checkpoint note states (its second line).
fn note_size(note: &str) -> u64 {
    note.lines().nth(1).unwrap().parse().unwrap()
}

async fn checkpoints_and_proofs_cover_the_records(backend: Backend) {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = backend.start(
        home,
        &["--checkpoint-every", "10", "--checkpoint-interval", "1h"],
    );
    let mut client = server.client().await;
    for n in 0..35 {
        client
            .append(pb::AppendRequest {
                record_json: common::record(1, n),
                session: None,
            })
            .await
            .unwrap();
    }
    let mut client = server.reader().await;
    let fresh = client
        .checkpoint(pb::CheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = client
        .log_info(pb::LogInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(note_size(&fresh.note), info.size);
    assert_eq!(info.size, 36, "the start record and 35 appends");
    let mut stream = client
        .list_checkpoints(pb::ListCheckpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    let mut numbers = Vec::new();
    while let Some(checkpoint) = stream.message().await.unwrap() {
        sizes.push(note_size(&checkpoint.note));
        numbers.push(checkpoint.number);
    }
    assert_eq!(
        sizes,
        vec![10, 20, 30, 36],
        "every 10 records, then on request"
    );
    assert_eq!(numbers, (0..4).collect::<Vec<_>>());
    let report = verify_over(&server, home);
    assert_eq!(report["intact"], true, "{report}");
    assert!(
        report["checkpointsVerified"].as_u64().unwrap() >= 4,
        "{report}"
    );

    // Inclusion and consistency proofs from the store, checked offline in a bundle.
    let bundle = home.join("bundle.json");
    let export = common::tollgate(
        home,
        &[
            "audit",
            "export",
            "--server",
            &server.url(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(export.status.success(), "{export:?}");
    let vkeys = home.join("keys/checkpoint.vkeys");
    let offline = common::tollgate(
        home,
        &[
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            vkeys.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(offline.status.success(), "{offline:?}");
    // Without a pinned key the same bundle is only "unauthenticated".
    let unpinned = common::tollgate(
        home,
        &["audit", "verify", "--bundle", bundle.to_str().unwrap()],
    );
    assert_eq!(unpinned.status.code(), Some(2), "{unpinned:?}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert!(bundle["records"].as_array().unwrap().len() >= 36);
    assert!(!bundle["checkpoints"].as_array().unwrap().is_empty());
}

/// `tollgate ARGS` as an operator holding `token`, against `server`.
fn operator(server: &Server, home: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_HOME", home)
        .env("TOLLGATE_CONTROL_PLANE", server.url())
        .env("TOLLGATE_TOKEN", token)
        .output()
        .expect("run tollgate")
}

fn approval_request(requester: &str) -> pb::ApprovalRequest {
    common::held_call(
        json!({"sub": requester}),
        "update_payout_account",
        json!({"merchant": "m_1", "accountNumber": "acct-1"}),
    )
}

both_backends!(
    approvals_and_revocations_keep_their_state,
    sled_approvals_and_revocations_keep_their_state,
    postgres_approvals_and_revocations_keep_their_state
);

async fn approvals_and_revocations_keep_their_state(backend: Backend) {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = backend.start(home, &[]);
    let olga = common::operator_token(home, "olga@example.com", "payments-approvers");
    let sam = common::operator_token(home, "sam@example.com", "security-admins");
    let mut filter = ApprovalsClient::new(server.gateway_channel().await);

    let asked = filter
        .request(approval_request("alice@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.state, pb::ApprovalState::Pending as i32);
    let held = {
        let mut filter = filter.clone();
        let id = asked.approval_id.clone();
        tokio::spawn(async move {
            filter
                .r#await(pb::AwaitRequest {
                    approval_id: id,
                    wait_ms: 30_000,
                })
                .await
                .unwrap()
                .into_inner()
        })
    };
    let approved = operator(
        &server,
        home,
        &olga,
        &[
            "approvals",
            "approve",
            &asked.approval_id,
            "--reason",
            "PAY-1",
        ],
    );
    assert!(approved.status.success(), "{approved:?}");
    let released = held.await.unwrap();
    assert_eq!(released.state, pb::ApprovalState::Granted as i32);
    assert_eq!(released.decided_by, "olga@example.com");
    // Used once: the next identical call asks again.
    let again = filter
        .request(approval_request("alice@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::ApprovalState::Pending as i32);
    assert_ne!(again.approval_id, asked.approval_id);
    let listed = operator(&server, home, &olga, &["approvals", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let states: Vec<String> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["state"].to_string())
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");

    let revoked = operator(
        &server,
        home,
        &sam,
        &["revoke", "--sub", "carol@example.com", "--reason", "left"],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    let id = stdout(&revoked).trim().to_string();
    let mut revocations = RevocationsClient::new(server.gateway_channel().await);
    let list = revocations
        .list(pb::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.version, 1);
    assert_eq!(list.revocations.len(), 1);
    assert_eq!(list.revocations[0].value, "carol@example.com");
    let lifted = operator(
        &server,
        home,
        &sam,
        &["revocations", "lift", &id, "--reason", "back"],
    );
    assert!(lifted.status.success(), "{lifted:?}");

    // Service account owners travel with the list under the same version; a removed owner
    // (kept as a tombstone: the store never deletes) is gone from it.
    for (args, owners) in [
        (
            vec![
                "service-accounts",
                "set",
                "ci-deploy",
                "--owner",
                "dana@example.com",
                "--reason",
                "PAY-7",
            ],
            1,
        ),
        (
            vec![
                "service-accounts",
                "set",
                "ci-report",
                "--owner",
                "dana@example.com",
                "--reason",
                "PAY-8",
            ],
            2,
        ),
        (
            vec![
                "service-accounts",
                "remove",
                "ci-report",
                "--reason",
                "retired",
            ],
            1,
        ),
    ] {
        let changed = operator(&server, home, &sam, &args);
        assert!(changed.status.success(), "{changed:?}");
        let list = revocations
            .list(pb::ListRevocationsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.owners.len(), owners, "{args:?}: {list:?}");
    }
    let again = operator(
        &server,
        home,
        &sam,
        &[
            "service-accounts",
            "remove",
            "ci-report",
            "--reason",
            "twice",
        ],
    );
    assert_eq!(again.status.code(), Some(1), "{again:?}");

    // The state survives a restart.
    assert!(server.terminate().success());
    let server = backend.start(home, &[]);
    let list = RevocationsClient::new(server.gateway_channel().await)
        .list(pb::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((list.version, list.revocations.len()), (5, 0));
    assert_eq!(list.owners.len(), 1);
    assert_eq!(
        (
            list.owners[0].service_account.as_str(),
            list.owners[0].owner.as_str()
        ),
        ("ci-deploy", "dana@example.com")
    );
    let listed = operator(&server, home, &olga, &["approvals", "list", "--json"]);
    assert_eq!(stdout(&listed).lines().count(), 2, "{listed:?}");
    let report = verify_over(&server, home);
    assert_eq!(report["intact"], true, "{report}");
}
