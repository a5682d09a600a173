//! The log committer: appends records and group-commits them, for the leader (records its
//! source built) and for followers (records received from the leader).
//!
//! [`Committer`] does one group: append, fsync once, and only then publish the new durable
//! position. That position is what the leader reports to PostgreSQL as flushed and a follower
//! acknowledges as `flushed`. The leader's streaming thread commits inline, right after each
//! read of the replication socket (whatever arrived during the previous fsync makes the next
//! group: no thread hand-off on a commit's path). A follower's records come from async code
//! through a [`SharedWriter`]: a small batch is committed inline while fsyncs are cheap and
//! nothing is queued; the rest goes to a [`Writer`] thread through a bounded channel, which
//! appends every batch waiting before it fsyncs.
//!
//! # Durability ordering of one group
//!
//! 1. Lock the log; append the first batch and whatever else is queued, up to
//!    [`GROUP_COMMIT_BYTES`].
//! 2. Under bulk load (the previous group was at least [`GROUP_COMMIT_BULK_BYTES`]) and if
//!    the previous fsync was less than [`GROUP_COMMIT_WINDOW`] ago, unlock, sleep the rest of
//!    the window, lock again and append what arrived meanwhile. Small groups (commits
//!    arriving one by one, each perhaps waited for by a client in `semi-sync` or `sync`) go
//!    to the fsync at once: they would pay the window in commit latency. Unlocking in the
//!    middle of a group is safe: the log's readers (relay, replay, retention) are bounded by the *fsynced*
//!    position, so they cannot see a record appended but not yet synced; and only this thread
//!    appends.
//! 3. `fsync` ([`Log::flush`]). An error ends the thread: nothing of the group is published.
//! 4. Unlock, then mark the group's entries ([`EntryMarks`], used for lag) and publish
//!    [`Durable`] on the watch channel.
//! 5. Tell the [`DurableListener`] (the leader's: PostgreSQL's standby status), on this
//!    thread, so the report leaves as soon as the fsync returned.
//!
//! So a position is published or reported only after the fsync that covers it, never before;
//! and [`Durable::end_lsn`] advances only with a complete entry, never with the chunks of a
//! transaction still being spilled, whose end is unknown until its entry record is written.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::log::entry::{EntryError, EntryHeader};
use crate::log::marks::{EntryMarks, Mark};
use crate::log::{Log, LogError, RecordKind};
use crate::lsn::{EntryId, Index, Lsn};

/// Batches that may wait for the writer; with the source's batch size this bounds the memory
/// between network and disk.
pub const WRITE_QUEUE_BATCHES: usize = 8;
/// Bytes appended before the writer stops gathering and fsyncs.
pub const GROUP_COMMIT_BYTES: usize = 32 << 20;
/// Entries and bytes made durable (Prometheus counters).
pub const LOG_ENTRIES_APPENDED_TOTAL: &str = "walship_log_entries_appended_total";
pub const LOG_BYTES_APPENDED_TOTAL: &str = "walship_log_bytes_appended_total";

/// Under sustained bulk load, the writer lets this long pass between fsyncs so each one covers
/// more; after an idle period, or while groups stay small, it fsyncs at once.
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(1);
/// A group at least this large means bulk load: the next one waits for the window. Smaller
/// groups are commits arriving one by one, for which the wait would be pure latency (each
/// fsync is then also cheap, covering little).
pub const GROUP_COMMIT_BULK_BYTES: usize = 8 << 10;

/// A record to append: a chunk of a transaction too large to hold in memory, or a whole
/// entry. The leader's entry builder makes them; a follower receives them from its leader.
#[derive(Clone, Debug)]
pub enum Output {
    Chunk {
        id: EntryId,
        payload: Bytes,
    },
    /// `end_lsn`: the leader WAL position just past the entry's transaction.
    Entry {
        id: EntryId,
        payload: Bytes,
        end_lsn: Lsn,
    },
}

