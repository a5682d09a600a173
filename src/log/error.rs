//! Errors of the log layer.

use std::io;
use std::path::{Path, PathBuf};

use crate::lsn::{EntryId, Index};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call on a file or directory failed.
    #[error("log i/o error: {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A read or write at a known offset failed.
    #[error("log i/o error: {op} {} at offset {offset}", path.display())]
    IoAt {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// The bytes on disk are not a valid log: needs an operator.
    #[error("corrupt log segment {} at offset {offset}: {reason}", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },

    /// The requested entries were removed by retention.
    #[error("log entry {requested} was removed by retention; the oldest retained entry is {first}")]
    Compacted { requested: Index, first: Index },

    /// A reader was asked to start past the end of the log.
    #[error("log has no entry {requested}; the next entry to be written is {next}")]
    BeyondEnd { requested: Index, next: Index },

    /// An append would not keep indexes contiguous.
    #[error("log append of entry {got} out of order: expected index {expected}")]
    NotContiguous { expected: Index, got: EntryId },

    /// An append would make the term go backwards.
    #[error("log append of entry {got} has a lower term than the last entry {last}")]
    TermRegressed { last: EntryId, got: EntryId },

    /// A record of another entry was appended while an entry's chunks were open.
    #[error("log append of entry {got} while entry {open} is unfinished (chunks without closing record)")]
    EntryInProgress { open: EntryId, got: EntryId },

    /// Index 0 does not exist, and `u64::MAX` has no successor.
    #[error("log entry index {0} is out of range")]
    IndexOutOfRange(Index),

    /// A record body would exceed the format's maximum.
    #[error("log record of entry {id} would be {body_len} bytes, more than the maximum {max}")]
    RecordTooLarge { id: EntryId, body_len: usize, max: usize },

    /// The log was truncated after this live reader was opened.
    #[error("log was truncated under this reader; open a new reader")]
    ReaderInvalidated,

    /// The term history (`terms.json`) could not be read or written, or an entry would make
    /// it go backwards.
    #[error("term history: {0}")]
    Terms(#[from] super::terms::TermsError),

    /// An earlier write or fsync failed; the state of the files is unknown until reopened.
    #[error("log is unusable after an earlier i/o error; reopen it to recover")]
    Failed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> LogError {
        LogError::Io { op, path: path.to_path_buf(), source }
    }

    pub(crate) fn io_at(op: &'static str, path: &Path, offset: u64, source: io::Error) -> LogError {
        LogError::IoAt { op, path: path.to_path_buf(), offset, source }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
    }
}
