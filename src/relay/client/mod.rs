//! The follower's relay client: find the leader among the peers, stream its log into this
//! node's own log, and acknowledge what is received, fsynced and applied.
//!
//! A connection goes through these steps, one file each:
//!
//! ```text
//! probe.rs      find the leader: ask every peer of [[peers]] who leads, at which term
//! connect.rs    dial it and carry the handshake (relay/handshake.rs decides)
//! seeding.rs    if the handshake asked for one: load the leader's snapshot
//! streaming.rs  records into the log writer; acks for received, flushed, applied
//! ```
//!
//! What a connection asks the leader for is a [`Resume`]: a snapshot first, or the entries
//! after the last one this node holds. Seeding returns the next one; nothing else changes it.
//!
//! Received records go to the log writer (the same group-committing writer the leader uses);
//! `flushed` is acknowledged only from the writer's durable position, after its fsync. After a
//! crash or a network cut the follower reconnects with backoff and asks for the entries after
//! the last one its own log holds.

mod connect;
mod error;
mod probe;
mod seeding;
mod streaming;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backoff::Backoff;
use crate::config::{Config, Peer};
use crate::log::committer::{Durable, SharedWriter};
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::node::LeaderView;
use crate::relay::{FollowerHandshake, HandshakeError, RefuseCode, Session, StreamStart};
use crate::seed::SeedProgress;

use connect::Connection;

pub use error::FollowError;
pub use probe::{find_leader, PEER_PROBE_TIMEOUT};
pub use seeding::{SEED_BYTES, SEED_ROWS, SEED_TABLES_DONE};
pub use streaming::RECEIVE_BATCH_BYTES;

/// What this follower applied, as the apply task publishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub id: Option<EntryId>,
    /// The leader WAL position just past the applied entry.
    pub end_lsn: Lsn,
}

/// Who this follower is and where it looks for its leader, for the link's whole life.
/// (No `Debug`: it holds the token.)
#[derive(Clone)]
pub struct LinkConfig {
    pub cluster: String,
    pub node: String,
    pub token: Arc<[u8]>,
    pub peers: Vec<Peer>,
    /// This node's PostgreSQL, where a snapshot is loaded.
    pub postgres: tokio_postgres::Config,
    /// How long the leader may stay silent, or a write to it take (`relay.timeout`).
    pub timeout: Duration,
}

impl LinkConfig {
    /// The link's part of the sidecar's configuration.
    pub fn new(config: &Config, token: Arc<[u8]>) -> LinkConfig {
        LinkConfig {
            cluster: config.cluster.clone(),
            node: config.node.clone(),
            token,
            peers: config.peers.clone(),
            postgres: config.postgres.clone(),
            timeout: config.relay_timeout,
        }
    }
}

/// The tasks a link feeds and watches, by their channels.
pub struct LinkChannels {
    /// The log writer, which receives the records (and commits small batches inline).
    pub writer: SharedWriter,
    /// What the writer has fsynced: acknowledged as `flushed`.
    pub durable: watch::Receiver<Durable>,
    /// What replay has committed: acknowledged as `applied`.
    pub applied: watch::Receiver<Applied>,
    /// Who leads and its last status, for lag.
    pub leader: watch::Sender<Option<LeaderView>>,
    /// Progress of a snapshot being loaded, for `/status`.
    pub seeding: watch::Sender<Option<SeedProgress>>,
    /// The term this node adopted durably: entries of a leader's term are streamed only once
    /// it is at least that term.
    pub term: watch::Receiver<Term>,
    /// Which leader accepted this node, and when it lost it.
    pub events: mpsc::UnboundedSender<LinkEvent>,
}

/// What the link tells the node about its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The leader's handshake found this node's last entry in its log; nothing is streamed
    /// until this node adopted `term`.
    Accepted { leader: String, term: Term },
    /// The connection to `leader` ended; the link looks for a leader again.
    Lost { leader: String },
}

/// How long a link waits for the node to adopt its leader's term.
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whom to follow: the peer that says it leads, at `term` or a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// This node's own term: a leader of an older one is refused.
    pub term: Term,
}

/// What the next connection asks the leader for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// This node's database is empty: a snapshot first, then the entries after it.
    Seed,
    /// The entries after the last one this node's log holds or, while it holds none, after
    /// `floor`: the entry the database holds (a loaded snapshot's position), if any.
    After { floor: Option<EntryId> },
}

impl Resume {
    /// The last entry this node holds, given its log's last one: what the handshake announces.
    pub fn flushed(self, log_last: Option<EntryId>) -> Option<EntryId> {
        match self {
            Resume::Seed => log_last,
            Resume::After { floor } => log_last.or(floor),
        }
    }
}

/// The follower's side of the relay: one connection to the leader at a time.
///
/// The link holds the log writer's queue open: the writer ends only once the link is dropped.
pub struct FollowerLink {
    config: LinkConfig,
    channels: LinkChannels,
}

