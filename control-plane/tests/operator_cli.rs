//! `tollgate policy check` and `tollgate mask`, run as an operator runs them.

use std::io::Write;
use std::process::{Command, Stdio};

fn tollgate(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example_policy() -> String {
    format!(
        "{}/../envoy/policy/payments.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_shipped_policy_checks_out_against_its_samples() {
    let (code, stdout, _) = tollgate(&["policy", "check", &example_policy()], b"");
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("all as expected"), "{stdout}");
    assert!(stdout.contains("never-delete-merchant"), "{stdout}");
}

#[test]
fn a_broken_policy_is_refused_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        br#"{"rules":[{"id":"ok","match":{"tool":"a"},"action":"allow"},{"id":"broken","match":{"arguments":"/amount ~~ 3"},"action":"allow"}]}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = tollgate(&["policy", "check", file.to_str().unwrap()], b"");
    assert_ne!(code, 0);
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("rule 2") && all.contains("broken"), "{all}");
}

#[test]
fn mask_never_prints_a_raw_pan() {
    let input = br#"{"pan":"4111 1111 1111 1111","escaped":"\u0034111111111111111","note":"card 5555-5555-5555-4444"}"#;
    let (code, stdout, _) = tollgate(&["mask", "--json"], input);
    assert_eq!(code, 0);
    let masked: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON out");
    let text = masked.to_string();
    for raw in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
    ] {
        assert!(!text.contains(raw), "{text}");
    }
    assert_eq!(masked["pan"], "**** **** **** 1111");

    let (code, report, _) = tollgate(
        &["mask", "--report"],
        b"paid with 4111 1111 1111 1111 today",
    );
    assert_eq!(code, 0);
    assert!(report.contains("visa\t10\t**** **** **** 1111"), "{report}");
    assert!(!report.contains("4111 1111"), "{report}");
}
