//! `walship run`: one sidecar, its tasks and its shutdown.
//!
//! - `mod.rs` (this file): set-up, the admin API and the relay, and shutdown.
//! - `control.rs`: the control loop, which owns the failover machine and executes its
//!   commands: it starts and stops the leader's source and the follower task.
//! - `fencer.rs`: keeps PostgreSQL writable for clients only while this node leads.
//! - `peers.rs`: probes, claims and hand-overs sent to the peers' admin API.

pub mod control;
mod fencer;
pub mod peers;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::follower::FollowerError;
use crate::log::{Log, LogError, LogOptions};
use crate::node::{Node, NodeConfig, NodeState, NodeView, RoleChannels, RoleKind, RoleView, SharedState, StateError};
use crate::relay::server::RelayServer;
use crate::relay::{self, Serving};
use crate::source::SourceError;
use control::Control;
use fencer::Fencer;
use peers::Peers;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("opening the log: {0}")]
    Log(#[from] LogError),
    #[error("admin api on {addr}: {source}")]
    Admin { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("data_dir {0} is in use by another walship process")]
    DataDirInUse(std::path::PathBuf),
    #[error(transparent)]
    Follower(#[from] FollowerError),
    #[error("relay listener on {addr}: {source}")]
    Relay { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot read token_file {path}: {source}")]
    Token { path: std::path::PathBuf, source: std::io::Error },
    #[error("a follower needs token_file: the shared secret that proves it to the leader")]
    NoToken,
    #[error("token_file {path} can be read by others (mode {mode:o}): the token is the cluster's secret; run chmod 600 on it")]
    TokenReadableByOthers { path: std::path::PathBuf, mode: u32 },
    #[error("metrics: {0}")]
    Metrics(String),
}

/// Runs the sidecar until `shutdown` fires or a task fails fatally.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), SidecarError> {
    let (_reload, reloads) = mpsc::unbounded_channel();
    run_with_reload(config, reloads, shutdown).await
}

/// [`run`], taking configurations reloaded meanwhile (SIGHUP): the replication mode, quorum,
/// strictness and timeout change at once; other keys need a restart.
pub async fn run_with_reload(
    config: Config,
    reloads: mpsc::UnboundedReceiver<Config>,
    shutdown: CancellationToken,
) -> Result<(), SidecarError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| SidecarError::DataDir { path: config.data_dir.clone(), source })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let state = match NodeState::load(&config.data_dir, &config.cluster, &config.node)? {
        Some(state) => state,
        None => {
            let state = NodeState::new(&config.cluster, &config.node, config.role);
            state.save(&config.data_dir)?;
            state
        }
    };
    let log_dir = config.log_dir();
    let options = LogOptions { segment_bytes: config.log.segment_bytes };
    let log =
        tokio::task::spawn_blocking(move || Log::open(&log_dir, options)).await.map_err(|_| LogError::Failed)??;
    info!(node = %config.node, role = ?state.hard.role, term = %state.term(), last = ?log.last_written(), "sidecar starting");
    let log = Arc::new(Mutex::new(log));

    let token = read_token(&config)?;
    if token.is_none() && state.hard.role != RoleKind::Leader {
        return Err(SidecarError::NoToken);
    }
    let peer_names: Vec<String> = config.peers.iter().map(|p| p.node.clone()).collect();
    let node_config = NodeConfig {
        node: config.node.clone(),
        peers: peer_names.clone(),
        lease: config.failover.lease_timeout.is_some(),
        switchover_timeout: config.failover.switchover_timeout,
    };
    let node = Node::new(node_config, state.hard.clone());
    let (role_tx, role_rx) = watch::channel(RoleView::starting(&node));
    let serving = watch::Sender::new(Serving { term: state.term(), leading: false, leader: None });
    let (view, channels) = NodeView::new(&config.node, &config.cluster, role_rx, peer_names, log.clone());
    let (inbox, inputs) = mpsc::unbounded_channel();

    let tasks = TaskTracker::new();
    let metrics = admin::metrics::install().map_err(SidecarError::Metrics)?;
    let admin_state = Arc::new(AdminState {
        node: config.node.clone(),
        postgres: config.postgres.clone(),
        view: view.clone(),
        metrics,
        inbox: inbox.clone(),
        token: token.clone(),
        peers: config
            .peers
            .iter()
            .map(|p| admin::status::PeerAdmin { node: p.node.clone(), admin: p.admin.clone() })
            .collect(),
    });
    let admin_addr = config.admin;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| SidecarError::Admin { addr: admin_addr, source })?;
    let admin = tasks.spawn(admin::serve(listener, admin_state, shutdown.child_token()));
    start_relay(&config, &view, &channels, token.clone(), serving.subscribe(), &tasks, &shutdown).await?;

    let fencer = Fencer::spawn(config.postgres.clone(), shutdown.child_token());
    let peers = Peers {
        peers: config.peers.clone(),
        token: token.as_ref().map(|t| Arc::from(String::from_utf8_lossy(t).as_ref())),
    };
    let control = Control::new(
        config.clone(),
        node,
        SharedState::new(&config.data_dir, state),
        log,
        channels,
        token,
        peers,
        fencer,
        role_tx,
        serving,
        inbox,
        shutdown.clone(),
    );
    let role_result = control.run(inputs, reloads).await;
    if let Err(e) = &role_result {
        error!(error = %e, "sidecar stopping");
    }
    shutdown.cancel();
    tasks.close();
    let admin_result = admin.await;
    tasks.wait().await;
    role_result?;
    match admin_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(SidecarError::Admin { addr: admin_addr, source }),
        Err(_) => Err(SidecarError::Admin { addr: admin_addr, source: std::io::Error::other("admin task panicked") }),
    }
}

