//! Harness for the end-to-end tests: starts the real control plane, the demo payments MCP server
//! and Envoy with the Tollgate filter on free loopback ports, waits for each to be ready by
//! polling, and stops them when dropped, also when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub mod faults;
pub mod gate;
pub mod oidc;
pub mod peers;
pub use gate::{assert_gate_invariant, gate_invariant_violations};
pub use oidc::{Directory, OidcProvider};
pub use peers::{ClientHop, Upstream};

/// The checkout this crate lives in.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put the binaries: the test executable lives in `<target>/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn tollgate_bin() -> PathBuf {
    bin_dir().join("tollgate")
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn envoy_bin() -> PathBuf {
    env_path("TOLLGATE_ENVOY", workspace().join(".venv/bin/envoy"))
}

pub fn wasm_file() -> PathBuf {
    env_path(
        "TOLLGATE_WASM",
        workspace().join("target/wasm32-wasip1/wasm-release/tollgate_filter.wasm"),
    )
}

/// A loopback port nobody listens on right now.
/// A port nobody listens on, below the ephemeral range (32768 and up on Linux): a port the
/// kernel handed out could be taken, before Envoy binds it, by one of the thousands of client
/// sockets a concurrent test opens. Each test process walks its own stretch of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(FIRST + offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process that is killed when dropped. Its stdout lines arrive on a channel (for
/// readiness lines); its stderr goes to a log file in the test's directory.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines,
            log,
        })
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!("{} exited ({status}): {}", self.name, self.log_tail());
                    }
                }
                Err(_) => bail!(
                    "{} not ready in {timeout:?}: {}",
                    self.name,
                    self.log_tail()
                ),
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to start a stack.
#[derive(Clone)]
pub struct StackOptions {
    /// The policy in the plugin configuration; the demo's example policy by default.
    pub policy: Value,
    /// Extra fields of the plugin configuration.
    pub config: Value,
    /// Extra arguments for the payments server.
    pub server_args: Vec<String>,
    pub envoy_workers: u32,
    /// Another MCP server behind the gateway instead of the payments server (then
    /// `server_args` are not used and `server_requests` stays empty).
    pub upstream: Option<Upstream>,
    /// A second listener in front of the gateway that adds a valid token (`Stack::hop_url`).
    pub client_hop: Option<ClientHop>,
    /// Run a real OIDC provider (`Stack::idp`) knowing these people and workloads: Envoy
    /// fetches its JWKS (`remote_jwks`) and the control plane verifies operators against it,
    /// instead of the dev issuer's key file.
    pub idp: Option<Directory>,
    /// How long Envoy caches the provider's JWKS before fetching it again.
    pub jwks_cache_secs: u32,
    /// Extra arguments for `envoy/render.py` (later ones win, e.g. `--control-plane` through a
    /// fault-injecting proxy, or `--route-timeout 1s`).
    pub render_args: Vec<String>,
    /// Extra arguments for `tollgate serve` (also on restart).
    pub control_plane_args: Vec<String>,
    /// Serve the MCP listener over TLS (ALPN h2 and http/1.1) with a fresh self-signed
    /// certificate for localhost: `envoy/render.py --tls-cert FILE --tls-key FILE`. The
    /// gateway URL is then `https://`.
    pub gateway_tls: bool,
    /// Another bootstrap renderer run instead of `envoy/render.py`, with the same arguments
    /// (e.g. `envoy/istio/sidecar.py`).
    pub renderer: Option<PathBuf>,
    /// Run the control plane with `--insecure-plaintext` and Envoy's cluster to it in h2c,
    /// instead of mutual TLS with the dev PKI `tollgate serve` creates in the stack's home.
    pub control_plane_plaintext: bool,
    /// Envoy's environment besides the test's own (e.g. the panRef key).
    pub envoy_env: Vec<(String, String)>,
    /// The control plane's copy of the policy, when a test needs it to differ from the
    /// filter's (`policy`).
    pub control_plane_policy: Option<Value>,
}

