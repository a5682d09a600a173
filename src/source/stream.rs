//! The streaming half of a replication connection, and the framing both halves share.
//!
//! Once `START_REPLICATION` succeeded, the socket leaves the async runtime and is read by one
//! dedicated thread with blocking calls ([`ReplStream`]). That is deliberate: on loopback the
//! walsender pays for every wake-up of a reader that waits on the socket, one per pgoutput
//! message. A thread that reads everything the socket holds and, while the stream is busy,
//! pauses briefly before the next read is never on the socket's wait queue, so the
//! walsender sends without waking anyone and the next read takes a large batch.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::{backend, frontend};

use crate::lsn::now_pg_micros;
use crate::lsn::Lsn;
use crate::source::conn::{server_error, ReplError, MAX_BACKEND_MESSAGE_BYTES, READ_CHUNK_BYTES};

/// A read of at least this many bytes means the stream is busy.
pub const BUSY_READ_BYTES: usize = 16 << 10;
/// While busy on TCP, how long the reader lets data gather before reading again. The receive
/// buffer (`SOCKET_RECV_BUFFER_BYTES`) holds far more than arrives meanwhile.
pub const BUSY_PAUSE_TCP: Duration = Duration::from_millis(2);
/// The same on a Unix socket, much shorter: there the sender's small send buffer is all the
/// room there is, and each message's buffer overhead fills it after a few hundred messages;
/// pausing longer would stall the walsender.
pub const BUSY_PAUSE_UNIX: Duration = Duration::from_micros(200);

/// One CopyData message of a running replication stream.
#[derive(Debug)]
pub enum CopyMessage {
    /// `w`: a piece of decoded WAL.
    XLogData { wal_start: Lsn, wal_end: Lsn, data: Bytes },
    /// `k`: the server's keepalive.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

pub(crate) enum Frame {
    CopyData(Bytes),
    CopyBothResponse,
    Other(backend::Message),
}

/// Bytes read from the server, cut into backend messages.
pub(crate) struct FrameBuf {
    pub(crate) buf: BytesMut,
}

impl FrameBuf {
    pub(crate) fn new() -> FrameBuf {
        FrameBuf { buf: BytesMut::with_capacity(READ_CHUNK_BYTES) }
    }

    /// Makes room for the next read.
    pub(crate) fn reserve_read(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES / 4 {
            self.buf.reserve(READ_CHUNK_BYTES);
        }
    }

    /// The next complete message, checking its length before buffering more for it.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, ReplError> {
        let Some(header) = self.buf.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            return Err(ReplError::Protocol(format!("message length {len} below 4")));
        }
        if len > MAX_BACKEND_MESSAGE_BYTES {
            return Err(ReplError::TooLarge { len });
        }
        let total = len + 1;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        match tag {
            b'd' => {
                frame.advance(5);
                Ok(Some(Frame::CopyData(frame.freeze())))
            }
            b'W' => Ok(Some(Frame::CopyBothResponse)),
            _ => match backend::Message::parse(&mut frame)? {
                Some(m) => Ok(Some(Frame::Other(m))),
                None => Err(ReplError::Protocol("incomplete backend message".into())),
            },
        }
    }

    /// The next buffered replication message, without I/O.
    pub(crate) fn try_next_copy(&mut self) -> Result<Option<CopyMessage>, ReplError> {
        match self.try_frame()? {
            None => Ok(None),
            Some(Frame::CopyData(data)) => parse_copy_data(data).map(Some),
            Some(Frame::Other(backend::Message::ErrorResponse(body))) => Err(server_error(&body)),
            Some(Frame::Other(backend::Message::CopyDone)) => Err(ReplError::Closed),
            Some(Frame::Other(_)) => Ok(None),
            Some(Frame::CopyBothResponse) => Err(ReplError::Protocol("repeated CopyBothResponse".into())),
        }
    }
}

pub(crate) fn parse_copy_data(mut data: Bytes) -> Result<CopyMessage, ReplError> {
    let short = || ReplError::Protocol("truncated replication message".into());
    match data.first().copied() {
        Some(b'w') if data.len() >= 25 => {
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            data.advance(8); // send time
            Ok(CopyMessage::XLogData { wal_start, wal_end, data })
        }
        Some(b'k') if data.len() >= 18 => {
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            data.advance(8);
            Ok(CopyMessage::Keepalive { wal_end, reply_requested: data.get_u8() == 1 })
        }
        Some(b'w') | Some(b'k') => Err(short()),
        Some(tag) => Err(ReplError::Protocol(format!("unknown replication message tag {tag:#04x}"))),
        None => Err(short()),
    }
}

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

/// Where the writer finds the current connection's sink; `None` while disconnected.
pub type SharedSink = Arc<Mutex<Option<StatusSink>>>;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_data_parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x10);
        w.put_u64(0x20);
        w.put_i64(0);
        w.put_slice(b"payload");
        match parse_copy_data(w.freeze()).unwrap() {
            CopyMessage::XLogData { wal_start, wal_end, data } => {
                assert_eq!((wal_start, wal_end), (Lsn(0x10), Lsn(0x20)));
                assert_eq!(&data[..], b"payload");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            parse_copy_data(k.freeze()).unwrap(),
            CopyMessage::Keepalive { wal_end: Lsn(0x30), reply_requested: true }
        ));
    }

    #[test]
    fn truncated_or_unknown_copy_data_is_an_error() {
        for bad in [&b""[..], b"w", b"k\0\0", b"x123"] {
            assert!(parse_copy_data(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frames_are_length_checked_before_buffering() {
        let mut frames = FrameBuf::new();
        frames.buf.extend_from_slice(&[b'd', 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(frames.try_frame(), Err(ReplError::TooLarge { .. })));
        let mut frames = FrameBuf::new();
        frames.buf.extend_from_slice(&[b'd', 0, 0, 0, 2]);
        assert!(matches!(frames.try_frame(), Err(ReplError::Protocol(_))));
        let mut frames = FrameBuf::new();
        frames.buf.extend_from_slice(&[b'd', 0, 0, 0, 8, b'k']);
        assert!(matches!(frames.try_frame(), Ok(None)), "incomplete frame waits for more");
    }
}
