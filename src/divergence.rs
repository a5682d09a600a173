//! The divergence report: what an old leader committed that the cluster lost (issue 8, item 6).
//!
//! A leader that returns to find a higher term has diverged. Nothing it committed is discarded
//! unreported: before it is re-seeded, every lost transaction is written to a report, one JSON
//! object a line in `walship inspect --json`'s form (`term`, `index`, `commit_lsn`, `xid`,
//! `commit_time`, `end_lsn`, `changes`) plus a `source` key. They come from two places:
//!
//! 1. `"source":"log"`: the entries of its log after the branch point, in index order.
//! 2. `"source":"wal"`, `"index":null`: transactions its PostgreSQL committed that the log never
//!    got (the sidecar died before appending them), in commit order, under the term this node
//!    led in. They are decoded from its logical slot with `pg_logical_slot_peek_binary_changes`,
//!    which does not consume the slot, through the same [`EntryBuilder`] as the leader's source,
//!    and those that start before the log's end are skipped the way a resumed source skips them.
//!    walship's heartbeats are left out; other logical messages are reported (`"kind":"message"`).
//!
//! The log's end is only comparable with the slot's positions when the log's last entry was
//! logged by this node as leader, in `term`: a node promoted at term T made its slot at T, after
//! every entry it had applied, so when the log ends with older terms' entries (their LSNs are
//! another server's) everything the slot still holds is unlogged.
//!
//! Entries are printed record by record, as `walship inspect` does, and the peeked rows are
//! streamed: memory stays bounded for any transaction size. The report appears at its path only
//! whole (written to a temporary file, fsynced, renamed, directory fsynced).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{pin_mut, TryStreamExt};

use crate::error::ErrorClass;
use crate::fsutil::AtomicFile;
use crate::inspect::{EntryPrinter, InspectError, Printed};
use crate::log::committer::Output;
use crate::log::entry::{EntryHeader, EntryKind};
use crate::log::{LogError, LogReader, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::source::builder::{BuildError, EntryBuilder, DEFAULT_SPILL_BYTES};

/// Peeks the slot's pending changes in pgoutput form; `quote_ident` because pgoutput reads
/// `publication_names` as a list of identifiers.
const PEEK_SQL: &str = "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
     'proto_version', '1', 'publication_names', quote_ident($2), 'messages', 'true')";

#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    #[error("log in {dir}: {source}")]
    Log { dir: PathBuf, source: LogError },
    #[error(
        "log in {dir}: it begins at entry {first}, so the lost entries from {from} on, after \
         the branch point, cannot all be reported"
    )]
    Compacted { dir: PathBuf, from: Index, first: Index },
    #[error("log entry: {0}")]
    Entry(InspectError),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(tokio_postgres::Error),
    #[error("peeking slot {slot}: {source}")]
    Peek { slot: String, source: tokio_postgres::Error },
    #[error("slot {slot}: change at {lsn}: {source}")]
    Decode { slot: String, lsn: Lsn, source: BuildError },
    #[error("slot {slot}: transaction ending at {end_lsn}: {source}")]
    Wal { slot: String, end_lsn: Lsn, source: InspectError },
    #[error("writing report {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the log reading task failed")]
    Task,
}

impl DivergenceError {
    /// Whether writing the report again may succeed. Until it does, the node must stay fenced
    /// and keep its log and slot: nothing may be re-seeded before the report exists.
    pub fn class(&self) -> ErrorClass {
        let of_pg =
            |e: &tokio_postgres::Error| e.code().map_or(ErrorClass::Retry, |c| ErrorClass::of_sqlstate(c.code()));
        match self {
            DivergenceError::Connect(e) => of_pg(e),
            // An active slot (55006) is retried: the old source may still be letting go of it.
            DivergenceError::Peek { source, .. } => of_pg(source),
            DivergenceError::Write { .. } | DivergenceError::Task => ErrorClass::Retry,
            DivergenceError::Log { .. }
            | DivergenceError::Compacted { .. }
            | DivergenceError::Entry(_)
            | DivergenceError::Decode { .. }
            | DivergenceError::Wal { .. } => ErrorClass::Operator,
        }
    }
}

/// What to report and where it comes from.
#[derive(Clone, Copy, Debug)]
pub struct Divergence<'a> {
    /// The term this node led in; WAL-only transactions are reported under it.
    pub term: Term,
    /// The node's log directory.
    pub log_dir: &'a Path,
    /// The last entry the cluster shares with this log ([`crate::log::terms::TermHistory::branch_point`]);
    /// `None` when it shares none: every entry the log holds is reported. When entries after
    /// the branch point were removed from the log, the report fails rather than omit them.
    pub branch_point: Option<Index>,
    /// The node's own PostgreSQL, on the database of its slot, as a role that may use the slot.
    pub pg: &'a tokio_postgres::Config,
    pub slot: &'a str,
    pub publication: &'a str,
}

