//! Retention against the real `tollgate serve`: archive, prune, verify (live, across the cut,
//! and segment by segment), replay an archived session, restart, and what tampering with a
//! segment or the hot store's kept tree is reported as. Then the scheduled retention: records
//! archived once old enough, segments deleted once past their period, each run on record.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{json_of, list, operator_token, stdout, tollgate, Server, BIN};
use serde_json::{json, Value};
use tollgate_proto::pb;

const BLOCK: u64 = 16;

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn call(session: &str, n: usize) -> Vec<u8> {
    json!({
        "event": "mcp.request",
        "session": session,
        "sub": "alice@example.com",
        "messages": [{"kind": "request", "id": n, "method": "tools/call", "target": "get_customer",
                      "arguments": {"id": format!("cus_{n}")}}],
        "decision": "allow",
        "outcome": "forwarded"
    })
    .to_string()
    .into_bytes()
}

async fn append_calls(server: &Server, session: &str, count: usize) {
    let mut client = server.client().await;
    for n in 0..count {
        client
            .append(pb::AppendRequest {
                record_json: call(session, n),
                session: None,
            })
            .await
            .unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bundle.zst"))
        .collect();
    found.sort();
    found
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `tollgate revoke` as a security admin, through `server`.
fn revoke(server: &Server, home: &Path, sub: &str) {
    let output = Command::new(BIN)
        .args(["revoke", "--sub", sub, "--reason", "contractor offboarded"])
        .env("TOLLGATE_HOME", home)
        .env("TOLLGATE_CONTROL_PLANE", server.url())
        .env(
            "TOLLGATE_TOKEN",
            operator_token(home, "admin@example.com", "security-admins"),
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

fn decompress(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap())
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn compress(path: &Path, bytes: &[u8]) {
    let mut encoder =
        zstd::stream::write::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap();
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_prune_verify_and_replay_round_trip() {
    let home = tempfile::tempdir().unwrap();
    let archive = home.path().join("archive");
    let archive_arg = archive.display().to_string();
    let server = Server::start_with(
        home.path(),
        &[
            "--archive-dir",
            &archive_arg,
            "--archive-segment-records",
            "64",
            "--checkpoint-every",
            "37",
        ],
    );
    append_calls(&server, "old-session", 150).await;
    // A change of state before the cut: after pruning, `audit verify` must still replay it
    // from the hot store to check the revocations table.
    revoke(&server, home.path(), "mallory@example.com");
    append_calls(&server, "old-session-2", 60).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = chrono_now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_calls(&server, "new-session", 10).await;
    let everything = json_of(&list(&server).await);
    let first_new = everything
        .iter()
        .position(|r| r["session"] == "new-session")
        .unwrap() as u64;
    let old_calls = everything
        .iter()
        .filter(|r| r["session"] == "old-session")
        .count();

    // A non-admin may not archive.
    let refused = Command::new(BIN)
        .args([
            "audit",
            "archive",
            "--before",
            &before,
            "--server",
            &server.url(),
        ])
        .env("TOLLGATE_HOME", home.path())
        .env(
            "TOLLGATE_TOKEN",
            operator_token(home.path(), "auditor@example.com", "auditors"),
        )
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr(&refused).contains("security-admins"),
        "{}",
        stderr(&refused)
    );
    assert!(segments_or_none(&archive).is_empty());

    let outcome = archive_through(&server, home.path(), &before);
    let cut = outcome["toSeq"].as_u64().unwrap();
    assert_eq!(cut, first_new / BLOCK * BLOCK, "{outcome}");
    assert_eq!(outcome["fromSeq"], 0);
    let files = segments(&archive);
    assert_eq!(files.len() as u64, cut.div_ceil(64), "{outcome}");
    assert_eq!(outcome["segments"].as_array().unwrap().len(), files.len());
    let pruned = outcome["pruned"].as_u64().unwrap();
    let kept = outcome["kept"].as_u64().unwrap();
    assert_eq!(pruned + kept, cut, "{outcome}");
    assert!(
        pruned > cut / 2,
        "most archived records leave the hot store: {outcome}"
    );

    // The hot store holds the kept blocks below the cut, whole, and everything from the cut.
    let hot = list(&server).await;
    let below: Vec<u64> = hot.iter().map(|r| r.seq).filter(|s| *s < cut).collect();
    assert_eq!(below.len() as u64, kept);
    assert!(below
        .chunks(BLOCK as usize)
        .all(|b| b.len() == BLOCK as usize
            && b[0] % BLOCK == 0
            && b.windows(2).all(|w| w[1] == w[0] + 1)));
    let hot_json = json_of(&hot);
    let record = hot_json
        .iter()
        .find(|r| r["event"] == "controlPlane.auditArchived")
        .expect("the archive is on record");
    assert_eq!(record["toSeq"], cut);
    assert_eq!(record["segments"], outcome["segments"]);
    assert!(
        hot_json.iter().any(|r| r["event"] == "revocation.added"
            || r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("revocation."))),
        "the revocation stays in the hot store"
    );

    // The live log verifies across the cut, with and without reading the segments.
    let verified = tollgate(
        home.path(),
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    assert!(verified.status.success(), "{verified:?}");
    let report: Value = serde_json::from_str(stdout(&verified).trim()).unwrap();
    assert!(report.to_string().contains("are archived"), "{report}");
    let verified = tollgate(
        home.path(),
        &[
            "audit",
            "verify",
            "--server",
            &server.url(),
            "--archive",
            &archive_arg,
        ],
    );
    assert!(verified.status.success(), "{verified:?}");
    assert!(
        stderr(&verified).contains(&format!("checked {cut} archived records")),
        "{}",
        stderr(&verified)
    );

    // Each segment verifies alone, offline, with the auditor's verifier.
    let standalone = Path::new(BIN).with_file_name("tollgate-verify");
    let keys = home.path().join("keys/checkpoint.vkeys");
    for file in &files {
        let output = Command::new(&standalone)
            .arg(file)
            .arg("--key")
            .arg(&keys)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}: {output:?}", file.display());
    }

    // A bundle exported after the cut still verifies offline (its skipped ranges split at
    // every earlier checkpoint, inside the kept blocks) and says where the archive ends.
    let bundle_path = home.path().join("after-cut.json");
    let exported = tollgate(
        home.path(),
        &[
            "audit",
            "export",
            "--out",
            bundle_path.to_str().unwrap(),
            "--server",
            &server.url(),
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    assert!(stderr(&exported).contains(&format!("before seq {cut} were archived")));
    let output = Command::new(&standalone)
        .arg(&bundle_path)
        .arg("--key")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let bundle_text = std::fs::read_to_string(&bundle_path).unwrap();
    assert!(bundle_text.contains(&format!("\"archivedBefore\":{cut}")));

    // An archived session replays from the segments.
    let replay = tollgate(
        home.path(),
        &[
            "sessions",
            "replay",
            "old-session",
            "--server",
            &server.url(),
            "--archive",
            &archive_arg,
            "--json",
        ],
    );
    assert!(replay.status.success(), "{replay:?}");
    let lines = json_lines(&replay);
    assert_eq!(lines.len(), old_calls);
    assert!(lines
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    let without = tollgate(
        home.path(),
        &[
            "sessions",
            "replay",
            "old-session",
            "--server",
            &server.url(),
            "--json",
        ],
    );
    assert!(json_lines(&without).len() < old_calls);

    // Archiving again finds nothing older; the server restarts on the pruned store.
    let again = archive_through(&server, home.path(), &before);
    assert_eq!(again["fromSeq"], again["toSeq"]);
    assert!(server.terminate().success());
    let server = Server::start_with(home.path(), &["--archive-dir", &archive_arg]);
    append_calls(&server, "after-restart", 3).await;
    let verified = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(server.terminate().success());

    // A record changed inside a segment: the segment and `verify --archive` say which.
    let victim = &files[1];
    let original = std::fs::read(victim).unwrap();
    let text = String::from_utf8(decompress(victim)).unwrap();
    let altered = text.replacen("alice@example.com", "alicf@example.com", 1);
    assert_ne!(text, altered);
    compress(victim, altered.as_bytes());
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let broken = tollgate(
        home.path(),
        &["audit", "verify", "--direct", "--archive", &archive_arg],
    );
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    assert!(stdout(&broken).contains(&name), "{}", stdout(&broken));
    std::fs::write(victim, &original).unwrap();

    // A segment gone: the gap is named.
    std::fs::rename(victim, archive.join("elsewhere")).unwrap();
    let gap = tollgate(
        home.path(),
        &["audit", "verify", "--direct", "--archive", &archive_arg],
    );
    assert_eq!(gap.status.code(), Some(1), "{gap:?}");
    assert!(stdout(&gap).contains("missing"), "{}", stdout(&gap));
    std::fs::rename(archive.join("elsewhere"), victim).unwrap();

    // The hot store's subtree hash of a pruned block changed: the roots no longer match.
    let pruned_block = (0..cut / BLOCK)
        .find(|b| !below.contains(&(b * BLOCK)))
        .unwrap();
    {
        let db = sled::Config::new()
            .path(home.path().join("audit.sled"))
            .use_compression(false)
            .open()
            .unwrap();
        let merkle = db.open_tree("merkle").unwrap();
        let mut key = vec![4u8];
        key.extend_from_slice(&pruned_block.to_be_bytes());
        let mut node = merkle.get(&key).unwrap().unwrap().to_vec();
        node[0] ^= 1;
        merkle.insert(key, node).unwrap();
        db.flush().unwrap();
    }
    let tampered = tollgate(home.path(), &["audit", "verify", "--direct"]);
    assert_eq!(tampered.status.code(), Some(1), "{tampered:?}");
    assert!(
        stdout(&tampered).contains("Merkle root"),
        "{}",
        stdout(&tampered)
    );
}

/// `tollgate audit archive --before BEFORE` through `server`, as a security admin: what it did.
fn archive_through(server: &Server, home: &Path, before: &str) -> Value {
    let archived = tollgate(
        home,
        &[
            "audit",
            "archive",
            "--before",
            before,
            "--server",
            &server.url(),
            "--json",
        ],
    );
    assert!(archived.status.success(), "{archived:?}");
    serde_json::from_str(stdout(&archived).trim()).unwrap()
}

fn segments_or_none(dir: &Path) -> Vec<PathBuf> {
    if dir.exists() {
        segments(dir)
    } else {
        Vec::new()
    }
}

fn chrono_now() -> String {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    stdout(&output).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_archives_on_schedule_then_expires_segments_on_record() {
    let home = tempfile::tempdir().unwrap();
    let archive = home.path().join("archive");
    let archive_arg = archive.display().to_string();
    let server = Server::start_with(
        home.path(),
        &[
            "--archive-dir",
            &archive_arg,
            "--archive-segment-records",
            "32",
            "--retain-online",
            "2s",
            "--retain-archived",
            "6s",
            "--retention-check",
            "1s",
        ],
    );
    // Read before anything is old enough to be archived: the start record says what is kept.
    let start = json_of(&list(&server).await)
        .into_iter()
        .find(|r| r["event"] == "controlPlane.start")
        .unwrap();
    assert_eq!(start["retention"]["online"], "2s");
    assert_eq!(start["retention"]["archived"], "6s");
    append_calls(&server, "early", 100).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = |records: &[Value], event: &str| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["event"] == event)
            .cloned()
            .collect()
    };
    let archived = loop {
        let records = json_of(&list(&server).await);
        let found = events(&records, "controlPlane.auditArchived");
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "nothing was archived");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(archived[0]["via"], "retention");
    assert!(archived[0]["toSeq"].as_u64().unwrap() >= 96);
    assert!(!segments(&archive).is_empty());

    let expired = loop {
        let records = json_of(&list(&server).await);
        let found = events(&records, "controlPlane.archiveExpired");
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "no segment expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let gone: Vec<&str> = expired[0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    for file in &gone {
        assert!(!archive.join(file).exists(), "{file} was deleted");
    }
    // The hot store still verifies across the cut, and so does what is left of the archive.
    let verified = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert!(verified.status.success(), "{verified:?}");
    let verified = tollgate(
        home.path(),
        &[
            "audit",
            "verify",
            "--server",
            &server.url(),
            "--archive",
            &archive_arg,
        ],
    );
    assert!(verified.status.success(), "{verified:?}");
    assert!(
        stdout(&verified).contains("no segment in the archive")
            || stdout(&verified).contains("expired"),
        "{}",
        stdout(&verified)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_while_archiving_loses_no_record_and_archives_again() {
    let home = tempfile::tempdir().unwrap();
    let archive = home.path().join("archive");
    let archive_arg = archive.display().to_string();
    let mut server = Server::start_with(
        home.path(),
        &[
            "--archive-dir",
            &archive_arg,
            "--archive-segment-records",
            "256",
        ],
    );
    common::append_concurrently(&server, 8, 500).await;
    let before = chrono_now();
    // Appends go on while the archive runs and when the process dies: every acknowledged one
    // must survive.
    let client = server.client().await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            let mut client = client;
            for n in 0.. {
                match client
                    .append(pb::AppendRequest {
                        record_json: call("during-archive", n),
                        session: None,
                    })
                    .await
                {
                    Ok(ack) => {
                        let ack = ack.into_inner();
                        acknowledged.lock().unwrap().push((ack.seq, ack.chain_hash));
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let mut archiving = Command::new(BIN)
        .args([
            "audit",
            "archive",
            "--before",
            &before,
            "--server",
            &server.url(),
        ])
        .env("TOLLGATE_HOME", home.path())
        .env(
            "TOLLGATE_TOKEN",
            operator_token(home.path(), "admin@example.com", "security-admins"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while segments_or_none(&archive).len() < 3 {
        assert!(Instant::now() < deadline, "no segment was written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = archiving.wait();
    load.await.unwrap();
    drop(server);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());

    let server = Server::start_with(
        home.path(),
        &[
            "--archive-dir",
            &archive_arg,
            "--archive-segment-records",
            "256",
        ],
    );
    let verified = tollgate(home.path(), &["audit", "verify", "--server", &server.url()]);
    assert!(verified.status.success(), "{verified:?}");
    let outcome = archive_through(&server, home.path(), &before);
    let cut = outcome["toSeq"].as_u64().unwrap();
    assert!(cut >= 3 * 256, "{outcome}");
    assert_eq!(
        outcome["fromSeq"], 0,
        "the killed run recorded no archive: {outcome}"
    );
    let verified = tollgate(
        home.path(),
        &[
            "audit",
            "verify",
            "--server",
            &server.url(),
            "--archive",
            &archive_arg,
        ],
    );
    assert!(verified.status.success(), "{verified:?}");
    // Every acknowledged append is in the log: in the hot store, or in the archive.
    let hot: std::collections::HashMap<u64, String> = list(&server)
        .await
        .into_iter()
        .map(|r| (r.seq, r.chain_hash))
        .collect();
    let mut archived_seqs = std::collections::BTreeSet::new();
    for file in segments(&archive) {
        let text = String::from_utf8(decompress(&file)).unwrap();
        for entry in text.split("{\"seq\":").skip(1) {
            let digits: String = entry.chars().take_while(char::is_ascii_digit).collect();
            archived_seqs.insert(digits.parse::<u64>().unwrap());
        }
    }
    for (seq, chain_hash) in &acknowledged {
        match hot.get(seq) {
            Some(stored) => assert_eq!(stored, chain_hash, "record {seq} changed"),
            None => assert!(
                archived_seqs.contains(seq),
                "acknowledged record {seq} is gone"
            ),
        }
    }
}
