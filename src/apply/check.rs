//! How replay judges the result of each statement it pipelines, and the error that names
//! the entry, table and key of a failure.
//!
//! A statement's check carries what explaining its failure takes (the table, the entry, the
//! pgoutput message of the row, a batch's lines or range of entries); the pipeline hands it
//! back with the result, in push order (see `pipeline`).

use std::sync::Arc;

use bytes::Bytes;

use super::change::{key_from_detail, key_text};
use super::copy::CopyContext;
use super::error::{db_reason, is_divergence, ApplyError};
use super::meta::TableMeta;
use super::pipeline::{self, Judge};
use super::set::SetContext;
use crate::lsn::EntryId;

/// The apply connection's statements in flight, judged by [`Check`].
pub(super) type Pipeline = pipeline::Pipeline<Check>;
/// A statement of the apply connection, with its [`Check`].
pub(super) type Op = pipeline::Op<Check>;

/// How to judge a statement's result.
pub(super) enum Check {
    /// Transaction control, progress, truncate: any row count. `entry` is the entry the
    /// statement belongs to, if one.
    Statement {
        entry: Option<EntryId>,
        what: &'static str,
    },
    /// An update or delete that must touch exactly one row; `message` is its pgoutput
    /// message, decoded again only to name the row in an error.
    OneRow {
        entry: EntryId,
        meta: Arc<TableMeta>,
        message: Bytes,
    },
    Copy(CopyContext),
    /// A one-row insert.
    Insert {
        entry: EntryId,
        meta: Arc<TableMeta>,
    },
    /// A set-based update or delete, which must touch exactly one row per row of its batch.
    Set(SetContext),
    /// The progress update, which must touch its row.
    Progress {
        expected: Option<EntryId>,
    },
}

impl Judge for Check {
    type Error = ApplyError;

    fn judge(self, result: Result<u64, tokio_postgres::Error>) -> Result<(), ApplyError> {
        match (self, result) {
            (Check::OneRow { .. } | Check::Progress { .. }, Ok(1))
            | (Check::Statement { .. } | Check::Copy(_) | Check::Insert { .. }, Ok(_)) => Ok(()),
            (Check::Set(context), Ok(rows)) if rows == context.rows => Ok(()),
            (Check::Set(context), Ok(rows)) => {
                let reason = format!("{rows} rows matched the batch's {}", context.rows);
                Err(set_error(context, reason))
            }
            (Check::Set(context), Err(source)) => {
                let reason = db_reason(&source);
                Err(set_error(context, reason))
            }
            (Check::Insert { entry, meta }, Err(source)) => Err(if is_divergence(&source) {
                ApplyError::Divergence {
                    entry,
                    table: meta.display.clone(),
                    key: source.as_db_error().and_then(|db| db.detail()).map(key_from_detail).unwrap_or_default(),
                    reason: db_reason(&source),
                }
            } else {
                ApplyError::Change { entry, what: format!("insert into {}", meta.display), source }
            }),
            (Check::Progress { expected }, Ok(_)) => Err(ApplyError::ProgressMoved { expected }),
            (Check::Progress { .. }, Err(source)) => Err(ApplyError::Postgres { what: "record progress", source }),
            (Check::OneRow { entry, meta, message }, Ok(rows)) => Err(ApplyError::Divergence {
                entry,
                table: meta.display.clone(),
                key: key_text(&meta, &message),
                reason: match rows {
                    0 => "no row has this key on the follower".into(),
                    n => format!("{n} rows have this key on the follower"),
                },
            }),
            (Check::OneRow { entry, meta, message }, Err(source)) => Err(if is_divergence(&source) {
                ApplyError::Divergence {
                    entry,
                    table: meta.display.clone(),
                    key: key_text(&meta, &message),
                    reason: db_reason(&source),
                }
            } else {
                ApplyError::Change { entry, what: format!("change a row of {}", meta.display), source }
            }),
            (Check::Copy(context), Err(source)) => Err(copy_error(context, source)),
            (Check::Statement { entry, what }, Err(source)) => Err(statement_error(entry, what, source)),
        }
    }
}

fn copy_error(context: CopyContext, source: tokio_postgres::Error) -> ApplyError {
    let db = source.as_db_error();
    let line = db.and_then(|db| db.where_()).and_then(copy_line);
    let entry = line
        .and_then(|line| context.entry_of_line(line))
        .or(context.entries.first().map(|&(_, entry)| entry))
        .unwrap_or_default();
    if is_divergence(&source) {
        return ApplyError::Divergence {
            entry,
            table: context.meta.display.clone(),
            key: db.and_then(|db| db.detail()).map(key_from_detail).unwrap_or_default(),
            reason: db_reason(&source),
        };
    }
    ApplyError::Change { entry, what: format!("insert into {}", context.meta.display), source }
}

fn set_error(context: SetContext, reason: String) -> ApplyError {
    let SetContext { meta, first, last, .. } = context;
    ApplyError::Batched { first, last, table: meta.display.clone(), reason }
}

fn statement_error(entry: Option<EntryId>, what: &'static str, source: tokio_postgres::Error) -> ApplyError {
    match (entry, source.as_db_error()) {
        // A deferred constraint checked at commit, a truncate of a referenced table.
        (Some(entry), Some(db)) if is_divergence(&source) => ApplyError::Divergence {
            entry,
            table: match (db.schema(), db.table()) {
                (Some(schema), Some(table)) => format!("{schema}.{table}"),
                _ => String::new(),
            },
            key: db.detail().map(key_from_detail).unwrap_or_default(),
            reason: db_reason(&source),
        },
        (Some(entry), _) => ApplyError::Change { entry, what: what.into(), source },
        (None, _) => ApplyError::Postgres { what, source },
    }
}

/// The line number in a COPY error's context: `COPY t, line 3[, column c: "..."]`.
fn copy_line(context: &str) -> Option<u64> {
    let after = context.split_once(", line ")?.1;
    let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
    after.get(..digits)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_error_lines_are_found() {
        assert_eq!(copy_line("COPY t, line 3"), Some(3));
        assert_eq!(copy_line("COPY \"a b\", line 12, column id: \"5\""), Some(12));
        assert_eq!(copy_line("SQL statement"), None);
    }
}
