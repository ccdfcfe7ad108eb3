//! The control plane's own Istio manifests (envoy/istio/control-plane.yaml) in a real Envoy.
//! `envoy/istio/sidecar.py --workload control-plane` renders the sidecar they give the control
//! plane (STRICT mutual TLS from the PeerAuthentication, jwt_authn from the operators'
//! RequestAuthentication, RBAC from the AuthorizationPolicy, as istiod builds them) in front of a
//! real `tollgate serve --insecure-plaintext`, which by itself takes every caller for the gateway.
//! Real gRPC calls with mesh certificates signed by the test's CA (istiod's stand-in) show what
//! the sidecar lets through: the payments MCP server's identity appends and reads revocations and
//! nothing else; another workload's identity appends nothing, and its record is not in the chain;
//! no certificate, another CA's certificate or plaintext get no connection; operators need a
//! token of their issuer, and the token reaches the control plane. The last test puts the
//! payments MCP server's sidecar (the WasmPlugin) in front: its filter's appends pass, the same
//! filter under another workload's identity fails closed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate as CaCertificate, CertificateParams, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use tollgate_e2e::{
    admin_get, envoy_bin, free_port, post_mcp, start_control_plane, tollgate_bin, wasm_file,
    workspace, Proc,
};
use tollgate_proto::pb;
use tollgate_proto::pb::approvals_client::ApprovalsClient;
use tollgate_proto::pb::audit_client::AuditClient;
use tollgate_proto::pb::revocations_client::RevocationsClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The payments MCP server's sidecar, where the WasmPlugin runs (the AuthorizationPolicy's rule 1).
const PAYMENTS: &str = "spiffe://cluster.local/ns/payments/sa/payments-mcp";
/// Another workload of the mesh, with a certificate from the same CA.
const AGENT: &str = "spiffe://cluster.local/ns/agents/sa/agent";
/// Where an operator's command runs in the mesh.
const OPERATOR: &str = "spiffe://cluster.local/ns/ops/sa/tollgate-cli";
/// The control plane's own identity (its ServiceAccount), which the gateway's sidecar pins.
const CONTROL_PLANE: &str = "spiffe://cluster.local/ns/tollgate/sa/tollgate-control-plane";
/// The operators' audience in the RequestAuthentication.
const OPERATOR_AUDIENCE: &str = "tollgate-operators";
/// The dev issuer of `tollgate dev token` stands in for the operators' issuer.
const DEV_ISSUER: &str = "https://dev.tollgate.local";
/// The stat prefix of the inbound HTTP connection manager (of the Service's port 50051).
const INBOUND: &str = "http.inbound_0.0.0.0_50051";
/// What Envoy's RBAC filter answers (a 403, which a gRPC caller sees as PERMISSION_DENIED).
const RBAC_DENIED: &str = "RBAC: access denied";

/// A CA standing in for istiod's: it signs the control plane sidecar's certificate and every
/// workload certificate of the test.
struct MeshCa {
    cert: CaCertificate,
    key: KeyPair,
}

