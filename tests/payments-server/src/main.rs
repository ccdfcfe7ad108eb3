//! Demo payments MCP server: the realistic upstream that Tollgate's demo and tests put behind the
//! gateway. Streamable HTTP on `/mcp` (rmcp), tools that return card numbers in many shapes, and
//! tools that change payment configuration.

mod data;
mod request_log;
mod server;
mod statement;
mod wire;

use std::{future::IntoFuture, io::Write, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use clap::{builder::BoolishValueParser, Parser};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use tokio_util::sync::CancellationToken;

use crate::{
    request_log::RequestLog,
    server::{PaymentsServer, Shared},
    statement::StateSealer,
};

/// How long open connections (SSE streams) get to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Demo payments MCP server (streamable HTTP at /mcp).
#[derive(Debug, Parser)]
#[command(name = "payments-server", version)]
struct Args {
    /// Address to listen on, host:port; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "PAYMENTS_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,

    /// Also append every MCP request received, as one JSON object per line, to this file.
    #[arg(long, env = "PAYMENTS_REQUEST_LOG")]
    request_log: Option<PathBuf>,

    /// Answer POSTs with application/json instead of an SSE stream where possible. rmcp supports
    /// this only without sessions, so it implies --stateless (no Mcp-Session-Id).
    #[arg(long, env = "PAYMENTS_JSON_RESPONSE", value_parser = BoolishValueParser::new())]
    json_response: bool,

    /// Serve without sessions: no Mcp-Session-Id, every POST handled on its own (SSE answers).
    /// The env forms of these two flags take 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "PAYMENTS_STATELESS", value_parser = BoolishValueParser::new())]
    stateless: bool,

    /// Host header values accepted (rmcp's DNS-rebinding guard), comma-separated; `*` accepts any.
    #[arg(
        long,
        env = "PAYMENTS_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    allowed_hosts: Vec<String>,

    /// Write every digit and non-ASCII character inside JSON strings as a `\uXXXX` escape, in
    /// JSON and event-stream answers alike (what strict ASCII encoders do).
    #[arg(long, env = "PAYMENTS_ESCAPE_JSON", value_parser = BoolishValueParser::new())]
    escape_json: bool,

    /// Send answers in pieces of at most this many bytes, 1 ms apart, so card numbers and events
    /// are split across network reads anywhere.
    #[arg(long, env = "PAYMENTS_CHUNK_BYTES")]
    chunk_bytes: Option<usize>,

    /// When to gzip answers.
    #[arg(long, env = "PAYMENTS_GZIP", value_enum, default_value_t = wire::Gzip::Never)]
    gzip: wire::Gzip,

    /// Key (hex, at least 32 bytes) that seals the MCP 2026-07-28 `requestState` of
    /// export_statement. Default: random per process, so a state does not outlive the process;
    /// give the same key to several servers to let a retry land on any of them.
    #[arg(long, env = "PAYMENTS_REQUEST_STATE_KEY", value_parser = parse_hex_key)]
    request_state_key: Option<Vec<u8>>,
}

fn parse_hex_key(value: &str) -> Result<Vec<u8>, String> {
    let key = hex::decode(value.trim()).map_err(|e| format!("not hex: {e}"))?;
    if key.len() < 32 {
        return Err(format!("{} bytes; at least 32 are needed", key.len()));
    }
    Ok(key)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // rmcp reports rejected requests (bad Host, bad headers) through tracing; show them on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();

    let shutdown = CancellationToken::new();
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_legacy_session_mode(!(args.stateless || args.json_response))
        .with_json_response(args.json_response);
    config = if args.allowed_hosts.iter().any(|h| h.trim() == "*") {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(args.allowed_hosts.iter().map(|h| h.trim().to_owned()))
    };

    // One ledger (and one change feed and requestState key) for the whole process: rmcp builds a
    // handler per session, or per request for 2026-07-28, and a payout change made in one must be
    // visible to the next.
    let sealer = match &args.request_state_key {
        Some(key) => StateSealer::new(key).context("bad --request-state-key")?,
        None => StateSealer::random().context("cannot make a requestState key")?,
    };
    let shared = Arc::new(Shared::new(sealer));
    let mcp = StreamableHttpService::new(
        move || Ok(PaymentsServer::new(shared.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );

    let log = RequestLog::open(args.request_log.as_deref())
        .with_context(|| format!("cannot open request log {:?}", args.request_log))?;
    let app = Router::new()
        .route_service("/mcp", mcp)
        // Any other path is 404, after the request log below has seen it: a request that
        // reached the server on a path the gateway should never forward is evidence too.
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            wire::WireOptions {
                escape_json: args.escape_json,
                chunk_bytes: args.chunk_bytes,
                gzip: args.gzip,
            },
            wire::reshape,
        ))
        .layer(axum::middleware::from_fn_with_state(
            log,
            request_log::log_requests,
        ));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        // Tests wait for this exact line before connecting.
        let mut out = std::io::stdout().lock();
        writeln!(out, "payments-server listening on http://{addr}/mcp")?;
        out.flush()?;
    }
    eprintln!(
        "payments-server: sessions {}, {} responses",
        if args.stateless || args.json_response {
            "off"
        } else {
            "on"
        },
        if args.json_response { "JSON" } else { "SSE" }
    );

    // Small SSE events must leave at once, not wait on Nagle's algorithm and delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut serve = std::pin::pin!(axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future());
    tokio::select! {
        result = &mut serve => return result.context("server failed"),
        signal = shutdown_signal() => signal.context("cannot wait for signals")?,
    }
    eprintln!("payments-server: shutting down");
    // Cancelling ends rmcp's sessions and their SSE streams, which lets axum's graceful shutdown
    // finish; the timeout covers a client that keeps a connection open regardless.
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, serve).await {
        Ok(result) => result.context("server failed during shutdown")?,
        Err(_) => eprintln!("payments-server: connections still open after grace period; exiting"),
    }
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
