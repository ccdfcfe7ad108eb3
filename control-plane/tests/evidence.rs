//! Evidence an assessor can trust without trusting us (issue #17): the attacks an insider with
//! the store, a copy of an old signing key, or an export bundle in hand could try, each run
//! against both verifiers an assessor has (`tollgate audit verify --bundle` and the standalone
//! `tollgate-verify`) with the exit code and the reason the assessor must get.
//!
//! One log is built for the whole suite through real processes: a few hundred records from
//! concurrent writers, a card number the control plane masked, a key rotation in the middle
//! (the old private key copied first: the attacker has it), exports at different times (one
//! filtered by subject, the last one from the stopped store), and the checkpoint an auditor
//! kept after verifying one of them.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::bundle::{self, Bundle, Entry};
use common::{append_concurrently, tollgate, Server};
use serde_json::{json, Value};
use tollgate_log::note::{Checkpoint, NoteSigner};
use tollgate_proto::pb;

/// A test card number: sent in records, masked by the control plane, restored by forgers.
/// No verifier may ever print it.
const TEST_PAN: &str = "4111111111111111";
/// How the control plane stores it.
const MASKED_PAN: &str = "************1111";
const SERVE: [&str; 2] = ["--checkpoint-every", "10"];

/// The shared log, stopped, and what was taken from it.
struct Log {
    home: PathBuf,
    /// The home as it was before the rotation: what a roll-back restores.
    early: PathBuf,
    /// The log's published verifier keys (both of them): what the assessor pins.
    vkeys: PathBuf,
    /// The first private key, copied before the rotation retired it.
    stolen: PathBuf,
    /// Seq of the `controlPlane.keyRotated` record.
    rotation: u64,
    /// Seqs of the masked card records: one before the rotation, one after export `b`.
    card_early: u64,
    card_late: u64,
    /// Full export before the rotation.
    a: PathBuf,
    /// Full export after the rotation, and the checkpoint the auditor kept from it.
    b: PathBuf,
    saved_b: PathBuf,
    /// `--sub writer1@example.com`, right after `b`.
    c: PathBuf,
    /// `--sub rare@example.com` (three records, long skips), later.
    r: PathBuf,
    /// Full export from the stopped store, last.
    e: PathBuf,
}

impl Log {
    fn key(&self) -> &str {
        self.vkeys.to_str().unwrap()
    }

    fn stolen_key(&self) -> NoteSigner {
        NoteSigner::parse(&std::fs::read_to_string(&self.stolen).unwrap()).unwrap()
    }

    fn current_key(&self) -> NoteSigner {
        let text = std::fs::read_to_string(self.home.join("keys/checkpoint.key")).unwrap();
        NoteSigner::parse(&text).unwrap()
    }

    /// `receivedAt` of the rotation: from then on the first key signs nothing.
    fn rotated_at(&self) -> String {
        let e = Bundle::load(&self.e);
        e.record_value(self.rotation)["receivedAt"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    // On a thread of its own: an async test may be the first to ask, inside its runtime.
    LOG.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(build_log())
        })
        .join()
        .expect("the shared log was built")
    })
}

/// Where the shared log lives. A static is never dropped, so a temporary directory would
/// outlive the run; each run removes what earlier runs left instead, unless they still run.
fn fixture_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("evidence-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn card_record(n: u64) -> Vec<u8> {
    json!({
        "event": "mcp.request",
        "sub": "carol@example.com",
        "route": "/mcp",
        "session": "session-card",
        "messages": [{"kind": "request", "id": n, "method": "tools/call",
                      "target": "refund_payment", "arguments": {"card": TEST_PAN}}],
        "decision": "allow"
    })
    .to_string()
    .into_bytes()
}

fn rare_record(n: u64) -> Vec<u8> {
    json!({"event": "mcp.request", "sub": "rare@example.com", "route": "/mcp", "n": n,
           "decision": "allow"})
    .to_string()
    .into_bytes()
}

async fn append(server: &Server, record: Vec<u8>) -> u64 {
    server
        .client()
        .await
        .append(pb::AppendRequest {
            record_json: record,
            session: None,
        })
        .await
        .unwrap()
        .into_inner()
        .seq
}

/// What [`export`] takes for "the store under the home, directly".
const DIRECT: &str = "--direct";

