//! The follower's relay client: find the leader among the peers, stream its log into this
//! node's own log, and acknowledge what is received, fsynced and applied.
//!
//! Received records go to the log writer (the same group-committing writer the leader uses);
//! `flushed` is acknowledged only from the writer's durable position, after its fsync. After a
//! crash or a network cut the follower reconnects with backoff and asks for the entries after
//! the last one its own log holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::Peer;
use crate::error::ErrorClass;
use crate::log::committer::{Durable, WriteCmd};
use crate::log::entry::EntryHeader;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::node::LeaderView;
use crate::relay::{
    Ack, FollowerHandshake, FrameError, FrameReader, FrameWriter, HandshakeError, Message, StreamStart,
    HANDSHAKE_MAX_FRAME_BYTES, MAX_FRAME_BYTES,
};
use crate::seed::{Load, SeedError, SeedProgress};
use crate::source::builder::Output;

/// Progress of loading a snapshot (Prometheus gauges).
pub const SEED_TABLES_DONE: &str = "walship_seed_tables_done";
pub const SEED_ROWS: &str = "walship_seed_rows";
pub const SEED_BYTES: &str = "walship_seed_bytes";
/// How long a peer may take to accept a connection and send its challenge.
pub const PEER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Records gathered from the socket before they go to the writer.
pub const RECEIVE_BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no peer says it leads cluster {0}")]
    NoLeader(String),
    #[error("cannot reach leader {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("leader closed the stream")]
    Closed,
    #[error("leader sent {0} where it must not")]
    Unexpected(&'static str),
    #[error("leader sent entry {got} where {expected} was due")]
    OutOfOrder { expected: Index, got: EntryId },
    #[error("entry {0} from the leader has a malformed header")]
    BadEntry(EntryId),
    #[error("leader reported an error: {0}")]
    Peer(String),
    #[error("seeding: {0}")]
    Seed(#[from] SeedError),
    #[error("the log writer stopped")]
    WriterGone,
}

impl FollowError {
    pub fn class(&self) -> ErrorClass {
        match self {
            FollowError::NoLeader(_) | FollowError::Connect { .. } | FollowError::Closed | FollowError::Peer(_) => {
                ErrorClass::Retry
            }
            FollowError::Frame(e) => e.class(),
            FollowError::Handshake(e) => e.class(),
            FollowError::Unexpected(_) | FollowError::OutOfOrder { .. } | FollowError::BadEntry(_) => {
                ErrorClass::Operator
            }
            FollowError::Seed(e) => e.class(),
            FollowError::WriterGone => ErrorClass::Fatal,
        }
    }
}

/// What this follower applied, as the apply task publishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub id: Option<EntryId>,
    /// The leader WAL position just past the applied entry.
    pub end_lsn: Lsn,
}

/// Everything the follower's relay client works with.
pub struct FollowerLink {
    pub cluster: String,
    pub node: String,
    pub term: Term,
    pub token: Arc<[u8]>,
    pub peers: Vec<Peer>,
    pub writer: mpsc::Sender<WriteCmd>,
    pub durable: watch::Receiver<Durable>,
    pub applied: watch::Receiver<Applied>,
    /// Who leads and its last status, for lag.
    pub leader: watch::Sender<Option<LeaderView>>,
    /// Ask the leader for a snapshot first (this node's database is empty).
    pub seed: bool,
    /// The last entry this node holds when its log has none: the position of a snapshot
    /// already loaded into its database.
    pub floor: Option<EntryId>,
    /// This node's PostgreSQL, where a snapshot is loaded.
    pub postgres: tokio_postgres::Config,
    /// Progress of a snapshot being loaded, for `/status`.
    pub seeding: watch::Sender<Option<SeedProgress>>,
}

