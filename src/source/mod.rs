//! The leader side: tail PostgreSQL's WAL through logical decoding into the durable log.
//!
//! ```text
//! PostgreSQL --pgoutput--> streaming thread: read, build records, append, fsync --> log
//!     ^                                                                  |
//!     +------ standby status: flushed = durable end_lsn (gated by sync) <+
//! ```
//!
//! The streaming thread (`tail.rs`) reads the socket in large batches, turns messages into
//! records ([`builder`]) and commits each read's records to the log itself
//! ([`crate::log::committer::Committer`]): whatever arrives during one fsync is the next group.
//! The flush position sent to PostgreSQL is always the `end_lsn` of the last entry fsynced
//! (in `semi-sync` and `sync`, only as far as [`sync`] confirmed). When the connection breaks
//! the task reconnects with backoff and resumes just after the last entry it built;
//! PostgreSQL resends from the slot's confirmed position and the builder skips what the log
//! already has.

pub mod builder;
pub mod conn;
pub mod heartbeat;
pub mod setup;
pub mod stream;
pub mod sync;
mod tail;
pub mod wire;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::ErrorClass;
use crate::log::committer::{Committer, Durable, WriteCmd};
use crate::log::entry::EntryError;
use crate::log::marks::EntryMarks;
use crate::log::{Log, LogError};
use crate::lsn::Term;
use crate::lsn::{EntryId, Index, Lsn};
use crate::node::{SharedState, StateError};
use builder::{BuildError, EntryBuilder};
use conn::{ReplConnection, ReplError};
use stream::{ReplStream, SharedSink};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("replication connection: {0}")]
    Repl(#[from] ReplError),
    #[error("sql: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("decoding: {0}")]
    Build(#[from] BuildError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Setup(String),
    #[error("the log writer stopped")]
    WriterGone,
    #[error("entry {0} in the log: {1}")]
    Entry(EntryId, EntryError),
    #[error("the streaming thread panicked")]
    StreamThread,
}

impl SourceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Repl(e) => e.class(),
            SourceError::Sql(e) => match e.code() {
                Some(code) => ErrorClass::of_sqlstate(code.code()),
                None => ErrorClass::Retry,
            },
            SourceError::Build(_) => ErrorClass::Operator,
            SourceError::Setup(_) => ErrorClass::Operator,
            SourceError::Log(_)
            | SourceError::State(_)
            | SourceError::WriterGone
            | SourceError::Entry(..)
            | SourceError::StreamThread => ErrorClass::Fatal,
        }
    }
}

