//! Shared test support: sidecar processes beside throw-away PostgreSQL instances
//! (`walship::localpg`), and reading the log through `walship inspect --json`.

#![allow(dead_code, clippy::unwrap_used)] // test support: a failed step is a failed test

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walship::localpg::Instance;

pub mod types;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A leader's and a follower's PostgreSQL, both with `schema`.
pub fn two_instances(schema: &str) -> (Instance, Instance) {
    let leader = Instance::start(walship::localpg::Options::default()).unwrap();
    let follower = Instance::start(walship::localpg::Options::default()).unwrap();
    for pg in [&leader, &follower] {
        pg.psql("postgres", schema).unwrap();
    }
    (leader, follower)
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub const TEST_TOKEN: &str = "test-token-0123456789";

/// Which ERROR lines a sidecar's log may hold. Checked when the `Sidecar` is dropped (unless
/// the test already failed), so a test fails on an unexpected ERROR without asking.
#[derive(Clone, Debug)]
pub enum ErrorCheck {
    /// No ERROR line at all: the default.
    NoErrors,
    /// Only ERROR lines containing one of these messages.
    Expected(Vec<String>),
    /// Any ERROR line; the reason says why the test cannot list them.
    Unchecked { why: String },
}

/// A `walship run` process with its own data_dir; its stderr goes to `log_path`.
pub struct Sidecar {
    pub node: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub admin_port: u16,
    pub relay_port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
    restarts: u32,
    errors: ErrorCheck,
}

impl Sidecar {
    /// Writes a leader configuration for `pg` into `dir` (extra TOML is appended).
    pub fn leader(dir: &Path, node: &str, pg: &Instance, extra: &str) -> Sidecar {
        Sidecar::new(dir, node, "leader", pg, &[], extra)
    }

    /// Writes a follower configuration whose peers are `peers`.
    pub fn follower(dir: &Path, node: &str, pg: &Instance, peers: &[&Sidecar], extra: &str) -> Sidecar {
        Sidecar::new(dir, node, "follower", pg, peers, extra)
    }

    fn new(dir: &Path, node: &str, role: &str, pg: &Instance, peers: &[&Sidecar], extra: &str) -> Sidecar {
        fs::create_dir_all(dir).unwrap();
        let admin_port = free_port();
        let relay_port = free_port();
        let token_path = dir.join("token");
        fs::write(&token_path, format!("{TEST_TOKEN}\n")).unwrap();
        let mut config = format!(
            "node = \"{node}\"\ncluster = \"test\"\ndata_dir = \"{}\"\npostgres = \"{}\"\nrole = \"{role}\"\n\
             listen = \"127.0.0.1:{relay_port}\"\nadmin = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n",
            dir.join("data").display(),
            pg.conninfo("postgres"),
            token_path.display(),
        );
        for peer in peers {
            config.push_str(&format!(
                "\n[[peers]]\nnode = \"{}\"\nrelay = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
                peer.node, peer.relay_port, peer.admin_port
            ));
        }
        config.push_str(extra);
        let config_path = dir.join("walship.toml");
        fs::write(&config_path, config).unwrap();
        Sidecar {
            node: node.to_owned(),
            dir: dir.into(),
            config_path,
            admin_port,
            relay_port,
            log_path: dir.join("sidecar.log"),
            child: None,
            restarts: 0,
            errors: ErrorCheck::NoErrors,
        }
    }

    /// A leader `a` and a follower `b` that know each other, in `dir`, not started.
    pub fn pair(dir: &Path, leader_pg: &Instance, follower_pg: &Instance) -> (Sidecar, Sidecar) {
        let leader = Sidecar::leader(&dir.join("a"), "a", leader_pg, "");
        let follower = Sidecar::follower(&dir.join("b"), "b", follower_pg, &[&leader], "");
        leader.add_peer(&follower);
        (leader, follower)
    }

    /// Lists `peer` in this sidecar's `[[peers]]`.
    pub fn add_peer(&self, peer: &Sidecar) {
        let mut config = fs::read_to_string(&self.config_path).unwrap();
        config.push_str(&format!(
            "\n[[peers]]\nnode = \"{}\"\nrelay = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            peer.node, peer.relay_port, peer.admin_port
        ));
        fs::write(&self.config_path, config).unwrap();
    }

    /// Replaces the shared token this sidecar uses.
    pub fn set_token(&self, token: &str) {
        fs::write(self.dir.join("token"), token).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "sidecar already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walship"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("WALSHIP_LOG", "info,walship=debug")
            // Plain text: the ERROR check reads levels, which colours would wrap in escapes.
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sidecar not running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
            self.restarts += 1;
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "sidecar exited with {status}; log:\n{}", self.log_tail());
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("sidecar did not stop on SIGTERM; log:\n{}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// ERROR lines containing one of `messages` are expected of this sidecar; any other still
    /// fails the test.
    pub fn expect_errors(&mut self, messages: &[&str]) {
        self.errors = ErrorCheck::Expected(messages.iter().map(|m| m.to_string()).collect());
    }

    /// Any ERROR line is accepted from this sidecar, for the reason given.
    pub fn unchecked_errors(&mut self, why: &str) {
        self.errors = ErrorCheck::Unchecked { why: why.to_owned() };
    }

    /// The ERROR lines of the sidecar's log that its `ErrorCheck` does not allow.
    pub fn unexpected_errors(&self) -> Vec<String> {
        let text = self.log_text();
        let allowed = |line: &str| match &self.errors {
            ErrorCheck::NoErrors => false,
            ErrorCheck::Expected(messages) => messages.iter().any(|m| line.contains(m.as_str())),
            ErrorCheck::Unchecked { .. } => true,
        };
        text.lines().filter(|l| l.contains(" ERROR ") && !allowed(l)).map(str::to_owned).collect()
    }

    /// Fails on any unexpected ERROR line in the sidecar's log (also checked on drop).
    pub fn assert_no_errors(&self) {
        let errors = self.unexpected_errors();
        assert!(
            errors.is_empty(),
            "unexpected errors in sidecar {}'s log {}:\n{}",
            self.node,
            self.log_path.display(),
            errors.join("\n")
        );
    }

    /// The log's entries as `walship inspect --json` prints them.
    pub fn inspect(&self) -> Vec<serde_json::Value> {
        inspect(&self.data_dir())
    }
}

impl Drop for Sidecar {
    /// Kills the process if it still runs, then fails the test on an unexpected ERROR line
    /// (not when the test is failing already: its own message matters more).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            self.assert_no_errors();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

pub fn inspect(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["inspect", "--json"])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("inspect printed invalid JSON"))
        .collect()
}

/// HTTP GET on loopback without a client library: returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// Every table's rows, ordered, as text: for comparing two databases. A table that cannot
/// be read (not there yet on a follower still seeding) shows as the error, which equals no
/// readable table's rows.
pub fn table_rows(pg: &Instance, tables: &[&str]) -> Vec<(String, String)> {
    tables
        .iter()
        .map(|t| {
            let rows = pg
                .psql(
                    "postgres",
                    &format!("SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {t} x"),
                )
                .unwrap_or_else(|e| format!("<cannot read {t}: {e:?}>"));
            (t.to_string(), rows)
        })
        .collect()
}
