//! The leader side: schema and rows from one exported snapshot, as seeding messages.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rand::Rng;
use tokio_postgres::{Client, CopyOutStream};
use tracing::info;

use super::catalog::{self, TableSpec};
use super::dump::{self, MAX_SCHEMA_BYTES};
use super::error::{pg, repl, SeedError};
use super::{ProgressLog, SeedProgress};
use crate::lsn::Lsn;
use crate::relay::{Message, SEED_DATA_PIECE_BYTES};
use crate::source::conn::{CreatedSlot, ReplConnection};

/// `application_name` of the export's connections.
const APPLICATION_NAME: &str = "walship-seed";

/// The data connection writes values the way the replication connection asks pgoutput to, so
/// that the follower's input functions read them back exactly; the transaction may stay idle
/// while the relay waits for a slow follower.
const SESSION_SETUP: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; \
     SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0";

/// A snapshot being exported. See the module docs of [`crate::seed`].
pub struct Export {
    client: Client,
    snapshot_lsn: Lsn,
    /// Sent first, then `None`.
    schema: Option<Bytes>,
    tables: Vec<TableSpec>,
    next_table: usize,
    copy: Option<TableCopy>,
    /// COPY text read and not yet sent.
    piece: BytesMut,
    ended: bool,
    failed: bool,
    progress: SeedProgress,
    log: ProgressLog,
}

/// The COPY of the table being sent.
struct TableCopy {
    stream: Pin<Box<CopyOutStream>>,
    rows: u64,
    finished: bool,
}

impl Export {
    /// Takes the snapshot: creates a temporary slot exporting it, imports it, reads the schema
    /// with pg_dump and the list of tables, then drops the slot (the open transaction keeps
    /// the snapshot).
    pub async fn begin(pg: &tokio_postgres::Config, publication: &str) -> Result<Export, SeedError> {
        let mut conn = ReplConnection::connect(pg, APPLICATION_NAME).await.map_err(repl("connect for a snapshot"))?;
        let slot = conn.create_slot(&slot_name(), true).await.map_err(repl("create the snapshot's slot"));
        let result = match slot {
            Ok(slot) => Export::at_snapshot(pg, publication, &slot).await,
            Err(e) => Err(e),
        };
        conn.close().await;
        let export = result?;
        info!(
            snapshot_lsn = %export.snapshot_lsn,
            tables = export.tables.len(),
            schema_bytes = export.schema.as_ref().map_or(0, Bytes::len),
            "snapshot taken for seeding"
        );
        Ok(export)
    }

