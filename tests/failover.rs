//! Failover on three real nodes: promotion of the most advanced follower, the third following
//! it without a re-seed, and the old leader coming back fenced with its losses reported.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{http_get, http_post, wait_until, Sidecar, TEST_TOKEN};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use walship::localcluster;
use walship::localcluster::client::Writer;
use walship::localpg::{Instance, Options, StopMode};

const LEADER_SCHEMA: &str = "CREATE ROLE app LOGIN;
    CREATE TABLE orders (id bigserial PRIMARY KEY, note text NOT NULL);
    GRANT ALL ON orders TO app;
    GRANT ALL ON SEQUENCE orders_id_seq TO app;";
/// Privileges are not part of a snapshot (issue 12): a follower grants them itself, as a
/// superuser may through its fence.
const FOLLOWER_GRANTS: &str = "SET session_replication_role = replica;
    SET default_transaction_read_only = off;
    GRANT ALL ON orders TO app;
    GRANT ALL ON SEQUENCE orders_id_seq TO app;";

fn three_instances() -> [Instance; 3] {
    let specs = (0..3).map(|_| (None, Options::default())).collect();
    let started: Vec<Instance> = localcluster::start_instances(specs).into_iter().map(Result::unwrap).collect();
    started.try_into().ok().unwrap()
}

/// Three sidecars that all know each other: `a` leads, `b` and `c` follow.
fn three_sidecars(dir: &Path, pgs: &[Instance; 3]) -> [Sidecar; 3] {
    let mut a = Sidecar::leader(&dir.join("a"), "a", &pgs[0], "");
    let mut b = Sidecar::follower(&dir.join("b"), "b", &pgs[1], &[&a], "");
    let c = Sidecar::follower(&dir.join("c"), "c", &pgs[2], &[&a, &b], "");
    a.add_peer(&b);
    a.add_peer(&c);
    b.add_peer(&c);
    [a, b, c]
}

/// `/status`, or null while the sidecar does not answer.
fn status(sidecar: &Sidecar) -> Value {
    match http_get(sidecar.admin_port, "/status") {
        Ok((200, body)) => serde_json::from_str(&body).unwrap(),
        _ => Value::Null,
    }
}

fn count(pg: &Instance, filter: &str) -> i64 {
    pg.psql("postgres", &format!("SELECT count(*) FROM orders WHERE {filter}"))
        .map(|out| out.trim().parse().unwrap_or(-1))
        .unwrap_or(-1)
}

fn insert(pg: &Instance, note: &str, rows: u32) {
    pg.psql("postgres", &format!("INSERT INTO orders (note) SELECT '{note}' FROM generate_series(1, {rows})")).unwrap();
}

/// Runs `sql` as the ordinary role `app`: the SQLSTATE it fails with, `None` when it commits.
fn as_app(pg: &Instance, sql: &str) -> Option<SqlState> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut config: tokio_postgres::Config = pg.conninfo("postgres").parse().unwrap();
        config.user("app").application_name("a client");
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        match client.batch_execute(sql).await {
            Ok(()) => None,
            Err(e) => Some(e.code().cloned().unwrap_or_else(|| panic!("{sql}: {e}"))),
        }
    })
}

/// Three instances and their sidecars, running: `a` leads with `rows` rows written, which
/// `b` and `c` (seeded from it) applied.
fn running_cluster(dir: &Path, rows: u32) -> ([Instance; 3], [Sidecar; 3]) {
    let pgs = three_instances();
    pgs[0].psql("postgres", LEADER_SCHEMA).unwrap();
    for pg in &pgs[1..] {
        pg.psql("postgres", "CREATE ROLE app LOGIN").unwrap();
    }
    let [mut a, mut b, mut c] = three_sidecars(dir, &pgs);
    a.start();
    a.wait_writable();
    b.start();
    c.start();
    insert(&pgs[0], "first", rows);
    let rows = i64::from(rows);
    wait_until(Duration::from_secs(60), "both followers to apply the first rows", || {
        count(&pgs[1], "true") == rows && count(&pgs[2], "true") == rows
    });
    (pgs, [a, b, c])
}

