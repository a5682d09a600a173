//! The demo's three nodes: their folder, PostgreSQL instances, configurations and sidecars,
//! on the local-cluster harness (`crate::localcluster`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{load, say, sidecar, DemoError};
use crate::config::Role;
use crate::localcluster::{self, leader_slot, Peer, Sidecar, SidecarConfig, SidecarFiles};
use crate::localpg::{Instance, Options, StopMode};

/// The first node leads; the others follow it.
const NODES: [&str; 3] = ["a", "b", "c"];
const CLUSTER: &str = "demo";
/// Where a node's sidecar files go (see the layout in `demo`).
const FILES: SidecarFiles = SidecarFiles { data_dir: "walship-data", log: "walship.log", config: "walship.toml" };
/// The leader creates its slot and publication within seconds; beyond this something is wrong.
const LEADER_START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Creates the demo folder, open to the `postgres` user (which runs the servers when we are
/// root): tempfile makes it 0700.
pub(super) fn create_folder() -> Result<PathBuf, DemoError> {
    Ok(localcluster::create_folder("walship-demo-", false)?.keep())
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
    pg: Option<Instance>,
    /// Its configuration once written; its process once started.
    sidecar: Option<Sidecar>,
}

impl Node {
    fn is_leader(&self) -> bool {
        self.name == NODES[0]
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(FILES.log)
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
        let nodes = NODES.map(|name| Node { name, dir: dir.join(name), pg: None, sidecar: None }).into();
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
        let specs = self.nodes.iter().map(|node| (Some(node.dir.join("pg")), Options::default())).collect();
        let starts = tokio::task::spawn_blocking(move || localcluster::start_instances(specs))
            .await
            .map_err(|e| DemoError::Task(e.to_string()))?;
        let mut first_error = None;
        for (node, start) in self.nodes.iter_mut().zip(starts) {
            match start {
                Ok(pg) => node.pg = Some(pg),
                Err(source) => first_error = first_error.or(Some(DemoError::Postgres { node: node.name, source })),
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

    /// Picks the sidecars' ports, writes the shared token and one configuration per node;
    /// followers list the leader as their peer.
    pub(super) fn write_configs(&mut self) -> Result<(), DemoError> {
        let token_file = self.dir.join("token");
        localcluster::write_token(&token_file, &localcluster::new_token())?;
        let mut ports = Vec::new();
        for node in &self.nodes {
            ports.push(Peer {
                node: node.name.to_owned(),
                relay_port: localcluster::free_port()?,
                admin_port: localcluster::free_port()?,
            });
        }
        let leader = self.nodes.iter().zip(&ports).find(|(node, _)| node.is_leader()).map(|(_, peer)| peer.clone());
        for (node, this) in self.nodes.iter_mut().zip(ports) {
            let config = SidecarConfig {
                node: node.name.to_owned(),
                cluster: CLUSTER.to_owned(),
                role: if node.is_leader() { Role::Leader } else { Role::Follower },
                data_dir: PathBuf::new(),
                postgres: node.conninfo(),
                relay_port: this.relay_port,
                admin_port: this.admin_port,
                token_file: token_file.clone(),
                peers: leader.clone().filter(|_| !node.is_leader()).into_iter().collect(),
                extra: String::new(),
            };
            node.sidecar = Some(Sidecar::create(&node.dir, FILES, config, &sidecar::launch(node.name)?)?);
        }
        Ok(())
    }

    /// Starts the leader's sidecar and waits for its slot. `Ok(false)`: `shutdown` came first.
    pub(super) async fn start_leader(&mut self, shutdown: &CancellationToken) -> Result<bool, DemoError> {
        say("starting the leader sidecar a");
        let Some(leader) = self.nodes.iter_mut().find(|node| node.is_leader()) else {
            return Err(DemoError::Task("no leader node".to_owned()));
        };
        start_sidecar(leader)?;
        let (conninfo, slot) = (leader.conninfo(), leader_slot(leader.name));
        let deadline = Instant::now() + LEADER_START_TIMEOUT;
        while !shutdown.is_cancelled() {
            self.check_sidecars()?;
            if slot_ready(&conninfo, &slot).await {
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
            start_sidecar(node)?;
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
            if let Some(sidecar) = node.sidecar.as_mut() {
                sidecar::check(node.name, sidecar)?;
            }
        }
        Ok(())
    }

    /// Stops the sidecars (followers first, so that none logs its leader going away), then
    /// PostgreSQL. `false` when a sidecar did not stop cleanly (already reported).
    pub(super) async fn shut_down(&mut self) -> bool {
        let mut clean = true;
        for node in self.nodes.iter_mut().rev() {
            if let Some(sidecar) = node.sidecar.take() {
                clean &= sidecar::stop(node.name, sidecar).await;
            }
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

/// Starts a node's sidecar, whose configuration `write_configs` wrote.
fn start_sidecar(node: &mut Node) -> Result<(), DemoError> {
    let Some(sidecar) = node.sidecar.as_mut() else {
        return Err(DemoError::Task(format!("sidecar {} has no configuration", node.name)));
    };
    sidecar.start()?;
    Ok(())
}

/// Whether the leader's slot exists and has confirmed a position: the sidecar streams.
async fn slot_ready(conninfo: &str, slot: &str) -> bool {
    let Ok(client) = load::connect(conninfo).await else { return false };
    let sql = "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1";
    matches!(client.query_opt(sql, &[&slot]).await, Ok(Some(row)) if row.get::<_, bool>(0))
}

fn leader_timeout(node: &Node) -> DemoError {
    DemoError::LeaderTimeout {
        node: node.name,
        secs: LEADER_START_TIMEOUT.as_secs(),
        tail: node.sidecar.as_ref().map_or_else(String::new, sidecar::tail),
        log: node.log_path(),
    }
}
