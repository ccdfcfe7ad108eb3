//! Identity against a real OpenID Connect provider (`oidc-provider`, tests/node): Envoy's
//! jwt_authn fetches its JWKS (`remote_jwks`), the control plane verifies operators against it,
//! tokens come from its token endpoint. The CI job of a shared service account is attributed
//! to the person behind it; key rotation at the provider does not break the gateway; bad tokens
//! are refused and audited.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::oidc::{self, claims_of, kid_of, unsigned_token};
use tollgate_e2e::{
    admin_get, initialize_body, post_mcp, post_mcp_with, Directory, OidcProvider, Stack,
    StackOptions,
};

const CONTRACTOR: &str = "carol@contractor.example";
const CI_JOB: &str = "svc-payments-deploy";
const REPORTS_JOB: &str = "svc-reports";
const REPORTS_OWNER: &str = "dana@example.com";
const SECURITY: &str = "sam@example.com";
const LEDGER_JOB: &str = "svc-ledger-sync";
const LEDGER_OPERATOR: &str = "erin@example.com";

fn directory() -> Directory {
    Directory::default()
        .person(
            CONTRACTOR,
            json!({"email": CONTRACTOR, "groups": ["contractors"]}),
        )
        .person(
            "alice@example.com",
            json!({"email": "alice@example.com", "groups": ["payments"]}),
        )
        .person(
            SECURITY,
            json!({"email": SECURITY, "groups": ["security-admins"]}),
        )
        .person(
            LEDGER_OPERATOR,
            json!({"email": LEDGER_OPERATOR, "groups": ["finance-ops"]}),
        )
        // GitHub-Actions-like workload claims; `actor` is who started the run.
        .workload(
            CI_JOB,
            json!({"repository": "acme/payments", "workflow": "nightly-reconcile",
                   "ref": "refs/heads/main", "actor": CONTRACTOR, "run_id": "9142"}),
        )
        // Acts for a person by token exchange (`act`), not by a claim of its own.
        .workload(LEDGER_JOB, json!({"repository": "acme/ledger"}))
        // A scheduled job: no person in its token.
        .workload(
            REPORTS_JOB,
            json!({"repository": "acme/reports", "workflow": "weekly", "ref": "refs/heads/main",
                   "run_id": "77"}),
        )
}

fn options() -> StackOptions {
    StackOptions {
        config: json!({
            "extraClaims": ["actor", "repository", "workflow", "ref", "run_id"],
            "serviceAccounts": {"subs": ["svc-*"], "requireAccountable": true},
        }),
        envoy_workers: 2,
        idp: Some(directory()),
        ..StackOptions::default()
    }
}

fn idp(stack: &Stack) -> &OidcProvider {
    stack.idp.as_ref().expect("the stack runs a provider")
}

fn get_customer(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":"get_customer","arguments":{"customer_id":"cus_3"}}})
    .to_string()
}

