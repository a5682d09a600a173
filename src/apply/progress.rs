//! `walship.progress`: the last entry whose changes are committed in this database.
//!
//! The row is written by the same database transaction as the entry's changes, so after a
//! crash at any point it names exactly the last entry that took effect.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::Row;

use crate::lsn::{EntryId, Index, Lsn, Term, PG_EPOCH_OFFSET_MICROS};

/// The last entry applied: its id and the leader positions it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedPosition {
    pub id: EntryId,
    /// The leader WAL position just past the entry.
    pub end_lsn: Lsn,
    /// Leader commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

pub(super) const SELECT: &str =
    "SELECT term, applied_index, end_lsn, commit_time FROM walship.progress WHERE singleton";

/// Records `$1..$4` as applied, only if the row still names the entry this applier last
/// committed (`$5`, `$6`; both NULL when none): two appliers racing on one database, or a
/// writer behind the applier's back, make it touch no row instead of applying twice.
pub(super) const UPSERT: &str = "INSERT INTO walship.progress AS p \
     (singleton, term, applied_index, end_lsn, commit_time, updated_at) \
     VALUES (true, $1, $2, $3, $4, now()) \
     ON CONFLICT (singleton) DO UPDATE SET term = excluded.term, \
     applied_index = excluded.applied_index, end_lsn = excluded.end_lsn, \
     commit_time = excluded.commit_time, updated_at = excluded.updated_at \
     WHERE p.term = $5 AND p.applied_index = $6";

/// [`UPSERT`] whatever the row held before: for a database that is the source of every entry
/// through the one recorded (a former leader about to follow).
pub(super) const OVERWRITE: &str = "INSERT INTO walship.progress AS p \
     (singleton, term, applied_index, end_lsn, commit_time, updated_at) \
     VALUES (true, $1, $2, $3, $4, now()) \
     ON CONFLICT (singleton) DO UPDATE SET term = excluded.term, \
     applied_index = excluded.applied_index, end_lsn = excluded.end_lsn, \
     commit_time = excluded.commit_time, updated_at = excluded.updated_at";

/// A parameter the pipeline can own.
pub(super) type OwnedParam = Box<dyn ToSql + Send + Sync>;

/// Parameters of [`UPSERT`]: the entry now applied, after `previous`. Terms and indexes are
/// stored as `bigint`: they stay far below 2^63 for the life of any cluster.
pub(super) fn upsert_params(position: &AppliedPosition, previous: Option<EntryId>) -> Vec<OwnedParam> {
    vec![
        Box::new(position.id.term.0 as i64),
        Box::new(position.id.index.0 as i64),
        Box::new(PgLsn::from(position.end_lsn.0)),
        Box::new(pg_micros_to_time(position.commit_time)),
        Box::new(previous.map(|p| p.term.0 as i64)),
        Box::new(previous.map(|p| p.index.0 as i64)),
    ]
}

pub(super) fn from_row(row: &Row) -> Result<AppliedPosition, tokio_postgres::Error> {
    let term: i64 = row.try_get(0)?;
    let index: i64 = row.try_get(1)?;
    let end_lsn: PgLsn = row.try_get(2)?;
    let commit_time: SystemTime = row.try_get(3)?;
    Ok(AppliedPosition {
        id: EntryId { term: Term(term as u64), index: Index(index as u64) },
        end_lsn: Lsn(u64::from(end_lsn)),
        commit_time: time_to_pg_micros(commit_time),
    })
}

pub(super) fn pg_micros_to_time(pg_micros: i64) -> SystemTime {
    let unix = pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS);
    let magnitude = Duration::from_micros(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

pub(super) fn time_to_pg_micros(time: SystemTime) -> i64 {
    let unix = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    unix.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_round_trip() {
        for micros in [0, 1, -1, 770_000_000_123_456, -PG_EPOCH_OFFSET_MICROS - 5] {
            assert_eq!(time_to_pg_micros(pg_micros_to_time(micros)), micros);
        }
        assert_eq!(pg_micros_to_time(-PG_EPOCH_OFFSET_MICROS), UNIX_EPOCH);
    }
}
