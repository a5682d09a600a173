//! Prometheus metrics: names (all `walship_`, units in the name, counters end in `_total`),
//! the recorder, and the gauges computed from the node's state at every scrape.

use metrics::gauge;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::Role;
use crate::log::LogError;
use crate::node::NodeView;
use crate::relay::progress::FollowerProgress;
use crate::source::conn::now_pg_micros;

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
pub const LOG_FIRST_INDEX: &str = "walship_log_first_index";
pub const LOG_LAST_INDEX: &str = "walship_log_last_index";
pub const LOG_SIZE_BYTES: &str = "walship_log_size_bytes";
pub const APPLIED_INDEX: &str = "walship_applied_index";

/// Installs the process-wide recorder.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new().install_recorder().map_err(|e| e.to_string())
}

/// Sets the gauges from the node's state and renders everything.
pub fn render(view: &NodeView, handle: &PrometheusHandle) -> Result<String, LogError> {
    gauge!(TERM).set(view.term.0 as f64);
    gauge!(IS_LEADER).set(if view.role == Role::Leader { 1.0 } else { 0.0 });
    {
        let log = view.log.lock().map_err(|_| LogError::Failed)?;
        gauge!(LOG_FIRST_INDEX).set(log.first_index().map_or(0.0, |i| i.0 as f64));
        gauge!(LOG_LAST_INDEX).set(log.last_written().map_or(0.0, |i| i.index.0 as f64));
        gauge!(LOG_SIZE_BYTES).set(log.size_bytes() as f64);
    }
    match view.role {
        Role::Leader => {
            let progress = view.followers.snapshot();
            for peer in &view.peers {
                follower_gauges(view, peer, &progress.get(peer).cloned().unwrap_or_default());
            }
        }
        Role::Follower => {
            gauge!(APPLIED_INDEX).set(view.applied.borrow().id.map_or(0.0, |id| id.index.0 as f64));
        }
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