    async fn at_snapshot(
        config: &tokio_postgres::Config,
        publication: &str,
        slot: &CreatedSlot,
    ) -> Result<Export, SeedError> {
        let client = crate::sql::connect(config).await.map_err(pg("connect"))?;
        client.batch_execute(SESSION_SETUP).await.map_err(pg("set the session up"))?;
        let import = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            slot.snapshot_name.replace('\'', "''")
        );
        client.batch_execute(&import).await.map_err(pg("import the snapshot"))?;
        let roles = super::roles::roles_sql(&client).await?;
        let dumped = dump::schema_sql(config, &slot.snapshot_name);
        let (dumped, ours) = tokio::join!(dumped, read_catalog(&client, publication));
        let (dumped, (tables, sequences)) = (dumped?, ours?);
        let mut schema = roles;
        schema.push_str(&dumped);
        schema.push_str("\n-- sequence values when the export began\n");
        schema.push_str(&sequences);
        if schema.len() > MAX_SCHEMA_BYTES {
            return Err(SeedError::SchemaTooLarge { max: MAX_SCHEMA_BYTES });
        }
        let progress =
            SeedProgress { tables_total: u32::try_from(tables.len()).unwrap_or(u32::MAX), ..SeedProgress::default() };
        Ok(Export {
            client,
            snapshot_lsn: slot.consistent_point,
            schema: Some(Bytes::from(schema)),
            tables,
            next_table: 0,
            copy: None,
            piece: BytesMut::new(),
            ended: false,
            failed: false,
            progress,
            log: ProgressLog::new("export"),
        })
    }

    /// The snapshot's position in the leader's WAL: transactions whose commit record starts
    /// before it are in the snapshot, the others are not.
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn
    }

    /// The next seeding message: `SeedSchema`, then per table `SeedTable`, `SeedData`*,
    /// `SeedTableEnd`, and finally `SeedEnd` with the totals; `None` when done. After an error
    /// the export is over ([`SeedError::Failed`]).
    pub async fn next(&mut self) -> Result<Option<Message>, SeedError> {
        if self.failed {
            return Err(SeedError::Failed);
        }
        let message = self.next_message().await;
        self.failed = message.is_err();
        self.log.tick(&self.progress);
        message
    }

    pub fn progress(&self) -> SeedProgress {
        self.progress
    }

    async fn next_message(&mut self) -> Result<Option<Message>, SeedError> {
        if let Some(sql) = self.schema.take() {
            return Ok(Some(Message::SeedSchema { sql }));
        }
        if self.copy.is_some() {
            return self.next_piece().await.map(Some);
        }
        if let Some(table) = self.tables.get(self.next_table) {
            let stream = self.client.copy_out(&table.copy_out).await;
            let stream = stream.map_err(table_error(&self.tables, self.next_table + 1, "start copying"))?;
            self.copy = Some(TableCopy { stream: Box::pin(stream), rows: 0, finished: false });
            self.next_table += 1;
            let (schema, name, columns) = (table.schema.clone(), table.name.clone(), table.columns.clone());
            return Ok(Some(Message::SeedTable { schema, name, columns }));
        }
        if self.ended {
            return Ok(None);
        }
        self.client.batch_execute("COMMIT").await.map_err(pg("end the snapshot's transaction"))?;
        self.ended = true;
        self.log.log(&self.progress, "seed export done");
        let p = self.progress;
        Ok(Some(Message::SeedEnd { tables: p.tables_done, rows: p.rows, bytes: p.bytes }))
    }

    /// The next `SeedData` of the current table, or its `SeedTableEnd`. Pieces are byte ranges
    /// of the COPY text: a row longer than a piece spans several.
    async fn next_piece(&mut self) -> Result<Message, SeedError> {
        let Some(copy) = self.copy.as_mut() else { return Err(SeedError::Failed) };
        loop {
            if self.piece.len() >= SEED_DATA_PIECE_BYTES || (copy.finished && !self.piece.is_empty()) {
                let n = self.piece.len().min(SEED_DATA_PIECE_BYTES);
                self.progress.bytes += n as u64;
                return Ok(Message::SeedData { bytes: self.piece.split_to(n).freeze() });
            }
            if copy.finished {
                let rows = copy.rows;
                self.copy = None;
                self.progress.tables_done += 1;
                return Ok(Message::SeedTableEnd { rows });
            }
            match copy.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(table_error(&self.tables, self.next_table, "copy"))?;
                    let rows = count_rows(&chunk);
                    copy.rows += rows;
                    self.progress.rows += rows;
                    self.piece.extend_from_slice(&chunk);
                }
                None => copy.finished = true,
            }
        }
    }
}

/// The publication's tables, locked, and the sequences' values.
async fn read_catalog(client: &Client, publication: &str) -> Result<(Vec<TableSpec>, String), SeedError> {
    let tables = catalog::published_tables(client, publication).await?;
    catalog::lock_tables(client, &tables).await?;
    let sequences = catalog::sequence_sql(client).await?;
    Ok((tables, sequences))
}

/// An error of the table before `next_table`.
fn table_error<'a>(
    tables: &'a [TableSpec],
    next_table: usize,
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> SeedError + 'a {
    move |source| {
        let table = next_table.checked_sub(1).and_then(|i| tables.get(i));
        let table = table.map(|t| crate::sql::quote_qualified(&t.schema, &t.name)).unwrap_or_default();
        SeedError::Table { table, what, source }
    }
}

/// Rows in COPY text: every row ends with a newline, and a newline inside a value is escaped.
pub(super) fn count_rows(copy_text: &[u8]) -> u64 {
    copy_text.iter().filter(|&&b| b == b'\n').count() as u64
}

/// A fresh name for the temporary slot.
fn slot_name() -> String {
    let mut random = [0u8; 6];
    rand::rng().fill_bytes(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("walship_seed_{hex}")
}
