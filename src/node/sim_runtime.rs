//! The simulator as the sidecar: commands executed, messages delivered, invariants checked.

use std::collections::BTreeSet;

use crate::lsn::{Index, Term};

use super::super::machine::*;
use super::{Msg, Round, Sim};

impl Sim {
    pub(super) fn execute(&mut self, i: usize, command: Command) {
        match command {
            Command::Persist(hard) => self.persist(i, hard),
            Command::ProbePeers => self.net.push(Msg::Probe { from: i, epoch: self.nodes[i].epoch }),
            Command::ClaimTerm(claim) => self.claim(i, claim),
            Command::AnswerClaim { candidate, term, vote } => {
                if vote == Vote::Granted {
                    let grant = Grant { term, node: candidate.clone() };
                    assert_eq!(self.nodes[i].disk.granted, Some(grant), "{} granted before persisting", self.names[i]);
                }
                let to = self.index(&candidate);
                self.net.push(Msg::Vote { from: i, to, term, vote });
            }
            Command::StopFollowing => {
                self.drop_follower_task(i);
                self.nodes[i].follow = None;
            }
            Command::Follow { leader, term } => {
                assert!(term >= self.nodes[i].disk.term, "{} follows term {term} below its own", self.names[i]);
                self.drop_follower_task(i);
                self.nodes[i].follow = Some((leader.map(|l| self.index(&l)), term));
                self.connect(i);
            }
            Command::ReplayThrough { index } => {
                assert!(index.0 <= self.nodes[i].log.len() as u64);
                self.net.push(Msg::Replay { node: i, epoch: self.nodes[i].epoch, index });
            }
            Command::StartLeading { term, first_index } => self.start_leading(i, term, first_index),
            Command::StopLeading => {
                self.nodes[i].leading = None;
                let followers: Vec<usize> = (0..self.len()).filter(|f| self.nodes[*f].connected == Some(i)).collect();
                for f in followers {
                    self.break_connection(f);
                }
            }
            Command::ServeRelay { .. } => {}
            Command::MakeWritable => {
                assert!(self.nodes[i].leading.is_some(), "{} writable before it leads", self.names[i]);
                self.nodes[i].writable = true;
            }
            Command::MakeReadOnly => self.nodes[i].writable = false,
            Command::AwaitDrained => self.net.push(Msg::Drained { node: i, epoch: self.nodes[i].epoch }),
            Command::AskPromote { node, term } => {
                let to = self.index(&node);
                self.net.push(Msg::Ask { from: i, to, term });
            }
            Command::WriteDivergenceReport { .. } => {
                assert!(matches!(self.nodes[i].disk.role, RoleKind::Divergent { .. }));
                self.stats.divergent += 1;
            }
            Command::Answer { response, .. } => self.answered(i, response),
        }
    }

    fn persist(&mut self, i: usize, hard: HardState) {
        let name = &self.names[i];
        assert!(hard.term >= self.nodes[i].disk.term, "{name}: term went back to {}", hard.term);
        if let Some(grant) = &hard.granted {
            let first = self.granted[i].entry(grant.term).or_insert_with(|| grant.node.clone());
            assert_eq!(*first, grant.node, "{name} granted term {} twice", grant.term);
        }
        self.nodes[i].disk = hard;
    }

    fn claim(&mut self, i: usize, claim: Claim) {
        let mut round = Round { term: claim.term, waiting: BTreeSet::new(), answers: Vec::new() };
        for j in (0..self.len()).filter(|j| *j != i) {
            match self.reachable(i, j) {
                true => {
                    round.waiting.insert(j);
                    self.net.push(Msg::Claim { from: i, to: j, claim: claim.clone() });
                }
                false => round.answers.push(ClaimAnswer { node: self.names[j].clone(), vote: Vote::Unreachable }),
            }
        }
        self.nodes[i].round = Some(round);
        self.finish_round(i);
    }

    /// Records `vote` of `from` on the claim of `to` for `term`.
    fn vote(&mut self, from: usize, to: usize, term: Term, vote: Vote) {
        let node = self.names[from].clone();
        let Some(round) = self.nodes[to].round.as_mut().filter(|r| r.term == term) else { return };
        if round.waiting.remove(&from) {
            round.answers.push(ClaimAnswer { node, vote });
            self.finish_round(to);
        }
    }