impl Default for StackOptions {
    fn default() -> Self {
        let policy = std::fs::read(workspace().join("envoy/policy/payments.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        StackOptions {
            policy,
            config: json!({}),
            server_args: Vec::new(),
            envoy_workers: 2,
            upstream: None,
            client_hop: None,
            idp: None,
            jwks_cache_secs: 2,
            render_args: Vec::new(),
            control_plane_args: Vec::new(),
            gateway_tls: false,
            renderer: None,
            control_plane_plaintext: false,
            envoy_env: Vec::new(),
            control_plane_policy: None,
        }
    }
}

/// Control plane + payments server + Envoy with the filter, on free ports.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub control_plane: Option<Proc>,
    pub control_plane_addr: String,
    /// `https://ADDR` (or `http://` with `control_plane_plaintext`), for `--server`.
    pub control_plane_url: String,
    pub control_plane_args: Vec<String>,
    /// The operator token `Stack::tollgate` runs commands with (auditors, security-admins).
    pub operator_token: String,
    pub server: Proc,
    pub server_request_log: PathBuf,
    pub envoy: Proc,
    pub gateway_url: String,
    pub admin_port: u16,
    /// The upstream MCP endpoint itself, bypassing the gateway (for direct comparisons).
    pub upstream_url: String,
    /// The client-side hop's MCP URL (it adds the token), when `client_hop` was asked for.
    pub hop_url: Option<String>,
    /// The OIDC provider, when `idp` was asked for.
    pub idp: Option<OidcProvider>,
    /// How `envoy/render.py` was run (to render again with another configuration).
    pub render_args: Vec<std::ffi::OsString>,
}

impl Stack {
    pub fn start() -> Result<Stack> {
        Stack::start_with(StackOptions::default())
    }

    pub fn start_with(options: StackOptions) -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        let home = dir.path().join("home");
        let control_plane_addr = format!("127.0.0.1:{}", free_port());
        let listen_port = free_port();
        let idp = match &options.idp {
            Some(directory) => Some(OidcProvider::start(
                dir.path(),
                "oidc-provider",
                &dir.path().join("idp-keys"),
                &format!("http://127.0.0.1:{listen_port}/mcp"),
                // The operator the stack's own `tollgate` commands run as.
                &directory.clone().person(
                    AUDITOR,
                    json!({"email": AUDITOR, "groups": ["auditors", "security-admins"]}),
                ),
            )?),
            None => None,
        };
        let (control_plane_args, jwks_args) = match &idp {
            Some(idp) => (
                vec![
                    format!("--operator-jwks={}", idp.jwks_uri()),
                    format!("--operator-issuer={}", idp.issuer),
                    format!("--operator-audience={}", oidc::OPERATOR_AUDIENCE),
                ],
                vec![
                    format!("--remote-jwks={}", idp.jwks_uri()),
                    format!("--issuer={}", idp.issuer),
                    format!("--audience={}", oidc::GATEWAY_AUDIENCE),
                    format!("--jwks-cache-duration={}", options.jwks_cache_secs),
                ],
            ),
            None => (
                Vec::new(),
                vec![format!("--jwks={}", home.join("dev/jwks.json").display())],
            ),
        };
        let (transport_args, control_plane_transport, scheme) = if options.control_plane_plaintext {
            (
                vec!["--insecure-plaintext".to_owned()],
                vec!["--control-plane-plaintext".to_owned()],
                "http",
            )
        } else {
            (
                Vec::new(),
                vec![
                    "--control-plane-tls".to_owned(),
                    home.join("tls").display().to_string(),
                ],
                "https",
            )
        };
        let control_plane_url = format!("{scheme}://{control_plane_addr}");
        // The control plane judges approval requests by the filter's own policy, from a file.
        let policy_file = dir.path().join("policy.json");
        let control_plane_policy = options
            .control_plane_policy
            .as_ref()
            .unwrap_or(&options.policy);
        std::fs::write(&policy_file, control_plane_policy.to_string())?;
        let policy_args = vec!["--policy".to_owned(), policy_file.display().to_string()];
        // The options' own arguments come last, so that they win.
        let control_plane_args: Vec<String> = control_plane_args
            .into_iter()
            .chain(policy_args)
            .chain(transport_args)
            .chain(options.control_plane_args.iter().cloned())
            .collect();
        let control_plane =
            start_control_plane(&home, &control_plane_addr, &control_plane_args, dir.path())?;
        let operator_token = match &idp {
            Some(idp) => idp.person_token_blocking(AUDITOR, oidc::OPERATOR_RESOURCE)?,
            None => dev_token(
                &home,
                AUDITOR,
                &[
                    "--groups=auditors,security-admins".to_owned(),
                    "--aud=tollgate-operators".to_owned(),
                    "--ttl=2h".to_owned(),
                ],
            )?,
        };

