//! Witnesses end to end, with the real binaries: a control plane whose witness policy names two
//! witnesses, one of them never started, and a quorum of one. Its checkpoints are published
//! (file and `GET /checkpoint`) cosigned by the live witness; that witness refuses a rollback
//! and forks shown to it directly, with C2SP tlog-witness's status codes, and keeps cosigning
//! the honest log afterwards. An export's bundle carries the cosignatures, and a policy that
//! asks for more than it has fails it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{record, stdout, tollgate, Server, BIN};
use tollgate_log::chain::Hash;
use tollgate_log::merkle::{self, Frontier, NodeSource};
use tollgate_log::note::{Checkpoint, NoteSigner};
use tollgate_log::policy::{Policy, Satisfied};
use tollgate_proto::pb;

const ORIGIN: &str = "tollgate.test/witnessed";
/// Nothing listens there: the witness that is down.
const DOWN: &str = "http://127.0.0.1:1";

/// A running `tollgate witness serve`; killed when dropped.
struct WitnessProcess {
    child: Child,
    address: String,
    _stdout: BufReader<ChildStdout>,
}

impl WitnessProcess {
    fn start(home: &Path, name: &str, log_vkey: &str) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "witness",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
            ])
            .args(["--log", log_vkey])
            .env("TOLLGATE_HOME", home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tollgate witness serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            stdout
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("tollgate witness serve did not print its readiness line");
        };
        let address = line
            .trim_end()
            .strip_prefix("tollgate witness listening on ")
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
            .to_string();
        Self {
            child,
            address,
            _stdout: reader.join().unwrap(),
        }
    }

    /// POST /add-checkpoint: (status, content type, body).
    fn add_checkpoint(&self, old: u64, proof: &[Hash], note: &str) -> (u16, String, String) {
        let mut body = format!("old {old}\n");
        for hash in proof {
            body.push_str(&STANDARD.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(note);
        http(&self.address, "POST", "/add-checkpoint", &body)
    }

    /// The size the witness last cosigned, from the 409 it answers to `old 0` with `note`.
    fn size(&self, note: &str) -> u64 {
        let (status, content_type, body) = self.add_checkpoint(0, &[], note);
        assert_eq!(status, 409, "{body}");
        assert_eq!(content_type, "text/x.tlog.size");
        body.strip_suffix('\n').unwrap().parse().unwrap()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange on a new connection: (status, content type, body).
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The control plane's checkpoint key, made before its first start so that the witnesses can be
/// told about it first (the store adopts a key already in `keys/`).
fn install_log_key(home: &Path) -> NoteSigner {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let keys = home.join("keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&keys)
        .unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let key = keys.join("checkpoint.key");
    std::fs::write(&key, format!("{}\n", signer.encode_private())).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        keys.join("checkpoint.vkeys"),
        format!("{}\n", signer.verifier().encode()),
    )
    .unwrap();
    signer
}

fn witness_key(home: &Path, name: &str) -> String {
    let output = tollgate(home, &["witness", "key", "--name", name]);
    assert!(output.status.success(), "{output:?}");
    stdout(&output).trim().to_string()
}

fn start_control_plane(home: &Path, policy: &Path) -> (Server, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(
        home,
        &[
            "--origin",
            ORIGIN,
            "--witness-policy",
            policy.to_str().unwrap(),
            "--metrics-listen",
            &metrics,
            "--checkpoint-every",
            "5",
            "--checkpoint-interval",
            "500ms",
        ],
    );
    (server, metrics)
}

async fn append(server: &Server, count: usize) {
    let mut client = server.client().await;
    for n in 0..count {
        client
            .append(pb::AppendRequest {
                record_json: record(0, n),
                session: None,
            })
            .await
            .unwrap();
    }
}

/// The published checkpoint in `file` once it satisfies `policy` and is larger than `beyond`.
async fn published_beyond(file: &Path, policy: &Policy, beyond: u64) -> (String, Satisfied) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no file");
    while Instant::now() < deadline {
        if let Ok(note) = std::fs::read_to_string(file) {
            match policy.check(&note) {
                Ok(satisfied) if satisfied.checkpoint.size > beyond => return (note, satisfied),
                Ok(satisfied) => last = format!("size {}", satisfied.checkpoint.size),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint beyond size {beyond} was published at {file:?}: {last}");
}

/// A tree of forged records, kept whole so that roots and proofs can be made over it.
struct ForgedTree(Vec<Hash>);

impl NodeSource for ForgedTree {
    type Error = ();
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, ()> {
        let start = usize::try_from(index << level).map_err(|_| ())?;
        let mut frontier = Frontier::new();
        for leaf in &self.0[start..start + (1 << level)] {
            frontier.push(*leaf, |_, _, _| {});
        }
        Ok(frontier.root())
    }
}

impl ForgedTree {
    fn new(size: u64) -> Self {
        Self(
            (0..size)
                .map(|n| merkle::leaf_hash(format!(r#"{{"event":"forged","n":{n}}}"#).as_bytes()))
                .collect(),
        )
    }

    /// A checkpoint of its first `size` leaves, signed with the log's own key.
    fn checkpoint(&mut self, log: &NoteSigner, size: u64) -> String {
        let root = merkle::subtree_root(self, 0, size).unwrap();
        log.sign(
            &Checkpoint {
                origin: ORIGIN.into(),
                size,
                root,
                chain_head: [0; 32],
                time: "2030-01-01T00:00:00.000000Z".into(),
            }
            .text(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witnessed_log_is_published_and_its_witness_refuses_rollbacks_and_forks() {
    let homes = tempfile::tempdir().unwrap();
    let (cp_home, w1_home, w2_home) = (
        homes.path().join("cp"),
        homes.path().join("w1"),
        homes.path().join("w2"),
    );
    let log = install_log_key(&cp_home);
    let log_vkey = log.verifier().encode();
    let w1 = WitnessProcess::start(&w1_home, "witness.test/w1", &log_vkey);
    let w1_key = tollgate(&w1_home, &["witness", "key"]);
    assert!(w1_key.status.success(), "{w1_key:?}");
    let w1_key = stdout(&w1_key).trim().to_string();
    // The second witness has a key but never runs.
    let w2_key = witness_key(&w2_home, "witness.test/w2");
    let policy_text = format!(
        "# one of two witnesses suffices\n\
         log {log_vkey}\n\
         witness w1 {w1_key} http://{}\n\
         witness w2 {w2_key} {DOWN}\n\
         group one-of-two 1 w1 w2\n\
         quorum one-of-two\n",
        w1.address
    );
    let policy_path = homes.path().join("witnesses.policy");
    std::fs::write(&policy_path, &policy_text).unwrap();
    let policy = Policy::parse(&policy_text).unwrap();
    let published_file: PathBuf = cp_home.join("checkpoint");

    // Appends go on with a witness down; checkpoints are published cosigned by the other.
    let (server, metrics) = start_control_plane(&cp_home, &policy_path);
    append(&server, 5).await;
    let (first, satisfied) = published_beyond(&published_file, &policy, 5).await;
    assert_eq!(satisfied.witnesses, ["w1"]);
    assert_eq!(satisfied.log, log.verifier());
    assert_eq!(satisfied.checkpoint.origin, ORIGIN);
    let (status, content_type, served) = http(&metrics, "GET", "/checkpoint", "");
    assert_eq!(status, 200, "{served}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let served = policy.check(&served).unwrap();
    assert_eq!(served.witnesses, ["w1"]);
    assert!(served.checkpoint.size >= satisfied.checkpoint.size);

    append(&server, 5).await;
    let (second, satisfied) =
        published_beyond(&published_file, &policy, satisfied.checkpoint.size + 4).await;
    assert_eq!(satisfied.witnesses, ["w1"]);

    // A policy that wants both witnesses is not satisfied by it, and says why.
    let both = Policy::parse(&policy_text.replace(
        "group one-of-two 1 w1 w2\nquorum one-of-two",
        "group both all w1 w2\nquorum both",
    ))
    .unwrap();
    assert_eq!(
        both.check(&second).unwrap_err().to_string(),
        "quorum not met: 1 of the 2 cosignatures the policy requires (group both: 2 of w1, w2); \
         verified: w1"
    );

    // An export's checkpoint is cosigned before the bundle is written: the bundle verifies
    // under the policy (and its witness is named), fails under one its cosignatures do not
    // meet, and is unauthenticated under none.
    let bundle = homes.path().join("witnessed.bundle.json");
    let export = tollgate(
        &cp_home,
        &[
            "audit",
            "export",
            "--server",
            &server.url(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(export.status.success(), "{export:?}");
    let both_path = homes.path().join("both.policy");
    std::fs::write(
        &both_path,
        policy_text.replace(
            "group one-of-two 1 w1 w2\nquorum one-of-two",
            "group both all w1 w2\nquorum both",
        ),
    )
    .unwrap();
    let verifier = Path::new(BIN).with_file_name("tollgate-verify");
    assert!(verifier.exists(), "build it: cargo build -p tollgate-log");
    let verify = |extra: &[&str]| {
        let output = Command::new(&verifier)
            .arg(&bundle)
            .args(extra)
            .arg("--json")
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("no json: {output:?}"));
        (output.status.code(), report)
    };
    let (code, report) = verify(&["--witness-policy", policy_path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["cosignedBy"], serde_json::json!(["w1"]), "{report}");
    let (code, report) = verify(&["--witness-policy", both_path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("quorum not met: 1 of the 2 cosignatures"),
        "{report}"
    );
    let (code, report) = verify(&[]);
    assert_eq!(code, Some(2), "{report}");
    assert!(server.terminate().success());

    // The witness, shown old and forged checkpoints directly.
    let size = w1.size(&first);
    assert!(size >= satisfied.checkpoint.size, "{size}");
    let first_size = policy.check(&first).unwrap().checkpoint.size;
    // Rollback: an older checkpoint than the one cosigned. With the witness's own size as
    // `old`, it is larger than the checkpoint's: 400; with the checkpoint's own, a conflict
    // naming the witness's size: 409.
    let (status, _, body) = w1.add_checkpoint(size, &[], &first);
    assert_eq!(status, 400, "{body}");
    let (status, content_type, body) = w1.add_checkpoint(first_size, &[], &first);
    assert_eq!((status, content_type.as_str()), (409, "text/x.tlog.size"));
    assert_eq!(body, format!("{size}\n"));
    // Fork: another tree of the same size, signed with the log's key: 409.
    let mut forged = ForgedTree::new(size + 8);
    let (status, content_type, body) = w1.add_checkpoint(size, &[], &forged.checkpoint(&log, size));
    assert_eq!(status, 409, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(body.contains("fork"), "{body}");
    // Fork at a larger size, with the forged tree's own consistency proof: 422.
    let proof = merkle::consistency_proof(&mut forged, size, size + 8).unwrap();
    let (status, _, body) = w1.add_checkpoint(size, &proof, &forged.checkpoint(&log, size + 8));
    assert_eq!(status, 422, "{body}");
    // Another key under the log's name: 403; a log it does not witness: 404.
    let impostor = NoteSigner::generate(ORIGIN).unwrap();
    let (status, _, body) = w1.add_checkpoint(size, &[], &forged.checkpoint(&impostor, size));
    assert_eq!(status, 403, "{body}");
    let stranger = NoteSigner::generate("another.test/log").unwrap();
    let text = Checkpoint {
        origin: "another.test/log".into(),
        size: 1,
        root: [1; 32],
        chain_head: [0; 32],
        time: "2030-01-01T00:00:00.000000Z".into(),
    }
    .text();
    let (status, _, body) = w1.add_checkpoint(0, &[], &stranger.sign(&text));
    assert_eq!(status, 404, "{body}");
    // None of it moved the witness ...
    assert_eq!(w1.size(&first), size);

    // ... and it cosigns the honest log's next checkpoint, for a control plane that has to
    // learn its size again (first contact after a restart).
    let (server, _) = start_control_plane(&cp_home, &policy_path);
    append(&server, 1).await;
    let (_, satisfied) = published_beyond(&published_file, &policy, size).await;
    assert_eq!(satisfied.witnesses, ["w1"]);
    assert!(w1.size(&first) > size);
    assert!(server.terminate().success());
}
