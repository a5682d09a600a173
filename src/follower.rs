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

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::apply::{scheduler, AppliedPosition, Applier, ApplyError, ReplayError};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::ErrorClass;
use crate::log::committer::{Committer, Durable, SharedWriter, WRITE_QUEUE_BATCHES};
use crate::log::{Log, LogError};
use crate::lsn::{EntryId, Index, Term};
use crate::node::RoleChannels;
use crate::relay::client::{self, Applied, FollowError, FollowerLink, LinkEvent};

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error("{0}")]
    Follow(#[from] FollowError),
    #[error("replay: {0}")]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
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
}

impl FollowerError {
    pub fn class(&self) -> ErrorClass {
        match self {
            FollowerError::Follow(e) => e.class(),
            FollowerError::Apply(e) => e.class(),
            FollowerError::Replay(e) => e.class(),
            FollowerError::Log(_)
            | FollowerError::LogEnd(_)
            | FollowerError::Thread(_)
            | FollowerError::WriterGone
            | FollowerError::ReplayThread => ErrorClass::Fatal,
            FollowerError::Sql(e) => e.code().map_or(ErrorClass::Retry, |c| ErrorClass::of_sqlstate(c.code())),
        }
    }
}

/// How the follower role hears of the node's term and tells it of its leader.
pub struct NodeLink {
    /// The lowest term of a leader to follow.
    pub term: Term,
    /// The term the node adopted durably.
    pub adopted: watch::Receiver<Term>,
    pub events: mpsc::UnboundedSender<LinkEvent>,
}

/// Runs the follower role until `cancel` or a fatal error.
pub async fn run(
    config: Arc<Config>,
    node: NodeLink,
    log: Arc<Mutex<Log>>,
    token: Arc<[u8]>,
    channels: RoleChannels,
    cancel: CancellationToken,
) -> Result<(), FollowerError> {
    let span = info_span!("follower", node = %config.node, term = %node.term);
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
        let RoleChannels { durable: durable_tx, marks, applied: applied_tx, leader, seeding, replay_stopped, .. } =
            channels;
        let durable_rx = durable_tx.subscribe();
        let committer = Committer::new(log.clone(), start, (), durable_tx, marks);
        let (tx, writer) = SharedWriter::spawn(committer, WRITE_QUEUE_BATCHES).map_err(FollowerError::Thread)?;
        let applied_rx = applied_tx.subscribe();
        let stop = cancel.child_token();
        let replay = spawn_replay(config.postgres.clone(), log, applied_tx, replay_stopped, stop.clone())
            .map_err(FollowerError::Thread)?;
        let channels = client::LinkChannels {
            writer: tx,
            durable: durable_rx,
            applied: applied_rx,
            leader,
            seeding,
            term: node.adopted,
            events: node.events,
        };
        let mut link = FollowerLink::new(client::LinkConfig::new(&config, token), channels);
        let resume = if seed { client::Resume::Seed } else { client::Resume::After { floor: database.applied } };
        let followed = link.follow(client::Target { term: node.term }, resume, stop.clone()).await;
        drop(link); // closes the writer's queue, so that the writer ends
        stop.cancel();
        let replayed = join_replay(replay).await?;
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

/// Replays the local log through `index` (a promotion's last step before leading), then
/// stops replay; `Ok(false)` when cancelled first. A replay that stopped on an error waits, as
/// a follower's does, and says why in `/status`.
pub async fn replay_through(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    channels: &RoleChannels,
    index: Index,
    cancel: CancellationToken,
) -> Result<bool, FollowerError> {
    let stop = cancel.child_token();
    let mut applied = channels.applied.subscribe();
    let replay = spawn_replay(pg, log, channels.applied.clone(), channels.replay_stopped.clone(), stop.clone())
        .map_err(FollowerError::Thread)?;
    let reached = tokio::select! {
        _ = cancel.cancelled() => false,
        r = applied.wait_for(|a| a.id.is_some_and(|id| id.index >= index)) => r.is_ok(),
    };
    stop.cancel();
    join_replay(replay).await??;
    Ok(reached)
}

/// Waits for the replay thread (cancelled already) off the async threads.
async fn join_replay(
    replay: std::thread::JoinHandle<Result<(), ReplayError>>,
) -> Result<Result<(), ReplayError>, FollowerError> {
    tokio::task::spawn_blocking(move || replay.join())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(FollowerError::ReplayThread)
}

/// Starts replay (see `apply::scheduler`), which publishes every position it commits to the
/// relay client's acks.
fn spawn_replay(
    pg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    applied: watch::Sender<Applied>,
    stopped: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<Result<(), ReplayError>>> {
    let report = move |p: AppliedPosition| {
        applied.send_replace(Applied { id: Some(p.id), end_lsn: p.end_lsn });
    };
    let stalled = move |error: Option<String>| {
        stopped.send_replace(error);
    };
    scheduler::spawn(pg, log, report, stalled, cancel)
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
