//! The term history: where each term begins in the replicated log, as PostgreSQL's timeline
//! history files say where each timeline branched off.
//!
//! A history is a list of `(term, first_index)`, terms strictly increasing and first indexes
//! never decreasing: entry `i` belongs to the last term whose `first_index <= i`. The log
//! records a start just before it writes the first record of a newer term, whoever appends it
//! (the leader its own entries, a follower its leader's: [`TermHistory::observe`]). The file
//! (`terms.json` beside the segments) is replaced crash-safely. It describes the log's
//! entries: a truncation forgets the starts after the cut, and so does opening a log whose
//! torn tail took the first records of a term with it.
//!
//! Only one leader exists per term, and a leader only appends, so two logs that hold the same
//! term at the same index hold the same entries up to it (Raft's log matching property). Two
//! histories therefore say where two logs part: [`TermHistory::branch_point`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::lsn::{EntryId, Index, Term};

pub const TERMS_FILE: &str = "terms.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermStart {
    pub term: Term,
    pub first_index: Index,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermHistory {
    starts: Vec<TermStart>,
}

#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("term {term} cannot begin at index {first_index}: the history ends with term {last_term} from index {last_first_index}")]
    OutOfOrder { term: Term, first_index: Index, last_term: Term, last_first_index: Index },
}

#[derive(Serialize, Deserialize)]
struct TermsFile {
    version: u32,
    starts: Vec<StoredStart>,
}

#[derive(Serialize, Deserialize)]
struct StoredStart {
    term: u64,
    first_index: u64,
}

const VERSION: u32 = 1;

impl TermHistory {
    /// A history from its starts, checked for order.
    pub fn from_starts(starts: Vec<TermStart>) -> Result<TermHistory, TermsError> {
        let mut history = TermHistory::default();
        for start in starts {
            history.begin(start.term, start.first_index)?;
        }
        Ok(history)
    }

    pub fn starts(&self) -> &[TermStart] {
        &self.starts
    }

    /// The newest term, `None` for an empty history.
    pub fn last_term(&self) -> Option<Term> {
        self.starts.last().map(|s| s.term)
    }

    /// Records that `term` begins at `first_index`. Fails unless `term` is newer than every term
    /// in the history and `first_index` is not before the newest term's start.
    pub fn begin(&mut self, term: Term, first_index: Index) -> Result<(), TermsError> {
        if let Some(last) = self.starts.last() {
            if term <= last.term || first_index < last.first_index {
                return Err(TermsError::OutOfOrder {
                    term,
                    first_index,
                    last_term: last.term,
                    last_first_index: last.first_index,
                });
            }
        }
        self.starts.push(TermStart { term, first_index });
        Ok(())
    }

    /// Takes note of an entry about to be appended: the first entry of a newer term begins it.
    /// Returns whether the history changed (and must be saved before the entry is written).
    /// An entry of an older term than the newest is refused: no node appends one.
    pub fn observe(&mut self, id: EntryId) -> Result<bool, TermsError> {
        match self.starts.last() {
            Some(last) if id.term == last.term => Ok(false),
            _ => self.begin(id.term, id.index).map(|()| true),
        }
    }

    /// Forgets the terms that begin after `index`, for a log truncated there. Returns whether
    /// the history changed.
    pub fn truncate_after(&mut self, index: Index) -> bool {
        let before = self.starts.len();
        self.starts.retain(|s| s.first_index <= index);
        self.starts.len() != before
    }

