//! The machine's hard state: what must survive a crash, persisted before any command that
//! depends on it (the machine puts `Command::Persist` first in such a batch).
//!
//! It is a plain value; the sidecar stores it (in `state.json`, crash-safely) and hands it back
//! to [`super::Node::new`] on restart. Nothing else of the machine survives a restart.

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::lsn::{Index, Term};

/// A node's name, as in the configuration.
pub type NodeId = String;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The highest term this node adopted. Never decreases.
    #[serde(with = "TermDef")]
    pub term: Term,
    pub role: RoleKind,
    /// The one candidate this node granted a term to, for the highest term it granted.
    /// A node grants a term only above the one recorded here (or again to the same candidate),
    /// so each term is granted at most once.
    pub granted: Option<Grant>,
}

impl HardState {
    /// The state of a node whose data directory holds none yet: the configured initial role at
    /// term 1 (the first leader of a cluster holds term 1 without a claim).
    pub fn initial(role: Role) -> HardState {
        let role = match role {
            Role::Leader => RoleKind::Leader,
            Role::Follower => RoleKind::Follower,
        };
        HardState { term: Term(1), role, granted: None }
    }
}

/// The persisted kind of the runtime role. A promotion in progress persists as the role it
/// started from; a switchover in progress persists as `Leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RoleKind {
    Leader,
    Follower,
    Fenced {
        reason: FenceReason,
    },
    /// This node's log holds entries after `branch_point` that the cluster lost.
    Divergent {
        #[serde(with = "IndexDef")]
        branch_point: Index,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceReason {
    /// `POST /fence`.
    Operator,
    /// A higher term appeared while this node led; whether its log diverged is not known yet.
    Superseded,
    /// The lease expired while this node led.
    LeaseLost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(with = "TermDef")]
    pub term: Term,
    pub node: NodeId,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Term")]
struct TermDef(u64);

#[derive(Serialize, Deserialize)]
#[serde(remote = "Index")]
struct IndexDef(u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_round_trips_through_json() {
        let states = [
            HardState::initial(Role::Leader),
            HardState {
                term: Term(7),
                role: RoleKind::Divergent { branch_point: Index(41) },
                granted: Some(Grant { term: Term(7), node: "b".into() }),
            },
            HardState { term: Term(3), role: RoleKind::Fenced { reason: FenceReason::LeaseLost }, granted: None },
        ];
        for state in states {
            let text = serde_json::to_string(&state).unwrap();
            assert_eq!(serde_json::from_str::<HardState>(&text).unwrap(), state, "{text}");
        }
        let text = serde_json::to_string(&HardState::initial(Role::Follower)).unwrap();
        assert_eq!(text, r#"{"term":1,"role":{"kind":"follower"},"granted":null}"#);
    }
}
