//! Prometheus metrics: names (all `walship_`, units in the name, counters end in `_total`),
//! the recorder, and the gauges computed from the node's state at every scrape.

use metrics::{describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::log::LogError;
use crate::lsn::now_pg_micros;
use crate::node::NodeView;
use crate::node::RoleName;
use crate::relay::progress::FollowerProgress;

use super::status::lag;

/// Applied-stage lag per follower (names fixed by DESIGN.md).
pub const REPLICATION_LAG_BYTES: &str = "walship_replication_lag_bytes";
pub const REPLICATION_LAG_SECONDS: &str = "walship_replication_lag_seconds";
/// Lag per follower and stage (`received`, `flushed`, `applied`).
pub const FOLLOWER_LAG_BYTES: &str = "walship_follower_lag_bytes";
pub const FOLLOWER_LAG_SECONDS: &str = "walship_follower_lag_seconds";
pub const FOLLOWER_CONNECTED: &str = "walship_follower_connected";
pub const TERM: &str = "walship_term";
pub const IS_LEADER: &str = "walship_is_leader";
/// 1 on a leader in `semi-sync` or `sync` mode whose followers were too slow: commits go on
/// as in `async` until they catch up.
pub const SYNC_DEGRADED: &str = "walship_sync_degraded";
/// 1 on a node whose log holds transactions the cluster lost (see `/status` `divergent_report`).
pub const DIVERGENT: &str = "walship_divergent";
pub const LOG_FIRST_INDEX: &str = "walship_log_first_index";
pub const LOG_LAST_INDEX: &str = "walship_log_last_index";
pub const LOG_SIZE_BYTES: &str = "walship_log_size_bytes";
pub const APPLIED_INDEX: &str = "walship_applied_index";

/// Installs the process-wide recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new().install_recorder().map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    use crate::apply::scheduler::{
        REPLAY_ENTRIES_APPLIED_TOTAL, REPLAY_ERRORS_TOTAL, REPLAY_STOPPED, REPLAY_STRICT_RETRIES_TOTAL,
    };
    use crate::log::committer::{LOG_BYTES_APPENDED_TOTAL, LOG_ENTRIES_APPENDED_TOTAL};
    use crate::relay::client::{SEED_BYTES, SEED_ROWS, SEED_TABLES_DONE};
    use crate::relay::server::{RELAY_BYTES_SENT_TOTAL, RELAY_ENTRIES_SENT_TOTAL};
    use crate::source::heartbeat::SLOT_RETAINED_WAL_BYTES;
    let lag = "how far a follower is behind the leader's durable log";
    describe_gauge!(REPLICATION_LAG_BYTES, Unit::Bytes, format!("{lag}, in leader WAL bytes, applied stage"));
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        format!("{lag}: age of the oldest entry it has not applied")
    );
    describe_gauge!(FOLLOWER_LAG_BYTES, Unit::Bytes, format!("{lag}, in leader WAL bytes, by stage"));
    describe_gauge!(FOLLOWER_LAG_SECONDS, Unit::Seconds, format!("{lag}, in seconds, by stage"));
    describe_gauge!(FOLLOWER_CONNECTED, "1 while the follower is connected to this leader");
    describe_gauge!(TERM, "the node's leadership term");
    describe_gauge!(
        SYNC_DEGRADED,
        "1 while a semi-sync or sync leader replicates asynchronously because its followers are too slow"
    );
    describe_gauge!(
        DIVERGENT,
        "1 while this node holds transactions the cluster lost, listed in its divergence report"
    );
    describe_gauge!(IS_LEADER, "1 on the leader, 0 elsewhere");
    describe_gauge!(LOG_FIRST_INDEX, "the oldest entry the log retains");
    describe_gauge!(LOG_LAST_INDEX, "the newest entry in the log");
    describe_gauge!(LOG_SIZE_BYTES, Unit::Bytes, "the log's size on disk");
    describe_gauge!(APPLIED_INDEX, "the last entry this follower applied to its PostgreSQL");
    describe_counter!(LOG_ENTRIES_APPENDED_TOTAL, "entries made durable in the log");
    describe_counter!(LOG_BYTES_APPENDED_TOTAL, Unit::Bytes, "payload bytes made durable in the log");
    describe_counter!(RELAY_ENTRIES_SENT_TOTAL, "entries sent to each follower");
    describe_counter!(RELAY_BYTES_SENT_TOTAL, Unit::Bytes, "payload bytes sent to each follower");
    describe_counter!(REPLAY_ENTRIES_APPLIED_TOTAL, "entries replayed into this node's PostgreSQL");
    describe_counter!(
        REPLAY_STRICT_RETRIES_TOTAL,
        "times replay rolled back a batched transaction and applied its entries again in strict log order"
    );
    describe_counter!(
        crate::apply::REPLAY_ROWS_TOTAL,
        "rows replay sent to this node's PostgreSQL, by method: row (one statement each), copy, set (set-based)"
    );
    describe_gauge!(SLOT_RETAINED_WAL_BYTES, Unit::Bytes, "WAL the leader's replication slot holds back");
    describe_gauge!(SEED_TABLES_DONE, "tables of the snapshot loaded so far");
    describe_gauge!(SEED_ROWS, "rows of the snapshot loaded so far");
    describe_gauge!(SEED_BYTES, Unit::Bytes, "bytes of the snapshot loaded so far");
    describe_gauge!(REPLAY_STOPPED, "1 while replay is stopped on an error that needs an operator");
    describe_counter!(REPLAY_ERRORS_TOTAL, "replay attempts that failed, whatever the cause");
    // Every series from start-up, so that rate() and panels show 0, not "no data".
    for counter in [
        REPLAY_ENTRIES_APPLIED_TOTAL,
        REPLAY_STRICT_RETRIES_TOTAL,
        REPLAY_ERRORS_TOTAL,
        LOG_ENTRIES_APPENDED_TOTAL,
        LOG_BYTES_APPENDED_TOTAL,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for method in ["row", "copy", "set"] {
        metrics::counter!(crate::apply::REPLAY_ROWS_TOTAL, "method" => method).increment(0);
    }
    gauge!(REPLAY_STOPPED).set(0.0);
    gauge!(DIVERGENT).set(0.0);
    gauge!(SYNC_DEGRADED).set(0.0);
}

