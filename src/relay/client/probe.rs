//! Finding the leader: every peer of `[[peers]]` sends a `Challenge` as soon as it is connected
//! to, which says its cluster, its term and whether it leads. The probe reads only that and
//! hangs up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::warn;

use crate::config::Peer;
use crate::lsn::Term;
use crate::relay::{Challenge, FrameReader, Message, HANDSHAKE_MAX_FRAME_BYTES};

use super::FollowError;

/// How long a peer may take to accept a connection and send its challenge.
pub const PEER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every peer who leads: the one that says it does, with the highest term.
pub async fn find_leader(peers: &[Peer], cluster: &str, own_term: Term) -> Result<SocketAddr, FollowError> {
    let mut best: Option<(Term, SocketAddr)> = None;
    for peer in peers {
        match probe(&peer.relay).await {
            Ok((addr, challenge)) => {
                if challenge.cluster != cluster {
                    warn!(peer = %peer.node, peer_cluster = %challenge.cluster, "peer belongs to another cluster; check [[peers]]");
                    continue;
                }
                let leads = challenge.is_leader && challenge.term >= own_term;
                if leads && best.is_none_or(|(term, _)| challenge.term > term) {
                    best = Some((challenge.term, addr));
                }
            }
            Err(e) => tracing::debug!(peer = %peer.node, error = %e, "peer not reachable"),
        }
    }
    best.map(|(_, addr)| addr).ok_or_else(|| FollowError::NoLeader(cluster.to_owned()))
}

async fn probe(relay: &str) -> Result<(SocketAddr, Challenge), FollowError> {
    let connect_err = |source| FollowError::Connect { addr: relay.to_owned(), source };
    let attempt = async {
        let stream = TcpStream::connect(relay).await.map_err(connect_err)?;
        let addr = stream.peer_addr().map_err(connect_err)?;
        let mut reader = FrameReader::new(stream);
        reader.set_max_frame_bytes(HANDSHAKE_MAX_FRAME_BYTES);
        match reader.next().await? {
            Some(Message::Challenge(c)) => Ok((addr, c)),
            Some(other) => Err(FollowError::Unexpected(other.name())),
            None => Err(FollowError::Closed),
        }
    };
    let timed_out = || FollowError::Connect { addr: relay.to_owned(), source: std::io::ErrorKind::TimedOut.into() };
    tokio::time::timeout(PEER_PROBE_TIMEOUT, attempt).await.map_err(|_| timed_out())?
}
