//! Shared by the integration tests: a real `tollgate serve` child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tollgate_proto::pb::audit_client::AuditClient;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running `tollgate serve`; killed when dropped, so a failing test leaves nothing behind.
pub struct Server {
    pub child: Child,
    pub address: String,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(home: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
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
            _stdout: reader.join().unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> AuditClient<Channel> {
        AuditClient::connect(self.url()).await.expect("connect")
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
