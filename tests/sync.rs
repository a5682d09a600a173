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
    // Returned: the follower's own log holds it (fsynced there; replay follows).
    let held = follower.inspect().iter().any(|e| e["changes"][0]["new"]["id"] == "1");
    assert!(held, "the commit returned before the follower's log held it");
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

/// Inserts ids one by one until told to stop; returns those whose commit returned.
fn record_inserts(
    pg: &Instance,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<i32>> {
    let conninfo = pg.conninfo("postgres");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let mut acknowledged = Vec::new();
            for id in 1000.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client.execute("INSERT INTO t VALUES ($1)", &[&id]).await {
                    Ok(_) => acknowledged.push(id),
                    Err(_) => break, // the leader died
                }
            }
            acknowledged
        })
    })
}

#[test]
fn semi_sync_survives_a_follower_down_and_a_promoted_follower_holds_every_acknowledged_commit() {
    let specs = (0..3).map(|_| (None, walship::localpg::Options::default())).collect();
    let pgs: Vec<Instance> = walship::localcluster::start_instances(specs).into_iter().map(Result::unwrap).collect();
    for pg in &pgs {
        pg.psql("postgres", SCHEMA).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = "[replication]\nmode = \"semi-sync\"\nsync_quorum = 1\nstrict = true\n";
    let (mut a, mut b, mut c) = Sidecar::trio(dir.path(), &pgs, extra);
    a.start();
    a.wait_writable();
    b.start();
    c.start();
    wait_until(Duration::from_secs(30), "b and c connected", || {
        status(&a)["followers"].as_array().is_some_and(|f| f.iter().all(|f| f["connected"] == true))
    });

    // One follower down: the other one makes the quorum.
    c.kill();
    let took = insert_in_background(&pgs[0], 1).recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(took < Duration::from_secs(2), "with one follower of two down a commit took {took:?}");
    c.start();

    // A client records every commit that returned; the leader dies mid-load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = record_inserts(&pgs[0], stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    a.kill();
    let mut pgs = pgs;
    pgs[0].stop(walship::localpg::StopMode::Immediate).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(acknowledged.len() > 20, "the load ran: {} commits", acknowledged.len());

    // The most advanced follower is promoted (the other one is refused as behind, 409).
    let mut promoted = None;
    for (i, node) in [(1, &b), (2, &c)] {
        let (code, body) = support::http_post(node.admin_port, "/promote", Some(support::TEST_TOKEN)).unwrap();
        if code == 200 {
            promoted = Some(i);
            break;
        }
        assert_eq!(code, 409, "{body}");
    }
    let promoted = promoted.expect("one of the followers is promoted");
    let holder = if promoted == 1 { &b } else { &c };
    holder.wait_writable();
    let ids: std::collections::BTreeSet<i32> = pgs[promoted]
        .psql("postgres", "SELECT id FROM t")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let missing: Vec<i32> = acknowledged.iter().copied().filter(|id| !ids.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged commits missing on the promoted node: {missing:?}");
}

#[test]
fn a_sighup_switches_async_to_semi_sync_without_a_restart_and_a_broken_file_is_refused() {
    let (_dir, leader_pg, _follower_pg, mut leader, mut follower) = start_pair("");
    assert_eq!(leader_pg.psql("postgres", "SHOW synchronous_standby_names").unwrap(), "");
    let pid = leader.pid();
    let config = std::fs::read_to_string(&leader.config_path).unwrap();

    // A broken file is refused; the sidecar runs on.
    leader.expect_errors(&["configuration reload refused"]);
    std::fs::write(&leader.config_path, format!("{config}\n[replication]\nmode = \"eventually\"\n")).unwrap();
    support::signal(pid, "HUP");
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        leader.log_text().contains("configuration reload refused")
    });
    assert_eq!(leader.pid(), pid);

    std::fs::write(&leader.config_path, format!("{config}\n[replication]\nmode = \"semi-sync\"\nstrict = true\n"))
        .unwrap();
    support::signal(pid, "HUP");
    wait_until(Duration::from_secs(10), "semi-sync in force", || {
        status(&leader)["sync"] == "synchronous"
            && leader_pg.psql("postgres", "SHOW synchronous_standby_names").unwrap() == "\"walship_a\""
    });
    follower.stop();
    let waiting = insert_in_background(&leader_pg, 7);
    assert!(waiting.recv_timeout(Duration::from_secs(3)).is_err(), "semi-sync did not take effect");
    follower.start();
    waiting.recv_timeout(Duration::from_secs(30)).expect("the commit returns once the follower holds it");
    assert_eq!(leader.pid(), pid, "the sidecar restarted");
}

/// The other side of the semi-sync test above: in `async` mode a commit returns before any
/// follower holds it, so the leader's death loses what its followers had not received. A
/// follower that is away (here its sidecar killed) makes that window as wide as its absence:
/// every commit acknowledged meanwhile is missing on the promoted follower, and every one
/// acknowledged before it is there. With `semi-sync` the same load would have waited for the
/// other follower (the test above); with `sync`, for this one.
#[test]
fn async_acknowledges_commits_a_promoted_follower_does_not_hold() {
    let (_dir, leader_pg, follower_pg, mut leader, mut follower) = start_pair("");
    insert_in_background(&leader_pg, 1).recv_timeout(Duration::from_secs(10)).unwrap();
    wait_until(Duration::from_secs(30), "the follower to apply id 1", || {
        follower_pg.psql("postgres", "SELECT count(*) FROM t WHERE id = 1").unwrap() == "1"
    });
    follower.kill();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = record_inserts(&leader_pg, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(acknowledged.len() > 20, "commits returned without waiting for the follower: {}", acknowledged.len());
    leader.kill();
    let mut leader_pg = leader_pg;
    leader_pg.stop(walship::localpg::StopMode::Immediate).unwrap();
    follower.start();
    wait_until(Duration::from_secs(30), "the follower's admin endpoint", || {
        http_get(follower.admin_port, "/status").is_ok()
    });

    // Two nodes: with the leader dead no majority answers, so the operator forces it.
    let (code, body) =
        support::http_post(follower.admin_port, "/promote?force=true", Some(support::TEST_TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    follower.wait_writable();
    let ids: std::collections::BTreeSet<i32> = follower_pg
        .psql("postgres", "SELECT id FROM t")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(ids.contains(&1), "a commit the follower held before the stall survives");
    let lost: Vec<&i32> = acknowledged.iter().filter(|id| !ids.contains(id)).collect();
    assert_eq!(lost.len(), acknowledged.len(), "the follower was away for all of them");
}
