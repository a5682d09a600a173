//! Status, metrics and lag as on-call engineers and Prometheus see them.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

mod support;

use std::time::{Duration, Instant};

use support::{http_get, signal, two_instances, wait_until, Sidecar};
use walship::localpg::{Instance, Options};

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY, v text)";

/// The value of the first series of `metric` whose labels contain `labels`.
fn metric(admin_port: u16, metric: &str, labels: &str) -> Option<f64> {
    let (code, body) = http_get(admin_port, "/metrics").ok()?;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(metric) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Starts the leader and waits for its first entries: rows written before are not logged.
fn start_leader(leader: &mut Sidecar) {
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's first entries", || {
        metric(leader.admin_port, "walship_log_last_index", "").is_some_and(|i| i > 0.0)
    });
}

#[test]
fn lag_is_measured_from_heartbeats_on_an_idle_leader() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, mut b) = Sidecar::pair(dir.path(), &leader_pg, &follower_pg);
    start_leader(&mut leader);
    b.start();
    leader_pg.psql("postgres", "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g").unwrap();
    let follower = "follower=\"b\"";
    wait_until(Duration::from_secs(30), "the follower to connect and apply the rows", || {
        let rows = follower_pg.psql("postgres", "SELECT count(*) FROM t").unwrap();
        rows.trim() == "100" && metric(leader.admin_port, "walship_follower_connected", follower) == Some(1.0)
    });
    for name in ["walship_term", "walship_is_leader 1", "walship_log_entries_appended_total", "walship_log_size_bytes"]
    {
        let (_, body) = http_get(leader.admin_port, "/metrics").unwrap();
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    let healthy = metric(leader.admin_port, "walship_replication_lag_seconds", follower).unwrap();
    assert!(healthy < 2.0, "an idle, healthy follower shows {healthy}s of lag");

    // A follower that stops acknowledging shows growing lag, though nothing is written.
    signal(b.pid(), "STOP");
    std::thread::sleep(Duration::from_secs(8));
    let stopped = metric(leader.admin_port, "walship_replication_lag_seconds", follower).unwrap();
    signal(b.pid(), "CONT");
    assert!(stopped > 4.0, "lag after 8 s of SIGSTOP: {stopped}");
    let resumed = Instant::now();
    wait_until(Duration::from_secs(6), "the lag to fall back", || {
        metric(leader.admin_port, "walship_replication_lag_seconds", follower).is_some_and(|s| s < 2.0)
    });
    eprintln!("lag {stopped:.1}s after 8 s stopped; back under 2 s {:.1?} after SIGCONT", resumed.elapsed());

    // Status for people: JSON and the table.
    let (code, body) = http_get(leader.admin_port, "/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["followers"][0]["node"], "b");
    assert_eq!(status["followers"][0]["connected"], true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["status", "--admin", &format!("http://127.0.0.1:{}", leader.admin_port)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("FOLLOWER") && table.contains("role leader"), "{table}");
    eprintln!("{table}");

    // Load balancer checks.
    assert_eq!(http_get(leader.admin_port, "/leader").unwrap().0, 200);
    assert_eq!(http_get(b.admin_port, "/leader").unwrap().0, 503);
    wait_until(Duration::from_secs(10), "the follower to call itself a replica", || {
        http_get(b.admin_port, "/replica?max_lag_bytes=1000000").unwrap().0 == 200
    });
    assert_eq!(http_get(leader.admin_port, "/replica").unwrap().0, 503);

    b.stop();
    leader.stop();
    leader.assert_no_errors();
    b.assert_no_errors();
}

#[test]
fn lag_series_are_positive_under_load_while_a_follower_is_stopped() {
    let leader_pg = Instance::start(Options::default()).unwrap();
    let follower_pg = Instance::start(Options::default()).unwrap();
    leader_pg.psql("postgres", SCHEMA).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, mut b) = Sidecar::pair(dir.path(), &leader_pg, &follower_pg);
    start_leader(&mut leader);
    b.start(); // seeds itself: its database is empty
    let follower = "follower=\"b\"";
    wait_until(Duration::from_secs(30), "the follower to connect", || {
        metric(leader.admin_port, "walship_follower_connected", follower) == Some(1.0)
    });
    signal(b.pid(), "STOP");
    for i in 0..50 {
        leader_pg
            .psql(
                "postgres",
                &format!("INSERT INTO t SELECT g, 'load' FROM generate_series({i} * 100, {i} * 100 + 99) g"),
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    for stage in ["received", "flushed", "applied"] {
        let labels = format!("stage=\"{stage}\"");
        let bytes = metric(leader.admin_port, "walship_follower_lag_bytes", &labels).unwrap();
        let seconds = metric(leader.admin_port, "walship_follower_lag_seconds", &labels).unwrap();
        assert!(bytes > 0.0 && seconds > 0.0, "{stage}: {bytes} bytes, {seconds} s while stopped under load");
    }
    assert!(metric(leader.admin_port, "walship_replication_lag_bytes", follower).unwrap() > 0.0);
    signal(b.pid(), "CONT");
    wait_until(Duration::from_secs(30), "the follower to catch up", || {
        metric(leader.admin_port, "walship_replication_lag_bytes", follower) == Some(0.0)
    });
    let (_, body) = http_get(leader.admin_port, "/metrics").unwrap();
    for name in
        ["walship_relay_entries_sent_total", "walship_relay_bytes_sent_total", "walship_slot_retained_wal_bytes"]
    {
        assert!(body.contains(name), "{name} missing");
    }
    let (_, body) = http_get(b.admin_port, "/metrics").unwrap();
    for name in ["walship_replay_entries_applied_total", "walship_applied_index", "walship_seed_rows"] {
        assert!(body.contains(name), "{name} missing on the follower");
    }
    b.stop();
    leader.stop();
    leader.assert_no_errors();
    b.assert_no_errors();
}
