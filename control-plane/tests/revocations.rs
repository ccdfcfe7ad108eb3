//! Revocations against a real `tollgate serve`: operators revoke and lift with the `tollgate`
//! command line and dev issuer tokens; the filter's side lists over gRPC without a token.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, BIN};
use serde_json::{json, Value};
use tollgate_proto::pb;
use tollgate_proto::pb::revocations_client::RevocationsClient;

const GROUP: &str = "security-admins";

/// `tollgate ARGS...` as an operator with `token` runs it against `server`.
fn operator(server: &Server, home: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("TOLLGATE_HOME", home)
        .env("TOLLGATE_CONTROL_PLANE", server.url())
        .env_remove("TOLLGATE_TOKEN");
    if let Some(token) = token {
        command.env("TOLLGATE_TOKEN", token);
    }
    command.output().expect("run tollgate")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The id `tollgate revoke` printed.
fn revoke(server: &Server, home: &Path, token: &str, args: &[&str]) -> String {
    let output = operator(
        server,
        home,
        Some(token),
        &[&["revoke"], args, &["--reason", "contractor offboarded"]].concat(),
    );
    assert!(output.status.success(), "{output:?}");
    let id = common::stdout(&output).trim().to_string();
    assert!(id.starts_with("rev_"), "{output:?}");
    id
}

/// What the filter sees: the list, without a token.
async fn filter_list(server: &Server) -> pb::RevocationList {
    RevocationsClient::new(server.gateway_channel().await)
        .list(pb::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn pairs(list: &pb::RevocationList) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = list
        .revocations
        .iter()
        .map(|r| (r.claim.clone(), r.value.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// The revocation records of the chain, in order.
async fn revocation_records(server: &Server) -> Vec<Value> {
    common::json_of(&common::list(server).await)
        .into_iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("revocation."))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_list_and_lift_are_versioned_and_recorded() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start(home);
    let sam = common::dev_token(home, "sam@example.com", GROUP, &[]);

    let empty = filter_list(&server).await;
    assert!(empty.revocations.is_empty());

    let by_sub = revoke(&server, home, &sam, &["--sub", "carol@contractor.example"]);
    let after_one = filter_list(&server).await;
    assert!(after_one.version > empty.version, "{after_one:?}");
    let by_jti = revoke(&server, home, &sam, &["--jti", "tok-123"]);
    let by_client = revoke(&server, home, &sam, &["--client-id", "cursor-ide"]);
    let json_out = operator(
        &server,
        home,
        Some(&sam),
        &[
            "revoke",
            "--claim",
            "repository=acme/payments-ci",
            "--reason",
            "shared CI account",
            "--json",
        ],
    );
    assert!(json_out.status.success(), "{json_out:?}");
    let by_claim: Value = serde_json::from_str(common::stdout(&json_out).trim()).unwrap();
    assert_eq!(by_claim["claim"], "repository");
    assert_eq!(by_claim["value"], "acme/payments-ci");
    assert_eq!(by_claim["revokedBy"], "sam@example.com");
    let by_claim = by_claim["revocationId"].as_str().unwrap().to_string();

    let four = filter_list(&server).await;
    assert!(four.version > after_one.version);
    assert_eq!(
        pairs(&four),
        [
            ("client_id".into(), "cursor-ide".into()),
            ("jti".into(), "tok-123".into()),
            ("repository".into(), "acme/payments-ci".into()),
            ("sub".into(), "carol@contractor.example".into()),
        ]
    );
    let ids: Vec<&str> = four
        .revocations
        .iter()
        .map(|r| r.revocation_id.as_str())
        .collect();
    for id in [&by_sub, &by_jti, &by_client, &by_claim] {
        assert!(ids.contains(&id.as_str()), "{id} not in {ids:?}");
    }
    assert!(four
        .revocations
        .iter()
        .all(|r| r.revoked_by == "sam@example.com" && !r.revoked_at.is_empty()));

    // Revoking the same identity again answers the active revocation; the list is unchanged.
    assert_eq!(
        revoke(&server, home, &sam, &["--sub", "carol@contractor.example"]),
        by_sub
    );
    assert_eq!(filter_list(&server).await.version, four.version);

    // The operator's list (recorded as a read).
    let listed = operator(
        &server,
        home,
        Some(&sam),
        &["revocations", "list", "--json"],
    );
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_str(common::stdout(&listed).trim()).unwrap();
    assert_eq!(listed["version"], four.version);
    assert_eq!(listed["revocations"].as_array().unwrap().len(), 4);
    let table = operator(&server, home, Some(&sam), &["revocations", "list"]);
    assert!(common::stdout(&table).contains("carol@contractor.example"));

    // Lifting removes it from the list and changes the version.
    let lifted = operator(
        &server,
        home,
        Some(&sam),
        &[
            "revocations",
            "lift",
            &by_jti,
            "--reason",
            "token expired anyway",
        ],
    );
    assert!(lifted.status.success(), "{lifted:?}");
    let three = filter_list(&server).await;
    assert!(three.version > four.version);
    assert_eq!(three.revocations.len(), 3);
    assert!(!pairs(&three).contains(&("jti".into(), "tok-123".into())));
    // Lifting twice, or an unknown id: refused, exit 1.
    let again = operator(
        &server,
        home,
        Some(&sam),
        &["revocations", "lift", &by_jti, "--reason", "again"],
    );
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        stderr(&again).contains("already lifted by sam@example.com"),
        "{again:?}"
    );
    let unknown = operator(
        &server,
        home,
        Some(&sam),
        &["revocations", "lift", "rev_nope", "--reason", "x"],
    );
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(stderr(&unknown).contains("not found: no revocation rev_nope"));

    // The version survives a restart.
    assert!(server.terminate().success());
    let server = Server::start(home);
    let restarted = filter_list(&server).await;
    assert_eq!(restarted.version, three.version);
    assert_eq!(pairs(&restarted), pairs(&three));

    let records = revocation_records(&server).await;
    let events: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["sub"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("revocation.added", "sam@example.com"),
            ("revocation.added", "sam@example.com"),
            ("revocation.added", "sam@example.com"),
            ("revocation.added", "sam@example.com"),
            ("revocation.added", "sam@example.com"),
            ("revocation.listed", "sam@example.com"),
            ("revocation.listed", "sam@example.com"),
            ("revocation.lifted", "sam@example.com"),
            ("revocation.refused", "sam@example.com"),
            ("revocation.refused", "sam@example.com"),
        ]
    );
    assert_eq!(records[0]["claim"], "sub");
    assert_eq!(records[0]["value"], "carol@contractor.example");
    assert_eq!(records[0]["reason"], "contractor offboarded");
    assert_eq!(records[0]["revocationId"], by_sub.as_str());
    assert_eq!(records[0]["operator"]["verified"], true);
    assert_eq!(records[4]["alreadyRevoked"], true);
    assert_eq!(records[7]["revocationId"], by_jti.as_str());
    assert_eq!(records[7]["reason"], "token expired anyway");
    assert_eq!(records[7]["claim"], "jti");
    assert_eq!(records[8]["refusal"], "already_lifted");
    assert_eq!(records[9]["refusal"], "not_found");

    let verify = common::tollgate(home, &["audit", "verify", "--server", &server.url()]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_expired_and_missing_tokens_are_refused_and_recorded() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start_with(home, &["--revocation-group", "incident-response"]);
    let member = common::dev_token(home, "ida@example.com", "incident-response", &[]);
    let outsider = common::dev_token(home, "bob@example.com", GROUP, &[]);
    let expired = common::dev_token(home, "ida@example.com", "incident-response", &["--expired"]);

    let denied = operator(
        &server,
        home,
        Some(&outsider),
        &["revoke", "--sub", "carol@x", "--reason", "r"],
    );
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert!(
        stderr(&denied).contains(
            "not allowed: you (bob@example.com) are not in the revocation group \"incident-response\""
        ),
        "{denied:?}"
    );
    let late = operator(
        &server,
        home,
        Some(&expired),
        &["revoke", "--sub", "carol@x", "--reason", "r"],
    );
    assert_eq!(late.status.code(), Some(1), "{late:?}");
    assert!(
        stderr(&late).contains("not signed in: operator token expired"),
        "{late:?}"
    );
    let none = operator(
        &server,
        home,
        None,
        &["revoke", "--sub", "carol@x", "--reason", "r"],
    );
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(stderr(&none).contains("set TOLLGATE_TOKEN"), "{none:?}");
    let bad_claim = operator(
        &server,
        home,
        Some(&member),
        &["revoke", "--claim", "novalue", "--reason", "r"],
    );
    assert_eq!(bad_claim.status.code(), Some(2), "{bad_claim:?}");
    let two = operator(
        &server,
        home,
        Some(&member),
        &["revoke", "--sub", "a", "--jti", "b", "--reason", "r"],
    );
    assert_eq!(two.status.code(), Some(2), "{two:?}");

    // Nothing was revoked; the list is unchanged.
    let list = filter_list(&server).await;
    assert!(list.revocations.is_empty(), "{list:?}");

    // A member revokes; an outsider cannot lift it, nor can a call without a token.
    let id = revoke(&server, home, &member, &["--sub", "carol@x"]);
    let lift = operator(
        &server,
        home,
        Some(&outsider),
        &["revocations", "lift", &id, "--reason", "mine now"],
    );
    assert_eq!(lift.status.code(), Some(1), "{lift:?}");
    // The gateway's certificate is no operator: refused before any service sees the call.
    let as_gateway = RevocationsClient::new(server.gateway_channel().await)
        .lift(pb::LiftRequest {
            revocation_id: id.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(as_gateway.code(), tonic::Code::PermissionDenied);
    let mut client = RevocationsClient::new(server.anonymous_channel().await);
    let anonymous = client
        .lift(pb::LiftRequest {
            revocation_id: id.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let anonymous = client
        .revoke(pb::RevokeRequest {
            claim: "sub".into(),
            value: "x".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    // Listing with an expired token is refused (without a token, it is the filter's list).
    let stale = operator(&server, home, Some(&expired), &["revocations", "list"]);
    assert_eq!(stale.status.code(), Some(1), "{stale:?}");
    assert_eq!(filter_list(&server).await.revocations.len(), 1);

    // Refusals the services decide are theirs (`revocation.refused`); a token that does not
    // verify, or none, is refused by the access layer before them (`controlPlane.refused`).
    let records: Vec<Value> = common::json_of(&common::list(&server).await)
        .into_iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("revocation.") || e == "controlPlane.refused")
        })
        .collect();
    let story: Vec<(String, String, String, String)> = records
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            if r["event"] == "controlPlane.refused" {
                let method = text("method");
                let method = method.rsplit('/').next().unwrap_or_default().to_lowercase();
                (text("event"), text("claimedSub"), method, text("code"))
            } else {
                (text("event"), text("sub"), text("action"), text("refusal"))
            }
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    let refused = "controlPlane.refused";
    assert_eq!(
        story,
        [
            s(
                "revocation.refused",
                "bob@example.com",
                "revoke",
                "not_in_revocation_group"
            ),
            s(refused, "ida@example.com", "revoke", "Unauthenticated"),
            s("revocation.added", "ida@example.com", "-", "-"),
            s(
                "revocation.refused",
                "bob@example.com",
                "lift",
                "not_in_revocation_group"
            ),
            // The gateway's certificate, then no token at all.
            s(refused, "-", "lift", "PermissionDenied"),
            s(refused, "-", "lift", "Unauthenticated"),
            s(refused, "-", "revoke", "Unauthenticated"),
            s(refused, "ida@example.com", "list", "Unauthenticated"),
        ]
    );
    assert!(records[1]["reason"]
        .as_str()
        .unwrap()
        .contains("operator token expired"));
    assert_eq!(records[0]["value"], "carol@x");

    let verify = common::tollgate(home, &["audit", "verify", "--server", &server.url()]);
    assert!(verify.status.success(), "{verify:?}");
}

/// A request record as the filter writes one, for `sub` with these claims at `time`.
fn request(sub: &str, identity: Value, time: &str) -> pb::AppendRequest {
    pb::AppendRequest {
        record_json: json!({
            "event": "mcp.request",
            "time": time,
            "sub": sub,
            "identity": identity,
            "route": "/mcp",
            "messages": [{"kind": "request", "id": 1, "method": "tools/call", "target": "get_customer"}],
            "decision": "allow",
        })
        .to_string()
        .into_bytes(),
        session: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_lists_who_called_and_who_went_quiet() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start(home);
    let mut audit = server.client().await;
    let now = std::time::SystemTime::now();
    let ago = |days: u64| {
        humantime::format_rfc3339_micros(now - std::time::Duration::from_secs(days * 86_400))
            .to_string()
    };
    let carol = json!({"sub": "carol@contractor.example", "client_id": "cursor-ide"});
    let ci = json!({
        "sub": "svc-payments-ci", "client_id": "github-actions", "actor": "carol@contractor.example",
        "repository": "acme/payments", "workflow": "deploy",
    });
    let dave = json!({"sub": "dave@example.com", "client_id": "claude-desktop", "iss": "https://idp-a.example"});
    // Another issuer's dave is another person.
    let other_dave = json!({"sub": "dave@example.com", "iss": "https://idp-b.example"});
    for append in [
        request("dave@example.com", other_dave, &ago(1)),
        request("carol@contractor.example", carol.clone(), &ago(200)),
        request("carol@contractor.example", carol, &ago(120)),
        request("svc-payments-ci", ci.clone(), &ago(100)),
        request("svc-payments-ci", ci, &ago(95)),
        request("dave@example.com", dave, &ago(1)),
    ] {
        audit.append(append).await.unwrap();
    }

    let sam = common::dev_token(home, "sam@example.com", GROUP, &[]);
    let carol_revoked = revoke(&server, home, &sam, &["--sub", "carol@contractor.example"]);
    let auditor = common::operator_token(home, "auditor@example.com", "auditors");
    let run = |args: &[&str]| {
        let output = operator(
            &server,
            home,
            Some(&auditor),
            &[&["identities"], args].concat(),
        );
        assert!(output.status.success(), "{output:?}");
        common::stdout(&output)
    };
    let all: Vec<Value> = run(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let subs: Vec<&str> = all.iter().map(|i| i["sub"].as_str().unwrap()).collect();
    // Longest unseen first.
    assert_eq!(
        subs,
        [
            "carol@contractor.example",
            "svc-payments-ci",
            "dave@example.com",
            "dave@example.com"
        ]
    );
    assert_eq!(all[2]["issuer"], "https://idp-a.example");
    assert_eq!(all[3]["issuer"], "https://idp-b.example");
    assert_eq!(all[0]["revoked"], carol_revoked.as_str());
    assert!(all[1..].iter().all(|i| i["revoked"].is_null()), "{all:?}");
    assert_eq!(all[0]["calls"], 2);
    assert_eq!(all[0]["clients"], json!(["cursor-ide"]));
    assert_eq!(all[0]["firstSeen"].as_str().unwrap()[..10], ago(200)[..10]);
    assert_eq!(all[0]["lastSeen"].as_str().unwrap()[..10], ago(120)[..10]);
    assert_eq!(all[1]["workloads"], json!(["acme/payments (deploy)"]));
    assert_eq!(all[1]["actingFor"], json!(["carol@contractor.example"]));
    assert_eq!(all[1]["clients"], json!(["github-actions"]));
    assert_eq!(all[2]["calls"], 1);
    assert_eq!(all[3]["calls"], 1);

    let inactive: Vec<String> = run(&["--inactive", "90d", "--json"])
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sub"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(inactive, ["carol@contractor.example", "svc-payments-ci"]);
    let table = run(&["--inactive", "110d"]);
    assert!(table.contains("carol@contractor.example"), "{table}");
    assert!(
        table.contains(&carol_revoked),
        "the revoked column: {table}"
    );
    assert!(!table.contains("svc-payments-ci"), "{table}");

    // Each run was recorded as a read (of the records, then of the revocation table).
    let reads: Vec<Value> = common::json_of(&common::list(&server).await)
        .into_iter()
        .filter(|r| r["event"] == "controlPlane.auditRead" && r["purpose"] == "identities")
        .filter(|r| r["tables"].is_null())
        .collect();
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert_eq!(reads[1]["filter"]["inactive"], "90d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_owners_are_versioned_listed_to_the_filter_and_recorded() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start(home);
    let sam = common::dev_token(home, "sam@example.com", GROUP, &[]);
    let mallory = common::dev_token(home, "mallory@example.com", "payments", &[]);
    let before = filter_list(&server).await;

    let set = operator(
        &server,
        home,
        Some(&sam),
        &[
            "service-accounts",
            "set",
            "svc-reports",
            "--owner",
            "dana@example.com",
            "--reason",
            "dana runs the reports job",
            "--json",
        ],
    );
    assert!(set.status.success(), "{set:?}");
    let set: Value = serde_json::from_str(common::stdout(&set).trim()).unwrap();
    assert_eq!(set["owner"], "dana@example.com");
    assert_eq!(set["setBy"], "sam@example.com");

    let after = filter_list(&server).await;
    assert!(after.version > before.version);
    let owners: Vec<(String, String)> = after
        .owners
        .iter()
        .map(|o| (o.service_account.clone(), o.owner.clone()))
        .collect();
    assert_eq!(owners, [("svc-reports".into(), "dana@example.com".into())]);

    // Refusals: not in the group, no token, a service account owning itself, no owner to remove.
    for (token, args, code) in [
        (
            Some(mallory.as_str()),
            vec!["set", "svc-reports", "--owner", "mallory@example.com"],
            1,
        ),
        (None, vec!["set", "svc-reports", "--owner", "m"], 2),
        (
            Some(sam.as_str()),
            vec!["set", "svc-reports", "--owner", "svc-reports"],
            1,
        ),
        (Some(sam.as_str()), vec!["remove", "svc-unknown"], 1),
    ] {
        let out = operator(
            &server,
            home,
            token,
            &[&["service-accounts"], args.as_slice(), &["--reason", "r"]].concat(),
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
    assert_eq!(filter_list(&server).await.version, after.version);

    let list = operator(&server, home, Some(&sam), &["service-accounts", "list"]);
    assert!(
        common::stdout(&list).contains("dana@example.com"),
        "{list:?}"
    );
    let removed = operator(
        &server,
        home,
        Some(&sam),
        &[
            "service-accounts",
            "remove",
            "svc-reports",
            "--reason",
            "job retired",
        ],
    );
    assert!(removed.status.success(), "{removed:?}");
    let last = filter_list(&server).await;
    assert!(last.owners.is_empty() && last.version > after.version);

    let records = common::json_of(&common::list(&server).await);
    let events: Vec<(String, String)> = records
        .iter()
        .filter(|r| {
            r["event"].as_str().is_some_and(|e| {
                e.starts_with("serviceAccount.")
                    || (e == "revocation.refused" && r["action"] != "list")
            })
        })
        .map(|r| {
            (
                r["event"].as_str().unwrap_or_default().to_owned(),
                r["refusal"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        events,
        [
            s("serviceAccount.ownerSet", "-"),
            s("revocation.refused", "not_in_revocation_group"),
            s("revocation.refused", "invalid"),
            s("revocation.refused", "not_found"),
            s("serviceAccount.ownerRemoved", "-"),
        ],
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_on_every_call_and_cannot_lift_their_own_revocation() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start(home);
    let sam = common::dev_token(home, "sam@example.com", GROUP, &[]);
    // Tess is a security admin and an approver; her token is still valid after the revocation.
    let tess = common::dev_token(
        home,
        "tess@example.com",
        &format!("{GROUP},payments-approvers,auditors"),
        &[],
    );
    let id = revoke(&server, home, &sam, &["--sub", "tess@example.com"]);

    for args in [
        vec![
            "revocations",
            "lift",
            id.as_str(),
            "--reason",
            "it was a mistake",
        ],
        vec![
            "revoke",
            "--sub",
            "sam@example.com",
            "--reason",
            "retaliation",
        ],
        vec!["approvals", "list"],
        vec!["audit", "query"],
    ] {
        let out = operator(&server, home, Some(&tess), &args);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(
            stderr(&out).contains("is revoked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Still revoked; sam may lift it.
    let active = filter_list(&server).await;
    assert_eq!(pairs(&active), [("sub".into(), "tess@example.com".into())]);
    let lifted = operator(
        &server,
        home,
        Some(&sam),
        &["revocations", "lift", &id, "--reason", "reinstated"],
    );
    assert!(lifted.status.success(), "{lifted:?}");
    let list = operator(&server, home, Some(&tess), &["approvals", "list"]);
    assert!(list.status.success(), "{list:?}");

    let refused: Vec<Value> = common::json_of(&common::list(&server).await)
        .into_iter()
        .filter(|r| r["event"] == "controlPlane.refused" && r["sub"] == "tess@example.com")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused
        .iter()
        .all(|r| r["code"] == "PermissionDenied" && r["verified"] == true));
    assert_eq!(refused[0]["method"], "/tollgate.v1.Revocations/Lift");
}
