//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, on Node 22), server
//! scenarios, against `@modelcontextprotocol/server-everything` directly and through Envoy +
//! Tollgate: the gateway must not lose a single passing check.
//!
//! The suite cannot send a token, so it talks to a client-side hop (a second Envoy listener) that
//! adds a valid one; the policy allows everything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::peers::{node_bin, node_module, run_bounded};
use tollgate_e2e::{ClientHop, Stack, StackOptions, Upstream};

/// check (scenario / check id) -> (passed, error message)
type Checks = BTreeMap<String, (bool, String)>;

fn allow_everything() -> Value {
    json!({"defaultAction": {"action": "allow"}, "rules": []})
}

/// Runs every active server scenario against `url`; returns each check's outcome.
fn run_suite(url: &str, out: &Path) -> Checks {
    let mut command = std::process::Command::new(node_bin());
    command
        .arg(node_module(
            "@modelcontextprotocol/conformance/dist/index.js",
        ))
        .args(["server", "--url", url, "--output-dir"])
        .arg(out)
        .current_dir(out.parent().unwrap());
    // The suite exits 1 when a check fails (server-everything fails some); its results are in
    // the output directory, one folder per scenario: server-<scenario>-<timestamp>.
    let ran = run_bounded(command, Duration::from_secs(240)).expect("conformance suite");
    let mut checks = Checks::new();
    for entry in std::fs::read_dir(out).expect("conformance output") {
        let entry = entry.unwrap();
        let folder = entry.file_name().to_string_lossy().into_owned();
        // "-2026-11-25T21-52-52-177Z": the ISO time with ':' and '.' as '-'.
        let scenario = folder
            .strip_prefix("server-")
            .and_then(|rest| rest.get(..rest.len().saturating_sub(25)))
            .unwrap_or(&folder)
            .to_owned();
        let text = std::fs::read_to_string(entry.path().join("checks.json")).unwrap_or_default();
        let list: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        for check in list {
            let id = check["id"].as_str().unwrap_or("?");
            let passed = check["status"] == "SUCCESS";
            // The message may name the URL the suite was given.
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .unwrap_or("?");
            let error = check["errorMessage"]
                .as_str()
                .unwrap_or("")
                .replace(port, "PORT");
            checks.insert(format!("{scenario} / {id}"), (passed, error));
        }
    }
    assert!(
        !checks.is_empty(),
        "no conformance results in {out:?}:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    checks
}

fn passing(checks: &Checks) -> Vec<&String> {
    checks
        .iter()
        .filter(|(_, (passed, _))| *passed)
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_server_scenarios_pass_the_same_through_the_gateway() {
    let stack = Stack::start_with(StackOptions {
        policy: allow_everything(),
        upstream: Some(Upstream::server_everything()),
        client_hop: Some(ClientHop::for_sub("conformance@example.com")),
        ..StackOptions::default()
    })
    .unwrap();
    let hop_url = stack.hop_url.clone().unwrap();
    let results = stack.dir.path().join("conformance");
    std::fs::create_dir_all(&results).unwrap();

    let direct = run_suite(&stack.upstream_url, &results.join("direct"));
    let gateway = run_suite(&hop_url, &results.join("gateway"));

    let (direct_pass, gateway_pass) = (passing(&direct), passing(&gateway));
    println!(
        "conformance server checks passing: direct {} of {}, through Envoy + Tollgate {} of {}",
        direct_pass.len(),
        direct.len(),
        gateway_pass.len(),
        gateway.len()
    );
    for (name, (passed, _)) in &direct {
        let through = gateway.get(name).map(|(p, _)| *p);
        println!(
            "  {:<60} direct {:<4} gateway {}",
            name,
            if *passed { "pass" } else { "FAIL" },
            match through {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "missing",
            }
        );
    }
    let lost: Vec<&&String> = direct_pass
        .iter()
        .filter(|c| gateway.get(**c).map(|(p, _)| *p) != Some(true))
        .collect();
    assert!(
        lost.is_empty(),
        "checks that pass directly but not through the gateway: {lost:?}"
    );
    assert_eq!(
        direct_pass, gateway_pass,
        "the set of passing checks differs"
    );
    assert_eq!(
        direct.keys().collect::<Vec<_>>(),
        gateway.keys().collect::<Vec<_>>(),
        "the suite ran different checks"
    );
    // The checks that fail, fail the same way.
    for (name, (_, error)) in &direct {
        let through = &gateway[name].1;
        assert_eq!(
            error, through,
            "{name} fails differently through the gateway"
        );
    }
    // server-everything 2026.8.x with conformance 0.1.16: 13 of 32 checks pass directly.
    assert!(
        direct_pass.len() >= 13,
        "direct run passes fewer checks than expected: {direct_pass:?}"
    );

    // It really went through the gateway: the suite's calls are in the audit chain under the
    // hop's identity.
    let records = stack.audit_records().unwrap();
    let audited = records
        .iter()
        .filter(|r| r["event"] == "mcp.request" && r["sub"] == "conformance@example.com")
        .count();
    assert!(
        audited >= 30,
        "only {audited} audited requests from the suite"
    );
}
