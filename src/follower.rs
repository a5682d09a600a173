//! The follower role: stream the leader's log into this node's own durable log, and replay
//! it into the local PostgreSQL.
//!
//! ```text
//! leader relay --records--> relay client --batches--> log writer --fsync--> log
//!      ^                        |  acks: received, flushed (after fsync), applied     |
//!      +------------------------+                                                     v
//!                                  local PostgreSQL <--transactions-- replay <--records
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::apply::{Applier, ApplyError};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::ErrorClass;
use crate::log::committer::{Durable, Writer, WRITE_QUEUE_BATCHES};
use crate::log::tail::Tail;
use crate::log::{Log, LogError, Record, RecordKind};
use crate::lsn::{EntryId, Index};
use crate::node::{NodeState, RoleChannels};
use crate::relay::client::{self, Applied, FollowError, FollowerLink};
use crate::source::stream::SharedSink;

/// Most leader transactions grouped into one follower transaction.
pub const REPLAY_GROUP_ENTRIES: usize = 1000;
/// Entries replayed into this node's PostgreSQL (Prometheus counter).
pub const REPLAY_ENTRIES_APPLIED_TOTAL: &str = "walship_replay_entries_applied_total";
/// Times replay rolled back a batched transaction and applied its entries again in strict
/// order (Prometheus counter): each is a divergence, or a batch that could not go at once.
pub const REPLAY_STRICT_RETRIES_TOTAL: &str = "walship_replay_strict_retries_total";
/// Under a steady stream, the time between two replay commits.
pub const REPLAY_COMMIT_WINDOW: Duration = Duration::from_millis(5);
/// Batches of records read ahead of replay.
pub const REPLAY_QUEUE_BATCHES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error("{0}")]
    Follow(#[from] FollowError),
    #[error("replay: {0}")]
    Apply(#[from] ApplyError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("cannot start the log writer: {0}")]
    Thread(std::io::Error),
    #[error("log: {0}")]
    LogEnd(#[from] crate::log::committer::UnreadableEnd),
    #[error("the log writer stopped")]
    WriterGone,
    #[error("the replay thread panicked")]
    ReplayThread,
    #[error("sql: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("the database has applied entry {applied} but this node's log starts at {first}: re-seed this node")]
    Gap { applied: Index, first: Index },
}

impl FollowerError {
    fn class(&self) -> ErrorClass {
        match self {
            FollowerError::Follow(e) => e.class(),
            FollowerError::Apply(e) => e.class(),
            FollowerError::Log(_)
            | FollowerError::LogEnd(_)
            | FollowerError::Thread(_)
            | FollowerError::WriterGone
            | FollowerError::ReplayThread => ErrorClass::Fatal,
            FollowerError::Gap { .. } => ErrorClass::Operator,
            FollowerError::Sql(e) => e.code().map_or(ErrorClass::Retry, |c| ErrorClass::of_sqlstate(c.code())),
        }
    }
}

/// Runs the follower role until `cancel` or a fatal error.
pub async fn run(
    config: Arc<Config>,
    state: NodeState,
    log: Arc<Mutex<Log>>,
    token: Arc<[u8]>,
    channels: RoleChannels,
    cancel: CancellationToken,
) -> Result<(), FollowerError> {
    let span = info_span!("follower", node = %config.node, term = %state.term());
    async move {
        let start = {
            let log = log.lock().map_err(|_| LogError::Failed)?;
            Durable::of_log(&log)?
        };
        let Some(database) = database_state_with_retries(&config.postgres, &cancel).await? else { return Ok(()) };
        let seed = start.last.is_none() && database.applied.is_none() && !database.has_user_tables;
        for gauge in [client::SEED_TABLES_DONE, client::SEED_ROWS, client::SEED_BYTES] {
            metrics::gauge!(gauge).set(0.0);
        }
        if seed {
            info!("the database is empty: asking the leader for a snapshot");
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_BATCHES);
        let RoleChannels { durable: durable_tx, marks, applied: applied_tx, leader, seeding, .. } = channels;
        let durable_rx = durable_tx.subscribe();
        let writer = Writer::spawn(log.clone(), start, rx, SharedSink::default(), durable_tx, marks)
            .map_err(FollowerError::Thread)?;
        let applied_rx = applied_tx.subscribe();
        let stop = cancel.child_token();
        let replay =
            spawn_replay(config.postgres.clone(), log, applied_tx, stop.clone()).map_err(FollowerError::Thread)?;
        let channels = client::LinkChannels { writer: tx, durable: durable_rx, applied: applied_rx, leader, seeding };
        let mut link = FollowerLink::new(client::LinkConfig::new(&config, token), channels);
        let resume = if seed { client::Resume::Seed } else { client::Resume::After { floor: database.applied } };
        let followed = link.follow(client::Target { term: state.term() }, resume, stop.clone()).await;
        drop(link); // closes the writer's queue, so that the writer ends
        stop.cancel();
        let replayed = tokio::task::spawn_blocking(move || replay.join())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(FollowerError::ReplayThread)?;
        let written =
            tokio::task::spawn_blocking(move || writer.join()).await.map_err(|_| FollowerError::WriterGone)?;
        followed?;
        replayed?;
        match written {
            Ok(result) => result.map_err(FollowerError::from),
            Err(_) => Err(FollowerError::WriterGone),
        }
    }
    .instrument(span)
    .await
}

/// Runs replay on a thread of its own with a single-threaded runtime: the applier and its
/// PostgreSQL connection then share one thread, so pipelined statements are written out
/// together instead of each waking another worker thread.
fn spawn_replay(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    applied: watch::Sender<Applied>,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<Result<(), FollowerError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("walship-replay".into())
        .spawn(move || runtime.block_on(replay_with_retries(pg, log, applied, cancel).instrument(span)))
}

async fn replay_with_retries(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    applied: watch::Sender<Applied>,
    cancel: CancellationToken,
) -> Result<(), FollowerError> {
    let mut backoff = Backoff::default();
    let mut strict_through = None;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = replay(&pg, &log, &applied, &mut backoff, strict_through) => r,
        };
        let Err(e) = result else { return Ok(()) };
        if let FollowerError::Apply(ApplyError::Batched { first, last, reason, .. }) = &e {
            // Rolled back: apply the same entries again strictly in log order, which stops
            // at the first change that fails, if one does, and names it.
            info!(%first, %last, %reason, "a batched change failed: replaying its entries in strict order");
            metrics::counter!(REPLAY_STRICT_RETRIES_TOTAL).increment(1);
            strict_through = Some(last.index);
            continue;
        }
        let Some(delay) = backoff.after_failure(e.class(), &e, "replay") else {
            error!(error = %e, "replay stopped");
            cancel.cancel();
            return Err(e);
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Replays the log from after the database's applied entry, committing groups of entries
/// (see [`Group`]).
async fn replay(
    pg: &tokio_postgres::Config,
    log: &Arc<Mutex<Log>>,
    applied: &watch::Sender<Applied>,
    backoff: &mut Backoff,
    strict_through: Option<Index>,
) -> Result<(), FollowerError> {
    let mut applier = Applier::connect(pg).await?;
    applier.strict_through(strict_through);
    applier.set_read_only(true).await?;
    // Until the log reaches the database's position the relay is still bringing it (or a
    // snapshot is being loaded, which moves the position): read both again while waiting.
    let (position, reader) = loop {
        let position = applier.applied().await?;
        if let Some(p) = position {
            applied.send_replace(Applied { id: Some(p.id), end_lsn: p.end_lsn });
        }
        match open_reader(log, position.map(|p| p.id.index))? {
            // A snapshot committed meanwhile moves the position: open again.
            Some(reader) if applier.applied().await? == position => break (position, reader),
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    info!(after = ?position.map(|p| p.id), "replaying");
    backoff.reset();
    let (mut records, tail) = crate::log::tail::spawn(reader, REPLAY_QUEUE_BATCHES);
    let mut group = Group::default();
    let result = loop {
        let next = match group.next_step(&mut records).await {
            Step::Record(next) => next,
            Step::Commit => match group.commit(&mut applier, applied).await {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
        };
        let record = match next {
            Some(Ok(record)) => record,
            Some(Err(e)) => break Err(e.into()),
            None => break Ok(()),
        };
        if let Err(e) = applier.apply_record(&record).await {
            break Err(e.into());
        }
        group.applied(&record);
        // In strict order each entry commits alone: a failure at commit names its entry.
        if !group.inside_entry && applier.is_strict(record.id) {
            if let Err(e) = group.commit(&mut applier, applied).await {
                break Err(e);
            }
        }
    };
    drop(records);
    let _ = tail.await;
    result
}

/// Entries applied since the last commit, and when to commit them: at once when replay has
/// caught up after a quiet spell; under a steady stream or while catching up every
/// [`REPLAY_COMMIT_WINDOW`] (or [`REPLAY_GROUP_ENTRIES`]), so that each follower transaction
/// carries many leader ones and yet none waits long for its commit.
struct Group {
    pending: usize,
    /// The last record was a chunk: the entry is open and no commit may happen.
    inside_entry: bool,
    last_commit: Instant,
}

enum Step {
    Record(Option<Result<Record, LogError>>),
    Commit,
}

impl Default for Group {
    fn default() -> Self {
        let last_commit = Instant::now().checked_sub(REPLAY_COMMIT_WINDOW).unwrap_or_else(Instant::now);
        Group { pending: 0, inside_entry: false, last_commit }
    }
}

impl Group {
    async fn next_step(&self, records: &mut Tail) -> Step {
        if self.pending == 0 || self.inside_entry {
            return Step::Record(records.recv().await);
        }
        let wait = REPLAY_COMMIT_WINDOW.saturating_sub(self.last_commit.elapsed());
        if self.pending >= REPLAY_GROUP_ENTRIES || wait.is_zero() {
            return Step::Commit;
        }
        match records.try_recv() {
            Ok(record) => Step::Record(Some(record)),
            Err(mpsc::error::TryRecvError::Disconnected) => Step::Record(None),
            Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout(wait, records.recv()).await {
                Ok(record) => Step::Record(record),
                Err(_) => Step::Commit,
            },
        }
    }

    fn applied(&mut self, record: &Record) {
        self.inside_entry = matches!(record.kind, RecordKind::Chunk);
        if !self.inside_entry {
            self.pending += 1;
        }
    }

    async fn commit(&mut self, applier: &mut Applier, applied: &watch::Sender<Applied>) -> Result<(), FollowerError> {
        if let Some(p) = applier.commit().await? {
            applied.send_replace(Applied { id: Some(p.id), end_lsn: p.end_lsn });
        }
        metrics::counter!(REPLAY_ENTRIES_APPLIED_TOTAL).increment(self.pending as u64);
        self.pending = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}

/// A live reader from the entry after `applied`; `None` while the log does not reach it yet.
fn open_reader(log: &Arc<Mutex<Log>>, applied: Option<Index>) -> Result<Option<crate::log::LogReader>, FollowerError> {
    let log = log.lock().map_err(|_| LogError::Failed)?;
    let from = match (applied, log.first_index()) {
        (Some(a), Some(first)) if a.next() < first => return Err(FollowerError::Gap { applied: a, first }),
        (Some(a), _) => a.next(),
        (None, Some(first)) => first,
        (None, None) => return Ok(None),
    };
    match log.last_written() {
        Some(last) if from <= last.index.next() => Ok(Some(log.reader(from)?)),
        _ => Ok(None),
    }
}

/// What the local database already holds.
struct DatabaseState {
    /// The last entry applied (or the position of a loaded snapshot).
    applied: Option<EntryId>,
    /// Tables outside walship's own schema: someone created the schema by hand.
    has_user_tables: bool,
}

const USER_TABLES: &str = "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walship') \
     AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%')";

async fn database_state(pg: &tokio_postgres::Config) -> Result<DatabaseState, FollowerError> {
    let mut applier = Applier::connect(pg).await?;
    let applied = applier.applied().await?.map(|p| p.id);
    let client = crate::sql::connect(pg).await?;
    let has_user_tables = client.query_one(USER_TABLES, &[]).await?.get(0);
    Ok(DatabaseState { applied, has_user_tables })
}

/// The database's state, retried while PostgreSQL is unreachable; `None` when cancelled.
async fn database_state_with_retries(
    pg: &tokio_postgres::Config,
    cancel: &CancellationToken,
) -> Result<Option<DatabaseState>, FollowerError> {
    let mut backoff = Backoff::default();
    loop {
        match database_state(pg).await {
            Ok(state) => return Ok(Some(state)),
            Err(e) if e.class() == ErrorClass::Fatal => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read this node's database");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
