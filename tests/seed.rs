//! Seeding a follower from a snapshot against real PostgreSQL: a leader exports while it keeps
//! taking writes, the messages travel through relay frames, a follower loads them, and the
//! leader's log after the seed position brings the follower to the leader's exact state.
#![allow(clippy::unwrap_used)]

#[path = "support/pair.rs"]
mod pair;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pair::{apply, dump, record, user_tables};
use walship::apply::Applier;
use walship::error::ErrorClass;
use walship::localpg::{Instance, Options};
use walship::log::entry::{decode_entry, EntryKind};
use walship::log::{Record, RecordKind};
use walship::lsn::{Index, Lsn, Term};
use walship::relay::{FrameReader, FrameWriter, Message};
use walship::seed::{Export, Load, SeedError, SeedProgress, SEED_DATA_PIECE_BYTES};
use walship::source::builder::{EntryBuilder, DEFAULT_SPILL_BYTES};

const PUBLICATION: &str = "walship";

const LEADER_SCHEMA: &str = r#"
CREATE SCHEMA app; CREATE SCHEMA audit; CREATE SCHEMA "Odd Schema";
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.posint AS integer CHECK (VALUE > 0);
CREATE TABLE app.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE app.orders (
    id serial PRIMARY KEY, customer_id bigint REFERENCES app.customers (id),
    i2 int2, i4 int4, i8 int8, num numeric, num_p numeric(12, 3), f8 float8, b bool, t text,
    by bytea, js json, jb jsonb, ia int[], ta text[], tstz timestamptz, d date, iv interval,
    u uuid, m app.mood, dom app.posint, twice numeric GENERATED ALWAYS AS (num_p * 2) STORED);
CREATE INDEX orders_customer ON app.orders (customer_id);
CREATE SEQUENCE app.invoice_no START 1000;
CREATE VIEW app.order_counts AS SELECT customer_id, count(*) AS n FROM app.orders GROUP BY 1;
CREATE TABLE audit.log (at timestamptz NOT NULL DEFAULT now(), what text);
CREATE FUNCTION audit.note() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO audit.log (what) VALUES ('new customer ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER customers_audit AFTER INSERT ON app.customers FOR EACH ROW EXECUTE FUNCTION audit.note();
CREATE TABLE "Odd Schema"."Mixed Case" ("Weird ""col""" text, n int);
CREATE TABLE app.empty (id int);
CREATE TABLE app.readings (id int, at date NOT NULL, v float8) PARTITION BY RANGE (at);
CREATE TABLE app.readings_2024 PARTITION OF app.readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.readings_2025 PARTITION OF app.readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
-- walship's own schema, as on a leader that once was a follower: it must not travel.
CREATE SCHEMA walship; CREATE TABLE walship.leftover (x int); INSERT INTO walship.leftover VALUES (1);
-- Partitions travel as their root's rows.
CREATE PUBLICATION walship FOR ALL TABLES WITH (publish_via_partition_root = true);

INSERT INTO app.customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 50) g;
INSERT INTO app.orders (customer_id, i2, i4, i8, num, num_p, f8, b, t, by, js, jb, ia, ta, tstz, d, iv, u, m, dom)
VALUES (1, -32768, 2147483647, -9223372036854775808, 'NaN', 123456789.125, 'Infinity', false,
        E'tab\there\nnew line\\back\rcr "dq" ''sq'' ünï 😀', '\x00ff5c0a0d09'::bytea,
        '{"a": [1, 2, {"b": null}], "s": "x\ty"}', '{"a": [1, 2, {"b": null}], "s": "x\ty"}',
        '{1,NULL,3}', '{"a b","with \"quote\"",NULL,"NULL","back\\slash"}',
        '2024-06-01 12:34:56.789+02', '2024-02-29', '1 year 2 mons 3 days 04:05:06.789',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 42),
       (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL),
       (3, 0, 0, 0, -0.000001, 0, -0.1, true, '', '\x'::bytea, '[]', '{}', '{}', '{NULL}',
        '-infinity', 'infinity', '-1 day 00:00:01', NULL, 'sad', 1);
