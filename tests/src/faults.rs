//! Faults injected for real between the processes of a stack, for the failure tests: a TCP proxy
//! that delays what Envoy sends to the control plane, and concurrent MCP calls sorted by how they
//! ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{post_mcp, HttpAnswer};

/// A loopback TCP proxy in front of the control plane. Every chunk Envoy sends is held for the
/// current delay before it is passed on, so a gRPC call really takes that much longer; answers
/// pass at once. Envoy points at `addr` (`--control-plane` in `StackOptions::render_args`); the
/// target is set once the stack has chosen the control plane's address.
pub struct DelayProxy {
    pub addr: String,
    delay_ms: Arc<AtomicU64>,
    target: Arc<Mutex<Option<String>>>,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start() -> Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let target: Arc<Mutex<Option<String>>> = Arc::default();
        let accept = {
            let (delay_ms, target) = (Arc::clone(&delay_ms), Arc::clone(&target));
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let to = target.lock().ok().and_then(|t| t.clone());
                    // No target yet: the connection is refused, as if the control plane were down.
                    let Some(to) = to else { continue };
                    tokio::spawn(relay(inbound, to, Arc::clone(&delay_ms)));
                }
            })
        };
        Ok(DelayProxy {
            addr,
            delay_ms,
            target,
            accept,
        })
    }

    pub fn set_target(&self, addr: &str) {
        if let Ok(mut target) = self.target.lock() {
            *target = Some(addr.to_owned());
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(inbound: TcpStream, to: String, delay_ms: Arc<AtomicU64>) {
    let Ok(outbound) = TcpStream::connect(&to).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = in_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let delay = delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if out_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = out_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// A `tools/call` request body whose id names the call.
pub fn tool_call(id: &str, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
           "params":{"name":tool,"arguments":arguments}})
    .to_string()
}

/// How one call through the gateway ended.
#[derive(Debug)]
pub enum Ended {
    /// An HTTP answer (whatever its status).
    Answered(HttpAnswer),
    /// No answer: the connection was reset or closed (e.g. a response that could not be
    /// recorded is not released).
    Broken(String),
}

/// `clients` concurrent callers, each making `calls` calls one after the other; call `c-i` of
/// client `c` gets the id `"{prefix}-{c}-{i}"`. `pause_between` lets a test act mid-load.
pub async fn concurrent_calls(
    url: &str,
    token: &str,
    prefix: &str,
    clients: usize,
    calls: usize,
    body: impl Fn(&str) -> String + Send + Sync + 'static,
) -> Vec<(String, Ended)> {
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, token, prefix, body) = (
            url.to_owned(),
            token.to_owned(),
            prefix.to_owned(),
            Arc::clone(&body),
        );
        tasks.push(tokio::spawn(async move {
            let mut ended = Vec::new();
            for i in 0..calls {
                let id = format!("{prefix}-{c}-{i}");
                let answer = post_mcp(&url, Some(&token), None, body(&id)).await;
                let outcome = match answer {
                    Ok(answer) => Ended::Answered(answer),
                    Err(error) => Ended::Broken(format!("{error:#}")),
                };
                ended.push((id, outcome));
            }
            ended
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(ended) = task.await {
            all.extend(ended);
        }
    }
    all
}

/// The JSON-RPC ids of the `mcp.request` records in the chain that were forwarded.
pub fn forwarded_ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["event"] == "mcp.request" && r["outcome"] == "forwarded")
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// An Envoy stat's value (`/stats?filter=`), e.g. `http.mcp.downstream_rq_active`.
pub fn envoy_stat(admin_port: u16, name: &str) -> Option<u64> {
    let text = crate::admin_get(admin_port, &format!("/stats?filter=^{name}$")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes Envoy's allocator holds for live objects (admin `/memory`, `allocated`).
pub fn envoy_memory(admin_port: u16) -> Result<u64> {
    let text = crate::admin_get(admin_port, "/memory")?;
    let memory: Value = serde_json::from_str(&text)?;
    let allocated = memory["allocated"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .or_else(|| memory["allocated"].as_u64());
    allocated.ok_or_else(|| anyhow::anyhow!("no allocated figure in /memory: {text}"))
}

/// Raises this process's open-file limit (inherited by the processes it starts) to at least
/// `wanted`, the hard limit too where allowed (root). Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return Ok(current);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(hard.max(wanted)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(wanted);
    }
    // Not root: as far as the hard limit allows.
    let capped = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, capped).map_err(|e| anyhow::anyhow!("setrlimit: {e}"))?;
    Ok(hard)
}

/// The head of a POST to `url`'s path with a bearer token, announcing `content_length` body
/// bytes: what a slowloris or an idle stream sends before (not) sending its body.
pub fn post_head(url: &str, token: &str, content_length: usize) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/mcp");
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

/// The address (`127.0.0.1:port`) of an `http://` URL.
pub fn url_addr(url: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

impl crate::Stack {
    /// Renders the bootstrap again with another plugin configuration (`policy` included). With
    /// `--lds-dir` among the render arguments, Envoy picks the new listener up from the file
    /// without a restart.
    pub fn reload_config(&self, config: &Value) -> Result<()> {
        let out = std::process::Command::new("python3")
            .args(&self.render_args)
            .args(["--config", &config.to_string()])
            .output()?;
        if !out.status.success() {
            anyhow::bail!("render.py: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// A stack whose payments server answers in JSON: a `tools/call` needs no session, each POST
/// stands alone.
pub fn json_server() -> crate::StackOptions {
    crate::StackOptions {
        server_args: vec!["--json-response".to_owned()],
        ..crate::StackOptions::default()
    }
}

/// A `get_customer` call with JSON-RPC id `id` (its answer holds a card number).
pub fn get_customer(id: &str) -> String {
    tool_call(id, "get_customer", json!({"customer_id": "cus_1"}))
}

/// The ids of the `tools/call` requests the payments server received.
pub fn server_call_ids(stack: &crate::Stack) -> std::collections::BTreeSet<String> {
    stack
        .server_requests()
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Polls until a call through the gateway is answered 200 (the path has recovered).
pub async fn wait_for_success(stack: &crate::Stack, token: &str, what: &str) -> HttpAnswer {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let answer = post_mcp(
            &stack.gateway_url,
            Some(token),
            None,
            get_customer(&format!("{what}-probe-{n}")),
        )
        .await;
        match answer {
            Ok(answer) if answer.status == 200 => return answer,
            other if std::time::Instant::now() > deadline => {
                panic!("{what}: no success: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
