//! How the rest of the sidecar reaches the node's control loop: events, and requests that
//! wait for the machine's answer.

use tokio::sync::{mpsc, oneshot};

use super::machine::{Claim, Event, NodeId, Response, Vote};
use crate::lsn::Term;

/// What the control loop takes in.
pub enum Input {
    Event(Event),
    /// An operator's request; the machine's answer comes back on `reply`.
    Request {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// A peer's claim of a term; the vote comes back on `reply` once it is persisted.
    Claim {
        claim: Claim,
        reply: oneshot::Sender<Vote>,
    },
    /// The leader, in a switchover, asks this node to promote itself to `term`.
    Handover {
        from: NodeId,
        term: Term,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Promote { force: bool },
    Switchover { to: NodeId },
    Fence,
}

/// The sending end, for the admin API and the role tasks.
pub type Inbox = mpsc::UnboundedSender<Input>;
