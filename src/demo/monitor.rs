//! The live table: once a second a line per follower, every few seconds the row counts.
//!
//! A follower's applied position is in its own database (`walship.progress`, written in the
//! same transaction as the changes it covers). Lag in bytes is the leader's current WAL
//! position minus the follower's `end_lsn`; lag in seconds is now minus the applied entry's
//! leader commit time. A follower counts as connected while its applied index moves: the
//! leader's heartbeat entries keep it moving even with no load.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::load::{self, Stats, TABLES};
use super::say;
use crate::lsn::Lsn;

/// A follower whose applied index has not moved for this long is shown as not connected.
const CONNECTED_WITHIN: Duration = Duration::from_secs(3);
/// Row counts every this many seconds.
const ROWS_EVERY: u64 = 5;
/// The header again after this many seconds, so it stays on screen.
const HEADER_EVERY: u64 = 30;

const HEADER: &str = "  time  follower  connected  applied_index  lag_bytes  lag_seconds";

/// A follower's `walship.progress`, as read.
#[derive(Clone, Debug, PartialEq)]
enum Progress {
    /// Its database does not answer.
    Down,
    /// No entry applied yet (the applier has not created `walship.progress`, or no row).
    NotYet,
    Applied {
        index: i64,
        end_lsn: Lsn,
        lag_seconds: f64,
    },
}

/// A lazily (re)connected client to one node's database.
struct Probe {
    node: &'static str,
    conninfo: String,
    client: Option<Client>,
}

impl Probe {
    async fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = load::connect(&self.conninfo).await.ok();
        }
        self.client.as_ref()
    }

    async fn current_lsn(&mut self) -> Option<Lsn> {
        let row = self.client().await?.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.ok()?;
        row.get::<_, String>(0).parse().ok()
    }

    async fn progress(&mut self) -> Progress {
        let Some(client) = self.client().await else { return Progress::Down };
        let sql = "SELECT applied_index, end_lsn::text, \
                   greatest(extract(epoch FROM clock_timestamp() - commit_time), 0)::float8 FROM walship.progress";
        match client.query_opt(sql, &[]).await {
            Ok(Some(row)) => match row.get::<_, String>(1).parse() {
                Ok(end_lsn) => Progress::Applied { index: row.get(0), end_lsn, lag_seconds: row.get(2) },
                Err(_) => Progress::Down,
            },
            Ok(None) => Progress::NotYet,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Progress::NotYet,
            Err(_) => {
                self.client = None;
                Progress::Down
            }
        }
    }

    /// Rows per table, `None` where the query failed.
    async fn row_counts(&mut self) -> Vec<Option<i64>> {
        let mut counts = Vec::new();
        for table in TABLES {
            let sql = format!("SELECT count(*) FROM {table}");
            let count = match self.client().await {
                Some(client) => client.query_one(sql.as_str(), &[]).await.ok().map(|row| row.get(0)),
                None => None,
            };
            counts.push(count);
        }
        counts
    }
}

struct Follower {
    probe: Probe,
    applied_index: Option<i64>,
    /// When the applied index last moved.
    advanced_at: Option<Instant>,
}

pub(super) struct Monitor {
    leader: Probe,
    followers: Vec<Follower>,
    stats: Arc<Stats>,
    started: Instant,
    ticks: u64,
    /// Rows written by the load at the last row-count line, for its rate.
    rows_at_last_count: (Instant, u64),
}

