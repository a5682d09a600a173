//! The leader's relay server: one task per follower connection.
//!
//! A connection starts with the handshake; an accepted follower is streamed every log record
//! from its next index on, read from the durable log (never from memory only) through its own
//! [`Tail`] (a thread while it catches up, inline once it is caught up), so a slow follower
//! slows only its own tail. The
//! follower's acknowledgements update [`Followers`]; a [`LeaderStatus`] goes out every
//! [`LEADER_STATUS_INTERVAL`] so an idle follower still learns where the log ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::error::ErrorClass;
use crate::log::committer::Durable;
use crate::log::entry::EntryHeader;
use crate::log::tail::Tail;
use crate::log::{Log, LogError, Record, RecordKind};
use crate::lsn::unix_micros_now;
use crate::lsn::{EntryId, Index, Lsn};
use crate::relay::progress::Followers;
use crate::relay::{
    FrameError, FrameReader, FrameWriter, HandshakeError, LeaderHandshake, LeaderStatus, LeaderTerms, LogRange,
    Message, Refuse, RefuseCode, Serving, StreamStart, HANDSHAKE_MAX_FRAME_BYTES, MAX_FRAME_BYTES,
};
use crate::seed::{Export, SeedError};

/// Entries and payload bytes sent to each follower (Prometheus counters, label `follower`).
pub const RELAY_ENTRIES_SENT_TOTAL: &str = "walship_relay_entries_sent_total";
pub const RELAY_BYTES_SENT_TOTAL: &str = "walship_relay_bytes_sent_total";
/// Records read ahead of the socket per follower.
pub const RELAY_QUEUE_BATCHES: usize = 2;
/// How often an idle stream carries a [`LeaderStatus`].
pub const LEADER_STATUS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a snapshot may wait for the log to reach its position (heartbeats move it every
/// second on an idle database).
pub const SEED_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a follower may take to answer the challenge.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("follower did not finish the handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("follower sent {0} where it must not")]
    Unexpected(&'static str),
    #[error("follower's last entry {flushed} is not in this leader's log ({reason}): its log has diverged")]
    Diverged { flushed: EntryId, reason: String },
    #[error("follower reported an error: {0}")]
    Peer(String),
    #[error("seeding: {0}")]
    Seed(#[from] SeedError),
    #[error("the log did not reach the snapshot's position {lsn} in time")]
    SeedBehind { lsn: Lsn },
    #[error("the log tail ended: its writer is gone")]
    TailGone,
    #[error("heard nothing from the follower for {0:?} (relay.timeout)")]
    Idle(Duration),
}

impl ServeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ServeError::Frame(e) => e.class(),
            ServeError::Handshake(e) => e.class(),
            ServeError::Log(LogError::Compacted { .. }) => ErrorClass::Operator,
            ServeError::Log(_) => ErrorClass::Fatal,
            ServeError::Seed(e) => e.class(),
            ServeError::HandshakeTimeout
            | ServeError::Peer(_)
            | ServeError::TailGone
            | ServeError::Idle(_)
            | ServeError::SeedBehind { .. } => ErrorClass::Retry,
            ServeError::Unexpected(_) | ServeError::Diverged { .. } => ErrorClass::Operator,
        }
    }
}

/// What a leader serves from.
pub struct RelayServer {
    pub cluster: String,
    pub node: String,
    /// Whether this node leads, and its term: a connection streams only while it leads the
    /// term it was accepted at.
    pub serving: watch::Receiver<Serving>,
    pub token: Arc<[u8]>,
    pub log: Arc<Mutex<Log>>,
    pub followers: Followers,
    /// The last durable entry and the leader WAL position just past it, for [`LeaderStatus`].
    pub durable: watch::Receiver<Durable>,
    /// The leader's PostgreSQL and publication, to export snapshots for new followers.
    pub postgres: tokio_postgres::Config,
    pub publication: String,
    /// How long a follower may stay silent, or a write to it take (`relay.timeout`).
    pub timeout: Duration,
}

