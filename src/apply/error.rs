//! Errors of the apply layer, and how a PostgreSQL error during replay becomes one.

use tokio_postgres::error::SqlState;

use crate::error::ErrorClass;
use crate::lsn::EntryId;

/// Longest key text a [`ApplyError::Divergence`] carries, in characters.
pub const KEY_DISPLAY_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A statement of the applier itself failed (connecting, progress, session setup).
    #[error("apply: {what}: {source}")]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A change of an entry failed for a reason other than divergence (a lost connection,
    /// a shutdown, a type the follower cannot read).
    #[error("apply of entry {entry}: {what}: {source}")]
    Change {
        entry: EntryId,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// One of walship's schema migrations failed.
    #[error("apply: migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database was migrated by a newer walship.
    #[error("apply: the database's walship schema is at version {found}, newer than this walship's {known}")]
    SchemaTooNew { found: i32, known: i32 },

    /// The follower's data or schema does not match the leader's: replay stops here.
    #[error("apply of entry {entry} diverges on table {table} (key {key}): {reason}")]
    Divergence {
        entry: EntryId,
        table: String,
        /// `column=value` pairs of the row's key, at most [`KEY_DISPLAY_CHARS`] characters.
        key: String,
        reason: String,
    },

    /// `walship.progress` no longer names the entry this applier committed last: another
    /// applier (or a client) wrote it. Nothing was committed.
    #[error("apply: walship.progress moved under this applier (expected {expected:?}); is another applier running?")]
    ProgressMoved { expected: Option<EntryId> },

    /// The record belongs to an entry that is already applied: resume after `applied`.
    #[error("apply: entry {record} is already applied (applied up to {applied})")]
    AlreadyApplied { record: EntryId, applied: EntryId },

    /// The record does not follow the last one in log order.
    #[error("apply: record of entry {got} out of order: expected {expected}")]
    OutOfOrder { expected: String, got: EntryId },

    /// [`super::Applier::commit`] was called between the chunks of an entry.
    #[error("apply: commit inside entry {0}, whose closing record has not been applied")]
    InsideEntry(EntryId),

    /// The call needs the apply transaction to be committed first.
    #[error("apply: {0} needs the open apply transaction to be committed first")]
    TransactionOpen(&'static str),

    /// A change of entries `first..=last` failed while they were applied in batches or out
    /// of log order: a set-based statement failed or touched other rows than its batch
    /// names, or a change failed that may not be the first to fail. The transaction is
    /// rolled back; applying the same records again strictly in order
    /// ([`super::Applier::strict_through`]) stops at the first change that fails, naming it.
    #[error("apply of entries {first}..{last} in batches failed on table {table}: {reason}; replay them in strict order to find the change")]
    Batched { first: EntryId, last: EntryId, table: String, reason: String },

    /// The entry's bytes do not decode, or break the entry format's rules.
    #[error("apply: malformed entry {entry}: {reason}")]
    Malformed { entry: EntryId, reason: String },

    /// The database could not be fenced against client writes (or the fence lifted).
    #[error("apply: {0}")]
    Fence(crate::fence::FenceError),
}

impl ApplyError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Postgres { source, .. }
            | ApplyError::Change { source, .. }
            | ApplyError::Migration { source, .. } => class_of(source),
            ApplyError::SchemaTooNew { .. } | ApplyError::Divergence { .. } | ApplyError::ProgressMoved { .. } => {
                ErrorClass::Operator
            }
            ApplyError::Batched { .. } => ErrorClass::Retry,
            ApplyError::Fence(e) => e.class(),
            // The caller's bugs or a broken log: continuing could skip or repeat an entry.
            ApplyError::AlreadyApplied { .. }
            | ApplyError::OutOfOrder { .. }
            | ApplyError::InsideEntry(_)
            | ApplyError::TransactionOpen(_)
            | ApplyError::Malformed { .. } => ErrorClass::Fatal,
        }
    }

    /// The SQLSTATE of the PostgreSQL error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            ApplyError::Postgres { source, .. }
            | ApplyError::Change { source, .. }
            | ApplyError::Migration { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// By SQLSTATE; an error without one is the connection's: retry.
fn class_of(error: &tokio_postgres::Error) -> ErrorClass {
    match error.code() {
        Some(code) => ErrorClass::of_sqlstate(code.code()),
        None => ErrorClass::Retry,
    }
}

pub(super) fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |source| ApplyError::Postgres { what, source }
}

/// Integrity constraint violations (class 23: unique, not null, check, exclusion) mean the
/// follower's data differs from the leader's; a table or column gone since it was looked up
/// means its schema does.
pub(super) fn is_divergence(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|c| {
        c.code().starts_with("23") || *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN
    })
}

/// The message, detail and constraint of a PostgreSQL error, for a divergence's reason.
pub(super) fn db_reason(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut reason = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                reason.push_str(": ");
                reason.push_str(detail);
            }
            reason
        }
        None => error.to_string(),
    }
}

/// Cuts `text` to [`KEY_DISPLAY_CHARS`] characters, marking the cut.
pub(super) fn truncate_key(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(KEY_DISPLAY_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}