/// What a report holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportSummary {
    pub path: PathBuf,
    /// Entries of the log after the branch point (transactions and logical messages).
    pub log_entries: u64,
    /// Transactions (and logical messages) only the WAL holds.
    pub wal_transactions: u64,
    /// Changes printed over all of them.
    pub rows: u64,
}

impl ReportSummary {
    fn count(&mut self, printed: Printed, from_log: bool) {
        if from_log {
            self.log_entries += 1;
        } else {
            self.wal_transactions += 1;
        }
        self.rows += printed.changes as u64;
    }
}

/// `data_dir/divergent-<term>-<unix seconds>.jsonl`.
pub fn report_path(data_dir: &Path, term: Term, now: SystemTime) -> PathBuf {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    data_dir.join(format!("divergent-{term}-{secs}.jsonl"))
}

/// Writes the report of `divergence` to `path`; the slot is read, never consumed. The slot must
/// not be in use by a replication connection (PostgreSQL refuses to decode an active slot).
pub async fn write_report(divergence: &Divergence<'_>, path: &Path) -> Result<ReportSummary, DivergenceError> {
    let write_err = |source| DivergenceError::Write { path: path.to_path_buf(), source };
    let file = AtomicFile::create(path).map_err(write_err)?;
    let summary = ReportSummary { path: path.to_path_buf(), ..ReportSummary::default() };
    let (dir, branch_point, term) = (divergence.log_dir.to_path_buf(), divergence.branch_point, divergence.term);
    // Log files are read with blocking I/O, off the async threads.
    let (mut file, mut summary, log_end) = tokio::task::spawn_blocking(move || -> Result<_, DivergenceError> {
        let (mut file, mut summary) = (file, summary);
        let log_end = report_log(&dir, branch_point, term, &mut file, &mut summary)?;
        Ok((file, summary, log_end))
    })
    .await
    .map_err(|_| DivergenceError::Task)??;
    report_wal(divergence, log_end, &mut file, &mut summary).await?;
    file.commit().map_err(write_err)?;
    Ok(summary)
}

/// Prints the log's entries after `branch_point`. Returns the WAL position from which the slot's
/// transactions are unlogged: the last entry's `end_lsn` when it is of `term`, else zero.
fn report_log(
    dir: &Path,
    branch_point: Option<Index>,
    term: Term,
    out: &mut AtomicFile,
    summary: &mut ReportSummary,
) -> Result<Lsn, DivergenceError> {
    let log_err = |source| DivergenceError::Log { dir: dir.to_path_buf(), source };
    let after = branch_point.unwrap_or(Index(0));
    // From the branch point itself when it is there: its entry may be the log's last, whose
    // end the WAL part needs.
    let mut reader = match LogReader::open_offline(dir, Index(after.0.max(1))) {
        Err(LogError::Compacted { first, .. }) if first <= after.next() || branch_point.is_none() => {
            LogReader::open_offline(dir, first).map_err(log_err)?
        }
        Err(LogError::Compacted { first, .. }) => {
            return Err(DivergenceError::Compacted { dir: dir.to_path_buf(), from: after.next(), first })
        }
        Err(LogError::BeyondEnd { next, .. }) => {
            LogReader::open_offline(dir, Index(next.0.saturating_sub(1).max(1))).map_err(log_err)?
        }
        other => other.map_err(log_err)?,
    };
    let mut printer = EntryPrinter::json_from("log", true);
    let mut last: Option<(EntryId, Lsn)> = None;
    while let Some(record) = reader.next().map_err(log_err)? {
        if record.kind == RecordKind::Entry {
            let header = EntryHeader::decode(&record.payload)
                .map_err(|source| DivergenceError::Entry(InspectError::Entry { id: record.id, source }))?;
            last = Some((record.id, header.end_lsn));
        }
        if record.id.index <= after {
            continue;
        }
        if let Some(printed) =
            printer.record(record.id, record.kind, &record.payload, out).map_err(DivergenceError::Entry)?
        {
            summary.count(printed, true);
        }
    }
    Ok(match last {
        Some((id, end_lsn)) if id.term == term => end_lsn,
        _ => Lsn::ZERO,
    })
}

