//! Following a live log from async code: a blocking thread reads records and hands them over
//! in batches through a bounded queue, waiting for new flushes when it has caught up.
//!
//! Batches, not single records: while catching up the reader thread and its consumer would
//! otherwise hand over, and often wake each other, once per record.

use std::collections::VecDeque;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;

use crate::log::{LogError, LogReader, Record};

/// Most records in one batch.
pub const TAIL_BATCH_RECORDS: usize = 256;
/// A batch is handed over once its payloads reach this many bytes.
pub const TAIL_BATCH_BYTES: usize = 1 << 20;

type Batch = Result<Vec<Record>, LogError>;

/// The consumer's end: records one at a time, in log order, as `mpsc::Receiver` hands them.
pub struct Tail {
    rx: mpsc::Receiver<Batch>,
    ready: VecDeque<Record>,
    /// An error that came after the records in `ready`.
    error: Option<LogError>,
}

impl Tail {
    /// The next record; `None` once the reader thread is gone. Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Record, LogError>> {
        if let Some(next) = self.pop() {
            return Some(next);
        }
        let batch = self.rx.recv().await?;
        self.take(batch);
        self.pop()
    }

    /// The next record if one is ready.
    pub fn try_recv(&mut self) -> Result<Result<Record, LogError>, TryRecvError> {
        if let Some(next) = self.pop() {
            return Ok(next);
        }
        let batch = self.rx.try_recv()?;
        self.take(batch);
        self.pop().ok_or(TryRecvError::Empty)
    }

    fn take(&mut self, batch: Batch) {
        match batch {
            Ok(records) => self.ready.extend(records),
            Err(e) => self.error = Some(e),
        }
    }

    fn pop(&mut self) -> Option<Result<Record, LogError>> {
        match self.ready.pop_front() {
            Some(record) => Some(Ok(record)),
            None => self.error.take().map(Err),
        }
    }
}

/// Starts a thread that reads `reader` into a queue of `capacity` batches. It stops at the
/// first error (after queueing it) or when the receiver is dropped.
pub fn spawn(reader: LogReader, capacity: usize) -> (Tail, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let handle = Handle::current();
    let thread = tokio::task::spawn_blocking(move || tail(reader, tx, handle));
    (Tail { rx, ready: VecDeque::new(), error: None }, thread)
}

fn tail(mut reader: LogReader, tx: mpsc::Sender<Batch>, handle: Handle) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                bytes += record.payload.len();
                batch.push(record);
                if batch.len() >= TAIL_BATCH_RECORDS || bytes >= TAIL_BATCH_BYTES {
                    if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                    bytes = 0;
                }
            }
            Ok(None) => {
                if !batch.is_empty() {
                    if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                    bytes = 0;
                    // More may have been flushed meanwhile: look again before waiting.
                    continue;
                }
                let Some(mut wait) = reader.wait_handle() else { return };
                let closed = handle.block_on(async {
                    tokio::select! {
                        changed = wait.changed() => changed.is_err(),
                        _ = tx.closed() => true,
                    }
                });
                if closed {
                    return;
                }
            }
            Err(e) => {
                if !batch.is_empty() && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Log, LogOptions};
    use crate::lsn::{EntryId, Index, Term};

    fn id(index: u64) -> EntryId {
        EntryId { term: Term(1), index: Index(index) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_arrive_in_order_across_batches_and_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
        // More than a batch holds, so the first records come in several batches.
        let first = TAIL_BATCH_RECORDS as u64 * 2 + 3;
        for i in 1..=first {
            log.append_entry(id(i), &i.to_le_bytes()).unwrap();
        }
        log.flush().unwrap();
        let (mut tail, thread) = spawn(log.reader(Index(1)).unwrap(), 2);
        for i in 1..=first {
            let record = tail.recv().await.unwrap().unwrap();
            assert_eq!((record.id, &record.payload[..]), (id(i), &i.to_le_bytes()[..]));
        }
        assert!(matches!(tail.try_recv(), Err(TryRecvError::Empty)), "caught up");
        // Written and flushed after the reader caught up: it wakes and hands them over.
        for i in first + 1..=first + 5 {
            log.append_entry(id(i), &i.to_le_bytes()).unwrap();
        }
        log.flush().unwrap();
        for i in first + 1..=first + 5 {
            let record = tokio::time::timeout(std::time::Duration::from_secs(10), tail.recv()).await;
            assert_eq!(record.unwrap().unwrap().unwrap().id, id(i));
        }
        drop(tail);
        thread.await.unwrap();
    }
}
