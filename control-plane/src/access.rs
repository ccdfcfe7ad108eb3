//! Who may call what on the control plane: one tower layer in front of every service, with a
//! table from gRPC method to the caller it needs. It runs before any service sees the call, and
//! every refusal is recorded in the audit log (rate-limited, so that refusals cannot flood it).
//!
//! - The gateway (an Envoy with a client certificate that chains to the configured CA and names
//!   a configured gateway identity) appends records, requests and awaits approvals and reads
//!   revocations. Nothing else: a stolen gateway certificate does not read or decide anything.
//! - Operators call the other methods with a bearer token that this layer verifies against the
//!   operators' issuer (audience `tollgate-operators`), never on a connection that presented the
//!   gateway's certificate. Reading the audit log needs an auditor group (`--auditor-group`, or
//!   the security admins' `--revocation-group`), rotating the signing key the security admins';
//!   the services check the groups of decisions and revocations themselves. The verified operator
//!   goes into the request's extensions, for the records of what it read or did. An operator
//!   named by an active revocation is refused on every call, like any caller of the gateway.
//! - Anyone may ask the health service.
//!
//! With `--insecure-plaintext` there are no certificates: every caller is taken for the gateway
//! (that mode is for a control plane behind an authenticating proxy) and still cannot call an
//! operator method without a token.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::approvals::auth::{OperatorAuth, VerifiedOperator};
use crate::revocations::registry::Registry;
use crate::store::Store;

/// The caller a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Gateway,
    GatewayOrOperator,
    Operator,
    Anyone,
}

/// Methods the gateway calls (and nobody else), and the few anyone may; every other method,
/// including those added later, is an operator's.
const METHODS: &[(&str, Caller)] = &[
    ("/tollgate.v1.Audit/Append", Caller::Gateway),
    ("/tollgate.v1.Audit/AppendStream", Caller::Gateway),
    ("/tollgate.v1.Approvals/Request", Caller::Gateway),
    ("/tollgate.v1.Approvals/Await", Caller::Gateway),
    ("/tollgate.v1.Revocations/List", Caller::GatewayOrOperator),
    ("/grpc.health.v1.Health/Check", Caller::Anyone),
    ("/grpc.health.v1.Health/Watch", Caller::Anyone),
];

/// Audit reads: each one recorded with the verified operator.
const AUDIT_READS: &[&str] = &[
    "/tollgate.v1.Audit/ListRecords",
    "/tollgate.v1.Audit/LogInfo",
    "/tollgate.v1.Audit/Checkpoint",
    "/tollgate.v1.Audit/ListCheckpoints",
    "/tollgate.v1.Audit/InclusionProof",
    "/tollgate.v1.Audit/ConsistencyProof",
    "/tollgate.v1.Audit/Export",
    "/tollgate.v1.Audit/StateTables",
    "/tollgate.v1.Audit/ArchivedNodes",
];
const ROTATE_KEY: &str = "/tollgate.v1.Audit/RotateKey";
/// Archiving prunes the hot store: the security admins' call, as rotating the key is.
const ARCHIVE: &str = "/tollgate.v1.Audit/Archive";
/// Approval requests show who asks for what (masked arguments included): for approvers, and the
/// auditors and security admins who read the log anyway.
const APPROVAL_READS: &[&str] = &[
    "/tollgate.v1.Approvals/List",
    "/tollgate.v1.Approvals/Get",
    "/tollgate.v1.Approvals/Watch",
];
/// Only approvers decide (the ledger then checks the approval's own group).
const DECIDE: &str = "/tollgate.v1.Approvals/Decide";

/// `serve` options: who may read the audit log.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessSettings {
    /// Operator group whose members may read and export the audit log (with the security
    /// admins of --revocation-group). Comma-separated or repeated for several.
    #[arg(
        long = "auditor-group",
        env = "TOLLGATE_AUDITOR_GROUP",
        value_delimiter = ',',
        default_value = "auditors"
    )]
    pub auditor_groups: Vec<String>,
}

pub fn needed(method: &str) -> Caller {
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or(Caller::Operator, |(_, caller)| *caller)
}

/// Who a connection proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A client certificate naming a configured gateway identity (or any caller, in plaintext).
    Gateway(Vec<String>),
    /// A client certificate from the CA that names no gateway identity.
    OtherCertificate(Vec<String>),
    /// No client certificate.
    Anonymous,
}