    fn finish_round(&mut self, i: usize) {
        if self.nodes[i].round.as_ref().is_some_and(|r| r.waiting.is_empty()) {
            let answers = self.nodes[i].round.take().map(|r| r.answers).unwrap_or_default();
            self.post(i, Event::ClaimsAnswered(answers));
        }
    }

    fn start_leading(&mut self, i: usize, term: Term, first_index: Option<Index>) {
        let node = &self.nodes[i];
        assert_eq!(node.leading, None, "{} starts leading twice", self.names[i]);
        assert_eq!((&node.disk.role, node.disk.term), (&RoleKind::Leader, term), "leading before persisting");
        if let Some(first) = first_index {
            assert_eq!(first.0, node.log.len() as u64 + 1);
        }
        self.nodes[i].leading = Some(term);
        self.led.entry(term).or_default().insert(i);
    }

    fn answered(&mut self, i: usize, response: Response) {
        match response {
            Response::Promote(Ok(promoted)) => {
                self.stats.promoted += 1;
                if promoted.unsafe_no_majority {
                    self.stats.unsafe_promotions += 1;
                    self.unsafe_terms.insert(promoted.term);
                }
            }
            Response::Promote(Err(_)) => self.stats.refused += 1,
            Response::Switchover(Ok(done)) => {
                let to = self.index(&done.to);
                assert!(
                    self.nodes[to].log.starts_with(&self.nodes[i].log),
                    "the switchover to {} lost entries",
                    done.to
                );
                self.stats.switched += 1;
            }
            Response::Switchover(Err(_)) | Response::Fence { .. } => {}
        }
    }

    /// The follower task ends (a `Follow` replaces it): the leader sees the follower leave.
    fn drop_follower_task(&mut self, f: usize) {
        if let Some(l) = self.nodes[f].connected.take() {
            self.post(l, Event::FollowerLeft { node: self.names[f].clone() });
            self.nodes[l].replicating.remove(&f);
        }
        self.nodes[f].connecting = false;
    }