fn export(home: &Path, server: &str, out: &Path, filter: &[&str]) {
    let mut args = vec!["audit", "export"];
    if server == DIRECT {
        args.push(DIRECT);
    } else {
        args.extend(["--server", server]);
    }
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(filter);
    let output = tollgate(home, &args);
    assert!(output.status.success(), "{output:?}");
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

async fn build_log() -> Log {
    let dir = fixture_dir();
    let home = dir.join("home");
    let bundle = |name: &str| dir.join(name);

    let server = Server::start_with(&home, &SERVE);
    append_concurrently(&server, 3, 40).await;
    let card_early = append(&server, card_record(1)).await;
    append(&server, rare_record(1)).await;
    export(&home, &server.url(), &bundle("a.json"), &[]);
    assert!(server.terminate().success());
    let early = dir.join("early");
    copy_dir(&home, &early);
    let stolen = dir.join("stolen.key");
    std::fs::copy(home.join("keys/checkpoint.key"), &stolen).unwrap();

    let server = Server::start_with(&home, &SERVE);
    append_concurrently(&server, 3, 30).await;
    append(&server, rare_record(2)).await;
    let rotate = tollgate(&home, &["keys", "rotate", "--server", &server.url()]);
    assert!(rotate.status.success(), "{rotate:?}");
    let rotation = String::from_utf8_lossy(&rotate.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("recorded as record "))
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .expect("the rotation's record");
    append_concurrently(&server, 3, 30).await;
    export(&home, &server.url(), &bundle("b.json"), &[]);
    export(
        &home,
        &server.url(),
        &bundle("c.json"),
        &["--sub", "writer1@example.com"],
    );
    let vkeys = home.join("keys/checkpoint.vkeys");
    let saved_b = dir.join("saved-b.checkpoint");
    let kept = Command::new(verifier())
        .arg(bundle("b.json"))
        .args(["--key", vkeys.to_str().unwrap()])
        .args(["--save-checkpoint", saved_b.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(kept.status.success(), "{kept:?}");
    append_concurrently(&server, 3, 10).await;
    let card_late = append(&server, card_record(2)).await;
    append(&server, rare_record(3)).await;
    export(
        &home,
        &server.url(),
        &bundle("r.json"),
        &["--sub", "rare@example.com"],
    );
    assert!(server.terminate().success());
    export(&home, DIRECT, &bundle("e.json"), &[]);

    Log {
        early,
        vkeys,
        stolen,
        rotation,
        card_early,
        card_late,
        a: bundle("a.json"),
        b: bundle("b.json"),
        saved_b,
        c: bundle("c.json"),
        r: bundle("r.json"),
        e: bundle("e.json"),
        home,
    }
}

/// The standalone verifier, built beside `tollgate`.
fn verifier() -> PathBuf {
    let path = Path::new(common::BIN).with_file_name("tollgate-verify");
    if !path.exists() {
        panic!(
            "{} is missing: build it: cargo build -p tollgate-log",
            path.display()
        );
    }
    path
}

/// What one verifier said.
struct Verdict {
    tool: &'static str,
    code: Option<i32>,
    json: Value,
    output: Output,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited {:?}: {}{}",
            self.tool,
            self.code,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

impl Verdict {
    /// Every problem named, one per line.
    fn problems(&self) -> String {
        self.json["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["problem"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs both verifiers on `bundle` with `flags` (and `--json`).
fn verify(attack: &str, bundle: &Path, flags: &[&str]) -> [Verdict; 2] {
    eprintln!("attack: {attack}");
    // No store and no server: an empty home.
    let nowhere = tempfile::tempdir().unwrap();
    let path = bundle.to_str().unwrap();
    let mut args = vec!["audit", "verify", "--bundle", path, "--json"];
    args.extend_from_slice(flags);
    let built_in = tollgate(nowhere.path(), &args);
    let standalone = Command::new(verifier())
        .arg(path)
        .arg("--json")
        .args(flags)
        .output()
        .unwrap();
    [
        ("tollgate audit verify --bundle", built_in),
        ("tollgate-verify", standalone),
    ]
    .map(|(tool, output)| {
        let text = [&output.stdout[..], &output.stderr[..]].concat();
        assert!(
            !String::from_utf8_lossy(&text).contains(TEST_PAN),
            "{attack}: {tool} printed a card number"
        );
        Verdict {
            tool,
            code: output.status.code(),
            json: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
            output,
        }
    })
}

/// Exit 1, "broken", with `reason` among the problems named.
fn broken(attack: &str, bundle: &Path, flags: &[&str], reason: &str) {
    for verdict in verify(attack, bundle, flags) {
        assert_eq!(verdict.code, Some(1), "{attack}: {verdict}");
        assert_eq!(verdict.json["status"], "broken", "{attack}: {verdict}");
        assert_eq!(verdict.json["intact"], false, "{attack}: {verdict}");
        assert!(
            verdict.problems().contains(reason),
            "{attack}: {reason:?} not named by {verdict}"
        );
    }
}

/// Exit 0, "intact"; returns the notes of the first verifier.
fn intact(attack: &str, bundle: &Path, flags: &[&str]) -> Value {
    let verdicts = verify(attack, bundle, flags);
    for verdict in &verdicts {
        assert_eq!(verdict.code, Some(0), "{attack}: {verdict}");
        assert_eq!(verdict.json["status"], "intact", "{attack}: {verdict}");
        assert_eq!(verdict.json["intact"], true, "{attack}: {verdict}");
    }
    verdicts[0].json.clone()
}

/// Exit 2, "unauthenticated": checked, but nothing from outside vouches for it.
fn unauthenticated(attack: &str, bundle: &Path, flags: &[&str]) {
    for verdict in verify(attack, bundle, flags) {
        assert_eq!(verdict.code, Some(2), "{attack}: {verdict}");
        assert_eq!(
            verdict.json["status"], "unauthenticated",
            "{attack}: {verdict}"
        );
        assert_eq!(verdict.json["intact"], false, "{attack}: {verdict}");
        assert!(
            verdict.json["unauthenticated"]
                .as_str()
                .unwrap()
                .contains("--key FILE"),
            "{attack}: {verdict}"
        );
    }
}

/// Not evidence at all: exit 1 or 2, never 0, never "intact".
fn refused(attack: &str, bundle: &Path, flags: &[&str]) {
    for verdict in verify(attack, bundle, flags) {
        assert!(matches!(verdict.code, Some(1 | 2)), "{attack}: {verdict}");
        assert_ne!(verdict.json["intact"], true, "{attack}: {verdict}");
    }
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn save(dir: &Path, name: &str, bundle: &Bundle) -> PathBuf {
    write(dir, name, bundle.to_bytes())
}

/// `text` with its first `from` replaced, which must be there.
fn replace_once(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

/// The verifier key line of `signer`, in a file.
fn key_file(dir: &Path, name: &str, signer: &NoteSigner) -> PathBuf {
    write(dir, name, format!("{}\n", signer.verifier().encode()))
}

#[test]
fn genuine_exports_verify_against_pinned_keys_only() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let e = Bundle::load(&log.e);
    let origin = e.checkpoint().origin;
    // Another key under the log's own name: what a forger would sign with.
    let impostor = key_file(
        dir.path(),
        "impostor.vkey",
        &NoteSigner::generate(&origin).unwrap(),
    );
    for path in [&log.a, &log.b, &log.c, &log.r, &log.e] {
        let name = path.file_name().unwrap().to_str().unwrap();
        let bundle = Bundle::load(path);
        let export = bundle.record_value(bundle.export_seq());
        assert_eq!(export["event"], "controlPlane.auditExport");
        let summary = intact(&format!("{name} as exported"), path, &["--key", log.key()]);
        assert_eq!(summary["records"], export["records"], "{name}");
        assert_eq!(summary["latestCheckpoint"]["size"], bundle.size(), "{name}");
        unauthenticated(&format!("{name} with no pinned key"), path, &[]);
        broken(
            &format!("{name} against another key of the same name"),
            path,
            &["--key", impostor.to_str().unwrap()],
            "is not signed by a pinned log key",
        );
    }
    let c = Bundle::load(&log.c);
    assert_eq!(c.header["filter"], json!({"sub": "writer1@example.com"}));
    assert!(c.entries.iter().any(|e| matches!(e, Entry::Skip { .. })));
    assert!(
        matches!(
            &c.entries[c.index_of(log.rotation)],
            Entry::Record { context: true, .. }
        ),
        "the rotation travels as context"
    );
    assert!(e
        .record(log.card_early)
        .windows(16)
        .any(|w| w == MASKED_PAN.as_bytes()));
    assert_eq!(e.record_value(e.export_seq())["via"], "store");
    assert_eq!(e.key_records(), [log.rotation]);

    // A checkpoint kept at any earlier size of the log agrees with the latest export.
    let mut flags = vec!["--key".to_owned(), log.key().to_owned()];
    for (i, note) in e.earlier().iter().enumerate() {
        let path = write(dir.path(), &format!("seen-{i}.checkpoint"), note);
        flags.extend(["--checkpoint".to_owned(), path.display().to_string()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    intact(
        "the latest export against every earlier checkpoint",
        &log.e,
        &flags,
    );
}

#[test]
fn truncation_by_an_earlier_export_is_caught() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = ["--key", log.key()];
    let (a, b) = (Bundle::load(&log.a), Bundle::load(&log.b));
    let a_export = a.entries.last().unwrap().clone();

    // The later bundle ending in the earlier export's record, at the later seq.
    let mut edited = b.clone();
    let Entry::Record {
        leaf_hash, record, ..
    } = a_export.clone()
    else {
        panic!("a bundle ends with its export record")
    };
    if let Some(Entry::Record {
        leaf_hash: l,
        record: r,
        ..
    }) = edited.entries.last_mut()
    {
        (*l, *r) = (leaf_hash, record);
    }
    let path = save(dir, "earlier-export-record.json", &edited);
    broken(
        "an earlier export record at the end",
        &path,
        &key,
        "do not rebuild the root",
    );
    broken(
        "an earlier export record at the end",
        &path,
        &key,
        "export record",
    );

    // ...and at its own seq.
    let mut edited = b.clone();
    *edited.entries.last_mut().unwrap() = a_export;
    let path = save(dir, "earlier-export-entry.json", &edited);
    broken(
        "an earlier export's entry at the end",
        &path,
        &key,
        "stands where leaf",
    );

    // The later checkpoint over the earlier bundle's records: the tail cut off.
    let mut edited = b.clone();
    edited.entries = a.entries.clone();
    let path = save(dir, "cut-tail.json", &edited);
    broken(
        "the later checkpoint over fewer records",
        &path,
        &key,
        "removed from the end",
    );

    // The earlier bundle whole, to an auditor who saw the later checkpoint.
    let saved = log.saved_b.to_str().unwrap();
    for seen in [saved, log.b.to_str().unwrap()] {
        broken(
            "an earlier bundle after a later checkpoint was seen",
            &log.a,
            &["--key", log.key(), "--checkpoint", seen],
            "older than what was seen before (stale",
        );
        let summary = intact(
            "an earlier bundle asked for on purpose",
            &log.a,
            &["--key", log.key(), "--checkpoint", seen, "--accept-older"],
        );
        assert!(
            summary["notes"][0]
                .as_str()
                .unwrap()
                .contains("accepted on request, and consistency with it is not proven"),
            "{summary}"
        );
    }
    broken(
        "export b after export e was seen",
        &log.b,
        &["--key", log.key(), "--checkpoint", log.e.to_str().unwrap()],
        "older than what was seen before",
    );

    // Against each checkpoint of the log: older than those after it, consistent with the rest.
    let size = a.size();
    for (i, note) in Bundle::load(&log.e).earlier().iter().enumerate() {
        let seen = write(dir, &format!("seen-{i}.checkpoint"), note);
        let flags = ["--key", log.key(), "--checkpoint", seen.to_str().unwrap()];
        let at = bundle::parse_checkpoint(note).size;
        let attack = format!("export a ({size} records) after a checkpoint of {at}");
        if at > size {
            broken(&attack, &log.a, &flags, "older than what was seen before");
        } else {
            intact(&attack, &log.a, &flags);
        }
    }
}

/// The forgery of the card number: restored in the early card record, every hash and the
/// export record recomputed; `sign` then signs the checkpoints.
fn forged(log: &Log, sign: impl FnOnce(&mut Bundle)) -> Bundle {
    let mut forged = Bundle::load(&log.e);
    let record = replace_once(forged.record(log.card_early), MASKED_PAN, TEST_PAN);
    forged.set_record(log.card_early, record);
    forged.restate_export();
    sign(&mut forged);
    forged
}

#[test]
fn a_bundle_forged_end_to_end_is_never_intact() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let origin = Bundle::load(&log.e).checkpoint().origin;
    let forger = NoteSigner::generate(&origin).unwrap();
    let key = ["--key", log.key()];

    // The forgery is sound: signed with the log's own keys, it passes. What fails below fails
    // for the key alone.
    let (first, current) = (log.stolen_key(), log.current_key());
    let control = forged(log, |b| {
        b.resign_earlier(|c| {
            Some(if c.size <= log.rotation {
                &first
            } else {
                &current
            })
        });
        b.resign_latest(&current, None);
    });
    intact(
        "the same forgery with the log's own keys",
        &save(dir, "control.json", &control),
        &key,
    );

    let forgery = forged(log, |b| {
        b.resign_earlier(|_| Some(&forger));
        b.resign_latest(&forger, None);
    });
    let path = save(dir, "forged.json", &forgery);
    broken(
        "forged with a fresh key",
        &path,
        &key,
        "is not signed by a pinned log key",
    );
    unauthenticated("forged with a fresh key, nothing pinned", &path, &[]);
    // Even with the forger's key added to the pinned list, the chain's rotation decides.
    let forger_key = key_file(dir, "forger.vkey", &forger);
    broken(
        "forged, the forger's key pinned beside the log's",
        &path,
        &["--key", log.key(), "--key", forger_key.to_str().unwrap()],
        "not by the key the rotation at record",
    );

    // The forger's keys carried in the bundle are never read.
    let mut carried = forgery.clone();
    carried
        .header
        .insert("keys".into(), json!([forger.verifier().encode()]));
    let path = save(dir, "forged-keys.json", &carried);
    broken(
        "forged, carrying its key",
        &path,
        &key,
        "\"keys\" member is unknown",
    );
    broken(
        "forged, carrying its key, nothing pinned",
        &path,
        &[],
        "\"keys\" member is unknown",
    );

    // The forger's signature appended to the log's own signature line.
    let original = Bundle::load(&log.e).note();
    let real_line = &original[original.rfind("\n\n").unwrap() + 2..];
    let mut both = forgery.clone();
    let note = format!("{}{real_line}", forgery.note());
    both.header.insert("checkpoint".into(), note.into());
    let path = save(dir, "forged-both-signatures.json", &both);
    broken(
        "forged, the log's signature kept beside the forger's",
        &path,
        &key,
        "has a bad signature",
    );
    broken(
        "forged, the log's signature kept beside the forger's, forger pinned too",
        &path,
        &["--key", log.key(), "--key", forger_key.to_str().unwrap()],
        "has a bad signature",
    );
}

async fn log_size(server: &Server) -> u64 {
    server
        .reader()
        .await
        .log_info(pb::LogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_and_forked_log_is_caught_against_a_checkpoint_of_any_size() {
    let log = log();
    let b = Bundle::load(&log.b);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    copy_dir(&log.early, &home);

    // The store rolled back to its copy from before the rotation, grown with other records to
    // the size the auditor saw, and beyond.
    let server = Server::start_with(&home, &SERVE);
    let mut client = server.client().await;
    let rolled_back = log_size(&server).await;
    assert!(rolled_back < b.size() - 1, "{rolled_back}");
    for n in rolled_back..b.size() - 1 {
        client
            .append(pb::AppendRequest {
                record_json: format!(r#"{{"event":"other","n":{n}}}"#).into_bytes(),
                session: None,
            })
            .await
            .unwrap();
    }
    let same_size = dir.path().join("fork-same-size.json");
    export(&home, &server.url(), &same_size, &[]);
    for n in 0..40 {
        client
            .append(pb::AppendRequest {
                record_json: format!(r#"{{"event":"other","m":{n}}}"#).into_bytes(),
                session: None,
            })
            .await
            .unwrap();
    }
    let larger = dir.path().join("fork-larger.json");
    export(&home, &server.url(), &larger, &[]);
    assert!(server.terminate().success());
    assert_eq!(Bundle::load(&same_size).size(), b.size(), "the fork's size");
    let fork = Bundle::load(&larger);
    assert!(fork.size() > Bundle::load(&log.e).size());

    // Each verifies alone: signed by a key of the log, consistent in itself.
    intact("the fork alone", &larger, &["--key", log.key()]);
    let saved = log.saved_b.to_str().unwrap();
    for seen in [saved, log.b.to_str().unwrap()] {
        broken(
            "a fork of the size seen",
            &same_size,
            &["--key", log.key(), "--checkpoint", seen],
            "both sign",
        );
        broken(
            "a larger fork",
            &larger,
            &["--key", log.key(), "--checkpoint", seen],
            "the log was forked",
        );
    }
    // Against every checkpoint the real log signed: the shared prefix agrees, nothing after.
    let (mut shared, mut after) = (0, 0);
    for (i, note) in Bundle::load(&log.e).earlier().iter().enumerate() {
        let seen = write(dir.path(), &format!("seen-{i}.checkpoint"), note);
        let flags = ["--key", log.key(), "--checkpoint", seen.to_str().unwrap()];
        let at = bundle::parse_checkpoint(note).size;
        let attack = format!("a fork after {rolled_back} records against a checkpoint of {at}");
        if at < rolled_back {
            intact(&attack, &larger, &flags);
            shared += 1;
        } else {
            broken(&attack, &larger, &flags, "the log was forked");
            after += 1;
        }
    }
    assert!(shared > 0 && after > 0, "{shared} {after}");
}

/// Whether leaving the checkpoint of `size` out of `bundle` would change how its skips are
/// covered: `size` falls inside a skip, and the cover without the split does not stop there.
fn merged_over(bundle: &Bundle, size: u64) -> bool {
    let mut without = bundle.splits();
    without.remove(&size);
    let mut at = 0;
    for entry in &bundle.entries {
        match entry {
            Entry::Record { seq, .. } => at = seq + 1,
            Entry::Skip { skip, .. } => {
                let end = at + skip;
                if at < size && size < end {
                    let mut edge = at;
                    return tollgate_log::bundle::gap_cover(at, end, &without)
                        .into_iter()
                        .all(|(level, _)| {
                            edge += 1 << level;
                            edge != size
                        });
                }
                at = end;
            }
        }
    }
    false
}

#[test]
fn dropped_or_reordered_checkpoints_are_caught() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = ["--key", log.key()];

    // A checkpoint the auditor kept, dropped from a filtered bundle whose skips the attacker
    // merged over its size: nothing in the bundle stops at that size any more.
    let r = Bundle::load(&log.r);
    let note = r
        .earlier()
        .into_iter()
        .find(|n| merged_over(&r, bundle::parse_checkpoint(n).size))
        .expect("a checkpoint inside a skip of the rare subject's export");
    let dropped = bundle::parse_checkpoint(&note).size;
    let seen = write(dir, "seen.checkpoint", &note);
    let seen_flags = ["--key", log.key(), "--checkpoint", seen.to_str().unwrap()];
    intact("the filtered bundle as exported", &log.r, &seen_flags);
    let mut merged = r.clone();
    merged.rebuild(&BTreeSet::new(), |c| c.size != dropped);
    let path = save(dir, "dropped-merged.json", &merged);
    // A bundle that proves less, but nothing false: intact until a checkpoint needs it.
    intact("a checkpoint dropped, skips merged", &path, &key);
    broken(
        "a kept checkpoint dropped, skips merged",
        &path,
        &seen_flags,
        "cannot be checked",
    );
    let mut naive = r.clone();
    naive.set_earlier(
        r.earlier()
            .into_iter()
            .filter(|n| bundle::parse_checkpoint(n).size != dropped)
            .collect(),
    );
    let path = save(dir, "dropped.json", &naive);
    broken("a checkpoint dropped", &path, &key, "subtrees: altered");

    // Any earlier checkpoint dropped where the skips split for it. (Where they would split
    // there anyway, the bundle is the same without it: it proves no less.)
    let c = Bundle::load(&log.c);
    let sizes: Vec<u64> = c
        .splits()
        .into_iter()
        .filter(|s| merged_over(&c, *s))
        .collect();
    assert!(!sizes.is_empty());
    for size in sizes {
        let mut edited = c.clone();
        edited.set_earlier(
            c.earlier()
                .into_iter()
                .filter(|n| bundle::parse_checkpoint(n).size != size)
                .collect(),
        );
        let path = save(dir, &format!("c-without-{size}.json"), &edited);
        broken(
            &format!("the checkpoint of {size} dropped"),
            &path,
            &key,
            "altered",
        );
    }

    // In a bundle that holds every record, a kept checkpoint left out of the list is still
    // checked against the leaves, which rebuild its root.
    let e = Bundle::load(&log.e);
    let mut edited = e.clone();
    edited.set_earlier(
        e.earlier()
            .into_iter()
            .filter(|n| bundle::parse_checkpoint(n).size != dropped)
            .collect(),
    );
    let path = save(dir, "e-without-kept.json", &edited);
    intact(
        "a kept checkpoint left out of a whole bundle",
        &path,
        &seen_flags,
    );

    // Checkpoints reordered.
    let mut edited = e.clone();
    let mut notes = e.earlier();
    let middle = notes.len() / 2;
    notes.swap(middle, middle + 1);
    edited.set_earlier(notes);
    let path = save(dir, "reordered.json", &edited);
    broken(
        "two checkpoints swapped",
        &path,
        &key,
        "checkpoints reordered",
    );
    let mut edited = e.clone();
    let mut notes = e.earlier();
    notes.reverse();
    edited.set_earlier(notes);
    let path = save(dir, "reversed.json", &edited);
    broken("checkpoints reversed", &path, &key, "checkpoints reordered");
}

#[test]
fn a_stolen_retired_key_signs_nothing_after_its_rotation() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = ["--key", log.key()];
    let stolen = log.stolen_key();
    let e = Bundle::load(&log.e);

    // The bundle's own checkpoint, signed again with the retired key.
    let mut edited = Bundle::load(&log.b);
    let body = bundle::body(&edited.note()).to_owned();
    edited
        .header
        .insert("checkpoint".into(), stolen.sign(&body).into());
    let path = save(dir, "latest-by-retired-key.json", &edited);
    broken(
        "the checkpoint signed by the retired key",
        &path,
        &key,
        "a retired key's signature",
    );

    // An earlier checkpoint over the rotation.
    let mut edited = e.clone();
    let mut notes = e.earlier();
    let over = notes
        .iter()
        .position(|n| bundle::parse_checkpoint(n).size > log.rotation)
        .unwrap();
    notes[over] = stolen.sign(bundle::body(&notes[over]));
    edited.set_earlier(notes);
    let path = save(dir, "earlier-by-retired-key.json", &edited);
    broken(
        "an earlier checkpoint over the rotation",
        &path,
        &key,
        "a retired key's signature",
    );

    // One of its own sizes, dated after the rotation.
    let rotated_at = log.rotated_at();
    let later_than = |a: &str, b: &str| {
        humantime::parse_rfc3339(a).unwrap() > humantime::parse_rfc3339(b).unwrap()
    };
    let mut edited = e.clone();
    let mut notes = e.earlier();
    let before = notes
        .iter()
        .rposition(|n| bundle::parse_checkpoint(n).size <= log.rotation)
        .unwrap();
    let time = notes[before + 1..]
        .iter()
        .map(|n| bundle::parse_checkpoint(n).time)
        .find(|t| later_than(t, &rotated_at))
        .unwrap();
    let mut checkpoint = bundle::parse_checkpoint(&notes[before]);
    checkpoint.time = time;
    notes[before] = stolen.sign(&checkpoint.text());
    edited.set_earlier(notes);
    let path = save(dir, "redated-by-retired-key.json", &edited);
    broken(
        "a checkpoint of the old key's dated after the rotation",
        &path,
        &key,
        "a retired key's signature",
    );

    // The late card number restored, signed with the retired key: the rotation in the
    // bundle retires it.
    let mut edited = e.clone();
    let record = replace_once(edited.record(log.card_late), MASKED_PAN, TEST_PAN);
    edited.set_record(log.card_late, record);
    edited.restate_export();
    edited.resign_earlier(|c| (c.size > log.card_late).then_some(&stolen));
    edited.resign_latest(&stolen, None);
    let path = save(dir, "forged-by-retired-key.json", &edited);
    broken(
        "a record forged and signed with the retired key",
        &path,
        &key,
        "a retired key's signature",
    );

    // The rotation left out: its entry a skip of its leaf hash, its seq dropped from the list.
    let mut edited = e.clone();
    edited.rebuild(&BTreeSet::from([log.rotation]), |_| true);
    edited.header.insert("keyRecords".into(), json!([]));
    assert!(!edited.has_record(log.rotation));
    let path = save(dir, "rotation-left-out.json", &edited);
    broken(
        "the rotation left out",
        &path,
        &key,
        "a rotation was left out or added",
    );
    // Left out of the list only, or only as an entry.
    let mut edited = e.clone();
    edited.header.insert("keyRecords".into(), json!([]));
    let path = save(dir, "rotation-unlisted.json", &edited);
    broken(
        "the rotation unlisted",
        &path,
        &key,
        "a rotation was left out or added",
    );
    let mut edited = e.clone();
    edited.rebuild(&BTreeSet::from([log.rotation]), |_| true);
    let path = save(dir, "rotation-skipped.json", &edited);
    broken(
        "the rotation skipped",
        &path,
        &key,
        "a rotation was left out or added",
    );
}

/// The assessor pins both keys (the old checkpoints need the old one). The thief of the old
/// key leaves the rotation out of a bundle and of its export record and signs the export
/// again: the bundle then shows no rotation, and the verifier lets any pinned key sign a log
/// without one, although the new key signed checkpoints of it (listed, or kept by the
/// assessor) that only a rotation could have put in effect. Fails until the verifier holds
/// every signer it sees, saved checkpoints included, to the rotations the bundle shows.
#[test]
fn a_stolen_retired_key_cannot_hide_its_rotation() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let stolen = log.stolen_key();
    let (first, current) = (
        stolen.verifier().label(),
        log.current_key().verifier().label(),
    );
    // Both cases run before the test fails, so that it names every one that passed.
    let mut missed = Vec::new();
    let mut names_a_key = |attack: &str, path: &Path, flags: &[&str]| {
        for verdict in verify(attack, path, flags) {
            let problems = verdict.problems();
            if verdict.code != Some(1)
                || !(problems.contains(&first) || problems.contains(&current))
            {
                missed.push(format!("{attack}: {verdict}"));
            }
        }
    };
    let hide_rotation = |bundle: &mut Bundle, keep: &dyn Fn(&Checkpoint) -> bool| {
        bundle.rebuild(&BTreeSet::from([log.rotation]), keep);
        bundle.header.insert("keyRecords".into(), json!([]));
        bundle.restate_export();
        bundle.resign_latest(&stolen, None);
    };

    // Nothing else changed: the checkpoints the new key signed stay in the list.
    let mut edited = Bundle::load(&log.e);
    hide_rotation(&mut edited, &|_| true);
    let path = save(dir, "hidden-rotation.json", &edited);
    names_a_key(
        "the rotation hidden, the export re-signed by the retired key",
        &path,
        &["--key", log.key()],
    );

    // A record after the checkpoint the auditor kept forged, every checkpoint of the new key
    // dropped: the kept one was signed by the new key, at a size the bundle says the old key
    // still signed.
    let mut edited = Bundle::load(&log.e);
    let record = replace_once(edited.record(log.card_late), MASKED_PAN, TEST_PAN);
    edited.set_record(log.card_late, record);
    hide_rotation(&mut edited, &|c| c.size <= log.rotation);
    let path = save(dir, "hidden-rotation-forged.json", &edited);
    names_a_key(
        "the rotation hidden, a record forged after the kept checkpoint",
        &path,
        &[
            "--key",
            log.key(),
            "--checkpoint",
            log.saved_b.to_str().unwrap(),
        ],
    );
    assert!(
        missed.is_empty(),
        "signed by a retired key that hides its rotation, and not refused:\n{}",
        missed.join("\n")
    );
}

#[test]
fn metadata_outside_the_signature_is_checked_too() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = ["--key", log.key()];
    let (b, c) = (Bundle::load(&log.b), Bundle::load(&log.c));
    let plain = b
        .entries
        .iter()
        .find_map(|e| match e {
            Entry::Record {
                seq,
                record,
                context: false,
                ..
            } if record.windows(18).any(|w| w == b"\"decision\":\"allow\"") => Some(*seq),
            _ => None,
        })
        .unwrap();
    let set = |bundle: &Bundle, name: &str, value: Value| {
        let mut edited = bundle.clone();
        edited.header.insert(name.into(), value);
        edited
    };
    let mut cases: Vec<(&str, Bundle, &str)> = vec![
        (
            "origin",
            set(&b, "origin", "tollgate.example/other".into()),
            "the bundle names log",
        ),
        (
            "chainBefore",
            set(&b, "chainBefore", hex::encode([7u8; 32]).into()),
            "the chain hash was altered",
        ),
        (
            "filter added to a whole export",
            set(&b, "filter", json!({"sub": "writer1@example.com"})),
            "filter differs",
        ),
        (
            "filter changed",
            set(&c, "filter", json!({"sub": "writer2@example.com"})),
            "filter differs",
        ),
        (
            "filter widened",
            set(&c, "filter", json!({})),
            "filter differs",
        ),
        (
            "format",
            set(&b, "format", "tollgate-audit-bundle/3".into()),
            "not a bundle of format",
        ),
        (
            "keyRecords naming a plain record",
            set(&b, "keyRecords", json!([plain, log.rotation])),
            "not one",
        ),
        (
            "keys",
            set(&b, "keys", json!([])),
            "\"keys\" member is unknown",
        ),
    ];
    let mut edited = b.clone();
    if let Entry::Record { leaf_hash, .. } = &mut edited.entries[b.index_of(plain)] {
        *leaf_hash = hex::encode([0u8; 32]);
    }
    cases.push(("leafHash", edited, "does not hash to its leaf hash"));
    let mut edited = b.clone();
    if let Entry::Record { context, .. } = &mut edited.entries[b.index_of(plain)] {
        *context = true;
    }
    cases.push(("a plain record marked context", edited, "marked as context"));
    let mut edited = c.clone();
    if let Entry::Record { context, .. } = &mut edited.entries[c.index_of(log.rotation)] {
        *context = false;
    }
    cases.push((
        "the rotation unmarked as context",
        edited,
        "a record was removed, added or replaced",
    ));
    let mut edited = b.clone();
    if let Some(Entry::Record { context, .. }) = edited.entries.last_mut() {
        *context = false;
    }
    cases.push((
        "the export record unmarked as context",
        edited,
        "a record was removed, added or replaced",
    ));
    let mut edited = b.clone();
    let record = replace_once(
        b.record(plain),
        "\"decision\":\"allow\"",
        "\"decision\":\"allow\",\"decision\":\"deny\"",
    );
    edited.set_record(plain, record);
    cases.push((
        "a member name repeated in a record",
        edited,
        "repeats a member name",
    ));
    let mut edited = b.clone();
    if let Entry::Record { seq, .. } = &mut edited.entries[b.index_of(plain)] {
        *seq += 1;
    }
    cases.push(("a record's seq", edited, "stands where leaf"));
    let mut edited = c.clone();
    let at = c
        .entries
        .iter()
        .position(|e| matches!(e, Entry::Skip { .. }))
        .unwrap();
    if let Entry::Skip { nodes, .. } = &mut edited.entries[at] {
        nodes[0] = hex::encode([9u8; 32]);
    }
    cases.push((
        "a skipped subtree's hash",
        edited,
        "do not rebuild the root",
    ));
    let mut edited = c.clone();
    if let Entry::Skip { skip, .. } = &mut edited.entries[at] {
        *skip += 1;
    }
    cases.push(("a skip's length", edited, "altered"));
    for (attack, bundle, reason) in &cases {
        let path = save(dir, &format!("{}.json", attack.replace(' ', "-")), bundle);
        broken(attack, &path, &key, reason);
    }

    // Edits to the text itself.
    let text = std::fs::read(&log.b).unwrap();
    let end = text.len() - text.iter().rev().position(|b| *b == b']').unwrap() - 1;
    let with_end = |tail: &str| [&text[..end], tail.as_bytes()].concat();
    let entry = format!("{{\"seq\":{plain},");
    let text_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a member repeated",
            replace_once(
                &text,
                "{\"format\"",
                "{\"filter\":{\"sub\":\"x\"},\"format\"",
            ),
            "\"filter\" member is unknown, repeated or malformed",
        ),
        (
            "the checkpoint repeated",
            replace_once(
                &text,
                "{\"format\"",
                &format!(
                    "{{\"checkpoint\":{},\"format\"",
                    json!(Bundle::load(&log.a).note())
                ),
            ),
            "\"checkpoint\" member is unknown, repeated or malformed",
        ),
        (
            "trailing data",
            [&text[..], b"{\"format\":\"tollgate-audit-bundle/2\"}\n"].concat(),
            "data after its end",
        ),
        (
            "a member after the records",
            with_end("],\"origin\":\"tollgate.example/other\"}\n"),
            "after its records",
        ),
        (
            "a second record list",
            with_end("],\"records\":[]}\n"),
            "two record lists",
        ),
        (
            "an unknown member in an entry",
            replace_once(&text, &entry, &format!("{entry}\"note\":\"x\",")),
            "malformed",
        ),
    ];
    for (attack, bytes, reason) in text_cases {
        let path = write(dir, &format!("{}.json", attack.replace(' ', "-")), bytes);
        broken(attack, &path, &key, reason);
        broken(attack, &path, &[], reason);
    }
}

#[test]
fn json_that_is_not_a_bundle_never_verifies() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let b = Bundle::load(&log.b);
    let text = std::fs::read(&log.b).unwrap();
    let mut no_records = b.clone();
    no_records.entries.clear();
    let header_only = {
        let bytes = no_records.to_bytes();
        let at = bytes
            .windows(10)
            .position(|w| w == b"\"records\":")
            .unwrap();
        [&bytes[..at - 1], b"}"].concat()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty file", Vec::new()),
        ("null", b"null".to_vec()),
        ("an array", b"[]".to_vec()),
        ("a string", b"\"bundle\"".to_vec()),
        ("an empty object", b"{}".to_vec()),
        (
            "a format only",
            br#"{"format":"tollgate-audit-bundle/2"}"#.to_vec(),
        ),
        ("records only", br#"{"records":[]}"#.to_vec()),
        (
            "format 1",
            br#"{"format":"tollgate-audit-bundle/1","records":[],"export":{}}"#.to_vec(),
        ),
        ("a header without records", header_only),
        ("no record entries", no_records.to_bytes()),
        ("cut in half", text[..text.len() / 2].to_vec()),
        ("the signed checkpoint alone", b.note().into_bytes()),
        (
            "a JSON line of records",
            b.records().next().unwrap().1.to_vec(),
        ),
    ];
    for (attack, bytes) in cases {
        let path = write(dir, &format!("{}.json", attack.replace(' ', "-")), bytes);
        refused(attack, &path, &["--key", log.key()]);
        refused(attack, &path, &[]);
    }
}

#[test]
fn the_live_log_refuses_checkpoints_signed_by_a_retired_key() {
    let log = log();
    let stolen = log.stolen_key();
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let live = |home: &Path| {
        let output = tollgate(home, &["audit", "verify", "--direct", "--json"]);
        let summary: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("verify printed no json: {output:?}"));
        (output.status.code(), summary)
    };
    // Inserts after the last checkpoint one the thief signed: `pick` chooses which body.
    let attack = |pick: &dyn Fn(&[Checkpoint]) -> Checkpoint| {
        let home = tempfile::tempdir().unwrap();
        copy_dir(&log.home, home.path());
        let db = sled::Config::new()
            .path(home.path().join("audit.sled"))
            .use_compression(false)
            .open()
            .unwrap();
        let tree = db.open_tree("checkpoints").unwrap();
        let stored: Vec<Checkpoint> = tree
            .iter()
            .values()
            .map(|v| bundle::parse_checkpoint(std::str::from_utf8(&v.unwrap()).unwrap()))
            .collect();
        let (last, _) = tree.last().unwrap().unwrap();
        let number = u64::from_be_bytes(last.as_ref().try_into().unwrap()) + 1;
        let mut checkpoint = pick(&stored);
        checkpoint.time = now.clone();
        tree.insert(
            number.to_be_bytes(),
            stolen.sign(&checkpoint.text()).as_bytes(),
        )
        .unwrap();
        db.flush().unwrap();
        drop(db);
        home
    };

    let home = tempfile::tempdir().unwrap();
    copy_dir(&log.home, home.path());
    let (code, summary) = live(home.path());
    assert_eq!(code, Some(0), "{summary}");

    let over_the_rotation = attack(&|stored| stored.last().unwrap().clone());
    let before_the_rotation = attack(&|stored| {
        stored
            .iter()
            .rfind(|c| c.size <= log.rotation)
            .unwrap()
            .clone()
    });
    for (name, home) in [
        (
            "the latest checkpoint signed again by the retired key",
            over_the_rotation,
        ),
        (
            "an old size signed again by the retired key, dated now",
            before_the_rotation,
        ),
    ] {
        let (code, summary) = live(home.path());
        assert_eq!(code, Some(1), "{name}: {summary}");
        assert_eq!(summary["intact"], false, "{name}: {summary}");
        assert!(
            summary["problems"]
                .to_string()
                .contains("a retired key's signature"),
            "{name}: {summary}"
        );
    }
}
