//! `tollgate serve --metrics-listen ADDR`: Prometheus text on `GET /metrics`, a health answer
//! on `GET /healthz` and the newest published checkpoint (a C2SP checkpoint note with its
//! witness cosignatures, for monitors) on `GET /checkpoint`, over plain HTTP/1.1, for scrapers
//! and probes that do not speak gRPC (the gRPC health service answers on the main port).
//! Read-only: it never touches the chain.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::store::Store;
use crate::witness::Published;

/// Largest request head read; a scrape is one short line and a few headers.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the signed-checkpoint count is looked at, to date the newest checkpoint.
const CHECKPOINT_POLL: Duration = Duration::from_millis(200);

/// Callers and handshakes refused by the access layer, this run (also those not recorded).
static REFUSED: AtomicU64 = AtomicU64::new(0);

pub fn count_refusal() {
    REFUSED.fetch_add(1, Ordering::Relaxed);
}

pub struct Metrics {
    store: Arc<Store>,
    /// Records in the chain when the store was opened: appends this run are the difference.
    opened_records: u64,
    started: Instant,
    /// Checkpoints signed this run as last seen, and when the newest checkpoint was signed.
    last_checkpoint: Mutex<(u64, Option<SystemTime>)>,
}

impl Metrics {
    pub fn new(store: Arc<Store>) -> Arc<Metrics> {
        // The newest checkpoint of an earlier run carries its own time.
        let previous = store
            .reader()
            .latest_checkpoint()
            .ok()
            .flatten()
            .map(|c| c.note)
            .and_then(|note| {
                note.lines()
                    .find_map(|l| l.strip_prefix("time "))
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
            });
        Arc::new(Metrics {
            opened_records: store.opened().records,
            last_checkpoint: Mutex::new((store.checkpoints_signed(), previous)),
            store,
            started: Instant::now(),
        })
    }

    fn note_checkpoints(&self) {
        let signed = self.store.checkpoints_signed();
        let mut last = self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if signed != last.0 {
            *last = (signed, Some(SystemTime::now()));
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        self.note_checkpoints();
        let records = self.store.durable_len();
        let flushes = self.store.flushes();
        let flush_seconds = self.store.flush_time().as_secs_f64();
        let checkpoint_time = self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "tollgate_audit_appends_total",
            "counter",
            "Records appended to the audit chain by this process.",
            records.saturating_sub(self.opened_records).to_string(),
        );
        metric(
            "tollgate_audit_chain_records",
            "gauge",
            "Records in the audit chain known durable.",
            records.to_string(),
        );
        metric(
            "tollgate_audit_flushes_total",
            "counter",
            "Group-commit flushes of the audit store by this process.",
            flushes.to_string(),
        );
        metric(
            "tollgate_audit_flush_seconds_total",
            "counter",
            "Time spent waiting for audit store flushes (divide by the flushes for the mean latency).",
            format!("{flush_seconds:.6}"),
        );
        metric(
            "tollgate_checkpoints_signed_total",
            "counter",
            "Checkpoints signed by this process.",
            self.store.checkpoints_signed().to_string(),
        );
        if let Some(at) = checkpoint_time {
            let age = SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
                .as_secs_f64();
            metric(
                "tollgate_checkpoint_age_seconds",
                "gauge",
                "Seconds since the newest signed checkpoint.",
                format!("{age:.3}"),
            );
        }
        metric(
            "tollgate_refused_total",
            "counter",
            "Calls and TLS handshakes the control plane refused (not the gateway, no client certificate, a certificate from another CA).",
            REFUSED.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "tollgate_store_healthy",
            "gauge",
            "1 while the audit store takes appends, 0 once a write failed.",
            u8::from(self.store.healthy()).to_string(),
        );
        metric(
            "tollgate_uptime_seconds",
            "gauge",
            "Seconds since the control plane started.",
            self.started.elapsed().as_secs().to_string(),
        );
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/checkpoint` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, published: Arc<Published>) {
    {
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECKPOINT_POLL).await;
                metrics.note_checkpoints();
            }
        });
    }
    while let Ok((stream, _)) = listener.accept().await {
        let (metrics, published) = (Arc::clone(&metrics), Arc::clone(&published));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &metrics, &published)).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    published: &Published,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/healthz") if metrics.store.healthy() => {
            ("200 OK", "text/plain", "ok\n".to_owned())
        }
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "audit store failed\n".to_owned(),
        ),
        ("GET", "/checkpoint") => match published.latest() {
            Some(note) => ("200 OK", "text/plain; charset=utf-8", note),
            None => (
                "404 Not Found",
                "text/plain",
                "no checkpoint published yet\n".to_owned(),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Location, Options};

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_and_checkpoints_move_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sled(dir.path().join("audit.sled"));
        let store = Arc::new(
            Store::open(&location, &Options::new(dir.path()))
                .await
                .unwrap(),
        );
        let metrics = Metrics::new(Arc::clone(&store));
        let before = metrics.render();
        assert_eq!(value(&before, "tollgate_audit_appends_total"), Some(0.0));
        assert_eq!(value(&before, "tollgate_store_healthy"), Some(1.0));
        // No checkpoint yet: no age to report.
        assert_eq!(value(&before, "tollgate_checkpoint_age_seconds"), None);

        for n in 0..3 {
            store
                .append(format!(r#"{{"event":"test","n":{n}}}"#).as_bytes())
                .await
                .unwrap();
        }
        store.checkpoint().await.unwrap();
        let after = metrics.render();
        assert_eq!(value(&after, "tollgate_audit_appends_total"), Some(3.0));
        assert!(value(&after, "tollgate_audit_chain_records").unwrap() >= 3.0);
        assert!(value(&after, "tollgate_audit_flushes_total").unwrap() >= 1.0);
        assert!(value(&after, "tollgate_checkpoints_signed_total").unwrap() >= 1.0);
        assert!(
            value(&after, "tollgate_checkpoint_age_seconds").is_some(),
            "{after}"
        );
        // Every sample has its HELP and TYPE.
        let samples = after.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            after.lines().filter(|l| l.starts_with("# TYPE")).count(),
            samples
        );
        store.close().await.unwrap();
    }
}