        let server_request_log = dir.path().join("server-requests.jsonl");
        let (server, upstream) = match &options.upstream {
            Some(other) => other.spawn(dir.path())?,
            None => {
                let mut server_cmd = Command::new(bin_dir().join("payments-server"));
                server_cmd
                    .args(["--listen", "127.0.0.1:0", "--request-log"])
                    .arg(&server_request_log)
                    .args(&options.server_args);
                let mut server = Proc::spawn("payments-server", server_cmd, dir.path())?;
                let ready = server.wait_for_line("listening on", Duration::from_secs(30))?;
                let upstream = ready.rsplit(' ').next().unwrap_or_default().to_owned();
                (server, upstream)
            }
        };

        let admin_port = free_port();
        let mut config = options.config.clone();
        if let Value::Object(map) = &mut config {
            map.insert("policy".to_owned(), options.policy.clone());
        }
        let bootstrap = dir.path().join("envoy.yaml");
        let mut hop_args = Vec::new();
        let mut hop_url = None;
        if let Some(hop) = &options.client_hop {
            let token = dev_token(&home, &hop.sub, &hop.token_args)?;
            let hop_port = free_port();
            hop_args = vec![
                "--hop-port".to_owned(),
                hop_port.to_string(),
                "--hop-header".to_owned(),
                format!("authorization=Bearer {token}"),
            ];
            hop_url = Some(format!("http://127.0.0.1:{hop_port}/mcp"));
        }
        let mut tls_args = Vec::new();
        if options.gateway_tls {
            let (cert, key) = self_signed_cert(dir.path())?;
            tls_args = vec![
                "--tls-cert".to_owned(),
                cert.display().to_string(),
                "--tls-key".to_owned(),
                key.display().to_string(),
            ];
        }
        let mut render = Command::new("python3");
        render
            .arg(
                options
                    .renderer
                    .clone()
                    .unwrap_or_else(|| workspace().join("envoy/render.py")),
            )
            .arg("--out")
            .arg(&bootstrap)
            .args(["--listen-port", &listen_port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--upstream", &upstream])
            .args(["--control-plane", &control_plane_addr])
            .args(&control_plane_transport)
            .args(&jwks_args)
            .arg("--wasm")
            .arg(wasm_file())
            .args(["--config", &config.to_string()])
            .args(&hop_args)
            .args(&tls_args)
            .args(&options.render_args);
        let rendered = render.output()?;
        if !rendered.status.success() {
            bail!("render.py: {}", String::from_utf8_lossy(&rendered.stderr));
        }
        let mut envoy_cmd = Command::new(envoy_bin());
        envoy_cmd
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", &options.envoy_workers.to_string()])
            .args(["--log-level", "warn", "--disable-hot-restart"])
            .envs(options.envoy_env.iter().cloned());
        let envoy = Proc::spawn("envoy", envoy_cmd, dir.path())?;
        let mut stack = Stack {
            dir,
            home,
            control_plane: Some(control_plane),
            control_plane_addr,
            control_plane_url,
            control_plane_args,
            operator_token,
            server,
            server_request_log,
            envoy,
            gateway_url: format!(
                "{}://127.0.0.1:{listen_port}/mcp",
                if options.gateway_tls { "https" } else { "http" }
            ),
            admin_port,
            upstream_url: upstream,
            hop_url,
            idp,
            render_args: render.get_args().map(std::ffi::OsStr::to_owned).collect(),
        };
        stack.wait_envoy_ready()?;
        Ok(stack)
    }

    fn wait_envoy_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.envoy.exited() {
                bail!("envoy exited: {}", self.envoy.log_tail());
            }
            if admin_get(self.admin_port, "/ready").is_ok_and(|body| body.trim() == "LIVE") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("envoy not ready: {}", self.envoy.log_tail())
    }

