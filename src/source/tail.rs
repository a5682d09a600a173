//! The streaming thread: read the replication stream, build records, commit them to the log
//! (inline: whatever arrived during one fsync makes the next group), and tell PostgreSQL what
//! is durable.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::log::committer::Output;
use crate::log::committer::{Committer, Durable, WriteCmd};
use crate::source::builder::EntryBuilder;
use crate::source::stream::{CopyMessage, ReplStream, SharedSink, StatusSink};
use crate::source::wire::ReplError;
use crate::source::SourceError;

/// Records gathered from the socket before they are committed, at the latest.
pub const BATCH_BYTES: usize = 4 << 20;
/// Standby status is sent at least this often, well inside PostgreSQL's default 60 s
/// `wal_sender_timeout`.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a read waits for data, bounding how late cancellation is noticed.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// The stream is presumed dead after this many heartbeat intervals without a byte...
pub const SILENT_HEARTBEATS: u32 = 15;
/// ... and never sooner than this.
pub const MIN_SILENCE: Duration = Duration::from_secs(3);

/// How long the stream may stay silent: the heartbeat task writes to the WAL every
/// `heartbeat_interval`, so a healthy stream is never quiet for many of them. (PostgreSQL's
/// own keepalives do not help: the walsender sends them only to a standby that stopped
/// replying, and this one replies every second.) A black-holed link gives no error of its
/// own: without this the source would wait on it for ever.
pub fn silence_timeout(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval * SILENT_HEARTBEATS).max(MIN_SILENCE)
}

/// Streams until `cancel` or the connection fails. Runs on its own thread with blocking I/O.
/// The committer reports each fsync through `sink`; this thread also answers keepalives and
/// sends the periodic status.
pub fn tail(
    mut stream: ReplStream,
    builder: &mut EntryBuilder,
    committer: &mut Committer,
    durable: watch::Receiver<Durable>,
    sink: &SharedSink,
    cancel: &CancellationToken,
    silence: Duration,
) -> Result<(), SourceError> {
    set_sink(sink, Some(stream.status_sink()?));
    let result = stream_until_cancelled(&mut stream, builder, committer, durable, sink, cancel, silence);
    set_sink(sink, None);
    if result.is_ok() {
        stream.close();
    }
    result
}

fn stream_until_cancelled(
    stream: &mut ReplStream,
    builder: &mut EntryBuilder,
    committer: &mut Committer,
    durable: watch::Receiver<Durable>,
    sink: &SharedSink,
    cancel: &CancellationToken,
    silence: Duration,
) -> Result<(), SourceError> {
    let mut batch = Batch::default();
    let mut last_status: Option<Instant> = None;
    let mut heard = Instant::now();
    loop {
        let mut reply_requested = false;
        while let Some(message) = stream.try_next_copy()? {
            match message {
                CopyMessage::XLogData { data, .. } => {
                    batch.push(builder, &data)?;
                    if batch.bytes >= BATCH_BYTES {
                        batch.commit(committer)?;
                    }
                }
                CopyMessage::Keepalive { reply_requested: r, .. } => reply_requested |= r,
            }
        }
        batch.commit(committer)?;
        if reply_requested || last_status.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL) {
            let flushed = sink.gate.allowed(durable.borrow().end_lsn);
            if let Some(s) = sink.status.lock().map_err(|_| SourceError::WriterGone)?.as_mut() {
                s.report(flushed, true)?;
            }
            last_status = Some(Instant::now());
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        if stream.fill(READ_TIMEOUT)? > 0 {
            heard = Instant::now();
        } else if heard.elapsed() >= silence {
            return Err(ReplError::Silent(heard.elapsed()).into());
        }
    }
}

fn set_sink(sink: &SharedSink, value: Option<StatusSink>) {
    if let Ok(mut guard) = sink.status.lock() {
        *guard = value;
    }
}

#[derive(Default)]
struct Batch {
    records: Vec<Output>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, builder: &mut EntryBuilder, data: &[u8]) -> Result<(), SourceError> {
        let before = self.records.len();
        builder.push(data, &mut self.records)?;
        self.bytes += self.records.get(before..).unwrap_or_default().iter().map(Output::len).sum::<usize>();
        Ok(())
    }

    /// Appends the batch and fsyncs it.
    fn commit(&mut self, committer: &mut Committer) -> Result<(), SourceError> {
        if self.records.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        Ok(committer.commit(WriteCmd::Records(std::mem::take(&mut self.records)))?)
    }
}