/// Resolves once this node no longer leads the term of `accepted`.
async fn stops_serving(mut serving: watch::Receiver<Serving>, accepted: Serving) {
    loop {
        {
            let now = serving.borrow_and_update().clone();
            if !now.leading || now.term != accepted.term {
                return;
            }
        }
        if serving.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Accepts followers until `cancel`; every connection's task is awaited before returning.
pub async fn serve(listener: TcpListener, server: Arc<RelayServer>, cancel: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                crate::relay::set_keepalive(&stream, server.timeout);
                let span = info_span!("relay", node = %server.node, peer = %addr, follower = tracing::field::Empty);
                tasks.spawn(server.clone().handle(stream, addr, cancel.child_token()).instrument(span));
            }
            Err(e) => {
                warn!(error = %e, "accepting a relay connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

impl RelayServer {
    async fn handle(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, cancel: CancellationToken) {
        match self.session(stream, cancel).await {
            Ok(()) => debug!(%addr, "relay connection closed"),
            Err(e) => match e.class() {
                ErrorClass::Retry => warn!(error = %e, "relay connection ended"),
                ErrorClass::Operator | ErrorClass::Fatal => error!(error = %e, "relay connection refused or failed"),
            },
        }
    }

    fn range(&self) -> Result<LogRange, ServeError> {
        let log = self.log.lock().map_err(|_| LogError::Failed)?;
        Ok(LogRange { first: log.first_index(), last: log.last_flushed().map(|id| id.index) })
    }

    async fn session(&self, stream: TcpStream, cancel: CancellationToken) -> Result<(), ServeError> {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        reader.set_max_frame_bytes(HANDSHAKE_MAX_FRAME_BYTES);
        let mut writer = FrameWriter::new(w);
        let serving = self.serving.borrow().clone();
        let handshake =
            LeaderHandshake::new(&self.cluster, &self.node, serving.term, serving.leading, &self.token, self.range()?)?
                .with_leader(serving.leader.clone());
        writer.send(&Message::Challenge(handshake.challenge())).await?;
        let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
            Err(_) => return Err(ServeError::HandshakeTimeout),
            // A peer looking for the leader reads the challenge and goes.
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(Message::Hello(hello)))) => hello,
            Ok(Ok(Some(other))) => return Err(ServeError::Unexpected(other.name())),
            Ok(Err(e)) => return Err(e.into()),
        };
        let accepted = match handshake.on_hello(&hello) {
            Ok(accepted) => accepted,
            Err(refused) => {
                let _ = writer.send(&Message::Refuse(refused.refuse.clone())).await;
                return Err(refused.error.into());
            }
        };
        if let Some(flushed) = accepted.flushed {
            if let Err(e) = self.check_holds(flushed) {
                let message = match self.divergence_refusal(&e) {
                    Some(refuse) => Message::Refuse(refuse),
                    None => Message::Error { message: e.to_string() },
                };
                let _ = writer.send(&message).await;
                return Err(e);
            }
        }
        writer.send(&Message::Welcome(accepted.welcome.clone())).await?;
        reader.set_max_frame_bytes(MAX_FRAME_BYTES);
        tracing::Span::current().record("follower", accepted.follower.as_str());
        self.followers.connected(&accepted.follower, accepted.flushed);
        let from = match accepted.start {
            StreamStart::From(from) => from,
            StreamStart::Seed => match self.seed(&mut reader, &mut writer, &accepted.follower).await {
                Ok(from) => from,
                Err(e) => {
                    let _ = writer.send(&Message::Error { message: e.to_string() }).await;
                    self.followers.disconnected(&accepted.follower);
                    return Err(e);
                }
            },
        };
        info!(follower = %accepted.follower, from = %from, "follower connected");
        let streamed = self.stream(&mut reader, &mut writer, &accepted.follower, from, cancel);
        let result = tokio::select! {
            result = streamed => result,
            () = stops_serving(self.serving.clone(), serving) => {
                info!(follower = %accepted.follower, "no longer leading this term: closing the stream");
                Ok(())
            }
        };
        self.followers.disconnected(&accepted.follower);
        result
    }

    /// Sends a new follower a snapshot and returns where its stream continues: the entry
    /// after the last one whose effects the snapshot holds.
    async fn seed<R, W>(
        &self,
        reader: &mut FrameReader<R>,
        writer: &mut FrameWriter<W>,
        follower: &str,
    ) -> Result<Index, ServeError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
            Ok(Ok(Some(Message::SeedRequest))) => {}
            Ok(Ok(Some(other))) => return Err(ServeError::Unexpected(other.name())),
            Ok(Ok(None)) | Err(_) => return Err(ServeError::HandshakeTimeout),
            Ok(Err(e)) => return Err(e.into()),
        }
        let mut export = Export::begin(&self.postgres, &self.publication).await?;
        let snapshot_lsn = export.snapshot_lsn();
        self.wait_durable(snapshot_lsn).await?;
        let position = {
            let log = self.log.lock().map_err(|_| LogError::Failed)?;
            position_before(&log, snapshot_lsn)?
        };
        info!(%follower, position = ?position, snapshot_lsn = %snapshot_lsn, "seeding a follower from a snapshot");
        writer.send(&Message::SeedBegin { position, snapshot_lsn }).await?;
        while let Some(message) = export.next().await? {
            writer.queue(&message)?;
            if writer.queued_bytes() >= (1 << 20) {
                writer.flush().await?;
            }
        }
        writer.flush().await?;
        let p = export.progress();
        info!(%follower, tables = p.tables_done, rows = p.rows, bytes = p.bytes, "snapshot sent");
        Ok(position.map_or(Index(1), Index::next))
    }

    /// Waits until the log holds every transaction that committed before `lsn`.
    async fn wait_durable(&self, lsn: Lsn) -> Result<(), ServeError> {
        let mut durable = self.durable.clone();
        let deadline = tokio::time::Instant::now() + SEED_CATCH_UP_TIMEOUT;
        while durable.borrow_and_update().end_lsn < lsn {
            match tokio::time::timeout_at(deadline, durable.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServeError::TailGone),
                Err(_) => return Err(ServeError::SeedBehind { lsn }),
            }
        }
        Ok(())
    }

    /// The `Refuse` that tells a follower its log diverged, with this log's term history, from
    /// which it finds the branch point; `None` for other errors.
    fn divergence_refusal(&self, error: &ServeError) -> Option<Refuse> {
        let ServeError::Diverged { .. } = error else { return None };
        let log = self.log.lock().ok()?;
        let code = RefuseCode::Diverged(Box::new(LeaderTerms {
            terms: log.terms().starts().to_vec(),
            last: log.last_flushed().map(|id| id.index),
        }));
        Some(Refuse { code, message: error.to_string() })
    }

    /// The follower's last entry must be in this log with the same term.
    fn check_holds(&self, flushed: EntryId) -> Result<(), ServeError> {
        let diverged = |reason: String| ServeError::Diverged { flushed, reason };
        let log = self.log.lock().map_err(|_| LogError::Failed)?;
        let last = log.last_flushed().ok_or_else(|| diverged("the leader's log is empty".into()))?;
        if flushed.index > last.index {
            return Err(diverged(format!("the leader's log ends at {last}")));
        }
        if log.first_index().is_some_and(|first| flushed.index < first) {
            return Ok(()); // compacted away: the handshake's retention check decides
        }
        let mut reader = log.reader(flushed.index)?;
        drop(log);
        match reader.next()? {
            Some(record) if record.id == flushed => Ok(()),
            Some(record) => Err(diverged(format!("the leader has {} at that index", record.id))),
            None => Err(diverged("the leader could not read that index".into())),
        }
    }

    async fn stream<R, W>(
        &self,
        reader: &mut FrameReader<R>,
        writer: &mut FrameWriter<W>,
        follower: &str,
        from: Index,
        cancel: CancellationToken,
    ) -> Result<(), ServeError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let log_reader = self.log.lock().map_err(|_| LogError::Failed)?.reader(from)?;
        let mut rx = crate::log::tail::spawn(log_reader, RELAY_QUEUE_BATCHES);
        let mut status = tokio::time::interval(LEADER_STATUS_INTERVAL);
        let mut heard = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = tokio::time::sleep_until(heard + self.timeout) => break Err(ServeError::Idle(self.timeout)),
                record = rx.recv() => match record {
                    Some(Ok(record)) => {
                        let sent = self.send_records(writer, follower, record, &mut rx);
                        match tokio::time::timeout(self.timeout, sent).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break Err(e),
                            Err(_) => break Err(ServeError::Idle(self.timeout)),
                        }
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(ServeError::TailGone),
                },
                message = reader.next() => match message {
                    Ok(Some(Message::Ack(ack))) => {
                        heard = tokio::time::Instant::now();
                        self.followers.acked(follower, ack.received, ack.flushed, ack.applied, ack.applied_lsn)
                    }
                    Ok(Some(Message::Error { message })) => break Err(ServeError::Peer(message)),
                    Ok(Some(other)) => break Err(ServeError::Unexpected(other.name())),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                },
                _ = status.tick() => {
                    let message = Message::LeaderStatus(self.status()?);
                    let sent = writer.send(&message);
                    match tokio::time::timeout(self.timeout, sent).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Err(e.into()),
                        Err(_) => break Err(ServeError::Idle(self.timeout)),
                    }
                }
            }
        };
        rx.close().await;
        result
    }

    /// Sends `first` and whatever else the tail has ready, in one write.
    async fn send_records<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        writer: &mut FrameWriter<W>,
        follower: &str,
        first: Record,
        rx: &mut Tail,
    ) -> Result<(), ServeError> {
        let mut sent = Sent::default();
        sent.queue(writer, first)?;
        while writer.queued_bytes() < (1 << 20) {
            match rx.try_recv() {
                Ok(Ok(record)) => sent.queue(writer, record)?,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        writer.flush().await?;
        let follower = follower.to_owned();
        metrics::counter!(RELAY_ENTRIES_SENT_TOTAL, "follower" => follower.clone()).increment(sent.entries);
        metrics::counter!(RELAY_BYTES_SENT_TOTAL, "follower" => follower).increment(sent.bytes);
        Ok(())
    }

    fn status(&self) -> Result<LeaderStatus, ServeError> {
        let last_index = self.log.lock().map_err(|_| LogError::Failed)?.last_flushed().map(|id| id.index);
        let durable_end_lsn = self.durable.borrow().end_lsn;
        Ok(LeaderStatus { last_index, durable_end_lsn, time_us: unix_micros_now() })
    }
}

/// Entries and payload bytes queued for one write.
#[derive(Default)]
struct Sent {
    entries: u64,
    bytes: u64,
}

impl Sent {
    fn queue<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        writer: &mut FrameWriter<W>,
        record: Record,
    ) -> Result<(), FrameError> {
        self.bytes += record.payload.len() as u64;
        self.entries += u64::from(matches!(record.kind, RecordKind::Entry));
        writer.queue(&Message::Record(record))
    }
}