/// Initializes a session and calls get_customer: (status of the call, or of the initialize
/// when that was refused; the session id; the last answer's JSON).
async fn call(stack: &Stack, token: &str) -> (u16, Option<String>, Value) {
    let init = post_mcp(&stack.gateway_url, Some(token), None, initialize_body(1))
        .await
        .unwrap();
    let Some(session) = init.header("mcp-session-id").map(str::to_owned) else {
        return (init.status, None, init.json());
    };
    let answer = post_mcp(
        &stack.gateway_url,
        Some(token),
        Some(&session),
        get_customer(2),
    )
    .await
    .unwrap();
    (answer.status, Some(session), answer.json())
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The gateway's record of the get_customer call made by `sub`.
fn call_record<'a>(records: &'a [Value], sub: &str) -> Option<&'a Value> {
    records.iter().rev().find(|r| {
        r["event"] == "mcp.request"
            && r["sub"] == sub
            && r["messages"][0]["target"] == "get_customer"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_job_tokens_from_a_real_provider_are_attributed_to_the_person_behind_them() {
    let stack = Stack::start_with(options()).unwrap();
    let idp = idp(&stack);
    let discovery = idp.discovery().await.unwrap();
    assert_eq!(discovery["issuer"], idp.issuer.as_str());
    assert_eq!(discovery["jwks_uri"], idp.jwks_uri().as_str());

    let resource = stack.gateway_url.as_str();
    let contractor = idp.person_token(CONTRACTOR, resource).await.unwrap();
    let ci_job = idp.workload_token(CI_JOB, resource).await.unwrap();
    let reports = idp.workload_token(REPORTS_JOB, resource).await.unwrap();
    assert_eq!(claims_of(&ci_job).unwrap()["aud"], oidc::GATEWAY_AUDIENCE);

    let (status, _, _) = call(&stack, &contractor).await;
    assert_eq!(status, 200);
    let (status, ci_session, _) = call(&stack, &ci_job).await;
    assert_eq!(status, 200);

    let records = stack.audit_records().unwrap();
    let person = call_record(&records, CONTRACTOR).expect("the contractor's call");
    assert_eq!(person["identity"]["email"], CONTRACTOR);
    assert_eq!(person["identity"]["groups"], json!(["contractors"]));
    assert_eq!(person["identity"]["iss"], idp.issuer.as_str());
    assert!(person["identity"].get("accountable").is_none(), "{person}");
    let ci = call_record(&records, CI_JOB).expect("the CI job's call");
    assert_eq!(
        ci["identity"]["accountable"],
        json!({"sub": CONTRACTOR, "via": "actor"}),
        "{ci}"
    );
    for (claim, value) in [
        ("repository", "acme/payments"),
        ("workflow", "nightly-reconcile"),
        ("ref", "refs/heads/main"),
        ("run_id", "9142"),
        ("client_id", CI_JOB),
    ] {
        assert_eq!(ci["identity"][claim], value, "{claim} in {ci}");
    }

    // A workload that exchanged its token with a person's names them in `act`.
    let ledger_own = idp.workload_token(LEDGER_JOB, resource).await.unwrap();
    let erin = idp.person_token(LEDGER_OPERATOR, resource).await.unwrap();
    let ledger = idp
        .exchanged_token(LEDGER_JOB, &ledger_own, &erin, resource)
        .await
        .unwrap();
    assert_eq!(
        claims_of(&ledger).unwrap()["act"],
        json!({"sub": LEDGER_OPERATOR})
    );
    let (status, _, answer) = call(&stack, &ledger).await;
    assert_eq!(status, 200, "{answer}");
    // Its own token names nobody.
    assert_eq!(call(&stack, &ledger_own).await.0, 403);
    let records = stack.audit_records().unwrap();
    let exchanged = records
        .iter()
        .find(|r| {
            r["event"] == "mcp.request"
                && r["sub"] == LEDGER_JOB
                && r["messages"][0]["target"] == "get_customer"
        })
        .expect("the exchanged token's call");
    assert_eq!(
        exchanged["identity"]["accountable"],
        json!({"sub": LEDGER_OPERATOR, "via": "act.sub"}),
        "{exchanged}"
    );
    assert_eq!(
        exchanged["identity"]["act"],
        json!({"sub": LEDGER_OPERATOR})
    );

    // The scheduled job names nobody: refused, audited, never reaches the server.
    let (status, _, answer) = call(&stack, &reports).await;
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("names no accountable person"), "{answer}");
    let records = stack.audit_records().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "identity.unaccountable" && r["sub"] == REPORTS_JOB),
        "{records:#?}"
    );
    assert!(!stack
        .server_requests()
        .iter()
        .any(|m| m.to_string().contains("svc-reports")));

    // A security admin signed in at the same provider names its owner; every worker picks the
    // mapping up with the revocation list.
    let security = idp
        .person_token(SECURITY, oidc::OPERATOR_RESOURCE)
        .await
        .unwrap();
    // A gateway token is not an operator token (no token passthrough either way).
    let wrong = stack
        .tollgate_as(
            Some(&contractor),
            &[
                "service-accounts",
                "set",
                REPORTS_JOB,
                "--owner",
                CONTRACTOR,
                "--reason",
                "x",
            ],
        )
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1), "{}", output_text(&wrong));
    let set = stack
        .tollgate_as(
            Some(&security),
            &[
                "service-accounts",
                "set",
                REPORTS_JOB,
                "--owner",
                REPORTS_OWNER,
                "--reason",
                "dana maintains the reports workflow",
            ],
        )
        .unwrap();
    assert!(set.status.success(), "{}", output_text(&set));
    let mapped_at = Instant::now();
    let deadline = mapped_at + Duration::from_secs(5);
    let mut reports_session = None;
    while Instant::now() < deadline && reports_session.is_none() {
        let (status, session, _) = call(&stack, &reports).await;
        if status == 200 {
            reports_session = session;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let reports_session = reports_session.expect("the mapped service account was served");
    println!("owner mapping effective after {:?}", mapped_at.elapsed());
    let records = stack.audit_records().unwrap();
    let mapped = call_record(&records, REPORTS_JOB).expect("the reports job's call");
    assert_eq!(
        mapped["identity"]["accountable"],
        json!({"sub": REPORTS_OWNER, "via": "owner"})
    );

    // The auditor's replay says whose calls these were.
    let replay = stack
        .tollgate(&["sessions", "replay", ci_session.as_deref().unwrap()])
        .unwrap();
    let replay = output_text(&replay);
    assert!(
        replay.contains(&format!("on behalf of {CONTRACTOR} (actor")),
        "{replay}"
    );
    assert!(replay.contains("get_customer"), "{replay}");
    let replay = stack
        .tollgate(&["sessions", "replay", &reports_session])
        .unwrap();
    let replay = output_text(&replay);
    assert!(
        replay.contains(&format!("{REPORTS_OWNER} (owner of the service account)")),
        "{replay}"
    );

    // Offboarding the contractor stops their CI job too; the mapped job's owner is untouched.
    let revoke = stack
        .tollgate_as(
            Some(&security),
            &["revoke", "--sub", CONTRACTOR, "--reason", "contract ended"],
        )
        .unwrap();
    assert!(revoke.status.success(), "{}", output_text(&revoke));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if call(&stack, &contractor).await.0 == 403 && call(&stack, &ci_job).await.0 == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still served 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(&stack, &reports).await.0, 200);
    assert!(stack
        .tollgate(&["audit", "verify"])
        .unwrap()
        .status
        .success());
}

