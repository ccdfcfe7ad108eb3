//! The tamper suite: each attack an insider with write access to the store (or to an export
//! bundle) could try, and `tollgate audit verify` catching it, naming the first bad record.
//!
//! A log is built once per test through the real server (checkpoints every 10 records), the
//! server is stopped, and the sled files or the bundle are edited as an attacker would.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::bundle::{Bundle, Entry};
use common::{append_concurrently, stdout, tollgate, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_log::note::NoteSigner;
use tollgate_proto::pb;
use tollgate_proto::pb::approvals_client::ApprovalsClient;

/// A home with a stopped log: start, 60 records from 3 writers, stop (62 records).
async fn built_log() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with(home.path(), &["--checkpoint-every", "10"]);
    append_concurrently(&server, 3, 20).await;
    assert!(server.terminate().success());
    home
}

fn verify(home: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["audit", "verify", "--direct", "--json"];
    args.extend_from_slice(extra);
    let output = tollgate(home, &args);
    let summary = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("verify printed no json: {output:?}"));
    (output.status.code(), summary)
}

fn assert_broken(home: &Path, extra: &[&str], seq: Option<u64>, problem: &str) -> Value {
    let (code, summary) = verify(home, extra);
    assert_eq!(code, Some(1), "{summary}");
    assert_eq!(summary["intact"], false);
    assert_eq!(
        summary["firstBadSeq"],
        seq.map_or(Value::Null, Value::from),
        "{summary}"
    );
    assert!(
        summary["problem"].as_str().unwrap().contains(problem),
        "{problem:?} not in {summary}"
    );
    summary
}

