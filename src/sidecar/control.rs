//! The node's control loop: the one task that owns the failover machine ([`Node`]), feeds it
//! what happens and executes the commands it returns, in order (the contract is at the top of
//! `node/protocol.rs`).
//!
//! ```text
//! admin API ──requests──┐                       ┌── Persist ──> state.json (before the rest)
//! peers ──claims────────┤                       ├── StartLeading / StopLeading: the source task
//! follower task ──link──┼──> Node::step ──cmds──┼── Follow / StopFollowing: the follower task
//! log, replay, relay ───┤                       ├── MakeWritable / MakeReadOnly: the fence task
//! tick (100 ms) ────────┘                       └── ServeRelay, ProbePeers, ClaimTerm, answers
//! ```
//!
//! Commands that wait on the network or on PostgreSQL (probes, claims, replaying through an
//! index, draining the source) run as tasks that send their result back as an event, so the
//! loop keeps answering. Role and term are published on one `watch` ([`RoleView`]) after every
//! batch, and the relay's `Serving` follows `ServeRelay`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::apply::AppliedPosition;
use crate::config::Config;
use crate::divergence::{self, Divergence};
use crate::follower::{self, FollowerError, NodeLink};
use crate::log::committer::Durable;
use crate::log::entry::EntryHeader;
use crate::log::{Log, RecordKind};
use crate::lsn::{EntryId, Index, Term};
use crate::node::inbox::{Input, Request};
use crate::node::machine::{Command, Event, FenceReason, Node, NodeRole, Progress, RequestId, Response, Vote};
use crate::node::{NodeId, RoleChannels, RoleName, RoleView, SharedState};
use crate::relay::client::{FollowError, LinkEvent};
use crate::relay::Serving;
use crate::source::{self, SourceError};

use super::fencer::Fencer;
use super::peers::Peers;
use super::SidecarError;

/// How often the machine hears the time.
pub const TICK: Duration = Duration::from_millis(100);
/// After news of the log's, replay's or the followers' progress, the loop lets this long pass
/// before it looks at progress again, then takes the newest: under load those change with
/// every commit, and a wake-up of this loop for each would cost every commit a context switch.
/// Decisions wait at most this much longer for progress (a switchover's drain, a promotion).
pub const PROGRESS_COALESCE: Duration = Duration::from_millis(5);
/// How long stopping the source waits for it to log what PostgreSQL committed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A role task: cancelled through its token, awaited through its handle.
struct RoleTask<E> {
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), E>>,
}

impl<E> RoleTask<E> {
    async fn stop(self) -> Result<(), E> {
        self.cancel.cancel();
        self.handle.await.unwrap_or(Ok(()))
    }
}

