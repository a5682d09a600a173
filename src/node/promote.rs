//! Promotion: probe, claim, replay, lead; and the other side, granting a peer's claim.
//!
//! # The rules
//! - **Probe** (no effect on the peers). Unless forced, refuse when a reachable peer is a
//!   leader or is connected to one, at this node's term or a higher one (409 `LeaderAlive`:
//!   use switchover; a leader of an older term is stale and does not count), when a reachable peer's
//!   last entry is ahead of this node's (409 `PeerAhead`, the most advanced one), or when fewer
//!   than a majority of the cluster (this node included) answered (503 `NoMajority`, checked
//!   here so that a claim that cannot win disturbs nobody). Forced, the peers ahead are listed
//!   as `lost` in the answer.
//! - **Claim** term `T + 1`, `T` the highest term this node and the answers know. The candidate
//!   grants itself first (persisted), and stops following: from now on it accepts no entry of
//!   an older term. A peer grants iff it granted no one that term yet (or granted it to this
//!   very candidate: a lost answer asked again), its own term is not higher, it does not lead
//!   that term, and, unless forced, its last entry is not ahead of the candidate's. (A node
//!   may have adopted the term without granting it, from a redirect or a follower: as Raft
//!   resets its vote on a new term, it can still grant it once.)
//!   Granting is persisted before it is answered and makes the granter adopt the term: a
//!   follower drops its leader of the older term, a leader fences itself.
//! - **Majority**: grants from `(peers + 1) / 2 + 1` nodes, the candidate included. Without
//!   them the promotion is refused, unless forced: then it proceeds and the answer says
//!   `unsafe_no_majority` (the operator vouches that the others are dead; this is how a
//!   two-node cluster whose leader died promotes its follower). Such a promotion is the only
//!   way two nodes can lead the same term. With the lease enabled, forcing cannot replace a
//!   majority (`LeaseRequired`): the lease would fence the new leader at once.
//! - **Lead**: replay the local log through its last entry, persist the role, start leading
//!   at the next index, serve the relay as leader, and only then make PostgreSQL writable (a
//!   write accepted before the source runs would never reach the log).
//! - **Resume**: a leader restarting (or whose lease came back) probes first: a higher term
//!   fences it (it follows that term; its handshake finds any divergence); with the lease
//!   enabled it needs a majority of answers; otherwise it leads its term again.

use crate::lsn::{EntryId, Index, Term};

use super::machine::{
    ahead, Claim, ClaimAnswer, Command, FenceReason, Grant, HandoverStage, Node, NodeRole, PeerAnswer, PeerState,
    Phase, PromoteRefused, PromoteRequest, Promoted, Promotion, Response, RoleKind, Vote,
};
use super::NodeId;

impl Node {
    pub(super) fn on_promote(&mut self, request: PromoteRequest, out: &mut Vec<Command>) {
        let refused = match &self.role {
            NodeRole::Follower { .. } | NodeRole::Fenced { .. } => None,
            NodeRole::Leader { term } => Some(PromoteRefused::AlreadyLeader { term: *term }),
            NodeRole::Divergent { branch_point } => Some(PromoteRefused::Divergent { branch_point: *branch_point }),
            NodeRole::Starting | NodeRole::HandingOver { .. } | NodeRole::Promoting(_) => Some(PromoteRefused::Busy),
        };
        if let Some(refused) = refused {
            self.answer_promote(&request, Err(refused), out);
            return;
        }
        let before = Box::new(self.role.clone());
        self.role = NodeRole::Promoting(Promotion { request, phase: Phase::Probing, before });
        out.push(Command::ProbePeers);
    }

    /// A leader probes before it leads again (after a restart, or when its lease came back).
    pub(super) fn begin_resume(&mut self, out: &mut Vec<Command>) {
        let before = Box::new(self.role.clone());
        self.role = NodeRole::Promoting(Promotion { request: PromoteRequest::Resume, phase: Phase::Probing, before });
        out.push(Command::ProbePeers);
    }