fn with_tree(home: &Path, tree: &str, edit: impl FnOnce(&sled::Tree)) {
    let db = sled::Config::new()
        .path(home.join("audit.sled"))
        .use_compression(false)
        .open()
        .unwrap();
    edit(&db.open_tree(tree).unwrap());
    db.flush().unwrap();
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn replace_store(home: &Path, from: &Path) {
    std::fs::remove_dir_all(home.join("audit.sled")).unwrap();
    copy_dir(&from.join("audit.sled"), &home.join("audit.sled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_log_verifies_and_every_store_edit_is_caught() {
    let log = built_log().await;
    let (code, summary) = verify(log.path(), &[]);
    assert_eq!(code, Some(0), "{summary}");
    assert!(summary["checkpointsVerified"].as_u64().unwrap() >= 6);

    let attack = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(log.path(), dir.path());
        eprintln!("attack: {name}");
        dir
    };

    // A changed byte.
    let home = attack("changed byte");
    with_tree(home.path(), "records", |t| {
        let mut value = common::unpacked(&t.get(key(7)).unwrap().unwrap());
        let at = value.windows(5).position(|w| w == b"allow").unwrap();
        value[at] = b'A';
        t.insert(key(7), common::packed(&value)).unwrap();
    });
    assert_broken(home.path(), &[], Some(7), "chain hash mismatch");

    // A changed byte in the stored zstd frame itself: it unpacks to something else, or not at
    // all and is read as stored.
    let home = attack("changed byte in the packed record");
    with_tree(home.path(), "records", |t| {
        let mut value = t.get(key(7)).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x55;
        t.insert(key(7), value).unwrap();
    });
    assert_broken(home.path(), &[], Some(7), "");

    // A record written back as plain JSON, as a store created before packing holds it, but
    // changed: plain values are read, and judged like any other.
    let home = attack("record rewritten as plain JSON");
    with_tree(home.path(), "records", |t| {
        let value = common::unpacked(&t.get(key(7)).unwrap().unwrap());
        let text = String::from_utf8(value[32..].to_vec()).unwrap();
        let mut forged = value[..32].to_vec();
        forged.extend(text.replacen("allow", "Allow", 1).into_bytes());
        t.insert(key(7), forged).unwrap();
    });
    assert_broken(home.path(), &[], Some(7), "chain hash mismatch");

    // A deleted record.
    let home = attack("deleted record");
    with_tree(home.path(), "records", |t| {
        t.remove(key(12)).unwrap();
    });
    assert_broken(home.path(), &[], Some(12), "missing");

    // Two swapped records.
    let home = attack("swapped records");
    with_tree(home.path(), "records", |t| {
        let (a, b) = (
            t.get(key(3)).unwrap().unwrap(),
            t.get(key(4)).unwrap().unwrap(),
        );
        t.insert(key(3), b).unwrap();
        t.insert(key(4), a).unwrap();
    });
    assert_broken(home.path(), &[], Some(3), "chain hash mismatch");

    // A truncated tail: the chain alone would look intact; the checkpoints say otherwise.
    let home = attack("truncated tail");
    let mut stored = 0;
    with_tree(home.path(), "records", |t| {
        stored = t.len() as u64;
        for seq in 50..stored {
            t.remove(key(seq)).unwrap();
        }
    });
    let summary = assert_broken(home.path(), &[], Some(50), "missing: checkpoint #");
    let problem = summary["problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!("covers {stored} records but only 50")),
        "{problem}"
    );
}

/// The forged-chain case names the records between the last good checkpoint and the first bad
/// one; checked apart from the others because the exact checkpoint sizes depend on batching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_chain_is_caught_by_the_signed_roots() {
    let home = built_log().await;
    with_tree(home.path(), "records", |t| {
        let mut previous: [u8; 32] = t.get(key(19)).unwrap().unwrap()[..32].try_into().unwrap();
        for seq in 20..62 {
            let mut value = common::unpacked(&t.get(key(seq)).unwrap().unwrap());
            if seq == 20 {
                let at = value.windows(5).position(|w| w == b"allow").unwrap();
                value[at..at + 5].copy_from_slice(b"denyy");
            }
            let hash: [u8; 32] = Sha256::new()
                .chain_update(previous)
                .chain_update(&value[32..])
                .finalize()
                .into();
            value[..32].copy_from_slice(&hash);
            previous = hash;
            t.insert(key(seq), common::packed(&value)).unwrap();
        }
    });
    let (code, summary) = verify(home.path(), &[]);
    assert_eq!(code, Some(1), "{summary}");
    let first = summary["firstBadSeq"].as_u64().unwrap();
    assert!((10..=20).contains(&first), "{summary}");
    let problem = summary["problem"].as_str().unwrap();
    assert!(problem.contains(&format!("records {first}..")), "{problem}");
    assert!(problem.contains("Merkle root differs"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_with_a_bad_signature_is_caught() {
    let home = built_log().await;
    with_tree(home.path(), "checkpoints", |t| {
        let note = String::from_utf8(t.get(key(1)).unwrap().unwrap().to_vec()).unwrap();
        let mut lines: Vec<String> = note.split('\n').map(String::from).collect();
        let size: u64 = lines[1].parse().unwrap();
        lines[1] = (size - 1).to_string();
        t.insert(key(1), lines.join("\n").as_bytes()).unwrap();
    });
    assert_broken(home.path(), &[], None, "checkpoint #1 has a bad signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_store_and_a_forked_log_are_caught_by_an_earlier_checkpoint() {
    let home = built_log().await;
    let old = tempfile::tempdir().unwrap();
    copy_dir(home.path(), old.path());

    // The log grows; the auditor keeps the checkpoint they verified, and an export bundle.
    let server = Server::start_with(home.path(), &["--checkpoint-every", "10"]);
    append_concurrently(&server, 2, 15).await;
    let saved = home.path().join("../seen.checkpoint");
    let saved = saved.to_str().unwrap().to_string();
    let output = tollgate(
        home.path(),
        &[
            "audit",
            "verify",
            "--server",
            &server.url(),
            "--save-checkpoint",
            &saved,
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let bundle = home.path().join("../seen.bundle.json");
    let bundle = bundle.to_str().unwrap().to_string();
    let output = tollgate(
        home.path(),
        &[
            "audit",
            "export",
            "--server",
            &server.url(),
            "--out",
            &bundle,
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(server.terminate().success());
    let vkeys = home.path().join("keys/checkpoint.vkeys");
    let (code, summary) = verify_bundle(
        Path::new(&bundle),
        &["--key", vkeys.to_str().unwrap(), "--checkpoint", &saved],
    );
    assert_eq!(code, Some(0), "{summary}");
    let seen_size: u64 = std::fs::read_to_string(&saved)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();

    // Roll the store back to the old copy: consistent in itself, so it verifies alone...
    replace_store(home.path(), old.path());
    let (code, summary) = verify(home.path(), &[]);
    assert_eq!(code, Some(0), "{summary}");
    // ...but not against what the auditor saw before.
    let (code, summary) = verify(home.path(), &["--checkpoint", &saved]);
    assert_eq!(code, Some(1), "{summary}");
    let rolled_back = summary["records"].as_u64().unwrap();
    assert_eq!(
        summary["firstBadSeq"], rolled_back,
        "the first record missing"
    );
    let problem = summary["problem"].as_str().unwrap();
    assert!(
        problem.starts_with(&format!("missing: the checkpoint in {saved}")),
        "{problem}"
    );
    assert!(
        problem.contains(&format!("covers {seen_size} records")),
        "{problem}"
    );
    let (code, summary) = verify(home.path(), &["--checkpoint", &bundle]);
    assert_eq!(code, Some(1), "{summary}");
    assert!(summary["problem"]
        .as_str()
        .unwrap()
        .contains("the tail was truncated or the store rolled back"));

    // Grow the rolled-back copy with other records to exactly the size seen: a fork.
    let server = Server::start_with(home.path(), &["--checkpoint-every", "10"]);
    let info = server
        .reader()
        .await
        .log_info(pb::LogInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut client = server.client().await;
    for n in info.size..seen_size {
        client
            .append(pb::AppendRequest {
                record_json: format!(r#"{{"event":"other","n":{n}}}"#).into_bytes(),
                session: None,
            })
            .await
            .unwrap();
    }
    let checkpoint = server
        .reader()
        .await
        .checkpoint(pb::CheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        checkpoint.note.lines().nth(1).unwrap(),
        seen_size.to_string()
    );
    assert!(server.terminate().success());
    let (code, summary) = verify(home.path(), &["--checkpoint", &saved]);
    assert_eq!(code, Some(1), "{summary}");
    let problems = summary["problems"].to_string();
    assert!(problems.contains("the log was forked"), "{problems}");
    assert!(
        problems.contains(&format!("do not match the checkpoint in {saved}")),
        "{problems}"
    );
}

fn verify_bundle(path: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    // No store, no server: an empty home, and a server address where nothing listens.
    let nowhere = tempfile::tempdir().unwrap();
    let mut args = vec![
        "audit",
        "verify",
        "--bundle",
        path.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = tollgate(nowhere.path(), &args);
    let summary = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("verify printed no json: {output:?}"));
    (output.status.code(), summary)
}

/// Exit 1, with `problem` among the problems named and `seq` as the first bad record.
fn assert_bundle_broken(path: &Path, extra: &[&str], seq: Option<u64>, problem: &str) -> Value {
    let (code, summary) = verify_bundle(path, extra);
    assert_eq!(code, Some(1), "{summary}");
    assert_eq!(summary["status"], "broken", "{summary}");
    assert_eq!(
        summary["firstBadSeq"],
        seq.map_or(Value::Null, Value::from),
        "{summary}"
    );
    assert!(
        summary["problems"].to_string().contains(problem),
        "{problem:?} not in {summary}"
    );
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_verify_offline_and_edits_to_them_are_caught() {
    let home = built_log().await;
    let server = Server::start(home.path());
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.json");
    let filtered = dir.path().join("writer1.json");
    let url = server.url();
    for (path, extra) in [
        (&full, vec![]),
        (&filtered, vec!["--sub", "writer1@example.com"]),
    ] {
        let mut args = vec!["audit", "export", "--server", url.as_str()];
        args.extend(["--out", path.to_str().unwrap()]);
        args.extend(extra);
        let output = tollgate(home.path(), &args);
        assert!(output.status.success(), "{output:?}");
    }
    assert!(server.terminate().success());
    let vkeys = home.path().join("keys/checkpoint.vkeys");
    let vkeys = vkeys.to_str().unwrap();
    let key = ["--key", vkeys];

    // Intact only against the log's pinned key; without one, at best unauthenticated.
    let (code, summary) = verify_bundle(&full, &key);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["status"], "intact", "{summary}");
    let (code, summary) = verify_bundle(&filtered, &key);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["records"], 20);
    let (code, summary) = verify_bundle(&filtered, &[]);
    assert_eq!(code, Some(2), "{summary}");
    assert_eq!(summary["status"], "unauthenticated", "{summary}");
    assert_eq!(summary["intact"], false, "{summary}");
    let bundle = Bundle::load(&filtered);
    let export = bundle.record_value(bundle.export_seq());
    assert_eq!(export["event"], "controlPlane.auditExport");
    assert_eq!(export["records"], 20);
    assert_eq!(bundle.header["filter"]["sub"], "writer1@example.com");
    // The offline read left the store alone: there is none.
    let offline = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--bundle", filtered.to_str().unwrap()];
        args.extend_from_slice(extra);
        stdout(&tollgate(tempfile::tempdir().unwrap().path(), &args))
    };
    let text = offline(&key);
    assert!(
        text.starts_with("audit bundle intact: 20 records"),
        "{text}"
    );
    let text = offline(&[]);
    assert!(
        text.starts_with("audit bundle unauthenticated: 20 records check out"),
        "{text}"
    );

    let selected: Vec<u64> = bundle
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Record {
                seq,
                context: false,
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    let edited = |name: &str, bundle: &Bundle| {
        let path = dir.path().join(name);
        bundle.save(&path);
        path
    };

    // A record removed.
    let mut bundle = Bundle::load(&full);
    let at = bundle.index_of(5);
    bundle.entries.remove(at);
    assert_bundle_broken(&edited("removed.json", &bundle), &key, Some(5), "removed");

    // A record altered.
    let mut bundle = Bundle::load(&filtered);
    let seq = selected[3];
    let at = bundle.index_of(seq);
    if let Entry::Record { record, .. } = &mut bundle.entries[at] {
        let text = String::from_utf8(record.clone()).unwrap();
        *record = text.replace("\"allow\"", "\"deny\"").into_bytes();
    }
    assert_bundle_broken(
        &edited("altered.json", &bundle),
        &key,
        Some(seq),
        "does not hash to its leaf hash: altered",
    );

    // A record altered and its leaf hash recomputed: the leaves no longer rebuild the signed
    // root, nor the selection the export record states.
    let mut bundle = Bundle::load(&full);
    let mut record = bundle.record_value(9);
    record["sub"] = "mallory@example.com".into();
    bundle.set_record(9, serde_jcs::to_vec(&record).unwrap());
    let path = edited("rehashed.json", &bundle);
    assert_bundle_broken(&path, &key, None, "do not rebuild the root");
    assert_bundle_broken(&path, &key, None, "a record was removed, added or replaced");

    // Two records swapped in the list.
    let mut bundle = Bundle::load(&full);
    bundle.entries.swap(3, 4);
    assert_bundle_broken(&edited("swapped.json", &bundle), &key, Some(3), "reordered");

    // The checkpoint's signature broken (its size changed).
    let mut bundle = Bundle::load(&full);
    let export_seq = bundle.export_seq();
    let note = bundle.note();
    let mut lines: Vec<String> = note.split('\n').map(String::from).collect();
    lines[1] = format!("{}", lines[1].parse::<u64>().unwrap() + 1);
    bundle
        .header
        .insert("checkpoint".into(), lines.join("\n").into());
    let path = edited("bad-signature.json", &bundle);
    let summary = assert_bundle_broken(&path, &key, Some(export_seq), "has a bad signature");
    assert!(summary["problems"]
        .to_string()
        .contains("removed from the end"));

    // Re-chained: a record altered, its leaf hash, the export record and the checkpoint's root
    // and chain lines all made to match, the log's signature left as it was.
    let mut bundle = Bundle::load(&full);
    let mut record = bundle.record_value(9);
    record["decision"] = "deny".into();
    bundle.set_record(9, serde_jcs::to_vec(&record).unwrap());
    bundle.restate_export();
    let signature = {
        let note = bundle.note();
        note[note.rfind("\n\n").unwrap() + 1..].to_owned()
    };
    bundle.resign_latest(&NoteSigner::generate("throwaway").unwrap(), None);
    let rechained = format!("{}{signature}", common::bundle::body(&bundle.note()));
    bundle.header.insert("checkpoint".into(), rechained.into());
    assert_bundle_broken(
        &edited("rechained.json", &bundle),
        &key,
        None,
        "has a bad signature",
    );

    // A record left out and the export record's count changed to match: the export record is
    // no longer the one the checkpoint's chain line signs.
    let mut bundle = Bundle::load(&filtered);
    bundle.rebuild(&BTreeSet::from([selected[0]]), |_| true);
    bundle.restate_export();
    assert_eq!(bundle.record_value(bundle.export_seq())["records"], 19);
    assert_bundle_broken(
        &edited("recounted.json", &bundle),
        &key,
        Some(bundle.export_seq()),
        "the chain hash was altered",
    );

    // Signed by a key the auditor does not trust (another log's).
    let other = tempfile::tempdir().unwrap();
    let other_server = Server::start(other.path());
    drop(other_server);
    let other_keys = other.path().join("keys/checkpoint.vkeys");
    assert_bundle_broken(
        &full,
        &["--key", other_keys.to_str().unwrap()],
        None,
        "is not signed by a pinned log key",
    );

    // Not a bundle at all: never intact, with or without a key.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"format\": 1}").unwrap();
    for extra in [&key[..], &[]] {
        let mut args = vec!["audit", "verify", "--bundle", junk.to_str().unwrap()];
        args.extend_from_slice(extra);
        let output = tollgate(dir.path(), &args);
        assert!(matches!(output.status.code(), Some(1 | 2)), "{output:?}");
    }
}

/// The JSON entry under `key` of a state table, edited.
fn edit_entry(home: &Path, tree: &str, key: &str, edit: impl FnOnce(&mut Value)) {
    with_tree(home, tree, |tree| {
        let mut entry: Value =
            serde_json::from_slice(&tree.get(key.as_bytes()).unwrap().unwrap()).unwrap();
        edit(&mut entry);
        tree.insert(key.as_bytes(), serde_json::to_vec(&entry).unwrap())
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tables_edited_without_a_record_are_caught() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = Server::start(home);
    let sam = common::operator_token(home, "sam@example.com", "security-admins");
    let olga = common::operator_token(home, "olga@example.com", "payments-approvers");
    let cli = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("TOLLGATE_HOME", home)
            .env("TOLLGATE_CONTROL_PLANE", server.url())
            .env("TOLLGATE_TOKEN", token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        stdout(&out).trim().to_owned()
    };
    let mut filter = ApprovalsClient::new(server.gateway_channel().await);
    let id = filter
        .request(common::held_call(
            json!({"sub": "alice@example.com"}),
            "update_payout_account",
            json!({"merchant": "m_1", "accountNumber": "acct-1"}),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_id;
    cli(&olga, &["approvals", "approve", &id, "--reason", "checked"]);
    let used = filter
        .r#await(pb::AwaitRequest {
            approval_id: id.clone(),
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used.grant_use, 1);
    let revocation = cli(
        &sam,
        &["revoke", "--sub", "carol@example.com", "--reason", "left"],
    );
    cli(
        &sam,
        &[
            "service-accounts",
            "set",
            "svc-reports",
            "--owner",
            "dana@example.com",
            "--reason",
            "r",
        ],
    );
    // Through the server, as an auditor: intact, tables included.
    let online = tollgate(
        home,
        &["audit", "verify", "--server", &server.url(), "--json"],
    );
    assert!(online.status.success(), "{online:?}");
    assert!(server.terminate().success());
    let (code, summary) = verify(home, &[]);
    assert_eq!(code, Some(0), "{summary}");

    // Someone with the disk: the single-use grant made usable again, the revocation lifted and
    // the owner changed, each without a record.
    edit_entry(home, "approvals", &id, |e| e["uses"] = 0.into());
    edit_entry(home, "revocations", &revocation, |e| {
        e["liftedAt"] = 1.into();
        e["liftedBy"] = "mallory@example.com".into();
    });
    edit_entry(home, "revocations", "sa:svc-reports", |e| {
        e["owner"] = "mallory@example.com".into()
    });
    let (code, summary) = verify(home, &[]);
    assert_eq!(code, Some(1), "{summary}");
    let problems = summary["problems"].to_string();
    for wanted in [
        format!("approval {id} is approved (uses 0"),
        format!("revocation {revocation} is sub=carol@example.com lifted"),
        "service account svc-reports is owned by Some(\\\"mallory@example.com\\\")".to_owned(),
    ] {
        assert!(problems.contains(&wanted), "{wanted:?} not in {summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_larger_than_a_chunk_streams_from_the_server_and_from_the_store() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;
    // About 2.5 MiB of records: more than two of the server's 1 MiB export chunks.
    let padding = "x".repeat(1000);
    for n in 0..2500 {
        client
            .append(pb::AppendRequest {
                record_json: json!({"event": "test.bulk", "n": n, "padding": padding})
                    .to_string()
                    .into_bytes(),
                session: None,
            })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let over_grpc = dir.path().join("grpc.json");
    let url = server.url();
    let out = tollgate(
        home.path(),
        &[
            "audit",
            "export",
            "--server",
            &url,
            "--out",
            over_grpc.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exported 2501 records"),
        "{out:?}"
    );
    assert!(std::fs::metadata(&over_grpc).unwrap().len() > 2 << 20);
    assert!(server.terminate().success());
    let from_store = dir.path().join("store.json");
    let out = tollgate(
        home.path(),
        &[
            "audit",
            "export",
            "--direct",
            "--out",
            from_store.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let vkeys = home.path().join("keys/checkpoint.vkeys");
    for bundle in [&over_grpc, &from_store] {
        let (code, summary) = verify_bundle(bundle, &["--key", vkeys.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{summary}");
        assert_eq!(summary["intact"], true, "{summary}");
        let (code, summary) = verify_bundle(bundle, &[]);
        assert_eq!(code, Some(2), "{summary}");
        assert_eq!(summary["status"], "unauthenticated", "{summary}");
    }
}