/// The last entry of `log` whose commit record ends at or before `lsn` (so its effects are in a
/// snapshot taken at `lsn`). Entries are in commit order, so a binary search over indexes finds
/// it. `None` when no entry of the log qualifies and none came before it.
fn position_before(log: &Log, lsn: Lsn) -> Result<Option<Index>, ServeError> {
    let (Some(first), Some(last)) = (log.first_index(), log.last_flushed()) else { return Ok(None) };
    let before_first = (first.0 > 1).then(|| Index(first.0 - 1));
    if entry_end(log, first)? > lsn {
        return Ok(before_first);
    }
    let (mut lo, mut hi) = (first.0, last.index.0);
    // Invariant: entry lo ends at or before lsn; entries after hi end after it.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if entry_end(log, Index(mid))? <= lsn {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(Index(lo)))
}

/// The `end_lsn` in the header of entry `index`.
fn entry_end(log: &Log, index: Index) -> Result<Lsn, ServeError> {
    let mut reader = log.reader(index)?;
    while let Some(record) = reader.next()? {
        if matches!(record.kind, RecordKind::Entry) {
            let header = EntryHeader::decode(&record.payload)
                .map_err(|e| ServeError::Diverged { flushed: record.id, reason: e.to_string() })?;
            return Ok(header.end_lsn);
        }
    }
    Err(ServeError::Log(LogError::BeyondEnd { requested: index, next: index }))
}
