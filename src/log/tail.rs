//! Following a live log from async code.
//!
//! Two ways to read, switched as the consumer falls behind or catches up:
//! - **Catching up**: a blocking thread reads records and hands them over in batches through
//!   a bounded queue (batches, not single records: the thread and its consumer would otherwise
//!   hand over, and often wake each other, once per record). A disk read never blocks the
//!   consumer's runtime.
//! - **Caught up**: once the thread has read everything flushed, it hands the reader back and
//!   ends; the consumer then reads what each flush adds itself, right after the writer's
//!   notification. Those records were just written, so the reads hit the page cache, and no
//!   thread sits between the writer and the consumer: one wake-up per flush instead of two.
//!   A flush that adds more than [`INLINE_READ_BYTES`] sends the reading back to a thread.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log::{Flushed, LogError, LogReader, Record};

/// Most records in one batch.
pub const TAIL_BATCH_RECORDS: usize = 256;
/// A batch is handed over once its payloads reach this many bytes.
pub const TAIL_BATCH_BYTES: usize = 1 << 20;
/// Read inline, without a thread, while each flush adds less than this.
pub const INLINE_READ_BYTES: usize = 256 << 10;

type Batch = Result<Vec<Record>, LogError>;

/// What the reading thread sends.
enum Handover {
    Batch(Batch),
    /// Everything flushed was read: the consumer reads on inline.
    CaughtUp(Box<LogReader>),
}

enum Source {
    Thread {
        rx: mpsc::Receiver<Handover>,
        thread: JoinHandle<()>,
    },
    Inline {
        reader: Box<LogReader>,
        flushed: watch::Receiver<Flushed>,
    },
    /// The reader is gone (after an error, or a reader that cannot wait: offline).
    Ended,
}

/// The consumer's end: records one at a time, in log order.
pub struct Tail {
    source: Source,
    capacity: usize,
    ready: VecDeque<Record>,
    /// An error that came after the records in `ready`.
    error: Option<LogError>,
}

impl Tail {
    /// The next record; `None` once the log's writer is gone. Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Record, LogError>> {
        loop {
            if let Some(next) = self.pop() {
                return Some(next);
            }
            if self.read_inline() {
                continue;
            }
            match &mut self.source {
                Source::Thread { rx, .. } => match rx.recv().await {
                    Some(handover) => self.take(handover),
                    None => {
                        self.source = Source::Ended;
                        return None;
                    }
                },
                // Caught up: wait for the next flush (no wake-up is lost: the reader reads up
                // to the newest flush it borrows, never older than the one waited for here).
                Source::Inline { flushed, .. } => {
                    if flushed.changed().await.is_err() {
                        self.source = Source::Ended;
                        return None;
                    }
                }
                Source::Ended => return None,
            }
        }
    }

    /// The next record if one is ready.
    pub fn try_recv(&mut self) -> Result<Result<Record, LogError>, TryRecvError> {
        loop {
            if let Some(next) = self.pop() {
                return Ok(next);
            }
            if self.read_inline() {
                continue;
            }
            match &mut self.source {
                Source::Thread { rx, .. } => {
                    let handover = rx.try_recv()?;
                    self.take(handover);
                }
                Source::Inline { .. } => return Err(TryRecvError::Empty),
                Source::Ended => return Err(TryRecvError::Disconnected),
            }
        }
    }

    /// Stops reading and waits for a reading thread to end.
    pub async fn close(self) {
        if let Source::Thread { rx, thread } = self.source {
            drop(rx);
            let _ = thread.await;
        }
    }

    /// Reads what is flushed into `ready`; false when there was nothing. A large read hands
    /// the rest of the reading to a thread.
    fn read_inline(&mut self) -> bool {
        let Source::Inline { reader, .. } = &mut self.source else { return false };
        let mut bytes = 0;
        let mut read_any = false;
        loop {
            match reader.next() {
                Ok(Some(record)) => {
                    bytes += record.payload.len();
                    self.ready.push_back(record);
                    read_any = true;
                    if bytes >= INLINE_READ_BYTES {
                        let Source::Inline { reader, .. } = std::mem::replace(&mut self.source, Source::Ended) else {
                            unreachable!("matched above")
                        };
                        self.source = thread(*reader, self.capacity);
                        return true;
                    }
                }
                Ok(None) => return read_any,
                Err(e) => {
                    self.error = Some(e);
                    self.source = Source::Ended;
                    return true;
                }
            }
        }
    }

    fn take(&mut self, handover: Handover) {
        match handover {
            Handover::Batch(Ok(records)) => self.ready.extend(records),
            Handover::Batch(Err(e)) => self.error = Some(e),
            Handover::CaughtUp(reader) => {
                self.source = match reader.wait_handle() {
                    Some(flushed) => Source::Inline { reader, flushed },
                    None => Source::Ended,
                }
            }
        }
    }

    fn pop(&mut self) -> Option<Result<Record, LogError>> {
        match self.ready.pop_front() {
            Some(record) => Some(Ok(record)),
            None => self.error.take().map(Err),
        }
    }
}

