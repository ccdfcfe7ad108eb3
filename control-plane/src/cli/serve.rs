//! `tollgate serve`: the gRPC control plane.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::server::TcpIncoming;

use serde_json::{Map, Value};

use crate::access::{Access, AccessLayer, Groups, Refusals};
use crate::issuer::DevIssuer;
use crate::operator;
use crate::pb::audit_server::AuditServer;
use crate::service::AuditService;
use crate::session_binding::SessionBindings;
use crate::store::{Location, Options, Store};
use crate::tls::Transport;

/// How long open calls and connections may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit store: sled:PATH (default <home>/audit.sled), or a postgres:// URL that
    /// several replicas share (docs/postgres.md).
    #[arg(long, env = "TOLLGATE_STORE")]
    store: Option<String>,
    /// Address for gRPC; port 0 picks a free port (the address taken is printed). The same
    /// setting as every command's --server and `make run`'s control plane.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// Sign a checkpoint at least every this many records.
    #[arg(long, env = "TOLLGATE_CHECKPOINT_EVERY", default_value_t = 1000)]
    checkpoint_every: u64,
    /// ... and at least this often, also when no record arrives (its time shows liveness).
    #[arg(long, env = "TOLLGATE_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// Origin line of the checkpoints (the log's name, e.g. audit.example.com/tollgate); used
    /// when the store is created, checked against it afterwards. Default: a random name.
    #[arg(long, env = "TOLLGATE_ORIGIN")]
    origin: Option<String>,
    /// Address for the Prometheus `/metrics` and `/healthz` HTTP listener (port 0 picks a free
    /// port; the address taken is printed). Default: no such listener.
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Witness policy (C2SP tlog-policy: `log`, `witness <name> <vkey> [<url>]`, `group`,
    /// `quorum` lines): each new checkpoint is sent to the witnesses with a URL, and published
    /// once the quorum has cosigned it. Without it, checkpoints are published with the log's
    /// signature alone.
    #[arg(long, env = "TOLLGATE_WITNESS_POLICY")]
    witness_policy: Option<PathBuf>,
    /// File the newest published checkpoint (a C2SP checkpoint note with its cosignatures) is
    /// written to, replaced atomically, for monitors; it is also served at GET /checkpoint on
    /// --metrics-listen. Default: <home>/checkpoint.
    #[arg(long, env = "TOLLGATE_PUBLISH_CHECKPOINT")]
    publish_checkpoint: Option<PathBuf>,
    /// Threads serving gRPC (the audit writer has its own). Default: one per CPU but one, at
    /// least one: the writer's thread gets a core of its own, and fewer idle gRPC threads mean
    /// fewer cross-core wake-ups per record (BENCHMARKS.md, "One gRPC thread fewer").
    #[arg(long, env = "TOLLGATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(flatten)]
    approvals: crate::approvals::Config,
    #[command(flatten)]
    revocations: crate::revocations::Settings,
    #[command(flatten)]
    sessions: crate::session_binding::SessionSettings,
    #[command(flatten)]
    tls: crate::tls::ServerArgs,
    #[command(flatten)]
    access: crate::access::AccessSettings,
    #[command(flatten)]
    retention: crate::archive::RetentionSettings,
    #[command(flatten)]
    console: crate::console::ConsoleSettings,
}

impl Args {
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.filter(|n| *n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |cpus| cpus.get().saturating_sub(1).max(1))
        })
    }
}

