//! Heartbeats through the leader's WAL.
//!
//! Every interval the leader emits a non-transactional logical message
//! (`pg_logical_emit_message(false, 'walship.heartbeat', '<node> <term> <unix micros>')`). It
//! travels the same path as the data, so positions keep moving and lag stays measurable while
//! the database is idle.
//!
//! After each heartbeat it also ships the sequences that moved ([`crate::sequences`]): pgoutput
//! carries none, and a promoted follower must not hand out ids the old leader used.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::log::entry::HEARTBEAT_PREFIX;
use crate::lsn::unix_micros_now;
use crate::lsn::{Lsn, Term};
use crate::sequences::{self, Observed, Shipper, SEQUENCES_PREFIX};
use crate::source::builder::heartbeat_content;

/// How much WAL the leader's slot holds back (Prometheus gauge), sampled every
/// [`SLOT_SAMPLE_INTERVAL`].
pub const SLOT_RETAINED_WAL_BYTES: &str = "walship_slot_retained_wal_bytes";
pub const SLOT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Emits heartbeats until `cancel`, and samples how much WAL `slot` retains.
pub async fn run(
    pg: tokio_postgres::Config,
    node: String,
    slot: String,
    term: Term,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last_sample: Option<tokio::time::Instant> = None;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    let mut shipper = Shipper::default();
    let mut last_look = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut beaten = beat(&pg, &mut client, &node, term).await;
        if let (Ok(()), Some(c)) = (&beaten, client.as_ref()) {
            let elapsed = last_look.elapsed();
            last_look = tokio::time::Instant::now();
            beaten = ship_sequences(c, &mut shipper, elapsed).await;
            if beaten.is_err() {
                // Ship everything again once the connection is back.
                shipper = Shipper::default();
            }
        }
        if let (Ok(()), Some(c)) = (&beaten, client.as_ref()) {
            if last_sample.is_none_or(|t| t.elapsed() >= SLOT_SAMPLE_INTERVAL) {
                sample_slot(c, &slot).await;
                last_sample = Some(tokio::time::Instant::now());
            }
        }
        match beaten {
            Ok(()) if failing => {
                failing = false;
                debug!("heartbeats flowing again");
            }
            Ok(()) => {}
            Err(e) => {
                client = None;
                if !failing {
                    warn!(error = %e, "cannot emit heartbeat; retrying every interval");
                    failing = true;
                }
            }
        }
    }
}

async fn beat(
    pg: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
    node: &str,
    term: Term,
) -> Result<(), tokio_postgres::Error> {
    let c = match client {
        Some(c) if !c.is_closed() => c,
        _ => client.insert(crate::sql::connect(pg).await?),
    };
    let content = heartbeat_content(node, term, unix_micros_now());
    c.execute("SELECT pg_logical_emit_message(false, $1, $2)", &[&HEARTBEAT_PREFIX, &content]).await?;
    Ok(())
}

/// Ships every sequence, then emits one heartbeat, on a fresh session; returns the WAL
/// position where the heartbeat ends: once the log's durable end reaches it, the log holds
/// every transaction committed before, and every sequence as it is now (plus the margin).
/// Used when writes have stopped (a switchover), so that the next leader's sequences start
/// beyond every value handed out here.
pub async fn emit(pg: &tokio_postgres::Config, node: &str, term: Term) -> Result<Lsn, tokio_postgres::Error> {
    let client = crate::sql::connect(pg).await?;
    ship_sequences(&client, &mut Shipper::default(), Duration::ZERO).await?;
    let content = heartbeat_content(node, term, unix_micros_now());
    let row =
        client.query_one("SELECT pg_logical_emit_message(false, $1, $2)::text", &[&HEARTBEAT_PREFIX, &content]).await?;
    Ok(row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO))
}

/// Emits the sequences that moved, as [`crate::sequences`] rules, through the WAL.
async fn ship_sequences(
    client: &tokio_postgres::Client,
    shipper: &mut Shipper,
    elapsed: std::time::Duration,
) -> Result<(), tokio_postgres::Error> {
    let rows = client.query(sequences::LEADER_SEQUENCES, &[]).await?;
    let observed = rows
        .iter()
        .map(|r| {
            Ok(Observed {
                schema: r.try_get(0)?,
                name: r.try_get(1)?,
                last_value: r.try_get(2)?,
                increment: r.try_get(3)?,
                min_value: r.try_get(4)?,
                max_value: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let Some(shipment) = shipper.look(&observed, elapsed) else { return Ok(()) };
    match shipment.encode() {
        Ok(content) => {
            client.execute("SELECT pg_logical_emit_message(false, $1, $2)", &[&SEQUENCES_PREFIX, &content]).await?;
            debug!(sequences = shipment.sequences.len(), "sequences shipped");
        }
        Err(e) => warn!(error = %e, "cannot encode the sequences to ship"),
    }
    Ok(())
}

async fn sample_slot(client: &tokio_postgres::Client, slot: &str) {
    let sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 FROM pg_replication_slots \
               WHERE slot_name = $1";
    match client.query_opt(sql, &[&slot]).await {
        Ok(Some(row)) => {
            let bytes: Option<f64> = row.get(0);
            metrics::gauge!(SLOT_RETAINED_WAL_BYTES).set(bytes.unwrap_or(0.0));
        }
        Ok(None) => {}
        Err(e) => debug!(error = %e, "cannot sample the slot"),
    }
}