/// Each answer to a bad token: 401 with `invalid_token`, and nothing reaches the server.
async fn assert_refused(stack: &Stack, what: &str, headers: &[(&str, &str)]) {
    let answer = post_mcp_with(&stack.gateway_url, headers, initialize_body(1))
        .await
        .unwrap();
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{what}: {challenge}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_from_the_real_provider_are_refused_and_audited() {
    let stack = Stack::start_with(options()).unwrap();
    let idp = idp(&stack);
    let resource = stack.gateway_url.as_str();
    let alice = idp
        .person_token("alice@example.com", resource)
        .await
        .unwrap();

    // Same keys, another issuer: only `iss` is wrong.
    let other = OidcProvider::start(
        stack.dir.path(),
        "other-provider",
        &stack.dir.path().join("idp-keys"),
        resource,
        &directory(),
    )
    .unwrap();
    let wrong_issuer = other
        .person_token("alice@example.com", resource)
        .await
        .unwrap();
    assert_eq!(kid_of(&wrong_issuer), kid_of(&alice));
    // The right provider, for another resource: `aud` is not the gateway's.
    let wrong_audience = idp
        .person_token("alice@example.com", oidc::OTHER_RESOURCE)
        .await
        .unwrap();
    assert_eq!(
        claims_of(&wrong_audience).unwrap()["aud"],
        oidc::OTHER_AUDIENCE
    );
    // A real token's claims, unsigned.
    let alg_none = unsigned_token(&claims_of(&alice).unwrap());

    let refused = [
        ("wrong issuer", format!("Bearer {wrong_issuer}")),
        ("wrong audience", format!("Bearer {wrong_audience}")),
        ("alg none", format!("Bearer {alg_none}")),
    ];
    for (what, authorization) in &refused {
        assert_refused(&stack, what, &[("authorization", authorization)]).await;
    }
    // A client's own claims header, without a token, names nobody.
    let forged = oidc::base64url_encode(br#"{"sub":"mallory@example.com"}"#);
    assert_refused(
        &stack,
        "forged claims header",
        &[("x-tollgate-jwt-payload", &forged)],
    )
    .await;

    // With a valid token, a forged claims header is ignored: the call is alice's.
    let bearer = format!("Bearer {alice}");
    let answer = post_mcp_with(
        &stack.gateway_url,
        &[
            ("authorization", &bearer),
            ("x-tollgate-jwt-payload", &forged),
        ],
        initialize_body(1),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    let records = stack.audit_records().unwrap();
    let failures = records
        .iter()
        .filter(|r| r["event"] == "auth.failed")
        .count();
    assert_eq!(failures, 4, "{records:#?}");
    assert!(
        !records
            .iter()
            .any(|r| r.to_string().contains("mallory@example.com")),
        "a forged claim reached the log"
    );
    let served = records
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .collect::<Vec<_>>();
    assert_eq!(served.len(), 1, "{served:#?}");
    assert_eq!(served[0]["sub"], "alice@example.com");
    assert_eq!(stack.server_requests().len(), 1);
}

/// Envoy's count of successful JWKS fetches.
fn jwks_fetches(stack: &Stack) -> u64 {
    let stats = admin_get(stack.admin_port, "/stats?filter=jwks_fetch_success").unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotation_keeps_the_gateway_serving_and_retires_the_old_key() {
    let mut stack = Stack::start_with(options()).unwrap();
    let resource = stack.gateway_url.clone();
    let old = idp(&stack)
        .person_token("alice@example.com", &resource)
        .await
        .unwrap();
    assert_eq!(kid_of(&old).as_deref(), Some("k1"));
    assert_eq!(call(&stack, &old).await.0, 200);
    let envoy_pid = stack.envoy.pid();

    // 1. Publish the next key, still signing with the old one; wait until Envoy fetched the
    //    set since (two fetches: one may have started before the change). With async_fetch
    //    Envoy counts one fetch per cache period for all its workers.
    let fetched = jwks_fetches(&stack);
    stack
        .idp
        .as_mut()
        .unwrap()
        .set_signing_keys(&["k1", "k2"])
        .unwrap();
    assert_eq!(idp(&stack).published_kids().await.unwrap(), ["k1", "k2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while jwks_fetches(&stack) < fetched + 2 {
        assert!(
            Instant::now() < deadline,
            "Envoy never fetched the JWKS again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. Sign with the new key: its tokens pass at once, the old ones still do.
    stack
        .idp
        .as_mut()
        .unwrap()
        .set_signing_keys(&["k2", "k1"])
        .unwrap();
    let new = idp(&stack)
        .person_token("alice@example.com", &resource)
        .await
        .unwrap();
    assert_eq!(kid_of(&new).as_deref(), Some("k2"));
    assert_eq!(call(&stack, &new).await.0, 200);
    assert_eq!(call(&stack, &old).await.0, 200);

    // 3. Retire the old key: once Envoy fetched the set again, its tokens are refused, still
    //    within their lifetime; the new key's tokens keep passing throughout.
    stack
        .idp
        .as_mut()
        .unwrap()
        .set_signing_keys(&["k2"])
        .unwrap();
    let retired_at = Instant::now();
    let deadline = retired_at + Duration::from_secs(30);
    loop {
        assert_eq!(
            call(&stack, &new).await.0,
            200,
            "the new key stopped working"
        );
        if call(&stack, &old).await.0 == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a token signed by the retired key still passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "retired key refused after {:?} (JWKS cache 2 s)",
        retired_at.elapsed()
    );
    // Both workers refuse it (each call is a new connection).
    for _ in 0..6 {
        assert_eq!(call(&stack, &old).await.0, 401);
    }
    assert!(!stack.envoy.exited());
    assert_eq!(stack.envoy.pid(), envoy_pid, "Envoy was restarted");
    let records = stack.audit_records().unwrap();
    assert!(records.iter().any(|r| r["event"] == "auth.failed"
        && r["reason"] == "token not verified: signature does not verify with the issuer's keys"));
}