/// Everything the loop owns besides the machine.
pub struct Control {
    pub config: Arc<Config>,
    pub node: Node,
    pub state: SharedState,
    pub log: Arc<Mutex<Log>>,
    pub channels: RoleChannels,
    pub token: Option<Arc<[u8]>>,
    pub peers: Peers,
    pub fencer: Fencer,
    pub role: watch::Sender<RoleView>,
    pub serving: watch::Sender<Serving>,
    pub adopted: watch::Sender<Term>,
    /// The replication policy, changed by a reload.
    pub policy: watch::Sender<crate::node::sync::SyncPolicy>,
    pub inbox: mpsc::UnboundedSender<Input>,
    pub shutdown: CancellationToken,
    leading: Option<RoleTask<SourceError>>,
    following: Option<RoleTask<FollowerError>>,
    /// The lowest term the follower task accepts.
    following_term: Option<Term>,
    requests: HashMap<RequestId, (oneshot::Sender<Response>, Instant)>,
    claims: HashMap<(NodeId, Term), Vec<oneshot::Sender<Vote>>>,
    next_request: RequestId,
    link: (mpsc::UnboundedSender<LinkEvent>, mpsc::UnboundedReceiver<LinkEvent>),
    known_followers: BTreeMap<String, Progress>,
    report: Option<std::path::PathBuf>,
    /// Fires once the source's slot exists (so that no write a client makes is missed).
    leader_ready: Option<oneshot::Receiver<()>>,
    /// When this node began leading (the lease counts from then until followers answer).
    leading_since: Option<Instant>,
    /// When a node fenced for its lease last tried to lead again.
    lease_retry: Option<Instant>,
    started: Instant,
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        node: Node,
        state: SharedState,
        log: Arc<Mutex<Log>>,
        channels: RoleChannels,
        token: Option<Arc<[u8]>>,
        peers: Peers,
        fencer: Fencer,
        role: watch::Sender<RoleView>,
        serving: watch::Sender<Serving>,
        inbox: mpsc::UnboundedSender<Input>,
        shutdown: CancellationToken,
    ) -> Control {
        let adopted = watch::Sender::new(node.hard_state().term);
        let policy = watch::Sender::new(policy_of(&config));
        Control {
            policy,
            config,
            node,
            state,
            log,
            channels,
            token,
            peers,
            fencer,
            role,
            serving,
            adopted,
            inbox,
            shutdown,
            leading: None,
            following: None,
            following_term: None,
            requests: HashMap::new(),
            claims: HashMap::new(),
            next_request: 1,
            link: mpsc::unbounded_channel(),
            known_followers: BTreeMap::new(),
            report: None,
            leader_ready: None,
            leading_since: None,
            lease_retry: None,
            started: Instant::now(),
        }
    }

    /// Runs the node until shutdown or a fatal error of a role task.
    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut reloads: mpsc::UnboundedReceiver<Config>,
    ) -> Result<(), SidecarError> {
        let (last, applied) = self.positions();
        self.step(Event::Start { last, applied }).await?;
        let mut tick = tokio::time::interval(TICK);
        let mut durable = self.channels.durable.subscribe();
        let mut replayed = self.channels.applied.subscribe();
        let mut acked = self.channels.followers.subscribe();
        // Set while progress news waits (PROGRESS_COALESCE).
        let mut progress_quiet: Option<tokio::time::Instant> = None;
        let result = loop {
            let progress = progress_quiet.is_none();
            tokio::select! {
                _ = self.shutdown.cancelled() => break Ok(()),
                Some(input) = inputs.recv() => self.input(input).await?,
                Some(config) = reloads.recv() => self.reload(config),
                Some(event) = self.link.1.recv() => {
                    let event = match event {
                        LinkEvent::Accepted { leader, term } => Event::LeaderAccepted { node: leader, term },
                        LinkEvent::Lost { leader } => Event::LeaderLost { node: leader },
                    };
                    self.step(event).await?;
                }
                _ = tokio::time::sleep_until(progress_quiet.unwrap_or_else(tokio::time::Instant::now)), if !progress => {
                    progress_quiet = None;
                }
                Ok(()) = durable.changed(), if progress => {
                    progress_quiet = Some(tokio::time::Instant::now() + PROGRESS_COALESCE);
                    let last = durable.borrow_and_update().last;
                    if let Some(last) = last {
                        self.step(Event::LogAppended { last }).await?;
                    }
                }
                Ok(()) = replayed.changed(), if progress => {
                    progress_quiet = Some(tokio::time::Instant::now() + PROGRESS_COALESCE);
                    let applied = replayed.borrow_and_update().id;
                    if let Some(applied) = applied {
                        self.step(Event::ReplayCaughtUp { applied: applied.index }).await?;
                    }
                }
                Ok(()) = acked.changed(), if progress => {
                    progress_quiet = Some(tokio::time::Instant::now() + PROGRESS_COALESCE);
                    acked.borrow_and_update();
                    self.followers_changed().await?;
                }
                _ = tick.tick() => {
                    self.followers_changed().await?;
                    self.check_lease().await?;
                    self.step(Event::Tick { now: self.started.elapsed() }).await?;
                }
                ended = finished(&mut self.following) => self.follower_ended(ended).await?,
                ended = finished(&mut self.leading) => {
                    if let Err(e) = ended {
                        break Err(SidecarError::Source(e));
                    }
                }
            }
        };
        if let Some(task) = self.following.take() {
            let _ = task.stop().await;
        }
        if let Some(task) = self.leading.take() {
            let _ = task.stop().await;
        }
        result
    }

    fn positions(&self) -> (Option<EntryId>, Option<Index>) {
        let last = self.log.lock().ok().and_then(|log| log.last_written());
        let applied = self.channels.applied.borrow().id.map(|id| id.index);
        (last, applied)
    }

    async fn input(&mut self, input: Input) -> Result<(), SidecarError> {
        match input {
            Input::Event(event) => self.step(event).await,
            Input::Request { request, reply } => {
                let id = self.next_request;
                self.next_request += 1;
                self.requests.insert(id, (reply, Instant::now()));
                let event = match request {
                    Request::Promote { force } => Event::PromoteRequested { id, force },
                    Request::Switchover { to } => Event::SwitchoverRequested { id, to },
                    Request::Fence => Event::FenceRequested { id },
                };
                self.step(event).await
            }
            Input::Claim { claim, reply } => {
                self.claims.entry((claim.candidate.clone(), claim.term)).or_default().push(reply);
                self.step(Event::ClaimReceived(claim)).await
            }
            Input::Handover { from, term } => self.step(Event::HandoverReceived { from, term }).await,
        }
    }

    /// The leader's view of its followers, as acks move it.
    async fn followers_changed(&mut self) -> Result<(), SidecarError> {
        if !RoleName::of(self.node.role()).serves() {
            // Leading again later, the machine starts from no followers: tell it all anew.
            self.known_followers.clear();
            return Ok(());
        }
        let now: BTreeMap<String, Progress> = self
            .channels
            .followers
            .snapshot()
            .into_iter()
            .map(|(node, p)| {
                let progress = Progress {
                    connected: p.connected,
                    flushed: p.flushed.map(|e| e.index),
                    applied: p.applied.map(|e| e.index),
                };
                (node, progress)
            })
            .collect();
        let changed: Vec<(String, Progress)> = now
            .iter()
            .filter(|(node, p)| self.known_followers.get(*node) != Some(p))
            .map(|(n, p)| (n.clone(), *p))
            .collect();
        self.known_followers = now;
        for (node, p) in changed {
            let event = if p.connected {
                Event::FollowerAcked { node, flushed: p.flushed, applied: p.applied }
            } else {
                Event::FollowerLeft { node }
            };
            self.step(event).await?;
        }
        Ok(())
    }

    /// A configuration reloaded on SIGHUP: the replication policy changes at once (a leader's
    /// sync task takes it up); other changes wait for a restart.
    fn reload(&mut self, new: Config) {
        let policy = policy_of(&new);
        let mut kept = (*self.config).clone();
        let (mode, quorum, strict, timeout) = (kept.mode, kept.sync_quorum, kept.strict, kept.sync_timeout);
        kept.mode = new.mode;
        kept.sync_quorum = new.sync_quorum;
        kept.strict = new.strict;
        kept.sync_timeout = new.sync_timeout;
        if (mode, quorum, strict, timeout) != (new.mode, new.sync_quorum, new.strict, new.sync_timeout) {
            info!(mode = ?new.mode, quorum = new.sync_quorum, strict = new.strict, sync_timeout_ms = new.sync_timeout.as_millis() as u64, "replication policy changed");
        }
        if format!("{:?}", kept) != format!("{:?}", new) {
            warn!("the reloaded configuration changes more than [replication]: those changes take effect at the next start");
        }
        self.config = Arc::new(kept);
        self.policy.send_replace(policy);
    }

    /// The built-in lease (`failover.lease_timeout`): a leader holds it while a majority of
    /// the cluster, itself included, was heard within the timeout (counted from when it began
    /// leading, for followers not connected yet). A node fenced for losing it tries to lead
    /// again once per timeout: the machine probes its peers first.
    async fn check_lease(&mut self) -> Result<(), SidecarError> {
        let Some(timeout) = self.config.failover.lease_timeout else { return Ok(()) };
        let now = Instant::now();
        match self.node.role() {
            NodeRole::Leader { .. } | NodeRole::HandingOver { .. } => {
                let since = *self.leading_since.get_or_insert(now);
                let heard = self
                    .channels
                    .followers
                    .snapshot()
                    .values()
                    .filter(|p| p.connected && p.last_ack.is_some_and(|at| now.duration_since(at) < timeout))
                    .count();
                let majority = self.node.majority();
                if heard + 1 < majority && now.duration_since(since) >= timeout {
                    warn!(
                        heard = heard + 1,
                        needed = majority,
                        timeout_ms = timeout.as_millis() as u64,
                        "lease lost: this leader has not heard from a majority of the cluster; fencing"
                    );
                    self.step(Event::LeaseLost).await?;
                }
            }
            NodeRole::Fenced { reason: FenceReason::LeaseLost } => {
                self.leading_since = None;
                if self.lease_retry.is_none_or(|at| now.duration_since(at) >= timeout) {
                    self.lease_retry = Some(now);
                    self.step(Event::LeaseRenewed).await?;
                }
            }
            _ => self.leading_since = None,
        }
        Ok(())
    }

    /// One event through the machine, its commands executed in order, then the new role
    /// published.
    pub async fn step(&mut self, event: Event) -> Result<(), SidecarError> {
        let commands = self.node.step(event);
        for command in commands {
            self.execute(command).await?;
        }
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let hard = self.node.hard_state().clone();
        let role = RoleName::of(self.node.role());
        let leader = match self.node.role() {
            NodeRole::Leader { .. } | NodeRole::HandingOver { .. } => Some(self.config.node.clone()),
            NodeRole::Follower { leader, .. } => leader.clone(),
            _ => None,
        };
        let view = RoleView {
            role,
            term: hard.term,
            leader,
            probe: self.node.probe_answer(),
            divergent_report: self.report.clone(),
        };
        self.role.send_if_modified(|old| {
            let changed = *old != view;
            if changed && (old.role != view.role || old.term != view.term) {
                info!(role = view.role.as_str(), term = %view.term, "node role");
            }
            *old = view;
            changed
        });
        // The term is durable by now: followers may stream entries of it.
        self.adopted.send_if_modified(|t| {
            let changed = *t < hard.term;
            *t = (*t).max(hard.term);
            changed
        });
    }

    async fn execute(&mut self, command: Command) -> Result<(), SidecarError> {
        match command {
            Command::Persist(hard) => {
                self.state.update(|s| s.hard = hard)?;
                // Durable now: a follower may take entries of this term.
                let term = self.node.hard_state().term;
                self.adopted.send_if_modified(|t| {
                    let changed = *t < term;
                    *t = (*t).max(term);
                    changed
                });
            }
            Command::ProbePeers => {
                let (peers, inbox) = (self.peers.clone(), self.inbox.clone());
                tokio::spawn(async move {
                    let answers = peers.probe().await;
                    let _ = inbox.send(Input::Event(Event::ProbesAnswered(answers)));
                });
            }
            Command::ClaimTerm(claim) => {
                let (peers, inbox) = (self.peers.clone(), self.inbox.clone());
                tokio::spawn(async move {
                    let answers = peers.claim(&claim).await;
                    let _ = inbox.send(Input::Event(Event::ClaimsAnswered(answers)));
                });
            }
            Command::AnswerClaim { candidate, term, vote } => {
                for reply in self.claims.remove(&(candidate, term)).unwrap_or_default() {
                    let _ = reply.send(vote.clone());
                }
            }
            Command::StopFollowing => {
                if let Some(task) = self.following.take() {
                    let ended = task.stop().await;
                    self.follower_ended(ended).await?;
                }
            }
            Command::Follow { term, .. } => self.follow(term).await?,
            Command::ReplayThrough { index } => self.replay_through(index),
            Command::StartLeading { term, first_index } => self.start_leading(term, first_index).await?,
            Command::StopLeading => self.stop_leading().await?,
            Command::ServeRelay { leader } => {
                let leading = leader.as_ref().is_some_and(|(node, _)| *node == self.config.node);
                let term = self.node.hard_state().term;
                let leader = leader.filter(|_| !leading);
                self.serving.send_replace(Serving { term, leading, leader });
            }
            Command::MakeWritable => {
                if let (Some(term), None) = (self.node.leading(), &self.leading) {
                    // Leading again after a switchover that timed out: the source stopped.
                    self.start_leading(term, None).await?;
                }
                let ready = self.leader_ready.take();
                self.fencer.make_writable(ready);
            }
            Command::MakeReadOnly => self.fencer.make_read_only().await,
            Command::AwaitDrained => {
                // The source stops once it logged everything: the log is final for this term.
                self.stop_leading().await?;
                let last = self.log.lock().ok().and_then(|log| log.last_written());
                let _ = self.inbox.send(Input::Event(Event::WritesStopped { last }));
            }
            Command::AskPromote { node, term } => {
                let (peers, from) = (self.peers.clone(), self.config.node.clone());
                tokio::spawn(async move {
                    if let Err(e) = peers.hand_over(&node, &from, term).await {
                        warn!(target = %node, error = %e, "asking the switchover's target to promote itself failed");
                    }
                });
            }
            Command::WriteDivergenceReport { after } => {
                self.write_report(Some(after)).await;
            }
            Command::Answer { id, response } => {
                if let Some((reply, _)) = self.requests.remove(&id) {
                    let _ = reply.send(response);
                }
            }
        }
        Ok(())
    }

    /// (Re)starts the follower task toward a leader of `term` or newer. A node that led
    /// before first makes sure everything its PostgreSQL committed is in its log (else it
    /// diverged), then gives up its slot.
    async fn follow(&mut self, term: Term) -> Result<(), SidecarError> {
        if self.following.is_some() && self.following_term == Some(term) {
            return Ok(()); // already looking for a leader of that term
        }
        if let Some(task) = self.following.take() {
            let ended = task.stop().await;
            self.follower_ended(ended).await?;
        }
        if self.state.get().leader.is_some() && !self.give_up_slot().await? {
            return Ok(());
        }
        let Some(token) = self.token.clone() else {
            warn!("no token_file: this node cannot follow a leader");
            return Ok(());
        };
        let cancel = self.shutdown.child_token();
        let link = NodeLink { term, adopted: self.adopted.subscribe(), events: self.link.0.clone() };
        let run =
            follower::run(self.config.clone(), link, self.log.clone(), token, self.channels.clone(), cancel.clone());
        self.following = Some(RoleTask { cancel, handle: tokio::spawn(run) });
        self.following_term = Some(term);
        Ok(())
    }

    /// Before a node that led follows another: its WAL may hold transactions it never logged
    /// (it stopped without draining). They are the cluster's loss: reported, and the node is
    /// divergent (`false`). Otherwise its database is recorded as holding every entry of its
    /// log (it wrote or replayed them all), so that replay goes on after them, and its slot is
    /// dropped (`true`). Retried while PostgreSQL does not answer.
    async fn give_up_slot(&mut self) -> Result<bool, SidecarError> {
        let mut backoff = crate::backoff::Backoff::default();
        loop {
            let last = self.log.lock().ok().and_then(|log| log.last_written());
            if let Some(s) = self.write_report(last.map(|id| id.index)).await {
                if s.wal_transactions > 0 {
                    let branch_point = last.map_or(Index(0), |id| id.index);
                    warn!(transactions = s.wal_transactions, report = %s.path.display(), "this node's PostgreSQL committed transactions it never logged");
                    self.step_boxed(Event::DivergenceFound { branch_point }).await?;
                    return Ok(false);
                }
                // Nothing was lost: no report to keep.
                self.report = None;
                let _ = std::fs::remove_file(&s.path);
                match self.hand_database_to_replay().await {
                    Ok(()) => return Ok(true),
                    Err(e) => warn!(error = %e, "cannot record this database's position before following"),
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Records that the database holds the log's last entry, then drops the slot.
    async fn hand_database_to_replay(&mut self) -> Result<(), SidecarError> {
        if let Some(position) = last_position(&self.log) {
            let mut applier =
                crate::apply::Applier::connect(&self.config.postgres).await.map_err(FollowerError::from)?;
            applier.record_source_through(position).await.map_err(FollowerError::from)?;
            info!(through = %position.id, "this database holds every entry of its log: replay goes on after it");
        }
        let client = crate::sql::connect(&self.config.postgres).await.map_err(SourceError::from)?;
        source::setup::drop_own_slot(&client, &self.state).await?;
        Ok(())
    }

    fn step_boxed<'a>(
        &'a mut self,
        event: Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SidecarError>> + Send + 'a>> {
        Box::pin(self.step(event))
    }

    async fn follower_ended(&mut self, ended: Result<(), FollowerError>) -> Result<(), SidecarError> {
        match ended {
            Ok(()) => Ok(()),
            Err(FollowerError::Follow(FollowError::Diverged { leader, terms, last })) => {
                let branch_point = {
                    let log = self.log.lock().map_err(|_| crate::log::LogError::Failed)?;
                    let own_last = log.last_written().map_or(Index(0), |id| id.index);
                    let theirs = crate::log::terms::TermHistory::from_starts(terms).unwrap_or_default();
                    log.terms().branch_point(own_last, &theirs, last.unwrap_or(Index(0))).unwrap_or(Index(0))
                };
                error!(%leader, branch_point = %branch_point, "this node's log diverged from the leader's: it is fenced until re-seeded");
                self.step_boxed(Event::DivergenceFound { branch_point }).await
            }
            Err(e) if e.class() == crate::error::ErrorClass::Fatal => Err(SidecarError::Follower(e)),
            Err(e) => {
                error!(error = %e, "the follower task stopped");
                Ok(())
            }
        }
    }

    fn replay_through(&mut self, index: Index) {
        let (pg, log, channels, inbox) =
            (self.config.postgres.clone(), self.log.clone(), self.channels.clone(), self.inbox.clone());
        let cancel = self.shutdown.child_token();
        tokio::spawn(async move {
            match follower::replay_through(pg, log, &channels, index, cancel).await {
                Ok(true) => {
                    let _ = inbox.send(Input::Event(Event::ReplayCaughtUp { applied: index }));
                }
                Ok(false) => {}
                Err(e) => error!(error = %e, through = %index, "replaying the log before leading failed"),
            }
        });
    }

    async fn start_leading(&mut self, term: Term, first_index: Option<Index>) -> Result<(), SidecarError> {
        if let Some(task) = self.following.take() {
            let ended = task.stop().await;
            self.follower_ended(ended).await?;
        }
        if first_index.is_some() && self.state.get().leader.is_some() {
            // A new term starts from a slot made after everything this node replayed.
            let client = crate::sql::connect(&self.config.postgres).await.map_err(SourceError::from)?;
            source::setup::drop_own_slot(&client, &self.state).await?;
        }
        let cancel = self.shutdown.child_token();
        let (ready_tx, ready_rx) = oneshot::channel();
        let sync = self.sync_inputs(term, first_index);
        let run = source::run_leader(
            self.config.clone(),
            term,
            self.state.clone(),
            self.log.clone(),
            self.channels.durable.clone(),
            self.channels.marks.clone(),
            self.channels.identity_full.clone(),
            ready_tx,
            sync,
            cancel.clone(),
        );
        self.leader_ready = Some(ready_rx);
        self.leading = Some(RoleTask { cancel, handle: tokio::spawn(run) });
        Ok(())
    }

    /// What the leader's sync task reads (it runs in every mode: a reload may change it).
    fn sync_inputs(&self, term: Term, first_index: Option<Index>) -> source::sync::SyncInputs {
        let own_from = first_index.unwrap_or_else(|| {
            let log = self.log.lock().ok();
            let started = log.as_ref().and_then(|l| l.terms().starts().iter().rev().find(|s| s.term == term).copied());
            let next = log.as_ref().and_then(|l| l.last_written()).map_or(Index(1), |id| id.index.next());
            started.map_or(next, |s| s.first_index)
        });
        source::sync::SyncInputs {
            policy: self.policy.subscribe(),
            peers: self.config.peers.iter().map(|p| p.node.clone()).collect(),
            followers: self.channels.followers.clone(),
            durable: self.channels.durable.subscribe(),
            marks: self.channels.marks.clone(),
            own_from,
            state: self.channels.sync_state.clone(),
        }
    }

    /// Stops the source once it logged everything PostgreSQL committed (PostgreSQL is
    /// read-only by now), or after [`DRAIN_TIMEOUT`]. Nothing when it is stopped already.
    async fn stop_leading(&mut self) -> Result<(), SidecarError> {
        let Some(task) = self.leading.take() else { return Ok(()) };
        let durable = self.channels.durable.subscribe();
        match tokio::time::timeout(DRAIN_TIMEOUT, drain(&self.config, self.node.hard_state().term, durable)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "stopping the source without knowing it logged every committed write"),
            Err(_) => warn!("the source did not log every committed write within {DRAIN_TIMEOUT:?}; stopping it"),
        }
        match task.stop().await {
            Ok(()) => Ok(()),
            Err(e) if e.class() == crate::error::ErrorClass::Fatal => Err(SidecarError::Source(e)),
            Err(e) => {
                warn!(error = %e, "the source ended with an error");
                Ok(())
            }
        }
    }

    /// Writes the divergence report of everything after `after`; `None` when it could not.
    async fn write_report(&mut self, after: Option<Index>) -> Option<divergence::ReportSummary> {
        let state = self.state.get();
        let slot = state.leader.as_ref().map_or(self.config.source.slot.clone(), |l| l.slot.clone());
        let led = self.log.lock().ok().and_then(|log| log.terms().last_term()).unwrap_or(state.hard.term);
        let path = match &self.report {
            Some(path) => path.clone(),
            None => divergence::report_path(&self.config.data_dir, state.hard.term, std::time::SystemTime::now()),
        };
        let log_dir = self.config.log_dir();
        let divergence = Divergence {
            term: led,
            log_dir: &log_dir,
            branch_point: after,
            pg: &self.config.postgres,
            slot: &slot,
            publication: &self.config.source.publication,
        };
        match divergence::write_report(&divergence, &path).await {
            Ok(summary) => {
                info!(report = %path.display(), log_entries = summary.log_entries, wal_transactions = summary.wal_transactions, "divergence report written");
                self.report = Some(path);
                Some(summary)
            }
            Err(e) => {
                error!(error = %e, "cannot write the divergence report");
                None
            }
        }
    }
}

/// The replication policy a configuration asks for.
pub fn policy_of(config: &Config) -> crate::node::sync::SyncPolicy {
    crate::node::sync::SyncPolicy {
        mode: config.mode,
        quorum: config.sync_quorum,
        strict: config.strict,
        timeout: config.sync_timeout,
    }
}

/// The log's last entry as replay records it.
fn last_position(log: &Mutex<Log>) -> Option<AppliedPosition> {
    let (last, mut reader) = {
        let log = log.lock().ok()?;
        let last = log.last_written()?;
        (last, log.reader(last.index).ok()?)
    };
    while let Some(record) = reader.next().ok()? {
        if record.kind == RecordKind::Entry && record.id == last {
            let header = EntryHeader::decode(&record.payload).ok()?;
            return Some(AppliedPosition { id: last, end_lsn: header.end_lsn, commit_time: header.commit_time });
        }
    }
    None
}

/// Resolves when the task ends, never when there is none.
async fn finished<E>(task: &mut Option<RoleTask<E>>) -> Result<(), E> {
    match task {
        Some(t) => {
            let ended = (&mut t.handle).await;
            *task = None;
            ended.unwrap_or(Ok(()))
        }
        None => std::future::pending().await,
    }
}

/// Waits until the log holds everything PostgreSQL committed so far: a heartbeat is written
/// (a non-transactional message, decoded at once) and the log's durable end must pass it.
/// Returns the log's last entry then.
pub async fn drain(
    config: &Config,
    term: Term,
    mut durable: watch::Receiver<Durable>,
) -> Result<Option<EntryId>, tokio_postgres::Error> {
    let lsn = source::heartbeat::emit(&config.postgres, &config.node, term).await?;
    let reached = durable.wait_for(|d| d.end_lsn >= lsn).await;
    Ok(reached.map(|d| d.last).unwrap_or(None))
}