    pub(super) fn on_probes(&mut self, answers: Vec<PeerAnswer>, out: &mut Vec<Command>) {
        let NodeRole::Promoting(Promotion { request, phase: Phase::Probing, before }) = &self.role else {
            return;
        };
        let (request, before) = (request.clone(), (**before).clone());
        let reached: Vec<(NodeId, PeerState)> =
            answers.into_iter().filter_map(|a| a.state.map(|state| (a.node, state))).collect();
        if let PromoteRequest::Resume = request {
            return self.resume(&reached, out);
        }
        let force = matches!(request, PromoteRequest::Operator { force: true, .. });
        let lost = self.peers_ahead(&reached);
        if !force {
            if let Err(refused) = self.probe_verdict(&reached, &lost) {
                self.role = before;
                return self.answer_promote(&request, Err(refused), out);
            }
        }
        let highest = reached.iter().map(|(_, s)| s.term).fold(self.hard.term, Term::max);
        self.begin_claim(Term(highest.0 + 1), lost, out);
    }

    /// The unforced probe's refusals, in the order an operator should act on them.
    fn probe_verdict(&self, reached: &[(NodeId, PeerState)], lost: &[(NodeId, EntryId)]) -> Result<(), PromoteRefused> {
        for (node, state) in reached.iter().filter(|(_, s)| s.term >= self.hard.term) {
            if state.role == RoleKind::Leader {
                return Err(PromoteRefused::LeaderAlive {
                    node: node.clone(),
                    term: state.term,
                    seen_by: node.clone(),
                });
            }
            if let Some(leader) = state.leader.clone().filter(|l| *l != self.config.node) {
                return Err(PromoteRefused::LeaderAlive { node: leader, term: state.term, seen_by: node.clone() });
            }
        }
        if let Some((node, last)) = lost.first() {
            return Err(PromoteRefused::PeerAhead { node: node.clone(), last: *last });
        }
        if reached.len() + 1 < self.majority() {
            return Err(PromoteRefused::NoMajority { reached: reached.len() + 1, needed: self.majority() });
        }
        Ok(())
    }

    /// Peers whose last entry is ahead of this node's, the most advanced first.
    fn peers_ahead(&self, reached: &[(NodeId, PeerState)]) -> Vec<(NodeId, EntryId)> {
        let mut lost: Vec<(NodeId, EntryId)> = reached
            .iter()
            .filter(|(_, s)| ahead(s.last, self.last))
            .filter_map(|(node, s)| s.last.map(|last| (node.clone(), last)))
            .collect();
        lost.sort_by_key(|(node, last)| (std::cmp::Reverse((last.term, last.index)), node.clone()));
        lost
    }

    fn resume(&mut self, reached: &[(NodeId, PeerState)], out: &mut Vec<Command>) {
        let higher = reached.iter().filter(|(_, s)| s.term > self.hard.term).max_by_key(|(_, s)| s.term);
        if let Some((node, state)) = higher {
            let leader = if state.role == RoleKind::Leader { Some(node.clone()) } else { state.leader.clone() };
            self.hard.role = RoleKind::Fenced { reason: FenceReason::Superseded };
            self.adopt(state.term);
            self.fence_following(leader, out);
            return;
        }
        if self.config.lease && reached.len() + 1 < self.majority() {
            self.lease_held = false;
            return self.fence(FenceReason::LeaseLost, out);
        }
        self.lease_held |= self.config.lease;
        self.hard.role = RoleKind::Leader;
        let term = self.hard.term;
        self.role = NodeRole::Leader { term };
        self.followers.clear();
        out.push(Command::StartLeading { term, first_index: None });
        out.push(Command::ServeRelay { leader: Some((self.config.node.clone(), term)) });
        out.push(Command::MakeWritable);
    }

    /// Fenced as superseded, following the higher term's leader (or whoever leads it).
    fn fence_following(&mut self, leader: Option<NodeId>, out: &mut Vec<Command>) {
        let term = self.hard.term;
        self.role = NodeRole::Fenced { reason: FenceReason::Superseded };
        out.push(Command::ServeRelay { leader: leader.clone().map(|l| (l, term)) });
        out.push(Command::Follow { leader, term });
    }

