//! The streaming half of a replication connection.
//!
//! Once `START_REPLICATION` succeeded, the socket leaves the async runtime and is read by one
//! dedicated thread with blocking calls ([`ReplStream`]). That is deliberate: on loopback the
//! walsender pays for every wake-up of a reader that waits on the socket, one per pgoutput
//! message. A thread that reads everything the socket holds and, while the stream is busy,
//! pauses briefly before the next read is never on the socket's wait queue, so the
//! walsender sends without waking anyone and the next read takes a large batch.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

use tracing::warn;

use crate::log::committer::{Durable, DurableListener};
use crate::lsn::now_pg_micros;
use crate::lsn::Lsn;
pub use crate::source::wire::CopyMessage;
use crate::source::wire::{FrameBuf, ReplError, READ_CHUNK_BYTES};

/// A read of at least this many bytes means the stream is busy.
pub const BUSY_READ_BYTES: usize = 16 << 10;
/// While busy on TCP, how long the reader lets data gather before reading again. The receive
/// buffer (`SOCKET_RECV_BUFFER_BYTES`) holds far more than arrives meanwhile.
pub const BUSY_PAUSE_TCP: Duration = Duration::from_millis(2);
/// The same on a Unix socket, much shorter: there the sender's small send buffer is all the
/// room there is, and each message's buffer overhead fills it after a few hundred messages;
/// pausing longer would stall the walsender.
pub const BUSY_PAUSE_UNIX: Duration = Duration::from_micros(200);

/// The socket of a streaming connection, in blocking mode.
pub(crate) enum StdTransport {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl StdTransport {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let timeout = Some(timeout.max(Duration::from_micros(100)));
        match self {
            StdTransport::Tcp(s) => s.set_read_timeout(timeout),
            StdTransport::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StdTransport::Tcp(s) => s.read(buf),
            StdTransport::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            StdTransport::Tcp(s) => s.write_all(buf),
            StdTransport::Unix(s) => s.write_all(buf),
        }
    }

    fn try_clone(&self) -> io::Result<StdTransport> {
        Ok(match self {
            StdTransport::Tcp(s) => StdTransport::Tcp(s.try_clone()?),
            StdTransport::Unix(s) => StdTransport::Unix(s.try_clone()?),
        })
    }
}

/// The sending side of a stream's standby status: shared by the streaming thread (keepalive
/// replies) and the log writer (which reports each fsync as it completes, so no thread has to
/// poll for it).
pub struct StatusSink {
    transport: StdTransport,
    reported: Lsn,
    wbuf: BytesMut,
}

/// What PostgreSQL may be told is flushed. Open (`async`): whatever the log made durable.
/// Gated (`semi-sync`, `sync`): only what the leader's sync rule confirmed (the sync task,
/// `source/sync.rs`), so that a committing client waits for its followers.
#[derive(Debug, Default)]
pub struct FlushGate {
    gated: AtomicBool,
    confirmed: AtomicU64,
}

impl FlushGate {
    pub fn set_gated(&self, gated: bool) {
        self.gated.store(gated, Ordering::SeqCst);
    }

    /// What may be reported, given what is durable.
    pub fn allowed(&self, durable: Lsn) -> Lsn {
        if self.gated.load(Ordering::SeqCst) {
            Lsn(self.confirmed.load(Ordering::SeqCst)).min(durable)
        } else {
            durable
        }
    }

    /// The rule confirmed everything before `lsn` (never goes back).
    pub fn confirm(&self, lsn: Lsn) {
        self.confirmed.fetch_max(lsn.0, Ordering::SeqCst);
    }
}

/// Where the writer finds the current connection's sink (`None` while disconnected), and
/// the gate that says what it may report.
#[derive(Clone, Default)]
pub struct SharedSink {
    pub status: Arc<Mutex<Option<StatusSink>>>,
    pub gate: Arc<FlushGate>,
}

impl SharedSink {
    /// Reports `durable` as far as the gate allows, when a stream is connected. A failed send
    /// drops the sink: the connection is broken, and the streaming thread, which reads the
    /// same socket, ends with its own error and reconnects, installing a new sink.
    pub fn report(&self, durable: Lsn) {
        let allowed = self.gate.allowed(durable);
        let Ok(mut guard) = self.status.lock() else { return };
        if let Some(sink) = guard.as_mut() {
            if let Err(e) = sink.report(allowed, false) {
                warn!(error = %e, flushed = %allowed, "cannot report the flushed position to PostgreSQL; the stream reconnects");
                *guard = None;
            }
        }
    }
}

