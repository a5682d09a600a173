//! Shared test support: sidecar processes beside throw-away PostgreSQL instances, on the
//! library's local-cluster harness (`walship::localcluster`) with test conveniences (a failed
//! step panics, the ERROR check on drop), and reading the log through `walship inspect --json`.

#![allow(dead_code, clippy::unwrap_used)] // test support: a failed step is a failed test

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walship::config::Role;
use walship::localcluster::{self, ErrorCheck, Launch, SidecarConfig, SidecarFiles};
use walship::localpg::{Instance, Options};

pub mod types;

pub fn free_port() -> u16 {
    localcluster::free_port().unwrap()
}

/// A leader's and a follower's PostgreSQL, both with `schema`, started side by side.
pub fn two_instances(schema: &str) -> (Instance, Instance) {
    let specs = vec![(None, Options::default()), (None, Options::default())];
    let mut started = localcluster::start_instances(specs).into_iter().map(Result::unwrap);
    let (leader, follower) = (started.next().unwrap(), started.next().unwrap());
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
/// How long a sidecar gets to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of a sidecar's log shown when it fails.
const TAIL_LINES: usize = 40;

/// A `walship run` process with its own folder, data_dir and token (`localcluster::Sidecar`,
/// which starts and stops it); its stderr goes to `log_path`. A failed step panics.
///
/// Dropping it fails the test on an ERROR line in its log that it was not told to expect
/// (`expect_errors`, `unchecked_errors`), unless the test is failing already.
pub struct Sidecar {
    pub node: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub admin_port: u16,
    pub relay_port: u16,
    pub log_path: PathBuf,
    inner: localcluster::Sidecar,
    restarts: u32,
}

impl Sidecar {
    /// Writes a leader configuration for `pg` into `dir` (extra TOML is added).
    pub fn leader(dir: &Path, node: &str, pg: &Instance, extra: &str) -> Sidecar {
        Sidecar::new(dir, node, Role::Leader, pg, &[], extra)
    }

    /// Writes a follower configuration whose peers are `peers`.
    pub fn follower(dir: &Path, node: &str, pg: &Instance, peers: &[&Sidecar], extra: &str) -> Sidecar {
        Sidecar::new(dir, node, Role::Follower, pg, peers, extra)
    }

    /// A follower of `leader` that reaches its relay on `relay_port` instead (a proxy's).
    pub fn follower_via(
        dir: &Path,
        node: &str,
        pg: &Instance,
        leader: &Sidecar,
        relay_port: u16,
        extra: &str,
    ) -> Sidecar {
        let mut follower = Sidecar::new(dir, node, Role::Follower, pg, &[], extra);
        follower.inner.config.peers = vec![localcluster::Peer { relay_port, ..leader.inner.as_peer() }];
        follower.inner.write_config().unwrap();
        follower
    }

    /// Reaches PostgreSQL on `port` of 127.0.0.1 instead (a proxy's), as `pg`'s user.
    pub fn postgres_via(&mut self, pg: &Instance, port: u16) {
        let conninfo = pg.conninfo("postgres").replace(&format!("port={}", pg.port()), &format!("port={port}"));
        self.inner.config.postgres = conninfo;
        self.inner.write_config().unwrap();
    }

    fn new(dir: &Path, node: &str, role: Role, pg: &Instance, peers: &[&Sidecar], extra: &str) -> Sidecar {
        let token_file = dir.join("token");
        let config = SidecarConfig {
            node: node.to_owned(),
            cluster: "test".to_owned(),
            role,
            data_dir: PathBuf::new(),
            postgres: pg.conninfo("postgres"),
            relay_port: free_port(),
            admin_port: free_port(),
            token_file: token_file.clone(),
            peers: peers.iter().map(|p| p.inner.as_peer()).collect(),
            extra: extra.to_owned(),
        };
        let launch = Launch {
            env: vec![("WALSHIP_LOG".to_owned(), "info,walship=debug".to_owned())],
            ..Launch::new(env!("CARGO_BIN_EXE_walship"))
        };
        let inner = localcluster::Sidecar::create(dir, SidecarFiles::default(), config, &launch).unwrap();
        localcluster::write_token(&token_file, TEST_TOKEN).unwrap();
        Sidecar {
            node: node.to_owned(),
            dir: dir.into(),
            config_path: inner.config_path.clone(),
            admin_port: inner.admin_port(),
            relay_port: inner.relay_port(),
            log_path: inner.log_path.clone(),
            inner,
            restarts: 0,
        }
    }

    /// A leader `a` on `pgs[0]` and followers `b` and `c` on `pgs[1]` and `pgs[2]`, every one
    /// a peer of the others, in `dir`, with `extra` in each configuration; not started.
    pub fn trio(dir: &Path, pgs: &[Instance], extra: &str) -> (Sidecar, Sidecar, Sidecar) {
        let mut a = Sidecar::leader(&dir.join("a"), "a", &pgs[0], extra);
        let mut b = Sidecar::follower(&dir.join("b"), "b", &pgs[1], &[&a], extra);
        let c = Sidecar::follower(&dir.join("c"), "c", &pgs[2], &[&a, &b], extra);
        a.add_peer(&b);
        a.add_peer(&c);
        b.add_peer(&c);
        (a, b, c)
    }

    /// A leader `a` and a follower `b` that know each other, in `dir`, not started.
    pub fn pair(dir: &Path, leader_pg: &Instance, follower_pg: &Instance) -> (Sidecar, Sidecar) {
        let mut leader = Sidecar::leader(&dir.join("a"), "a", leader_pg, "");
        let follower = Sidecar::follower(&dir.join("b"), "b", follower_pg, &[&leader], "");
        leader.add_peer(&follower);
        (leader, follower)
    }

    /// Lists `peer` in this sidecar's `[[peers]]`.
    pub fn add_peer(&mut self, peer: &Sidecar) {
        self.inner.add_peer(peer.inner.as_peer()).unwrap();
    }

    /// Replaces the shared token this sidecar uses.
    pub fn set_token(&self, token: &str) {
        fs::write(&self.inner.config.token_file, token).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.inner.data_dir().to_path_buf()
    }

    pub fn start(&mut self) {
        assert!(self.inner.start().unwrap(), "sidecar already running");
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid().expect("sidecar not running")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if self.inner.kill().unwrap().is_some() {
            self.restarts += 1;
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        match self.inner.stop(STOP_TIMEOUT) {
            Ok(None) => {}
            Ok(Some(status)) => assert!(status.success(), "sidecar exited with {status}; log:\n{}", self.log_tail()),
            Err(e) => panic!("{e}; log:\n{}", self.log_tail()),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        self.inner.admin_url(path)
    }

    pub fn log_text(&self) -> String {
        self.inner.log_text()
    }

    pub fn log_tail(&self) -> String {
        self.inner.log_tail(TAIL_LINES)
    }

    /// ERROR lines containing one of `messages` are expected of this sidecar; any other still
    /// fails the test.
    pub fn expect_errors(&mut self, messages: &[&str]) {
        self.inner.errors = ErrorCheck::Expected(messages.iter().map(|m| m.to_string()).collect());
    }

    /// Any ERROR line is accepted from this sidecar, for the reason given.
    pub fn unchecked_errors(&mut self, why: &str) {
        self.inner.errors = ErrorCheck::Unchecked { why: why.to_owned() };
    }

    /// Fails on any unexpected ERROR line in the sidecar's log (also checked on drop).
    pub fn assert_no_errors(&self) {
        let errors = self.inner.unexpected_errors();
        assert!(
            errors.is_empty(),
            "unexpected errors in sidecar {}'s log {}:\n{}",
            self.node,
            self.log_path.display(),
            errors.join("\n")
        );
    }

    /// Waits until this sidecar leads with its PostgreSQL open to client writes (`/leader`).
    pub fn wait_writable(&self) {
        wait_until(Duration::from_secs(30), "the leader to take writes", || {
            http_get(self.admin_port, "/leader").is_ok_and(|(code, _)| code == 200)
        });
    }

    /// The log's entries as `walship inspect --json` prints them.
    pub fn inspect(&self) -> Vec<serde_json::Value> {
        inspect(&self.data_dir())
    }
}

impl Drop for Sidecar {
    /// Kills the process if it still runs, then fails the test on an unexpected ERROR line
    /// (when the test is failing already, prints the log's tail instead).
    fn drop(&mut self) {
        let _ = self.inner.kill();
        if std::thread::panicking() {
            // The test failed: what the sidecar said helps find out why.
            eprintln!("--- sidecar {} log, last {TAIL_LINES} lines:\n{}", self.node, self.log_tail());
        } else {
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
    http(port, "GET", path, None)
}

/// `POST path` with the test token as a bearer token, or none.
#[allow(dead_code)] // not every test binary posts
pub fn http_post(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http(port, "POST", path, token)
}

fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(70)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )?;
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
