//! A throwaway PostgreSQL cluster for one test: `initdb` into a temporary directory, `pg_ctl`
//! on a free loopback port, stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the directory is handed to the
//! `postgres` system user (created by Debian's package) and the binaries run as that user
//! through `runuser`. The binaries are found under `/usr/lib/postgresql/*/bin` (newest first),
//! or on `PATH`; `make pg-deps` installs them.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Postgres {
    /// Removed (after the server stopped) when dropped.
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    // Newest major version first.
    candidates.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    if let Some(bin) = candidates.into_iter().next() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists());
    on_path.expect("no PostgreSQL server binaries (initdb, pg_ctl); run `make pg-deps`")
}

fn is_root() -> bool {
    // The effective uid, from /proc (no libc binding needed for one number).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(output: Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Postgres {
    /// Initialises and starts a cluster; `pg_ctl -w` returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// As [`Self::start`], serving TLS (also plain TCP) with this certificate chain and key (PEM).
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        let bin = find_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg")
            .tempdir()
            .unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to the postgres user failed");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut pg = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let data = pg.data();
        check(
            pg.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .output()
                .unwrap(),
            "initdb",
        );
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            // The server reads its key only if the key is its own and private.
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = pg.dir.path().join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                if pg.as_postgres {
                    let status = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&path)
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            }
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                pg.dir.path().display()
            );
        }
        // A port taken between choosing and binding makes pg_ctl fail; choose again.
        for attempt in 0..5 {
            pg.port = free_port();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c max_connections=200{ssl}",
                pg.port,
                pg.dir.path().display()
            );
            let output = pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-o", &options, "-l"])
                .arg(pg.dir.path().join("server.log"))
                .arg("start")
                .output()
                .unwrap();
            if output.status.success() {
                return pg;
            }
            assert!(
                attempt < 4,
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
            );
        }
        unreachable!()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, run as the `postgres` user when this process is root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Creates database `name` and returns its URL.
    pub fn database(&self, name: &str) -> String {
        check(
            self.command("createdb")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", name])
                .output()
                .unwrap(),
            "createdb",
        );
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with `psql` as the superuser; it must succeed.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self.psql_as("postgres", database, sql);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        check(output, "psql");
        text
    }

    /// Runs SQL with `psql` as `role`, whatever comes of it.
    pub fn psql_as(&self, role: &str, database: &str, sql: &str) -> Output {
        self.command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", role, "-d", database, "-v", "ON_ERROR_STOP=1"])
            .args(["-At", "-c", sql])
            .output()
            .unwrap()
    }

    #[allow(dead_code)]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
