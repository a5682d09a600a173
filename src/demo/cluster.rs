//! The demo's three nodes: their folder, PostgreSQL instances, configurations and sidecars.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sidecar::{self, Sidecar};
use super::{load, say, DemoError};
use crate::localpg::{Instance, Options, StopMode, TMPDIR_ENV};

/// The first node leads; the others follow it.
const NODES: [&str; 3] = ["a", "b", "c"];
const CLUSTER: &str = "demo";
/// The leader's slot, as the sidecar names it by default (`walship_<node>`).
const LEADER_SLOT: &str = "walship_a";
/// The leader creates its slot and publication within seconds; beyond this something is wrong.
const LEADER_START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Creates the demo folder, open to the `postgres` user (which runs the servers when we are
/// root): tempfile makes it 0700.
pub(super) fn create_folder() -> Result<PathBuf, DemoError> {
    let root =
        std::env::var_os(TMPDIR_ENV).filter(|dir| !dir.is_empty()).map_or_else(std::env::temp_dir, PathBuf::from);
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { action, path, source }
    };
    let dir = tempfile::Builder::new()
        .prefix("walship-demo-")
        .tempdir_in(&root)
        .map_err(io_err("create a folder in", &root))?
        .keep();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err("open up", &dir))?;
    Ok(dir)
}

/// Removes the folder, or says what it holds when it is kept.
pub(super) fn finish_folder(dir: &Path, keep: bool) {
    if keep {
        say(&format!("kept {}; nothing is running. Per node (a, b, c):", dir.display()));
        say("  <node>/pg/data        PostgreSQL data folder (stopped; pg_ctl -D <it> start)");
        say("  <node>/walship-data   the sidecar's durable log (walship inspect <it>) and state");
        say("  <node>/walship.log    the sidecar's log; <node>/walship.toml its configuration");
        return;
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => say(&format!("removed {}; nothing is running", dir.display())),
        Err(e) => eprintln!("walship demo: could not remove {}: {e}", dir.display()),
    }
}

pub(super) struct Node {
    name: &'static str,
    dir: PathBuf,
    relay_port: u16,
    admin_port: u16,
    pg: Option<Instance>,
    sidecar: Option<Sidecar>,
}

impl Node {
    fn is_leader(&self) -> bool {
        self.name == NODES[0]
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("walship.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("walship.log")
    }

    /// The conninfo of its database ("postgres"); empty before PostgreSQL started.
    fn conninfo(&self) -> String {
        self.pg.as_ref().map(|pg| pg.conninfo("postgres")).unwrap_or_default()
    }
}

pub(super) struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    pub(super) fn new(dir: PathBuf) -> Cluster {
        let nodes = NODES
            .map(|name| Node { name, dir: dir.join(name), relay_port: 0, admin_port: 0, pg: None, sidecar: None })
            .into();
        Cluster { dir, nodes }
    }

    /// `(node, conninfo)` of the leader.
    pub(super) fn leader_conninfo(&self) -> (&'static str, String) {
        let leader = self.nodes.iter().find(|node| node.is_leader());
        leader.map_or((NODES[0], String::new()), |node| (node.name, node.conninfo()))
    }

    /// `(node, conninfo)` of each follower.
    pub(super) fn follower_conninfos(&self) -> Vec<(&'static str, String)> {
        self.nodes.iter().filter(|node| !node.is_leader()).map(|node| (node.name, node.conninfo())).collect()
    }

