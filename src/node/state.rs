//! `data_dir/state.json`: who this node is and what it has set up, written crash-safely.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::fsutil::write_atomic;
use crate::lsn::{Lsn, Term};

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

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
    pub role: StoredRole,
    pub term: u64,
    /// Set once this node set up logical decoding on its PostgreSQL.
    pub leader: Option<LeaderState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredRole {
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
            role: match role {
                Role::Leader => StoredRole::Leader,
                Role::Follower => StoredRole::Follower,
            },
            term: 1,
            leader: None,
        }
    }

    pub fn role(&self) -> Role {
        match self.role {
            StoredRole::Leader => Role::Leader,
            StoredRole::Follower => Role::Follower,
        }
    }

    pub fn term(&self) -> Term {
        Term(self.term)
    }

    /// Reads the state of `data_dir`, `None` when there is none yet.
    pub fn load(data_dir: &Path, cluster: &str, node: &str) -> Result<Option<NodeState>, StateError> {
        let path = data_dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: NodeState = serde_json::from_slice(&text)
            .map_err(|e| StateError::Damaged { path: path.clone(), reason: e.to_string() })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Damaged { path, reason: format!("unknown version {}", state.version) });
        }
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
}