impl Peer {
    fn identities(&self) -> &[String] {
        match self {
            Self::Gateway(names) | Self::OtherCertificate(names) => names,
            Self::Anonymous => &[],
        }
    }
}

/// The table and the configured gateway identities.
pub struct Access {
    gateway_identities: Vec<String>,
    plaintext: bool,
    refusals: Refusals,
    operators: Arc<OperatorAuth>,
    /// Groups that may read the audit log, and the one that may rotate its key.
    readers: Vec<String>,
    admins: String,
    /// The groups the policy's `approve` rules name.
    approvers: Vec<String>,
    revocations: Arc<Registry>,
}

/// An operator's call the table lets through: the verified operator, and where the call came
/// from (for the record of a refusal by revocation). Gateway calls carry none of this.
struct OperatorCall {
    operator: VerifiedOperator,
    method: String,
    identities: Vec<String>,
    address: Option<SocketAddr>,
}

/// Which operator groups may do what.
pub struct Groups {
    /// `--auditor-group`: read and export the log.
    pub auditors: Vec<String>,
    /// `--revocation-group`: revoke, lift, rotate keys, and read the log.
    pub admins: String,
    /// The groups the policy's `approve` rules name: see and decide approval requests.
    pub approvers: Vec<String>,
}

impl Access {
    pub fn new(
        gateway_identities: Vec<String>,
        plaintext: bool,
        refusals: Refusals,
        operators: Arc<OperatorAuth>,
        groups: Groups,
        revocations: Arc<Registry>,
    ) -> Self {
        let mut readers = groups.auditors;
        readers.push(groups.admins.clone());
        Self {
            gateway_identities,
            plaintext,
            refusals,
            operators,
            readers,
            admins: groups.admins,
            approvers: groups.approvers,
            revocations,
        }
    }

    /// The operator behind an operator call, or why not: a verified token, in a group that may
    /// call `method` when the method has one.
    fn operator<B>(
        &self,
        method: &str,
        request: &http::Request<B>,
    ) -> Result<VerifiedOperator, Status> {
        let token = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "{method} needs an operator token: send `authorization: Bearer <token>` (the CLI reads TOLLGATE_TOKEN)"
                ))
            })?;
        let operator = self.operators.verify(token.trim()).map_err(Status::from)?;
        let approvers_and_readers: Vec<String>;
        let groups: &[String] = if AUDIT_READS.contains(&method) {
            &self.readers
        } else if method == ROTATE_KEY || method == ARCHIVE {
            std::slice::from_ref(&self.admins)
        } else if APPROVAL_READS.contains(&method) {
            approvers_and_readers = [self.approvers.as_slice(), &self.readers].concat();
            &approvers_and_readers
        } else if method == DECIDE {
            &self.approvers
        } else {
            return Ok(operator);
        };
        if operator.groups.iter().any(|g| groups.contains(g)) {
            Ok(operator)
        } else if groups.is_empty() {
            Err(Status::permission_denied(format!(
                "{method}: nobody may call it, the policy names no approver group"
            )))
        } else {
            Err(Status::permission_denied(format!(
                "{method} is for members of {}; {} is not one",
                groups
                    .iter()
                    .map(|g| format!("\"{g}\""))
                    .collect::<Vec<_>>()
                    .join(" or "),
                operator.sub
            )))
        }
    }

    fn peer<B>(&self, request: &http::Request<B>) -> (Peer, Option<SocketAddr>) {
        if let Some(tls) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
            let address = tls.get_ref().remote_addr();
            let Some(leaf) = tls.peer_certs().and_then(|c| c.first().cloned()) else {
                return (Peer::Anonymous, address);
            };
            let names = crate::tls::certificate_identities(&leaf);
            if names.iter().any(|n| self.gateway_identities.contains(n)) {
                return (Peer::Gateway(names), address);
            }
            return (Peer::OtherCertificate(names), address);
        }
        let address = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        if self.plaintext {
            (Peer::Gateway(Vec::new()), address)
        } else {
            (Peer::Anonymous, address)
        }
    }

    fn check<B>(&self, request: &mut http::Request<B>) -> Result<Option<OperatorCall>, Status> {
        let method = request.uri().path().to_owned();
        let (peer, address) = self.peer(request);
        let has_token = request.headers().contains_key("authorization");
        let mut decided = decide(&method, &peer, has_token, self.plaintext);
        let operator_call = match needed(&method) {
            Caller::Operator => true,
            Caller::GatewayOrOperator => !matches!(peer, Peer::Gateway(_)),
            _ => false,
        };
        let mut operator = None;
        if decided.is_ok() && operator_call {
            decided = self.operator(&method, request).map(|verified| {
                request.extensions_mut().insert(verified.clone());
                operator = Some(verified);
            });
        }
        if let Err(status) = decided {
            let mut event = refused_call(&method, peer.identities(), &status);
            if let Some(sub) = unverified_sub(request) {
                event.insert("claimedSub".into(), sub.into());
            }
            self.refusals.record(address, event);
            return Err(status);
        }
        Ok(operator.map(|operator| OperatorCall {
            operator,
            identities: peer.identities().to_vec(),
            method,
            address,
        }))
    }

    /// Refuses (and records) an operator whom an active revocation names. A list that cannot
    /// be read refuses too: a revoked operator must not get through a store hiccup.
    async fn not_revoked(&self, admitted: &OperatorCall) -> Result<(), Status> {
        let operator = &admitted.operator;
        let status = match self.revocations.revoking(&operator.identity()).await {
            Ok(None) => return Ok(()),
            Ok(Some(revocation)) => Status::permission_denied(format!(
                "{} is revoked ({}): a revoked operator may not call the control plane",
                operator.sub, revocation.id
            )),
            Err(e) => Status::unavailable(format!("cannot read the revocation list: {e}")),
        };
        let mut event = refused_call(&admitted.method, &admitted.identities, &status);
        event.insert("sub".into(), operator.sub.clone().into());
        event.insert("verified".into(), true.into());
        self.refusals.record(admitted.address, event);
        Err(status)
    }
}

