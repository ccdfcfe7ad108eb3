//! The control plane's port as an attacker in the mesh meets it: a real `tollgate serve` over
//! mutual TLS, called without a client certificate, with a certificate from another CA, with a
//! certificate from the right CA that names no gateway, in plaintext, and with the gateway's own
//! certificate against operator methods. Every attempt is refused before a service sees it, and
//! recorded in the chain.

mod common;

use std::time::Duration;

use common::{json_of, list, Server};
use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::Value;
use tollgate_proto::pb;
use tollgate_proto::pb::approvals_client::ApprovalsClient;
use tollgate_proto::pb::audit_client::AuditClient;
use tonic::transport::{Channel, Endpoint, Identity};
use tonic::Code;

/// A record an attacker would like in the chain.
fn forged() -> pb::AppendRequest {
    pb::AppendRequest {
        record_json: serde_json::json!({
            "event": "approval.decided",
            "approvalId": "forged",
            "approver": "cfo@example.com",
            "approve": true,
        })
        .to_string()
        .into_bytes(),
        session: None,
    }
}

/// A client certificate naming `uri`, signed by `issuer` (or self-signed when `None`).
fn certificate(uri: &str, issuer: Option<(&str, &str)>) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    let cert = match issuer {
        Some((ca_pem, ca_key_pem)) => {
            let ca_key = KeyPair::from_pem(ca_key_pem).unwrap();
            let ca = CertificateParams::from_ca_cert_pem(ca_pem)
                .unwrap()
                .self_signed(&ca_key)
                .unwrap();
            params.signed_by(&key, &ca, &ca_key).unwrap()
        }
        None => params.self_signed(&key).unwrap(),
    };
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

async fn channel(server: &Server, identity: Option<Identity>) -> Result<Channel, String> {
    server
        .try_channel(identity)
        .await
        .map_err(|e| format!("{e:?}"))
}

fn refusals(server_records: &[Value]) -> Vec<&Value> {
    server_records
        .iter()
        .filter(|r| r["event"] == "controlPlane.refused")
        .collect()
}

