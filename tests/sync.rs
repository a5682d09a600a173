//! Synchronous replication: with `mode = "sync"` a commit on the leader returns only once the
//! follower holds it; strict waits for ever, otherwise the leader degrades to async after
//! `sync_timeout` and is synchronous again once the follower is back.

#![allow(clippy::unwrap_used)] // a failed step is a failed test

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http_get, two_instances, wait_until, Sidecar};
use walship::localpg::Instance;

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY)";

fn status(sidecar: &Sidecar) -> Value {
    let (code, body) = http_get(sidecar.admin_port, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Inserts `id` on a thread; the receiver gets how long the commit took, once it returned.
fn insert_in_background(pg: &Instance, id: i32) -> mpsc::Receiver<Duration> {
    let conninfo = pg.conninfo("postgres");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let started = Instant::now();
            client.execute("INSERT INTO t VALUES ($1)", &[&id]).await.unwrap();
            let _ = tx.send(started.elapsed());
        });
    });
    rx
}

fn start_pair(extra: &str) -> (tempfile::TempDir, Instance, Instance, Sidecar, Sidecar) {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, extra);
    let mut follower = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], extra);
    leader.add_peer(&follower);
    leader.start();
    leader.wait_writable();
    follower.start();
    wait_until(Duration::from_secs(30), "the follower to connect", || {
        status(&leader)["followers"][0]["connected"] == true
    });
    (dir, leader_pg, follower_pg, leader, follower)
}

#[test]
fn strict_sync_commits_wait_for_the_follower_for_as_long_as_it_takes() {
    let extra = "[replication]\nmode = \"sync\"\nstrict = true\n";
    let (_dir, leader_pg, follower_pg, leader, mut follower) = start_pair(extra);
    let setting = leader_pg.psql("postgres", "SHOW synchronous_standby_names").unwrap();
    assert_eq!(setting, "\"walship_a\"");
    let took = insert_in_background(&leader_pg, 1).recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(took < Duration::from_secs(2), "a commit with the follower up took {took:?}");
    assert_eq!(
        follower_pg.psql("postgres", "SELECT count(*) FROM t").unwrap(),
        "1",
        "returned before the follower had it"
    );
    assert_eq!(status(&leader)["sync"], "synchronous");

    follower.stop();
    let waiting = insert_in_background(&leader_pg, 2);
    assert!(waiting.recv_timeout(Duration::from_secs(3)).is_err(), "a strict commit returned with the follower down");
    follower.start();
    waiting.recv_timeout(Duration::from_secs(30)).expect("the commit returns once the follower holds it");
    wait_until(Duration::from_secs(10), "the row on the follower", || {
        follower_pg.psql("postgres", "SELECT count(*) FROM t").unwrap() == "2"
    });
}

#[test]
fn sync_that_is_not_strict_degrades_after_the_timeout_and_recovers() {
    let extra = "[replication]\nmode = \"sync\"\nsync_timeout = \"2s\"\n";
    let (_dir, leader_pg, follower_pg, leader, mut follower) = start_pair(extra);
    assert_eq!(status(&leader)["sync"], "synchronous");
    follower.stop();
    let took = insert_in_background(&leader_pg, 1).recv_timeout(Duration::from_secs(15)).unwrap();
    assert!(took >= Duration::from_millis(1500), "the commit did not wait for the follower: {took:?}");
    assert_eq!(status(&leader)["sync"], "degraded");
    let (_, metrics) = http_get(leader.admin_port, "/metrics").unwrap();
    assert!(metrics.contains("walship_sync_degraded 1"), "{metrics}");
    let took = insert_in_background(&leader_pg, 2).recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(took < Duration::from_secs(1), "degraded, a commit still waited {took:?}");

    follower.start();
    wait_until(Duration::from_secs(30), "synchronous replication again", || status(&leader)["sync"] == "synchronous");
    insert_in_background(&leader_pg, 3).recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(follower_pg.psql("postgres", "SELECT count(*) FROM t WHERE id = 3").unwrap(), "1");
}
