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
//!
//! The pipeline knows nothing of replay: each op carries a check of the caller's type, a
//! [`Judge`] that turns the statement's result into the caller's verdict (see `check`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::types::BorrowToSql;
use tokio_postgres::{Client, Statement};

/// Most statements sent and not yet checked.
pub const MAX_IN_FLIGHT: usize = 256;
/// Most bytes the statements in flight keep alive (their COPY data and the record buffers
/// their parameters point into).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// How a statement's result is judged, once it is read.
pub(super) trait Judge {
    type Error;

    /// The verdict on the statement's row count, or its error.
    fn judge(self, result: Result<u64, tokio_postgres::Error>) -> Result<(), Self::Error>;
}

type Pending = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

enum State {
    Pending(Pending),
    Done(Result<u64, tokio_postgres::Error>),
}

pub(super) struct Op<C> {
    state: State,
    check: C,
    /// A COPY, whose data waits for its future to run again (see the module docs).
    copy: bool,
    /// Memory the op keeps alive until it is checked.
    bytes: usize,
}

impl<C> Op<C> {
    /// A prepared statement with parameters the op owns.
    pub fn execute<P>(client: &Arc<Client>, statement: Statement, params: Vec<P>, check: C) -> Op<C>
    where
        P: BorrowToSql + Send + 'static,
    {
        let client = client.clone();
        let future = async move { client.execute_raw(&statement, params).await };
        Op::new(Box::pin(future), check)
    }

    /// One COPY of `data`.
    pub fn copy(client: &Arc<Client>, statement: Statement, data: Bytes, check: C) -> Op<C> {
        let client = client.clone();
        let bytes = data.len();
        let future = async move {
            let mut sink = pin!(client.copy_in::<_, Bytes>(&statement).await?);
            sink.send(data).await?;
            sink.as_mut().finish().await
        };
        Op { copy: true, ..Op::new(Box::pin(future), check) }.keeping(bytes)
    }

    /// A simple-protocol query (no parameters).
    pub fn simple(client: &Arc<Client>, sql: String, check: C) -> Op<C> {
        let client = client.clone();
        let future = async move { client.batch_execute(&sql).await.map(|()| 0) };
        Op::new(Box::pin(future), check)
    }

    /// Counts `bytes` against [`MAX_IN_FLIGHT_BYTES`] while the op is in flight.
    pub fn keeping(mut self, bytes: usize) -> Op<C> {
        self.bytes = bytes;
        self
    }

    fn new(future: Pending, check: C) -> Op<C> {
        Op { state: State::Pending(future), check, copy: false, bytes: 0 }
    }
}

pub(super) struct Pipeline<C> {
    ops: VecDeque<Op<C>>,
    bytes: usize,
    /// The record buffer counted last, so that consecutive ops of one record count it once.
    last_buffer: usize,
}

impl<C> Default for Pipeline<C> {
    fn default() -> Self {
        Pipeline { ops: VecDeque::new(), bytes: 0, last_buffer: 0 }
    }
}

impl<C: Judge> Pipeline<C> {
    /// Sends the op's statement now; checks the oldest ones while too many are in flight.
    pub async fn push(&mut self, mut op: Op<C>) -> Result<(), C::Error> {
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
    pub async fn settle_copies(&mut self) -> Result<(), C::Error> {
        if self.ops.iter().any(|op| op.copy) {
            self.drain().await?;
        }
        Ok(())
    }

    /// Waits for and checks every op in flight.
    pub async fn drain(&mut self) -> Result<(), C::Error> {
        while !self.ops.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), C::Error> {
        let Some(op) = self.ops.pop_front() else {
            return Ok(());
        };
        self.bytes -= op.bytes;
        let result = match op.state {
            State::Pending(future) => future.await,
            State::Done(result) => result,
        };
        let checked = op.check.judge(result);
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
