//! Shared by the integration tests: a real `tollgate serve` child process, and a throwaway
//! PostgreSQL cluster (`pg`).

#[allow(dead_code)] // not every test binary uses PostgreSQL
pub mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tollgate_proto::pb::audit_client::AuditClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running `tollgate serve`; killed when dropped, so a failing test leaves nothing behind.
pub struct Server {
    pub child: Child,
    pub address: String,
    /// Its home: the dev PKI it created is under `tls/`.
    pub home: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

/// The policy every test control plane judges approval requests by (`serve --policy`, written
/// to `<home>/policy.json` unless a test passes its own).
pub const POLICY: &str = r#"{
  "rules": [
    {"id": "payout-changes-need-approval", "match": {"tool": "update_payout_account"},
     "action": "approve", "approverGroup": "payments-approvers", "reason": "changes where money goes"},
    {"id": "refunds-for-a-window", "match": {"tool": "refund_payment"},
     "action": "approve", "approverGroup": "payments-approvers", "grantTtlSeconds": 2,
     "reason": "moves money"},
    {"id": "closures-need-two", "match": {"tool": "close_merchant"},
     "action": "approve", "approverGroup": "payments-approvers", "approvers": 2,
     "reason": "ends a merchant's business with us"},
    {"id": "standing-export-grant", "match": {"tool": "export_customers"},
     "action": "approve", "approverGroup": "payments-approvers", "grantTtlSeconds": 86400},
    {"id": "reads", "match": {"tool": "get_customer"}, "action": "allow"}
  ]
}"#;

/// An approval request as the filter sends it for a call of `tool` with `arguments` by a caller
/// with `claims` (a JSON object with `sub`): the filter's reading of the call under [`POLICY`].
#[allow(dead_code)]
pub fn held_call(
    claims: serde_json::Value,
    tool: &str,
    arguments: serde_json::Value,
) -> tollgate_proto::pb::ApprovalRequest {
    use tollgate_engine::jsonrpc::{self, Body};
    use tollgate_engine::policy::{CallContext, Decision, Policy};
    let message = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                     "params": {"name": tool, "arguments": arguments}});
    let Ok(Body::Single(parsed)) = jsonrpc::parse(message.to_string().as_bytes()) else {
        panic!("not a call: {message}")
    };
    let claims_map = claims.as_object().cloned().expect("claims are an object");
    let policy = Policy::from_json(POLICY.as_bytes()).expect("the test policy compiles");
    let verdict = policy.decide(&parsed, &CallContext::new(&claims_map, "/mcp", "payments"));
    let (group, ttl) = match &verdict.action {
        Decision::Approve {
            approver_group,
            grant_ttl_seconds,
            ..
        } => (approver_group.clone(), grant_ttl_seconds.unwrap_or(0)),
        // A call the policy does not hold: no terms to read.
        _ => (String::new(), 0),
    };
    let requester = claims["sub"].as_str().expect("claims carry sub").to_owned();
    tollgate_proto::pb::ApprovalRequest {
        requester,
        identity_json: claims.to_string().into_bytes(),
        upstream: "payments".into(),
        method: "tools/call".into(),
        target: tool.into(),
        arguments_hash: jsonrpc::arguments_hash(&arguments),
        masked_arguments_json: arguments.to_string().into_bytes(),
        rule: verdict.rule.clone().unwrap_or_default(),
        reason: verdict.reason.clone().unwrap_or_default(),
        approver_group: group,
        grant_ttl_seconds: ttl,
        session: "session-1".into(),
        message_json: message.to_string().into_bytes(),
        claims_json: claims.to_string().into_bytes(),
        route: "/mcp".into(),
        retry_of: String::new(),
    }
}

/// Runs the `tollgate` command line with `home`. A command sent to a control plane
/// (`--server`) runs as an auditor and security admin of the dev issuer in `home`.
#[allow(dead_code)]
pub fn tollgate(home: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("TOLLGATE_HOME", home)
        .env_remove("TOLLGATE_CONTROL_PLANE")
        .env_remove("TOLLGATE_TOKEN");
    if args.contains(&"--server") {
        command.env(
            "TOLLGATE_TOKEN",
            operator_token(home, "auditor@example.com", "auditors,security-admins"),
        );
    }
    command.output().expect("run tollgate")
}