/// Ok when `peer` may call `method`; otherwise the status to answer with.
pub fn decide(method: &str, peer: &Peer, has_token: bool, plaintext: bool) -> Result<(), Status> {
    let gateway = matches!(peer, Peer::Gateway(_));
    match needed(method) {
        Caller::Anyone => Ok(()),
        Caller::Gateway if gateway => Ok(()),
        Caller::GatewayOrOperator if gateway || has_token => Ok(()),
        Caller::Gateway | Caller::GatewayOrOperator => Err(match peer {
            Peer::Anonymous => Status::unauthenticated(format!(
                "{method} is for the gateway: present its client certificate"
            )),
            _ => Status::permission_denied(format!(
                "{method} is for the gateway; this client certificate names no gateway identity"
            )),
        }),
        // The gateway's certificate is not an operator, with or without a token: a gateway
        // that is taken over reads and decides nothing.
        Caller::Operator if gateway && !plaintext => Err(Status::permission_denied(format!(
            "{method} is for operators; the gateway's certificate may not call it"
        ))),
        Caller::Operator => Ok(()),
    }
}

/// The `sub` a refused call's token claims (not verified: it says who tried, as they put it).
fn unverified_sub<B>(request: &http::Request<B>) -> Option<String> {
    let token = request.headers().get("authorization")?.to_str().ok()?;
    crate::operator::unverified_sub(token.strip_prefix("Bearer ").unwrap_or(token).trim())
}

/// The record of a refused call. The path is the caller's text (any path reaches the layer), so
/// it is cut to [`MAX_RECORDED_PATH`] characters and, like every field, masked.
fn refused_call(method: &str, identities: &[String], status: &Status) -> Map<String, Value> {
    let mut event = Map::new();
    let method: String = method.chars().take(MAX_RECORDED_PATH).collect();
    event.insert("method".into(), method.into());
    event.insert("identities".into(), identities.to_vec().into());
    event.insert("code".into(), format!("{:?}", status.code()).into());
    event.insert("reason".into(), status.message().into());
    event
}

const MAX_RECORDED_PATH: usize = 200;

/// Records refusals (of a handshake or of a call) as `controlPlane.refused`: at most
/// [`REFUSALS_PER_WINDOW`] per [`REFUSAL_WINDOW`], then only counted; the next record after a
/// window with unrecorded refusals says how many there were.
#[derive(Clone)]
pub struct Refusals {
    store: Arc<Store>,
    window: Arc<Mutex<Window>>,
}

