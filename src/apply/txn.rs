//! The state of the apply transaction, without I/O: which entries the open database
//! transaction holds, whether it may commit, and what an error in it can say.
//!
//! ```text
//!             first record (BEGIN sent)            commit (COMMIT sent)
//!   +------+ ------------------------> +------+ ----------------------> +------------+
//!   | Idle |                           | Open |                         | Committing |
//!   +------+ <------------------------ +------+                         +------------+
//!      ^        error (ROLLBACK)        |    ^                                |
//!      |                                +----+ next record                    |
//!      +--------------------- COMMIT returned, or error (ROLLBACK) -----------+
//! ```
//!
//! - [`Txn::Idle`]: no database transaction is open; every entry applied is committed.
//! - [`Txn::Open`]: BEGIN was sent and entries `first..=last` have records in the
//!   transaction. While `last` is applied only in part (its chunks, `inside_entry`) the
//!   transaction may not commit. `staged` is the last entry applied in full, whose progress
//!   the commit records.
//! - [`Txn::Committing`]: COMMIT was sent, after every earlier result was checked, so an
//!   error now (a deferred constraint) belongs to any of the transaction's entries. Entered
//!   only between entries, and left, to `Idle`, before another record is applied.
//!
//! Any error rolls the transaction back, from `Open` or `Committing`, to `Idle`.

use super::progress::AppliedPosition;
use crate::lsn::EntryId;

#[derive(Debug, Default)]
pub(super) enum Txn {
    #[default]
    Idle,
    Open(OpenTxn),
    Committing(OpenTxn),
}

/// What an open transaction holds.
#[derive(Debug)]
pub(super) struct OpenTxn {
    /// The first and the last entry with records in the transaction.
    pub first: EntryId,
    pub last: EntryId,
    /// `last` is applied only in part: its closing record is still to come.
    pub inside_entry: bool,
    /// The last entry applied in full, committed with the transaction.
    pub staged: Option<AppliedPosition>,
    /// Changes may have reached the database in another order than the log's, or several
    /// in one statement: an error cannot name the first change at fault.
    pub reordered: bool,
}

impl Txn {
    pub fn is_idle(&self) -> bool {
        matches!(self, Txn::Idle)
    }

    /// The open transaction, committing or not.
    pub fn open(&self) -> Option<&OpenTxn> {
        match self {
            Txn::Idle => None,
            Txn::Open(open) | Txn::Committing(open) => Some(open),
        }
    }

    pub fn is_committing(&self) -> bool {
        matches!(self, Txn::Committing(_))
    }

    /// The entry whose chunks are being applied, if one is.
    pub fn inside_entry(&self) -> Option<EntryId> {
        self.open().filter(|open| open.inside_entry).map(|open| open.last)
    }

    /// The last entry applied in full in the open transaction.
    pub fn staged(&self) -> Option<AppliedPosition> {
        self.open().and_then(|open| open.staged)
    }

    /// A record of `entry` goes into the transaction, a chunk leaving the entry open: `Idle`
    /// (once BEGIN is sent) becomes `Open`. No record is applied while `Committing`.
    pub fn record(&mut self, entry: EntryId, chunk: bool) {
        match self {
            Txn::Idle => {
                *self = Txn::Open(OpenTxn {
                    first: entry,
                    last: entry,
                    inside_entry: chunk,
                    staged: None,
                    reordered: false,
                })
            }
            Txn::Open(open) => {
                open.last = entry;
                open.inside_entry |= chunk;
            }
            Txn::Committing(_) => {}
        }
    }

    /// The closing record of the transaction's last entry is applied.
    pub fn entry_applied(&mut self, position: AppliedPosition) {
        if let Txn::Open(open) = self {
            open.inside_entry = false;
            open.staged = Some(position);
        }
    }

    /// Changes of the open transaction may now reach the database out of log order.
    pub fn reordered(&mut self) {
        if let Txn::Open(open) = self {
            open.reordered = true;
        }
    }

    /// COMMIT is being sent: `Open` becomes `Committing`.
    pub fn commit_sent(&mut self) {
        if let Txn::Open(open) = std::mem::take(self) {
            *self = Txn::Committing(open);
        }
    }

    /// The transaction ended, committed or rolled back: back to `Idle`. Returns what it held,
    /// if one was open.
    pub fn end(&mut self) -> Option<OpenTxn> {
        match std::mem::take(self) {
            Txn::Idle => None,
            Txn::Open(open) | Txn::Committing(open) => Some(open),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Index, Lsn, Term};

    fn id(index: u64) -> EntryId {
        EntryId { term: Term(1), index: Index(index) }
    }

    fn position(index: u64) -> AppliedPosition {
        AppliedPosition { id: id(index), end_lsn: Lsn(index), commit_time: 0 }
    }

    #[test]
    fn chunks_keep_the_entry_open_until_its_closing_record() {
        let mut txn = Txn::default();
        txn.record(id(5), true);
        assert_eq!(txn.inside_entry(), Some(id(5)));
        txn.record(id(5), false);
        assert_eq!(txn.inside_entry(), Some(id(5)));
        txn.entry_applied(position(5));
        assert_eq!((txn.inside_entry(), txn.staged()), (None, Some(position(5))));
        txn.record(id(6), false);
        txn.entry_applied(position(6));
        let open = txn.open().map(|o| (o.first, o.last, o.staged));
        assert_eq!(open, Some((id(5), id(6), Some(position(6)))));
    }

    #[test]
    fn commit_goes_through_committing_to_idle() {
        let mut txn = Txn::default();
        txn.record(id(1), false);
        txn.reordered();
        txn.entry_applied(position(1));
        txn.commit_sent();
        assert!(txn.is_committing());
        assert!(txn.open().is_some_and(|o| o.reordered));
        let ended = txn.end();
        assert_eq!(ended.and_then(|o| o.staged), Some(position(1)));
        assert!(txn.is_idle());
        assert!(txn.end().is_none());
        txn.record(id(2), false);
        assert!(txn.open().is_some_and(|o| !o.reordered && o.first == id(2)));
    }
}
