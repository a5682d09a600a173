//! Network faults between a follower and its leader's relay, through a fault-injecting proxy
//! (`localcluster::proxy`): latency, connections reset in the middle of a frame again and
//! again, a black hole longer than the relay timeout, a bandwidth cap, and every connection
//! reset at once, all while a client writes. Afterwards the follower holds exactly what the
//! leader committed: nothing twice (a primary key would stop replay), nothing missing.

#![allow(clippy::unwrap_used)] // a failed step is a failed test

mod support;

use std::time::{Duration, Instant};

use support::{http_get, two_instances, wait_until, Sidecar};
use walship::localcluster::client::Writer;
use walship::localcluster::proxy::{Fault, FaultProxy};
use walship::localpg::Instance;

const SCHEMA: &str = "CREATE TABLE t (id text PRIMARY KEY, pad text DEFAULT repeat('x', 300))";
/// One row per transaction, numbered by the client (`localcluster::client::Writer`).
const INSERT: &str = "INSERT INTO t (id) VALUES ($1)";
const RELAY: &str = "[relay]\ntimeout = \"2s\"\n";

fn connected(leader: &Sidecar) -> bool {
    http_get(leader.admin_port, "/status").is_ok_and(|(_, body)| body.contains("\"connected\":true"))
}

/// Starts `leader`, then `follower`, once the leader takes writes; returns once it is connected.
fn start(leader: &mut Sidecar, follower: &mut Sidecar) {
    leader.add_peer(follower);
    leader.start();
    leader.wait_writable();
    follower.start();
    wait_until(Duration::from_secs(30), "the follower to connect", || connected(leader));
}

fn fingerprint(pg: &Instance) -> String {
    pg.psql("postgres", "SELECT count(*), md5(coalesce(string_agg(id || pad, ',' ORDER BY id), '')) FROM t").unwrap()
}

#[test]
fn a_follower_converges_exactly_after_every_kind_of_network_fault() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, RELAY);
    let proxy = FaultProxy::start(([127, 0, 0, 1], leader.relay_port).into()).unwrap();
    let mut follower = Sidecar::follower_via(&dir.path().join("b"), "b", &follower_pg, &leader, proxy.port(), RELAY);
    // Reconnections and timeouts are what this test causes.
    follower.expect_errors(&["relay", "leader", "connection", "timed out", "reset", "broken pipe"]);
    leader.expect_errors(&["relay", "follower", "connection", "reset", "broken pipe"]);
    start(&mut leader, &mut follower);

    let writer = Writer::to_instances(std::slice::from_ref(&leader_pg), "postgres", INSERT).unwrap();
    let faults = [
        (Fault::Delay(Duration::from_millis(30)), Duration::from_secs(2)),
        // An odd count: each connection is cut in the middle of a frame, again and again.
        (Fault::CutAfter(30_011), Duration::from_secs(3)),
        (Fault::Bandwidth(50_000), Duration::from_secs(2)),
    ];
    for (fault, how_long) in faults {
        proxy.set(fault);
        std::thread::sleep(how_long);
    }
    // Longer than the relay timeout: the leader must notice the silence and say so.
    proxy.set(Fault::BlackHole);
    let black_hole = Instant::now();
    wait_until(Duration::from_secs(10), "the leader to show the black-holed follower disconnected", || {
        !connected(&leader)
    });
    assert!(black_hole.elapsed() < Duration::from_secs(6), "noticed only after {:?}", black_hole.elapsed());
    proxy.set(Fault::Pass);
    proxy.reset_all();
    std::thread::sleep(Duration::from_secs(1));
    proxy.reset_all();
    let committed = writer.finish().len();
    assert!(committed > 100, "the client wrote only {committed} rows");

    wait_until(Duration::from_secs(60), "the follower to hold exactly what the leader committed", || {
        fingerprint(&follower_pg) == fingerprint(&leader_pg)
    });
    wait_until(Duration::from_secs(30), "the follower to connect again", || connected(&leader));
    let connections = leader.log_text().matches("follower connected").count();
    assert!(connections >= 4, "the faults broke the link only {} times", connections - 1);
    assert_eq!(follower_pg.psql("postgres", "SELECT count(*) FROM t").unwrap(), committed.to_string());
}

/// The same between the leader's sidecar and its PostgreSQL: the replication stream and the
/// sidecar's SQL sessions are cut in the middle of messages again and again, slowed, black-
/// holed (which only the source's silence timeout can notice) and reset; the sidecar
/// reconnects and resumes from its slot, and the follower ends with exactly the leader's rows.
#[test]
fn the_leader_rides_out_a_faulty_link_to_its_postgresql() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], leader_pg.port()).into()).unwrap();
    // Heartbeats every 200 ms: a stream silent for 3 s is presumed dead.
    let extra = format!("{RELAY}[source]\nheartbeat_interval = \"200ms\"\n");
    let mut leader = Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, &extra);
    leader.postgres_via(&leader_pg, proxy.port());
    let mut follower = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], RELAY);
    leader.expect_errors(&["postgres", "PostgreSQL", "connection", "reset", "broken pipe", "stream", "closed"]);
    start(&mut leader, &mut follower);

    let writer = Writer::to_instances(std::slice::from_ref(&leader_pg), "postgres", INSERT).unwrap();
    for (fault, how_long) in [
        (Fault::CutAfter(50_021), Duration::from_secs(4)),
        (Fault::Delay(Duration::from_millis(20)), Duration::from_secs(2)),
        (Fault::Bandwidth(100_000), Duration::from_secs(2)),
        // Silent, not closed: only the source's own silence timeout notices.
        (Fault::BlackHole, Duration::from_secs(5)),
    ] {
        proxy.set(fault);
        std::thread::sleep(how_long);
    }
    proxy.set(Fault::Pass);
    proxy.reset_all();
    std::thread::sleep(Duration::from_secs(1));
    let committed = writer.finish().len();
    assert!(committed > 100, "the client wrote only {committed} rows");

    wait_until(Duration::from_secs(60), "the follower to hold exactly what the leader committed", || {
        fingerprint(&follower_pg) == fingerprint(&leader_pg)
    });
    assert!(leader.log_text().contains("nothing from PostgreSQL's replication stream"), "the black hole was noticed");
    let streams = leader.log_text().matches("streaming start_lsn").count();
    assert!(streams >= 3, "the faults broke the replication stream only {} times", streams - 1);
}
