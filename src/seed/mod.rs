//! Seeding a new follower from a snapshot tied to an exact log position, without stopping the
//! leader: [`Export`] on the leader side, [`Load`] on the follower side. The relay carries what
//! passes between them (`SeedBegin` .. `SeedEnd`, see [`crate::relay`]); this module does no
//! networking of its own.
//!
//! # The snapshot and its position
//!
//! [`Export::begin`] opens a replication connection and creates a TEMPORARY logical slot with
//! `EXPORT_SNAPSHOT`. PostgreSQL returns the slot's consistent point `S`
//! ([`Export::snapshot_lsn`]) and a snapshot name. The snapshot sees exactly the transactions
//! whose commit record starts before `S`; logical decoding (the leader's own slot included)
//! decodes the others. So for the leader's log, whose entries are in commit order:
//!
//! ```text
//! entry.commit_lsn <  S   its effects are in the snapshot     (at or before `position`)
//! entry.commit_lsn >= S   its effects are not                 (after `position`)
//! ```
//!
//! While the replication connection stays open and idle, the snapshot can be imported. Export
//! imports it twice: into an ordinary connection (`BEGIN ISOLATION LEVEL REPEATABLE READ READ
//! ONLY; SET TRANSACTION SNAPSHOT ...`) that reads every table and sequence, and into
//! `pg_dump --schema-only --snapshot=...` for the schema. It then closes the replication
//! connection, which drops the temporary slot; the open transaction keeps the snapshot (and
//! holds back VACUUM on the leader until the export ends).
//!
//! # Choosing `position` (the relay server's job)
//!
//! `SeedBegin.position` is the last log entry at or before the snapshot: the last entry whose
//! `commit_lsn < S`. Only entries of the current leader's term carry LSNs of this server's WAL;
//! entries of older terms came through the database before this node led and are older than any
//! snapshot it exports. Before choosing, wait until the log holds every transaction that
//! committed before `S` (the log's durable end LSN `>= S`), and keep the entries after
//! `position` retained until the follower has them. `None` means no entry was ever logged
//! (the follower then replays from the log's first entry).
//!
//! # What is carried
//!
//! The schema as `pg_dump --schema-only` prints it (without walship's own schema, owners,
//! privileges, tablespaces, security labels, publications and subscriptions), followed by a
//! `setval` for every sequence: sequences are not transactional, so their values are read when
//! the export starts and may run ahead of the snapshot, which is harmless. Then the rows of every
//! table of the publication (its column lists and row filters applied, as PostgreSQL's own
//! table sync does) as COPY text, in pieces of at most [`SEED_DATA_PIECE_BYTES`]. Large objects
//! are not carried (logical decoding does not carry them either).
//!
//! # Loading
//!
//! [`Load`] takes an empty database and loads everything in one transaction, COPY per table
//! with `session_replication_role = replica` (no user triggers, no foreign-key checks: the
//! snapshot is consistent). It checks every table's row count and the totals of `SeedEnd`, and
//! records the position in `walship.progress` in the same transaction, as the applier does
//! after an entry: the database holds either nothing of the seed or all of it together with
//! its position. An error, or dropping the `Load`, commits nothing.
//!
//! Both sides log their progress every [`PROGRESS_LOG_INTERVAL`] and keep memory bounded:
//! COPY data streams through in pieces, never a whole table.

mod catalog;
mod dump;
mod error;
mod export;
mod load;
mod roles;

use std::time::{Duration, Instant};

use tracing::info;

pub use crate::relay::SEED_DATA_PIECE_BYTES;
pub use dump::MAX_SCHEMA_BYTES;
pub use error::SeedError;
pub use export::Export;
pub use load::Load;

/// How often each side logs its progress while seeding.
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// How far a seed has come. On the follower `tables_total` counts the tables announced so far
/// until `SeedEnd` gives the total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeedProgress {
    pub tables_done: u32,
    pub tables_total: u32,
    /// Rows so far, the table in progress included (counted in the COPY text: one line a row).
    pub rows: u64,
    /// Bytes of COPY data so far, the table in progress included.
    pub bytes: u64,
}

/// Logs a side's progress at most every [`PROGRESS_LOG_INTERVAL`].
struct ProgressLog {
    side: &'static str,
    started: Instant,
    last: Instant,
}

impl ProgressLog {
    fn new(side: &'static str) -> ProgressLog {
        let now = Instant::now();
        ProgressLog { side, started: now, last: now }
    }

    fn tick(&mut self, progress: &SeedProgress) {
        if self.last.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last = Instant::now();
            self.log(progress, "seeding");
        }
    }

    fn log(&self, p: &SeedProgress, message: &'static str) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rows_per_second = if seconds > 0.0 { (p.rows as f64 / seconds) as u64 } else { 0 };
        info!(
            side = self.side,
            tables_done = p.tables_done,
            tables_total = p.tables_total,
            rows = p.rows,
            bytes = p.bytes,
            rows_per_second,
            seconds = format_args!("{seconds:.1}"),
            "{message}"
        );
    }
}

#[cfg(test)]
mod tests;