    /// The term of the entry at `index` by this history; `None` before the first start.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.starts.iter().rev().find(|s| s.first_index <= index).map(|s| s.term)
    }

    /// The last index at which a log with this history (holding entries up to `own_last`) and
    /// another (its `history`, holding entries up to `other_last`) hold the same entry; entries
    /// after it differ or exist in one log only. `None` when they share no entry.
    pub fn branch_point(&self, own_last: Index, other: &TermHistory, other_last: Index) -> Option<Index> {
        let end = own_last.min(other_last);
        // The terms change only at starts: check the spans between the starts of both.
        let mut bounds: Vec<Index> =
            self.starts.iter().chain(&other.starts).map(|s| s.first_index).filter(|&i| i <= end).collect();
        bounds.push(end.next());
        bounds.sort_unstable();
        bounds.dedup();
        let mut shared = None;
        for span in bounds.windows(2) {
            let (from, to) = (span[0], span[1]);
            if !self.agrees(other, from) {
                break;
            }
            shared = Some(Index(to.0 - 1));
        }
        shared
    }

    /// Whether both histories can hold the same entry at `index`. Before a history's first
    /// start its log holds no entries: what it has came with a snapshot taken at or before
    /// that start, from entries of that term or older, so it agrees with any of those.
    fn agrees(&self, other: &TermHistory, index: Index) -> bool {
        let first = |h: &TermHistory| h.starts.first().map(|s| s.term);
        match (self.term_at(index), other.term_at(index)) {
            (Some(a), Some(b)) => a == b,
            (None, Some(b)) => first(self).is_none_or(|f| b <= f),
            (Some(a), None) => first(other).is_none_or(|f| a <= f),
            (None, None) => true,
        }
    }

    /// Reads `data_dir/terms.json`; an empty history when there is none yet.
    pub fn load(data_dir: &Path) -> Result<TermHistory, TermsError> {
        let path = data_dir.join(TERMS_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TermHistory::default()),
            Err(source) => return Err(TermsError::Io { path, source }),
        };
        let damaged = |reason: String| TermsError::Damaged { path: path.clone(), reason };
        let file: TermsFile = serde_json::from_slice(&text).map_err(|e| damaged(e.to_string()))?;
        if file.version != VERSION {
            return Err(damaged(format!("unknown version {}", file.version)));
        }
        let starts =
            file.starts.iter().map(|s| TermStart { term: Term(s.term), first_index: Index(s.first_index) }).collect();
        TermHistory::from_starts(starts).map_err(|e| damaged(e.to_string()))
    }

    /// Replaces `data_dir/terms.json` crash-safely.
    pub fn save(&self, data_dir: &Path) -> Result<(), TermsError> {
        let path = data_dir.join(TERMS_FILE);
        let starts = self.starts.iter().map(|s| StoredStart { term: s.term.0, first_index: s.first_index.0 }).collect();
        let file = TermsFile { version: VERSION, starts };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| TermsError::Damaged { path: path.clone(), reason: e.to_string() })?;
        write_atomic(&path, &text).map_err(|source| TermsError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(starts: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_starts(
            starts.iter().map(|&(t, i)| TermStart { term: Term(t), first_index: Index(i) }).collect(),
        )
        .unwrap()
    }

    fn id(term: u64, index: u64) -> EntryId {
        EntryId { term: Term(term), index: Index(index) }
    }

    #[test]
    fn entries_belong_to_the_last_term_begun_at_or_before_them() {
        let h = history(&[(1, 1), (2, 101), (3, 101), (5, 250)]);
        assert_eq!(h.term_at(Index(0)), None);
        assert_eq!(h.term_at(Index(1)), Some(Term(1)));
        assert_eq!(h.term_at(Index(100)), Some(Term(1)));
        assert_eq!(h.term_at(Index(101)), Some(Term(3)), "term 2 produced no entry");
        assert_eq!(h.term_at(Index(249)), Some(Term(3)));
        assert_eq!(h.term_at(Index(9999)), Some(Term(5)));
        assert_eq!(h.last_term(), Some(Term(5)));
    }

    #[test]
    fn terms_only_grow_and_never_begin_before_the_last() {
        let mut h = history(&[(1, 1), (2, 50)]);
        assert!(matches!(h.begin(Term(2), Index(60)), Err(TermsError::OutOfOrder { .. })));
        assert!(matches!(h.begin(Term(1), Index(60)), Err(TermsError::OutOfOrder { .. })));
        assert!(matches!(h.begin(Term(3), Index(49)), Err(TermsError::OutOfOrder { .. })));
        h.begin(Term(3), Index(50)).unwrap();
        assert!(TermHistory::from_starts(vec![
            TermStart { term: Term(2), first_index: Index(5) },
            TermStart { term: Term(1), first_index: Index(9) },
        ])
        .is_err());
    }

    #[test]
    fn a_follower_records_a_term_at_its_first_entry() {
        let mut h = TermHistory::default();
        assert!(h.observe(id(1, 1)).unwrap());
        assert!(!h.observe(id(1, 2)).unwrap());
        assert!(h.observe(id(4, 3)).unwrap());
        assert!(!h.observe(id(4, 4)).unwrap());
        assert!(h.observe(id(3, 5)).is_err(), "an entry of an older term is never appended");
        assert_eq!(h, history(&[(1, 1), (4, 3)]));
    }

    #[test]
    fn branch_point_is_the_last_index_both_logs_hold_alike() {
        let leader = history(&[(1, 1), (2, 101)]);
        // A follower that stopped inside term 1 is a prefix: nothing diverged.
        assert_eq!(leader.branch_point(Index(150), &history(&[(1, 1)]), Index(90)), Some(Index(90)));
        // The old leader wrote 101..=105 in term 1 that the new leader never got.
        assert_eq!(leader.branch_point(Index(150), &history(&[(1, 1)]), Index(105)), Some(Index(100)));
        // Symmetric.
        assert_eq!(history(&[(1, 1)]).branch_point(Index(105), &leader, Index(150)), Some(Index(100)));
        // Logs that agree to the end of the shorter one.
        assert_eq!(leader.branch_point(Index(150), &leader, Index(120)), Some(Index(120)));
        // Two branches off term 2: 3 from 200 and 4 from 180.
        let a = history(&[(1, 1), (2, 101), (3, 200)]);
        let b = history(&[(1, 1), (2, 101), (4, 180)]);
        assert_eq!(a.branch_point(Index(300), &b, Index(300)), Some(Index(179)));
        // A follower seeded from a snapshot at 499 knows no term before 500.
        let seeded = history(&[(1, 500)]);
        assert_eq!(leader.branch_point(Index(600), &seeded, Index(520)), Some(Index(100)));
        assert_eq!(history(&[(1, 1)]).branch_point(Index(600), &seeded, Index(520)), Some(Index(520)));
        // Nothing in common.
        assert_eq!(history(&[(2, 1)]).branch_point(Index(10), &history(&[(1, 1)]), Index(10)), None);
        assert_eq!(leader.branch_point(Index(150), &TermHistory::default(), Index(0)), None);
    }

    #[test]
    fn the_history_file_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TermHistory::load(dir.path()).unwrap(), TermHistory::default());
        let h = history(&[(1, 1), (3, 77)]);
        h.save(dir.path()).unwrap();
        assert_eq!(TermHistory::load(dir.path()).unwrap(), h);
        let path = dir.path().join(TERMS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("77", "0")).unwrap();
        assert!(matches!(TermHistory::load(dir.path()), Err(TermsError::Damaged { .. })), "out of order");
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(TermHistory::load(dir.path()), Err(TermsError::Damaged { .. })));
    }
}