/// Prints the transactions the slot holds that commit at or after `log_end`.
async fn report_wal(
    divergence: &Divergence<'_>,
    log_end: Lsn,
    out: &mut AtomicFile,
    summary: &mut ReportSummary,
) -> Result<(), DivergenceError> {
    let slot = divergence.slot;
    let client = crate::sql::connect(divergence.pg).await.map_err(DivergenceError::Connect)?;
    let peek_err = |source| DivergenceError::Peek { slot: slot.to_owned(), source };
    let rows = client.query_raw(PEEK_SQL, [slot, divergence.publication]).await.map_err(peek_err)?;
    pin_mut!(rows);
    // Indexes are the builder's own count; the printer shows them as null.
    let mut builder = EntryBuilder::new(divergence.term, Index(1), log_end, DEFAULT_SPILL_BYTES);
    let mut printer = EntryPrinter::json_from("wal", false);
    let mut outputs = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(peek_err)? {
        let lsn: tokio_postgres::types::PgLsn = row.try_get(0).map_err(peek_err)?;
        let data: &[u8] = row.try_get(1).map_err(peek_err)?;
        let lsn = Lsn(u64::from(lsn));
        builder.push(data, &mut outputs).map_err(|source| DivergenceError::Decode {
            slot: slot.to_owned(),
            lsn,
            source,
        })?;
        for output in outputs.drain(..) {
            let (id, kind, payload, end_lsn) = match output {
                Output::Chunk { id, payload } => (id, RecordKind::Chunk, payload, lsn),
                Output::Entry { id, payload, end_lsn } => (id, RecordKind::Entry, payload, end_lsn),
            };
            let wal_err = |source| DivergenceError::Wal { slot: slot.to_owned(), end_lsn, source };
            if let Some(printed) = printer.record(id, kind, &payload, out).map_err(wal_err)? {
                if printed.kind != EntryKind::Heartbeat {
                    summary.count(printed, false);
                }
            }
        }
    }
    out.flush().map_err(|source| DivergenceError::Write { path: summary.path.clone(), source })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::log::entry::HEADER_BYTES;
    use crate::log::{Log, LogOptions};

    /// A log of `count` empty transactions of `term`, entry i ending at LSN i * 0x100, in
    /// segments of about two entries.
    fn log_of(dir: &Path, term: Term, count: u64) -> Log {
        let mut log = Log::open(dir, LogOptions { segment_bytes: 100 }).unwrap();
        for i in 1..=count {
            let mut payload = BytesMut::zeroed(HEADER_BYTES);
            let header = EntryHeader {
                kind: EntryKind::Transaction,
                commit_lsn: Lsn(i * 0x100 - 0x10),
                end_lsn: Lsn(i * 0x100),
                commit_time: 0,
                xid: i as u32,
            };
            header.write_into(&mut payload);
            log.append_entry(EntryId { term, index: Index(i) }, &payload).unwrap();
        }
        log.flush().unwrap();
        log
    }

    fn report(dir: &Path, branch_point: Option<Index>, term: Term) -> Result<(Lsn, Vec<u64>), DivergenceError> {
        let out_dir = tempfile::tempdir().unwrap();
        let path = out_dir.path().join("r.jsonl");
        let mut out = AtomicFile::create(&path).unwrap();
        let mut summary = ReportSummary::default();
        let end = report_log(dir, branch_point, term, &mut out, &mut summary)?;
        out.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let indexes = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["index"].as_u64().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(summary.log_entries, indexes.len() as u64);
        Ok((end, indexes))
    }

    #[test]
    fn the_log_part_is_what_follows_the_branch_point() {
        let dir = tempfile::tempdir().unwrap();
        let _log = log_of(dir.path(), Term(2), 5);
        assert_eq!(report(dir.path(), Some(Index(3)), Term(2)).unwrap(), (Lsn(0x500), vec![4, 5]));
        assert_eq!(report(dir.path(), None, Term(2)).unwrap(), (Lsn(0x500), vec![1, 2, 3, 4, 5]));
        // At or past the end: nothing from the log, and still its end for the WAL part.
        assert_eq!(report(dir.path(), Some(Index(5)), Term(2)).unwrap(), (Lsn(0x500), vec![]));
        assert_eq!(report(dir.path(), Some(Index(9)), Term(2)).unwrap(), (Lsn(0x500), vec![]));
        // A log ending in another term than the slot's: its LSNs say nothing about the slot.
        assert_eq!(report(dir.path(), Some(Index(3)), Term(3)).unwrap(), (Lsn::ZERO, vec![4, 5]));
    }

    #[test]
    fn an_empty_log_reports_nothing_and_leaves_the_whole_slot_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let _log = Log::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(report(dir.path(), None, Term(2)).unwrap(), (Lsn::ZERO, vec![]));
    }

    #[test]
    fn lost_entries_removed_from_the_log_fail_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_of(dir.path(), Term(2), 8);
        log.remove_before(Index(5)).unwrap();
        let first = log.first_index().unwrap();
        assert!(first > Index(2) && first <= Index(5), "{first}");
        let err = report(dir.path(), Some(Index(1)), Term(2)).unwrap_err();
        assert!(matches!(err, DivergenceError::Compacted { from: Index(2), .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Operator);
        // What follows a branch point just before the first retained entry is all there.
        let expected: Vec<u64> = (first.0..=8).collect();
        assert_eq!(report(dir.path(), Some(Index(first.0 - 1)), Term(2)).unwrap().1, expected);
        assert_eq!(report(dir.path(), None, Term(2)).unwrap().1, expected);
    }
}
