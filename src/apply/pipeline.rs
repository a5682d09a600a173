//! Statements in flight on the apply connection.
//!
//! tokio-postgres writes a request to the connection the first time its future is polled,
//! and hands responses back in request order. [`Pipeline::push`] polls a statement's future
//! once, which sends it, and keeps the future until its result is needed: statements run in
//! the order they are pushed while the applier goes on decoding, with up to
//! [`MAX_IN_FLIGHT`] on the way instead of one round trip each. Every future pushed must send
//! its request at its first poll (a prepared statement, a COPY, a simple query: never a query
//! that still needs preparing).
//!
//! A COPY op is the exception to "sent at first poll": its data goes out only when its future
//! runs again, and until then the connection holds every later request behind it. So before
//! a request that is awaited directly (a prepare, a catalog lookup) the applier calls
//! [`Pipeline::settle_copies`], or it would wait for a response that never comes.
//!
//! Results are checked in push order, so the first failure is the one reported: the
//! statements after it in the same transaction only fail with "current transaction is
//! aborted", and are dropped unread.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::types::BorrowToSql;
use tokio_postgres::{Client, Statement};

use super::change::{key_from_detail, key_text};
use super::copy::CopyContext;
use super::error::{db_reason, is_divergence, ApplyError};
use super::meta::TableMeta;
use super::set::SetContext;
use crate::lsn::EntryId;

/// Most statements sent and not yet checked.
pub const MAX_IN_FLIGHT: usize = 256;
/// Most bytes the statements in flight keep alive (their COPY data and the record buffers
/// their parameters point into).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

type Pending = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

enum State {
    Pending(Pending),
    Done(Result<u64, tokio_postgres::Error>),
}

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

pub(super) struct Op {
    state: State,
    check: Check,
    /// Memory the op keeps alive until it is checked.
    bytes: usize,
}

impl Op {
    /// A prepared statement with parameters the op owns.
    pub fn execute<P>(client: &Arc<Client>, statement: Statement, params: Vec<P>, check: Check) -> Op
    where
        P: BorrowToSql + Send + 'static,
    {
        let client = client.clone();
        let future = async move { client.execute_raw(&statement, params).await };
        Op::new(Box::pin(future), check)
    }

    /// One COPY of `data`.
    pub fn copy(client: &Arc<Client>, statement: Statement, data: Bytes, context: CopyContext) -> Op {
        let client = client.clone();
        let bytes = data.len();
        let future = async move {
            let mut sink = pin!(client.copy_in::<_, Bytes>(&statement).await?);
            sink.send(data).await?;
            sink.as_mut().finish().await
        };
        Op::new(Box::pin(future), Check::Copy(context)).keeping(bytes)
    }

    /// A simple-protocol query (no parameters).
    pub fn simple(client: &Arc<Client>, sql: String, check: Check) -> Op {
        let client = client.clone();
        let future = async move { client.batch_execute(&sql).await.map(|()| 0) };
        Op::new(Box::pin(future), check)
    }

    /// Counts `bytes` against [`MAX_IN_FLIGHT_BYTES`] while the op is in flight.
    pub fn keeping(mut self, bytes: usize) -> Op {
        self.bytes = bytes;
        self
    }

    fn new(future: Pending, check: Check) -> Op {
        Op { state: State::Pending(future), check, bytes: 0 }
    }
}

#[derive(Default)]
pub(super) struct Pipeline {
    ops: VecDeque<Op>,
    bytes: usize,
    /// The record buffer counted last, so that consecutive ops of one record count it once.
    last_buffer: usize,
}

impl Pipeline {
    /// Sends the op's statement now; checks the oldest ones while too many are in flight.
    pub async fn push(&mut self, mut op: Op) -> Result<(), ApplyError> {
        if let State::Pending(future) = &mut op.state {
            if let Poll::Ready(result) = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
                op.state = State::Done(result);
            }
        }
        self.bytes += op.bytes;
        self.ops.push_back(op);
        while self.ops.len() > MAX_IN_FLIGHT || self.bytes > MAX_IN_FLIGHT_BYTES {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    /// What an op whose parameters point into `buffer` keeps alive beyond the ops before it.
    pub fn buffer_bytes(&mut self, buffer: &Bytes) -> usize {
        let address = buffer.as_ptr() as usize;
        if address == self.last_buffer {
            return 0;
        }
        self.last_buffer = address;
        buffer.len()
    }

    /// Drains the pipeline if a COPY is in flight: before any request awaited directly.
    pub async fn settle_copies(&mut self) -> Result<(), ApplyError> {
        if self.ops.iter().any(|op| matches!(op.check, Check::Copy(_))) {
            self.drain().await?;
        }
        Ok(())
    }

    /// Waits for and checks every op in flight.
    pub async fn drain(&mut self) -> Result<(), ApplyError> {
        while !self.ops.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), ApplyError> {
        let Some(op) = self.ops.pop_front() else {
            return Ok(());
        };
        self.bytes -= op.bytes;
        let result = match op.state {
            State::Pending(future) => future.await,
            State::Done(result) => result,
        };
        let checked = check(op.check, result);
        if checked.is_err() {
            self.clear();
        }
        checked
    }

    /// Drops the ops in flight unread.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes = 0;
        self.last_buffer = 0;
    }
}

fn check(check: Check, result: Result<u64, tokio_postgres::Error>) -> Result<(), ApplyError> {
    match (check, result) {
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