#[test]
fn the_most_advanced_follower_is_promoted_the_third_follows_it_and_the_old_leader_returns_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pgs, [mut a, b, mut c]) = running_cluster(dir.path(), 100);

    // c stops; b goes on receiving: b is ahead of c.
    c.stop();
    insert(&pgs[0], "second", 50);
    wait_until(Duration::from_secs(30), "b to apply the second rows", || count(&pgs[1], "true") == 150);

    // The leader's sidecar dies; a client still writes to its PostgreSQL, which is told the
    // writes committed. Then that PostgreSQL dies too.
    a.kill();
    assert_eq!(as_app(&pgs[0], "INSERT INTO orders (note) SELECT 'lost' FROM generate_series(1, 7)"), None);
    pgs[0].stop(StopMode::Immediate).unwrap();
    c.start();
    wait_until(Duration::from_secs(10), "c's admin API", || http_get(c.admin_port, "/status").is_ok());

    // Promotion: the token is required, and the follower behind is refused.
    let (code, body) = http_post(c.admin_port, "/promote", None).unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_post(c.admin_port, "/promote", Some("wrong")).unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_post(c.admin_port, "/promote", Some(TEST_TOKEN)).unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("b holds entries"), "{body}");

    let (code, body) = http_post(b.admin_port, "/promote", Some(TEST_TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", b.log_tail());
    let promoted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(promoted["term"], 2, "{body}");
    assert!(promoted["took_ms"].as_f64().unwrap() < 10_000.0, "{body}");

    // The new leader takes writes from an ordinary client; the third node follows it.
    b.wait_writable();
    pgs[1].psql("postgres", FOLLOWER_GRANTS).unwrap();
    assert_eq!(as_app(&pgs[1], "INSERT INTO orders (note) VALUES ('after')"), None);
    insert(&pgs[1], "after", 20);
    wait_until(Duration::from_secs(60), "c to follow b", || {
        let s = status(&c);
        s["leader"] == "b" && s["term"] == 2 && count(&pgs[2], "true") == count(&pgs[1], "true")
    });
    assert_eq!(count(&pgs[2], "note = 'after'"), 21);
    assert_eq!(c.log_text().matches("asking the leader for a snapshot").count(), 1, "c was seeded again");
    assert_eq!(status(&b)["role"], "leader");
    assert_eq!(http_get(b.admin_port, "/leader").unwrap().0, 200);
    // b's log goes on after the entries of term 1: term 2 begins where the answer said.
    let first_index = promoted["first_index"].as_u64().unwrap();
    for entry in b.inspect() {
        let index = entry["index"].as_u64().unwrap();
        assert_eq!(entry["term"], if index < first_index { 1 } else { 2 }, "{entry} (term 2 from {first_index})");
    }

    // The old leader comes back: it finds term 2, stays fenced and reports what it lost.
    pgs[0].start_again().unwrap();
    a.expect_errors(&["committed transactions it never logged", "diverged"]);
    a.start();
    wait_until(Duration::from_secs(30), "a to find itself divergent", || {
        let s = status(&a);
        s["role"] == "divergent" && s["divergent_report"].is_string()
    });
    let s = status(&a);
    assert_eq!(s["term"], 2, "{s}");
    assert_eq!(http_get(a.admin_port, "/leader").unwrap().0, 503);
    let refused = as_app(&pgs[0], "BEGIN READ WRITE; INSERT INTO orders (note) VALUES ('split brain'); COMMIT");
    assert_eq!(refused, Some(SqlState::READ_ONLY_SQL_TRANSACTION));
    let report = std::fs::read_to_string(s["divergent_report"].as_str().unwrap()).unwrap();
    let lost: usize = report
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .flat_map(|t| t["changes"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["new"]["note"] == "lost")
        .count();
    assert_eq!(lost, 7, "{report}");
    let (_, metrics) = http_get(a.admin_port, "/metrics").unwrap();
    assert!(metrics.contains("walship_divergent 1"), "{metrics}");

    // The operator re-seeds it: a follower of b again, with b's rows only; the report stays.
    let a_config = a.config_path.clone();
    let reseed = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
            .args(["reseed", "--config"])
            .arg(&a_config)
            .output()
            .unwrap()
    };
    let refused = reseed();
    assert!(!refused.status.success(), "reseed ran beside a running sidecar");
    a.stop();
    let done = reseed();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("kept divergence report"));
    a.start();
    wait_until(Duration::from_secs(60), "a to be seeded from b and follow it", || {
        let s = status(&a);
        s["role"] == "follower" && s["leader"] == "b" && count(&pgs[0], "true") == count(&pgs[1], "true")
    });
    assert_eq!(count(&pgs[0], "note = 'lost'"), 0);
    assert!(std::path::Path::new(s["divergent_report"].as_str().unwrap()).exists());
    let refused = as_app(&pgs[0], "INSERT INTO orders (note) VALUES ('on a follower')");
    assert_eq!(refused, Some(SqlState::READ_ONLY_SQL_TRANSACTION));
    // b refuses to be re-seeded: it leads.
    let healthy = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["reseed", "--config"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    assert!(!healthy.status.success());
}

/// An ordinary client (a fence keeps it out) inserting `wN` rows into whichever node takes
/// them.
fn start_writer(pgs: &[Instance; 3]) -> Writer {
    Writer::to_instances(pgs, "app", "INSERT INTO orders (note) VALUES ($1)").unwrap()
}

/// The `wN` rows a node holds.
fn written(pg: &Instance) -> std::collections::BTreeSet<i64> {
    pg.psql("postgres", "SELECT substr(note, 2) FROM orders WHERE note LIKE 'w%'")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn switchover(from: &Sidecar, to: &str) -> Value {
    let (code, body) = http_post(from.admin_port, &format!("/switchover?to={to}"), Some(TEST_TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", from.log_tail());
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_switchover_under_writes_loses_no_acknowledged_insert_and_can_be_switched_back() {
    let dir = tempfile::tempdir().unwrap();
    let (pgs, [a, b, c]) = running_cluster(dir.path(), 10);
    for pg in &pgs[1..] {
        pg.psql("postgres", FOLLOWER_GRANTS).unwrap();
    }
    wait_until(Duration::from_secs(10), "b and c connected to a", || {
        status(&a)["followers"].as_array().is_some_and(|f| f.iter().all(|f| f["connected"] == true))
    });

    let writer = start_writer(&pgs);
    std::thread::sleep(Duration::from_millis(500));
    let to_b = switchover(&a, "b");
    assert_eq!((to_b["leader"].as_str(), to_b["term"].as_u64()), (Some("b"), Some(2)), "{to_b}");
    std::thread::sleep(Duration::from_millis(500));
    wait_until(Duration::from_secs(10), "b to take writes", || http_get(b.admin_port, "/leader").unwrap().0 == 200);
    wait_until(Duration::from_secs(30), "a to follow b", || {
        status(&a)["leader"] == "b" && status(&a)["role"] == "follower"
    });
    let (pause, _, _) = writer.longest_pause_since(0);
    let acknowledged: Vec<i64> = writer.finish().iter().map(|(n, _, _)| *n).collect();
    assert!(acknowledged.len() > 10, "the client wrote only {} rows", acknowledged.len());
    let on_b = written(&pgs[1]);
    let missing: Vec<_> = acknowledged.iter().filter(|w| !on_b.contains(w)).collect();
    assert!(missing.is_empty(), "acknowledged inserts missing on the new leader: {missing:?}");
    eprintln!("switchover a -> b: {to_b}; longest write pause seen by the client {pause:?}");
    wait_until(Duration::from_secs(30), "a and c to hold everything b has", || {
        written(&pgs[0]) == written(&pgs[1]) && written(&pgs[2]) == written(&pgs[1])
    });

    // And back: a leads again at term 3, b follows it.
    wait_until(Duration::from_secs(10), "a and c connected to b", || {
        status(&b)["followers"].as_array().is_some_and(|f| f.iter().all(|f| f["connected"] == true))
    });
    let back = switchover(&b, "a");
    assert_eq!((back["leader"].as_str(), back["term"].as_u64()), (Some("a"), Some(3)), "{back}");
    a.wait_writable();
    insert(&pgs[0], "back", 5);
    wait_until(Duration::from_secs(30), "b and c to follow a again", || {
        count(&pgs[1], "note = 'back'") == 5 && count(&pgs[2], "note = 'back'") == 5 && status(&b)["leader"] == "a"
    });
    assert_eq!(c.log_text().matches("asking the leader for a snapshot").count(), 1, "c was seeded again");
}

#[test]
fn a_leader_cut_off_from_its_majority_fences_itself_and_leads_again_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let pgs = three_instances();
    // The schema everywhere beforehand: no follower spends the lease loading a snapshot.
    for pg in &pgs {
        pg.psql("postgres", LEADER_SCHEMA).unwrap();
    }
    let lease = "[failover]\nlease_timeout = \"2s\"\n";
    let (mut a, mut b, mut c) = Sidecar::trio(dir.path(), &pgs, lease);
    // With the lease on, a leader leads only while a majority answers: b and c first.
    b.start();
    c.start();
    a.start();
    a.wait_writable();
    wait_until(Duration::from_secs(30), "b and c to follow a", || {
        status(&a)["followers"].as_array().is_some_and(|f| f.iter().all(|f| f["connected"] == true))
    });
    assert_eq!(as_app(&pgs[0], "INSERT INTO orders (note) VALUES ('before')"), None);

    // b and c freeze (as a partition would look from a): within the lease a fences itself.
    a.expect_errors(&[]);
    support::signal(b.pid(), "STOP");
    support::signal(c.pid(), "STOP");
    let cut = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "a to fence itself", || status(&a)["role"] == "fenced");
    assert!(cut.elapsed() < Duration::from_secs(5), "fenced only after {:?}", cut.elapsed());
    assert_eq!(http_get(a.admin_port, "/leader").unwrap().0, 503);
    let refused = as_app(&pgs[0], "INSERT INTO orders (note) VALUES ('cut off')");
    assert_eq!(refused, Some(SqlState::READ_ONLY_SQL_TRANSACTION));
    assert!(a.log_text().contains("lease lost"), "{}", a.log_tail());

    // Back together, a leads again at the same term (nobody else claimed one).
    support::signal(b.pid(), "CONT");
    support::signal(c.pid(), "CONT");
    a.wait_writable();
    assert_eq!(status(&a)["term"], 1);
    assert_eq!(as_app(&pgs[0], "INSERT INTO orders (note) VALUES ('after')"), None);
    wait_until(Duration::from_secs(30), "b to apply a's writes", || count(&pgs[1], "note = 'after'") == 1);
}
