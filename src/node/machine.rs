//! The failover core: one state machine for role and term, without I/O.
//!
//! `Node::step(event) -> Vec<Command>`: the sidecar feeds it what happened and executes what it
//! returns, **in order, each command finished before the next begins**. Time is a value carried
//! by `Event::Tick`; the machine never reads a clock.
//!
//! # Roles
//! - `Starting`: before `Event::Start`.
//! - `Leader { term }`: leads `term`; PostgreSQL is writable, the relay serves as leader.
//! - `HandingOver`: a leader in a switchover: read-only, still serving, waiting for the target.
//! - `Follower { leader, term }`: follows a leader of `term` or higher (`leader` once connected).
//! - `Promoting`: probing the peers, claiming a term, then replaying the local log.
//! - `Fenced { reason }`: read-only and not leading; follows a leader of a higher term if one
//!   appears, or leads again when promoted.
//! - `Divergent { branch_point }`: holds entries the cluster lost; read-only until re-seeded.
//!
//! # Events and commands
//! See [`Event`] and [`Command`]. Promotion (`promote.rs`) has two phases so that a refused
//! promotion disturbs nobody: a probe with no effect on the peers (409 when a peer is ahead or
//! a leader is alive, 503 when too few peers answer), then a claim of term `T + 1` (`T`: the
//! highest term seen) that a majority of the cluster (this node included) must grant.
//! Switchover (`switchover.rs`) makes the leader read-only, waits until the target applied
//! everything, asks it to promote (no probe: the leader vouches), grants it the term and
//! follows it.
//!
//! # Invariants
//! 1. `Persist(hard)` comes first in every batch that changed the hard state, so nothing that
//!    depends on it (a grant, leading a term, following a term) happens before it is durable.
//! 2. The hard term never decreases. A node grants each term at most once: only a term above
//!    the last it granted (its own candidacy included) and not below its own, or again to the
//!    same candidate.
//! 3. A node leads term `T` only with grants of `T` from a majority of the cluster, or when
//!    an operator forced it without one (the answer then says `unsafe_no_majority`), or as
//!    the cluster's first leader at term 1. Hence, forced promotions aside, two nodes never
//!    lead the same term.
//! 4. A node never follows, nor accepts entries from, a term below its own: `Follow { term }`
//!    carries the lowest term the follower task may accept, and a granted claim replaces the
//!    follower task before the grant is answered.
//! 5. A leader that sees a higher term, grants a claim or loses its lease becomes read-only
//!    before it stops leading, and stays fenced until it follows a higher term or is promoted.
//! 6. With the lease enabled, a node leads only while it holds the lease.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::lsn::{EntryId, Index, Term};

pub use super::hard_state::{FenceReason, Grant, HardState, NodeId, RoleKind};
pub use super::protocol::*;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

/// The runtime role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Starting,
    Leader { term: Term },
    HandingOver { term: Term, handover: Handover },
    Follower { leader: Option<NodeId>, term: Term },
    Promoting(Promotion),
    Fenced { reason: FenceReason },
    Divergent { branch_point: Index },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub id: RequestId,
    pub to: NodeId,
    pub deadline: Duration,
    pub stage: HandoverStage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverStage {
    /// Read-only; waiting for `WritesStopped`.
    Draining,
    /// Waiting until the target applied `through`.
    Waiting { through: Option<Index> },
    /// `AskPromote` sent; waiting for the target's claim.
    Asked,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub request: PromoteRequest,
    pub phase: Phase,
    /// The role to go back to when the probe refuses.
    pub before: Box<NodeRole>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromoteRequest {
    Operator {
        id: RequestId,
        force: bool,
    },
    /// A switchover's target; the leader `from` vouches for it.
    Handover {
        from: NodeId,
    },
    /// A leader confirming it may lead again (after a restart or a lease renewal).
    Resume,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Probing,
    Claiming { term: Term, lost: Vec<(NodeId, EntryId)> },
    Replaying { through: Index, promoted: Promoted },
}

/// A follower's progress, as the leader knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub connected: bool,
    pub flushed: Option<Index>,
    pub applied: Option<Index>,
}

/// The state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct Node {
    pub(super) config: NodeConfig,
    pub(super) hard: HardState,
    pub(super) role: NodeRole,
    pub(super) last: Option<EntryId>,
    pub(super) applied: Option<Index>,
    pub(super) followers: BTreeMap<NodeId, Progress>,
    pub(super) lease_held: bool,
    pub(super) now: Duration,
}

