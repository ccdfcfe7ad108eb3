//! The operator console in a real browser: Debian's Chromium driven by Playwright
//! (tests/browser/console_test.py) against the whole stack with a real OpenID provider. The
//! approver signs in with authorization code + PKCE, sees a held payout change appear, approves
//! it and the call completes; a self-approval is refused; the session is replayed; the log is
//! verified and an export bundle downloaded and verified offline; an identity is revoked. The
//! chain must then say who did each of these, as the verified operator.

use serde_json::{json, Value};
use tollgate_e2e::{bin_dir, free_port, workspace, Directory, Stack, StackOptions};

#[test]
fn an_approver_handles_a_held_payout_change_in_the_browser() {
    let console_port = free_port();
    let console = format!("http://127.0.0.1:{console_port}");
    let directory = Directory::default()
        .person(
            "alice@example.com",
            json!({"email": "alice@example.com", "groups": ["payments-ops"]}),
        )
        .person(
            "carol@example.com",
            json!({"email": "carol@example.com", "groups": ["payments-ops", "payments-approvers"]}),
        )
        .person(
            "bob@example.com",
            json!({"email": "bob@example.com",
                   "groups": ["payments-approvers", "auditors", "security-admins"]}),
        )
        .browser_client("tollgate-console", &format!("{console}/auth/callback"));
    let stack = Stack::start_with(StackOptions {
        idp: Some(directory),
        config: json!({ "approvalWaitMs": 60_000 }),
        control_plane_args: vec!["--console".into(), format!("127.0.0.1:{console_port}")],
        render_args: vec![
            "--approval-url".into(),
            format!("{console}/approvals/{{id}}"),
        ],
        ..StackOptions::default()
    })
    .unwrap();
    let issuer = stack.idp.as_ref().unwrap().issuer.clone();

    // Kept after the test, for review: target/browser/console/.
    let output = workspace().join("target/browser/console");
    let _ = std::fs::remove_dir_all(&output);
    let downloads = stack.dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let python = workspace().join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(workspace().join("tests/browser/console_test.py"))
        .args(["--console", &console, "--gateway", &stack.gateway_url])
        .args(["--issuer", &issuer])
        .arg("--verifier")
        .arg(bin_dir().join("tollgate-verify"))
        .arg("--log-keys")
        .arg(stack.home.join("keys/checkpoint.vkeys"))
        .arg("--screenshots")
        .arg(output.join("screenshots"))
        .arg("--downloads")
        .arg(&downloads)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "browser suite failed:\n{stdout}\n{stderr}\ncontrol plane: {}",
        stack.control_plane.as_ref().unwrap().log_tail()
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    eprintln!("browser suite: {summary}");
    std::fs::write(output.join("summary.json"), summary.to_string()).unwrap();
    assert!(summary["screenshots"].as_u64().unwrap() >= 10, "{summary}");

    // The chain names the verified operator behind each console action.
    let records = stack.audit_records().unwrap();
    let by_event =
        |event: &str| -> Vec<&Value> { records.iter().filter(|r| r["event"] == event).collect() };
    let sign_ins = by_event("controlPlane.consoleSignIn");
    let signed_in: Vec<&str> = sign_ins
        .iter()
        .filter_map(|r| r["operator"]["sub"].as_str())
        .collect();
    assert!(
        signed_in.contains(&"bob@example.com") && signed_in.contains(&"carol@example.com"),
        "{sign_ins:?}"
    );
    assert!(sign_ins.iter().all(|r| r["operator"]["verified"] == true));
    let approval_id = summary["approvalId"].as_str().unwrap();
    let decided = |event: &str| -> Vec<&Value> {
        by_event(event)
            .into_iter()
            .filter(|r| r["approvalId"] == approval_id)
            .collect()
    };
    assert!(
        decided("approval.decided")
            .iter()
            .any(|r| r["approver"]["sub"] == "bob@example.com"
                && r["approver"]["verified"] == true
                && r["state"] == "approved"),
        "no record of bob's approval of {approval_id}: {records:?}"
    );
    // The refused self-approval is on record too, as carol's.
    assert!(
        by_event("approval.refused")
            .iter()
            .any(|r| r.to_string().contains("carol@example.com")
                && r.to_string().contains("self_approval")),
        "{:?}",
        by_event("approval.refused")
    );
    assert!(
        !by_event("controlPlane.consoleVerification").is_empty(),
        "the console's verification is recorded"
    );
    assert!(!by_event("controlPlane.consoleSignOut").is_empty());
    let revocations: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("revocation"))
        })
        .collect();
    assert!(
        revocations
            .iter()
            .any(|r| r.to_string().contains("carol@example.com")
                && r.to_string().contains("Left the payments team")),
        "{revocations:?}"
    );
}