    /// Starts the three instances side by side (each is about a second).
    pub(super) async fn start_postgres(&mut self) -> Result<(), DemoError> {
        say("starting PostgreSQL a, b and c");
        let starts: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let dir = node.dir.join("pg");
                tokio::task::spawn_blocking(move || Instance::start_in(&dir, Options::default()))
            })
            .collect();
        let mut first_error = None;
        for (node, start) in self.nodes.iter_mut().zip(starts) {
            match start.await {
                Ok(Ok(pg)) => node.pg = Some(pg),
                Ok(Err(source)) => first_error = first_error.or(Some(DemoError::Postgres { node: node.name, source })),
                Err(e) => first_error = first_error.or(Some(DemoError::Task(e.to_string()))),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The sample schema, on the leader only: followers start from empty databases and are
    /// seeded from a snapshot by their leader.
    pub(super) async fn create_schema(&self) -> Result<(), DemoError> {
        for node in self.nodes.iter().filter(|node| node.is_leader()) {
            load::create_schema(&node.conninfo()).await.map_err(|source| DemoError::Sql { node: node.name, source })?;
        }
        Ok(())
    }

    /// Picks the sidecars' ports, writes the shared token and one configuration per node.
    pub(super) fn write_configs(&mut self) -> Result<(), DemoError> {
        for node in &mut self.nodes {
            node.relay_port = free_port()?;
            node.admin_port = free_port()?;
        }
        let token_path = self.dir.join("token");
        write_file(&token_path, &format!("{}\n", new_token()))?;
        fs::set_permissions(&token_path, fs::Permissions::from_mode(0o600)).map_err(|source| DemoError::Io {
            action: "restrict",
            path: token_path.clone(),
            source,
        })?;
        let leader = self.nodes.iter().find(|node| node.is_leader());
        for node in &self.nodes {
            let peer = leader.filter(|_| !node.is_leader());
            write_file(&node.config_path(), &config_text(node, peer, &token_path))?;
        }
        Ok(())
    }

    /// Starts the leader's sidecar and waits for its slot. `Ok(false)`: `shutdown` came first.
    pub(super) async fn start_leader(&mut self, shutdown: &CancellationToken) -> Result<bool, DemoError> {
        say("starting the leader sidecar a");
        let Some(leader) = self.nodes.iter_mut().find(|node| node.is_leader()) else {
            return Err(DemoError::Task("no leader node".to_owned()));
        };
        leader.sidecar = Some(Sidecar::spawn(leader.name, &leader.config_path(), &leader.log_path())?);
        let conninfo = leader.conninfo();
        let deadline = Instant::now() + LEADER_START_TIMEOUT;
        while !shutdown.is_cancelled() {
            self.check_sidecars()?;
            if slot_ready(&conninfo).await {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Err(self
                    .nodes
                    .iter()
                    .find(|node| node.is_leader())
                    .map_or_else(|| DemoError::Task("no leader node".to_owned()), leader_timeout));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(false)
    }

    pub(super) fn start_followers(&mut self) -> Result<(), DemoError> {
        say("starting the follower sidecars b and c");
        for node in self.nodes.iter_mut().filter(|node| !node.is_leader()) {
            node.sidecar = Some(Sidecar::spawn(node.name, &node.config_path(), &node.log_path())?);
        }
        Ok(())
    }

    /// One line per node: role, where its PostgreSQL listens, its sidecar's log.
    pub(super) fn print_nodes(&self) {
        for node in &self.nodes {
            let role = if node.is_leader() { "leader  " } else { "follower" };
            let port = node.pg.as_ref().map_or(0, Instance::port);
            say(&format!(
                "  {} {role}  psql -h 127.0.0.1 -p {port} -U postgres   log {}",
                node.name,
                node.log_path().display()
            ));
        }
    }

    /// An error for the first sidecar that exited; that sidecar is then forgotten (its exit
    /// is reported once).
    pub(super) fn check_sidecars(&mut self) -> Result<(), DemoError> {
        for node in &mut self.nodes {
            if let Some(Err(e)) = node.sidecar.as_mut().map(Sidecar::check) {
                node.sidecar = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops the sidecars (followers first, so that none logs its leader going away), then
    /// PostgreSQL. `false` when a sidecar did not stop cleanly (already reported).
    pub(super) async fn shut_down(&mut self) -> bool {
        let mut clean = true;
        for sidecar in self.nodes.iter_mut().rev().filter_map(|node| node.sidecar.take()) {
            clean &= sidecar.stop().await;
        }
        let stops: Vec<_> = self
            .nodes
            .iter_mut()
            .filter_map(|node| node.pg.take().map(|pg| (node.name, pg)))
            .map(|(name, mut pg)| {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = pg.stop(StopMode::Fast) {
                        eprintln!("walship demo: stopping PostgreSQL {name}: {e}");
                    }
                })
            })
            .collect();
        for stop in stops {
            // A panic here still dropped the instance, which stops it.
            let _ = stop.await;
        }
        clean
    }
}

/// Whether the leader's slot exists and has confirmed a position: the sidecar streams.
async fn slot_ready(conninfo: &str) -> bool {
    let Ok(client) = load::connect(conninfo).await else { return false };
    let sql = "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1";
    matches!(client.query_opt(sql, &[&LEADER_SLOT]).await, Ok(Some(row)) if row.get::<_, bool>(0))
}

fn leader_timeout(node: &Node) -> DemoError {
    let log = node.log_path();
    DemoError::LeaderTimeout {
        node: node.name,
        secs: LEADER_START_TIMEOUT.as_secs(),
        tail: sidecar::log_tail(&log),
        log,
    }
}

/// A sidecar configuration; followers list the leader as their peer.
fn config_text(node: &Node, leader: Option<&Node>, token_path: &Path) -> String {
    let path = |p: &Path| toml_string(&p.to_string_lossy());
    let role = if node.is_leader() { "leader" } else { "follower" };
    let mut text = format!(
        "node = \"{}\"\ncluster = \"{CLUSTER}\"\ndata_dir = {}\npostgres = {}\nrole = \"{role}\"\n\
         listen = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\ntoken_file = {}\n",
        node.name,
        path(&node.dir.join("walship-data")),
        toml_string(&node.conninfo()),
        node.relay_port,
        node.admin_port,
        path(token_path),
    );
    if let Some(peer) = leader {
        text.push_str(&format!(
            "\n[[peers]]\nnode = \"{}\"\nrelay = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            peer.name, peer.relay_port, peer.admin_port
        ));
    }
    text
}

/// A TOML basic string, quoted and escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| DemoError::Io { action: "create", path: parent.into(), source })?;
    }
    fs::write(path, text).map_err(|source| DemoError::Io { action: "write", path: path.into(), source })
}

/// 32 random hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port free on loopback now; another process may take it before the sidecar binds it,
/// which the sidecar then reports (rare enough for a demo).
fn free_port() -> Result<u16, DemoError> {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr());
    port.map(|addr| addr.port()).map_err(|source| DemoError::Io {
        action: "find a free port on",
        path: "127.0.0.1".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_config_names_the_leader() {
        let node = |name| Node {
            name,
            dir: PathBuf::from(format!("/tmp/x/{name}")),
            relay_port: 7400,
            admin_port: 7480,
            pg: None,
            sidecar: None,
        };
        let text = config_text(&node("b"), Some(&node("a")), Path::new("/tmp/x/token"));
        let config: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(config["role"].as_str(), Some("follower"));
        assert_eq!(config["peers"][0]["node"].as_str(), Some("a"));
        assert_eq!(config["data_dir"].as_str(), Some("/tmp/x/b/walship-data"));
        assert_eq!(new_token().len(), 32);
    }
}
