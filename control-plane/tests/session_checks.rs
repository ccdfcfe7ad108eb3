//! Session checks at `Append`, through real `tollgate serve` processes: a session is bound by the
//! append that opens it, a use by anyone else or of an id never bound is chained as a refusal
//! and answered `session_refused`, the owner's END removes it, the binding survives a restart,
//! and on PostgreSQL a session bound through one replica is checked on another. The control
//! plane's own field cannot be forged.

mod common;

use std::path::Path;
use std::process::Command;

use common::pg::Postgres;
use common::{list, Server};
use serde_json::{json, Value};
use tollgate_proto::pb;
use tollgate_proto::pb::audit_client::AuditClient;
use tonic::transport::Channel;

const ALICE: &str = r#"["https://idp.example","alice"]"#;
const MALLORY: &str = r#"["https://idp.example","mallory"]"#;

fn check(session: &str, subject: &str, step: pb::SessionStep) -> Option<pb::SessionCheck> {
    Some(pb::SessionCheck {
        session_id: session.to_owned(),
        subject: subject.to_owned(),
        step: step.into(),
    })
}

/// Appends a record with a session check; returns `session_refused` and the stored record.
async fn step(
    client: &mut AuditClient<Channel>,
    server: &Server,
    session: &str,
    subject: &str,
    step: pb::SessionStep,
) -> (String, Value) {
    let event = if step == pb::SessionStep::Open {
        "mcp.session.opened"
    } else {
        "mcp.request"
    };
    let ack = client
        .append(pb::AppendRequest {
            record_json: json!({"event": event, "session": session, "decision": "allow",
                                "outcome": "forwarded", "sub": subject})
            .to_string()
            .into_bytes(),
            session: check(session, subject, step),
        })
        .await
        .unwrap()
        .into_inner();
    let stored = list(server).await;
    let record = stored
        .iter()
        .find(|r| r.seq == ack.seq)
        .map(|r| serde_json::from_slice(&r.canonical_json).unwrap())
        .unwrap();
    (ack.session_refused, record)
}

fn assert_refused(outcome: &(String, Value), why: &str) {
    let (refused, record) = outcome;
    assert_eq!(refused, why, "{record}");
    assert_eq!(record["sessionRefused"], why, "{record}");
    if record["event"] == "mcp.request" {
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["outcome"], "refused", "{record}");
        assert_eq!(record["status"], 404, "{record}");
    } else {
        assert_eq!(record["outcome"], "refused", "{record}");
    }
}

fn assert_passed(outcome: &(String, Value)) {
    let (refused, record) = outcome;
    assert_eq!(refused, "", "{record}");
    assert!(record.get("sessionRefused").is_none(), "{record}");
    assert_ne!(record["decision"], "deny", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_bound_checked_ended_and_survives_a_restart() {
    use pb::SessionStep::{End, Open, Use};
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;

    assert_refused(
        &step(&mut client, &server, "s1", ALICE, Use).await,
        "unknown",
    );
    assert_passed(&step(&mut client, &server, "s1", ALICE, Open).await);
    assert_passed(&step(&mut client, &server, "s1", ALICE, Use).await);
    assert_refused(
        &step(&mut client, &server, "s1", MALLORY, Use).await,
        "other_identity",
    );
    assert_refused(
        &step(&mut client, &server, "s1", MALLORY, Open).await,
        "other_identity",
    );
    assert_refused(
        &step(&mut client, &server, "s1", MALLORY, End).await,
        "other_identity",
    );
    assert_passed(&step(&mut client, &server, "s1", ALICE, End).await);
    assert_refused(
        &step(&mut client, &server, "s1", ALICE, Use).await,
        "unknown",
    );

    // Bound, then the control plane restarts: still alice's.
    assert_passed(&step(&mut client, &server, "s2", ALICE, Open).await);
    assert!(server.terminate().success());
    let server = Server::start(home.path());
    let mut client = server.client().await;
    assert_passed(&step(&mut client, &server, "s2", ALICE, Use).await);
    assert_refused(
        &step(&mut client, &server, "s2", MALLORY, Use).await,
        "other_identity",
    );

    // The control plane's field cannot come from a client, and a check names both parties.
    let forged = client
        .append(pb::AppendRequest {
            record_json: br#"{"event":"mcp.request","sessionRefused":"none"}"#.to_vec(),
            session: None,
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    let anonymous = client
        .append(pb::AppendRequest {
            record_json: br#"{"event":"mcp.request"}"#.to_vec(),
            session: check("s2", "", Use),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::InvalidArgument);

    // Only digests are kept: the session ids are nowhere in the state beside the log except
    // inside records, which name them on purpose.
    assert!(server.terminate().success());
    let sessions = sled_tree_keys(home.path());
    assert_eq!(sessions.len(), 1, "only s2 is bound: {sessions:?}");
    assert_eq!(sessions[0].len(), 64, "a hex SHA-256: {:?}", sessions[0]);
}

/// The keys of the `sessions` tree, read with the control plane stopped.
fn sled_tree_keys(home: &Path) -> Vec<String> {
    let db = sled::Config::new()
        .path(home.join("audit.sled"))
        .use_compression(false)
        .open()
        .unwrap();
    let tree = db.open_tree("sessions").unwrap();
    tree.iter()
        .keys()
        .map(|k| String::from_utf8_lossy(&k.unwrap()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_through_one_replica_is_checked_on_another() {
    use pb::SessionStep::{End, Open, Use};
    let cluster = Postgres::start();
    let url = cluster.database("tollgate");
    let (first_home, second_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = ["--store", url.as_str()];
    let first = Server::start_with(first_home.path(), &store);
    for name in ["keys", "dev"] {
        let copied = Command::new("cp")
            .arg("-a")
            .arg(first_home.path().join(name))
            .arg(second_home.path().join(name))
            .status()
            .unwrap();
        assert!(copied.success());
    }
    let second = Server::start_with(second_home.path(), &store);
    let (mut a, mut b) = (first.client().await, second.client().await);

    assert_passed(&step(&mut a, &first, "r1", ALICE, Open).await);
    assert_passed(&step(&mut b, &second, "r1", ALICE, Use).await);
    assert_refused(
        &step(&mut b, &second, "r1", MALLORY, Use).await,
        "other_identity",
    );
    assert_passed(&step(&mut b, &second, "r1", ALICE, End).await);
    assert_refused(&step(&mut a, &first, "r1", ALICE, Use).await, "unknown");
}