    /// Runs `tollgate ARGS` against this stack's control plane and home, as the stack's
    /// operator (an auditor and security admin).
    pub fn tollgate(&self, args: &[&str]) -> Result<Output> {
        self.tollgate_as(Some(&self.operator_token), args)
    }

    /// Runs `tollgate ARGS` as the operator whose token is given (`TOLLGATE_TOKEN`).
    pub fn tollgate_as(&self, token: Option<&str>, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(tollgate_bin());
        command
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env("TOLLGATE_CONTROL_PLANE", &self.control_plane_url)
            .env_remove("TOLLGATE_TOKEN");
        if let Some(token) = token {
            command.env("TOLLGATE_TOKEN", token);
        }
        Ok(command.output()?)
    }

    /// A token from the dev issuer (`tollgate dev token --sub SUB ARGS`).
    pub fn token(&self, sub: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["dev", "token", "--sub", sub];
        all.extend_from_slice(args);
        let out = self.tollgate(&all)?;
        if !out.status.success() {
            bail!("dev token: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        Ok(text.lines().last().unwrap_or_default().trim().to_owned())
    }

    /// Every record in the audit store, in order.
    pub fn audit_records(&self) -> Result<Vec<Value>> {
        let out = self.tollgate(&["audit", "query", "--json"])?;
        if !out.status.success() {
            bail!("audit query: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| Ok(serde_json::from_str::<Value>(l)?["record"].clone()))
            .collect()
    }

    /// Every MCP message the payments server received, in order.
    pub fn server_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.server_request_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many calls of `tool` the payments server received.
    pub fn server_calls(&self, tool: &str) -> usize {
        self.server_requests()
            .iter()
            .filter(|r| r["tool"] == tool)
            .count()
    }

    /// Stops Envoy and starts it again from the same bootstrap: whatever it kept in memory
    /// (the filter's VMs and their shared data) is gone.
    pub fn restart_envoy(&mut self) -> Result<()> {
        self.envoy.kill();
        self.envoy = self.spawn_envoy(&self.dir.path().join("envoy.yaml"), "envoy")?;
        self.wait_envoy_ready()
    }

    /// A second Envoy with the same configuration on ports of its own (a replica), in front of
    /// the same control plane and upstream; returns it and its MCP URL.
    pub fn start_replica(&self) -> Result<(Proc, String)> {
        let listen_port = free_port();
        let admin_port = free_port();
        let bootstrap = self.dir.path().join("envoy-replica.yaml");
        let mut args = self.render_args.clone();
        for (flag, value) in [
            ("--out", bootstrap.display().to_string()),
            ("--listen-port", listen_port.to_string()),
            ("--admin-port", admin_port.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        let rendered = Command::new("python3").args(&args).output()?;
        if !rendered.status.success() {
            bail!("render.py: {}", String::from_utf8_lossy(&rendered.stderr));
        }
        let mut envoy = self.spawn_envoy(&bootstrap, "envoy-replica")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if envoy.exited() {
                bail!("replica exited: {}", envoy.log_tail());
            }
            if admin_get(admin_port, "/ready").is_ok_and(|body| body.trim() == "LIVE") {
                break;
            }
            if Instant::now() > deadline {
                bail!("replica not ready: {}", envoy.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let scheme = self
            .gateway_url
            .split_once("://")
            .map_or("http", |(s, _)| s);
        Ok((envoy, format!("{scheme}://127.0.0.1:{listen_port}/mcp")))
    }

    fn spawn_envoy(&self, bootstrap: &Path, name: &str) -> Result<Proc> {
        let mut envoy_cmd = Command::new(envoy_bin());
        envoy_cmd
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", "2"])
            .args(["--log-level", "warn", "--disable-hot-restart"]);
        Proc::spawn(name, envoy_cmd, self.dir.path())
    }

    pub fn stop_control_plane(&mut self) {
        self.control_plane.take();
    }

    pub fn restart_control_plane(&mut self) -> Result<()> {
        self.control_plane = None;
        self.control_plane = Some(start_control_plane(
            &self.home,
            &self.control_plane_addr,
            &self.control_plane_args,
            self.dir.path(),
        )?);
        Ok(())
    }
}

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1 (openssl), written into `dir`;
/// returns the certificate and key files.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("gateway-cert.pem");
    let key = dir.join("gateway-key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

/// The operator `Stack::tollgate` runs commands as.
pub const AUDITOR: &str = "auditor@example.com";

/// A token from the dev issuer in `home` (what `Stack::token` does, before the stack exists).
fn dev_token(home: &Path, sub: &str, args: &[String]) -> Result<String> {
    let out = Command::new(tollgate_bin())
        .arg("--home")
        .arg(home)
        .args(["dev", "token", "--sub", sub])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("dev token: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text.lines().last().unwrap_or_default().trim().to_owned())
}

/// `tollgate serve` on `addr` with `home`; ready once it prints its address.
pub fn start_control_plane(
    home: &Path,
    addr: &str,
    args: &[String],
    log_dir: &Path,
) -> Result<Proc> {
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("--home")
        .arg(home)
        .args(["serve", "--listen", addr])
        .args(args);
    let mut proc = Proc::spawn("control-plane", cmd, log_dir)?;
    proc.wait_for_line("listening on", Duration::from_secs(30))?;
    Ok(proc)
}

/// GET on Envoy's admin port.
pub fn admin_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    // The admin server answers chunked: size line, data, CRLF, ..., a zero size.
    let mut rest = body;
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok(out)
}

/// A plain HTTP answer, for the tests that need to see status and headers.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON-RPC message in the body: plain JSON, or the last `data:` event of an SSE body.
    pub fn json(&self) -> Value {
        if let Ok(v) = serde_json::from_str(&self.body) {
            return v;
        }
        self.event_data()
            .iter()
            .rev()
            .find_map(|data| serde_json::from_str(data).ok())
            .unwrap_or(Value::Null)
    }

    /// The data of each event of an SSE body (its `data:` lines joined), events without data left
    /// out.
    pub fn event_data(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .map(|event| {
                event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|data| !data.is_empty())
            .collect()
    }
}

/// POSTs a JSON-RPC body the way an MCP client does.
pub async fn post_mcp(
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Result<HttpAnswer> {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// An initialized MCP session for `token` through the gateway (over HTTP/1.1): `initialize`,
/// then `notifications/initialized`; returns the session id.
pub async fn open_session(stack: &Stack, token: &str) -> String {
    let init = post_mcp(&stack.gateway_url, Some(token), None, initialize_body(1))
        .await
        .unwrap();
    assert_eq!(init.status, 200, "{}", init.body);
    let session = init
        .header("mcp-session-id")
        .expect("session id")
        .to_owned();
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let ack = post_mcp(&stack.gateway_url, Some(token), Some(&session), initialized)
        .await
        .unwrap();
    assert_eq!(ack.status, 202, "{}", ack.body);
    session
}

/// An initialize request body.
pub fn initialize_body(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"tollgate-e2e","version":"1"}}})
    .to_string()
}

/// Card numbers the payments server returns: none of them may reach a client.
pub const DEMO_PANS: [&str; 6] = [
    "4111111111111111",
    "2223003122003222",
    "378282246310005",
    "5555555555554444",
    "6011111111111117",
    "3530111333300000",
];

/// Raw demo PANs that appear in `text`, in any grouping or digit script.
pub fn raw_pans_in(text: &str) -> Vec<&'static str> {
    let joined = payments_server::shapes::normalize_digits(text);
    DEMO_PANS
        .iter()
        .copied()
        .filter(|pan| joined.contains(pan))
        .collect()
}

/// POSTs `body` to `url` with exactly the given extra headers (no token unless given).
pub async fn post_mcp_with(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Result<HttpAnswer> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// Whether `text` holds a masked card number ending in `last_four`: asterisks (with any single
/// separators) right before those digits.
pub fn has_masked_form(text: &str, last_four: &str) -> bool {
    text.match_indices(last_four).any(|(at, _)| {
        let masked_run = text[..at]
            .chars()
            .rev()
            .take_while(|c| matches!(c, '*' | ' ' | '-' | '.'))
            .filter(|&c| c == '*')
            .count();
        // A 13-19 digit number keeps at most 10 digits (BIN + last four): 3 or more are masked.
        masked_run >= 3
    })
}
