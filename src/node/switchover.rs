//! Switchover: a planned handover from the leader to a connected follower, losing no write.
//!
//! 1. `SwitchoverRequested { to }` on the leader: refused unless `to` is a peer that is
//!    connected. Otherwise `MakeReadOnly` and `AwaitDrained`: the leader keeps leading and
//!    serving, but clients can no longer write.
//! 2. `WritesStopped { last }`: the last entry that will ever be written at this term.
//! 3. `FollowerAcked` until the target applied `last`; then `AskPromote { to, term + 1 }`.
//! 4. The target claims the term without a probe; this leader grants it, stops leading,
//!    follows it, and answers the request.
//!
//! If the target has not claimed by the deadline (`switchover_timeout` after the request, as
//! `Tick` measures it), the leader makes PostgreSQL writable again and answers `TimedOut`. A
//! claim that arrives later is judged as any claim: granted only if the target is not behind.

use crate::lsn::{EntryId, Term};

use super::machine::{Command, Handover, HandoverStage, Node, NodeRole, RequestId, Response, SwitchoverRefused};
use super::NodeId;

impl Node {
    pub(super) fn on_switchover(&mut self, id: RequestId, to: NodeId, out: &mut Vec<Command>) {
        let refused = match &self.role {
            NodeRole::Leader { .. } => self.switchover_check(&to),
            NodeRole::HandingOver { .. } | NodeRole::Promoting(_) => Err(SwitchoverRefused::Busy),
            NodeRole::Follower { leader, .. } => Err(SwitchoverRefused::NotLeader { leader: leader.clone() }),
            _ => Err(SwitchoverRefused::NotLeader { leader: None }),
        };
        if let Err(refused) = refused {
            out.push(Command::Answer { id, response: Response::Switchover(Err(refused)) });
            return;
        }
        let term = self.hard.term;
        let deadline = self.now + self.config.switchover_timeout;
        let handover = Handover { id, to, deadline, stage: HandoverStage::Draining };
        self.role = NodeRole::HandingOver { term, handover };
        out.extend([Command::MakeReadOnly, Command::AwaitDrained]);
    }

    fn switchover_check(&self, to: &NodeId) -> Result<(), SwitchoverRefused> {
        if *to == self.config.node {
            return Err(SwitchoverRefused::ToSelf);
        }
        if !self.config.peers.contains(to) {
            return Err(SwitchoverRefused::UnknownNode);
        }
        match self.followers.get(to) {
            Some(progress) if progress.connected => Ok(()),
            _ => Err(SwitchoverRefused::NotConnected),
        }
    }

    pub(super) fn on_drained(&mut self, last: Option<EntryId>, out: &mut Vec<Command>) {
        if last.is_some() {
            self.last = last;
        }
        if let NodeRole::HandingOver { handover, .. } = &mut self.role {
            if handover.stage == HandoverStage::Draining {
                handover.stage = HandoverStage::Waiting { through: self.last.map(|id| id.index) };
                self.check_handover_progress(out);
            }
        }
    }

    pub(super) fn check_handover_progress(&mut self, out: &mut Vec<Command>) {
        let NodeRole::HandingOver { term, handover } = &mut self.role else { return };
        let HandoverStage::Waiting { through } = handover.stage else { return };
        let applied = self.followers.get(&handover.to).and_then(|p| p.applied);
        if applied >= through {
            handover.stage = HandoverStage::Asked;
            out.push(Command::AskPromote { node: handover.to.clone(), term: Term(term.0 + 1) });
        }
    }

    pub(super) fn check_handover_deadline(&mut self, out: &mut Vec<Command>) {
        let NodeRole::HandingOver { term, handover } = &self.role else { return };
        if self.now < handover.deadline {
            return;
        }
        let needed = match handover.stage {
            HandoverStage::Waiting { through } => through,
            HandoverStage::Draining | HandoverStage::Asked => self.last.map(|id| id.index),
        };
        let applied = self.followers.get(&handover.to).and_then(|p| p.applied);
        let response = Response::Switchover(Err(SwitchoverRefused::TimedOut { applied, needed }));
        let id = handover.id;
        self.role = NodeRole::Leader { term: *term };
        out.extend([Command::MakeWritable, Command::Answer { id, response }]);
    }
}
