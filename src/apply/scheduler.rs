//! When replay applies and commits: the loop that feeds the log's records to an [`Applier`],
//! groups entries into follower transactions, and applies a failed batch again in strict
//! order.
//!
//! # Invariants
//!
//! - Replay resumes after the entry the database names as applied, never after one it only
//!   remembers: every (re)connection reads `walship.progress` first, and each committed
//!   position is reported to the caller only after COMMIT returned.
//! - A commit happens only between entries (never between the chunks of one).
//! - Entries commit in groups: at once when replay has caught up after a quiet spell; under a
//!   steady stream or while catching up every [`REPLAY_COMMIT_WINDOW`] (or
//!   [`REPLAY_GROUP_ENTRIES`]), so that each follower transaction carries many leader ones and
//!   yet none waits long for its commit (see `Group`).
//! - After an [`ApplyError::Batched`] the same entries are applied again strictly in log
//!   order, each committed alone, so that a failure names its change and its entry; any other
//!   error is retried with backoff by its class, or stops replay.
//!
//! Replay runs on a thread of its own with a single-threaded runtime: the applier and its
//! PostgreSQL connection then share one thread, so pipelined statements are written out
//! together instead of each waking another worker thread.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, Instrument};

use super::{AppliedPosition, Applier, ApplyError};
use crate::backoff::Backoff;
use crate::error::ErrorClass;
use crate::log::tail::Tail;
use crate::log::{Log, LogError, LogReader, Record, RecordKind};
use crate::lsn::Index;

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
/// 1 while replay is stopped on an error that needs an operator (a divergence), else 0
/// (Prometheus gauge; name fixed by DESIGN.md).
pub const REPLAY_STOPPED: &str = "walship_replay_stopped";
/// Replay attempts that failed, whatever the cause (Prometheus counter; name fixed by DESIGN.md).
pub const REPLAY_ERRORS_TOTAL: &str = "walship_replay_errors_total";
/// While the log does not reach the database's position yet, how often both are read again.
const LOG_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay: {0}")]
    Apply(#[from] ApplyError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("the database has applied entry {applied} but this node's log starts at {first}: re-seed this node")]
    Gap { applied: Index, first: Index },
}

impl ReplayError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ReplayError::Apply(e) => e.class(),
            ReplayError::Log(_) => ErrorClass::Fatal,
            ReplayError::Gap { .. } => ErrorClass::Operator,
        }
    }
}

/// Starts replay of `log` into the database of `pg` on a thread of its own (see the module
/// docs), until `cancel` or an error that stops it, which also cancels `cancel`. `report` is
/// told the database's position after each (re)connection, while replay waits for the log
/// to reach it, and every position committed since. `stalled` is told the error when replay
/// stops on one that needs an operator (it retries slowly meanwhile), and `None` once replay
/// commits past the entry it stopped at.
pub fn spawn<R, S>(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    report: R,
    stalled: S,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<Result<(), ReplayError>>>
where
    R: Fn(AppliedPosition) + Send + 'static,
    S: Fn(Option<String>) + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("walship-replay".into())
        .spawn(move || runtime.block_on(replay_with_retries(pg, log, report, stalled, cancel).instrument(span)))
}

async fn replay_with_retries<R: Fn(AppliedPosition), S: Fn(Option<String>)>(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    report: R,
    stalled: S,
    cancel: CancellationToken,
) -> Result<(), ReplayError> {
    let mut backoff = Backoff::default();
    let mut strict_through = None;
    // The last position reported, and where replay stopped while it is stopped.
    let last = Cell::new(None::<Index>);
    let stopped_at = Cell::new(None::<Option<Index>>);
    let progress = |p: AppliedPosition| {
        report(p);
        last.set(Some(p.id.index));
        if stopped_at.get().is_some_and(|at| Some(p.id.index) > at) {
            stopped_at.set(None);
            metrics::gauge!(REPLAY_STOPPED).set(0.0);
            stalled(None);
        }
    };
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = replay(&pg, &log, &progress, &mut backoff, strict_through) => r,
        };
        let Err(e) = result else { return Ok(()) };
        if let ReplayError::Apply(ApplyError::Batched { first, last, reason, .. }) = &e {
            // Rolled back: apply the same entries again strictly in log order, which stops
            // at the first change that fails, if one does, and names it.
            info!(%first, %last, %reason, "a batched change failed: replaying its entries in strict order");
            metrics::counter!(REPLAY_STRICT_RETRIES_TOTAL).increment(1);
            strict_through = Some(last.index);
            continue;
        }
        metrics::counter!(REPLAY_ERRORS_TOTAL).increment(1);
        if e.class() == ErrorClass::Operator {
            stopped_at.set(Some(last.get()));
            metrics::gauge!(REPLAY_STOPPED).set(1.0);
            stalled(Some(e.to_string()));
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
    report: &dyn Fn(AppliedPosition),
    backoff: &mut Backoff,
    strict_through: Option<Index>,
) -> Result<(), ReplayError> {
    let mut applier = Applier::connect(pg).await?;
    applier.strict_through(strict_through);
    applier.set_read_only(true).await?;
    // Until the log reaches the database's position the relay is still bringing it (or a
    // snapshot is being loaded, which moves the position): read both again while waiting.
    let (position, reader) = loop {
        let position = applier.applied().await?;
        if let Some(p) = position {
            report(p);
        }
        match open_reader(log, position.map(|p| p.id.index))? {
            // A snapshot committed meanwhile moves the position: open again.
            Some(reader) if applier.applied().await? == position => break (position, reader),
            Some(_) => {}
            None => tokio::time::sleep(LOG_POLL_INTERVAL).await,
        }
    };
    info!(after = ?position.map(|p| p.id), "replaying");
    backoff.reset();
    let mut records = crate::log::tail::spawn(reader, REPLAY_QUEUE_BATCHES);
    let mut group = Group::default();
    let result = loop {
        let next = match group.next_step(&mut records).await {
            Step::Record(next) => next,
            Step::Commit => match group.commit(&mut applier, report).await {
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
            if let Err(e) = group.commit(&mut applier, report).await {
                break Err(e);
            }
        }
    };
    records.close().await;
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

    async fn commit(&mut self, applier: &mut Applier, report: &dyn Fn(AppliedPosition)) -> Result<(), ReplayError> {
        if let Some(p) = applier.commit().await? {
            report(p);
        }
        metrics::counter!(REPLAY_ENTRIES_APPLIED_TOTAL).increment(self.pending as u64);
        self.pending = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}

/// A live reader from the entry after `applied`; `None` while the log does not reach it yet.
fn open_reader(log: &Arc<Mutex<Log>>, applied: Option<Index>) -> Result<Option<LogReader>, ReplayError> {
    let log = log.lock().map_err(|_| LogError::Failed)?;
    let from = match (applied, log.first_index()) {
        (Some(a), Some(first)) if a.next() < first => return Err(ReplayError::Gap { applied: a, first }),
        (Some(a), _) => a.next(),
        (None, Some(first)) => first,
        (None, None) => return Ok(None),
    };
    match log.last_written() {
        Some(last) if from <= last.index.next() => Ok(Some(log.reader(from)?)),
        _ => Ok(None),
    }
}
