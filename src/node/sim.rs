//! A deterministic cluster of machines on a simulated network, for the simulation tests.
//!
//! The simulator plays the sidecar: it executes each batch of commands in order (a `disk` per
//! node that survives crashes, a log of entry terms, PostgreSQL's writability, the source and
//! the follower task), and turns messages into events. Network messages (claims, votes,
//! connections, replication, `AskPromote`) can be delivered in any order, dropped, or cut by a
//! partition; local completions (probes, replay, drain) only reordered. Events a batch causes
//! are queued and handled after it, as the sidecar's event channel would.
//!
//! It panics when an invariant breaks (`check`): two nodes lead the same term (terms of
//! promotions answered `unsafe_no_majority` excepted), a hard term decreases, a node grants a
//! term twice or answers a grant before persisting it, a batch that changed the hard state does
//! not start with `Persist`, a follower appends entries of a term above its durable term,
//! PostgreSQL is writable on a node that does not lead, or the runtime's leading differs from
//! the machine's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Role;
use crate::lsn::{EntryId, Index, Term};

use super::machine::*;

pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Msg {
    Probe { from: usize, epoch: u64 },
    Claim { from: usize, to: usize, claim: Claim },
    Vote { from: usize, to: usize, term: Term, vote: Vote },
    Connect { follower: usize, epoch: u64 },
    Replicate { leader: usize, follower: usize },
    Ask { from: usize, to: usize, term: Term },
    Replay { node: usize, epoch: u64, index: Index },
    Drained { node: usize, epoch: u64 },
}

