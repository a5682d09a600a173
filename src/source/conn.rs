//! A PostgreSQL replication connection (`replication=database`), spoken directly on
//! postgres-protocol's message codecs: tokio-postgres has no replication mode.
//!
//! The connection reads the server in large batches: [`ReplConnection::fill`] pulls whatever the
//! socket holds (up to [`READ_CHUNK_BYTES`] at a time) and [`ReplConnection::try_next_copy`]
//! hands out the buffered CopyData messages without further I/O. Every frame's length is checked
//! against [`MAX_BACKEND_MESSAGE_BYTES`] before anything is buffered for it.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio_postgres::config::Host;

use crate::lsn::Lsn;
use crate::source::stream::{ReplStream, StdTransport};
pub use crate::source::wire::ReplError;
use crate::source::wire::{server_error, Frame, FrameBuf};

/// Kernel receive buffer requested for the replication socket.
pub const SOCKET_RECV_BUFFER_BYTES: u32 = 8 << 20;
/// How long connecting and authenticating may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub slot_name: String,
    pub consistent_point: Lsn,
    /// Valid only while this connection stays open and idle.
    pub snapshot_name: String,
}

/// The result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone)]
pub struct SystemId {
    pub system_id: String,
    pub timeline: u32,
    pub wal_flush: Lsn,
}

/// The socket while connecting and setting up.
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Transport {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read_buf(buf).await,
            Transport::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(buf).await,
            Transport::Unix(s) => s.write_all(buf).await,
        }
    }

    /// Leaves the runtime: the socket in blocking mode, for the streaming thread.
    fn into_std(self) -> io::Result<StdTransport> {
        Ok(match self {
            Transport::Tcp(s) => {
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                StdTransport::Tcp(s)
            }
            Transport::Unix(s) => {
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                StdTransport::Unix(s)
            }
        })
    }
}

/// A replication connection while it is set up (authentication, commands). Starting
/// replication turns it into a [`ReplStream`].
pub struct ReplConnection {
    transport: Transport,
    frames: FrameBuf,
    wbuf: BytesMut,
}

impl ReplConnection {
    /// Connects with `replication=database` and authenticates (trust, password, md5, SCRAM).
    pub async fn connect(config: &tokio_postgres::Config, application_name: &str) -> Result<Self, ReplError> {
        let addr = describe_target(config);
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(config, application_name))
            .await
            .map_err(|_| ReplError::Timeout(addr))?
    }

    async fn connect_inner(config: &tokio_postgres::Config, application_name: &str) -> Result<Self, ReplError> {
        let transport = open_transport(config).await?;
        let mut conn = ReplConnection { transport, frames: FrameBuf::new(), wbuf: BytesMut::with_capacity(4096) };
        let user = config.get_user().ok_or_else(|| ReplError::Config("no user given".into()))?;
        let dbname = config.get_dbname().unwrap_or(user);
        let params = [
            ("user", user),
            ("database", dbname),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
            // pgoutput writes values with the walsender's output settings; followers read
            // them back with their input functions, so the text must be unambiguous (the
            // settings PostgreSQL's own subscriber asks for).
            ("DateStyle", "ISO"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "3"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)?;
        conn.send().await?;
        conn.authenticate(user, config.get_password()).await?;
        conn.wait_ready().await?;
        Ok(conn)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), ReplError> {
        let need_password = || ReplError::Auth("the server asks for a password and none is configured".into());
        loop {
            match self.read_other().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password.ok_or_else(need_password)?, &mut self.wbuf)?;
                    self.send().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password.ok_or_else(need_password)?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.send().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechanisms.next()? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(ReplError::Auth("server offers no SASL mechanism walship supports".into()));
                    }
                    self.scram(password.ok_or_else(need_password)?).await?;
                }
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => return Err(ReplError::Auth("unsupported authentication method".into())),
            }
        }
    }

    async fn scram(&mut self, password: &[u8]) -> Result<(), ReplError> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.wbuf)?;
        self.send().await?;
        match self.read_other().await? {
            backend::Message::AuthenticationSaslContinue(body) => scram.update(body.data())?,
            backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => return Err(ReplError::Auth("unexpected message during SCRAM exchange".into())),
        }
        frontend::sasl_response(scram.message(), &mut self.wbuf)?;
        self.send().await?;
        match self.read_other().await? {
            backend::Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
            backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => return Err(ReplError::Auth("unexpected message finishing SCRAM exchange".into())),
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), ReplError> {
        loop {
            match self.read_other().await? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// Runs one command with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_other().await? {
                backend::Message::DataRow(row) => rows.push(text_row(&row)?),
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemId, ReplError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, 3)?;
        Ok(SystemId {
            system_id: field(row, 0)?.to_owned(),
            timeline: field(row, 1)?
                .parse()
                .map_err(|_| ReplError::Protocol("IDENTIFY_SYSTEM timeline is not a number".into()))?,
            wal_flush: parse_lsn(field(row, 2)?)?,
        })
    }

    /// Creates a logical slot for pgoutput and exports its snapshot. `slot` must be a valid
    /// slot name (lowercase letters, digits, underscores).
    pub async fn create_slot(&mut self, slot: &str, temporary: bool) -> Result<CreatedSlot, ReplError> {
        let temp = if temporary { " TEMPORARY" } else { "" };
        let sql = format!("CREATE_REPLICATION_SLOT {slot}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT");
        let rows = self.simple_query(&sql).await?;
        let row = single_row(&rows, 3)?;
        Ok(CreatedSlot {
            slot_name: field(row, 0)?.to_owned(),
            consistent_point: parse_lsn(field(row, 1)?)?,
            snapshot_name: field(row, 2)?.to_owned(),
        })
    }

    /// Starts streaming `slot` from `start` with pgoutput protocol version 1; the connection
    /// becomes a blocking [`ReplStream`] for one reader thread.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplStream, ReplError> {
        let publication = publication.replace('\'', "''").replace('"', "\"\"");
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start} \
             (proto_version '1', publication_names '\"{publication}\"', messages 'true')"
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.send().await?;
        loop {
            match self.read_frame().await? {
                Frame::CopyBothResponse => break,
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let err = server_error(&body);
                    self.wait_ready().await?;
                    return Err(err);
                }
                Frame::Other(_) => {}
                Frame::CopyData(_) => return Err(ReplError::Protocol("CopyData before CopyBothResponse".into())),
            }
        }
        let transport = self.transport.into_std()?;
        Ok(ReplStream::new(transport, self.frames))
    }

    /// Ends the session politely (Terminate). Errors are ignored: the server may already be
    /// gone.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.send().await;
    }

    async fn send(&mut self) -> Result<(), ReplError> {
        self.transport.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame, ReplError> {
        loop {
            if let Some(frame) = self.frames.try_frame()? {
                return Ok(frame);
            }
            self.frames.reserve_read();
            if self.transport.read_buf(&mut self.frames.buf).await? == 0 {
                return Err(ReplError::Closed);
            }
        }
    }

    async fn read_other(&mut self) -> Result<backend::Message, ReplError> {
        match self.read_frame().await? {
            Frame::Other(m) => Ok(m),
            Frame::CopyData(_) | Frame::CopyBothResponse => Err(ReplError::Protocol("unexpected copy message".into())),
        }
    }
}