const REFUSALS_PER_WINDOW: u32 = 60;
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

struct Window {
    started: Instant,
    recorded: u32,
    unrecorded: u64,
}

impl Refusals {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            window: Arc::new(Mutex::new(Window {
                started: Instant::now(),
                recorded: 0,
                unrecorded: 0,
            })),
        }
    }

    pub fn record(&self, peer: Option<SocketAddr>, mut event: Map<String, Value>) {
        crate::metrics::count_refusal();
        let unrecorded = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if window.started.elapsed() >= REFUSAL_WINDOW {
                window.started = Instant::now();
                window.recorded = 0;
            }
            if window.recorded >= REFUSALS_PER_WINDOW {
                window.unrecorded += 1;
                return;
            }
            window.recorded += 1;
            std::mem::take(&mut window.unrecorded)
        };
        event.insert("event".into(), "controlPlane.refused".into());
        event.insert(
            "peer".into(),
            peer.map_or(Value::Null, |p| p.to_string().into()),
        );
        if unrecorded > 0 {
            event.insert("unrecordedBefore".into(), unrecorded.into());
        }
        let Some(event) = crate::service::masked_event(&event) else {
            eprintln!("tollgate: cannot record a refused caller: the record could not be masked");
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.append_event(&event).await {
                eprintln!("tollgate: cannot record a refused caller: {e}");
            }
        });
    }

    /// A TLS handshake that failed (no common protocol, a certificate from another CA, ...).
    pub fn handshake(&self, peer: std::net::SocketAddr, reason: String) {
        let mut event = Map::new();
        event.insert("reason".into(), reason.into());
        self.record(Some(peer), event);
    }
}

/// The layer put in front of all services.
#[derive(Clone)]
pub struct AccessLayer(pub Arc<Access>);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let admitted = match self.access.check(&mut request) {
            Ok(Some(admitted)) => admitted,
            Ok(None) => return Box::pin(self.inner.call(request)),
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        // The service that was polled ready serves this call; its clone waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let access = self.access.clone();
        Box::pin(async move {
            match access.not_revoked(&admitted).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_method_needs_its_caller() {
        let gateway = Peer::Gateway(vec![crate::tls::GATEWAY_IDENTITY.into()]);
        let other = Peer::OtherCertificate(vec!["spiffe://elsewhere/agent".into()]);
        let code = |method: &str, peer: &Peer, token: bool| {
            decide(method, peer, token, false).err().map(|s| s.code())
        };
        let append = "/tollgate.v1.Audit/Append";
        assert_eq!(code(append, &gateway, false), None);
        assert_eq!(
            code(append, &Peer::Anonymous, true),
            Some(Code::Unauthenticated)
        );
        assert_eq!(code(append, &other, false), Some(Code::PermissionDenied));
        let export = "/tollgate.v1.Audit/Export";
        assert_eq!(code(export, &gateway, true), Some(Code::PermissionDenied));
        assert_eq!(code(export, &Peer::Anonymous, true), None);
        let list = "/tollgate.v1.Revocations/List";
        assert_eq!(code(list, &gateway, false), None);
        assert_eq!(code(list, &Peer::Anonymous, true), None);
        assert_eq!(
            code(list, &Peer::Anonymous, false),
            Some(Code::Unauthenticated)
        );
        assert_eq!(
            code("/tollgate.v1.Audit/Invented", &gateway, false),
            Some(Code::PermissionDenied)
        );
        assert_eq!(
            code("/grpc.health.v1.Health/Check", &Peer::Anonymous, false),
            None
        );
    }

    #[test]
    fn a_refused_path_is_cut_and_masked_before_it_is_recorded() {
        let path = format!("/tollgate.v1.Audit/4111111111111111{}", "x".repeat(500));
        let status = Status::permission_denied("no");
        let event = crate::service::masked_event(&refused_call(&path, &[], &status)).unwrap();
        let method = event["method"].as_str().unwrap();
        assert!(!method.contains("4111111111111111"), "{method}");
        assert!(
            method.contains("1111"),
            "the masked form keeps the last four: {method}"
        );
        assert!(method.chars().count() <= MAX_RECORDED_PATH, "{method}");
        assert!(event.contains_key("maskedAtAppend"), "{event:?}");
    }
}
