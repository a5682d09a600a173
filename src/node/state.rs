//! `data_dir/state.json`: who this node is, its hard state (term, role, grant) and what it has
//! set up, written crash-safely.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::fsutil::write_atomic;
use crate::lsn::{Lsn, Term};

use super::hard_state::{HardState, RoleKind};

pub const STATE_FILE: &str = "state.json";
/// Version 2 holds the failover machine's [`HardState`]; version 1 (role and term only) is
/// read and rewritten as version 2 on the next save.
const STATE_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{path} belongs to node {found_node:?} of cluster {found_cluster:?}, not {node:?} of {cluster:?}: point data_dir elsewhere")]
    Foreign { path: PathBuf, found_cluster: String, found_node: String, cluster: String, node: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub version: u32,
    pub cluster: String,
    pub node: String,
    /// Term, role and grant: what the failover machine needs after a restart.
    pub hard: HardState,
    /// Set once this node set up logical decoding on its PostgreSQL (replaced when it leads a
    /// new term, cleared when it follows another leader).
    pub leader: Option<LeaderState>,
}

/// The first version's shape, read to migrate it.
#[derive(Deserialize)]
struct NodeStateV1 {
    cluster: String,
    node: String,
    role: StoredRoleV1,
    term: u64,
    leader: Option<LeaderState>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredRoleV1 {
    Leader,
    Follower,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderState {
    pub slot: String,
    pub publication: String,
    /// PostgreSQL's system identifier when the slot was made: a different one means the
    /// database was replaced underneath.
    pub system_id: String,
    /// The slot's consistent point, stored as PostgreSQL text (`X/Y`); a file whose point does
    /// not parse is damaged, never read as 0/0.
    #[serde(with = "lsn_text")]
    pub consistent_point: Lsn,
}

/// An [`Lsn`] as PostgreSQL writes it, in JSON.
mod lsn_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::lsn::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

impl NodeState {
    pub fn new(cluster: &str, node: &str, role: Role) -> NodeState {
        NodeState {
            version: STATE_VERSION,
            cluster: cluster.into(),
            node: node.into(),
            hard: HardState::initial(role),
            leader: None,
        }
    }

    pub fn term(&self) -> Term {
        self.hard.term
    }

    /// Reads the state of `data_dir`, `None` when there is none yet.
    pub fn load(data_dir: &Path, cluster: &str, node: &str) -> Result<Option<NodeState>, StateError> {
        let path = data_dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let damaged = |e: serde_json::Error| StateError::Damaged { path: path.clone(), reason: e.to_string() };
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let state = match serde_json::from_slice::<Versioned>(&text).map_err(damaged)?.version {
            1 => {
                let v1: NodeStateV1 = serde_json::from_slice(&text).map_err(damaged)?;
                let role = match v1.role {
                    StoredRoleV1::Leader => RoleKind::Leader,
                    StoredRoleV1::Follower => RoleKind::Follower,
                };
                NodeState {
                    version: STATE_VERSION,
                    cluster: v1.cluster,
                    node: v1.node,
                    hard: HardState { term: Term(v1.term), role, granted: None },
                    leader: v1.leader,
                }
            }
            STATE_VERSION => serde_json::from_slice(&text).map_err(damaged)?,
            other => return Err(StateError::Damaged { path, reason: format!("unknown version {other}") }),
        };
        if state.cluster != cluster || state.node != node {
            return Err(StateError::Foreign {
                path,
                found_cluster: state.cluster,
                found_node: state.node,
                cluster: cluster.into(),
                node: node.into(),
            });
        }
        Ok(Some(state))
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), StateError> {
        let path = data_dir.join(STATE_FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Damaged { path: path.clone(), reason: e.to_string() })?;
        write_atomic(&path, &text).map_err(|source| StateError::Io { path, source })
    }
}

/// `state.json` shared by the tasks that change it (the node's control loop, the leader's
/// source): every change is made and saved under one lock, so no writer loses another's.
#[derive(Clone, Debug)]
pub struct SharedState {
    data_dir: PathBuf,
    state: Arc<Mutex<NodeState>>,
}

impl SharedState {
    pub fn new(data_dir: &Path, state: NodeState) -> SharedState {
        SharedState { data_dir: data_dir.to_path_buf(), state: Arc::new(Mutex::new(state)) }
    }

    pub fn get(&self) -> NodeState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the state and saves it crash-safely before returning; on a failed save the
    /// change is not kept.
    pub fn update<R>(&self, change: impl FnOnce(&mut NodeState) -> R) -> Result<R, StateError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = state.clone();
        let result = change(&mut next);
        next.save(&self.data_dir)?;
        *state = next;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_refuses_another_node() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::load(dir.path(), "shop", "a").unwrap(), None);
        let mut state = NodeState::new("shop", "a", Role::Leader);
        state.leader = Some(LeaderState {
            slot: "walship_a".into(),
            publication: "walship".into(),
            system_id: "7".into(),
            consistent_point: Lsn(0x16B3748),
        });
        state.save(dir.path()).unwrap();
        let loaded = NodeState::load(dir.path(), "shop", "a").unwrap().unwrap();
        assert_eq!(loaded, state);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains(r#""consistent_point": "0/16B3748""#), "{text}");
        assert!(matches!(NodeState::load(dir.path(), "shop", "b"), Err(StateError::Foreign { .. })));
        std::fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
        assert!(matches!(NodeState::load(dir.path(), "shop", "a"), Err(StateError::Damaged { .. })));
        let unparsable = text.replace("0/16B3748", "16B3748");
        std::fs::write(dir.path().join(STATE_FILE), unparsable).unwrap();
        let err = NodeState::load(dir.path(), "shop", "a").unwrap_err();
        assert!(matches!(&err, StateError::Damaged { reason, .. } if reason.contains("invalid LSN")), "{err}");
    }

    #[test]
    fn a_first_version_file_is_read_as_its_hard_state() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"cluster":"shop","node":"a","role":"leader","term":3,"leader":null}"#;
        std::fs::write(dir.path().join(STATE_FILE), v1).unwrap();
        let state = NodeState::load(dir.path(), "shop", "a").unwrap().unwrap();
        assert_eq!(state.hard, HardState { term: Term(3), role: RoleKind::Leader, granted: None });
        assert_eq!(state.version, 2);
        let shared = SharedState::new(dir.path(), state);
        shared.update(|s| s.hard.term = Term(4)).unwrap();
        let again = NodeState::load(dir.path(), "shop", "a").unwrap().unwrap();
        assert_eq!((again.version, again.hard.term), (2, Term(4)));
    }
}
