//! Connecting to the leader: dial it, then drive the handshake over the socket. The decisions
//! are [`FollowerHandshake`]'s (`relay/handshake.rs`, no I/O); this file only carries its
//! messages.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::relay::{
    FollowerHandshake, FrameReader, FrameWriter, Message, Session, HANDSHAKE_MAX_FRAME_BYTES, MAX_FRAME_BYTES,
};

use super::FollowError;

/// A framed connection to the leader.
pub(super) struct Connection {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
}

impl Connection {
    /// Connects to `addr`. Until the handshake is done, frames are held to the handshake's size.
    pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<Connection, FollowError> {
        let connect = tokio::time::timeout(timeout, TcpStream::connect(addr));
        let stream = match connect.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(FollowError::Connect { addr: addr.to_string(), source }),
            Err(_) => return Err(FollowError::Idle(timeout)),
        };
        let _ = stream.set_nodelay(true);
        crate::relay::set_keepalive(&stream, timeout);
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        reader.set_max_frame_bytes(HANDSHAKE_MAX_FRAME_BYTES);
        Ok(Connection { reader, writer: FrameWriter::new(w) })
    }

    /// Answers the leader's `Challenge` and reads its `Welcome`; then lifts the frame limit.
    pub async fn handshake(&mut self, mut handshake: FollowerHandshake) -> Result<Session, FollowError> {
        let challenge = match self.reader.next().await? {
            Some(Message::Challenge(c)) => c,
            Some(other) => return Err(FollowError::Unexpected(other.name())),
            None => return Err(FollowError::Closed),
        };
        let hello = handshake.on_challenge(&challenge)?;
        self.writer.send(&Message::Hello(hello)).await?;
        let reply = self.reader.next().await?.ok_or(FollowError::Closed)?;
        let session = handshake.on_reply(reply)?;
        self.reader.set_max_frame_bytes(MAX_FRAME_BYTES);
        Ok(session)
    }
}