async fn open_transport(config: &tokio_postgres::Config) -> Result<Transport, ReplError> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = config.get_hosts().first().cloned().unwrap_or_else(|| Host::Tcp("127.0.0.1".to_owned()));
    match host {
        Host::Tcp(name) => {
            let addr = format!("{name}:{port}");
            let connect_err = |source| ReplError::Connect { addr: addr.clone(), source };
            let mut last = None;
            for sockaddr in tokio::net::lookup_host(&addr).await.map_err(connect_err)? {
                let socket = if sockaddr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
                let socket = socket.map_err(connect_err)?;
                // Best effort: the kernel may cap it, which only costs throughput.
                let _ = socket.set_recv_buffer_size(SOCKET_RECV_BUFFER_BYTES);
                match socket.connect(sockaddr).await {
                    Ok(stream) => {
                        stream.set_nodelay(true).map_err(connect_err)?;
                        return Ok(Transport::Tcp(stream));
                    }
                    Err(e) => last = Some(e),
                }
            }
            let source = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"));
            Err(connect_err(source))
        }
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|source| ReplError::Connect { addr: path.display().to_string(), source })?;
            Ok(Transport::Unix(stream))
        }
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
        None => format!("127.0.0.1:{port}"),
    }
}

fn text_row(row: &backend::DataRowBody) -> Result<Vec<Option<String>>, ReplError> {
    let buf = row.buffer();
    let mut out = Vec::new();
    let mut ranges = row.ranges();
    while let Some(range) = ranges.next()? {
        out.push(match range {
            None => None,
            Some(r) => {
                let bytes = buf.get(r).ok_or_else(|| ReplError::Protocol("DataRow range out of bounds".into()))?;
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
        });
    }
    Ok(out)
}

fn single_row(rows: &[Vec<Option<String>>], min_fields: usize) -> Result<&[Option<String>], ReplError> {
    match rows {
        [row] if row.len() >= min_fields => Ok(row),
        _ => Err(ReplError::Protocol(format!("expected one row of at least {min_fields} fields"))),
    }
}

fn field(row: &[Option<String>], i: usize) -> Result<&str, ReplError> {
    row.get(i).and_then(|f| f.as_deref()).ok_or_else(|| ReplError::Protocol(format!("field {i} is missing or null")))
}

fn parse_lsn(text: &str) -> Result<Lsn, ReplError> {
    text.parse().map_err(|_| ReplError::Protocol(format!("invalid LSN {text:?}")))
}
