//! Recent entries' leader commit times and WAL end positions, by index: what lag is measured
//! against. The committer records each entry once it is durable; the admin API reads them when
//! it is scraped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::lsn::{Index, Lsn};

/// Entries remembered; lag for a follower further behind is measured from the oldest one.
pub const MARKS_KEPT: usize = 1 << 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub index: Index,
    /// Leader commit time, microseconds since 2000-01-01 (heartbeats: when emitted).
    pub commit_time: i64,
    pub end_lsn: Lsn,
}

#[derive(Clone, Debug, Default)]
pub struct EntryMarks {
    inner: Arc<Mutex<VecDeque<Mark>>>,
}

impl EntryMarks {
    pub fn record(&self, mark: Mark) {
        if let Ok(mut marks) = self.inner.lock() {
            if marks.back().is_some_and(|last| last.index >= mark.index) {
                marks.clear(); // the log was truncated: start over
            }
            if marks.len() == MARKS_KEPT {
                marks.pop_front();
            }
            marks.push_back(mark);
        }
    }

    /// The mark of `index`, or of the oldest entry kept when `index` is older; `None` when
    /// `index` is past the newest.
    pub fn at_or_oldest(&self, index: Index) -> Option<Mark> {
        let marks = self.inner.lock().ok()?;
        let first = marks.front()?;
        if index < first.index {
            return Some(*first);
        }
        let offset = usize::try_from(index.0 - first.index.0).ok()?;
        marks.get(offset).copied()
    }

    pub fn newest(&self) -> Option<Mark> {
        self.inner.lock().ok()?.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(i: u64) -> Mark {
        Mark { index: Index(i), commit_time: i as i64 * 10, end_lsn: Lsn(i * 100) }
    }

    #[test]
    fn marks_are_found_by_index_and_bounded() {
        let marks = EntryMarks::default();
        for i in 5..10 {
            marks.record(mark(i));
        }
        assert_eq!(marks.at_or_oldest(Index(7)), Some(mark(7)));
        assert_eq!(marks.at_or_oldest(Index(2)), Some(mark(5)));
        assert_eq!(marks.at_or_oldest(Index(10)), None);
        assert_eq!(marks.newest(), Some(mark(9)));
        marks.record(mark(3)); // after a truncation
        assert_eq!(marks.newest(), Some(mark(3)));
        assert_eq!(marks.at_or_oldest(Index(1)), Some(mark(3)));
    }
}