impl Output {
    pub fn len(&self) -> usize {
        match self {
            Output::Chunk { payload, .. } | Output::Entry { payload, .. } => payload.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Told every new durable position right after the fsync that made it durable, on the writer
/// thread. The leader tells PostgreSQL; a follower acknowledges through the watch channel
/// instead and passes `()`.
pub trait DurableListener: Send + 'static {
    fn durable(&mut self, durable: Durable);
}

impl DurableListener for () {
    fn durable(&mut self, _: Durable) {}
}

pub enum WriteCmd {
    Records(Vec<Output>),
    /// The stream broke inside a spilled transaction: drop its chunks, it will be sent again.
    DropUnfinished,
}

/// The last entry that is durable in the log, and the leader WAL position just past it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub last: Option<EntryId>,
    pub end_lsn: Lsn,
}

/// The last entry's header could not be read.
#[derive(Debug, thiserror::Error)]
#[error("entry {0}: {1}")]
pub struct UnreadableEnd(pub EntryId, pub EntryError);

impl Durable {
    /// Where an open log ends: its last complete entry and that entry's `end_lsn`.
    pub fn of_log(log: &Log) -> Result<Durable, UnreadableEnd> {
        let Some(last) = log.last_written() else { return Ok(Durable::default()) };
        let unreadable = |e: EntryError| UnreadableEnd(last, e);
        let mut reader = log.reader(last.index).map_err(|e| unreadable(EntryError::Unreadable(e.to_string())))?;
        loop {
            match reader.next() {
                Ok(Some(record)) if matches!(record.kind, RecordKind::Entry) && record.id == last => {
                    let header = EntryHeader::decode(&record.payload).map_err(unreadable)?;
                    return Ok(Durable { last: Some(last), end_lsn: header.end_lsn });
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(unreadable(EntryError::Unreadable("not found".into()))),
                Err(e) => return Err(unreadable(EntryError::Unreadable(e.to_string()))),
            }
        }
    }
}

/// The writer thread; joining it gives the error that stopped it, if any.
pub type WriterThread = JoinHandle<Result<(), LogError>>;

/// Commits groups of records to the log: the steps of the module documentation, on the
/// caller's thread.
pub struct Committer {
    log: Arc<Mutex<Log>>,
    durable: watch::Sender<Durable>,
    written_end: Lsn,
    listener: Box<dyn DurableListener>,
    marks: EntryMarks,
    /// Entries appended since the last fsync, marked once it is done.
    unmarked: Vec<Mark>,
}

impl Committer {
    /// Publishes `start` on `durable`, then each group's durable position after its fsync.
    pub fn new(
        log: Arc<Mutex<Log>>,
        start: Durable,
        listener: impl DurableListener,
        durable: watch::Sender<Durable>,
        marks: EntryMarks,
    ) -> Committer {
        durable.send_replace(start);
        let listener = Box::new(listener);
        Committer { log, durable, written_end: start.end_lsn, listener, marks, unmarked: Vec::new() }
    }

    /// Appends `cmd` and fsyncs it (steps 1, 3, 4 and 5, without a window). An error leaves
    /// nothing of it published.
    pub fn commit(&mut self, cmd: WriteCmd) -> Result<(), LogError> {
        let shared = Arc::clone(&self.log);
        let mut log = shared.lock().map_err(|_| LogError::Failed)?;
        let bytes = self.apply(&mut log, cmd)?;
        let last = log.flush()?;
        drop(log);
        self.publish(last, bytes);
        Ok(())
    }

