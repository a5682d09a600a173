//! The divergence report against a real PostgreSQL: an old leader's log after the branch point
//! and the transactions its WAL holds that its log never got, in `walship inspect --json`'s
//! form, without consuming its slot.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use walship::divergence::{report_path, write_report, Divergence, DivergenceError, ReportSummary};
use walship::error::ErrorClass;
use walship::localpg::{Instance, Options};
use walship::log::committer::Output;
use walship::log::{Log, LogOptions, RecordKind};
use walship::lsn::{Index, Lsn, Term};
use walship::source::builder::EntryBuilder;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
    CREATE TABLE blobs (k text PRIMARY KEY, v bytea);
    CREATE PUBLICATION p FOR ALL TABLES;
    SELECT pg_create_logical_replication_slot('s', 'pgoutput');";

const HEARTBEAT: &str = "SELECT pg_logical_emit_message(false, 'walship.heartbeat', 'a 2 1800000000000000')";

/// The old leader's term: its log's entries and its slot are of this term.
const TERM: Term = Term(2);

/// Small enough that the 50-row transaction is logged in chunk records.
const SPILL_BYTES: usize = 1000;

/// PostgreSQL with a slot `s` and a log that a leader of [`TERM`] built from it.
struct OldLeader {
    pg: Instance,
    config: tokio_postgres::Config,
    client: tokio_postgres::Client,
    dir: tempfile::TempDir,
    log: Log,
    builder: EntryBuilder,
}

impl OldLeader {
    async fn start() -> OldLeader {
        let pg = Instance::start(Options::default()).unwrap();
        pg.psql("postgres", SCHEMA).unwrap();
        let config: tokio_postgres::Config = pg.conninfo("postgres").parse().unwrap();
        let client = walship::sql::connect(&config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("log"), LogOptions::default()).unwrap();
        let builder = EntryBuilder::new(TERM, Index(1), Lsn(0), SPILL_BYTES);
        OldLeader { pg, config, client, dir, log, builder }
    }

    /// Commits each statement in its own transaction.
    async fn commit_each(&self, statements: &[&str]) {
        for sql in statements {
            self.client.batch_execute(sql).await.unwrap();
        }
    }

    /// Commits `statements` as one transaction; returns its xid.
    async fn commit_together(&mut self, statements: &[&str]) -> u32 {
        let txn = self.client.transaction().await.unwrap();
        for sql in statements {
            txn.batch_execute(sql).await.unwrap();
        }
        let xid: String = txn.query_one("SELECT txid_current()::text", &[]).await.unwrap().get(0);
        txn.commit().await.unwrap();
        xid.parse().unwrap()
    }

    /// Logs what the slot decodes, as the leader's source does. With `consume`, the slot's
    /// confirmed position moves past it, as after the leader's status updates.
    async fn log_slot(&mut self, consume: bool) {
        let function =
            if consume { "pg_logical_slot_get_binary_changes" } else { "pg_logical_slot_peek_binary_changes" };
        let sql = format!(
            "SELECT data FROM {function}('s', NULL, NULL, 'proto_version', '1', 'publication_names', 'p', \
             'messages', 'true')"
        );
        let mut out = Vec::new();
        for row in self.client.query(&sql, &[]).await.unwrap() {
            self.builder.push(row.get::<_, &[u8]>(0), &mut out).unwrap();
        }
        for output in out {
            match output {
                Output::Chunk { id, payload } => self.log.append_chunk(id, &payload).unwrap(),
                Output::Entry { id, payload, .. } => self.log.append_entry(id, &payload).unwrap(),
            }
        }
        self.log.flush().unwrap();
    }

    fn confirmed_flush(&self) -> String {
        self.pg.psql("postgres", "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's'").unwrap()
    }

    async fn report(&self, term: Term, branch_point: Option<Index>, name: &str) -> (ReportSummary, Vec<Value>) {
        let path = self.dir.path().join(name);
        let summary = write_report(&self.divergence(term, branch_point, "s"), &path).await.unwrap();
        assert_eq!(summary.path, path);
        assert!(!self.dir.path().join(format!("{name}.tmp")).exists());
        (summary, lines(&path))
    }

    fn divergence<'a>(&'a self, term: Term, branch_point: Option<Index>, slot: &'a str) -> Divergence<'a> {
        Divergence { term, log_dir: self.log.dir(), branch_point, pg: &self.config, slot, publication: "p" }
    }
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn lsn(v: &Value) -> Lsn {
    v.as_str().unwrap().parse().unwrap()
}

/// The keys `walship inspect --json` prints, with their types.
fn assert_inspect_form(line: &Value) {
    for key in ["term", "xid"] {
        assert!(line[key].is_u64(), "{key} in {line}");
    }
    assert!(line["index"].is_u64() || line["index"].is_null(), "index in {line}");
    for key in ["commit_lsn", "end_lsn"] {
        lsn(&line[key]);
    }
    let time = line["commit_time"].as_str().unwrap();
    assert!(time.len() == 27 && time.ends_with('Z'), "{time}");
    for change in line["changes"].as_array().unwrap() {
        assert!(change["op"].is_string() && change["table"].is_string(), "{change}");
    }
}

fn of_source<'a>(lines: &'a [Value], source: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["source"] == source).collect()
}

