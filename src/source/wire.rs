//! The wire level of a replication connection, shared by its command half (`conn`) and its
//! streaming half (`stream`): backend messages cut from the bytes read (checking each
//! length against [`MAX_BACKEND_MESSAGE_BYTES`] before buffering), CopyData parsed into
//! replication messages, and the errors of both halves.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;

use crate::lsn::Lsn;

/// Largest backend message accepted. PostgreSQL values are at most 1 GiB; a row carrying one
/// plus protocol overhead fits.
pub const MAX_BACKEND_MESSAGE_BYTES: usize = (1 << 30) + (1 << 20);
/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 4 << 20;
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("cannot reach PostgreSQL at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] io::Error),
    #[error("PostgreSQL closed the replication connection")]
    Closed,
    #[error("timed out connecting to PostgreSQL at {0}")]
    Timeout(String),
    /// Nothing came for this long although the heartbeat writes to the WAL every
    /// `source.heartbeat_interval`: the link (or the walsender) is presumed dead.
    #[error("nothing from PostgreSQL's replication stream for {0:?}, although heartbeats are due far more often")]
    Silent(std::time::Duration),
    #[error("PostgreSQL {severity} {code}: {message}")]
    Server { severity: String, code: String, message: String },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("backend message of {len} bytes exceeds the {MAX_BACKEND_MESSAGE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("connection settings: {0}")]
    Config(String),
}

impl ReplError {
    /// A lost or silent connection, or a broken message, is retried; a refusal by the server
    /// goes by its SQLSTATE; bad credentials or settings need an operator.
    pub fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            ReplError::Connect { .. }
            | ReplError::Io(_)
            | ReplError::Closed
            | ReplError::Timeout(_)
            | ReplError::Silent(_)
            | ReplError::Protocol(_)
            | ReplError::TooLarge { .. } => ErrorClass::Retry,
            ReplError::Server { code, .. } => ErrorClass::of_sqlstate(code),
            ReplError::Auth(_) | ReplError::Config(_) => ErrorClass::Operator,
        }
    }
}

impl ReplError {
    /// SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

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

pub(crate) fn server_error(body: &backend::ErrorResponseBody) -> ReplError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    ReplError::Server { severity, code, message }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

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