impl Node {
    /// A machine from the persisted hard state; it acts from `Event::Start` on.
    pub fn new(config: NodeConfig, hard: HardState) -> Node {
        Node {
            config,
            hard,
            role: NodeRole::Starting,
            last: None,
            applied: None,
            followers: BTreeMap::new(),
            lease_held: false,
            now: Duration::ZERO,
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn role(&self) -> &NodeRole {
        &self.role
    }

    pub fn followers(&self) -> &BTreeMap<NodeId, Progress> {
        &self.followers
    }

    /// The highest index that at least `quorum` connected followers flushed (semi-sync mode's
    /// commit point with `quorum = sync_quorum`); `None` when fewer are connected.
    pub fn flushed_by(&self, quorum: usize) -> Option<Index> {
        let mut flushed: Vec<Option<Index>> =
            self.followers.values().filter(|p| p.connected).map(|p| p.flushed).collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        match quorum {
            0 => self.last.map(|id| id.index),
            k => flushed.get(k - 1).copied().flatten(),
        }
    }

    /// Whether this node leads, writable, at a term.
    pub fn leading(&self) -> Option<Term> {
        match self.role {
            NodeRole::Leader { term } => Some(term),
            _ => None,
        }
    }

    /// What this node answers to a peer's probe.
    pub fn probe_answer(&self) -> PeerState {
        let role = match &self.role {
            NodeRole::Leader { .. } | NodeRole::HandingOver { .. } => RoleKind::Leader,
            NodeRole::Fenced { reason } => RoleKind::Fenced { reason: *reason },
            NodeRole::Divergent { branch_point } => RoleKind::Divergent { branch_point: *branch_point },
            NodeRole::Starting | NodeRole::Follower { .. } | NodeRole::Promoting(_) => RoleKind::Follower,
        };
        let leader = match &self.role {
            NodeRole::Follower { leader, .. } => leader.clone(),
            _ => None,
        };
        PeerState { term: self.hard.term, role, last: self.last, leader }
    }

    /// Handles one event; the commands are to be executed in order.
    pub fn step(&mut self, event: Event) -> Vec<Command> {
        let before = self.hard.clone();
        let mut out = Vec::new();
        self.dispatch(event, &mut out);
        debug_assert!(self.hard.term >= before.term, "term went back from {} to {}", before.term, self.hard.term);
        if self.hard != before {
            out.insert(0, Command::Persist(self.hard.clone()));
        }
        self.check_invariants();
        out
    }

    fn dispatch(&mut self, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::Start { last, applied } => self.on_start(last, applied, out),
            Event::PromoteRequested { id, force } => self.on_promote(PromoteRequest::Operator { id, force }, out),
            Event::SwitchoverRequested { id, to } => self.on_switchover(id, to, out),
            Event::FenceRequested { id } => self.on_fence(id, out),
            Event::ProbesAnswered(answers) => self.on_probes(answers, out),
            Event::ClaimReceived(claim) => self.on_claim(claim, out),
            Event::ClaimsAnswered(answers) => self.on_claims(answers, out),
            Event::HandoverReceived { from, term } => self.on_handover(from, term, out),
            Event::LeaderAccepted { node, term } => self.on_leader_accepted(node, term, out),
            Event::LeaderLost { node } => self.on_leader_lost(&node),
            Event::HigherTermSeen { term, leader } => self.on_higher_term(term, leader, out),
            Event::FollowerAcked { node, flushed, applied } => self.on_acked(node, flushed, applied, out),
            Event::FollowerLeft { node } => self.followers.entry(node).or_default().connected = false,
            Event::LogAppended { last } => self.last = Some(last),
            Event::WritesStopped { last } => self.on_drained(last, out),
            Event::ReplayCaughtUp { applied } => self.on_caught_up(applied, out),
            Event::DivergenceFound { branch_point } => self.on_divergence(branch_point, out),
            Event::LeaseRenewed => self.on_lease_renewed(out),
            Event::LeaseLost => self.on_lease_lost(out),
            Event::Tick { now } => self.on_tick(now, out),
        }
    }

    /// Grants needed to lead: a majority of this node and its peers.
    pub fn majority(&self) -> usize {
        let cluster = self.config.peers.len() + 1;
        cluster / 2 + 1
    }

    /// The next index this node's log would hold.
    pub(super) fn next_index(&self) -> Index {
        self.last.map_or(Index(1), |id| id.index.next())
    }

    fn on_start(&mut self, last: Option<EntryId>, applied: Option<Index>, out: &mut Vec<Command>) {
        if self.role != NodeRole::Starting {
            return;
        }
        self.last = last;
        self.applied = applied;
        out.extend([Command::MakeReadOnly, Command::ServeRelay { leader: None }]);
        let term = self.hard.term;
        match self.hard.role.clone() {
            RoleKind::Leader => self.begin_resume(out),
            RoleKind::Follower => {
                self.role = NodeRole::Follower { leader: None, term };
                out.push(Command::Follow { leader: None, term });
            }
            RoleKind::Fenced { reason } => {
                self.role = NodeRole::Fenced { reason };
                out.push(Command::Follow { leader: None, term: self.fenced_follow_term(reason) });
            }
            RoleKind::Divergent { branch_point } => {
                self.role = NodeRole::Divergent { branch_point };
                out.push(Command::WriteDivergenceReport { after: branch_point });
            }
        }
    }

    /// Adopts a higher term. Leading, or fenced by the lease (which resumes leading), hold
    /// only for the term this node led: with another, they become fenced as superseded.
    pub(super) fn adopt(&mut self, term: Term) {
        if term <= self.hard.term {
            return;
        }
        self.hard.term = term;
        if matches!(self.hard.role, RoleKind::Leader | RoleKind::Fenced { reason: FenceReason::LeaseLost }) {
            self.hard.role = RoleKind::Fenced { reason: FenceReason::Superseded };
        }
    }

    /// Leaves the current role: a leader becomes read-only, then stops leading; a pending
    /// operator request is answered. The caller sets the next role.
    pub(super) fn leave_role(&mut self, out: &mut Vec<Command>, superseded: Option<Term>) {
        match &self.role {
            NodeRole::Leader { .. } => out.extend([Command::MakeReadOnly, Command::StopLeading]),
            NodeRole::HandingOver { handover, .. } => {
                let response = Response::Switchover(Err(SwitchoverRefused::Cancelled));
                out.extend([Command::StopLeading, Command::Answer { id: handover.id, response }]);
            }
            NodeRole::Promoting(Promotion { request: PromoteRequest::Operator { id, .. }, .. }) => {
                let refused = superseded.map_or(PromoteRefused::Cancelled, |term| PromoteRefused::Superseded { term });
                out.push(Command::Answer { id: *id, response: Response::Promote(Err(refused)) });
            }
            _ => {}
        }
    }

    /// The role after leaving another because of `term`: a node that led is fenced, others
    /// wait for a leader of `term` (a fenced or divergent node stays so).
    fn settle_at(&mut self, term: Term, leader: Option<NodeId>, out: &mut Vec<Command>) {
        self.adopt(term);
        let term = self.hard.term;
        match self.hard.role.clone() {
            RoleKind::Leader | RoleKind::Fenced { .. } => {
                let reason = match self.hard.role {
                    RoleKind::Fenced { reason } => reason,
                    _ => FenceReason::Superseded,
                };
                self.hard.role = RoleKind::Fenced { reason };
                self.role = NodeRole::Fenced { reason };
            }
            RoleKind::Follower => self.role = NodeRole::Follower { leader: None, term },
            RoleKind::Divergent { branch_point } => {
                self.role = NodeRole::Divergent { branch_point };
                out.push(Command::ServeRelay { leader: leader.map(|l| (l, term)) });
                return;
            }
        }
        out.push(Command::ServeRelay { leader: leader.clone().map(|l| (l, term)) });
        out.push(Command::Follow { leader, term });
    }

    fn on_higher_term(&mut self, term: Term, leader: Option<NodeId>, out: &mut Vec<Command>) {
        if term <= self.hard.term || self.role == NodeRole::Starting {
            return;
        }
        self.leave_role(out, Some(term));
        self.settle_at(term, leader, out);
    }

    fn on_leader_accepted(&mut self, node: NodeId, term: Term, out: &mut Vec<Command>) {
        let follows = matches!(self.following_role(), NodeRole::Follower { .. } | NodeRole::Fenced { .. });
        if term < self.hard.term || !follows {
            return;
        }
        self.adopt(term);
        self.hard.role = RoleKind::Follower;
        *self.following_role() = NodeRole::Follower { leader: Some(node.clone()), term };
        out.push(Command::ServeRelay { leader: Some((node, term)) });
    }

    /// Forgets the leader the follower task lost.
    fn on_leader_lost(&mut self, node: &NodeId) {
        if let NodeRole::Follower { leader, .. } = self.following_role() {
            if leader.as_ref() == Some(node) {
                *leader = None;
            }
        }
    }

    /// The role the follower task's events update: while a promotion probes (the task still
    /// runs then), the role that a refused probe goes back to.
    fn following_role(&mut self) -> &mut NodeRole {
        match &mut self.role {
            NodeRole::Promoting(Promotion {
                phase: Phase::Probing,
                request: PromoteRequest::Operator { .. },
                before,
            }) => before.as_mut(),
            role => role,
        }
    }

    /// The follower task found this node's log diverged: also while a promotion probes (the
    /// task still runs then), which the divergence refuses.
    fn on_divergence(&mut self, branch_point: Index, out: &mut Vec<Command>) {
        match &self.role {
            NodeRole::Follower { .. } | NodeRole::Fenced { .. } => {}
            NodeRole::Promoting(Promotion { request, phase: Phase::Probing, .. }) => {
                if let PromoteRequest::Operator { id, .. } = request {
                    let refused = PromoteRefused::Divergent { branch_point };
                    out.push(Command::Answer { id: *id, response: Response::Promote(Err(refused)) });
                }
            }
            _ => return,
        }
        self.hard.role = RoleKind::Divergent { branch_point };
        self.role = NodeRole::Divergent { branch_point };
        out.extend([Command::StopFollowing, Command::WriteDivergenceReport { after: branch_point }]);
    }

    fn on_fence(&mut self, id: RequestId, out: &mut Vec<Command>) {
        let was_leader = matches!(self.role, NodeRole::Leader { .. } | NodeRole::HandingOver { .. });
        match self.role {
            NodeRole::Leader { .. } | NodeRole::HandingOver { .. } | NodeRole::Promoting(_) => {
                self.leave_role(out, None);
                self.fence(FenceReason::Operator, out);
            }
            _ => out.push(Command::MakeReadOnly),
        }
        out.push(Command::Answer { id, response: Response::Fence { was_leader, term: self.hard.term } });
    }

    /// Fenced: not serving as leader, following only a leader it may follow. The caller
    /// made PostgreSQL read-only already (`leave_role`), or it never was writable.
    pub(super) fn fence(&mut self, reason: FenceReason, out: &mut Vec<Command>) {
        self.hard.role = RoleKind::Fenced { reason };
        self.role = NodeRole::Fenced { reason };
        out.push(Command::ServeRelay { leader: None });
        out.push(Command::Follow { leader: None, term: self.fenced_follow_term(reason) });
    }

    /// The lowest term a fenced node follows: a higher one than it led, or, superseded, the
    /// term it adopted (which it never led).
    fn fenced_follow_term(&self, reason: FenceReason) -> Term {
        match reason {
            FenceReason::Superseded => self.hard.term,
            FenceReason::Operator | FenceReason::LeaseLost => Term(self.hard.term.0 + 1),
        }
    }

    fn on_lease_lost(&mut self, out: &mut Vec<Command>) {
        self.lease_held = false;
        if self.config.lease && matches!(self.role, NodeRole::Leader { .. } | NodeRole::HandingOver { .. }) {
            self.leave_role(out, None);
            self.fence(FenceReason::LeaseLost, out);
        }
    }

    fn on_lease_renewed(&mut self, out: &mut Vec<Command>) {
        self.lease_held = true;
        if self.role == (NodeRole::Fenced { reason: FenceReason::LeaseLost }) {
            self.begin_resume(out);
        }
    }

    fn on_tick(&mut self, now: Duration, out: &mut Vec<Command>) {
        self.now = self.now.max(now);
        self.check_handover_deadline(out);
    }

    fn on_acked(&mut self, node: NodeId, flushed: Option<Index>, applied: Option<Index>, out: &mut Vec<Command>) {
        let progress = self.followers.entry(node).or_default();
        progress.connected = true;
        progress.flushed = progress.flushed.max(flushed);
        progress.applied = progress.applied.max(applied);
        self.check_handover_progress(out);
    }

    /// Debug-build checks of the relation between the runtime role and the hard state.
    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            match (&self.role, &self.hard.role) {
                (NodeRole::Leader { term } | NodeRole::HandingOver { term, .. }, RoleKind::Leader) => {
                    assert_eq!(*term, self.hard.term, "leading a term other than the hard state's");
                }
                (NodeRole::Leader { .. } | NodeRole::HandingOver { .. }, kind) => {
                    panic!("leading with hard role {kind:?}")
                }
                (NodeRole::Follower { term, .. }, _) => assert_eq!(*term, self.hard.term),
                (NodeRole::Fenced { reason }, kind) => assert_eq!(kind, &RoleKind::Fenced { reason: *reason }),
                _ => {}
            }
            if self.config.lease && self.leading().is_some() {
                assert!(self.lease_held, "leading without the lease");
            }
        }
    }
}

/// Whether `a` is ahead of `b`: a higher term, or the same term and a higher index.
pub fn ahead(a: Option<EntryId>, b: Option<EntryId>) -> bool {
    let key = |id: Option<EntryId>| id.map(|id| (id.term, id.index));
    key(a) > key(b)
}
