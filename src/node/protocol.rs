//! What goes in and out of the machine: events, commands and the answers to operators.
//!
//! # What the sidecar does with them
//! - One task owns the `Node`; admin handlers, the relay, the follower and leader tasks send
//!   it events on one channel. It executes each batch in order, each command finished before
//!   the next, then publishes role and term (and `Node::probe_answer`) on a `watch` channel.
//! - `Persist`: write-temp, fsync, rename, fsync-dir, before anything else of the batch.
//! - The follower task (`Follow`) sends `LeaderAccepted` once the leader's handshake found its
//!   last entry in the leader's log (`DivergenceFound` otherwise), and appends entries of a
//!   term only once the published term is at least that term: a leader's higher term is thus
//!   durable before its entries. `Follow` and `StopFollowing` end the previous task at once.
//! - `HigherTermSeen` comes from: a follower's hello with a higher term (on a leader), a relay
//!   answering "not leader; the leader is X at term T", and a periodic look at the peers'
//!   probe answers (so a leader cut off by a partition learns of a new term when it heals).
//! - `ProbePeers` and `ClaimTerm` ask every peer concurrently with a short timeout and always
//!   answer with one entry per peer (`None` / `Vote::Unreachable` when it did not answer); the
//!   peer answers a claim with the `AnswerClaim` its own machine returns.
//! - `LeaseLost` / `LeaseRenewed`: with the built-in lease, the leader's view of a majority of
//!   the cluster (itself included) acknowledging within `lease_timeout`; an external store
//!   (etcd) would send the same two events.
//! - `Tick` about every 100 ms, with the time since start (used by switchover deadlines).

use std::time::Duration;

use crate::lsn::{EntryId, Index, Term};

use super::hard_state::{HardState, NodeId, RoleKind};

/// Identifies an operator request; its answer carries it back.
pub type RequestId = u64;

/// What the machine needs of the configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: NodeId,
    /// Every other node of the cluster. The cluster is this node and its peers.
    pub peers: Vec<NodeId>,
    /// A leader must hold the lease to lead (`LeaseRenewed` / `LeaseLost`).
    pub lease: bool,
    /// How long a switchover waits for its target before the leader resumes writes.
    pub switchover_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The sidecar started; `last` is the log's last entry, `applied` the replay's progress.
    Start {
        last: Option<EntryId>,
        applied: Option<Index>,
    },
    PromoteRequested {
        id: RequestId,
        force: bool,
    },
    SwitchoverRequested {
        id: RequestId,
        to: NodeId,
    },
    FenceRequested {
        id: RequestId,
    },
    /// One answer per peer to `ProbePeers`.
    ProbesAnswered(Vec<PeerAnswer>),
    /// A peer asks this node to grant it a term; answer with the `AnswerClaim` command.
    ClaimReceived(Claim),
    /// One answer per peer to `ClaimTerm`.
    ClaimsAnswered(Vec<ClaimAnswer>),
    /// The leader, in a switchover, asks this node to promote itself to `term` (`AskPromote`).
    HandoverReceived {
        from: NodeId,
        term: Term,
    },
    /// The follower task passed a leader's handshake: the leader holds this node's last entry.
    LeaderAccepted {
        node: NodeId,
        term: Term,
    },
    /// The follower task lost its leader; it keeps trying.
    LeaderLost {
        node: NodeId,
    },
    /// A relay, probe or follower said a higher term exists (and who leads it, if known).
    HigherTermSeen {
        term: Term,
        leader: Option<NodeId>,
    },
    /// A follower's acknowledgement, on the leader.
    FollowerAcked {
        node: NodeId,
        flushed: Option<Index>,
        applied: Option<Index>,
    },
    /// A follower's connection ended, on the leader.
    FollowerLeft {
        node: NodeId,
    },
    /// The local log's last entry (may be coalesced: only the latest matters).
    LogAppended {
        last: EntryId,
    },
    /// Answer to `AwaitDrained`: everything PostgreSQL committed is in the log, up to `last`.
    WritesStopped {
        last: Option<EntryId>,
    },
    ReplayCaughtUp {
        applied: Index,
    },
    /// The leader's handshake found this node's log is not a prefix of its own.
    DivergenceFound {
        branch_point: Index,
    },
    LeaseRenewed,
    LeaseLost,
    /// Monotonic time since the sidecar started.
    Tick {
        now: Duration,
    },
}

/// A peer's answer to a probe: `state` is `None` when it could not be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnswer {
    pub node: NodeId,
    pub state: Option<PeerState>,
}

/// What a node tells a probe: [`Node::probe_answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub term: Term,
    pub role: RoleKind,
    pub last: Option<EntryId>,
    /// The leader it is connected to, if any.
    pub leader: Option<NodeId>,
}

