//! Follower replay against real PostgreSQL: changes made on a leader instance, decoded through
//! a pgoutput slot into log records, applied to a follower instance, and the tables compared.
#![allow(clippy::unwrap_used)]

#[path = "support/pair.rs"]
mod pair;
#[path = "support/types.rs"]
mod types;

use std::time::Instant;

use pair::{apply, Pair};
use tokio_postgres::error::SqlState;
use types::{TYPES_ROW, TYPES_SCHEMA};
use walship::apply::{Applier, ApplyError};
use walship::error::ErrorClass;
use walship::log::entry::{decode_entry, EntryKind};
use walship::log::{Record, RecordKind};
use walship::source::builder::DEFAULT_SPILL_BYTES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_family_replays_through_text() {
    let mut pair = Pair::start(TYPES_SCHEMA, DEFAULT_SPILL_BYTES).await;
    let columns = "i2, i4, i8, num, num_p, f4, f8, b, t, vc, ch, by, d, tm, ttz, ts, tstz, iv, js, jb, \
                   ia, ta, u, m, dom, comp, r4, rtz, ip, cn, mac, x, mon, tsv, bt, vb, pt";
    for table in ["types", "types_full"] {
        pair.on_leader(&format!(
            "INSERT INTO {table} (id, {columns}) VALUES (1, {TYPES_ROW}), (2, {TYPES_ROW});
             INSERT INTO {table} (id) VALUES (3);
             UPDATE {table} SET i2 = 32767, i4 = -1, i8 = 0, num = -0.000001, num_p = NULL,
                 f4 = '-Infinity', f8 = 'NaN', b = true, t = '', vc = NULL, ch = 'abcde',
                 by = '\\x'::bytea, d = 'infinity', tm = '00:00', ttz = '00:00-12', ts = '-infinity',
                 tstz = '1999-12-31 23:59:59.999999+00', iv = '-1 day 00:00:01', js = '[]',
                 jb = '{{}}', ia = '{{}}', ta = '{{NULL}}', u = NULL, m = 'sad', dom = 1,
                 comp = ROW(NULL, NULL), r4 = 'empty', rtz = '(,)', ip = '::1', cn = '::/0',
                 mac = NULL, x = '<e/>', mon = -0.01, tsv = '', bt = B'0000', vb = B'', pt = '(0,0)'
             WHERE id = 1;
             UPDATE {table} SET ({columns}) = (SELECT {columns} FROM {table} WHERE id = 2) WHERE id = 3;
             UPDATE {table} SET i2 = 7 WHERE id = 1;
             DELETE FROM {table} WHERE id = 2;"
        ));
    }
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    let applied = apply(&mut applier, &records, 100).await.unwrap();
    assert_eq!(applied.id, records.last().unwrap().id);
    pair.assert_replicated();
    assert_eq!(pair.on_follower("SELECT count(*) FROM types_full WHERE i2 = 7"), "1");
    assert_eq!(pair.on_follower("SELECT count(*) FROM types"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_values_survive_updates_that_leave_them_alone_even_in_chunks() {
    let schema = "CREATE TABLE docs (id int PRIMARY KEY, note text, body text);
                  ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;";
    // A tiny spill size: every transaction above 2 KB leaves as chunks.
    let mut pair = Pair::start(schema, 2048).await;
    pair.on_leader(
        "INSERT INTO docs VALUES (1, 'n', repeat('abcdefghij', 20000)), (2, 'n', 'short');
         UPDATE docs SET note = 'changed' WHERE id = 1;
         UPDATE docs SET body = repeat('0123456789', 20000) || 'x' WHERE id = 1;
         UPDATE docs SET note = 'again' WHERE id = 1;
         UPDATE docs SET id = 10 WHERE id = 1;
         BEGIN;
         INSERT INTO docs SELECT g, 'bulk', md5(g::text) FROM generate_series(100, 3000) g;
         UPDATE docs SET note = 'bulk-updated' WHERE id BETWEEN 200 AND 2000;
         DELETE FROM docs WHERE id BETWEEN 1000 AND 1500;
         COMMIT;",
    );
    let records = pair.records().await;
    let chunks = records.iter().filter(|r| r.kind == RecordKind::Chunk).count();
    assert!(chunks > 10, "expected chunked entries, got {chunks} chunks");
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    apply(&mut applier, &records, 1).await.unwrap();
    pair.assert_replicated();
    let body = pair.on_follower("SELECT length(body), left(body, 10), note FROM docs WHERE id = 10");
    assert_eq!(body, "200001|0123456789|again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_full_and_index_replica_identities() {
    let schema = "CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE fullrows (a int, b text, j json, p point);
        ALTER TABLE fullrows REPLICA IDENTITY FULL;
        CREATE TABLE byindex (id int NOT NULL, code text NOT NULL, v text);
        CREATE UNIQUE INDEX byindex_code ON byindex (code);
        ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_code;";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader(
        r#"INSERT INTO keyed VALUES (1, 'a'), (2, 'b'), (3, 'c');
        UPDATE keyed SET id = 10 WHERE id = 1;
        UPDATE keyed SET id = id + 100, v = v || '!';
        INSERT INTO fullrows VALUES (1, 'x', '{"k": 1}', '(1,2)'), (1, 'x', '{"k": 1}', '(1,2)'),
            (1, 'x', '{"k": 1}', '(1,2)'), (2, NULL, NULL, NULL);
        UPDATE fullrows SET b = 'y' WHERE ctid = (SELECT min(ctid) FROM fullrows WHERE a = 1);
        DELETE FROM fullrows WHERE ctid = (SELECT max(ctid) FROM fullrows WHERE b = 'x');
        UPDATE fullrows SET a = 3, p = '(0,0)' WHERE a = 2;
        UPDATE fullrows SET j = '{"k": 2}' WHERE b = 'y';
        INSERT INTO byindex VALUES (1, 'a', 'one'), (2, 'b', 'two'), (3, 'c', 'three');
        UPDATE byindex SET v = 'new' WHERE code = 'a';
        UPDATE byindex SET code = 'z', id = 20 WHERE code = 'b';
        DELETE FROM byindex WHERE code = 'c';"#,
    );
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    apply(&mut applier, &records, 3).await.unwrap();
    pair.assert_replicated();
    assert_eq!(pair.on_follower("SELECT b, count(*) FROM fullrows WHERE a = 1 GROUP BY b ORDER BY b"), "x|1\ny|1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_cascade_schemas_and_quoted_names() {
    let schema = r#"CREATE TABLE parent (id serial PRIMARY KEY, v text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
        CREATE TABLE solo (id serial PRIMARY KEY);
        CREATE SCHEMA a; CREATE SCHEMA "B b";
        CREATE TABLE a.items (id int PRIMARY KEY, v text);
        CREATE TABLE "B b".items (id int PRIMARY KEY, v text);
        CREATE TABLE "Table With Spaces" ("Id" int PRIMARY KEY, "Val""ue" text);"#;
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader(
        r#"INSERT INTO parent (v) VALUES ('p1'), ('p2');
        INSERT INTO child VALUES (1, 1), (2, 2);
        INSERT INTO solo DEFAULT VALUES; INSERT INTO solo DEFAULT VALUES;
        INSERT INTO a.items VALUES (1, 'a1'), (2, 'a2');
        INSERT INTO "B b".items VALUES (1, 'b1'), (2, 'b2');
        INSERT INTO "Table With Spaces" VALUES (1, 'tab	and "quotes"');
        UPDATE a.items SET v = 'a1!' WHERE id = 1;
        DELETE FROM "B b".items WHERE id = 2;
        UPDATE "Table With Spaces" SET "Val""ue" = NULL WHERE "Id" = 1;"#,
    );
    let first = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    apply(&mut applier, &first, 100).await.unwrap();
    pair.assert_replicated();
    pair.on_leader(
        "TRUNCATE parent CASCADE;
         TRUNCATE solo RESTART IDENTITY;
         INSERT INTO parent (v) VALUES ('again');
         INSERT INTO solo DEFAULT VALUES;",
    );
    let second = pair.records().await;
    apply(&mut applier, &second, 100).await.unwrap();
    pair.assert_replicated();
    assert_eq!(pair.on_follower("SELECT count(*) FROM child"), "0");
    assert_eq!(pair.on_follower("SELECT id FROM solo"), "1");
    assert_eq!(pair.on_follower("SELECT v FROM a.items ORDER BY id"), "a1!\na2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_entry_is_applied_exactly_once_across_reconnects() {
    let mut pair = Pair::start("CREATE TABLE t (id int PRIMARY KEY, v text);", DEFAULT_SPILL_BYTES).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    for i in 1..=12 {
        pair.on_leader(&format!(
            "BEGIN; INSERT INTO t VALUES ({i}, 'v{i}'); UPDATE t SET v = v || '!' WHERE id = {i};
             SELECT pg_logical_emit_message(true, 'app', 'in a transaction'); COMMIT;"
        ));
        // Not after the last transaction: nothing flushes WAL after a non-transactional message.
        if i % 4 == 2 {
            pair.on_leader(&format!(
                "SELECT pg_logical_emit_message(false, 'walship.heartbeat', 'a 1 {now}');
                 SELECT pg_logical_emit_message(false, 'other', 'not a heartbeat');"
            ));
        }
    }
    let records = pair.records().await;
    assert!(records.iter().all(|r| r.kind == RecordKind::Entry));
    assert_eq!(records.len(), 12 + 6);
    // Ends with a heartbeat, which advances progress like any entry.
    let (first_half, rest) = records.split_at(9);
    let (last, _) = decode_entry(&first_half[8].payload).unwrap();
    assert_eq!(last.kind, EntryKind::Heartbeat);

    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    assert_eq!(applier.applied().await.unwrap(), None);
    let applied = apply(&mut applier, first_half, 2).await.unwrap();
    assert_eq!(applied.id, first_half[8].id);
    let (header, _) = decode_entry(&first_half[8].payload).unwrap();
    assert_eq!((applied.end_lsn, applied.commit_time), (header.end_lsn, header.commit_time));
    // Applied but not committed when the applier goes away: rolled back.
    applier.apply_record(&rest[0]).await.unwrap();
    applier.apply_record(&rest[1]).await.unwrap();
    drop(applier);

    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    assert_eq!(applier.applied().await.unwrap(), Some(applied));
    let rows = pair.on_follower("SELECT count(*) FROM t");
    assert_eq!(rows, "6", "entries 1..=9 hold six transactions");
    match applier.apply_record(&first_half[8]).await {
        Err(e @ ApplyError::AlreadyApplied { .. }) => assert_eq!(e.class(), ErrorClass::Fatal),
        other => panic!("re-applying an applied entry: {other:?}"),
    }
    assert!(matches!(applier.apply_record(&first_half[3]).await, Err(ApplyError::AlreadyApplied { .. })));
    assert!(matches!(applier.apply_record(&rest[1]).await, Err(ApplyError::OutOfOrder { .. })));
    // Another applier that still believes in the earlier progress cannot commit over it.
    let mut stale = Applier::connect(&pair.follower_config()).await.unwrap();
    let end = apply(&mut applier, rest, 4).await.unwrap();
    stale.apply_record(&rest[0]).await.unwrap();
    let moved = stale.commit().await.unwrap_err();
    assert!(matches!(moved, ApplyError::ProgressMoved { .. }), "{moved:?}");
    assert_eq!(stale.applied().await.unwrap(), Some(end));
    assert_eq!(end.id, records.last().unwrap().id);
    let rows = pair.on_follower("SELECT count(*), count(*) FILTER (WHERE v LIKE '%!') FROM t");
    assert_eq!(rows, "12|12");
    pair.assert_replicated();
    let progress = pair.on_follower("SELECT term, applied_index FROM walship.progress");
    assert_eq!(progress, format!("1|{}", end.id.index));
}

/// Applies until the first error, committing after every entry; returns the error.
async fn apply_until_error(applier: &mut Applier, records: &[Record]) -> ApplyError {
    for record in records {
        if let Err(e) = applier.apply_record(record).await {
            return e;
        }
    }
    applier.commit().await.expect_err("replay should have diverged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergence_stops_replay_naming_entry_table_and_key() {
    let schema = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE gone (id int PRIMARY KEY);";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');");
    let setup = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    let applied = apply(&mut applier, &setup, 1).await;

    // A row deleted behind the applier's back: the leader's update of it must not vanish.
    pair.on_follower("DELETE FROM t WHERE id = 2;");
    pair.on_leader("INSERT INTO t VALUES (4, 'd'); UPDATE t SET v = 'x' WHERE id = 2;");
    let records = pair.records().await;
    match apply_until_error(&mut applier, &records).await {
        e @ ApplyError::Divergence { .. } => {
            assert_eq!(e.class(), ErrorClass::Operator);
            let ApplyError::Divergence { entry, table, key, .. } = e else { unreachable!() };
            assert_eq!((entry, table.as_str(), key.as_str()), (records[1].id, "public.t", "id=2"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    // Rolled back: the insert grouped into the same transaction is not there either.
    assert_eq!(applier.applied().await.unwrap(), applied);
    assert_eq!(pair.on_follower("SELECT count(*) FROM t WHERE id = 4"), "0");

    // The follower's own row in the way of an insert.
    pair.on_follower("INSERT INTO t VALUES (2, 'b'), (5, 'mine');");
    apply(&mut applier, &records, 1).await;
    pair.on_leader("INSERT INTO t VALUES (5, 'e');");
    let records = pair.records().await;
    match apply_until_error(&mut applier, &records).await {
        ApplyError::Divergence { entry, table, key, .. } => {
            assert_eq!((entry, table.as_str(), key.as_str()), (records[0].id, "public.t", "id=5"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }

    // A table the follower does not have.
    pair.on_follower("DELETE FROM t WHERE id = 5; DROP TABLE gone;");
    pair.on_leader("INSERT INTO gone VALUES (1);");
    let more = pair.records().await;
    apply(&mut applier, &records, 1).await;
    match apply_until_error(&mut applier, &more).await {
        ApplyError::Divergence { entry, table, reason, .. } => {
            assert_eq!((entry, table.as_str()), (more[0].id, "public.gone"));
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    assert_eq!(applier.applied().await.unwrap().unwrap().id, records[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_database_refuses_clients_but_not_the_applier() {
    let mut pair = Pair::start("CREATE TABLE t (id int PRIMARY KEY);", DEFAULT_SPILL_BYTES).await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    applier.set_read_only(true).await.unwrap();
    let client = walship::sql::connect(&pair.follower_config()).await.unwrap();
    let refused = client.execute("INSERT INTO t VALUES (100)", &[]).await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));

    pair.on_leader("INSERT INTO t VALUES (1); UPDATE t SET id = 2;");
    let records = pair.records().await;
    apply(&mut applier, &records, 1).await.unwrap();
    pair.assert_replicated();

    applier.set_read_only(false).await.unwrap();
    let client = walship::sql::connect(&pair.follower_config()).await.unwrap();
    client.execute("INSERT INTO t VALUES (100)", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_even_when_two_connect_at_once() {
    let pair = Pair::start("CREATE TABLE t (id int PRIMARY KEY);", DEFAULT_SPILL_BYTES).await;
    let config = pair.follower_config();
    let (a, b) = tokio::join!(Applier::connect(&config), Applier::connect(&config));
    let (a, b) = (a.unwrap(), b.unwrap());
    let migrations = "SELECT version, name, applied_at FROM walship.migrations";
    let first = pair.on_follower(migrations);
    assert_eq!(first.lines().count(), 1, "{first}");
    drop((a, b));
    let mut again = Applier::connect(&config).await.unwrap();
    assert_eq!(pair.on_follower(migrations), first);
    assert_eq!(again.applied().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_rate() {
    // Smaller in debug builds; run with --release for the numbers.
    let scale = if cfg!(debug_assertions) { 5 } else { 1 };
    let (inserts, updates) = (100_000 / scale, 50_000 / scale);
    let schema = "CREATE TABLE bench (id int PRIMARY KEY, v text, n int);";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader(&format!(
        "DO $$ BEGIN FOR b IN 0..{} LOOP
           INSERT INTO bench SELECT g, md5(g::text), g FROM generate_series(b * 1000 + 1, b * 1000 + 1000) g;
           COMMIT;
         END LOOP; END $$;",
        inserts / 1000 - 1
    ));
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    let started = Instant::now();
    apply(&mut applier, &records, 1).await.unwrap();
    let rate = inserts as f64 / started.elapsed().as_secs_f64();
    println!("apply rate: {inserts} inserts in 1000-row transactions, one commit each: {rate:.0} rows/s");

    pair.on_leader(&format!(
        "DO $$ BEGIN FOR i IN 1..{updates} LOOP
           UPDATE bench SET n = n + 1, v = 'u' WHERE id = i; COMMIT;
         END LOOP; END $$;"
    ));
    let records = pair.records().await;
    let (grouped, single) = records.split_at(records.len() / 2);
    let started = Instant::now();
    apply(&mut applier, grouped, 1000).await.unwrap();
    let rate = grouped.len() as f64 / started.elapsed().as_secs_f64();
    println!("apply rate: single-row update transactions, 1000 per commit: {rate:.0} rows/s");
    let started = Instant::now();
    apply(&mut applier, single, 1).await.unwrap();
    let rate = single.len() as f64 / started.elapsed().as_secs_f64();
    println!("apply rate: single-row update transactions, one commit each: {rate:.0} rows/s");

    pair.on_leader(&format!(
        "DO $$ BEGIN FOR i IN 1..{updates} LOOP DELETE FROM bench WHERE id = i; COMMIT; END LOOP; END $$;"
    ));
    let records = pair.records().await;
    let started = Instant::now();
    apply(&mut applier, &records, 1000).await.unwrap();
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    println!("apply rate: single-row delete transactions, 1000 per commit: {rate:.0} rows/s");
    pair.assert_replicated();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_runs_go_in_bulk_for_every_type_family() {
    let extra = "CREATE DOMAIN intlist AS int[] CHECK (cardinality(VALUE) < 10);
                 CREATE TABLE odd (id text PRIMARY KEY, bx box, ia int[], dl intlist, note text,
                     c5 char(5)[], bp bpchar[], b3 bit(3)[], vc varchar(4)[]);";
    let mut pair = Pair::start(&format!("{TYPES_SCHEMA}{extra}"), DEFAULT_SPILL_BYTES).await;
    let columns = "i2, i4, i8, num, num_p, f4, f8, b, t, vc, ch, by, d, tm, ttz, ts, tstz, iv, js, jb, \
                   ia, ta, u, m, dom, comp, r4, rtz, ip, cn, mac, x, mon, tsv, bt, vb, pt";
    let rows = 3 * walship::apply::BULK_MIN_ROWS;
    pair.on_leader(&format!(
        "BEGIN;
         INSERT INTO types (id, {columns}) VALUES (1, {TYPES_ROW});
         INSERT INTO types (id, {columns}) SELECT g, {columns} FROM types, generate_series(2, {rows}) g;
         COMMIT;
         INSERT INTO types (id) SELECT g FROM generate_series({rows} + 1, 2 * {rows}) g;
         UPDATE types SET t = t || id, by = by || '\\x5c22'::bytea, ta = ta || '{{\"x,y\"}}'::text[], i2 = NULL;
         UPDATE types SET ({columns}) = (SELECT {columns} FROM types WHERE id = 1) WHERE id > {rows};
         INSERT INTO odd SELECT 'k \"' || g || '\\', box(point(g, 0), point(0, g)), ARRAY[g, NULL],
             ARRAY[g], E'a\\tb \"c\" \\\\' FROM generate_series(1, {rows}) g;
         UPDATE odd SET bx = box(point(-1, -1), point(1, 1)), ia = ARRAY[[1, 2], [3, NULL]], dl = '{{}}', note = NULL,
             c5 = '{{hello,world}}', bp = '{{abcdef}}', b3 = '{{101,010}}', vc = '{{abcd,\"e,f\"}}';"
    ));
    // Single-row transactions on alternating keys: runs across entries, broken by repeats.
    for i in 0..4 * rows {
        pair.on_leader(&format!(
            "UPDATE types SET i4 = coalesce(i4, 0) % 1000 * 3 + {i} WHERE id = {};",
            i % (2 * rows) + 1
        ));
    }
    pair.on_leader("DELETE FROM types WHERE id % 3 = 0; DELETE FROM odd WHERE id LIKE 'k \"1%';");
    let sent = pair.replicate().await;
    assert!(sent.copy >= 3 * rows as u64, "inserts go by COPY: {sent:?}");
    assert!(sent.set >= 4 * rows as u64, "long runs of updates and deletes go set-based: {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_based_run_that_diverges_is_replayed_in_strict_order_to_name_the_row() {
    let mut pair = Pair::start("CREATE TABLE t (id int PRIMARY KEY, v text);", DEFAULT_SPILL_BYTES).await;
    pair.on_leader("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g;");
    let setup = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    let applied = apply(&mut applier, &setup, 1).await;

    pair.on_follower("DELETE FROM t WHERE id = 37;");
    for i in 1..=60 {
        pair.on_leader(&format!("UPDATE t SET v = 'u{i}' WHERE id = {i};"));
    }
    let records = pair.records().await;
    let (first, last) = match apply_until_error(&mut applier, &records).await {
        e @ ApplyError::Batched { .. } => {
            assert_eq!(e.class(), ErrorClass::Retry);
            let ApplyError::Batched { first, last, table, reason } = e else { unreachable!() };
            assert_eq!(table, "public.t");
            assert!(reason.contains("matched"), "{reason}");
            (first, last)
        }
        other => panic!("expected a set-based failure, got {other:?}"),
    };
    assert!(first.index <= records[36].id.index && records[36].id.index <= last.index, "{first}..{last}");
    assert_eq!(applier.applied().await.unwrap(), applied, "rolled back");

    applier.strict_through(Some(last.index));
    match apply_until_error(&mut applier, &records).await {
        ApplyError::Divergence { entry, table, key, .. } => {
            assert_eq!((entry, table.as_str(), key.as_str()), (records[36].id, "public.t", "id=37"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    // Deletes: the same, and past the row-by-row range bulk is back.
    pair.on_follower("INSERT INTO t VALUES (37, 'u37'); DELETE FROM t WHERE id = 90;");
    apply(&mut applier, &records, 1000).await.unwrap();
    pair.on_leader("DELETE FROM t WHERE id > 80;");
    let deletes = pair.records().await;
    match apply_until_error(&mut applier, &deletes).await {
        ApplyError::Batched { .. } => {}
        other => panic!("expected a set-based failure, got {other:?}"),
    }
    applier.strict_through(Some(deletes.last().unwrap().id.index));
    match apply_until_error(&mut applier, &deletes).await {
        ApplyError::Divergence { entry, key, .. } => assert_eq!((entry, key.as_str()), (deletes[0].id, "id=90")),
        other => panic!("expected a divergence, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_small_transactions_make_long_runs_per_table() {
    let schema = "CREATE TABLE a (id int PRIMARY KEY, n int); CREATE TABLE b (id int PRIMARY KEY, n int);
                  CREATE TABLE h (a int, b int, at text);";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader("INSERT INTO a SELECT g, 0 FROM generate_series(1, 200) g; INSERT INTO b SELECT g, 0 FROM generate_series(1, 10) g;");
    // pgbench's shape: each transaction updates a row of a and of b and logs to h; b's keys
    // repeat often, a's never.
    pair.on_leader(
        "DO $$ BEGIN FOR i IN 1..200 LOOP
           UPDATE a SET n = n + i WHERE id = i;
           UPDATE b SET n = n * 2 + i WHERE id = i % 10 + 1;
           INSERT INTO h VALUES (i, i % 10 + 1, 'at ' || i);
           COMMIT;
         END LOOP; END $$;",
    );
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    apply(&mut applier, &records, 1000).await.unwrap();
    pair.assert_replicated();
    let sent = applier.rows_sent();
    assert!(sent.set >= 150 && sent.copy >= 150, "runs across the transactions go in bulk: {sent:?}");
    // b's 200 updates of 10 keys: only the last update of each key in a batch goes out.
    assert!(sent.set + sent.row < 300, "repeated updates of a key collapse: {sent:?}");

    // Two rows missing on the follower, in two tables: the first one in log order is named,
    // though its table's run went out after the other's.
    pair.on_follower("DELETE FROM a WHERE id = 150; DELETE FROM b WHERE id = 4;");
    pair.on_leader(
        "DO $$ BEGIN FOR i IN 1..200 LOOP
           UPDATE a SET n = n + 1 WHERE id = i;
           UPDATE b SET n = n + 1 WHERE id = i % 10 + 1;
           COMMIT;
         END LOOP; END $$;",
    );
    let records = pair.records().await;
    let last = match apply_until_error(&mut applier, &records).await {
        ApplyError::Batched { last, .. } => last,
        other => panic!("expected a batched failure, got {other:?}"),
    };
    applier.strict_through(Some(last.index));
    match apply_until_error(&mut applier, &records).await {
        ApplyError::Divergence { entry, table, key, .. } => {
            assert_eq!((entry, table.as_str(), key.as_str()), (records[2].id, "public.b", "id=4"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_replica_triggers_keeps_its_order_with_other_tables() {
    let schema = "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, n int);";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    // On the follower only: a trigger that fires in the apply session and reads another table.
    pair.on_follower(
        "CREATE TABLE seen (n int, a_rows bigint);
         CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.seen SELECT NEW.n, count(*) FROM public.a; RETURN NEW; END $$;
         CREATE TRIGGER note AFTER UPDATE ON b FOR EACH ROW EXECUTE FUNCTION note();
         ALTER TABLE b ENABLE ALWAYS TRIGGER note;",
    );
    pair.on_leader("INSERT INTO b VALUES (1, 0);");
    pair.on_leader(
        "DO $$ BEGIN FOR i IN 1..50 LOOP
           INSERT INTO a VALUES (i); UPDATE b SET n = i WHERE id = 1; COMMIT;
         END LOOP; END $$;",
    );
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    apply(&mut applier, &records, 1000).await.unwrap();
    pair.assert_replicated();
    let wrong = pair.on_follower("SELECT count(*) FROM seen WHERE a_rows <> n");
    assert_eq!(wrong, "0", "{}", pair.on_follower("SELECT * FROM seen ORDER BY n"));
    assert_eq!(pair.on_follower("SELECT count(*) FROM seen"), "50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_constraint_failing_at_commit_is_named_after_strict_replay() {
    let schema = "CREATE TABLE t (id int PRIMARY KEY, u int);";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    // On the follower only: a deferred constraint trigger that fires in the apply session.
    pair.on_follower(
        "CREATE FUNCTION no_seven() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           IF NEW.u = 7 THEN
             RAISE EXCEPTION 'seven' USING ERRCODE = 'check_violation', SCHEMA = 'public', TABLE = 't';
           END IF;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER no_seven AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION public.no_seven();
         ALTER TABLE t ENABLE ALWAYS TRIGGER no_seven;",
    );
    for i in 1..=10 {
        pair.on_leader(&format!("INSERT INTO t VALUES ({i}, {i});"));
    }
    let records = pair.records().await;
    let mut applier = Applier::connect(&pair.follower_config()).await.unwrap();
    // Ten entries, one commit: the check at COMMIT cannot say which entry failed.
    let last = match apply_until_error(&mut applier, &records).await {
        ApplyError::Batched { last, reason, .. } => {
            assert!(reason.contains("seven"), "{reason}");
            last
        }
        other => panic!("expected a batched failure, got {other:?}"),
    };
    applier.strict_through(Some(last.index));
    assert!(applier.is_strict(records[6].id));
    let mut failed = None;
    for record in &records {
        let step = async {
            applier.apply_record(record).await?;
            applier.commit().await
        };
        if let Err(e) = step.await {
            failed = Some(e);
            break;
        }
    }
    match failed {
        Some(ApplyError::Divergence { entry, table, .. }) => {
            assert_eq!((entry, table.as_str()), (records[6].id, "public.t"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    assert_eq!(pair.on_follower("SELECT count(*) FROM t"), "6", "the six entries before it committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_updates_of_hot_keys_collapse_to_the_last_one() {
    let schema = "CREATE TABLE c (id int PRIMARY KEY, n int, note text, doc text);
                  ALTER TABLE c ALTER COLUMN doc SET STORAGE EXTERNAL;";
    let mut pair = Pair::start(schema, DEFAULT_SPILL_BYTES).await;
    pair.on_leader("INSERT INTO c SELECT g, 0, 'n', repeat('d', 5000) FROM generate_series(1, 5) g;");
    // Counters on five keys, with other shapes, a delete and re-insert, and key changes
    // in between; the TOASTed doc is left alone by most updates (another shape).
    pair.on_leader(
        "DO $$ BEGIN FOR i IN 1..300 LOOP
           UPDATE c SET n = n + i WHERE id = i % 5 + 1;
           IF i % 7 = 0 THEN UPDATE c SET note = 'note ' || i, n = n - 1 WHERE id = i % 5 + 1; END IF;
           IF i % 11 = 0 THEN UPDATE c SET doc = repeat('e', 5000) || i WHERE id = i % 5 + 1; END IF;
           IF i % 13 = 0 THEN
             DELETE FROM c WHERE id = 3; INSERT INTO c VALUES (3, i, 'again', repeat('f', 5000));
           END IF;
           IF i % 50 = 0 THEN UPDATE c SET id = 100 WHERE id = 2; UPDATE c SET id = 2 WHERE id = 100; END IF;
           COMMIT;
         END LOOP; END $$;",
    );
    let sent = pair.replicate().await;
    assert!(sent.set + sent.row < 300, "300 counter updates on 5 keys collapse: {sent:?}");
}
