//! A node's role and term, and the state that must survive restarts.
//!
//! - `machine`: the failover core, `Node::step(event) -> Vec<Command>`, without I/O
//!   (promotion in `promote`, switchover in `switchover`), tested on its commands in
//!   `machine_tests`, and as a cluster on a simulated network (`sim`) in `sim_tests`.
//! - `protocol`: its events, commands and answers; `hard_state`: what it needs persisted.
//! - `state`: `state.json`; `view`: the admin read model; `inbox`: how events and requests
//!   reach the sidecar's control loop (`sidecar/control.rs`), which executes the commands.

mod hard_state;
pub mod inbox;
pub mod machine;
mod promote;
mod protocol;
mod switchover;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;

pub mod state;
pub mod sync;
pub mod view;

pub use hard_state::{FenceReason, Grant, HardState, NodeId, RoleKind};
pub use machine::{Command, Event, Node, NodeConfig, NodeRole, PeerState, Response};
pub use state::{LeaderState, NodeState, SharedState, StateError};
pub use view::{LeaderView, NodeView, RoleChannels, RoleName, RoleView};