fn item(id: u32, name: &str, qty: u32) -> Value {
    serde_json::json!({"id": id.to_string(), "name": name, "qty": qty.to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_holds_the_log_after_the_branch_point_and_what_only_the_wal_holds() {
    let mut old = OldLeader::start().await;
    // Entries 1-3, confirmed to the slot.
    old.commit_each(&[
        "INSERT INTO items VALUES (1, 'item 1', 1)",
        "INSERT INTO items VALUES (2, 'item 2', 2)",
        "INSERT INTO items VALUES (3, 'item 3', 3)",
    ])
    .await;
    old.log_slot(true).await;
    // Entries 4-7 (7 in chunks), logged but not yet confirmed to the slot; 5 is a heartbeat.
    old.commit_each(&[
        "INSERT INTO items VALUES (4, 'item 4', 4)",
        HEARTBEAT,
        "INSERT INTO items VALUES (5, 'item 5', 5)",
        "INSERT INTO items SELECT g, 'bulk ' || g, g FROM generate_series(100, 149) g",
    ])
    .await;
    old.log_slot(false).await;
    assert_eq!(old.log.last_written().map(|id| id.index), Some(Index(7)));
    let mut reader = old.log.reader(Index(7)).unwrap();
    let mut chunks = 0;
    while let Some(record) = reader.next().unwrap() {
        chunks += usize::from(record.kind == RecordKind::Chunk);
    }
    assert!(chunks > 0, "entry 7 is logged in chunks");
    // Committed after the log's end: the sidecar died before logging these.
    let xid_a =
        old.commit_together(&["UPDATE items SET qty = qty + 100 WHERE id = 4", "DELETE FROM items WHERE id = 5"]).await;
    old.commit_each(&[HEARTBEAT]).await;
    let xid_b = old.commit_together(&["INSERT INTO items VALUES (7, NULL, 7)"]).await;
    let xid_c = old.commit_together(&[r"INSERT INTO blobs VALUES ('k', '\x00ff')"]).await;
    let confirmed = old.confirmed_flush();

    let (summary, report) = old.report(TERM, Some(Index(3)), "first.jsonl").await;
    assert_eq!(report.len(), 6, "{report:#?}");
    for line in &report {
        assert_inspect_form(line);
        assert_eq!(line["term"], 2);
    }
    // The log after the branch point, heartbeats left out, with every row.
    let logged = of_source(&report, "log");
    let indexes: Vec<_> = logged.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, [4, 6, 7]);
    let change = |l: &Value, i: usize| l["changes"][i].clone();
    assert_eq!(
        change(logged[0], 0),
        serde_json::json!({"op": "insert", "table": "public.items", "new": item(4, "item 4", 4)})
    );
    assert_eq!(change(logged[1], 0)["new"], item(5, "item 5", 5));
    let bulk: Vec<_> = logged[2]["changes"].as_array().unwrap().iter().map(|c| c["new"].clone()).collect();
    assert_eq!(bulk, (100..150).map(|g| item(g, &format!("bulk {g}"), g)).collect::<Vec<_>>());
    // The WAL after the log's end, in commit order, with their values and no index.
    let log_end = lsn(&logged[2]["end_lsn"]);
    let wal = of_source(&report, "wal");
    let xids: Vec<_> = wal.iter().map(|l| l["xid"].as_u64().unwrap()).collect();
    assert_eq!(xids, [xid_a, xid_b, xid_c].map(u64::from));
    for line in &wal {
        assert!(line["index"].is_null());
        assert!(lsn(&line["commit_lsn"]) >= log_end);
    }
    assert_eq!(
        wal[0]["changes"],
        serde_json::json!([
            {"op": "update", "table": "public.items", "new": item(4, "item 4", 104)},
            {"op": "delete", "table": "public.items", "old": {"id": "5"}},
        ])
    );
    assert_eq!(wal[1]["changes"][0]["new"], serde_json::json!({"id": "7", "name": null, "qty": "7"}));
    assert_eq!(wal[2]["changes"][0]["new"], serde_json::json!({"k": "k", "v": "\\x00ff"}));
    let expected = ReportSummary { path: summary.path.clone(), log_entries: 3, wal_transactions: 3, rows: 56 };
    assert_eq!(summary, expected);

    // Peeking consumed nothing: the slot did not move and a second report says the same, on
    // the fenced database a divergent node has.
    assert_eq!(old.confirmed_flush(), confirmed);
    walship::fence::fence(&old.client).await.unwrap();
    let (again, report_again) = old.report(TERM, Some(Index(3)), "second.jsonl").await;
    assert_eq!(report_again, report);
    assert_eq!((again.log_entries, again.wal_transactions, again.rows), (3, 3, 56));

    // Branch point at the log's end: the WAL part alone.
    let (summary, report) = old.report(TERM, Some(Index(7)), "end.jsonl").await;
    assert_eq!((summary.log_entries, summary.wal_transactions), (0, 3));
    assert_eq!(report, wal.into_iter().cloned().collect::<Vec<_>>());

    // A log that ends in another term than the slot's says nothing about the slot's LSNs: all
    // the slot holds is reported, including what the log also holds (entries 4-7).
    let (summary, report) = old.report(Term(3), Some(Index(7)), "other-term.jsonl").await;
    assert_eq!((summary.log_entries, summary.wal_transactions), (0, 6));
    assert!(report.iter().all(|l| l["term"] == 3 && l["source"] == "wal"));

    // No shared entry: the whole log.
    let (summary, _) = old.report(TERM, None, "all.jsonl").await;
    assert_eq!((summary.log_entries, summary.wal_transactions), (6, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_what_failed_and_leave_no_report() {
    let mut old = OldLeader::start().await;
    old.commit_each(&["INSERT INTO items VALUES (1, 'item 1', 1)"]).await;
    old.log_slot(true).await;
    let path = old.dir.path().join("missing-slot.jsonl");
    let err = write_report(&old.divergence(TERM, Some(Index(0)), "no_such_slot"), &path).await.unwrap_err();
    assert!(matches!(err, DivergenceError::Peek { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_slot"), "{err}");
    assert_eq!(err.class(), ErrorClass::Operator);
    assert!(!path.exists() && !old.dir.path().join("missing-slot.jsonl.tmp").exists());

    // The slot in use by a replication connection cannot be peeked: an error, not an empty part.
    let mut walsender = old
        .pg
        .command("pg_recvlogical")
        .args(["-d", "postgres", "-S", "s", "--start", "-o", "proto_version=1", "-o", "publication_names=p", "-f", "-"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let active = "SELECT active FROM pg_replication_slots WHERE slot_name = 's'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while old.pg.psql("postgres", active).unwrap() != "t" {
        assert!(std::time::Instant::now() < deadline, "pg_recvlogical did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = write_report(&old.divergence(TERM, None, "s"), &path).await.unwrap_err();
    assert!(matches!(err, DivergenceError::Peek { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Retry, "{err}");
    walsender.kill().unwrap();
    walsender.wait().unwrap();
    assert!(!path.exists());

    let name = report_path(old.dir.path(), TERM, UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    assert_eq!(name, old.dir.path().join("divergent-2-1800000000.jsonl"));
}

/// `walship inspect --json` on the old leader's log still prints inspect's own form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_prints_the_same_log_without_a_source() {
    let mut old = OldLeader::start().await;
    old.commit_each(&["INSERT INTO items VALUES (1, 'item 1', 1)", HEARTBEAT]).await;
    old.log_slot(true).await;
    let out =
        Command::new(env!("CARGO_BIN_EXE_walship")).arg("inspect").arg("--json").arg(old.log.dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_inspect_form(&line);
    assert!(line.get("source").is_none());
    let keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
    let mut expected = ["term", "index", "changes", "commit_lsn", "end_lsn", "xid", "commit_time"].map(String::from);
    expected.sort();
    assert_eq!(keys, expected);
}

/// A WAL-only transaction larger than the builder's spill size passes through in chunks and is
/// reported whole, as one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unlogged_transaction_is_reported_whole() {
    let mut old = OldLeader::start().await;
    old.commit_each(&["INSERT INTO items VALUES (1, 'item 1', 1)"]).await;
    old.log_slot(true).await;
    let rows = 120_000;
    old.commit_each(&[&format!(
        "INSERT INTO items SELECT g, repeat('x', 20) || g, g FROM generate_series(2, {rows}) g"
    )])
    .await;
    let (summary, report) = old.report(TERM, Some(Index(1)), "huge.jsonl").await;
    assert_eq!((summary.log_entries, summary.wal_transactions, summary.rows), (0, 1, rows - 1));
    let changes = report[0]["changes"].as_array().unwrap();
    assert_eq!(changes.len() as u64, rows - 1);
    assert_eq!(changes[0]["new"], item(2, &format!("{}2", "x".repeat(20)), 2));
    let last = format!("{}{rows}", "x".repeat(20));
    assert_eq!(changes[changes.len() - 1]["new"], item(rows as u32, &last, rows as u32));
}
