//! `tollgate serve`: the gRPC control plane.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::server::TcpIncoming;

use crate::issuer::DevIssuer;
use crate::pb::audit_server::AuditServer;
use crate::service::AuditService;
use crate::store::Store;

/// How long open calls and connections may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address for gRPC; port 0 picks a free port (the address taken is printed).
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
}

pub async fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let issuer = DevIssuer::at(home);
    if issuer.ensure(false)? {
        eprintln!(
            "tollgate: created the dev issuer key {}",
            issuer.key_path.display()
        );
    }
    let store_path = home.join("audit.sled");
    let store = Arc::new(Store::open(&store_path)?);
    eprintln!(
        "tollgate: audit store {} holds {} records",
        store_path.display(),
        store.durable_len()
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // Small unary calls: Nagle's delay would add tens of milliseconds to every append.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuditServer<AuditService>>().await;

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuditServer::new(AuditService::new(store.clone())))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown_signal().await;
            let _ = stopping_tx.send(());
        });

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "tollgate control plane listening on {address}")?;
    stdout.flush()?;
    drop(stdout);

    // Graceful shutdown waits for open connections; a client that keeps one open (Envoy does)
    // must not hold the process forever, so the wait is bounded.
    let grace = async {
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
    // Appends still queued are answered and flushed before the process exits.
    let (records, flushes) = (store.durable_len(), store.flushes());
    tokio::task::spawn_blocking(move || store.close()).await??;
    eprintln!("tollgate: stopped; {records} records, {flushes} flushes this run");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("tollgate: cannot watch SIGTERM ({e}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("tollgate: shutting down");
}