/// An operator token (audience `tollgate-operators`) from the dev issuer in `home`.
#[allow(dead_code)]
pub fn operator_token(home: &Path, sub: &str, groups: &str) -> String {
    dev_token(home, sub, groups, &[])
}

/// A token from the dev issuer in `home` for `sub` in `groups`, with the operators' audience
/// unless `extra` names another (`--aud`), and `extra`'s other options (`--expired`, ...).
#[allow(dead_code)]
pub fn dev_token(home: &Path, sub: &str, groups: &str, extra: &[&str]) -> String {
    let audience: &[&str] = if extra.contains(&"--aud") {
        &[]
    } else {
        &["--aud", "tollgate-operators"]
    };
    let output = Command::new(BIN)
        .args(["dev", "token", "--sub", sub, "--groups", groups])
        .args(audience)
        .args(extra)
        .env("TOLLGATE_HOME", home)
        .env_remove("TOLLGATE_CONTROL_PLANE")
        .env_remove("TOLLGATE_TOKEN")
        .output()
        .expect("run tollgate dev token");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Sends an operator token with every call.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The audit service as an auditor's command calls it.
pub type Reader = AuditClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[allow(dead_code)]
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Server {
    #[allow(dead_code)] // the PostgreSQL tests always pass --store
    pub fn start(home: &Path) -> Self {
        Self::start_with(home, &[])
    }

    /// Starts `tollgate serve --insecure-plaintext` (`url()` does not apply: use `address`).
    #[allow(dead_code)]
    pub fn start_plaintext(home: &Path) -> Self {
        Self::start_with(home, &["--insecure-plaintext"])
    }

    /// Starts `tollgate serve` with extra arguments (e.g. checkpoint settings), judging
    /// approvals by [`POLICY`] unless they name another `--policy`.
    pub fn start_with(home: &Path, extra: &[&str]) -> Self {
        let mut policy = Vec::new();
        if !extra.contains(&"--policy") {
            std::fs::create_dir_all(home).unwrap();
            let path = home.join("policy.json");
            std::fs::write(&path, POLICY).unwrap();
            policy = vec!["--policy".to_owned(), path.display().to_string()];
        }
        Self::spawn(
            home,
            &[policy.iter().map(String::as_str).collect(), extra.to_vec()].concat(),
        )
    }

    /// Starts `tollgate serve` with no policy: it refuses every approval request.
    #[allow(dead_code)]
    pub fn start_without_policy(home: &Path) -> Self {
        Self::spawn(home, &[])
    }

    fn spawn(home: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("TOLLGATE_HOME", home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tollgate serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Read the readiness line on a thread so a server that never gets ready fails the test
        // after a bound instead of hanging it.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            stdout
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("tollgate serve did not print its readiness line");
            }
        };
        let address = line
            .trim_end()
            .strip_prefix("tollgate control plane listening on ")
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
            .to_string();
        Self {
            child,
            address,
            home: home.to_path_buf(),
            _stdout: reader.join().unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// A channel as the gateway connects: mutual TLS with the dev gateway certificate.
    pub async fn gateway_channel(&self) -> Channel {
        let tls = self.home.join("tls");
        let identity = Identity::from_pem(
            std::fs::read(tls.join("gateway.pem")).unwrap(),
            std::fs::read(tls.join("gateway-key.pem")).unwrap(),
        );
        self.channel(Some(identity)).await
    }

    /// A channel with TLS and no client certificate, as an operator's command connects.
    #[allow(dead_code)]
    pub async fn anonymous_channel(&self) -> Channel {
        self.channel(None).await
    }

    async fn channel(&self, identity: Option<Identity>) -> Channel {
        self.try_channel(identity).await.expect("connect")
    }

    /// TLS trusting the server's dev CA, with `identity` as the client certificate if given.
    pub async fn try_channel(
        &self,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.home.join("tls/ca.pem")).unwrap();
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
    }

    /// The audit service as the gateway calls it (appends).
    pub async fn client(&self) -> AuditClient<Channel> {
        AuditClient::new(self.gateway_channel().await)
    }

    /// The audit service as an auditor (and security admin) calls it, for reads.
    #[allow(dead_code)]
    pub async fn reader(&self) -> Reader {
        let token = operator_token(
            &self.home,
            "auditor@example.com",
            "auditors,security-admins",
        );
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        AuditClient::with_interceptor(self.anonymous_channel().await, bearer)
    }

    /// SIGTERM, then wait: a graceful stop.
    #[allow(dead_code)] // not every test binary stops gracefully
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request record as the filter writes one.
#[allow(dead_code)]
pub fn record(writer: usize, n: usize) -> Vec<u8> {
    serde_json::json!({
        "event": "mcp.request",
        "time": "2025-01-31T12:00:00.000001Z",
        "sub": format!("writer{writer}@example.com"),
        "httpMethod": "POST",
        "route": "/mcp",
        "session": format!("session-{writer}"),
        "messages": [{"kind": "request", "id": n, "method": "tools/call", "target": "get_customer", "arguments": {"id": n}}],
        "decision": "allow"
    })
    .to_string()
    .into_bytes()
}

/// Appends from `writers` concurrent tasks, `each` records per task; returns seq -> chain hash.
#[allow(dead_code)]
pub async fn append_concurrently(
    server: &Server,
    writers: usize,
    each: usize,
) -> std::collections::HashMap<u64, String> {
    use tollgate_proto::pb;
    let client = server.client().await;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for n in 0..each {
                    let ack = client
                        .append(pb::AppendRequest {
                            record_json: record(w, n),
                            session: None,
                        })
                        .await
                        .unwrap();
                    acks.push(ack.into_inner());
                }
                acks
            })
        })
        .collect();
    let mut acks = std::collections::HashMap::new();
    for task in tasks {
        for ack in task.await.unwrap() {
            assert!(
                acks.insert(ack.seq, ack.chain_hash).is_none(),
                "seq {} acknowledged twice",
                ack.seq
            );
        }
    }
    acks
}

