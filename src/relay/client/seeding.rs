//! Seeding: when the handshake said so, ask the leader for its snapshot and load it into this
//! node's empty database (`crate::seed::Load`); streaming then goes on after the snapshot's
//! position, on the same connection.

use tokio::sync::watch;
use tracing::info;

use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::relay::Message;
use crate::seed::{Load, SeedProgress};

use super::connect::Connection;
use super::FollowError;

/// Progress of loading a snapshot (Prometheus gauges).
pub const SEED_TABLES_DONE: &str = "walship_seed_tables_done";
pub const SEED_ROWS: &str = "walship_seed_rows";
pub const SEED_BYTES: &str = "walship_seed_bytes";

/// Loads the leader's snapshot into this node's empty database, in one transaction that also
/// records the snapshot's position; returns that position (`None`: the leader never logged an
/// entry). `term` is the leader's, from the handshake.
pub(super) async fn load(
    connection: &mut Connection,
    postgres: &tokio_postgres::Config,
    term: Term,
    seeding: &watch::Sender<Option<SeedProgress>>,
) -> Result<Option<EntryId>, FollowError> {
    connection.writer.send(&Message::SeedRequest).await?;
    let reader = &mut connection.reader;
    let (position, snapshot_lsn) = begin(reader.next().await?)?;
    info!(position = ?position, snapshot_lsn = %snapshot_lsn, "loading a snapshot from the leader");
    let mut load = Load::begin(postgres, term, position, snapshot_lsn).await?;
    loop {
        match reader.next().await? {
            Some(end @ Message::SeedEnd { .. }) => {
                load.take(end).await?;
                break;
            }
            Some(Message::Error { message }) => return Err(FollowError::Peer(message)),
            Some(message) => load.take(message).await?,
            None => return Err(FollowError::Closed),
        }
        publish(seeding, load.progress());
    }
    let loaded = load.finish().await;
    seeding.send_replace(None);
    let p = loaded?;
    info!(tables = p.tables_done, rows = p.rows, bytes = p.bytes, "snapshot loaded");
    Ok(position.map(|index| EntryId { term, index }))
}

/// The leader's first answer to `SeedRequest`: `SeedBegin`, with the snapshot's position.
fn begin(message: Option<Message>) -> Result<(Option<Index>, Lsn), FollowError> {
    match message {
        Some(Message::SeedBegin { position, snapshot_lsn }) => Ok((position, snapshot_lsn)),
        Some(Message::Error { message }) => Err(FollowError::Peer(message)),
        Some(other) => Err(FollowError::Unexpected(other.name())),
        None => Err(FollowError::Closed),
    }
}

/// Shows a load's progress on `/status` and in the gauges.
fn publish(seeding: &watch::Sender<Option<SeedProgress>>, p: SeedProgress) {
    seeding.send_replace(Some(p));
    metrics::gauge!(SEED_TABLES_DONE).set(f64::from(p.tables_done));
    metrics::gauge!(SEED_ROWS).set(p.rows as f64);
    metrics::gauge!(SEED_BYTES).set(p.bytes as f64);
}