/// Runs the leader's source for `term` until `cancel`: sets PostgreSQL up, then streams into
/// `log`, publishing what is durable on `durable_tx` and marking durable entries in `marks`.
/// `ready` fires once the slot exists: from then on every write PostgreSQL commits reaches
/// the log, so clients may be let in.
///
/// Positions: LSNs belong to one server's WAL. The log's entries of older terms came from
/// another leader's WAL, so they say nothing about this slot: the source resumes after the
/// last entry of its own term, or from the slot's consistent point when it has none yet.
#[allow(clippy::too_many_arguments)]
pub async fn run_leader(
    config: Arc<Config>,
    term: Term,
    state: SharedState,
    log: Arc<Mutex<Log>>,
    durable_tx: watch::Sender<Durable>,
    marks: EntryMarks,
    identity_full: watch::Sender<Vec<String>>,
    ready: tokio::sync::oneshot::Sender<()>,
    sync: sync::SyncInputs,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let span = info_span!("source", node = %config.node, term = %term);
    async move {
        let mut durable = {
            let log = log.lock().map_err(|_| LogError::Failed)?;
            Durable::of_log(&log).map_err(|e| SourceError::Entry(e.0, e.1))?
        };
        let own_term = durable.last.is_some_and(|last| last.term == term);
        if !own_term {
            durable.end_lsn = Lsn::ZERO;
        }
        let log_end = own_term.then_some(durable.end_lsn);
        let mut backoff = Backoff::default();
        // First start: the publication and slot must exist before anything is streamed.
        let leader = loop {
            match prepare(&config, &state, log_end, &identity_full).await {
                Ok(leader) => break leader,
                Err(e) => wait_or_fail(e, &mut backoff, &cancel).await?,
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
        };
        // Reported as flushed from the start, before any fsync: safe, because everything before
        // the slot's consistent point came with the snapshot it exported, not through the log,
        // and the slot's confirmed position already starts there. When the log ends before it
        // (an empty log) this keeps the standby status from ever saying 0/0.
        durable.end_lsn = durable.end_lsn.max(leader.consistent_point);
        let next_index = durable.last.map_or_else(|| log_first_or_one(&log), |last| Ok(last.index.next()))?;
        info!(next_index = %next_index, resume_lsn = %durable.end_lsn, slot = %leader.slot, "leader source starting");
        let _ = ready.send(());
        let sink = SharedSink::default();
        // In the synchronous modes PostgreSQL hears only of what the followers confirmed; what
        // came before the consistent point came with the slot's snapshot.
        sink.gate.confirm(leader.consistent_point);
        let pg = sync::PgSession { config: config.postgres.clone(), application_name: application_name(&config) };
        let sync_task = tokio::spawn(sync::run(sync, sink.clone(), pg, cancel.child_token()));
        let durable_rx = durable_tx.subscribe();
        let committer = Committer::new(log, durable, sink.clone(), durable_tx, marks);
        let heartbeat = tokio::spawn(heartbeat::run(
            config.postgres.clone(),
            config.node.clone(),
            leader.slot.clone(),
            term,
            config.source.heartbeat_interval,
            cancel.child_token(),
        ));
        let builder = EntryBuilder::new(term, next_index, durable.end_lsn, config.source.spill_bytes);
        let result = stream_with_retries(&config, &leader.slot, builder, committer, durable_rx, &sink, &cancel).await;
        heartbeat.abort();
        sync_task.abort();
        result
    }
    .instrument(span)
    .await
}

async fn prepare(
    config: &Config,
    state: &SharedState,
    log_end: Option<Lsn>,
    identity_full: &watch::Sender<Vec<String>>,
) -> Result<crate::node::LeaderState, SourceError> {
    let client = crate::sql::connect(&config.postgres).await?;
    setup::ensure_publication(&client, &config.source.publication).await?;
    let changed =
        setup::ensure_replica_identity(&client, &config.source.publication, config.source.auto_replica_identity)
            .await?;
    identity_full.send_replace(changed);
    let mut repl = ReplConnection::connect(&config.postgres, &application_name(config)).await?;
    let leader = setup::ensure_slot(&mut repl, &client, state, &config.source, log_end).await?;
    // Before clients may write: a synchronous mode holds from the first commit.
    setup::ensure_sync_standby(&client, config.mode, &application_name(config)).await?;
    repl.close().await;
    Ok(leader)
}

fn application_name(config: &Config) -> String {
    format!("walship_{}", config.node)
}

async fn stream_with_retries(
    config: &Config,
    slot: &str,
    mut builder: EntryBuilder,
    mut committer: Committer,
    durable: watch::Receiver<Durable>,
    sink: &SharedSink,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let mut backoff = Backoff::default();
    loop {
        let start = builder.resume_after();
        let result = match open_stream(config, slot, start).await {
            Ok(stream) => {
                info!(start_lsn = %start, "streaming");
                backoff.reset();
                let (d, s, c) = (durable.clone(), sink.clone(), cancel.clone());
                let heartbeat_interval = config.source.heartbeat_interval;
                let joined = tokio::task::spawn_blocking(move || {
                    let silence = tail::silence_timeout(heartbeat_interval);
                    let result = tail::tail(stream, &mut builder, &mut committer, d, &s, &c, silence);
                    (builder, committer, result)
                })
                .await
                .map_err(|_| SourceError::StreamThread)?;
                (builder, committer) = (joined.0, joined.1);
                joined.2
            }
            Err(e) => Err(e),
        };
        if builder.reset_stream() {
            // The stream broke inside a spilled transaction: its chunks go; it comes again.
            committer =
                tokio::task::spawn_blocking(move || committer.commit(WriteCmd::DropUnfinished).map(|()| committer))
                    .await
                    .map_err(|_| SourceError::StreamThread)??;
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e) => wait_or_fail(e, &mut backoff, cancel).await?,
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
    }
}

async fn open_stream(config: &Config, slot: &str, start: Lsn) -> Result<ReplStream, SourceError> {
    let conn = ReplConnection::connect(&config.postgres, &application_name(config)).await?;
    Ok(conn.start_replication(slot, start, &config.source.publication).await?)
}

/// Logs a failed attempt and waits before the next one; fatal errors end the source.
async fn wait_or_fail(e: SourceError, backoff: &mut Backoff, cancel: &CancellationToken) -> Result<(), SourceError> {
    let Some(delay) = backoff.after_failure(e.class(), &e, "leader source") else { return Err(e) };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
    Ok(())
}

/// The index a fresh log starts at: 1, or where a seeded log begins.
fn log_first_or_one(log: &Arc<Mutex<Log>>) -> Result<Index, SourceError> {
    Ok(log.lock().map_err(|_| LogError::Failed)?.first_index().unwrap_or(Index(1)))
}
