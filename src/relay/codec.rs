//! Frames: `body_len u32 | crc u32 | body`, see the module doc.

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameError, Message, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};

/// Appends one whole frame for `message` to `buf`. On error `buf` is left as it was.
pub fn encode_frame(message: &Message, buf: &mut BytesMut) -> Result<(), FrameError> {
    let start = buf.len();
    buf.put_bytes(0, FRAME_HEADER_BYTES);
    let result = message.encode(buf).and_then(|()| fill_header(buf, start));
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Writes length and CRC into the header reserved at `start`, once the body follows it.
fn fill_header(buf: &mut BytesMut, start: usize) -> Result<(), FrameError> {
    let body_start = start + FRAME_HEADER_BYTES;
    let body = buf.get(body_start..).unwrap_or_default();
    let too_large = || FrameError::TooLarge { len: body.len() as u64, max: MAX_FRAME_BYTES };
    if body.len() > MAX_FRAME_BYTES {
        return Err(too_large());
    }
    let len = u32::try_from(body.len()).map_err(|_| too_large())?;
    let crc = crc32c::crc32c(body);
    // In range: `encode_frame` put the header's 8 bytes at `start` itself.
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A checked frame header: the body's length and expected CRC.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    pub body_len: usize,
    pub crc: u32,
}

/// Decodes a frame header, refusing a length out of range before anything is buffered.
pub(super) fn decode_header(header: [u8; FRAME_HEADER_BYTES], max: usize) -> Result<Header, FrameError> {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    match usize::try_from(len) {
        Ok(0) => Err(FrameError::Empty),
        Ok(body_len) if body_len <= max => Ok(Header { body_len, crc }),
        _ => Err(FrameError::TooLarge { len: u64::from(len), max }),
    }
}

/// Checks a body against its header's CRC and decodes it.
pub(super) fn decode_body(header: Header, body: Bytes) -> Result<Message, FrameError> {
    let actual = crc32c::crc32c(&body);
    if actual != header.crc {
        return Err(FrameError::Checksum { expected: header.crc, actual });
    }
    Message::decode_bytes(body)
}