/// Follows the leader until `cancel`; returns only on cancellation or a fatal error.
pub async fn follow(mut link: FollowerLink, cancel: CancellationToken) -> Result<(), FollowError> {
    let mut backoff = Backoff::default();
    loop {
        let mut session = Session::default();
        let result = tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = link.connect_and_stream(&mut session, &mut backoff) => r,
        };
        if session.open_entry && link.writer.send(WriteCmd::DropUnfinished).await.is_err() {
            return Err(FollowError::WriterGone);
        }
        let delay = match result {
            Ok(()) => return Ok(()),
            Err(e) => match backoff.after_failure(e.class(), &e, "following the leader") {
                Some(delay) => delay,
                None => return Err(e),
            },
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// State of one connection to the leader.
#[derive(Default)]
struct Session {
    /// Chunks of an entry whose closing record has not arrived went to the writer.
    open_entry: bool,
}

impl FollowerLink {
    async fn connect_and_stream(&mut self, session: &mut Session, backoff: &mut Backoff) -> Result<(), FollowError> {
        let addr = find_leader(&self.peers, &self.cluster, self.term).await?;
        let stream =
            TcpStream::connect(addr).await.map_err(|source| FollowError::Connect { addr: addr.to_string(), source })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        reader.set_max_frame_bytes(HANDSHAKE_MAX_FRAME_BYTES);
        let mut writer = FrameWriter::new(w);
        let flushed = self.durable.borrow().last.or(self.floor);
        let mut handshake = FollowerHandshake::new(&self.cluster, &self.node, self.term, flushed, &self.token)?;
        if self.seed {
            handshake = handshake.request_seed();
        }
        let challenge = match reader.next().await? {
            Some(Message::Challenge(c)) => c,
            Some(other) => return Err(FollowError::Unexpected(other.name())),
            None => return Err(FollowError::Closed),
        };
        let hello = handshake.on_challenge(&challenge)?;
        writer.send(&Message::Hello(hello)).await?;
        let reply = reader.next().await?.ok_or(FollowError::Closed)?;
        let accepted = handshake.on_reply(reply)?;
        reader.set_max_frame_bytes(MAX_FRAME_BYTES);
        let from = match accepted.start {
            StreamStart::From(from) => from,
            StreamStart::Seed => {
                writer.send(&Message::SeedRequest).await?;
                let position = self.load_seed(&mut reader, accepted.term).await?;
                position.map_or(Index(1), Index::next)
            }
        };
        info!(leader = %accepted.leader_node, term = %accepted.term, from = %from, "following");
        self.leader.send_replace(Some(LeaderView { node: accepted.leader_node.clone(), status: None }));
        backoff.reset();
        self.stream(&mut reader, &mut writer, session, from).await
    }

    async fn stream<R, W>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut FrameWriter<W>,
        session: &mut Session,
        from: Index,
    ) -> Result<(), FollowError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut expected = from;
        let mut received: Option<EntryId> = self.durable.borrow().last;
        let mut acked = Ack { received: None, flushed: None, applied: None, applied_lsn: Lsn::ZERO };
        loop {
            let ack = self.ack(received);
            if ack != acked {
                writer.send(&Message::Ack(ack)).await?;
                acked = ack;
            }
            tokio::select! {
                message = reader.next() => {
                    let mut batch = Batch::default();
                    let mut next = message?;
                    while let Some(message) = next {
                        self.take(message, &mut batch, &mut expected, session)?;
                        next = if batch.bytes < RECEIVE_BATCH_BYTES { reader.try_next()? } else { None };
                    }
                    if batch.records.is_empty() && batch.saw_nothing {
                        return Err(FollowError::Closed);
                    }
                    received = batch.last_entry.or(received);
                    if !batch.records.is_empty() {
                        self.writer.send(WriteCmd::Records(batch.records)).await.map_err(|_| FollowError::WriterGone)?;
                    }
                }
                changed = self.durable.changed() => changed.map_err(|_| FollowError::WriterGone)?,
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        // The apply task ended; the sidecar is stopping.
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Loads the leader's snapshot into this node's empty database, in one transaction that
    /// also records the snapshot's position; returns that position.
    async fn load_seed<R>(&mut self, reader: &mut FrameReader<R>, term: Term) -> Result<Option<Index>, FollowError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let (position, snapshot_lsn) = match reader.next().await? {
            Some(Message::SeedBegin { position, snapshot_lsn }) => (position, snapshot_lsn),
            Some(Message::Error { message }) => return Err(FollowError::Peer(message)),
            Some(other) => return Err(FollowError::Unexpected(other.name())),
            None => return Err(FollowError::Closed),
        };
        info!(position = ?position, snapshot_lsn = %snapshot_lsn, "loading a snapshot from the leader");
        let mut load = Load::begin(&self.postgres, term, position, snapshot_lsn).await?;
        loop {
            match reader.next().await? {
                Some(end @ Message::SeedEnd { .. }) => {
                    load.take(end).await?;
                    break;
                }
                Some(Message::Error { message }) => return Err(FollowError::Peer(message)),
                Some(message) => load.take(message).await?,
                None => return Err(FollowError::Closed),
            }
            let p = load.progress();
            self.seeding.send_replace(Some(p));
            metrics::gauge!(SEED_TABLES_DONE).set(f64::from(p.tables_done));
            metrics::gauge!(SEED_ROWS).set(p.rows as f64);
            metrics::gauge!(SEED_BYTES).set(p.bytes as f64);
        }
        let loaded = load.finish().await;
        self.seeding.send_replace(None);
        let p = loaded?;
        info!(tables = p.tables_done, rows = p.rows, bytes = p.bytes, "snapshot loaded");
        self.seed = false;
        self.floor = position.map(|index| EntryId { term, index });
        Ok(position)
    }

    fn ack(&self, received: Option<EntryId>) -> Ack {
        let applied = *self.applied.borrow();
        Ack { received, flushed: self.durable.borrow().last, applied: applied.id, applied_lsn: applied.end_lsn }
    }

    /// Takes one message of the stream; records are checked for order and added to `batch`.
    fn take(
        &self,
        message: Message,
        batch: &mut Batch,
        expected: &mut Index,
        session: &mut Session,
    ) -> Result<(), FollowError> {
        batch.saw_nothing = false;
        match message {
            Message::Record(record) => {
                if record.id.index != *expected {
                    return Err(FollowError::OutOfOrder { expected: *expected, got: record.id });
                }
                batch.bytes += record.payload.len();
                let output = output_of(record)?;
                match &output {
                    Output::Chunk { .. } => session.open_entry = true,
                    Output::Entry { id, .. } => {
                        session.open_entry = false;
                        *expected = id.index.next();
                        batch.last_entry = Some(*id);
                    }
                }
                batch.records.push(output);
                Ok(())
            }
            Message::LeaderStatus(status) => {
                self.leader.send_modify(|view| {
                    if let Some(view) = view {
                        view.status = Some(status);
                    }
                });
                Ok(())
            }
            Message::Error { message } => Err(FollowError::Peer(message)),
            other => Err(FollowError::Unexpected(other.name())),
        }
    }
}

struct Batch {
    records: Vec<Output>,
    bytes: usize,
    last_entry: Option<EntryId>,
    /// `reader.next()` said the stream ended.
    saw_nothing: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Batch { records: Vec::new(), bytes: 0, last_entry: None, saw_nothing: true }
    }
}

fn output_of(record: Record) -> Result<Output, FollowError> {
    Ok(match record.kind {
        RecordKind::Chunk => Output::Chunk { id: record.id, payload: record.payload },
        RecordKind::Entry => {
            let header = EntryHeader::decode(&record.payload).map_err(|_| FollowError::BadEntry(record.id))?;
            Output::Entry { id: record.id, payload: record.payload, end_lsn: header.end_lsn }
        }
    })
}

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

async fn probe(relay: &str) -> Result<(SocketAddr, crate::relay::Challenge), FollowError> {
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
