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
    }
}

/// An address where no control plane listens, so commands read the store directly.
#[allow(dead_code)]
pub const NO_SERVER: &str = "http://127.0.0.1:1";

/// Runs the `tollgate` command line with `home`. A command sent to a control plane
/// (`--server`) runs as an auditor and security admin of the dev issuer in `home`.
#[allow(dead_code)]
pub fn tollgate(home: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("TOLLGATE_HOME", home)
        .env_remove("TOLLGATE_SERVER")
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
        .env_remove("TOLLGATE_SERVER")
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
