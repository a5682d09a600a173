//! What the admin API shows of a node. The sidecar makes the channels; each role fills in its
//! part (the leader its followers' progress, a follower what it applied and what its leader
//! said), and readers compute lag from them when asked.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::log::committer::Durable;
use crate::log::marks::EntryMarks;
use crate::log::Log;
use crate::lsn::Term;
use crate::relay::client::Applied;
use crate::relay::progress::Followers;
use crate::relay::LeaderStatus;
use crate::seed::SeedProgress;

use super::machine::{Node, NodeRole, PeerState, PromoteRequest, Promotion};
use super::sync::SyncState;

/// A follower's view of its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    pub node: String,
    /// The leader's last status message, once one arrived.
    pub status: Option<LeaderStatus>,
}

/// The node's role as the admin API and the metrics show it, published by the control loop
/// after every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleView {
    pub role: RoleName,
    pub term: Term,
    /// The leader this node follows, or itself when it leads.
    pub leader: Option<String>,
    /// What this node answers a peer's probe.
    pub probe: PeerState,
    /// The report of what this node holds that the cluster lost, once written.
    pub divergent_report: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    Starting,
    Leader,
    HandingOver,
    Follower,
    Promoting,
    Fenced,
    Divergent,
}

impl RoleName {
    pub fn of(role: &NodeRole) -> RoleName {
        match role {
            NodeRole::Starting => RoleName::Starting,
            NodeRole::Leader { .. } => RoleName::Leader,
            NodeRole::HandingOver { .. } => RoleName::HandingOver,
            NodeRole::Follower { .. } => RoleName::Follower,
            // A leader checking that it may lead again shows what it is meanwhile.
            NodeRole::Promoting(Promotion { request: PromoteRequest::Resume, before, .. }) => RoleName::of(before),
            NodeRole::Promoting(_) => RoleName::Promoting,
            NodeRole::Fenced { .. } => RoleName::Fenced,
            NodeRole::Divergent { .. } => RoleName::Divergent,
        }
    }

    /// As `/status` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Starting => "starting",
            RoleName::Leader => "leader",
            RoleName::HandingOver => "handing_over",
            RoleName::Follower => "follower",
            RoleName::Promoting => "promoting",
            RoleName::Fenced => "fenced",
            RoleName::Divergent => "divergent",
        }
    }

    /// Serves followers: a leader, also while it hands over.
    pub fn serves(self) -> bool {
        matches!(self, RoleName::Leader | RoleName::HandingOver)
    }
}

impl RoleView {
    pub fn starting(node: &Node) -> RoleView {
        RoleView {
            role: RoleName::Starting,
            term: node.hard_state().term,
            leader: None,
            probe: node.probe_answer(),
            divergent_report: None,
        }
    }
}

/// The writing ends, handed to the role tasks.
#[derive(Clone)]
pub struct RoleChannels {
    pub durable: watch::Sender<Durable>,
    pub marks: EntryMarks,
    pub followers: Followers,
    pub applied: watch::Sender<Applied>,
    pub leader: watch::Sender<Option<LeaderView>>,
    /// A snapshot being loaded, while it is.
    pub seeding: watch::Sender<Option<SeedProgress>>,
    /// Why replay is stopped, while it is (naming entry, table and key).
    pub replay_stopped: watch::Sender<Option<String>>,
    /// On a leader in `semi-sync` or `sync` mode: whether commits wait for followers.
    pub sync_state: watch::Sender<Option<SyncState>>,
    /// On a leader: the tables without a key it gave `REPLICA IDENTITY FULL` at its start.
    pub identity_full: watch::Sender<Vec<String>>,
}

/// The reading ends, for the admin API.
#[derive(Clone)]
pub struct NodeView {
    pub node: String,
    pub cluster: String,
    pub role: watch::Receiver<RoleView>,
    pub peers: Vec<String>,
    pub log: Arc<Mutex<Log>>,
    pub durable: watch::Receiver<Durable>,
    pub marks: EntryMarks,
    pub followers: Followers,
    pub applied: watch::Receiver<Applied>,
    pub leader: watch::Receiver<Option<LeaderView>>,
    pub seeding: watch::Receiver<Option<SeedProgress>>,
    pub replay_stopped: watch::Receiver<Option<String>>,
    pub sync_state: watch::Receiver<Option<SyncState>>,
    pub identity_full: watch::Receiver<Vec<String>>,
}

impl NodeView {
    /// Channels for a node; the view reads what the roles write into `RoleChannels`.
    pub fn new(
        node: &str,
        cluster: &str,
        role: watch::Receiver<RoleView>,
        peers: Vec<String>,
        log: Arc<Mutex<Log>>,
    ) -> (NodeView, RoleChannels) {
        let (durable_tx, durable) = watch::channel(Durable::default());
        let (applied_tx, applied) = watch::channel(Applied::default());
        let (leader_tx, leader) = watch::channel(None);
        let (seeding_tx, seeding) = watch::channel(None);
        let (replay_stopped_tx, replay_stopped) = watch::channel(None);
        let (sync_state_tx, sync_state) = watch::channel(None);
        let (identity_full_tx, identity_full) = watch::channel(Vec::new());
        let marks = EntryMarks::default();
        let followers = Followers::default();
        let view = NodeView {
            node: node.to_owned(),
            cluster: cluster.to_owned(),
            role,
            peers,
            log,
            durable,
            marks: marks.clone(),
            followers: followers.clone(),
            applied,
            leader,
            seeding,
            replay_stopped,
            sync_state,
            identity_full,
        };
        let channels = RoleChannels {
            durable: durable_tx,
            marks,
            followers,
            applied: applied_tx,
            leader: leader_tx,
            seeding: seeding_tx,
            replay_stopped: replay_stopped_tx,
            sync_state: sync_state_tx,
            identity_full: identity_full_tx,
        };
        (view, channels)
    }
}