impl StatusSink {
    /// Tells PostgreSQL that everything before `flushed` is durable. Without `force`, only
    /// when that is news.
    pub fn report(&mut self, flushed: Lsn, force: bool) -> Result<(), ReplError> {
        if !force && flushed <= self.reported {
            return Ok(());
        }
        let flushed = flushed.max(self.reported);
        standby_status(flushed, flushed, flushed, false, &mut self.wbuf)?;
        let written = self.transport.write_all(&self.wbuf);
        self.wbuf.clear();
        written?;
        self.reported = flushed;
        Ok(())
    }
}

impl DurableListener for SharedSink {
    /// Reports the durable end to PostgreSQL, as far as the gate allows.
    fn durable(&mut self, durable: Durable) {
        self.report(durable.end_lsn);
    }
}

/// Appends a standby status update (`r`) as CopyData to `out`.
fn standby_status(written: Lsn, flushed: Lsn, applied: Lsn, reply: bool, out: &mut BytesMut) -> Result<(), ReplError> {
    let mut msg = BytesMut::with_capacity(34);
    msg.put_u8(b'r');
    msg.put_u64(written.0);
    msg.put_u64(flushed.0);
    msg.put_u64(applied.0);
    msg.put_i64(now_pg_micros());
    msg.put_u8(u8::from(reply));
    frontend::CopyData::new(msg.freeze())?.write(out);
    Ok(())
}

/// A running replication stream, read and written with blocking calls from one thread.
pub struct ReplStream {
    transport: StdTransport,
    frames: FrameBuf,
    scratch: Vec<u8>,
    wbuf: BytesMut,
    timeout: Duration,
}

impl ReplStream {
    pub(crate) fn new(transport: StdTransport, frames: FrameBuf) -> ReplStream {
        ReplStream {
            transport,
            frames,
            scratch: vec![0; READ_CHUNK_BYTES],
            wbuf: BytesMut::with_capacity(64),
            timeout: Duration::ZERO,
        }
    }

    /// The next buffered replication message, without I/O. `Ok(None)`: call [`Self::fill`].
    pub fn try_next_copy(&mut self) -> Result<Option<CopyMessage>, ReplError> {
        self.frames.try_next_copy()
    }

    /// Reads what the socket holds, waiting at most `timeout` for the first byte. Returns the
    /// bytes read, 0 when the wait timed out. After a busy read it pauses briefly so the next
    /// read finds a large batch.
    pub fn fill(&mut self, timeout: Duration) -> Result<usize, ReplError> {
        if self.timeout != timeout {
            self.transport.set_read_timeout(timeout)?;
            self.timeout = timeout;
        }
        let n = match self.transport.read(&mut self.scratch) {
            Ok(0) => return Err(ReplError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        self.frames.reserve_read();
        self.frames.buf.extend_from_slice(self.scratch.get(..n).unwrap_or_default());
        if n >= BUSY_READ_BYTES {
            std::thread::sleep(match self.transport {
                StdTransport::Tcp(_) => BUSY_PAUSE_TCP,
                StdTransport::Unix(_) => BUSY_PAUSE_UNIX,
            });
        }
        Ok(n)
    }

    /// A sink for standby status updates on this stream's socket.
    pub fn status_sink(&self) -> Result<StatusSink, ReplError> {
        Ok(StatusSink {
            transport: self.transport.try_clone()?,
            reported: Lsn::ZERO,
            wbuf: BytesMut::with_capacity(64),
        })
    }

    /// Sends a standby status update: `written`, `flushed` and `applied` are WAL positions,
    /// and `flushed` must already be durable in walship's log.
    pub fn send_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply: bool) -> Result<(), ReplError> {
        standby_status(written, flushed, applied, reply, &mut self.wbuf)?;
        self.transport.write_all(&self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Ends the stream politely (CopyDone + Terminate). Errors are ignored: the server may
    /// already be gone.
    pub fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = self.transport.write_all(&self.wbuf);
    }
}