/// Serves this node's log on `listen` when a token is configured: as the leader while it
/// leads, otherwise answering that it does not; and keeps what followers need of the log.
async fn start_relay(
    config: &Arc<Config>,
    view: &NodeView,
    channels: &RoleChannels,
    token: Option<Arc<[u8]>>,
    serving: watch::Receiver<Serving>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), SidecarError> {
    let Some(token) = token else {
        warn!("no token_file configured: the relay is off and no follower can connect");
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SidecarError::Relay { addr: config.listen, source })?;
    info!(addr = %config.listen, "relay listening");
    let server = Arc::new(RelayServer {
        cluster: config.cluster.clone(),
        node: config.node.clone(),
        serving: serving.clone(),
        token,
        log: view.log.clone(),
        followers: channels.followers.clone(),
        durable: view.durable.clone(),
        postgres: config.postgres.clone(),
        publication: config.source.publication.clone(),
        timeout: config.relay_timeout,
    });
    tasks.spawn(relay::server::serve(listener, server, shutdown.child_token()));
    let cap = config.log.retain_max_bytes;
    let retention = relay::retention::run(
        view.log.clone(),
        channels.followers.clone(),
        view.peers.clone(),
        cap,
        serving,
        shutdown.child_token(),
    );
    tasks.spawn(retention);
    Ok(())
}

/// The shared secret of `token_file`, without surrounding white space. A file that its
/// group or others can read is refused, as ssh refuses such a key.
fn read_token(config: &Config) -> Result<Option<Arc<[u8]>>, SidecarError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = &config.token_file else { return Ok(None) };
    let mode = std::fs::metadata(path)
        .map_err(|source| SidecarError::Token { path: path.clone(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SidecarError::TokenReadableByOthers { path: path.clone(), mode: mode & 0o777 });
    }
    let text = std::fs::read(path).map_err(|source| SidecarError::Token { path: path.clone(), source })?;
    let token = text.trim_ascii();
    if token.is_empty() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty");
        return Err(SidecarError::Token { path: path.clone(), source });
    }
    Ok(Some(Arc::from(token)))
}

/// Holds an exclusive lock on `data_dir/walship.lock` for as long as the returned file lives,
/// so two sidecars never write one log.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, SidecarError> {
    let path = data_dir.join("walship.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SidecarError::DataDir { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SidecarError::DataDirInUse(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(SidecarError::DataDir { path, source }),
    }
}
