//! `GET /status`: the node as JSON (the shape DESIGN.md fixes), and the lag arithmetic behind
//! it and the metrics. Lag is computed when asked, from two named stages: the leader's durable
//! end and the follower's acknowledged position, with the leader's commit time of the oldest
//! entry the follower lacks for seconds (heartbeats keep that honest on an idle leader).

use serde::{Deserialize, Serialize};

use crate::log::committer::Durable;
use crate::log::marks::EntryMarks;
use crate::log::LogError;
use crate::lsn::now_pg_micros;
use crate::lsn::{Index, Lsn};
use crate::node::sync::SyncState;
use crate::node::NodeView;
use crate::relay::progress::FollowerProgress;
use crate::seed::SeedProgress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub role: String,
    pub term: u64,
    /// The node this one follows (itself on the leader), when known.
    pub leader: Option<String>,
    /// The last entry in this node's log.
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers: Option<Vec<FollowerStatus>>,
    /// On a follower: what it applied and how far behind its leader it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// On a follower: the age (by the leader's commit time) of the oldest entry it holds but
    /// has not applied; 0 when it applied all it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// On a follower: `streaming`, `catching_up`, `seeding` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// On a follower whose replay stopped: why, naming entry, table and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On a follower loading a snapshot: how far it has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeding: Option<SeedProgress>,
    /// On a node that diverged: the file listing every transaction it committed that the
    /// cluster lost, in the `inspect --json` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergent_report: Option<String>,
    /// The other nodes of the cluster and their admin API (`host:port`), so that
    /// `walship status` can show them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAdmin>,
    /// On a leader in `semi-sync` or `sync` mode: `synchronous` while commits wait for the
    /// followers, `degraded` while they are too slow and commits go on as in `async`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// On a leader: published tables without a key that it gave `REPLICA IDENTITY FULL` when
    /// it started, so that PostgreSQL takes their UPDATEs and DELETEs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_identity_full: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAdmin {
    pub node: String,
    pub admin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowerStatus {
    pub node: String,
    pub connected: bool,
    pub flushed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
}

/// How far a follower's stage is behind the leader's durable end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub bytes: u64,
    pub seconds: f64,
}

/// Lag of a stage at `stage` (the last entry it has), with `stage_lsn` the WAL position just
/// past it when known exactly (else taken from the marks, a lower bound for entries older than
/// those kept).
pub fn lag(stage: Option<Index>, stage_lsn: Option<Lsn>, durable: &Durable, marks: &EntryMarks, now_pg: i64) -> Lag {
    let Some(last) = durable.last else { return Lag { bytes: 0, seconds: 0.0 } };
    if stage.is_some_and(|s| s >= last.index) {
        return Lag { bytes: 0, seconds: 0.0 };
    }
    let oldest_missing = marks.at_or_oldest(stage.map_or(Index(0), Index::next));
    let stage_end = match (stage_lsn, stage.and_then(|s| marks.at_or_oldest(s))) {
        (Some(lsn), _) if lsn > Lsn::ZERO => lsn,
        (_, Some(mark)) if stage.is_some_and(|s| mark.index <= s) => mark.end_lsn,
        // Older than every mark kept: a lower bound.
        _ => oldest_missing.map_or(durable.end_lsn, |m| m.end_lsn),
    };
    let seconds = oldest_missing.map_or(0.0, |m| (now_pg - m.commit_time).max(0) as f64 / 1e6);
    Lag { bytes: durable.end_lsn.bytes_since(stage_end), seconds }
}

/// The leader's view of one follower, at the applied stage.
pub fn follower_status(node: &str, p: &FollowerProgress, durable: &Durable, marks: &EntryMarks) -> FollowerStatus {
    let applied = p.applied.map(|a| a.index);
    let lag = lag(applied, Some(p.applied_lsn), durable, marks, now_pg_micros());
    FollowerStatus {
        node: node.to_owned(),
        connected: p.connected,
        flushed_index: p.flushed.map(|f| f.index.0),
        applied_index: applied.map(|a| a.0),
        lag_bytes: lag.bytes,
        lag_seconds: lag.seconds,
    }
}