/// Every stored record, over gRPC (which records the read).
#[allow(dead_code)]
pub async fn list(server: &Server) -> Vec<tollgate_proto::pb::StoredRecord> {
    let mut stream = server
        .reader()
        .await
        .list_records(tollgate_proto::pb::ListRecordsRequest {
            from_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut records = Vec::new();
    while let Some(record) = stream.message().await.unwrap() {
        records.push(record);
    }
    records
}

/// The JSON of each record.
#[allow(dead_code)]
pub fn json_of(records: &[tollgate_proto::pb::StoredRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.canonical_json).unwrap())
        .collect()
}

/// Export bundles (format 2) as an attacker edits them: the header members as JSON values,
/// every record kept in its exact bytes, so that editing one record never re-serialises
/// another (a round trip through `Value` may change how a number is written).
#[allow(dead_code)]
pub mod bundle {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use serde_json::value::RawValue;
    use serde_json::Value;
    use tollgate_log::bundle::{gap_cover, SelectionDigest};
    use tollgate_log::chain::{self, Hash};
    use tollgate_log::merkle::{self, Frontier};
    use tollgate_log::note::{Checkpoint, NoteSigner};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Entry {
        Record {
            seq: u64,
            leaf_hash: String,
            record: Vec<u8>,
            context: bool,
        },
        Skip {
            skip: u64,
            nodes: Vec<String>,
        },
    }

    #[derive(Debug, Clone)]
    pub struct Bundle {
        /// Every member but `records`; written in name order, which puts them all before
        /// `records` as the format requires.
        pub header: BTreeMap<String, Value>,
        pub entries: Vec<Entry>,
    }

    /// The text of a signed note before its signatures, as it was signed.
    pub fn body(note: &str) -> &str {
        let at = note.rfind("\n\n").expect("a signed note");
        &note[..=at]
    }

    pub fn parse_checkpoint(note: &str) -> Checkpoint {
        Checkpoint::parse(body(note)).expect("a checkpoint")
    }

    fn hash_hex(hash: &Hash) -> String {
        hex::encode(hash)
    }

    fn hash_of(text: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).expect("a hex hash");
        out
    }

    impl Bundle {
        pub fn load(path: &Path) -> Self {
            Self::parse(&std::fs::read(path).expect("read the bundle"))
        }

        pub fn parse(bytes: &[u8]) -> Self {
            let members: BTreeMap<String, &RawValue> =
                serde_json::from_slice(bytes).expect("a bundle is a JSON object");
            let mut header = BTreeMap::new();
            let mut entries = Vec::new();
            for (name, raw) in members {
                if name != "records" {
                    header.insert(name, serde_json::from_str(raw.get()).unwrap());
                    continue;
                }
                let list: Vec<&RawValue> = serde_json::from_str(raw.get()).unwrap();
                for raw in list {
                    let entry: BTreeMap<String, &RawValue> =
                        serde_json::from_str(raw.get()).unwrap();
                    let value = |name: &str| -> Option<Value> {
                        entry
                            .get(name)
                            .map(|r| serde_json::from_str(r.get()).unwrap())
                    };
                    entries.push(match entry.get("record") {
                        Some(record) => Entry::Record {
                            seq: value("seq").and_then(|v| v.as_u64()).unwrap(),
                            leaf_hash: value("leafHash").unwrap().as_str().unwrap().to_owned(),
                            record: record.get().as_bytes().to_vec(),
                            context: value("context").is_some_and(|v| v == true),
                        },
                        None => Entry::Skip {
                            skip: value("skip").and_then(|v| v.as_u64()).unwrap(),
                            nodes: serde_json::from_value(value("nodes").unwrap()).unwrap(),
                        },
                    });
                }
            }
            Self { header, entries }
        }

        pub fn to_bytes(&self) -> Vec<u8> {
            let mut out = b"{".to_vec();
            for (name, value) in &self.header {
                out.extend(serde_json::to_vec(name).unwrap());
                out.push(b':');
                out.extend(serde_json::to_vec(value).unwrap());
                out.push(b',');
            }
            out.extend_from_slice(b"\"records\":[");
            for (i, entry) in self.entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match entry {
                    Entry::Record {
                        seq,
                        leaf_hash,
                        record,
                        context,
                    } => {
                        out.extend(
                            format!("{{\"seq\":{seq},\"leafHash\":\"{leaf_hash}\",\"record\":")
                                .bytes(),
                        );
                        out.extend_from_slice(record);
                        if *context {
                            out.extend_from_slice(b",\"context\":true");
                        }
                        out.push(b'}');
                    }
                    Entry::Skip { skip, nodes } => {
                        out.extend(format!("{{\"skip\":{skip},\"nodes\":").bytes());
                        out.extend(serde_json::to_vec(nodes).unwrap());
                        out.push(b'}');
                    }
                }
            }
            out.extend_from_slice(b"]}\n");
            out
        }

        pub fn save(&self, path: &Path) {
            std::fs::write(path, self.to_bytes()).expect("write the bundle");
        }

        pub fn note(&self) -> String {
            self.header["checkpoint"].as_str().unwrap().to_owned()
        }

        pub fn checkpoint(&self) -> Checkpoint {
            parse_checkpoint(&self.note())
        }

        pub fn size(&self) -> u64 {
            self.checkpoint().size
        }

        /// The earlier checkpoints, as listed.
        pub fn earlier(&self) -> Vec<String> {
            serde_json::from_value(self.header["checkpoints"].clone()).unwrap()
        }

        pub fn set_earlier(&mut self, notes: Vec<String>) {
            self.header.insert("checkpoints".into(), notes.into());
        }

        pub fn key_records(&self) -> Vec<u64> {
            serde_json::from_value(self.header["keyRecords"].clone()).unwrap()
        }

        /// Where the skips split: the sizes of the earlier checkpoints.
        pub fn splits(&self) -> BTreeSet<u64> {
            let size = self.size();
            self.earlier()
                .iter()
                .map(|n| parse_checkpoint(n).size)
                .filter(|s| *s < size)
                .collect()
        }

        pub fn index_of(&self, seq: u64) -> usize {
            self.entries
                .iter()
                .position(|e| matches!(e, Entry::Record { seq: s, .. } if *s == seq))
                .unwrap_or_else(|| panic!("record {seq} is not in the bundle"))
        }

        pub fn has_record(&self, seq: u64) -> bool {
            self.entries
                .iter()
                .any(|e| matches!(e, Entry::Record { seq: s, .. } if *s == seq))
        }

        pub fn record(&self, seq: u64) -> &[u8] {
            match &self.entries[self.index_of(seq)] {
                Entry::Record { record, .. } => record,
                Entry::Skip { .. } => unreachable!(),
            }
        }

        pub fn record_value(&self, seq: u64) -> Value {
            serde_json::from_slice(self.record(seq)).unwrap()
        }

        /// The records, as (seq, bytes), in order.
        pub fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
            self.entries.iter().filter_map(|e| match e {
                Entry::Record { seq, record, .. } => Some((*seq, record.as_slice())),
                Entry::Skip { .. } => None,
            })
        }

        /// Replaces record `seq`'s bytes and, as an attacker would, its leaf hash.
        pub fn set_record(&mut self, seq: u64, bytes: Vec<u8>) {
            let at = self.index_of(seq);
            if let Entry::Record {
                leaf_hash, record, ..
            } = &mut self.entries[at]
            {
                *leaf_hash = hash_hex(&merkle::leaf_hash(&bytes));
                *record = bytes;
            }
        }

        pub fn export_seq(&self) -> u64 {
            self.size() - 1
        }

        /// Every node the bundle gives: its records' leaves and its skipped subtrees.
        fn known_nodes(&self) -> BTreeMap<(u32, u64), Hash> {
            let splits = self.splits();
            let mut known = BTreeMap::new();
            let mut at = 0;
            for entry in &self.entries {
                match entry {
                    Entry::Record { seq, record, .. } => {
                        known.insert((0, *seq), merkle::leaf_hash(record));
                        at = seq + 1;
                    }
                    Entry::Skip { skip, nodes } => {
                        for ((level, index), node) in
                            gap_cover(at, at + skip, &splits).into_iter().zip(nodes)
                        {
                            known.insert((level, index), hash_of(node));
                        }
                        at += skip;
                    }
                }
            }
            known
        }

        /// Leaves out the records `hidden` (as skips) and the earlier checkpoints `keep`
        /// refuses, and covers every gap again as the writer would have for the checkpoints
        /// still listed: adjacent skips merge, their nodes combined from those the bundle gave.
        pub fn rebuild(&mut self, hidden: &BTreeSet<u64>, keep: impl Fn(&Checkpoint) -> bool) {
            fn node(known: &BTreeMap<(u32, u64), Hash>, level: u32, index: u64) -> Hash {
                if let Some(hash) = known.get(&(level, index)) {
                    return *hash;
                }
                assert!(level > 0, "leaf {index} is not in the bundle");
                merkle::node_hash(
                    &node(known, level - 1, 2 * index),
                    &node(known, level - 1, 2 * index + 1),
                )
            }
            let known = self.known_nodes();
            let kept = self
                .earlier()
                .into_iter()
                .filter(|n| keep(&parse_checkpoint(n)))
                .collect();
            self.set_earlier(kept);
            let splits = self.splits();
            let mut entries = Vec::new();
            let mut gap: Option<(u64, u64)> = None;
            let flush = |gap: &mut Option<(u64, u64)>, entries: &mut Vec<Entry>| {
                if let Some((start, end)) = gap.take() {
                    let nodes = gap_cover(start, end, &splits)
                        .into_iter()
                        .map(|(level, index)| hash_hex(&node(&known, level, index)))
                        .collect();
                    entries.push(Entry::Skip {
                        skip: end - start,
                        nodes,
                    });
                }
            };
            let mut at = 0;
            for entry in std::mem::take(&mut self.entries) {
                let (start, end, keep) = match &entry {
                    Entry::Record { seq, .. } => (*seq, seq + 1, !hidden.contains(seq)),
                    Entry::Skip { skip, .. } => (at, at + skip, false),
                };
                at = end;
                if keep {
                    flush(&mut gap, &mut entries);
                    entries.push(entry);
                } else {
                    gap = Some((gap.map_or(start, |(s, _)| s), end));
                }
            }
            flush(&mut gap, &mut entries);
            self.entries = entries;
        }

        /// The root of the tree at every size the stream passes (after each entry's leaf or
        /// subtree), rebuilt from the entries as a verifier does.
        pub fn roots(&self) -> BTreeMap<u64, Hash> {
            let splits = self.splits();
            let mut frontier = Frontier::new();
            let mut roots = BTreeMap::new();
            for entry in &self.entries {
                match entry {
                    Entry::Record { record, .. } => {
                        frontier.push(merkle::leaf_hash(record), |_, _, _| {});
                        roots.insert(frontier.size(), frontier.root());
                    }
                    Entry::Skip { skip, nodes } => {
                        let at = frontier.size();
                        for ((level, _), node) in
                            gap_cover(at, at + skip, &splits).into_iter().zip(nodes)
                        {
                            frontier.push_subtree(level, hash_of(node)).unwrap();
                            roots.insert(frontier.size(), frontier.root());
                        }
                    }
                }
            }
            roots
        }

        /// Makes the export record state what the bundle now holds (count, digest, key
        /// rotations), as a forger who controls the last leaf would.
        pub fn restate_export(&mut self) {
            let mut digest = SelectionDigest::default();
            let (mut first, mut last) = (None, None);
            for entry in &self.entries {
                if let Entry::Record {
                    seq,
                    record,
                    context: false,
                    ..
                } = entry
                {
                    digest.add(*seq, &merkle::leaf_hash(record));
                    first.get_or_insert(*seq);
                    last = Some(*seq);
                }
            }
            let seq = self.export_seq();
            let mut export = self.record_value(seq);
            export["records"] = digest.count().into();
            export["selectionDigest"] = hash_hex(&digest.finish()).into();
            export["keyRecords"] = self.key_records().into();
            if let (Some(first), Some(last)) = (first, last) {
                export["firstSeq"] = first.into();
                export["lastSeq"] = last.into();
            }
            let mut bytes = Vec::new();
            tollgate_log::canonical::write_value(&export, &mut bytes).unwrap();
            self.set_record(seq, bytes);
        }

        /// Signs the bundle's checkpoint again over what the entries now rebuild (root, and
        /// the chain line from `chainBefore` and the export record), at `time` if given.
        pub fn resign_latest(&mut self, signer: &NoteSigner, time: Option<&str>) {
            let mut checkpoint = self.checkpoint();
            checkpoint.root = self.roots()[&checkpoint.size];
            let before = hash_of(self.header["chainBefore"].as_str().unwrap());
            checkpoint.chain_head = chain::chain(&before, self.record(self.export_seq()));
            if let Some(time) = time {
                checkpoint.time = time.to_owned();
            }
            self.header
                .insert("checkpoint".into(), signer.sign(&checkpoint.text()).into());
        }

        /// Signs again, over the root the entries rebuild at its size, every earlier
        /// checkpoint for which `pick` names a signer.
        pub fn resign_earlier<'a>(&mut self, pick: impl Fn(&Checkpoint) -> Option<&'a NoteSigner>) {
            let roots = self.roots();
            let notes = self
                .earlier()
                .into_iter()
                .map(|note| {
                    let mut checkpoint = parse_checkpoint(&note);
                    match pick(&checkpoint) {
                        Some(signer) => {
                            checkpoint.root = roots[&checkpoint.size];
                            signer.sign(&checkpoint.text())
                        }
                        None => note,
                    }
                })
                .collect();
            self.set_earlier(notes);
        }
    }
}

/// A `records` value of a sled store as its readers see it: the chain hash, then the canonical
/// JSON, which the writer stores as one zstd frame.
#[allow(dead_code)]
pub fn unpacked(value: &[u8]) -> Vec<u8> {
    let mut plain = value[..32].to_vec();
    plain.extend(zstd::stream::decode_all(&value[32..]).unwrap());
    plain
}

/// A value of [`unpacked`]'s form stored as the writer stores it.
#[allow(dead_code)]
pub fn packed(plain: &[u8]) -> Vec<u8> {
    let mut value = plain[..32].to_vec();
    value.extend(zstd::block::compress(&plain[32..], 1).unwrap());
    value
}
