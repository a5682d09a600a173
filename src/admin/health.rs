//! Health checks for routers and orchestrators, with Patroni's conventions so that HAProxy,
//! Kubernetes probes and the like work unchanged:
//!
//! - `/leader` (alias `/primary`): 200 on the current, unfenced leader whose PostgreSQL
//!   answers, else 503;
//! - `/replica`: 200 on a follower that hears from its leader, whose PostgreSQL answers and
//!   whose lag is within the limits asked (`lag=16MB` or `max_lag_bytes=N`, and
//!   `max_lag_seconds=S`), else 503;
//! - `/liveness`: 200 while the process runs; `/readiness`: 200 once it serves its role.
//!
//! Each answers `GET`, `HEAD` and `OPTIONS` alike (HAProxy's `option httpchk OPTIONS
//! /primary`). The decisions are pure functions of what was observed; the handlers observe.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;

use crate::config::parse_size;

/// How long a check waits for PostgreSQL.
pub const PG_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a check observed of the node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    pub leads: bool,
    /// PostgreSQL answered and is not fenced against client writes (`None`: unreachable).
    pub pg: Option<PgState>,
    /// On a follower: word from a leader arrived, with the lag then.
    pub replica_lag: Option<ReplicaLag>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgState {
    Writable,
    Fenced,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplicaLag {
    pub bytes: u64,
    pub seconds: f64,
}

/// `/replica`'s query: `lag` takes units (`16MB`), `max_lag_bytes` a plain number.
#[derive(Debug, Default, Deserialize)]
pub struct ReplicaQuery {
    pub lag: Option<String>,
    pub max_lag_bytes: Option<u64>,
    pub max_lag_seconds: Option<f64>,
}

/// The limits a `/replica` query sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LagLimits {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

impl ReplicaQuery {
    pub fn limits(&self) -> Result<LagLimits, String> {
        let from_lag = self.lag.as_deref().map(parse_size).transpose().map_err(|e| format!("lag: {e}"))?;
        let bytes = match (from_lag, self.max_lag_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(s) = self.max_lag_seconds {
            if !s.is_finite() || s < 0.0 {
                return Err(format!("max_lag_seconds: {s} is not a number of seconds"));
            }
        }
        Ok(LagLimits { bytes, seconds: self.max_lag_seconds })
    }
}

pub fn leader(o: &Observed) -> (StatusCode, String) {
    match (o.leads, o.pg) {
        (false, _) => unavailable("not the leader"),
        (true, None) => unavailable("leader, but its postgresql does not answer"),
        (true, Some(PgState::Fenced)) => unavailable("fenced: clients cannot write here"),
        (true, Some(PgState::Writable)) => (StatusCode::OK, "leader\n".into()),
    }
}

pub fn replica(o: &Observed, limits: LagLimits) -> (StatusCode, String) {
    if o.leads {
        return unavailable("this node leads");
    }
    if o.pg.is_none() {
        return unavailable("its postgresql does not answer");
    }
    let Some(lag) = o.replica_lag else { return unavailable("no word from a leader yet") };
    if limits.bytes.is_some_and(|max| lag.bytes > max) {
        return unavailable(&format!("lag {} bytes", lag.bytes));
    }
    if limits.seconds.is_some_and(|max| lag.seconds > max) {
        return unavailable(&format!("lag {:.3} s", lag.seconds));
    }
    (StatusCode::OK, format!("replica, lag {} bytes, {:.3} s\n", lag.bytes, lag.seconds))
}

/// Ready once the node serves its role: a leader whose PostgreSQL answers, a follower that
/// hears from its leader.
pub fn readiness(o: &Observed) -> (StatusCode, String) {
    match (o.leads, o.pg, o.replica_lag) {
        (_, None, _) => unavailable("its postgresql does not answer"),
        (true, Some(_), _) => (StatusCode::OK, "ready: leading\n".into()),
        (false, Some(_), Some(_)) => (StatusCode::OK, "ready: following\n".into()),
        (false, Some(_), None) => unavailable("no word from a leader yet"),
    }
}

fn unavailable(why: &str) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
}

/// Asks PostgreSQL whether it answers and whether walship fenced it, in one round trip on a
/// fresh connection (a check must see a PostgreSQL that restarted).
pub async fn observe_pg(pg: &tokio_postgres::Config) -> Option<PgState> {
    let check = async {
        let client = crate::sql::connect(pg).await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1)",
                &[&crate::fence::TRIGGER],
            )
            .await?;
        let fenced: bool = row.try_get(0)?;
        Ok::<_, tokio_postgres::Error>(if fenced { PgState::Fenced } else { PgState::Writable })
    };
    tokio::time::timeout(PG_CHECK_TIMEOUT, check).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(leads: bool, pg: Option<PgState>, lag: Option<(u64, f64)>) -> Observed {
        Observed { leads, pg, replica_lag: lag.map(|(bytes, seconds)| ReplicaLag { bytes, seconds }) }
    }

    #[test]
    fn leader_is_200_only_when_leading_unfenced_and_reachable() {
        let ok = |o: Observed| leader(&o).0 == StatusCode::OK;
        assert!(ok(observed(true, Some(PgState::Writable), None)));
        assert!(!ok(observed(true, Some(PgState::Fenced), None)));
        assert!(!ok(observed(true, None, None)));
        assert!(!ok(observed(false, Some(PgState::Writable), Some((0, 0.0)))));
    }

    #[test]
    fn replica_checks_role_reachability_and_both_limits() {
        let ok = |o: Observed, q: ReplicaQuery| replica(&o, q.limits().unwrap()).0 == StatusCode::OK;
        let fenced = Some(PgState::Fenced);
        assert!(ok(observed(false, fenced, Some((10, 0.5))), ReplicaQuery::default()));
        assert!(!ok(observed(false, fenced, None), ReplicaQuery::default()), "never heard from a leader");
        assert!(!ok(observed(false, None, Some((0, 0.0))), ReplicaQuery::default()));
        assert!(!ok(observed(true, Some(PgState::Writable), Some((0, 0.0))), ReplicaQuery::default()));
        let mb16 = || ReplicaQuery { lag: Some("16MB".into()), ..Default::default() };
        assert!(ok(observed(false, fenced, Some((16 << 20, 9.0))), mb16()));
        assert!(!ok(observed(false, fenced, Some(((16 << 20) + 1, 0.0))), mb16()));
        let secs = ReplicaQuery { max_lag_seconds: Some(1.5), max_lag_bytes: Some(100), ..Default::default() };
        assert!(!ok(observed(false, fenced, Some((10, 1.6))), secs));
        let secs = ReplicaQuery { max_lag_seconds: Some(1.5), max_lag_bytes: Some(100), ..Default::default() };
        assert!(!ok(observed(false, fenced, Some((101, 0.1))), secs));
    }

    #[test]
    fn bad_limits_are_refused_with_their_name() {
        let q = ReplicaQuery { lag: Some("lots".into()), ..Default::default() };
        assert!(q.limits().unwrap_err().starts_with("lag:"));
        let q = ReplicaQuery { max_lag_seconds: Some(f64::NAN), ..Default::default() };
        assert!(q.limits().unwrap_err().starts_with("max_lag_seconds"));
        let q = ReplicaQuery { lag: Some("1kB".into()), max_lag_bytes: Some(5000), ..Default::default() };
        assert_eq!(q.limits().unwrap().bytes, Some(1024), "the stricter of both");
    }

    #[test]
    fn readiness_follows_the_role() {
        let ready = |o: Observed| readiness(&o).0 == StatusCode::OK;
        assert!(ready(observed(true, Some(PgState::Writable), None)));
        assert!(ready(observed(false, Some(PgState::Fenced), Some((5, 0.1)))));
        assert!(!ready(observed(false, Some(PgState::Fenced), None)));
        assert!(!ready(observed(true, None, None)));
    }
}
