//! A leader and followers against real PostgreSQL: streaming, replay, crashes, refusals.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::{table_rows, two_instances, wait_until, Sidecar};
use walship::localpg::{Instance, Options, StopMode};
use walship::lsn::Lsn;

const SCHEMA: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
                      CREATE TABLE events (id bigserial PRIMARY KEY, account int NOT NULL, at timestamptz DEFAULT now());";
const TABLES: &[&str] = &["accounts", "events"];

fn slot_confirmed(pg: &Instance) -> Lsn {
    pg.psql(
        "postgres",
        "SELECT coalesce(confirmed_flush_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'walship_a'",
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(Lsn::ZERO)
}

fn start_leader(dir: &Path, pg: &Instance) -> Sidecar {
    let mut leader = Sidecar::leader(&dir.join("a"), "a", pg, "[source]\nheartbeat_interval = \"200ms\"\n");
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's slot", || slot_confirmed(pg) > Lsn::ZERO);
    leader.wait_writable();
    leader
}

fn same_rows(leader: &Instance, follower: &Instance) -> bool {
    table_rows(leader, TABLES) == table_rows(follower, TABLES)
}

fn pgbench_script(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("load.sql");
    std::fs::write(
        &path,
        "\\set id random(1, 500)\n\
         BEGIN;\n\
         UPDATE accounts SET balance = balance + 1 WHERE id = :id;\n\
         INSERT INTO events (account) VALUES (:id);\n\
         END;\n",
    )
    .unwrap();
    path
}

#[test]
fn followers_replicate_through_crashes_and_stay_read_only() {
    let leader_pg = Instance::start(Options::default()).unwrap();
    let follower_pg = Instance::start(Options::default()).unwrap();
    let second_pg = Instance::start(Options::default()).unwrap();
    for pg in [&leader_pg, &follower_pg, &second_pg] {
        pg.psql("postgres", SCHEMA).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_leader(dir.path(), &leader_pg);
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    let mut c = Sidecar::follower(&dir.path().join("c"), "c", &second_pg, &[&leader], "");
    b.start();
    c.start();

    leader_pg
        .psql("postgres", "INSERT INTO accounts SELECT g, 0, 'account ' || g FROM generate_series(1, 500) g")
        .unwrap();
    wait_until(Duration::from_secs(60), "the followers to have the accounts", || {
        same_rows(&leader_pg, &follower_pg) && same_rows(&leader_pg, &second_pg)
    });

    let script = pgbench_script(dir.path());
    let bench = leader_pg
        .command("pgbench")
        .args(["-n", "-c", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg("postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    b.kill(); // the follower sidecar crashes
    std::thread::sleep(Duration::from_secs(1));
    b.start();
    let mut second_pg = second_pg;
    second_pg.stop(StopMode::Immediate).unwrap(); // the other follower's database crashes
    std::thread::sleep(Duration::from_secs(1));
    second_pg.start_again().unwrap();
    let bench = bench.wait_with_output().unwrap();
    assert!(bench.status.success(), "pgbench: {}", String::from_utf8_lossy(&bench.stderr));

    wait_until(Duration::from_secs(90), "the followers to catch up", || {
        same_rows(&leader_pg, &follower_pg) && same_rows(&leader_pg, &second_pg)
    });
    let events: i64 = follower_pg.psql("postgres", "SELECT count(*) FROM events").unwrap().trim().parse().unwrap();
    assert!(events > 100, "the load committed only {events} events");

    let refused = follower_pg.psql("postgres", "INSERT INTO accounts VALUES (100000, 0, 'client write')");
    let message = format!("{refused:?}");
    assert!(refused.is_err() && message.contains("read-only"), "a client write on a follower: {message}");
    // Going around default_transaction_read_only does not help: the fence refuses it too.
    let sql = "BEGIN READ WRITE; INSERT INTO accounts VALUES (100001, 0, 'client write'); COMMIT;";
    let refused = follower_pg.psql("postgres", sql);
    let message = format!("{refused:?}");
    assert!(
        refused.is_err() && message.contains("this node does not lead"),
        "BEGIN READ WRITE on a follower: {message}"
    );

    for sidecar in [&mut b, &mut c, &mut leader] {
        sidecar.stop();
        sidecar.assert_no_errors();
    }
}

#[test]
fn a_follower_with_the_wrong_token_gets_nothing() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_leader(dir.path(), &leader_pg);
    leader_pg.psql("postgres", "INSERT INTO accounts VALUES (1, 10, 'secret')").unwrap();
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    b.set_token("not the shared token");
    let refusal = "could not prove it knows the shared token";
    b.expect_errors(&[refusal]);
    leader.expect_errors(&[refusal]);
    b.start();
    wait_until(Duration::from_secs(20), "the refusal in the leader's log", || leader.log_text().contains(refusal));
    assert!(b.log_text().contains("token"), "the follower should say why: {}", b.log_text());
    let rows = follower_pg.psql("postgres", "SELECT count(*) FROM accounts").unwrap();
    assert_eq!(rows.trim(), "0");
    b.stop();
    leader.stop();
}

#[test]
fn a_follower_of_another_cluster_is_refused() {
    let leader_pg = Instance::start(Options::default()).unwrap();
    let follower_pg = Instance::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_leader(dir.path(), &leader_pg);
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    let config = std::fs::read_to_string(&b.config_path).unwrap().replace("cluster = \"test\"", "cluster = \"other\"");
    std::fs::write(&b.config_path, config).unwrap();
    b.start();
    // The follower finds no leader of its own cluster among its peers.
    wait_until(Duration::from_secs(20), "the follower to give up on the other cluster", || {
        b.log_text().contains("no peer says it leads cluster other")
    });
    b.stop();
    leader.stop();
    leader.assert_no_errors();
}

#[test]
fn a_follower_whose_entries_the_leader_dropped_is_told_to_reseed() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let extra = "[source]\nheartbeat_interval = \"200ms\"\n[log]\nsegment_bytes = 65536\nretain_max_bytes = 300000\n";
    let mut leader = Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, extra);
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    leader.add_peer(&b);
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's slot", || slot_confirmed(&leader_pg) > Lsn::ZERO);
    leader.wait_writable();
    b.start();
    leader_pg.psql("postgres", "INSERT INTO accounts SELECT g, 0, 'first' FROM generate_series(1, 10) g").unwrap();
    wait_until(Duration::from_secs(30), "the first rows", || same_rows(&leader_pg, &follower_pg));
    b.stop();

    // Far more than the cap, in many transactions: whole segments become removable.
    leader_pg
        .psql(
            "postgres",
            "DO $$ BEGIN FOR i IN 1..2000 LOOP \
               INSERT INTO events (account) SELECT g FROM generate_series(1, 20) g; COMMIT; \
             END LOOP; END $$",
        )
        .unwrap();
    wait_until(Duration::from_secs(30), "retention to remove segments", || {
        leader.log_text().contains("removed log segments")
    });
    assert!(leader.log_text().contains("over its size cap"), "{}", leader.log_tail());

    let refusal = "needs entries from index";
    b.expect_errors(&[refusal]);
    leader.expect_errors(&[refusal]);
    b.start();
    wait_until(Duration::from_secs(30), "the follower to be told to re-seed", || b.log_text().contains("re-seed"));
    let events = follower_pg.psql("postgres", "SELECT count(*) FROM events").unwrap();
    assert_eq!(events.trim(), "0", "nothing may be applied past a gap");
    b.stop();
    leader.stop();
}

#[test]
fn every_type_family_arrives_identical_through_the_whole_pipeline() {
    use support::types::{TYPES_ROW, TYPES_SCHEMA};
    let leader_pg = Instance::start(Options::default()).unwrap();
    let follower_pg = Instance::start(Options::default()).unwrap();
    for pg in [&leader_pg, &follower_pg] {
        pg.psql("postgres", TYPES_SCHEMA).unwrap();
    }
    // Output settings that would make text ambiguous must not leak into the stream.
    leader_pg
        .psql(
            "postgres",
            "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'; ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'; \
             ALTER DATABASE postgres SET extra_float_digits = -3",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_leader(dir.path(), &leader_pg);
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    b.start();
    let columns =
        "i2, i4, i8, num, num_p, f4, f8, b, t, vc, ch, by, d, tm, ttz, ts, tstz, iv, js, jb, ia, ta, u, m, dom, \
                   comp, r4, rtz, ip, cn, mac, x, mon, tsv, bt, vb, pt";
    for table in ["types", "types_full"] {
        leader_pg
            .psql(
                "postgres",
                &format!(
                    "INSERT INTO {table} (id, {columns}) VALUES (1, {TYPES_ROW}); \
                     INSERT INTO {table} (id, i4) VALUES (2, NULL); \
                     INSERT INTO {table} (id, {columns}) VALUES (3, {TYPES_ROW}); \
                     UPDATE {table} SET f4 = '-Infinity', num = -0.000001, t = NULL WHERE id = 3; \
                     DELETE FROM {table} WHERE id = 2;"
                ),
            )
            .unwrap();
    }
    let tables = ["types", "types_full"];
    let rows = |pg: &Instance| table_rows(pg, &tables);
    wait_until(Duration::from_secs(30), "identical rows", || rows(&leader_pg) == rows(&follower_pg));
    let count = follower_pg.psql("postgres", "SELECT count(*) FROM types_full").unwrap();
    assert_eq!(count.trim(), "2");
    b.stop();
    leader.stop();
    b.assert_no_errors();
    leader.assert_no_errors();
}

fn pgbench_tables() -> &'static [&'static str] {
    &["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
}

#[test]
fn followers_seeded_from_empty_databases_replicate_pgbench_through_faults() {
    let leader_pg = Instance::start(Options::default()).unwrap();
    let b_pg = Instance::start(Options::default()).unwrap();
    let mut c_pg = Instance::start(Options::default()).unwrap();
    let d_pg = Instance::start(Options::default()).unwrap();
    // Rows from before the leader sidecar existed reach followers only through the snapshot.
    let init = leader_pg.command("pgbench").args(["-i", "-s", "2", "-q", "postgres"]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let dir = tempfile::tempdir().unwrap();
    let mut leader =
        Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, "[source]\nheartbeat_interval = \"200ms\"\n");
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &b_pg, &[&leader], "");
    let mut c = Sidecar::follower(&dir.path().join("c"), "c", &c_pg, &[&leader], "");
    let mut d = Sidecar::follower(&dir.path().join("d"), "d", &d_pg, &[&leader], "");
    for peer in [&b, &c, &d] {
        leader.add_peer(peer);
    }
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's slot", || slot_confirmed(&leader_pg) > Lsn::ZERO);
    leader.wait_writable();
    b.start();
    c.start();

    let bench = leader_pg
        .command("pgbench")
        .args(["-c", "4", "-T", "25", "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    b.kill(); // a follower sidecar crashes mid-load
    std::thread::sleep(Duration::from_secs(1));
    b.start();
    std::thread::sleep(Duration::from_secs(3));
    c_pg.stop(StopMode::Immediate).unwrap(); // another follower's database crashes
    std::thread::sleep(Duration::from_secs(1));
    c_pg.start_again().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    d.start(); // a third follower joins from an empty database while the leader takes writes
    let bench = bench.wait_with_output().unwrap();
    assert!(bench.status.success(), "pgbench: {}", String::from_utf8_lossy(&bench.stderr));

    let rows = |pg: &Instance| table_rows(pg, pgbench_tables());
    wait_until(Duration::from_secs(120), "all three followers to equal the leader", || {
        let leader_rows = rows(&leader_pg);
        leader_rows == rows(&b_pg) && leader_rows == rows(&c_pg) && leader_rows == rows(&d_pg)
    });
    let history: i64 = d_pg.psql("postgres", "SELECT count(*) FROM pgbench_history").unwrap().trim().parse().unwrap();
    assert!(history > 100, "pgbench committed only {history} transactions");
    assert!(d.log_text().contains("snapshot loaded"), "{}", d.log_tail());
    let refused = b_pg.psql("postgres", "INSERT INTO pgbench_branches VALUES (100, 0, 'client write')");
    assert!(format!("{refused:?}").contains("read-only"), "a client write on a follower: {refused:?}");

    for sidecar in [&mut b, &mut c, &mut d, &mut leader] {
        sidecar.stop();
        sidecar.assert_no_errors();
    }
}

#[test]
fn a_follower_that_diverges_inside_a_set_based_run_names_the_row() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_leader(dir.path(), &leader_pg);
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    leader.add_peer(&b);
    b.start();
    leader_pg.psql("postgres", "INSERT INTO accounts SELECT g, 0, 'n' FROM generate_series(1, 100) g").unwrap();
    wait_until(Duration::from_secs(30), "the first rows", || same_rows(&leader_pg, &follower_pg));
    wait_until(Duration::from_secs(10), "b streaming", || replay_status(&b).0.as_deref() == Some("streaming"));
    let (_, metrics) = support::http_get(b.admin_port, "/metrics").unwrap();
    for zero in ["walship_replay_stopped 0", "walship_replay_errors_total 0", "walship_replay_strict_retries_total 0"] {
        assert!(metrics.lines().any(|l| l == zero), "{zero} from start-up: {metrics}");
    }
    b.stop();

    // A superuser deletes a row on the follower, going around its fence; the leader then
    // updates every row, one transaction each: a long run of updates that replay sends
    // set-based.
    let sql =
        "BEGIN READ WRITE; SET LOCAL session_replication_role = replica; DELETE FROM accounts WHERE id = 42; COMMIT;";
    follower_pg.psql("postgres", sql).unwrap();
    leader_pg
        .psql(
            "postgres",
            "DO $$ BEGIN FOR i IN 1..100 LOOP UPDATE accounts SET balance = i WHERE id = i; COMMIT; END LOOP; END $$",
        )
        .unwrap();
    let divergence = "diverges on table public.accounts (key id=42)";
    b.expect_errors(&[divergence]);
    leader.expect_errors(&[divergence]);
    b.start();
    wait_until(Duration::from_secs(30), "replay to stop at the row", || b.log_text().contains(divergence));
    let log = b.log_text();
    assert!(log.contains("replaying its entries in strict order"), "{}", b.log_tail());
    let (_, metrics) = support::http_get(b.admin_port, "/metrics").unwrap();
    let retries = metrics.lines().find_map(|l| l.strip_prefix("walship_replay_strict_retries_total "));
    assert!(retries.is_some_and(|n| n.trim() != "0"), "{metrics}");
    // The stall shows without reading the sidecar's log.
    let (state, error) = replay_status(&b);
    assert_eq!(state.as_deref(), Some("stopped"));
    assert!(error.as_deref().is_some_and(|e| e.contains("key id=42")), "{error:?}");
    assert!(metrics.lines().any(|l| l == "walship_replay_stopped 1"), "{metrics}");
    let errors = metrics.lines().find_map(|l| l.strip_prefix("walship_replay_errors_total "));
    assert!(errors.is_some_and(|n| n.trim() != "0"), "{metrics}");
    let after = follower_pg.psql("postgres", "SELECT count(*) FROM accounts WHERE id > 42 AND balance <> 0").unwrap();
    assert_eq!(after.trim(), "0", "nothing past the divergence is applied");
    b.stop();
    leader.stop();
}

/// Whether the leader's `/status` shows `follower` connected.
fn connected(leader: &Sidecar, follower: &str) -> Option<bool> {
    let (code, body) = support::http_get(leader.admin_port, "/status").ok()?;
    let status: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    let followers = status["followers"].as_array()?;
    followers.iter().find(|f| f["node"] == follower).and_then(|f| f["connected"].as_bool())
}

#[test]
fn a_follower_that_goes_silent_shows_disconnected_within_the_relay_timeout_and_catches_up_after() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let timeout = "[relay]\ntimeout = \"2s\"\n";
    let mut leader = Sidecar::leader(
        &dir.path().join("a"),
        "a",
        &leader_pg,
        &format!("{timeout}[source]\nheartbeat_interval = \"200ms\"\n"),
    );
    let mut b = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], timeout);
    leader.add_peer(&b);
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's slot", || slot_confirmed(&leader_pg) > Lsn::ZERO);
    leader.wait_writable();
    b.start();
    leader_pg.psql("postgres", "INSERT INTO accounts SELECT g, 0, 'n' FROM generate_series(1, 100) g").unwrap();
    wait_until(Duration::from_secs(30), "the first rows", || same_rows(&leader_pg, &follower_pg));
    wait_until(Duration::from_secs(10), "b connected", || connected(&leader, "b") == Some(true));

    // The follower's host stops answering without closing its socket (a stopped process
    // keeps it open, as a dead host or a black-holed network does).
    support::signal(b.pid(), "STOP");
    let silent_since = std::time::Instant::now();
    wait_until(Duration::from_secs(15), "the leader to see b gone", || connected(&leader, "b") == Some(false));
    let noticed = silent_since.elapsed();
    assert!(noticed < Duration::from_secs(5), "noticed after {noticed:?} with a 2 s timeout");
    leader_pg.psql("postgres", "UPDATE accounts SET balance = 7 WHERE id <= 50").unwrap();

    support::signal(b.pid(), "CONT");
    wait_until(Duration::from_secs(30), "b back and caught up", || {
        connected(&leader, "b") == Some(true) && same_rows(&leader_pg, &follower_pg)
    });
    b.stop();
    leader.stop();
}

/// A follower's replay state and error, from its `/status`.
fn replay_status(follower: &Sidecar) -> (Option<String>, Option<String>) {
    let Ok((200, body)) = support::http_get(follower.admin_port, "/status") else { return (None, None) };
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    (status["replay"].as_str().map(str::to_owned), status["error"].as_str().map(str::to_owned))
}
