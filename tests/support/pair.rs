//! A leader and a follower PostgreSQL for the apply tests, started side by side by
//! `walship::localcluster` (no sidecars). Changes committed on the leader are decoded through
//! a pgoutput slot into log records, the way the leader sidecar logs them, and the follower's
//! tables are compared with the leader's.

#![allow(dead_code, clippy::unwrap_used)] // test support: a failed step is a failed test

use walship::apply::{AppliedPosition, Applier, RowsSent};
use walship::localcluster;
use walship::localpg::{Instance, Options};
use walship::log::committer::Output;
use walship::log::{Record, RecordKind};
use walship::lsn::{Index, Lsn, Term};
use walship::source::builder::EntryBuilder;

const GET_CHANGES: &str = "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, \
     'proto_version', '1', 'publication_names', 'p', 'messages', 'true')";

pub struct Pair {
    pub leader: Instance,
    pub follower: Instance,
    leader_sql: tokio_postgres::Client,
    builder: EntryBuilder,
}

impl Pair {
    /// Both instances with `schema`, a publication of all tables and a slot on the leader.
    /// Transactions larger than `spill_bytes` leave as chunk records.
    pub async fn start(schema: &str, spill_bytes: usize) -> Pair {
        let mut started = localcluster::start_instances(vec![(None, Options::default()), (None, Options::default())])
            .into_iter()
            .map(Result::unwrap);
        let (leader, follower) = (started.next().unwrap(), started.next().unwrap());
        leader.psql("postgres", schema).unwrap();
        follower.psql("postgres", schema).unwrap();
        leader
            .psql(
                "postgres",
                "CREATE PUBLICATION p FOR ALL TABLES; \
                 SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
            )
            .unwrap();
        let config = leader.conninfo("postgres").parse().unwrap();
        let leader_sql = walship::sql::connect(&config).await.unwrap();
        Pair { leader, follower, leader_sql, builder: EntryBuilder::new(Term(1), Index(1), Lsn(0), spill_bytes) }
    }

    pub fn follower_config(&self) -> tokio_postgres::Config {
        self.follower.conninfo("postgres").parse().unwrap()
    }

    pub fn on_leader(&self, sql: &str) -> String {
        self.leader.psql("postgres", sql).unwrap()
    }

    pub fn on_follower(&self, sql: &str) -> String {
        self.follower.psql("postgres", sql).unwrap()
    }

    /// The records of everything the leader committed since the last call, in log order.
    pub async fn records(&mut self) -> Vec<Record> {
        let rows = self.leader_sql.query(GET_CHANGES, &[]).await.unwrap();
        let mut out = Vec::new();
        for row in rows {
            let data: Vec<u8> = row.get(0);
            self.builder.push(&data, &mut out).unwrap();
        }
        out.into_iter().map(record).collect()
    }

    /// Applies what the leader committed since the last call through a new applier, 1000
    /// entries per commit; checks that every table matches; returns what the applier sent.
    pub async fn replicate(&mut self) -> RowsSent {
        let records = self.records().await;
        let mut applier = Applier::connect(&self.follower_config()).await.unwrap();
        apply(&mut applier, &records, 1000).await.unwrap();
        self.assert_replicated();
        applier.rows_sent()
    }

    /// Every user table holds the same rows on both sides.
    pub fn assert_replicated(&self) {
        let tables = user_tables(&self.leader);
        assert!(!tables.is_empty());
        for table in tables {
            let (leader, follower) = (dump(&self.leader, &table), dump(&self.follower, &table));
            if leader != follower {
                panic!("table {table} differs\n--- leader:\n{leader}\n--- follower:\n{follower}");
            }
        }
    }
}

pub fn record(output: Output) -> Record {
    match output {
        Output::Chunk { id, payload } => Record { kind: RecordKind::Chunk, id, payload },
        Output::Entry { id, payload, .. } => Record { kind: RecordKind::Entry, id, payload },
    }
}

/// Applies `records`, committing after every `entries_per_commit` entries and at the end.
pub async fn apply(applier: &mut Applier, records: &[Record], entries_per_commit: usize) -> Option<AppliedPosition> {
    let mut entries = 0;
    for record in records {
        applier.apply_record(record).await.unwrap();
        if record.kind == RecordKind::Entry {
            entries += 1;
            if entries % entries_per_commit == 0 {
                applier.commit().await.unwrap();
            }
        }
    }
    applier.commit().await.unwrap()
}

/// `schema.table` of every user table, quoted.
pub fn user_tables(pg: &Instance) -> Vec<String> {
    let out = pg
        .psql(
            "postgres",
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'walship') ORDER BY 1",
        )
        .unwrap();
    out.lines().map(str::to_owned).collect()
}

/// A table's rows as text, sorted.
pub fn dump(pg: &Instance, table: &str) -> String {
    pg.psql("postgres", &format!("SELECT x::text FROM {table} x ORDER BY 1")).unwrap()
}