    /// Steps 4 and 5, after the fsync that made `last` durable.
    fn publish(&mut self, last: Option<EntryId>, bytes: usize) {
        metrics::counter!(LOG_ENTRIES_APPENDED_TOTAL).increment(self.unmarked.len() as u64);
        metrics::counter!(LOG_BYTES_APPENDED_TOTAL).increment(bytes as u64);
        for mark in self.unmarked.drain(..) {
            self.marks.record(mark);
        }
        let durable = Durable { last, end_lsn: self.written_end };
        self.durable.send_replace(durable);
        self.listener.durable(durable);
    }
}

/// A batch at most this large may be committed by its sender itself ([`SharedWriter`]).
pub const INLINE_COMMIT_BYTES: usize = 256 << 10;
/// ... while the last fsync took at most this long: where an fsync costs milliseconds (a
/// real disk), the hand-off to the writer thread is small beside it, and the sender's runtime
/// must not block that long.
pub const INLINE_FSYNC_MAX: Duration = Duration::from_micros(500);

/// What a [`Committer`] shared by a writer thread and its sender holds, and what they tell
/// each other.
#[derive(Clone)]
struct Shared {
    committer: Arc<Mutex<Committer>>,
    /// Commands sent to the thread and not committed yet.
    queued: Arc<AtomicUsize>,
    /// How long the last fsync took, in microseconds.
    fsync_micros: Arc<AtomicU64>,
}

impl Shared {
    fn new(committer: Committer) -> Shared {
        Shared {
            committer: Arc::new(Mutex::new(committer)),
            queued: Arc::new(AtomicUsize::new(0)),
            fsync_micros: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A [`Committer`] on its own thread, fed through a channel.
pub struct Writer {
    shared: Shared,
}

/// A follower's way into its log. A small batch is committed inline by the caller when the
/// writer thread has nothing queued and fsyncs are cheap: no hand-off to the thread and back
/// on the way from the leader's records to the follower's `flushed` acknowledgement. Anything
/// else (and every batch while one is queued, so that order holds) goes to the thread.
#[derive(Clone)]
pub struct SharedWriter {
    shared: Shared,
    tx: mpsc::Sender<WriteCmd>,
}

/// Why a [`SharedWriter`] could not take a command.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the log writer stopped")]
    Gone,
    #[error("the log: {0}")]
    Log(#[from] LogError),
}

impl SharedWriter {
    /// Starts a writer thread for `committer` and returns its sender, whose queue holds
    /// `capacity` commands (see [`Writer::spawn`]).
    pub fn spawn(committer: Committer, capacity: usize) -> std::io::Result<(SharedWriter, WriterThread)> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Shared::new(committer);
        let thread = Writer { shared: shared.clone() }.start(rx)?;
        Ok((SharedWriter { shared, tx }, thread))
    }

    /// Commits `cmd` inline, or queues it for the writer thread (waiting while its queue is
    /// full). Inline, it is durable and published when this returns.
    pub async fn write(&self, cmd: WriteCmd) -> Result<(), WriteError> {
        let small = match &cmd {
            WriteCmd::Records(records) => records.iter().map(Output::len).sum::<usize>() <= INLINE_COMMIT_BYTES,
            WriteCmd::DropUnfinished => false,
        };
        let cheap = self.shared.fsync_micros.load(Ordering::Relaxed) <= INLINE_FSYNC_MAX.as_micros() as u64;
        // Only this sender queues, so nothing can be queued between the check and the commit.
        if small && cheap && self.shared.queued.load(Ordering::Acquire) == 0 {
            let mut committer = self.shared.committer.lock().map_err(|_| WriteError::Gone)?;
            let started = Instant::now();
            committer.commit(cmd)?;
            self.shared.fsync_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(cmd).await.map_err(|_| WriteError::Gone)
    }
}

impl Writer {
    /// Starts the writer thread, publishing durable positions on `durable` (first `start`). It
    /// ends when every sender is dropped (after a last fsync) or at the first log error.
    pub fn spawn(
        log: Arc<Mutex<Log>>,
        start: Durable,
        rx: mpsc::Receiver<WriteCmd>,
        listener: impl DurableListener,
        durable: watch::Sender<Durable>,
        marks: EntryMarks,
    ) -> std::io::Result<WriterThread> {
        Writer { shared: Shared::new(Committer::new(log, start, listener, durable, marks)) }.start(rx)
    }

    fn start(self, rx: mpsc::Receiver<WriteCmd>) -> std::io::Result<WriterThread> {
        std::thread::Builder::new().name("walship-log-writer".into()).spawn(move || self.run(rx))
    }

    fn run(self, mut rx: mpsc::Receiver<WriteCmd>) -> Result<(), LogError> {
        // The end of the previous group, when it was a bulk one.
        let mut last_bulk_flush: Option<Instant> = None;
        while let Some(first) = rx.blocking_recv() {
            // The committer is this thread's for the whole group: an inline commit waits.
            let mut this = self.shared.committer.lock().map_err(|_| LogError::Failed)?;
            let this = &mut *this;
            // The steps of one group, as the module documentation numbers them.
            let shared = Arc::clone(&this.log);
            let mut log = shared.lock().map_err(|_| LogError::Failed)?;
            // 1. What is queued now.
            let mut commands = 1;
            let mut bytes = this.apply(&mut log, first)?;
            bytes += Self::drain(this, &mut log, &mut rx, bytes, &mut commands)?;
            // 2. Under bulk load, let the window fill; readers see only fsynced records.
            if let Some(wait) = last_bulk_flush.and_then(|t| GROUP_COMMIT_WINDOW.checked_sub(t.elapsed())) {
                drop(log);
                std::thread::sleep(wait);
                log = shared.lock().map_err(|_| LogError::Failed)?;
                bytes += Self::drain(this, &mut log, &mut rx, bytes, &mut commands)?;
            }
            // 3. The fsync; nothing below runs if it fails.
            let fsync_started = Instant::now();
            let last = log.flush()?;
            drop(log);
            self.shared.fsync_micros.store(fsync_started.elapsed().as_micros() as u64, Ordering::Relaxed);
            last_bulk_flush = (bytes >= GROUP_COMMIT_BULK_BYTES).then(Instant::now);
            // 4. Publish, 5. report: only now is the group durable.
            this.publish(last, bytes);
            // Saturating: a plain `Writer`'s sender does not count what it queues.
            let _ = self
                .shared
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(commands)));
        }
        Ok(())
    }

    /// Appends whatever else is queued, up to [`GROUP_COMMIT_BYTES`] in all.
    fn drain(
        this: &mut Committer,
        log: &mut Log,
        rx: &mut mpsc::Receiver<WriteCmd>,
        mut bytes: usize,
        commands: &mut usize,
    ) -> Result<usize, LogError> {
        let start = bytes;
        while bytes < GROUP_COMMIT_BYTES {
            match rx.try_recv() {
                Ok(cmd) => {
                    *commands += 1;
                    bytes += this.apply(log, cmd)?;
                }
                Err(_) => break,
            }
        }
        Ok(bytes - start)
    }
}

impl Committer {
    fn apply(&mut self, log: &mut Log, cmd: WriteCmd) -> Result<usize, LogError> {
        match cmd {
            WriteCmd::Records(records) => {
                let mut bytes = 0;
                for record in records {
                    bytes += record.len();
                    match record {
                        Output::Chunk { id, payload } => log.append_chunk(id, &payload)?,
                        Output::Entry { id, payload, end_lsn } => {
                            log.append_entry(id, &payload)?;
                            self.written_end = end_lsn;
                            let commit_time = EntryHeader::decode(&payload).map_or(0, |h| h.commit_time);
                            self.unmarked.push(Mark { index: id.index, commit_time, end_lsn });
                        }
                    }
                }
                Ok(bytes)
            }
            WriteCmd::DropUnfinished => {
                // Keeps every complete entry (marked or not); drops the chunks after them.
                log.truncate_after(log.last_written().map_or(Index(0), |last| last.index))?;
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
#[path = "committer_tests.rs"]
mod tests;
