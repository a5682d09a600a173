//! Positions.
//!
//! Two kinds of position exist in walship and they are never mixed:
//!
//! - [`Lsn`]: a byte position in *one* PostgreSQL server's write-ahead log. LSNs of different
//!   leaders are unrelated; they are only ever compared with LSNs of the same server.
//! - [`Index`] and [`Term`]: the position of an entry in walship's replicated log, the same on
//!   every node. `index` grows by one per entry for the whole life of the cluster, `term` grows by
//!   one at every promotion. [`EntryId`] is the pair.
//!
//! Fields that hold a position say which stage it belongs to (`received_index`,
//! `flushed_index`, `applied_index`), never a bare `index`.
//!
//! Times travel as microseconds: PostgreSQL's (since 2000-01-01, as commit timestamps and
//! standby status updates carry them) or Unix's; [`now_pg_micros`] and [`unix_micros_now`]
//! read the clock in each.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL write-ahead log position, displayed as PostgreSQL does (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/'")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Position of an entry in the replicated log. The first entry of a cluster has index 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Index(pub u64);

impl Index {
    pub fn next(self) -> Index {
        Index(self.0 + 1)
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Leadership epoch: grows by one at every promotion. The first leader of a cluster has term 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The address of one log entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub term: Term,
    pub index: Index,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.index)
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Now, in PostgreSQL's microseconds since 2000-01-01.
pub fn now_pg_micros() -> i64 {
    unix_micros_now() - PG_EPOCH_OFFSET_MICROS
}

/// Now, in microseconds since the Unix epoch.
pub fn unix_micros_now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for (text, value) in [("0/0", 0), ("16/B374D848", 0x16_B374_D848), ("FFFFFFFF/FFFFFFFF", u64::MAX)] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for text in ["", "0", "/", "1/", "/1", "G/0", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} parsed");
        }
    }
}