impl MeshCa {
    fn new() -> MeshCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test mesh CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        MeshCa {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// (certificate, key) PEM naming `uri` (a SPIFFE id) and the DNS names or IPs in `names`.
    fn sign(&self, uri: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn identity(&self, uri: &str) -> Identity {
        let (cert, key) = self.sign(uri, &[]);
        Identity::from_pem(cert, key)
    }
}

/// Starts Envoy from `bootstrap`; returns once its admin port says it is live.
fn start_envoy(bootstrap: &Path, admin_port: u16, name: &str, dir: &Path) -> Proc {
    let mut command = Command::new(envoy_bin());
    command
        .arg("-c")
        .arg(bootstrap)
        .args(["--concurrency", "1"])
        .args(["--log-level", "warn", "--disable-hot-restart"]);
    let mut envoy = Proc::spawn(name, command, dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(!envoy.exited(), "{name} exited: {}", envoy.log_tail());
        if admin_get(admin_port, "/ready").is_ok_and(|body| body.trim() == "LIVE") {
            return envoy;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not ready: {}",
            envoy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_renderer(args: &[std::ffi::OsString]) {
    let out = Command::new("python3")
        .arg(workspace().join("envoy/istio/sidecar.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sidecar.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tollgate serve --insecure-plaintext` behind the sidecar control-plane.yaml gives it.
struct Mesh {
    dir: tempfile::TempDir,
    home: PathBuf,
    ca: MeshCa,
    control_plane_addr: String,
    /// The sidecar's inbound port (the pod's port 50051 as its callers reach it).
    port: u16,
    admin_port: u16,
    _control_plane: Proc,
    _sidecar: Proc,
}

impl Mesh {
    fn start() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let control_plane_addr = format!("127.0.0.1:{}", free_port());
        let control_plane = start_control_plane(
            &home,
            &control_plane_addr,
            &[
                "--insecure-plaintext".to_owned(),
                // As the Deployment sets it: the control plane verifies operators' tokens too.
                "--operator-audience".to_owned(),
                OPERATOR_AUDIENCE.to_owned(),
            ],
            dir.path(),
        )
        .unwrap();

        let ca = MeshCa::new();
        let pki = dir.path().join("mesh");
        std::fs::create_dir_all(&pki).unwrap();
        let (cert, key) = ca.sign(CONTROL_PLANE, &["localhost", "127.0.0.1"]);
        std::fs::write(pki.join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(pki.join("control-plane.pem"), cert).unwrap();
        std::fs::write(pki.join("control-plane-key.pem"), key).unwrap();

        let port = free_port();
        let admin_port = free_port();
        let bootstrap = dir.path().join("control-plane-sidecar.json");
        run_renderer(&[
            "--workload".into(),
            "control-plane".into(),
            "--out".into(),
            bootstrap.clone().into(),
            "--listen-port".into(),
            port.to_string().into(),
            "--admin-port".into(),
            admin_port.to_string().into(),
            "--upstream".into(),
            format!("http://{control_plane_addr}").into(),
            "--mesh-tls".into(),
            pki.into(),
            "--jwks".into(),
            home.join("dev/jwks.json").into(),
            "--issuer".into(),
            DEV_ISSUER.into(),
        ]);
        let sidecar = start_envoy(&bootstrap, admin_port, "control-plane-sidecar", dir.path());
        Mesh {
            dir,
            home,
            ca,
            control_plane_addr,
            port,
            admin_port,
            _control_plane: control_plane,
            _sidecar: sidecar,
        }
    }

    /// A connection to the sidecar over TLS (trusting the mesh CA), with `identity` as the
    /// client certificate when given.
    async fn connect(&self, identity: Option<Identity>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert.pem()))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// A connection as the workload named `uri` (a certificate of the mesh CA).
    async fn channel(&self, uri: &str) -> Channel {
        self.connect(Some(self.ca.identity(uri))).await.unwrap()
    }

    /// A token from the dev issuer (`tollgate dev token --sub SUB ARGS`).
    fn token(&self, sub: &str, args: &[&str]) -> String {
        let out = Command::new(tollgate_bin())
            .arg("--home")
            .arg(&self.home)
            .args(["dev", "token", "--sub", sub])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "dev token: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().last().unwrap_or_default().trim().to_owned()
    }

    /// An operator's token: the operators' issuer and audience, in the auditors' group.
    fn operator_token(&self) -> String {
        self.token(
            "ops@example.com",
            &["--aud", OPERATOR_AUDIENCE, "--groups", "auditors"],
        )
    }

    /// The whole chain, read from the control plane directly (its plaintext port, as from
    /// inside its pod): `tollgate audit query --json`.
    fn chain(&self) -> Vec<Value> {
        let out = Command::new(tollgate_bin())
            .arg("--home")
            .arg(&self.home)
            .args(["audit", "query", "--json", "--server"])
            .arg(format!("http://{}", self.control_plane_addr))
            .env_remove("TOLLGATE_CONTROL_PLANE")
            .env("TOLLGATE_TOKEN", self.operator_token())
            .output()
            .unwrap();
        assert!(out.status.success(), "audit query: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["record"].clone())
            .collect()
    }

    /// The whole chain as an operator reads it through the sidecar (its workload certificate
    /// and a token of the operators' issuer).
    async fn chain_as_operator(&self) -> Vec<Value> {
        let mut audit = AuditClient::new(self.channel(OPERATOR).await);
        let request = list_records(Some(&self.operator_token()), "chain-as-operator");
        let mut stream = audit.list_records(request).await.unwrap().into_inner();
        let mut records = Vec::new();
        while let Some(record) = stream.message().await.unwrap() {
            records.push(serde_json::from_slice(&record.canonical_json).unwrap());
        }
        records
    }

    /// An Envoy counter of the sidecar (0 when it does not exist yet).
    fn stat(&self, name: &str) -> u64 {
        stat(self.admin_port, name)
    }

    /// The counter `name` of the sidecar's inbound listener.
    fn listener_stat(&self, name: &str) -> u64 {
        self.stat(&format!("listener.127.0.0.1_{}.{name}", self.port))
    }
}

fn stat(admin_port: u16, name: &str) -> u64 {
    admin_get(admin_port, &format!("/stats?filter={name}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An audit record marked with `marker`, which the chain can then be searched for.
fn record(marker: &str) -> pb::AppendRequest {
    pb::AppendRequest {
        record_json: json!({"event": "test.mesh", "marker": marker})
            .to_string()
            .into_bytes(),
        session: None,
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A ListRecords call; `purpose` is what the control plane writes into the read's own
/// `controlPlane.auditRead` record, so the chain shows whether the call reached it.
fn list_records(token: Option<&str>, purpose: &str) -> tonic::Request<pb::ListRecordsRequest> {
    let mut request = with_token(
        pb::ListRecordsRequest {
            from_seq: 0,
            limit: 0,
        },
        token,
    );
    request
        .metadata_mut()
        .insert("tollgate-purpose", purpose.parse().unwrap());
    request
}

/// Envoy's RBAC refusal, as a gRPC caller gets it.
fn assert_rbac_denied<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert_eq!(status.message(), RBAC_DENIED, "{what}: {status:?}");
}

fn markers(chain: &[Value]) -> Vec<&str> {
    chain.iter().filter_map(|r| r["marker"].as_str()).collect()
}

fn reads_with_purpose<'a>(chain: &'a [Value], purpose: &str) -> Vec<&'a Value> {
    chain
        .iter()
        .filter(|r| r["event"] == "controlPlane.auditRead" && r["purpose"] == purpose)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_identity_appends_and_lists_revocations_and_nothing_else() {
    let mesh = Mesh::start();
    let gateway = mesh.channel(PAYMENTS).await;

    let appended = AuditClient::new(gateway.clone())
        .append(record("from-the-gateway"))
        .await
        .expect("the gateway appends")
        .into_inner();
    assert!(!appended.chain_hash.is_empty(), "{appended:?}");
    RevocationsClient::new(gateway.clone())
        .list(pb::ListRevocationsRequest {})
        .await
        .expect("the gateway lists revocations");

    // Operator methods: refused without a token...
    let mut audit = AuditClient::new(gateway.clone());
    assert_rbac_denied(
        audit.list_records(list_records(None, "gateway-read")).await,
        "ListRecords without a token",
    );
    // ...and with a valid operator token too: the gateway's identity is never an operator.
    let token = mesh.operator_token();
    assert_rbac_denied(
        audit
            .list_records(list_records(Some(&token), "gateway-read-with-token"))
            .await,
        "ListRecords with an operator's token",
    );
    assert_rbac_denied(
        ApprovalsClient::new(gateway.clone())
            .decide(with_token(
                pb::DecideRequest {
                    approval_id: "any".into(),
                    approve: true,
                    reason: "a gateway taken over".into(),
                },
                Some(&token),
            ))
            .await,
        "Decide",
    );
    assert_rbac_denied(
        audit.rotate_key(pb::RotateKeyRequest::default()).await,
        "RotateKey",
    );
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.allowed")), 2);
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 4);

    // Behind the sidecar in plaintext, the control plane would have served those reads (it
    // takes every caller for the gateway and does not check a token on ListRecords): the chain
    // shows that none reached it, while the gateway's append did.
    // The chain holds the start, the append and this read of it: nothing else reached it.
    let chain = mesh.chain();
    assert_eq!(markers(&chain), ["from-the-gateway"], "{chain:#?}");
    let events: Vec<(&str, &str)> = chain
        .iter()
        .map(|r| {
            let event = r["event"].as_str().unwrap_or_default();
            (event, r["purpose"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        events,
        [
            ("controlPlane.start", ""),
            ("test.mesh", ""),
            ("controlPlane.auditRead", "query")
        ],
        "{chain:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workload_cannot_append_and_its_record_is_not_in_the_chain() {
    let mesh = Mesh::start();
    let agent = mesh.channel(AGENT).await;

    assert_rbac_denied(
        AuditClient::new(agent.clone())
            .append(record("forged-by-the-agent"))
            .await,
        "Append from another workload",
    );
    assert_rbac_denied(
        ApprovalsClient::new(agent.clone())
            .request(pb::ApprovalRequest {
                requester: "alice@example.com".into(),
                ..Default::default()
            })
            .await,
        "Approvals.Request from another workload",
    );
    assert_rbac_denied(
        ApprovalsClient::new(agent.clone())
            .r#await(pb::AwaitRequest {
                approval_id: "someone-else's".into(),
                wait_ms: 0,
            })
            .await,
        "Approvals.Await from another workload",
    );
    assert_rbac_denied(
        RevocationsClient::new(agent.clone())
            .list(pb::ListRevocationsRequest {})
            .await,
        "Revocations.List from another workload without a token",
    );
    // Health is anyone's in the mesh.
    let health = HealthClient::new(agent)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health from any workload")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    // The gateway appends, so that a read that finds nothing is not a read that finds nothing
    // at all.
    AuditClient::new(mesh.channel(PAYMENTS).await)
        .append(record("from-the-gateway"))
        .await
        .unwrap();
    for chain in [mesh.chain_as_operator().await, mesh.chain()] {
        assert_eq!(markers(&chain), ["from-the-gateway"], "{chain:#?}");
        assert!(
            !chain
                .iter()
                .any(|r| r.to_string().contains("someone-else's")),
            "{chain:#?}"
        );
    }
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 4);
}

/// The ingress gateway's identity: rule 5 lets it reach the console's port, and only that port.
const INGRESS: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_gateway_reaches_the_console_port_and_nothing_on_the_grpc_port() {
    let mesh = Mesh::start();
    let ingress = mesh.channel(INGRESS).await;
    assert_rbac_denied(
        AuditClient::new(ingress.clone())
            .append(record("forged-through-the-ingress"))
            .await,
        "Append from the ingress gateway",
    );
    assert_rbac_denied(
        AuditClient::new(ingress.clone())
            .list_records(list_records(None, "ingress"))
            .await,
        "ListRecords from the ingress gateway without a token",
    );
    assert_rbac_denied(
        ApprovalsClient::new(ingress)
            .decide(pb::DecideRequest {
                approval_id: "apr_1".into(),
                approve: true,
                reason: "through the ingress".into(),
            })
            .await,
        "Approvals.Decide from the ingress gateway without a token",
    );
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 3);
    assert!(markers(&mesh.chain()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_of_the_mesh_there_is_no_connection() {
    let mesh = Mesh::start();

    /// Connects with `identity` and appends: the error of whichever step failed.
    async fn append(mesh: &Mesh, identity: Option<Identity>, marker: &str) -> Result<(), String> {
        let channel = mesh.connect(identity).await?;
        AuditClient::new(channel)
            .append(record(marker))
            .await
            .map(|_| ())
            .map_err(|status| format!("{status:?}"))
    }

    // No client certificate: the TLS handshake fails (STRICT requires one). In TLS 1.3 the
    // client learns it only on its first call (the server's alert, or a broken pipe when the
    // client writes first), so Envoy's counter says why.
    let error = append(&mesh, None, "no-certificate").await.unwrap_err();
    assert!(
        mesh.listener_stat("ssl.fail_verify_no_cert") >= 1,
        "{error}"
    );

    // A certificate naming the gateway, from another CA.
    let impostor = MeshCa::new().identity(PAYMENTS);
    let error = append(&mesh, Some(impostor), "other-ca").await.unwrap_err();
    assert!(mesh.listener_stat("ssl.fail_verify_error") >= 1, "{error}");

    // Plaintext (h2c): no filter chain takes it.
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", mesh.port))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        AuditClient::new(channel)
            .append(record("plaintext"))
            .await
            .map(|_| ())
            .map_err(|status| format!("{status:?}"))
    };
    let error = plaintext.await.unwrap_err();
    assert!(mesh.listener_stat("no_filter_chain_match") >= 1, "{error}");

    // Not one request reached the HTTP filters, let alone the control plane.
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.allowed")), 0);
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 0);
    let chain = mesh.chain();
    assert!(markers(&chain).is_empty(), "{chain:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_a_token_of_their_issuer_and_it_reaches_the_control_plane() {
    let mesh = Mesh::start();
    let operator = mesh.channel(OPERATOR).await;
    let mut audit = AuditClient::new(operator.clone());

    assert_rbac_denied(
        audit.list_records(list_records(None, "no-token")).await,
        "ListRecords without a token",
    );
    // Tokens the sidecar's jwt_authn rejects before the RBAC filter: one for the MCP clients'
    // audience (403, PERMISSION_DENIED) and an expired operator token (401, UNAUTHENTICATED).
    let clients_token = mesh.token("ops@example.com", &[]);
    let expired = mesh.token(
        "ops@example.com",
        &["--aud", OPERATOR_AUDIENCE, "--expired"],
    );
    for (token, purpose, code, message) in [
        (
            &clients_token,
            "wrong-audience",
            Code::PermissionDenied,
            "Audiences in Jwt are not allowed",
        ),
        (&expired, "expired", Code::Unauthenticated, "Jwt is expired"),
    ] {
        let status = audit
            .list_records(list_records(Some(token), purpose))
            .await
            .expect_err(purpose);
        assert_eq!(status.code(), code, "{purpose}: {status:?}");
        assert_eq!(status.message(), message, "{purpose}: {status:?}");
    }
    assert_eq!(mesh.stat(&format!("{INBOUND}.jwt_authn.denied")), 2);
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 1);

    let token = mesh.operator_token();
    let mut stream = audit
        .list_records(list_records(Some(&token), "with-token"))
        .await
        .expect("an operator reads the chain")
        .into_inner();
    let mut read = 0;
    while stream.message().await.unwrap().is_some() {
        read += 1;
    }
    assert!(read >= 1, "at least controlPlane.start");
    RevocationsClient::new(operator.clone())
        .list(with_token(pb::ListRevocationsRequest {}, Some(&token)))
        .await
        .expect("an operator lists revocations");
    // An operator does not write into the chain: Append is the gateway's.
    assert_rbac_denied(
        AuditClient::new(operator)
            .append(with_token(record("from-an-operator"), Some(&token)))
            .await,
        "Append from an operator",
    );

    let chain = mesh.chain();
    let reads = reads_with_purpose(&chain, "with-token");
    assert_eq!(reads.len(), 1, "{chain:#?}");
    // The sidecar forwarded the token (forwardOriginalToken): the control plane read the
    // operator from it.
    assert_eq!(
        reads[0]["operator"]["tokenSub"], "ops@example.com",
        "{chain:#?}"
    );
    for purpose in ["no-token", "wrong-audience", "expired"] {
        assert!(reads_with_purpose(&chain, purpose).is_empty(), "{chain:#?}");
    }
    assert!(markers(&chain).is_empty(), "{chain:#?}");
}

/// The payments MCP server behind the sidecar the other manifests give it (sidecar.py's default
/// workload), calling the control plane through its sidecar with the mesh certificate of `uri`.
struct PaymentsSidecar {
    gateway_url: String,
    request_log: PathBuf,
    _server: Proc,
    _envoy: Proc,
}

impl PaymentsSidecar {
    fn start(mesh: &Mesh, uri: &str, name: &str) -> PaymentsSidecar {
        let dir = mesh.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // The workload's mesh certificate, in the files `--control-plane-tls` reads.
        let (cert, key) = mesh.ca.sign(uri, &[]);
        std::fs::write(dir.join("ca.pem"), mesh.ca.cert.pem()).unwrap();
        std::fs::write(dir.join("gateway.pem"), cert).unwrap();
        std::fs::write(dir.join("gateway-key.pem"), key).unwrap();

        let request_log = dir.join("server-requests.jsonl");
        let mut server = Command::new(tollgate_bin().with_file_name("payments-server"));
        server
            .args([
                "--listen",
                "127.0.0.1:0",
                "--json-response",
                "--request-log",
            ])
            .arg(&request_log);
        let mut server = Proc::spawn(&format!("{name}-server"), server, &dir).unwrap();
        let ready = server
            .wait_for_line("listening on", Duration::from_secs(30))
            .unwrap();
        let upstream = ready.rsplit(' ').next().unwrap_or_default().to_owned();

        let listen_port = free_port();
        let admin_port = free_port();
        let bootstrap = dir.join("sidecar.json");
        run_renderer(&[
            "--out".into(),
            bootstrap.clone().into(),
            "--listen-port".into(),
            listen_port.to_string().into(),
            "--admin-port".into(),
            admin_port.to_string().into(),
            "--upstream".into(),
            upstream.into(),
            "--control-plane".into(),
            format!("127.0.0.1:{}", mesh.port).into(),
            "--control-plane-tls".into(),
            dir.clone().into(),
            "--control-plane-identity".into(),
            CONTROL_PLANE.into(),
            "--jwks".into(),
            mesh.home.join("dev/jwks.json").into(),
            "--issuer".into(),
            DEV_ISSUER.into(),
            "--wasm".into(),
            wasm_file().into(),
        ]);
        let envoy = start_envoy(&bootstrap, admin_port, &format!("{name}-envoy"), &dir);
        PaymentsSidecar {
            gateway_url: format!("http://127.0.0.1:{listen_port}/mcp"),
            request_log,
            _server: server,
            _envoy: envoy,
        }
    }

    fn server_requests(&self) -> usize {
        std::fs::read_to_string(&self.request_log)
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn get_customer(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
           "params":{"name":"get_customer","arguments":{"customer_id":"cus_1"}}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payments_sidecar_appends_through_the_control_planes_sidecar() {
    let mesh = Mesh::start();
    let token = mesh.token("alice@example.com", &[]);

    let payments = PaymentsSidecar::start(&mesh, PAYMENTS, "payments");
    let answer = post_mcp(&payments.gateway_url, Some(&token), None, get_customer(1))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["result"].is_object(), "{}", answer.body);
    assert_eq!(payments.server_requests(), 1);
    assert!(mesh.stat(&format!("{INBOUND}.rbac.allowed")) >= 1);
    assert_eq!(mesh.stat(&format!("{INBOUND}.rbac.denied")), 0);

    // The same WasmPlugin in another workload's sidecar: its appends are refused, so it fails
    // closed and its MCP server sees nothing.
    let elsewhere = PaymentsSidecar::start(&mesh, AGENT, "elsewhere");
    let refused = post_mcp(&elsewhere.gateway_url, Some(&token), None, get_customer(2))
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(elsewhere.server_requests(), 0);
    assert!(mesh.stat(&format!("{INBOUND}.rbac.denied")) >= 1);

    let chain = mesh.chain();
    let requests: Vec<&Value> = chain
        .iter()
        .filter(|r| r["event"] == "mcp.request")
        .collect();
    assert_eq!(requests.len(), 1, "{chain:#?}");
    assert_eq!(requests[0]["decision"], "allow", "{chain:#?}");
    assert_eq!(requests[0]["messages"][0]["id"], 1, "{chain:#?}");
}
