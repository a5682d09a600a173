//! Heartbeats through the leader's WAL.
//!
//! Every interval the leader emits a non-transactional logical message
//! (`pg_logical_emit_message(false, 'walship.heartbeat', '<node> <term> <unix micros>')`). It
//! travels the same path as the data, so positions keep moving and lag stays measurable while
//! the database is idle.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::log::entry::HEARTBEAT_PREFIX;
use crate::lsn::Term;
use crate::source::builder::heartbeat_content;
use crate::source::conn::unix_micros_now;

pub async fn run(pg: tokio_postgres::Config, node: String, term: Term, interval: Duration, cancel: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match beat(&pg, &mut client, &node, term).await {
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