impl Monitor {
    /// `leader` and `followers`: `(node, conninfo)`.
    pub(super) fn new(
        (node, conninfo): (&'static str, String),
        followers: Vec<(&'static str, String)>,
        stats: Arc<Stats>,
    ) -> Monitor {
        let leader = Probe { node, conninfo, client: None };
        let followers = followers
            .into_iter()
            .map(|(node, conninfo)| Follower {
                probe: Probe { node, conninfo, client: None },
                applied_index: None,
                advanced_at: None,
            })
            .collect();
        let now = Instant::now();
        Monitor { leader, followers, stats, started: now, ticks: 0, rows_at_last_count: (now, 0) }
    }

    /// Prints this second's lines.
    pub(super) async fn tick(&mut self) {
        if self.ticks.is_multiple_of(HEADER_EVERY) {
            say(HEADER);
        }
        let elapsed = self.started.elapsed().as_secs();
        let leader_lsn = self.leader.current_lsn().await;
        for follower in &mut self.followers {
            let progress = follower.probe.progress().await;
            let connected = follower.note(&progress, Instant::now());
            say(&follower_line(elapsed, follower.probe.node, connected, &progress, leader_lsn));
        }
        if self.ticks % ROWS_EVERY == ROWS_EVERY - 1 {
            let line = self.rows_line(elapsed).await;
            say(&line);
        }
        self.ticks += 1;
    }

    async fn rows_line(&mut self, elapsed: u64) -> String {
        let mut counts = vec![(self.leader.node, self.leader.row_counts().await)];
        for follower in &mut self.followers {
            counts.push((follower.probe.node, follower.probe.row_counts().await));
        }
        let now = Instant::now();
        let rows = self.stats.rows.load(Ordering::Relaxed);
        let (then, rows_then) = std::mem::replace(&mut self.rows_at_last_count, (now, rows));
        let rate = (rows - rows_then) as f64 / now.duration_since(then).as_secs_f64().max(0.001);
        format!("{}  load {rate:.0} rows/s", rows_line(elapsed, &counts))
    }
}

impl Follower {
    /// Records the sample; returns what the `connected` column shows.
    fn note(&mut self, progress: &Progress, now: Instant) -> &'static str {
        if let Progress::Applied { index, .. } = progress {
            // The first sample only sets the baseline: an index seen once may be stale.
            if self.applied_index.is_some_and(|seen| seen != *index) {
                self.advanced_at = Some(now);
            }
            self.applied_index = Some(*index);
        }
        connected(progress, self.advanced_at, now)
    }
}

fn connected(progress: &Progress, advanced_at: Option<Instant>, now: Instant) -> &'static str {
    match (progress, advanced_at) {
        (Progress::Down, _) => "down",
        (Progress::NotYet, _) | (Progress::Applied { .. }, None) => "not yet",
        (Progress::Applied { .. }, Some(at)) if now.duration_since(at) <= CONNECTED_WITHIN => "yes",
        (Progress::Applied { .. }, Some(_)) => "no",
    }
}

fn follower_line(elapsed: u64, node: &str, connected: &str, progress: &Progress, leader_lsn: Option<Lsn>) -> String {
    let (index, lag_bytes, lag_seconds) = match progress {
        Progress::Applied { index, end_lsn, lag_seconds } => (
            index.to_string(),
            leader_lsn.map_or("-".to_owned(), |lsn| human_bytes(lsn.bytes_since(*end_lsn))),
            format!("{lag_seconds:.3}"),
        ),
        Progress::Down | Progress::NotYet => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
    };
    format!("{:>5}s  {node:<8}  {connected:<9}  {index:>13}  {lag_bytes:>9}  {lag_seconds:>11}", elapsed)
}

/// `    5s  rows      customers a=12 b=12 c=11  orders a=40 b=40 c=38`
fn rows_line(elapsed: u64, counts: &[(&str, Vec<Option<i64>>)]) -> String {
    let mut line = format!("{elapsed:>5}s  {:<8}", "rows");
    for (i, table) in TABLES.iter().enumerate() {
        line.push_str(&format!("  {table}"));
        for (node, node_counts) in counts {
            let count = node_counts.get(i).copied().flatten().map_or("?".to_owned(), |n| n.to_string());
            line.push_str(&format!(" {node}={count}"));
        }
    }
    line
}

/// `512B`, `1.5KiB`, `20.0MiB`: one token, so the columns stay aligned.
fn human_bytes(bytes: u64) -> String {
    crate::admin::client::human_bytes(bytes).replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_one_token() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0TiB");
    }

    #[test]
    fn connected_while_the_index_moves() {
        let now = Instant::now();
        let applied = Progress::Applied { index: 7, end_lsn: Lsn(100), lag_seconds: 0.5 };
        assert_eq!(connected(&applied, Some(now), now), "yes");
        assert_eq!(connected(&applied, Some(now), now + Duration::from_secs(10)), "no");
        assert_eq!(connected(&Progress::NotYet, None, now), "not yet");
        assert_eq!(connected(&Progress::Down, Some(now), now), "down");
    }

    #[test]
    fn lines_line_up_with_the_header() {
        let applied = Progress::Applied { index: 1234, end_lsn: Lsn(1000), lag_seconds: 0.0123 };
        let line = follower_line(12, "b", "yes", &applied, Some(Lsn(1000 + 2048)));
        assert_eq!(line.len(), HEADER.len());
        assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["12s", "b", "yes", "1234", "2.0KiB", "0.012"]);
        let rows = rows_line(5, &[("a", vec![Some(3), Some(9)]), ("b", vec![Some(3), None])]);
        assert_eq!(rows, "    5s  rows      customers a=3 b=3  orders a=9 b=?");
    }
}