impl Status {
    pub fn of(view: &NodeView) -> Result<Status, LogError> {
        let index = view.log.lock().map_err(|_| LogError::Failed)?.last_written().map(|id| id.index.0);
        let durable = *view.durable.borrow();
        let role = view.role.borrow().clone();
        let mut status = Status {
            node: view.node.clone(),
            role: role.role.as_str().into(),
            term: role.term.0,
            leader: role.leader.clone(),
            index,
            followers: None,
            applied_index: None,
            lag_bytes: None,
            lag_seconds: None,
            replay: None,
            error: None,
            seeding: None,
            divergent_report: role.divergent_report.as_ref().map(|p| p.display().to_string()),
            peers: Vec::new(),
            sync: None,
            replica_identity_full: Vec::new(),
        };
        match role.role {
            r if r.serves() => {
                status.sync = view.sync_state.borrow().and_then(|s| match s {
                    SyncState::Async => None,
                    SyncState::Synchronous => Some("synchronous".to_owned()),
                    SyncState::Degraded => Some("degraded".to_owned()),
                });
                status.replica_identity_full = view.identity_full.borrow().clone();
                let progress = view.followers.snapshot();
                let followers = view
                    .peers
                    .iter()
                    .map(|peer| {
                        follower_status(peer, &progress.get(peer).cloned().unwrap_or_default(), &durable, &view.marks)
                    })
                    .collect();
                status.followers = Some(followers);
            }
            _ => {
                let applied = *view.applied.borrow();
                let leader = view.leader.borrow().clone();
                status.applied_index = applied.id.map(|id| id.index.0);
                status.lag_bytes =
                    leader.as_ref().and_then(|l| l.status).map(|s| s.durable_end_lsn.bytes_since(applied.end_lsn));
                let applied_index = applied.id.map(|id| id.index);
                let own = lag(applied_index, Some(applied.end_lsn), &durable, &view.marks, now_pg_micros());
                status.lag_seconds = status.lag_bytes.map(|_| own.seconds);
                status.leader = status.leader.or(leader.map(|l| l.node));
                status.seeding = *view.seeding.borrow();
                status.error = view.replay_stopped.borrow().clone();
                status.replay = Some(replay_state(&status).into());
            }
        }
        Ok(status)
    }
}

/// How much of its leader's log a follower's replay has: a stopped replay first, then a
/// snapshot being loaded, then catching up (no word from a leader yet, or the oldest entry
/// not applied is more than [`CAUGHT_UP_SECONDS`] old).
fn replay_state(status: &Status) -> &'static str {
    if status.error.is_some() {
        "stopped"
    } else if status.seeding.is_some() {
        "seeding"
    } else if status.lag_seconds.is_none_or(|s| s > CAUGHT_UP_SECONDS) {
        "catching_up"
    } else {
        "streaming"
    }
}

/// A follower whose oldest unapplied entry is younger than this is streaming.
pub const CAUGHT_UP_SECONDS: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::marks::Mark;
    use crate::lsn::{EntryId, Term};

    fn durable(last: u64, end: u64) -> Durable {
        Durable { last: Some(EntryId { term: Term(1), index: Index(last) }), end_lsn: Lsn(end) }
    }

    fn marks() -> EntryMarks {
        let marks = EntryMarks::default();
        for i in 1..=10u64 {
            marks.record(Mark { index: Index(i), commit_time: i as i64 * 1_000_000, end_lsn: Lsn(i * 100) });
        }
        marks
    }

    #[test]
    fn a_caught_up_follower_has_no_lag_even_when_idle() {
        let lag = lag(Some(Index(10)), Some(Lsn(1000)), &durable(10, 1000), &marks(), 99_000_000);
        assert_eq!(lag, Lag { bytes: 0, seconds: 0.0 });
    }

    #[test]
    fn lag_counts_from_the_oldest_entry_the_follower_lacks() {
        // Applied up to 7; entry 8 committed at 8 s; now is 12 s.
        let lag = lag(Some(Index(7)), None, &durable(10, 1000), &marks(), 12_000_000);
        assert_eq!(lag, Lag { bytes: 300, seconds: 4.0 });
        // The exact applied position wins over the marks.
        let exact = super::lag(Some(Index(7)), Some(Lsn(650)), &durable(10, 1000), &marks(), 12_000_000);
        assert_eq!(exact.bytes, 350);
        // A follower with nothing lags from the oldest entry kept.
        let none = super::lag(None, None, &durable(10, 1000), &marks(), 12_000_000);
        assert_eq!(none, Lag { bytes: 900, seconds: 11.0 });
    }
}