/// Polls the chain until `wanted` refusals are in it (they are appended off the refused call).
async fn await_refusals(server: &Server, wanted: usize) -> Vec<Value> {
    for _ in 0..100 {
        let records = json_of(&list(server).await);
        if refusals(&records).len() >= wanted {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = json_of(&list(server).await);
    panic!(
        "expected {wanted} refusals in the chain: {:?}",
        refusals(&records)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_certificate_appends_and_it_reads_nothing() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let start = &json_of(&list(&server).await)[0];
    assert_eq!(start["event"], "controlPlane.start");
    assert_eq!(start["transport"]["tls"]["devPki"], true, "{start}");
    // The state directory (chain, keys, PKI) is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");

    // No client certificate: TLS works, the gateway's methods do not.
    let anonymous = channel(&server, None).await.unwrap();
    let status = AuditClient::new(anonymous.clone())
        .append(forged())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = ApprovalsClient::new(anonymous)
        .r#await(pb::AwaitRequest {
            approval_id: "someone-else's".into(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A certificate from the right CA that names another workload.
    let tls = home.path().join("tls");
    let ca = std::fs::read_to_string(tls.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(tls.join("ca-key.pem")).unwrap();
    let agent = certificate("spiffe://tollgate.local/agent", Some((&ca, &ca_key)));
    let status = AuditClient::new(channel(&server, Some(agent)).await.unwrap())
        .append(forged())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The gateway's own certificate cannot read, export, rotate keys or decide.
    let gateway = server.gateway_channel().await;
    let mut audit = AuditClient::new(gateway.clone());
    let status = audit
        .list_records(pb::ListRecordsRequest {
            from_seq: 0,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = audit
        .rotate_key(pb::RotateKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = ApprovalsClient::new(gateway)
        .decide(pb::DecideRequest {
            approval_id: "any".into(),
            approve: true,
            reason: "a gateway taken over".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // ...and it does append its own records, but not the control plane's: even the gateway
    // cannot put an approval decision into the chain.
    let status = audit.append(forged()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("control plane only"),
        "{status:?}"
    );
    audit
        .append(pb::AppendRequest {
            record_json: br#"{"event":"mcp.request","marker":"from-the-gateway"}"#.to_vec(),
            session: None,
        })
        .await
        .unwrap();

    let records = await_refusals(&server, 6).await;
    let refused = refusals(&records);
    // Each refusal is recorded by a task of its own: calls close together may be recorded in
    // either order.
    let mut methods: Vec<&str> = refused
        .iter()
        .map(|r| r["method"].as_str().unwrap_or_default())
        .collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        [
            "/tollgate.v1.Approvals/Await",
            "/tollgate.v1.Approvals/Decide",
            "/tollgate.v1.Audit/Append",
            "/tollgate.v1.Audit/Append",
            "/tollgate.v1.Audit/ListRecords",
            "/tollgate.v1.Audit/RotateKey",
        ]
    );
    let refusal = |method: &str, check: &dyn Fn(&Value) -> bool| {
        refused
            .iter()
            .any(|r| r["method"] == format!("/tollgate.v1.{method}") && check(r))
    };
    assert!(refusal("Audit/Append", &|r| r["code"] == "Unauthenticated"));
    assert!(refusal("Audit/Append", &|r| r["identities"][0]
        == "spiffe://tollgate.local/agent"));
    assert!(refusal("Audit/ListRecords", &|r| r["identities"][0]
        == "spiffe://tollgate.local/gateway"));
    assert!(refused.iter().all(|r| r["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:"))));
    // No forged approval made it, not even the gateway's; its own record did.
    assert!(!records.iter().any(|r| r["approvalId"] == "forged"));
    assert!(records.iter().any(|r| r["marker"] == "from-the-gateway"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_the_ca_or_without_tls_fail_and_are_recorded() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());

    // A certificate that names the gateway but comes from another CA.
    let impostor = certificate("spiffe://tollgate.local/gateway", None);
    let refused = match channel(&server, Some(impostor)).await {
        // TLS 1.3 clients learn of the rejection on their first read.
        Ok(channel) => AuditClient::new(channel)
            .append(forged())
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}")),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "an impostor certificate was accepted");

    // Plaintext HTTP/2 to the TLS port.
    let plaintext = Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let status = AuditClient::new(channel)
            .append(forged())
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }

    let records = await_refusals(&server, 2).await;
    let reasons: Vec<&str> = refusals(&records)
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("TLS handshake failed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("certificate")),
        "the impostor's refusal names its certificate: {reasons:?}"
    );
    assert!(!records.iter().any(|r| r["approvalId"] == "forged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_asked_for_warned_about_and_recorded() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_plaintext(home.path());
    let channel = Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Anyone reaching the port is the gateway (and still cannot write an approval)...
    let status = AuditClient::new(channel.clone())
        .append(forged())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    AuditClient::new(channel.clone())
        .append(pb::AppendRequest {
            record_json: br#"{"event":"mcp.request"}"#.to_vec(),
            session: None,
        })
        .await
        .unwrap();
    // ...but nobody reads without a verified operator token.
    let ask = || pb::ListRecordsRequest {
        from_seq: 0,
        limit: 1,
    };
    let status = AuditClient::new(channel.clone())
        .list_records(ask())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let token = common::operator_token(home.path(), "auditor@example.com", "auditors");
    let bearer = common::Bearer(format!("Bearer {token}").parse().unwrap());
    let start = json_of(
        &AuditClient::with_interceptor(channel, bearer)
            .list_records(ask())
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
    )[0]
    .clone();
    assert_eq!(start["event"], "controlPlane.start");
    assert_eq!(start["transport"]["plaintext"], true, "{start}");
    assert!(!home.path().join("tls").exists(), "no PKI in plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_requests_are_shown_to_approvers_and_auditors_only() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let list = |token: String| {
        let server = &server;
        async move {
            let mut request = tonic::Request::new(pb::ListApprovalsRequest {
                pending_only: false,
                limit: 0,
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            ApprovalsClient::new(server.anonymous_channel().await)
                .list(request)
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    let token = |sub: &str, groups: &str| common::operator_token(home.path(), sub, groups);
    // The test policy's approver group, and the auditors.
    assert_eq!(
        list(token("olga@example.com", "payments-approvers")).await,
        Ok(())
    );
    assert_eq!(list(token("ann@example.com", "auditors")).await, Ok(()));
    // A signed-in operator of another team sees nothing and decides nothing.
    assert_eq!(
        list(token("eve@example.com", "marketing")).await,
        Err(Code::PermissionDenied)
    );
    let records = await_refusals(&server, 1).await;
    let refused = refusals(&records);
    assert_eq!(refused[0]["method"], "/tollgate.v1.Approvals/List");
    assert_eq!(refused[0]["claimedSub"], "eve@example.com");
}