    /// Phase two: grant `term` to itself, stop following, ask the peers.
    pub(super) fn begin_claim(&mut self, term: Term, lost: Vec<(NodeId, EntryId)>, out: &mut Vec<Command>) {
        debug_assert!(term > self.hard.term);
        let NodeRole::Promoting(promotion) = &mut self.role else { return };
        promotion.phase = Phase::Claiming { term, lost };
        let force = matches!(promotion.request, PromoteRequest::Operator { force: true, .. });
        self.adopt(term);
        self.hard.granted = Some(Grant { term, node: self.config.node.clone() });
        out.push(Command::StopFollowing);
        out.push(Command::ClaimTerm(Claim { candidate: self.config.node.clone(), term, last: self.last, force }));
    }

    pub(super) fn on_claims(&mut self, answers: Vec<ClaimAnswer>, out: &mut Vec<Command>) {
        let NodeRole::Promoting(Promotion { request, phase: Phase::Claiming { term, lost }, .. }) = &self.role else {
            return;
        };
        let (request, term, lost) = (request.clone(), *term, lost.clone());
        let higher = answers.iter().filter_map(|a| match a.vote {
            Vote::Refused { term: theirs, .. } if theirs > term => Some(theirs),
            _ => None,
        });
        if let Some(higher) = higher.max() {
            self.answer_promote(&request, Err(PromoteRefused::Superseded { term: higher }), out);
            return self.settle_without_leader(higher, out);
        }
        let granted = 1 + answers.iter().filter(|a| a.vote == Vote::Granted).count();
        let needed = self.majority();
        let force = matches!(request, PromoteRequest::Operator { force: true, .. });
        let refused = match (granted >= needed, force, self.config.lease) {
            (true, _, _) | (false, true, false) => None,
            (false, true, true) => Some(PromoteRefused::LeaseRequired { reached: granted, needed }),
            (false, false, _) => Some(PromoteRefused::NoMajority { reached: granted, needed }),
        };
        if let Some(refused) = refused {
            self.answer_promote(&request, Err(refused), out);
            return self.settle_without_leader(term, out);
        }
        self.lease_held |= self.config.lease;
        let promoted = Promoted { term, first_index: self.next_index(), lost, unsafe_no_majority: granted < needed };
        match self.last.map(|id| id.index).filter(|last| self.applied < Some(*last)) {
            Some(through) => {
                self.set_phase(Phase::Replaying { through, promoted });
                out.push(Command::ReplayThrough { index: through });
            }
            None => self.lead(promoted, out),
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if let NodeRole::Promoting(promotion) = &mut self.role {
            promotion.phase = phase;
        }
    }

    /// After a failed claim: wait for a leader of `term` (fenced if fenced before).
    fn settle_without_leader(&mut self, term: Term, out: &mut Vec<Command>) {
        self.adopt(term);
        let term = self.hard.term;
        self.role = match self.hard.role {
            RoleKind::Fenced { reason } => NodeRole::Fenced { reason },
            _ => NodeRole::Follower { leader: None, term },
        };
        out.push(Command::Follow { leader: None, term });
    }

    pub(super) fn on_caught_up(&mut self, applied: Index, out: &mut Vec<Command>) {
        self.applied = self.applied.max(Some(applied));
        let NodeRole::Promoting(Promotion { phase: Phase::Replaying { through, promoted }, .. }) = &self.role else {
            return;
        };
        if applied >= *through {
            let promoted = promoted.clone();
            self.lead(promoted, out);
        }
    }

    fn lead(&mut self, promoted: Promoted, out: &mut Vec<Command>) {
        let NodeRole::Promoting(Promotion { request, .. }) = &self.role else { return };
        let request = request.clone();
        if self.config.lease && !self.lease_held {
            let needed = self.majority();
            self.answer_promote(&request, Err(PromoteRefused::LeaseRequired { reached: 1, needed }), out);
            return self.settle_without_leader(promoted.term, out);
        }
        let term = promoted.term;
        self.hard.role = RoleKind::Leader;
        self.role = NodeRole::Leader { term };
        self.followers.clear();
        out.push(Command::StartLeading { term, first_index: Some(promoted.first_index) });
        out.push(Command::ServeRelay { leader: Some((self.config.node.clone(), term)) });
        out.push(Command::MakeWritable);
        self.answer_promote(&request, Ok(promoted), out);
    }

    fn answer_promote(
        &self,
        request: &PromoteRequest,
        result: Result<Promoted, PromoteRefused>,
        out: &mut Vec<Command>,
    ) {
        if let PromoteRequest::Operator { id, .. } = request {
            out.push(Command::Answer { id: *id, response: Response::Promote(result) });
        }
    }

    /// The switchover's target: the leader vouches, so no probe.
    pub(super) fn on_handover(&mut self, from: NodeId, term: Term, out: &mut Vec<Command>) {
        let NodeRole::Follower { leader: Some(leader), .. } = &self.role else { return };
        if *leader != from || term <= self.hard.term {
            return;
        }
        let before = Box::new(self.role.clone());
        let request = PromoteRequest::Handover { from };
        self.role = NodeRole::Promoting(Promotion { request, phase: Phase::Probing, before });
        self.begin_claim(term, Vec::new(), out);
    }

    /// A peer's claim: grant iff this node granted no one the term yet (or granted it to this
    /// very candidate), its own term is not higher, it does not lead that term, and, unless
    /// forced, its log is not ahead of the candidate's.
    pub(super) fn on_claim(&mut self, claim: Claim, out: &mut Vec<Command>) {
        let granted_term = self.hard.granted.as_ref().map(|g| g.term);
        let again = self.hard.granted == Some(Grant { term: claim.term, node: claim.candidate.clone() });
        let leads = self.hard.role == RoleKind::Leader && claim.term == self.hard.term;
        let fresh = claim.term >= self.hard.term && granted_term < Some(claim.term) && !leads;
        let behind = !claim.force && ahead(self.last, claim.last);
        let starting = self.role == NodeRole::Starting;
        if starting || claim.candidate == self.config.node || behind || !(fresh || again) {
            let vote = Vote::Refused { term: self.hard.term, last: self.last };
            out.push(Command::AnswerClaim { candidate: claim.candidate, term: claim.term, vote });
            return;
        }
        if fresh {
            self.hard.granted = Some(Grant { term: claim.term, node: claim.candidate.clone() });
            self.grant_leaves_role(&claim, out);
        }
        out.push(Command::AnswerClaim { candidate: claim.candidate, term: claim.term, vote: Vote::Granted });
    }

    /// Adopting a granted term: a leader stops (and follows the switchover's target, once
    /// that applied everything and was asked to promote: a claim of the target before then
    /// is any claim), a candidate gives up, a follower drops its leader of the older term.
    fn grant_leaves_role(&mut self, claim: &Claim, out: &mut Vec<Command>) {
        let handing_to = match &self.role {
            NodeRole::HandingOver { handover, .. }
                if handover.to == claim.candidate && handover.stage == HandoverStage::Asked =>
            {
                Some(handover.id)
            }
            _ => None,
        };
        if let Some(id) = handing_to {
            self.adopt(claim.term);
            self.hard.role = RoleKind::Follower;
            self.role = NodeRole::Follower { leader: None, term: claim.term };
            let target = Some((claim.candidate.clone(), claim.term));
            out.extend([Command::StopLeading, Command::ServeRelay { leader: target }]);
            out.push(Command::Follow { leader: Some(claim.candidate.clone()), term: claim.term });
            let done = super::machine::SwitchedOver { to: claim.candidate.clone(), term: claim.term };
            out.push(Command::Answer { id, response: Response::Switchover(Ok(done)) });
            return;
        }
        self.leave_role(out, Some(claim.term));
        match self.role {
            NodeRole::Divergent { .. } => self.adopt(claim.term),
            _ => self.settle_without_leader_after_grant(claim.term, out),
        }
    }

    fn settle_without_leader_after_grant(&mut self, term: Term, out: &mut Vec<Command>) {
        if self.hard.role == RoleKind::Leader {
            self.hard.role = RoleKind::Fenced { reason: FenceReason::Superseded };
        }
        if self.role != NodeRole::Starting {
            out.push(Command::ServeRelay { leader: None });
        }
        self.settle_without_leader(term, out);
    }
}