pub async fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    restrict_to_owner(home)?;
    let issuer = DevIssuer::at(home);
    if issuer.ensure(false)? {
        eprintln!(
            "tollgate: created the dev issuer key {}",
            issuer.key_path.display()
        );
    }
    // Certificates and the policy first: a control plane that cannot serve TLS or judge
    // approvals as configured must not open the store.
    let transport = Transport::load(&args.tls, home).context("setting up TLS")?;
    let retention = args.retention.retention()?.map(Arc::new);
    let judge = match &args.approvals.policy {
        Some(path) => Some(Arc::new(crate::approvals::judge::Judge::load(path)?)),
        None => {
            eprintln!("tollgate: no --policy: approval requests will be refused (the filter's policy file judges them)");
            None
        }
    };
    if matches!(transport, Transport::Plaintext) {
        eprintln!(
            "tollgate: WARNING: serving gRPC without TLS (--insecure-plaintext): anyone who reaches {} is taken for the gateway",
            args.listen
        );
    }
    // The operators' keys and the webhook too: a URL that cannot be used stops the start.
    crate::approvals::http::init(args.approvals.http_ca.as_deref())
        .context("setting up the HTTP client")?;
    let witnesses = match &args.witness_policy {
        Some(path) => Some(Arc::new(
            crate::witness::Witnesses::load(path).context("--witness-policy")?,
        )),
        None => None,
    };
    if let Some(url) = &args.approvals.approval_webhook {
        crate::approvals::http::check_url(url).context("--approval-webhook")?;
    }
    let operators = crate::approvals::auth::OperatorAuth::new(
        args.approvals.jwks_source(home),
        args.approvals.operator_issuer.clone(),
        args.approvals.operator_audience.clone(),
    )
    .await
    .context("loading the operators' signing keys (--operator-jwks)")?;
    let location = Location::parse(args.store.as_deref(), home).map_err(anyhow::Error::msg)?;
    let options = Options {
        origin: args.origin.clone(),
        checkpoint_every: args.checkpoint_every,
        checkpoint_interval: args.checkpoint_interval,
        ..Options::new(home)
    };
    let store = Arc::new(
        Store::open(&location, &options)
            .await
            .with_context(|| format!("opening the audit store {}", location.display()))?,
    );
    let opened = store.opened().clone();
    eprintln!(
        "tollgate: audit store {} holds {} records (log {})",
        location.display(),
        opened.records,
        store.origin()
    );
    if opened.unclean.is_some() {
        eprintln!(
            "tollgate: the previous run did not shut down cleanly; recovered {} records ({} Merkle leaves rebuilt) and recorded it",
            opened.records, opened.merkle_rebuilt
        );
    }
    if let Some(warning) = witnesses.as_ref().and_then(|w| {
        crate::witness::client::log_key_warning(w.policy(), &store.verifiers().unwrap_or_default())
    }) {
        eprintln!("tollgate: WARNING: {warning}");
    }
    let published = crate::witness::Published::new(
        args.publish_checkpoint
            .clone()
            .unwrap_or_else(|| home.join("checkpoint")),
    );
    crate::witness::client::spawn_publisher(store.clone(), witnesses.clone(), published.clone());
    let started = std::time::Instant::now();
    let signing_key = store
        .verifiers()?
        .last()
        .map(|k| k.label())
        .unwrap_or_default();
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.start".into());
    event.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    event.insert("process".into(), operator::process_json());
    event.insert("origin".into(), store.origin().into());
    event.insert("signingKey".into(), signing_key.into());
    event.insert("records".into(), opened.records.into());
    event.insert("recovered".into(), opened.unclean.is_some().into());
    event.insert("checkpointEvery".into(), args.checkpoint_every.into());
    event.insert(
        "checkpointIntervalMillis".into(),
        u64::try_from(args.checkpoint_interval.as_millis())
            .unwrap_or(u64::MAX)
            .into(),
    );
    event.insert("listen".into(), args.listen.to_string().into());
    event.insert(
        "retention".into(),
        retention.as_ref().map_or_else(
            || serde_json::json!({"archive": false, "note": "no --archive-dir: every record stays in the hot store"}),
            |r| r.to_json(),
        ),
    );
    event.insert(
        "policy".into(),
        judge
            .as_ref()
            .map_or(Value::Null, |j| j.source().to_owned().into()),
    );
    event.insert(
        "transport".into(),
        match &transport {
            Transport::Tls { description, .. } => {
                let mut tls = description.clone();
                tls["gatewayIdentities"] = args.tls.gateway_identities.clone().into();
                serde_json::json!({ "tls": tls })
            }
            Transport::Plaintext => serde_json::json!({ "plaintext": true, "insecure": true }),
        },
    );
    store
        .append_event(&event)
        .await
        .context("recording the start in the audit log")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // The console's listener before the approvals service: approval links name its address.
    let console_listener = match args.console.console_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the console"))?,
        ),
        None => None,
    };
    let mut approvals_config = args.approvals.clone();
    let console_url = match &console_listener {
        Some(listener) => Some(crate::console::public_url(
            listener.local_addr()?,
            approvals_config.console_url.as_deref(),
        )?),
        None => None,
    };
    if approvals_config.console_url.is_none() {
        approvals_config.console_url.clone_from(&console_url);
    }
    let refusals = Refusals::new(store.clone());
    let registry = crate::revocations::registry::Registry::open(
        store.clone(),
        args.revocations.revocation_group.clone(),
    )?;
    let access = Arc::new(Access::new(
        args.tls.gateway_identities.clone(),
        matches!(transport, Transport::Plaintext),
        refusals.clone(),
        operators.clone(),
        Groups {
            auditors: args.access.auditor_groups.clone(),
            admins: args.revocations.revocation_group.clone(),
            approvers: judge
                .as_ref()
                .map(|j| j.approver_groups())
                .unwrap_or_default(),
        },
        registry.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuditServer<AuditService>>().await;
    let approvals = crate::approvals::service::build(
        &approvals_config,
        store.clone(),
        judge,
        registry.clone(),
    )?;
    health
        .set_serving::<crate::pb::approvals_server::ApprovalsServer<crate::approvals::ApprovalsService>>()
        .await;
    let revocations = crate::revocations::service::build(registry);

    let sessions = Arc::new(
        SessionBindings::open(&store, &args.sessions).context("opening the session bindings")?,
    );
    crate::session_binding::spawn_sweeper(sessions.clone(), store.clone());

    if let Some(retention) = &retention {
        crate::archive::spawn_retention(store.clone(), retention.clone(), witnesses.clone());
    }

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<&'static str>();
    // Which signal stopped the server, set before the server starts to stop: the stop record
    // must name it even when the server finishes before the grace timer below is polled.
    let signal = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stopped_by = signal.clone();
    let router = tonic::transport::Server::builder()
        .layer(AccessLayer(access))
        .add_service(health_service)
        .add_service(AuditServer::new(
            AuditService::new(store.clone(), sessions, witnesses.clone())
                .with_archive(retention.clone()),
        ))
        .add_service(approvals)
        .add_service(revocations);
    let console = match (console_listener, &console_url) {
        (Some(listener), Some(url)) => {
            // The console calls the same services through the same access layer, in process.
            let (in_process, connections) = crate::console::InProcess::new();
            tokio::spawn(router.clone().serve_with_incoming(connections));
            let parts = crate::console::Parts {
                store: store.clone(),
                operators,
                operator_issuer: args.approvals.operator_issuer.clone(),
                operator_audience: args.approvals.operator_audience.clone(),
                home: home.to_path_buf(),
                published: published.clone(),
                services: in_process.channel(),
            };
            let console = crate::console::Console::new(args.console.clone(), url.clone(), parts)
                .await
                .context("setting up the console (--console)")?;
            Some((console, listener))
        }
        _ => None,
    };
    let shutdown = async move {
        let signal = shutdown_signal().await;
        *stopped_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(signal);
        let _ = stopping_tx.send(signal);
    };
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match transport {
        Transport::Tls { acceptor, .. } => {
            let incoming = crate::tls::incoming(listener, acceptor, move |peer, reason| {
                refusals.handshake(peer, reason)
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
        Transport::Plaintext => {
            // Small unary calls: Nagle's delay would add tens of milliseconds to every append.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
    };

    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "tollgate control plane listening on {address}")?;
    if let (Some((console, listener)), Some(url)) = (console, &console_url) {
        writeln!(stdout, "tollgate console at {url}")?;
        tokio::spawn(console.serve(listener));
    }
    if let Some(listener) = metrics_listener {
        writeln!(
            stdout,
            "tollgate metrics at http://{}/metrics",
            listener.local_addr()?
        )?;
        tokio::spawn(crate::metrics::serve(
            listener,
            crate::metrics::Metrics::new(store.clone()),
            published,
        ));
    }
    stdout.flush()?;
    drop(stdout);

    // Graceful shutdown waits for open connections; a client that keeps one open (Envoy does)
    // must not hold the process forever, so the wait is bounded.
    let grace = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.context("grpc server failed")?,
        () = grace => eprintln!("tollgate: connections still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    health.set_not_serving::<AuditServer<AuditService>>().await;
    let (records, flushes) = (store.durable_len(), store.flushes());
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.stop".into());
    event.insert("process".into(), operator::process_json());
    let signal = *signal.lock().unwrap_or_else(|e| e.into_inner());
    event.insert("signal".into(), signal.map_or(Value::Null, Value::from));
    event.insert("records".into(), records.into());
    event.insert("flushes".into(), flushes.into());
    let flush_millis = u64::try_from(store.flush_time().as_millis()).unwrap_or(u64::MAX);
    event.insert("flushMillis".into(), flush_millis.into());
    event.insert(
        "checkpointsSigned".into(),
        store.checkpoints_signed().into(),
    );
    event.insert("uptimeSeconds".into(), started.elapsed().as_secs().into());
    if let Err(e) = store.append_event(&event).await {
        eprintln!("tollgate: cannot record the stop in the audit log: {e}");
    }
    // Appends still queued are answered, a last checkpoint signed and everything flushed
    // before the process exits; the clean-shutdown marker is cleared last.
    store.close().await?;
    eprintln!(
        "tollgate: stopped; {records} records, {flushes} flushes taking {flush_millis} ms this run"
    );
    Ok(ExitCode::SUCCESS)
}

/// The state directory holds the audit chain, the signing keys and the dev PKI: only its owner
/// may list or enter it (0700), whatever the umask made of it.
fn restrict_to_owner(home: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home)
        .with_context(|| format!("cannot read {}", home.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", home.display()))?;
        eprintln!(
            "tollgate: {} was readable by others (mode {:o}); it is now 0700",
            home.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM and says which.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("tollgate: cannot watch SIGTERM ({e}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    eprintln!("tollgate: shutting down");
    name
}