INSERT INTO app.orders (customer_id, i4, t) SELECT 1 + g % 50, g, repeat('row ', g % 7) || g FROM generate_series(1, 2000) g;
-- One row larger than a SeedData piece: it travels in several.
INSERT INTO app.orders (customer_id, t) VALUES (4, repeat('0123456789', 300000));
SELECT nextval('app.invoice_no') FROM generate_series(1, 3);
INSERT INTO "Odd Schema"."Mixed Case" VALUES (E'a\\b\tc', 1), (NULL, NULL);
INSERT INTO app.readings SELECT g, DATE '2024-06-01' + g, g * 0.5 FROM generate_series(1, 400) g;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_rows_of_every_kind_arrive_identical() {
    let (leader, follower) = (start(), start());
    leader.psql("postgres", LEADER_SCHEMA).unwrap();
    let export = Export::begin(&config(&leader), PUBLICATION).await.unwrap();
    let snapshot_lsn = export.snapshot_lsn();
    let (exported, loaded) = seed(export, &config(&follower), Term(3), Some(Index(41))).await;
    assert_eq!(exported, loaded);
    assert_eq!((loaded.tables_done, loaded.tables_total), (6, 6), "{loaded:?}");
    assert!(loaded.bytes > 3_000_000);

    let tables = user_tables(&leader);
    assert_eq!(user_tables(&follower), tables);
    for table in &tables {
        assert!(dump(&leader, table) == dump(&follower, table), "table {table} differs");
    }
    // The trigger exists but did not fire during the load: audit.log holds the leader's rows.
    assert_eq!(on(&follower, "SELECT count(*) FROM audit.log"), "50");
    assert_eq!(schema_dump(&follower), schema_dump(&leader));
    for sql in [
        "SELECT nextval('app.invoice_no')",
        "SELECT nextval('app.orders_id_seq')",
        "SELECT * FROM app.order_counts ORDER BY 1",
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1",
        "SELECT conname FROM pg_constraint WHERE contype = 'f'",
    ] {
        assert_eq!(on(&follower, sql), on(&leader, sql), "{sql}");
    }
    assert!(follower.psql("postgres", "SELECT (-1)::app.posint").is_err(), "the domain's check came along");
    assert_eq!(on(&follower, "SELECT to_regclass('walship.leftover') IS NULL"), "t");
    let progress = on(&follower, "SELECT term, applied_index, end_lsn FROM walship.progress");
    assert_eq!(progress, format!("3|41|{snapshot_lsn}"));
    assert_eq!(on(&leader, "SELECT count(*) FROM pg_replication_slots"), "0", "the temporary slot is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_transactions_before_the_snapshot_are_in_it() {
    let (leader, follower) = (start(), start());
    leader
        .psql(
            "postgres",
            "CREATE TABLE bulk (id int PRIMARY KEY, pad text);
             INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
             CREATE TABLE events (id bigserial PRIMARY KEY, writer int NOT NULL, xid bigint NOT NULL);
             CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters VALUES (1, 0);
             CREATE PUBLICATION walship FOR ALL TABLES;
             SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
        )
        .unwrap();
    let writers = Writers::start(&config(&leader), 2).await;
    writers.wait_for_commits(20).await;
    let mut log = LeaderLog::new(&config(&leader)).await;

    let export = Export::begin(&config(&leader), PUBLICATION).await.unwrap();
    let snapshot_lsn = export.snapshot_lsn();
    // The relay server's rule: once the log holds everything committed before the snapshot,
    // the position is its last entry that committed before it.
    log.read().await;
    let position = log.last_before(snapshot_lsn);
    seed(export, &config(&follower), Term(1), position).await;
    let commits = writers.stop().await;
    log.read().await;

    let (before, after) = log.transactions_split_at(snapshot_lsn);
    assert!(before.len() >= 20 && !after.is_empty(), "{} before, {} after the snapshot", before.len(), after.len());
    assert_eq!(before.len() + after.len(), commits as usize);
    println!("{} transactions before the snapshot, {} after", before.len(), after.len());
    assert_eq!(log.last_before(snapshot_lsn), position);
    let seeded: BTreeSet<u32> =
        on(&follower, "SELECT DISTINCT xid FROM events").lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(seeded, before, "the snapshot holds exactly the transactions committed before {snapshot_lsn}");
    assert_eq!(on(&follower, "SELECT n FROM counters"), before.len().to_string());

    // Replay from the entry after the position: the follower becomes the leader, no
    // transaction twice, none missing.
    let mut applier = Applier::connect(&config(&follower)).await.unwrap();
    let rest: Vec<Record> = log.records.iter().filter(|r| Some(r.id.index) > position).cloned().collect();
    apply(&mut applier, &rest, 50).await.unwrap();
    for table in user_tables(&leader) {
        assert!(dump(&leader, &table) == dump(&follower, &table), "table {table} differs after replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_tables_is_refused() {
    let follower = start();
    follower.psql("postgres", "CREATE TABLE public.existing (x int); CREATE VIEW public.v AS SELECT 1;").unwrap();
    let error = Load::begin(&config(&follower), Term(1), Some(Index(1)), Lsn(1)).await.err().unwrap();
    assert!(matches!(error, SeedError::NotEmpty { count: 2, .. }), "{error:?}");
    assert!(error.to_string().contains("public.existing"), "{error}");
    assert_eq!(error.class(), ErrorClass::Operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_does_not_add_up_commits_nothing() {
    let (leader, follower) = (start(), start());
    leader
        .psql(
            "postgres",
            "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 100) g;
             CREATE TABLE b (id int); INSERT INTO b VALUES (1), (2);
             CREATE PUBLICATION walship FOR ALL TABLES;",
        )
        .unwrap();
    let mut export = Export::begin(&config(&leader), PUBLICATION).await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = export.next().await.unwrap() {
        messages.push(message);
    }
    let follower_config = config(&follower);
    let alterations: [(Alter, &str); 2] = [(more_rows_in_the_end, "Totals"), (more_rows_in_a_table, "TableRows")];
    for (alter, expect) in alterations {
        let mut load = Load::begin(&follower_config, Term(1), Some(Index(7)), Lsn(1)).await.unwrap();
        let mut failed = None;
        for message in &messages {
            if let Err(e) = load.take(alter(message)).await {
                failed = Some(e);
                break;
            }
        }
        let error = failed.unwrap();
        assert!(format!("{error:?}").starts_with(expect), "{error:?}");
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(matches!(load.finish().await, Err(SeedError::Failed)));
        assert!(user_tables(&follower).is_empty(), "nothing committed");
        assert_eq!(on(&follower, "SELECT count(*) FROM walship.progress"), "0");
    }

    let mut load = Load::begin(&follower_config, Term(1), None, Lsn(1)).await.unwrap();
    let error = load.take(messages[2].clone()).await.unwrap_err();
    assert!(matches!(error, SeedError::Unexpected { got: "SeedData", .. }), "{error:?}");
    let mut load = Load::begin(&follower_config, Term(1), None, Lsn(1)).await.unwrap();
    load.take(messages[0].clone()).await.unwrap();
    let error = load.finish().await.unwrap_err();
    assert!(matches!(error, SeedError::Unexpected { got: "finish", .. }), "{error:?}");

    // The database is still empty and takes a good load; without a position no row is written.
    let mut load = Load::begin(&follower_config, Term(1), None, Lsn(1)).await.unwrap();
    for message in messages {
        load.take(message).await.unwrap();
    }
    let progress = load.finish().await.unwrap();
    assert_eq!((progress.tables_done, progress.rows), (2, 102));
    assert_eq!(on(&follower, "SELECT count(*) FROM a"), "100");
    assert_eq!(on(&follower, "SELECT count(*) FROM walship.progress"), "0");
}

/// A message changed on its way, as by a broken relay.
type Alter = fn(&Message) -> Message;

fn more_rows_in_the_end(message: &Message) -> Message {
    match message {
        Message::SeedEnd { tables, rows, bytes } => Message::SeedEnd { tables: *tables, rows: rows + 1, bytes: *bytes },
        other => other.clone(),
    }
}

fn more_rows_in_a_table(message: &Message) -> Message {
    match message {
        Message::SeedTableEnd { rows } => Message::SeedTableEnd { rows: rows + 1 },
        other => other.clone(),
    }
}

/// The export and load rate: `cargo test --release --test seed -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn rate_of_a_million_rows() {
    let (leader, follower) = (start(), start());
    leader
        .psql(
            "postgres",
            "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric);
             INSERT INTO t SELECT g, g % 1000, md5(g::text), now(), g / 7.0 FROM generate_series(1, 1000000) g;
             CREATE PUBLICATION walship FOR ALL TABLES; VACUUM ANALYZE t;",
        )
        .unwrap();
    let started = Instant::now();
    let export = Export::begin(&config(&leader), PUBLICATION).await.unwrap();
    let (_, loaded) = seed(export, &config(&follower), Term(1), None).await;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} rows, {} MB of COPY text in {seconds:.2} s: {:.0} rows/s, {:.1} MB/s",
        loaded.rows,
        loaded.bytes >> 20,
        loaded.rows as f64 / seconds,
        (loaded.bytes >> 20) as f64 / seconds
    );
}

/// Runs the export into a load through relay frames over an in-memory pipe, both sides at once.
async fn seed(
    mut export: Export,
    follower: &tokio_postgres::Config,
    term: Term,
    position: Option<Index>,
) -> (SeedProgress, SeedProgress) {
    let (leader_end, follower_end) = tokio::io::duplex(4 * SEED_DATA_PIECE_BYTES);
    let begin = Message::SeedBegin { position, snapshot_lsn: export.snapshot_lsn() };
    let send = async move {
        let mut writer = FrameWriter::new(leader_end);
        writer.send(&begin).await.unwrap();
        while let Some(message) = export.next().await.unwrap() {
            writer.send(&message).await.unwrap();
        }
        export.progress()
    };
    let receive = async move {
        let mut reader = FrameReader::new(follower_end);
        let Some(Message::SeedBegin { position, snapshot_lsn }) = reader.next().await.unwrap() else { panic!() };
        let mut load = Load::begin(follower, term, position, snapshot_lsn).await.unwrap();
        while let Some(message) = reader.next().await.unwrap() {
            let end = matches!(message, Message::SeedEnd { .. });
            load.take(message).await.unwrap();
            if end {
                break;
            }
        }
        load.finish().await.unwrap()
    };
    tokio::join!(send, receive)
}

/// Writer tasks committing on the leader until stopped: each transaction inserts two events
/// recording its xid and increments one counter.
struct Writers {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(pg: &tokio_postgres::Config, count: i32) -> Writers {
        let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for writer in 0..count {
            let client = walship::sql::connect(pg).await.unwrap();
            let (stop, commits) = (stop.clone(), commits.clone());
            tasks.push(tokio::spawn(async move {
                let sql = format!(
                    "BEGIN; INSERT INTO events (writer, xid) VALUES ({writer}, txid_current()), ({writer}, txid_current());
                     UPDATE counters SET n = n + 1 WHERE id = 1; COMMIT;"
                );
                while !stop.load(Ordering::Relaxed) {
                    client.batch_execute(&sql).await.unwrap();
                    commits.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        Writers { stop, commits, tasks }
    }

    async fn wait_for_commits(&self, n: u64) {
        while self.commits.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.commits.load(Ordering::Relaxed)
    }
}

/// The leader's log as the leader sidecar would build it from slot `s`.
struct LeaderLog {
    client: tokio_postgres::Client,
    builder: EntryBuilder,
    records: Vec<Record>,
}

impl LeaderLog {
    async fn new(pg: &tokio_postgres::Config) -> LeaderLog {
        let client = walship::sql::connect(pg).await.unwrap();
        LeaderLog {
            client,
            builder: EntryBuilder::new(Term(1), Index(1), Lsn(0), DEFAULT_SPILL_BYTES),
            records: vec![],
        }
    }

    /// Decodes everything committed so far.
    async fn read(&mut self) {
        let sql = "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, \
                   'proto_version', '1', 'publication_names', 'walship')";
        let mut out = Vec::new();
        for row in self.client.query(sql, &[]).await.unwrap() {
            self.builder.push(&row.get::<_, Vec<u8>>(0), &mut out).unwrap();
        }
        self.records.extend(out.into_iter().map(record));
    }

    /// `(commit_lsn, xid)` of every transaction entry.
    fn transactions(&self) -> impl Iterator<Item = (Index, Lsn, u32)> + '_ {
        self.records.iter().filter(|r| r.kind == RecordKind::Entry).filter_map(|r| {
            let (header, _) = decode_entry(&r.payload).unwrap();
            (header.kind == EntryKind::Transaction).then_some((r.id.index, header.commit_lsn, header.xid))
        })
    }

    fn last_before(&self, snapshot_lsn: Lsn) -> Option<Index> {
        self.transactions().filter(|(_, commit, _)| *commit < snapshot_lsn).map(|(index, _, _)| index).last()
    }

    fn transactions_split_at(&self, snapshot_lsn: Lsn) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let (before, after): (Vec<_>, Vec<_>) = self.transactions().partition(|(_, commit, _)| *commit < snapshot_lsn);
        (before.into_iter().map(|t| t.2).collect(), after.into_iter().map(|t| t.2).collect())
    }
}

fn start() -> Instance {
    Instance::start(Options::default()).unwrap()
}

fn config(pg: &Instance) -> tokio_postgres::Config {
    pg.conninfo("postgres").parse().unwrap()
}

fn on(pg: &Instance, sql: &str) -> String {
    pg.psql("postgres", sql).unwrap()
}

/// The schema as pg_dump prints it, without walship's own, the publications (the leader's
/// replication set-up) and the per-run restrict key.
fn schema_dump(pg: &Instance) -> String {
    let output = pg
        .command("pg_dump")
        .args(["--schema-only", "-N", "walship", "--no-owner", "--no-publications"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seeding carries the leader's roles, owners and privileges: an application role that reads
/// on the leader reads on the follower; a superuser of the leader is an ordinary role there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_owners_and_privileges_come_along_without_superuser() {
    let (leader, follower) = (start(), start());
    leader
        .psql(
            "postgres",
            "CREATE ROLE app_owner NOLOGIN; CREATE ROLE app_reader LOGIN CONNECTION LIMIT 7; \
             CREATE ROLE \"Ops Admin\" SUPERUSER LOGIN; CREATE ROLE readers NOLOGIN; GRANT readers TO app_reader; \
             CREATE SCHEMA app AUTHORIZATION app_owner; \
             CREATE TABLE app.items (id int PRIMARY KEY, name text); ALTER TABLE app.items OWNER TO app_owner; \
             INSERT INTO app.items VALUES (1, 'one'), (2, 'two'); \
             GRANT USAGE ON SCHEMA app TO readers; GRANT SELECT ON app.items TO readers; \
             CREATE PUBLICATION walship FOR ALL TABLES;",
        )
        .unwrap();
    let export = Export::begin(&config(&leader), PUBLICATION).await.unwrap();
    let (exported, loaded) = seed(export, &config(&follower), Term(1), Some(Index(1))).await;
    assert_eq!(exported, loaded);

    let attributes = "SELECT rolname, rolsuper, rolcanlogin, rolconnlimit FROM pg_roles \
                      WHERE rolname IN ('app_owner', 'app_reader', 'Ops Admin', 'readers') ORDER BY 1";
    assert_eq!(
        on(&follower, attributes),
        "Ops Admin|f|t|-1\napp_owner|f|f|-1\napp_reader|f|t|7\nreaders|f|f|-1",
        "every role, none a superuser"
    );
    assert_eq!(on(&follower, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"), "app_owner");
    let read = "SET ROLE app_reader; SELECT string_agg(name, ',' ORDER BY id) FROM app.items";
    assert_eq!(on(&follower, read), on(&leader, read), "the application role reads on the follower");
    let owners_and_grants = |pg: &Instance| {
        let out =
            pg.command("pg_dump").args(["--schema-only", "-N", "walship", "--no-publications", "postgres"]).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("OWNER TO") || l.starts_with("GRANT") || l.starts_with("REVOKE"))
            .filter(|l| !l.contains("EVENT TRIGGER"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(owners_and_grants(&follower), owners_and_grants(&leader));
}