/// A candidate's request for a term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub candidate: NodeId,
    pub term: Term,
    pub last: Option<EntryId>,
    /// The operator forced the promotion: grant even to a candidate behind this node.
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimAnswer {
    pub node: NodeId,
    pub vote: Vote,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    Granted,
    /// Not granted: the voter's term and last entry.
    Refused {
        term: Term,
        last: Option<EntryId>,
    },
    Unreachable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Store the hard state crash-safely before executing the rest of the batch.
    Persist(HardState),
    /// Ask every peer for its `probe_answer`, then send `ProbesAnswered` (unreachable peers too).
    ProbePeers,
    /// Send the claim to every peer, then send `ClaimsAnswered` (unreachable peers too).
    ClaimTerm(Claim),
    /// Answer the `ClaimReceived` of `candidate`.
    AnswerClaim {
        candidate: NodeId,
        term: Term,
        vote: Vote,
    },
    StopFollowing,
    /// (Re)start the follower task toward `leader` (any peer that leads, found through the
    /// relays' redirects, when `None`), accepting only a leader of `term` or higher. Replaces
    /// any previous follower task.
    Follow {
        leader: Option<NodeId>,
        term: Term,
    },
    /// Replay the local log through `index`, then send `ReplayCaughtUp`.
    ReplayThrough {
        index: Index,
    },
    /// Start the source and append entries of `term`, the first at `first_index` (record it in
    /// the term history); `None`: the term already began (a leader resuming after a restart).
    StartLeading {
        term: Term,
        first_index: Option<Index>,
    },
    StopLeading,
    /// The relay answers as leader when `leader` is this node, else "not leader; the leader is
    /// X at term T" (or "unknown").
    ServeRelay {
        leader: Option<(NodeId, Term)>,
    },
    MakeWritable,
    MakeReadOnly,
    /// Once the source logged everything PostgreSQL committed, send `WritesStopped`.
    AwaitDrained,
    /// Send `HandoverReceived { from: self, term }` to `node`.
    AskPromote {
        node: NodeId,
        term: Term,
    },
    /// Write the report of every transaction after `after` (idempotent: same file each time).
    WriteDivergenceReport {
        after: Index,
    },
    Answer {
        id: RequestId,
        response: Response,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Promote(Result<Promoted, PromoteRefused>),
    Switchover(Result<SwitchedOver, SwitchoverRefused>),
    Fence { was_leader: bool, term: Term },
}

impl Response {
    /// The admin API's status code.
    pub fn http_status(&self) -> u16 {
        match self {
            Response::Promote(Ok(_)) | Response::Switchover(Ok(_)) | Response::Fence { .. } => 200,
            Response::Promote(Err(refused)) => refused.http_status(),
            Response::Switchover(Err(refused)) => refused.http_status(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    pub term: Term,
    pub first_index: Index,
    /// Peers that held entries this node lacks (forced promotions): what is lost.
    pub lost: Vec<(NodeId, EntryId)>,
    /// Forced without grants from a majority: another node may lead the same term.
    pub unsafe_no_majority: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromoteRefused {
    /// 409: `node` holds entries this node lacks.
    PeerAhead {
        node: NodeId,
        last: EntryId,
    },
    /// 409: a leader is alive (`seen_by` a peer connected to it, or itself): use switchover.
    LeaderAlive {
        node: NodeId,
        term: Term,
        seen_by: NodeId,
    },
    /// 503: fewer than a majority answered or granted.
    NoMajority {
        reached: usize,
        needed: usize,
    },
    /// 503: forced without a majority, but the lease (which needs one) is enabled.
    LeaseRequired {
        reached: usize,
        needed: usize,
    },
    AlreadyLeader {
        term: Term,
    },
    Busy,
    Divergent {
        branch_point: Index,
    },
    /// A higher term appeared meanwhile.
    Superseded {
        term: Term,
    },
    /// Fenced during the promotion.
    Cancelled,
}

impl PromoteRefused {
    pub fn http_status(&self) -> u16 {
        match self {
            PromoteRefused::PeerAhead { .. }
            | PromoteRefused::LeaderAlive { .. }
            | PromoteRefused::AlreadyLeader { .. }
            | PromoteRefused::Busy
            | PromoteRefused::Divergent { .. }
            | PromoteRefused::Superseded { .. }
            | PromoteRefused::Cancelled => 409,
            PromoteRefused::NoMajority { .. } | PromoteRefused::LeaseRequired { .. } => 503,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchedOver {
    pub to: NodeId,
    pub term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchoverRefused {
    NotLeader {
        leader: Option<NodeId>,
    },
    UnknownNode,
    NotConnected,
    ToSelf,
    Busy,
    /// The target had not applied `needed` in time; the leader resumed writes.
    TimedOut {
        applied: Option<Index>,
        needed: Option<Index>,
    },
    /// Fenced, or a higher term appeared, during the switchover.
    Cancelled,
}

impl SwitchoverRefused {
    pub fn http_status(&self) -> u16 {
        match self {
            SwitchoverRefused::UnknownNode | SwitchoverRefused::ToSelf => 400,
            SwitchoverRefused::NotLeader { .. }
            | SwitchoverRefused::NotConnected
            | SwitchoverRefused::Busy
            | SwitchoverRefused::Cancelled => 409,
            SwitchoverRefused::TimedOut { .. } => 504,
        }
    }
}