    pub(super) fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Probe { from, epoch } if self.nodes[from].epoch == epoch => {
                let answers = (0..self.len())
                    .filter(|j| *j != from)
                    .map(|j| PeerAnswer {
                        node: self.names[j].clone(),
                        state: self.nodes[j]
                            .machine
                            .as_ref()
                            .filter(|_| self.reachable(from, j))
                            .map(Node::probe_answer),
                    })
                    .collect();
                self.post(from, Event::ProbesAnswered(answers));
            }
            Msg::Claim { from, to, claim } if self.reachable(from, to) => self.post(to, Event::ClaimReceived(claim)),
            Msg::Vote { from, to, term, vote } if self.reachable(from, to) => self.vote(from, to, term, vote),
            Msg::Connect { follower, epoch } if self.nodes[follower].epoch == epoch => self.handshake(follower),
            Msg::Replicate { leader, follower } => self.replicate_now(leader, follower),
            Msg::Ask { from, to, term } if self.reachable(from, to) => {
                self.post(to, Event::HandoverReceived { from: self.names[from].clone(), term });
            }
            Msg::Replay { node, epoch, index } if self.nodes[node].epoch == epoch => {
                self.nodes[node].applied = self.nodes[node].applied.max(index.0);
                self.post(node, Event::ReplayCaughtUp { applied: index });
            }
            Msg::Drained { node, epoch } if self.nodes[node].epoch == epoch => {
                self.post(node, Event::WritesStopped { last: self.last(node) });
            }
            lost => self.lose(lost),
        }
    }

    /// A message that never arrives: claims and votes count as unreachable, a connection or
    /// a replication stream fails and is tried again.
    pub(super) fn lose(&mut self, msg: Msg) {
        match msg {
            Msg::Claim { from, to, claim } => self.vote(to, from, claim.term, Vote::Unreachable),
            Msg::Vote { from, to, term, .. } => self.vote(from, to, term, Vote::Unreachable),
            Msg::Connect { follower, epoch } if self.nodes[follower].epoch == epoch => {
                self.nodes[follower].connecting = false;
                self.connect(follower);
            }
            Msg::Replicate { leader, follower } => {
                self.nodes[leader].replicating.remove(&follower);
                if self.nodes[follower].connected == Some(leader) {
                    self.break_connection(follower);
                }
            }
            Msg::Probe { .. } | Msg::Connect { .. } | Msg::Ask { .. } | Msg::Replay { .. } | Msg::Drained { .. } => {}
        }
    }

    /// The follower task tries its target, or every peer; a leader of too old a term learns
    /// of the follower's term, a non-leader redirects to the leader of a higher term it follows.
    fn handshake(&mut self, f: usize) {
        self.nodes[f].connecting = false;
        let Some((target, min)) = self.nodes[f].follow else { return };
        let candidates: Vec<usize> = match target {
            Some(l) => vec![l],
            None => (0..self.len()).collect(),
        };
        let reachable: Vec<usize> = candidates.into_iter().filter(|j| self.reachable(f, *j)).collect();
        for j in reachable {
            let own = self.nodes[f].disk.term;
            match self.nodes[j].leading {
                Some(term) if term < own => self.post(j, Event::HigherTermSeen { term: own, leader: None }),
                Some(term) if term >= min => return self.accept(f, j, term),
                _ => {
                    let peer = self.nodes[j].machine.as_ref().map(Node::probe_answer);
                    if let Some(peer) = peer.filter(|p| p.term > own && p.leader.is_some()) {
                        self.post(f, Event::HigherTermSeen { term: peer.term, leader: peer.leader });
                    }
                }
            }
        }
        self.connect(f);
    }

    fn accept(&mut self, f: usize, l: usize, term: Term) {
        let (flog, llog) = (&self.nodes[f].log, &self.nodes[l].log);
        let common = flog.iter().zip(llog).take_while(|(a, b)| a == b).count();
        let flushed = flog.len();
        if common < flushed {
            self.post(f, Event::DivergenceFound { branch_point: Index(common as u64) });
            return;
        }
        self.nodes[f].connected = Some(l);
        self.post(f, Event::LeaderAccepted { node: self.names[l].clone(), term });
        let (flushed, applied) = (Some(Index(flushed as u64)), Some(Index(self.nodes[f].applied)));
        self.post(l, Event::FollowerAcked { node: self.names[f].clone(), flushed, applied });
        self.replicate(l, f);
    }

    /// The leader sends its log to a connected follower, which appends, applies and acks.
    fn replicate_now(&mut self, l: usize, f: usize) {
        self.nodes[l].replicating.remove(&f);
        let name = self.names[l].clone();
        let follows =
            matches!(self.machine(f).map(Node::role), Some(NodeRole::Follower { leader: Some(x), .. }) if *x == name);
        let term = self.nodes[l].leading;
        let ok = self.reachable(l, f)
            && self.nodes[f].connected == Some(l)
            && follows
            && term.is_some_and(|t| t >= self.nodes[f].disk.term);
        if !ok {
            if self.nodes[f].connected == Some(l) {
                self.break_connection(f);
            }
            return;
        }
        let log = self.nodes[l].log.clone();
        let follower = &mut self.nodes[f];
        assert!(log.starts_with(&follower.log), "streaming to a follower whose log is not a prefix");
        for entry in &log[follower.log.len()..] {
            assert!(*entry <= follower.disk.term, "{} appends term {entry} above its durable term", self.names[f]);
        }
        follower.log = log;
        follower.applied = follower.log.len() as u64;
        let Some(last) = self.last(f) else { return };
        self.post(f, Event::LogAppended { last });
        self.post(f, Event::ReplayCaughtUp { applied: last.index });
        let index = Some(last.index);
        self.post(l, Event::FollowerAcked { node: self.names[f].clone(), flushed: index, applied: index });
    }

    /// The invariants that hold between actions.
    pub(super) fn check(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(machine) = &node.machine else { continue };
            let name = &self.names[i];
            assert_eq!(machine.hard_state(), &node.disk, "{name}: hard state not persisted");
            let leads = match machine.role() {
                NodeRole::Leader { term } | NodeRole::HandingOver { term, .. } => Some(*term),
                _ => None,
            };
            assert_eq!(leads, node.leading, "{name}: the machine's leading and the runtime's differ");
            if node.writable {
                assert_eq!(machine.leading(), node.leading, "{name} writable while not leading");
            }
        }
        for (term, nodes) in &self.led {
            let names: Vec<&NodeId> = nodes.iter().map(|i| &self.names[*i]).collect();
            assert!(nodes.len() <= 1 || self.unsafe_terms.contains(term), "term {term} led by {names:?}");
        }
    }

    /// Whether a node ever led `term`; for the scenario tests.
    pub fn leaders_of(&self, term: Term) -> Vec<&NodeId> {
        self.led.get(&term).into_iter().flatten().map(|i| &self.names[*i]).collect()
    }
}
