//! Streaming: records from the leader, checked for order, go to the log writer in batches
//! (a small one is committed inline, see [`crate::log::committer::SharedWriter`]); acks
//! tell the leader what this node received, fsynced (the writer's durable position, never
//! sooner) and applied.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::log::committer::Output;
use crate::log::committer::WriteCmd;
use crate::log::entry::EntryHeader;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn};
use crate::node::LeaderView;
use crate::relay::{Ack, FrameReader, Message, ACK_COALESCE, ACK_INTERVAL};

use super::connect::Connection;
use super::{FollowError, LinkChannels};

#[cfg(test)]
#[path = "streaming_tests.rs"]
mod tests;

/// Records gathered from the socket before they go to the writer.
pub const RECEIVE_BATCH_BYTES: usize = 4 << 20;

/// Streams the leader's records from `from` on until the leader closes, an error, `cancel`, or
/// the apply task ends (`Ok`). An entry left half-received is dropped from the writer's queue.
pub(super) async fn stream(
    channels: &mut LinkChannels,
    connection: Connection,
    from: Index,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), FollowError> {
    let mut received = Received { expected: from, last: channels.durable.borrow().last, open_entry: false };
    let result = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        r = receive(channels, connection, &mut received, timeout) => r,
    };
    if received.open_entry {
        channels.writer.write(WriteCmd::DropUnfinished).await?;
    }
    result
}

/// Receives until the stream ends. An ack goes out as soon as `flushed` moves, within
/// [`ACK_COALESCE`] of any other change, and at least every [`ACK_INTERVAL`]; a leader silent for `timeout`, or an ack it does not take in that time,
/// ends the connection ([`FollowError::Idle`]).
async fn receive(
    channels: &mut LinkChannels,
    mut connection: Connection,
    received: &mut Received,
    timeout: Duration,
) -> Result<(), FollowError> {
    let mut acked = Ack { received: None, flushed: None, applied: None, applied_lsn: Lsn::ZERO };
    let mut acked_at: Option<Instant> = None;
    // Since when `received` or `applied` has news not yet acknowledged.
    let mut pending: Option<Instant> = None;
    let mut heard = Instant::now();
    loop {
        let ack = ack(channels, received.last);
        let now = Instant::now();
        pending = if ack == acked { None } else { pending.or(Some(now)) };
        let due = ack.flushed != acked.flushed
            || pending.is_some_and(|since| now >= since + ACK_COALESCE)
            || acked_at.is_none_or(|at| now >= at + ACK_INTERVAL);
        if due {
            let message = Message::Ack(ack);
            let sent = connection.writer.send(&message);
            tokio::time::timeout(timeout, sent).await.map_err(|_| FollowError::Idle(timeout))??;
            acked = ack;
            acked_at = Some(now);
            pending = None;
        }
        let keepalive = acked_at.map_or(now, |at| at + ACK_INTERVAL);
        let next_ack = pending.map_or(keepalive, |since| keepalive.min(since + ACK_COALESCE));
        tokio::select! {
            _ = tokio::time::sleep_until(heard + timeout) => return Err(FollowError::Idle(timeout)),
            _ = tokio::time::sleep_until(next_ack) => {}
            message = connection.reader.next() => {
                heard = Instant::now();
                let batch = received.gather(message?, &mut connection.reader, &channels.leader)?;
                if !batch.records.is_empty() {
                    channels.writer.write(WriteCmd::Records(batch.records)).await?;
                }
            }
            changed = channels.durable.changed() => changed.map_err(|_| FollowError::WriterGone)?,
            changed = channels.applied.changed() => {
                if changed.is_err() {
                    // The apply task ended; the sidecar is stopping.
                    return Ok(());
                }
            }
        }
    }
}

fn ack(channels: &LinkChannels, received: Option<EntryId>) -> Ack {
    let applied = *channels.applied.borrow();
    Ack { received, flushed: channels.durable.borrow().last, applied: applied.id, applied_lsn: applied.end_lsn }
}

/// What one connection has received. It lives outside the receiving future, which
/// cancellation may drop at any await, so that a half-received entry is still known.
#[derive(Debug)]
struct Received {
    /// The index of the next entry due.
    expected: Index,
    /// The last whole entry received (or, before any, the last one this node's log holds).
    last: Option<EntryId>,
    /// Chunks of an entry whose closing record has not arrived went to the writer.
    open_entry: bool,
}

impl Received {
    /// Takes `first` and whatever else the reader already holds, up to
    /// [`RECEIVE_BATCH_BYTES`]. `first` being `None` means the leader closed the stream.
    fn gather<R>(
        &mut self,
        first: Option<Message>,
        reader: &mut FrameReader<R>,
        leader: &watch::Sender<Option<LeaderView>>,
    ) -> Result<Batch, FollowError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let mut batch = Batch::default();
        let mut next = first;
        while let Some(message) = next {
            self.take(message, &mut batch, leader)?;
            next = if batch.bytes < RECEIVE_BATCH_BYTES { reader.try_next()? } else { None };
        }
        if batch.records.is_empty() && batch.saw_nothing {
            return Err(FollowError::Closed);
        }
        self.last = batch.last_entry.or(self.last);
        Ok(batch)
    }

    /// Takes one message of the stream; records are checked for order and added to `batch`.
    fn take(
        &mut self,
        message: Message,
        batch: &mut Batch,
        leader: &watch::Sender<Option<LeaderView>>,
    ) -> Result<(), FollowError> {
        batch.saw_nothing = false;
        match message {
            Message::Record(record) => {
                if record.id.index != self.expected {
                    return Err(FollowError::OutOfOrder { expected: self.expected, got: record.id });
                }
                batch.bytes += record.payload.len();
                let output = output_of(record)?;
                match &output {
                    Output::Chunk { .. } => self.open_entry = true,
                    Output::Entry { id, .. } => {
                        self.open_entry = false;
                        self.expected = id.index.next();
                        batch.last_entry = Some(*id);
                    }
                }
                batch.records.push(output);
                Ok(())
            }
            Message::LeaderStatus(status) => {
                leader.send_modify(|view| {
                    if let Some(view) = view {
                        view.status = Some(status);
                    }
                });
                Ok(())
            }
            Message::Error { message } => Err(FollowError::Peer(message)),
            other => Err(FollowError::Unexpected(other.name())),
        }
    }
}

/// Records on their way to the writer together.
struct Batch {
    records: Vec<Output>,
    bytes: usize,
    last_entry: Option<EntryId>,
    /// `reader.next()` said the stream ended.
    saw_nothing: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Batch { records: Vec::new(), bytes: 0, last_entry: None, saw_nothing: true }
    }
}

fn output_of(record: Record) -> Result<Output, FollowError> {
    Ok(match record.kind {
        RecordKind::Chunk => Output::Chunk { id: record.id, payload: record.payload },
        RecordKind::Entry => {
            let header = EntryHeader::decode(&record.payload).map_err(|_| FollowError::BadEntry(record.id))?;
            Output::Entry { id: record.id, payload: record.payload, end_lsn: header.end_lsn }
        }
    })
}
