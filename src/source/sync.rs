//! The leader's side of `semi-sync` and `sync`: PostgreSQL makes a committing client wait
//! until its synchronous standby (this sidecar's replication connection, named in
//! `synchronous_standby_names`) reports the commit flushed, and this task decides what may be
//! reported: the end of the last entry [`SyncRule`] confirms, from what is durable here and
//! what the followers acknowledged as flushed. The log writer reports only through the gate
//! this task opens ([`FlushGate`]).
//!
//! Positions: only entries of this leader's own term have LSNs of this server's WAL; a
//! confirmed entry older than `own_from` moves nothing (what came before this term's first
//! entry was reported with the slot's consistent point).

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Mode;
use crate::log::committer::Durable;
use crate::log::marks::EntryMarks;
use crate::lsn::{Index, Lsn};
use crate::node::sync::{SyncPolicy, SyncRule, SyncState};
use crate::relay::progress::Followers;
use crate::source::stream::SharedSink;

/// How often the rule is asked again without news (its timeout runs meanwhile).
pub const RECHECK: Duration = Duration::from_millis(50);
/// How often setting `synchronous_standby_names` is tried again after it failed.
pub const STANDBY_RETRY: Duration = Duration::from_secs(2);

/// The leader's PostgreSQL, where `synchronous_standby_names` is set, and the name its
/// replication connection goes by.
pub struct PgSession {
    pub config: tokio_postgres::Config,
    pub application_name: String,
}

/// What the task reads.
pub struct SyncInputs {
    /// The replication policy; a reload changes it.
    pub policy: watch::Receiver<SyncPolicy>,
    /// The followers that count, as named in `[[peers]]`.
    pub peers: Vec<String>,
    pub followers: Followers,
    pub durable: watch::Receiver<Durable>,
    pub marks: EntryMarks,
    /// The first index of this leader's term.
    pub own_from: Index,
    /// Where the rule stands, for `/status` and the metrics.
    pub state: watch::Sender<Option<SyncState>>,
}

/// Confirms entries through `sink`'s gate until `cancel`. Whenever the policy changes (and at
/// start) the gate opens or closes with the mode, and PostgreSQL's `synchronous_standby_names`
/// follows (retried until it succeeds).
pub async fn run(inputs: SyncInputs, sink: SharedSink, pg: PgSession, cancel: CancellationToken) {
    let SyncInputs { mut policy, peers, followers, mut durable, marks, own_from, state } = inputs;
    let mut current = *policy.borrow_and_update();
    let mut rule = SyncRule::new(current);
    let mut standby_set = false;
    let mut last_try = None;
    let mut acks = followers.subscribe();
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted = *policy.borrow_and_update();
        if wanted != current {
            current = wanted;
            rule.set_policy(current);
            standby_set = false;
        }
        if !standby_set && last_try.is_none_or(|at: Instant| at.elapsed() >= STANDBY_RETRY) {
            last_try = Some(Instant::now());
            match crate::sql::connect(&pg.config).await {
                Ok(client) => {
                    match super::setup::ensure_sync_standby(&client, current.mode, &pg.application_name).await {
                        Ok(()) => standby_set = true,
                        Err(e) => warn!(error = %e, "cannot set PostgreSQL's synchronous standby; retrying"),
                    }
                }
                Err(e) => warn!(error = %e, "cannot set PostgreSQL's synchronous standby; retrying"),
            }
            // Gated only in the synchronous modes, and only once PostgreSQL waits for us.
            sink.gate.set_gated(current.mode != Mode::Async);
        }
        let local = *durable.borrow_and_update();
        let progress = followers.snapshot();
        let flushed: Vec<Option<Index>> =
            peers.iter().map(|p| progress.get(p).and_then(|f| f.flushed).map(|e| e.index)).collect();
        let confirm = rule.decide(local.last.map(|l| l.index), &flushed, Instant::now());
        let changed = state.send_if_modified(|s| {
            let changed = *s != Some(confirm.state);
            *s = Some(confirm.state);
            changed
        });
        if changed {
            match confirm.state {
                SyncState::Degraded => warn!(
                    timeout_ms = current.timeout.as_millis() as u64,
                    "too few followers hold the newest commits: replicating asynchronously until they catch up"
                ),
                SyncState::Synchronous => {
                    info!(mode = ?current.mode, quorum = current.quorum, "replicating synchronously")
                }
                SyncState::Async => {}
            }
        }
        if let Some(lsn) = confirm.through.and_then(|through| end_of(through, own_from, &local, &marks)) {
            sink.gate.confirm(lsn);
            sink.report(local.end_lsn);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = policy.changed() => {}
            changed = durable.changed() => if changed.is_err() { return },
            // In `async` mode acknowledgements decide nothing: no wake-up for each one.
            _ = acks.changed(), if current.mode != Mode::Async => {}
            _ = tick.tick() => {}
        }
    }
}

/// The WAL end of entry `index`, when it is of this term and still known.
fn end_of(index: Index, own_from: Index, durable: &Durable, marks: &EntryMarks) -> Option<Lsn> {
    if index < own_from {
        return None;
    }
    if durable.last.is_some_and(|last| last.index == index) {
        return Some(durable.end_lsn);
    }
    marks.at_or_oldest(index).filter(|m| m.index == index).map(|m| m.end_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::marks::Mark;
    use crate::lsn::{EntryId, Term};

    #[test]
    fn only_entries_of_this_term_that_are_known_move_the_position() {
        let marks = EntryMarks::default();
        for i in 10..20u64 {
            marks.record(Mark { index: Index(i), commit_time: 0, end_lsn: Lsn(i * 100) });
        }
        let durable = Durable { last: Some(EntryId { term: Term(2), index: Index(19) }), end_lsn: Lsn(1950) };
        assert_eq!(end_of(Index(19), Index(12), &durable, &marks), Some(Lsn(1950)));
        assert_eq!(end_of(Index(15), Index(12), &durable, &marks), Some(Lsn(1500)));
        // Before this term's first entry: another server's WAL.
        assert_eq!(end_of(Index(11), Index(12), &durable, &marks), None);
        // Older than the marks kept: not known, so not reported.
        assert_eq!(end_of(Index(9), Index(5), &durable, &marks), None);
    }
}