/// Sets the gauges from the node's state and renders everything.
pub fn render(view: &NodeView, handle: &PrometheusHandle) -> Result<String, LogError> {
    let role = view.role.borrow().clone();
    gauge!(TERM).set(role.term.0 as f64);
    gauge!(IS_LEADER).set(if role.role == RoleName::Leader { 1.0 } else { 0.0 });
    gauge!(DIVERGENT).set(if role.role == RoleName::Divergent { 1.0 } else { 0.0 });
    let degraded = role.role.serves() && *view.sync_state.borrow() == Some(crate::node::sync::SyncState::Degraded);
    gauge!(SYNC_DEGRADED).set(if degraded { 1.0 } else { 0.0 });
    {
        let log = view.log.lock().map_err(|_| LogError::Failed)?;
        gauge!(LOG_FIRST_INDEX).set(log.first_index().map_or(0.0, |i| i.0 as f64));
        gauge!(LOG_LAST_INDEX).set(log.last_written().map_or(0.0, |i| i.index.0 as f64));
        gauge!(LOG_SIZE_BYTES).set(log.size_bytes() as f64);
    }
    if role.role.serves() {
        let progress = view.followers.snapshot();
        for peer in &view.peers {
            follower_gauges(view, peer, &progress.get(peer).cloned().unwrap_or_default());
        }
    } else {
        gauge!(APPLIED_INDEX).set(view.applied.borrow().id.map_or(0.0, |id| id.index.0 as f64));
    }
    Ok(handle.render())
}

fn follower_gauges(view: &NodeView, node: &str, p: &FollowerProgress) {
    let durable = *view.durable.borrow();
    let now = now_pg_micros();
    let follower = node.to_owned();
    gauge!(FOLLOWER_CONNECTED, "follower" => follower.clone()).set(if p.connected { 1.0 } else { 0.0 });
    let stages = [
        ("received", p.received.map(|e| e.index), None),
        ("flushed", p.flushed.map(|e| e.index), None),
        ("applied", p.applied.map(|e| e.index), Some(p.applied_lsn)),
    ];
    for (stage, index, lsn) in stages {
        let l = lag(index, lsn, &durable, &view.marks, now);
        gauge!(FOLLOWER_LAG_BYTES, "follower" => follower.clone(), "stage" => stage).set(l.bytes as f64);
        gauge!(FOLLOWER_LAG_SECONDS, "follower" => follower.clone(), "stage" => stage).set(l.seconds);
        if stage == "applied" {
            gauge!(REPLICATION_LAG_BYTES, "follower" => follower.clone()).set(l.bytes as f64);
            gauge!(REPLICATION_LAG_SECONDS, "follower" => follower.clone()).set(l.seconds);
        }
    }
}
