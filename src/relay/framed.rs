//! Framed messages over any byte stream.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{decode_body, decode_header, Header};
use super::WRITE_BUFFER_KEEP_BYTES;
use super::{encode_frame, FrameError, Message, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, READ_CHUNK_BYTES};

#[cfg(test)]
#[path = "framed_tests.rs"]
mod tests;

/// Reads messages from a byte stream, [`READ_CHUNK_BYTES`] at a time.
///
/// A frame's buffer grows only as its bytes arrive, so a peer claiming a huge frame gets no
/// memory it does not fill. Decoded payloads are slices of the read buffer, not copies: a
/// payload kept alive keeps its read chunk alive.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> Self {
        FrameReader { reader, buf: BytesMut::new(), max_frame_bytes: MAX_FRAME_BYTES }
    }

    /// Lowers the largest frame body accepted (at most [`MAX_FRAME_BYTES`]); for instance to
    /// [`super::HANDSHAKE_MAX_FRAME_BYTES`] while the peer is not authenticated yet.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max.min(MAX_FRAME_BYTES);
    }

    /// The next message, or `None` when the stream ends cleanly between two frames.
    ///
    /// Cancel-safe: bytes read before the future is dropped stay buffered for the next call.
    pub async fn next(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            if let Some(message) = self.try_next()? {
                return Ok(Some(message));
            }
            self.buf.reserve(READ_CHUNK_BYTES);
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    buffered => Err(FrameError::Eof { buffered }),
                };
            }
        }
    }

    /// The next message if a whole frame is already buffered, without I/O.
    pub fn try_next(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(header) = self.header()? else {
            return Ok(None);
        };
        let frame_len = FRAME_HEADER_BYTES + header.body_len;
        if self.buf.len() < frame_len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(frame_len).freeze();
        let body = frame.split_off(FRAME_HEADER_BYTES);
        decode_body(header, body).map(Some)
    }

    fn header(&self) -> Result<Option<Header>, FrameError> {
        let Some(bytes) = self.buf.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(bytes);
        decode_header(header, self.max_frame_bytes).map(Some)
    }

    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }
}

/// Writes messages to a byte stream, batching queued frames into few writes.
pub struct FrameWriter<W> {
    writer: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(writer: W) -> Self {
        FrameWriter { writer, buf: BytesMut::new() }
    }

    /// Encodes `message` into the write buffer; nothing is sent before [`Self::flush`].
    pub fn queue(&mut self, message: &Message) -> Result<(), FrameError> {
        encode_frame(message, &mut self.buf)
    }

    /// Bytes queued and not yet written: flush when this grows large.
    pub fn queued_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued and flushes the stream.
    ///
    /// Cancel-safe: what was not written when the future is dropped stays queued.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.writer.write_all_buf(&mut self.buf).await?;
        if self.buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            self.buf = BytesMut::new();
        }
        self.writer.flush().await?;
        Ok(())
    }

    /// Queues `message` and flushes.
    pub async fn send(&mut self, message: &Message) -> Result<(), FrameError> {
        self.queue(message)?;
        self.flush().await
    }

    pub fn get_ref(&self) -> &W {
        &self.writer
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.writer
    }
}