/// Starts following `reader`, first with a thread reading ahead into a queue of `capacity`
/// batches. Reading stops at the first error (after the records before it) or when the
/// [`Tail`] is dropped or closed.
pub fn spawn(reader: LogReader, capacity: usize) -> Tail {
    let capacity = capacity.max(1);
    Tail { source: thread(reader, capacity), capacity, ready: VecDeque::new(), error: None }
}

fn thread(reader: LogReader, capacity: usize) -> Source {
    let (tx, rx) = mpsc::channel(capacity);
    let thread = tokio::task::spawn_blocking(move || read_ahead(reader, tx));
    Source::Thread { rx, thread }
}

/// The thread: reads batches until it has caught up, then hands the reader back.
fn read_ahead(mut reader: LogReader, tx: mpsc::Sender<Handover>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                bytes += record.payload.len();
                batch.push(record);
                if batch.len() >= TAIL_BATCH_RECORDS || bytes >= TAIL_BATCH_BYTES {
                    if tx.blocking_send(Handover::Batch(Ok(std::mem::take(&mut batch)))).is_err() {
                        return;
                    }
                    bytes = 0;
                }
            }
            Ok(None) => {
                if !batch.is_empty() && tx.blocking_send(Handover::Batch(Ok(std::mem::take(&mut batch)))).is_err() {
                    return;
                }
                let _ = tx.blocking_send(Handover::CaughtUp(Box::new(reader)));
                return;
            }
            Err(e) => {
                if !batch.is_empty() && tx.blocking_send(Handover::Batch(Ok(std::mem::take(&mut batch)))).is_err() {
                    return;
                }
                let _ = tx.blocking_send(Handover::Batch(Err(e)));
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
        let mut tail = spawn(log.reader(Index(1)).unwrap(), 2);
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
        tail.close().await;
    }

    /// Caught up, the consumer reads inline; a flush larger than an inline read goes back to a
    /// thread; no record is lost or repeated across the switches, and the writer's end ends
    /// the tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switches_between_thread_and_inline_reading_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut tail = spawn(log.reader(Index(1)).unwrap(), 2);
        let payload = vec![7u8; 4096];
        let mut next = 1u64;
        let mut expected = 1u64;
        for round in 0..6 {
            // Small flushes (inline) and, every other round, one larger than an inline read.
            let count = if round % 2 == 1 { (INLINE_READ_BYTES / payload.len()) as u64 * 3 } else { 3 };
            for _ in 0..count {
                log.append_entry(id(next), &payload).unwrap();
                next += 1;
            }
            log.flush().unwrap();
            while expected < next {
                let record = tokio::time::timeout(std::time::Duration::from_secs(10), tail.recv()).await;
                assert_eq!(record.unwrap().unwrap().unwrap().id, id(expected));
                expected += 1;
            }
            assert!(matches!(tail.try_recv(), Err(TryRecvError::Empty)), "round {round}: nothing more");
            if round == 2 {
                assert!(matches!(tail.source, Source::Inline { .. }), "caught up: reading inline");
            }
        }
        drop(log);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), tail.recv()).await.unwrap();
        assert!(end.is_none(), "the writer is gone");
        tail.close().await;
    }
}
