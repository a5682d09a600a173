//! What can end a follower's connection to its leader, and how each is handled.

use crate::error::ErrorClass;
use crate::log::terms::TermStart;
use crate::lsn::{EntryId, Index};
use crate::relay::{FrameError, HandshakeError};
use crate::seed::SeedError;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no peer says it leads cluster {0}")]
    NoLeader(String),
    #[error("cannot reach leader {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("leader closed the stream")]
    Closed,
    #[error("leader sent {0} where it must not")]
    Unexpected(&'static str),
    #[error("leader sent entry {got} where {expected} was due")]
    OutOfOrder { expected: Index, got: EntryId },
    #[error("entry {0} from the leader has a malformed header")]
    BadEntry(EntryId),
    #[error("leader reported an error: {0}")]
    Peer(String),
    #[error("seeding: {0}")]
    Seed(#[from] SeedError),
    #[error("the log writer stopped")]
    WriterGone,
    #[error("the log: {0}")]
    Log(crate::log::LogError),
    #[error("heard nothing from the leader for {0:?} (relay.timeout)")]
    Idle(std::time::Duration),
    /// The leader does not hold this node's last entry: the logs branched. `terms` and `last`
    /// are the leader's term history and last index, to find where.
    #[error("leader {leader} does not hold this node's last entry: this node's log has diverged")]
    Diverged { leader: String, terms: Vec<TermStart>, last: Option<Index> },
    #[error("this node did not adopt leader {leader}'s term {term}")]
    TermNotAdopted { leader: String, term: crate::lsn::Term },
}

impl From<crate::log::committer::WriteError> for FollowError {
    fn from(e: crate::log::committer::WriteError) -> Self {
        match e {
            crate::log::committer::WriteError::Gone => FollowError::WriterGone,
            crate::log::committer::WriteError::Log(e) => FollowError::Log(e),
        }
    }
}

impl FollowError {
    pub fn class(&self) -> ErrorClass {
        match self {
            FollowError::NoLeader(_)
            | FollowError::Connect { .. }
            | FollowError::Closed
            | FollowError::Peer(_)
            | FollowError::Idle(_) => ErrorClass::Retry,
            FollowError::Frame(e) => e.class(),
            FollowError::Handshake(e) => e.class(),
            FollowError::Unexpected(_) | FollowError::OutOfOrder { .. } | FollowError::BadEntry(_) => {
                ErrorClass::Operator
            }
            FollowError::Seed(e) => e.class(),
            FollowError::WriterGone
            | FollowError::Log(_)
            | FollowError::Diverged { .. }
            | FollowError::TermNotAdopted { .. } => ErrorClass::Fatal,
        }
    }
}