impl Msg {
    fn travels(&self) -> bool {
        !matches!(self, Msg::Probe { .. } | Msg::Replay { .. } | Msg::Drained { .. })
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Action {
    Deliver(usize),
    Drop(usize),
    Write(usize),
    Promote {
        node: usize,
        force: bool,
    },
    Fence(usize),
    Switchover {
        node: usize,
        to: usize,
    },
    Crash(usize),
    Restart(usize),
    Cut(usize, usize),
    Heal,
    Tick,
    LeaseLost(usize),
    LeaseRenewed(usize),
    /// The sidecar's periodic look at its peers: a higher term one of them holds is reported.
    Gossip(usize),
}

/// A claim being answered: the peers not heard from yet.
struct Round {
    term: Term,
    waiting: BTreeSet<usize>,
    answers: Vec<ClaimAnswer>,
}

struct SimNode {
    machine: Option<Node>,
    epoch: u64,
    disk: HardState,
    /// The term of each entry, index 1 first.
    log: Vec<Term>,
    applied: u64,
    writable: bool,
    leading: Option<Term>,
    follow: Option<(Option<usize>, Term)>,
    connected: Option<usize>,
    connecting: bool,
    replicating: BTreeSet<usize>,
    round: Option<Round>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub promoted: usize,
    pub unsafe_promotions: usize,
    pub refused: usize,
    pub switched: usize,
    pub divergent: usize,
    pub writes: usize,
}

pub struct Sim {
    names: Vec<NodeId>,
    nodes: Vec<SimNode>,
    net: Vec<Msg>,
    inbox: VecDeque<(usize, Event)>,
    cut: BTreeSet<(usize, usize)>,
    now: Duration,
    lease: bool,
    next_id: RequestId,
    pub stats: Stats,
    /// Every node that started leading each term.
    led: BTreeMap<Term, BTreeSet<usize>>,
    unsafe_terms: BTreeSet<Term>,
    granted: Vec<BTreeMap<Term, NodeId>>,
}

impl Sim {
    /// `n` nodes, the first the initial leader, all started.
    pub fn new(n: usize, lease: bool) -> Sim {
        let names: Vec<NodeId> = (0..n).map(|i| format!("n{i}")).collect();
        let mut sim = Sim {
            names,
            nodes: Vec::new(),
            net: Vec::new(),
            inbox: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Duration::ZERO,
            lease,
            next_id: 1,
            stats: Stats::default(),
            led: BTreeMap::new(),
            unsafe_terms: BTreeSet::new(),
            granted: vec![BTreeMap::new(); n],
        };
        for i in 0..n {
            let role = if i == 0 { Role::Leader } else { Role::Follower };
            let disk = HardState::initial(role);
            let machine = Some(Node::new(sim.config(i), disk.clone()));
            sim.nodes.push(SimNode {
                machine,
                epoch: 0,
                disk,
                log: Vec::new(),
                applied: 0,
                writable: false,
                leading: None,
                follow: None,
                connected: None,
                connecting: false,
                replicating: BTreeSet::new(),
                round: None,
            });
            sim.post(i, Event::Start { last: None, applied: None });
        }
        sim.drain();
        sim
    }

    fn config(&self, i: usize) -> NodeConfig {
        let peers = self.names.iter().filter(|n| **n != self.names[i]).cloned().collect();
        NodeConfig { node: self.names[i].clone(), peers, lease: self.lease, switchover_timeout: TIMEOUT }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn machine(&self, i: usize) -> Option<&Node> {
        self.nodes[i].machine.as_ref()
    }

    pub fn log(&self, i: usize) -> &[Term] {
        &self.nodes[i].log
    }

    pub fn in_flight(&self) -> usize {
        self.net.len()
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("unknown node {name}"))
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.alive(a) && self.alive(b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn last(&self, i: usize) -> Option<EntryId> {
        let log = &self.nodes[i].log;
        log.last().map(|term| EntryId { term: *term, index: Index(log.len() as u64) })
    }

    fn post(&mut self, i: usize, event: Event) {
        self.inbox.push_back((i, event));
    }

    /// Handles queued events (and those their commands cause) until none is left.
    fn drain(&mut self) {
        while let Some((i, event)) = self.inbox.pop_front() {
            self.step(i, event);
        }
    }

    fn step(&mut self, i: usize, event: Event) {
        let Some(machine) = self.nodes[i].machine.as_mut() else { return };
        let before = machine.hard_state().clone();
        let commands = machine.step(event);
        let after = machine.hard_state().clone();
        if after != before {
            assert_eq!(commands.first(), Some(&Command::Persist(after)), "{commands:?}");
        }
        for command in commands {
            self.execute(i, command);
        }
    }

    /// Runs one action, then everything it causes locally, then checks the invariants.
    pub fn act(&mut self, action: Action) {
        let n = self.len();
        match action {
            Action::Deliver(k) | Action::Drop(k) if self.net.is_empty() => {
                let _ = k;
            }
            Action::Deliver(k) => {
                let msg = self.net.remove(k % self.net.len());
                self.deliver(msg);
            }
            Action::Drop(k) => {
                let k = k % self.net.len();
                match self.net[k].travels() {
                    true => {
                        let msg = self.net.remove(k);
                        self.lose(msg);
                    }
                    false => {
                        let msg = self.net.remove(k);
                        self.deliver(msg);
                    }
                }
            }
            Action::Write(i) => self.write(i % n),
            Action::Promote { node, force } => self.request(node % n, |id| Event::PromoteRequested { id, force }),
            Action::Fence(node) => self.request(self.pick(node), |id| Event::FenceRequested { id }),
            Action::Switchover { node, to } => {
                let to = self.names[to % n].clone();
                self.request(self.pick(node), |id| Event::SwitchoverRequested { id, to });
            }
            Action::Crash(i) => self.crash(i % n),
            Action::Restart(i) => self.restart(i % n),
            Action::Cut(a, b) => self.partition(a % n, b % n),
            Action::Heal => self.cut.clear(),
            Action::Tick => {
                self.now += Duration::from_secs(1);
                for i in 0..n {
                    self.post(i, Event::Tick { now: self.now });
                }
            }
            Action::LeaseLost(i) => self.post(self.pick(i), Event::LeaseLost),
            Action::LeaseRenewed(i) => self.post(i % n, Event::LeaseRenewed),
            Action::Gossip(i) => self.gossip(i % n),
        }
        self.drain();
        self.check();
    }

    /// Node `i`, or for `i` past the last node, a node that leads (requests meant for leaders).
    fn pick(&self, i: usize) -> usize {
        let leading = (0..self.len()).find(|j| self.nodes[*j].leading.is_some());
        match leading {
            Some(leader) if i >= self.len() => leader,
            _ => i % self.len(),
        }
    }

    /// Heals the network, restarts every node, renews the leases, lets switchovers time out and
    /// every node look at its peers, then delivers messages in order until none is left.
    pub fn recover(&mut self) {
        self.act(Action::Heal);
        for i in 0..self.len() {
            self.act(Action::Restart(i));
            self.act(Action::LeaseRenewed(i));
        }
        for _ in 0..=TIMEOUT.as_secs() {
            self.act(Action::Tick);
        }
        for i in 0..self.len() {
            self.act(Action::Gossip(i));
        }
        for _ in 0..2000 {
            if self.net.is_empty() {
                break;
            }
            self.act(Action::Deliver(0));
        }
    }

    /// Once recovered: a writable leader of the highest term (not a forced one) has every other
    /// node following it, except divergent nodes and nodes fenced at its term (a candidate of
    /// that term that the operator fenced follows only a later one).
    pub fn check_followed(&self) {
        let Some(l) = (0..self.len()).find(|i| self.nodes[*i].writable) else { return };
        let term = self.nodes[l].disk.term;
        if self.nodes.iter().any(|n| n.disk.term > term) || self.unsafe_terms.contains(&term) {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate().filter(|(i, _)| *i != l) {
            let ok = match (node.machine.as_ref().map(Node::role), &node.disk.role) {
                (Some(NodeRole::Follower { leader: Some(x), term: t }), _) => *x == self.names[l] && *t == term,
                (Some(NodeRole::Divergent { .. }), _) => true,
                (Some(NodeRole::Fenced { .. }), _) => node.disk.term == term,
                _ => false,
            };
            assert!(
                ok,
                "{} does not follow {} at term {term}: {:?}",
                self.names[i],
                self.names[l],
                self.machine(i).map(Node::role)
            );
        }
    }

    fn request(&mut self, i: usize, event: impl FnOnce(RequestId) -> Event) {
        let id = self.next_id;
        self.next_id += 1;
        self.post(i, event(id));
    }

    fn crash(&mut self, i: usize) {
        if !self.alive(i) {
            return;
        }
        self.break_connection(i);
        let followers: Vec<usize> = (0..self.len()).filter(|f| self.nodes[*f].connected == Some(i)).collect();
        for f in followers {
            self.break_connection(f);
        }
        let node = &mut self.nodes[i];
        node.machine = None;
        node.epoch += 1;
        node.leading = None;
        node.follow = None;
        node.connecting = false;
        node.replicating.clear();
        node.round = None;
    }

    fn restart(&mut self, i: usize) {
        if self.alive(i) {
            return;
        }
        self.nodes[i].machine = Some(Node::new(self.config(i), self.nodes[i].disk.clone()));
        let applied = Some(Index(self.nodes[i].applied)).filter(|a| a.0 > 0);
        self.post(i, Event::Start { last: self.last(i), applied });
    }

    fn partition(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.cut.insert((a.min(b), a.max(b)));
        for (f, l) in [(a, b), (b, a)] {
            if self.nodes[f].connected == Some(l) {
                self.break_connection(f);
            }
        }
    }

    fn gossip(&mut self, i: usize) {
        let own = self.nodes[i].disk.term;
        let peers = (0..self.len()).filter(|j| self.reachable(i, *j));
        let higher =
            peers.filter_map(|j| self.nodes[j].machine.as_ref().map(Node::probe_answer)).filter(|p| p.term > own);
        if let Some(peer) = higher.max_by_key(|p| p.term) {
            self.post(i, Event::HigherTermSeen { term: peer.term, leader: peer.leader });
        }
    }

    fn write(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(term) = node.leading.filter(|_| node.writable) else { return };
        node.log.push(term);
        self.stats.writes += 1;
        let last = self.last(i).expect("just appended");
        self.post(i, Event::LogAppended { last });
        let followers: Vec<usize> = (0..self.len()).filter(|f| self.nodes[*f].connected == Some(i)).collect();
        for f in followers {
            self.replicate(i, f);
        }
    }

    fn replicate(&mut self, leader: usize, follower: usize) {
        if self.nodes[leader].replicating.insert(follower) {
            self.net.push(Msg::Replicate { leader, follower });
        }
    }

    fn connect(&mut self, follower: usize) {
        let node = &mut self.nodes[follower];
        if node.follow.is_some() && !node.connecting && node.machine.is_some() {
            node.connecting = true;
            self.net.push(Msg::Connect { follower, epoch: node.epoch });
        }
    }

    /// The follower's connection ends; both sides hear of it, and the follower tries again.
    fn break_connection(&mut self, f: usize) {
        if let Some(l) = self.nodes[f].connected.take() {
            self.post(f, Event::LeaderLost { node: self.names[l].clone() });
            self.post(l, Event::FollowerLeft { node: self.names[f].clone() });
            self.nodes[l].replicating.remove(&f);
            self.connect(f);
        }
    }
}

#[path = "sim_runtime.rs"]
mod runtime;