/// A connection ready to stream: the leader accepted it and any snapshot is loaded.
struct Opened {
    connection: Connection,
    session: Session,
    /// The first index to stream.
    from: Index,
    /// What a later connection asks for.
    resume: Resume,
}

impl FollowerLink {
    pub fn new(config: LinkConfig, channels: LinkChannels) -> FollowerLink {
        FollowerLink { config, channels }
    }

    /// Follows the leader `target` names, starting with `resume`, reconnecting with backoff,
    /// until `cancel` or an error that backing off does not cure. On cancellation returns what
    /// a later call resumes with (past a snapshot this call loaded), so the link can be
    /// followed again.
    pub async fn follow(
        &mut self,
        target: Target,
        mut resume: Resume,
        cancel: CancellationToken,
    ) -> Result<Resume, FollowError> {
        let mut backoff = Backoff::default();
        loop {
            let opened = tokio::select! {
                _ = cancel.cancelled() => return Ok(resume),
                opened = self.open(target, resume) => opened,
            };
            let result = match opened {
                Ok(opened) => {
                    resume = opened.resume;
                    backoff.reset();
                    let leader = opened.session.leader_node.clone();
                    self.adopt(&leader, opened.session.term, &cancel).await?;
                    let streamed = self.stream(opened, &cancel).await;
                    let _ = self.channels.events.send(LinkEvent::Lost { leader });
                    streamed
                }
                Err(e) => Err(e),
            };
            let delay = match result {
                Ok(()) => return Ok(resume),
                Err(e @ (FollowError::Diverged { .. } | FollowError::TermNotAdopted { .. })) => return Err(e),
                Err(e) => match backoff.after_failure(e.class(), &e, "following the leader") {
                    Some(delay) => delay,
                    None => return Err(e),
                },
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(resume),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Tells the node which leader accepted it, and waits until the node adopted the leader's
    /// term durably (it persists it before publishing it), so that no entry of that term is
    /// appended before.
    async fn adopt(&mut self, leader: &str, term: Term, cancel: &CancellationToken) -> Result<(), FollowError> {
        let accepted = LinkEvent::Accepted { leader: leader.to_owned(), term };
        let _ = self.channels.events.send(accepted);
        let adopted = self.channels.term.wait_for(|adopted| *adopted >= term);
        tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            result = tokio::time::timeout(ADOPT_TIMEOUT, adopted) => match result {
                Ok(Ok(_)) => Ok(()),
                _ => Err(FollowError::TermNotAdopted { leader: leader.to_owned(), term }),
            },
        }
    }

    /// Finds the leader, shakes hands and, if the leader is to send a snapshot, loads it.
    async fn open(&self, target: Target, resume: Resume) -> Result<Opened, FollowError> {
        let addr = find_leader(&self.config.peers, &self.config.cluster, target.term).await?;
        let mut connection = Connection::dial(addr, self.config.timeout).await?;
        let handshake = connection.handshake(self.handshake(target, resume)?);
        let session = match tokio::time::timeout(self.config.timeout, handshake).await {
            Err(_) => return Err(FollowError::Idle(self.config.timeout)),
            Ok(Err(FollowError::Handshake(HandshakeError::Refused {
                leader,
                code: RefuseCode::Diverged(theirs),
                ..
            }))) => return Err(FollowError::Diverged { leader, terms: theirs.terms, last: theirs.last }),
            Ok(session) => session?,
        };
        let (from, resume) = match session.start {
            StreamStart::From(from) => (from, resume),
            StreamStart::Seed => {
                let progress = &self.channels.seeding;
                let position = seeding::load(&mut connection, &self.config.postgres, session.term, progress).await?;
                (position.map_or(Index(1), |id| id.index.next()), Resume::After { floor: position })
            }
        };
        Ok(Opened { connection, session, from, resume })
    }

    /// Streams from the leader `opened` reached until the stream ends or `cancel`.
    async fn stream(&mut self, opened: Opened, cancel: &CancellationToken) -> Result<(), FollowError> {
        let Session { leader_node, term, .. } = opened.session;
        info!(leader = %leader_node, term = %term, from = %opened.from, "following");
        self.channels.leader.send_replace(Some(LeaderView { node: leader_node, status: None }));
        streaming::stream(&mut self.channels, opened.connection, opened.from, self.config.timeout, cancel).await
    }

    /// The handshake's state machine for one connection, announcing what this node holds now.
    fn handshake(&self, target: Target, resume: Resume) -> Result<FollowerHandshake, FollowError> {
        let flushed = resume.flushed(self.channels.durable.borrow().last);
        let config = &self.config;
        let handshake = FollowerHandshake::new(&config.cluster, &config.node, target.term, flushed, &config.token)?;
        Ok(match resume {
            Resume::Seed => handshake.request_seed(),
            Resume::After { .. } => handshake,
        })
    }
}
