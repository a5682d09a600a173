//! A node's role and term, and the state that must survive restarts.
//!
//! - `machine`: the failover core, `Node::step(event) -> Vec<Command>`, without I/O
//!   (promotion in `promote`, switchover in `switchover`, tested in `machine_tests`).
//! - `protocol`: its events, commands and answers; `hard_state`: what it needs persisted.
//! - `state`: `state.json` as the sidecar stores it today; `view`: the admin read model.

mod hard_state;
pub mod machine;
mod promote;
mod protocol;
mod switchover;

pub mod state;
pub mod view;

pub use hard_state::{FenceReason, Grant, HardState, NodeId, RoleKind};
pub use machine::{Command, Event, Node, NodeConfig, NodeRole, Response};
pub use state::{LeaderState, NodeState, StateError};
pub use view::{LeaderView, NodeView, RoleChannels};
