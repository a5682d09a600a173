//! A node's role and term, and the state that must survive restarts.
//!
//! Promotion, switchover and fencing will be added here as a state machine without I/O; for
//! now this holds the persisted identity of the node.

pub mod state;
pub mod sync;
pub mod view;

pub use state::{LeaderState, NodeState, StateError};
pub use view::{LeaderView, NodeView, RoleChannels};
