//! walship never breaks the leader's application: publishing a table without a key would make
//! PostgreSQL refuse its UPDATEs and DELETEs, so the leader's sidecar gives such tables
//! `REPLICA IDENTITY FULL`, at start-up and (through an event trigger) when they are created,
//! and replay changes exactly one row per change, identical rows included.

#![allow(clippy::unwrap_used)] // a failed step is a failed test

mod support;

use std::time::Duration;

use support::{http_get, two_instances, wait_until, Sidecar};
use walship::localpg::Instance;

/// `logs` has no key and holds identical rows before the sidecar starts.
const SCHEMA: &str = "CREATE TABLE logs (msg text, n int); \
                      INSERT INTO logs VALUES ('dup', 1), ('dup', 1), ('dup', 1), ('other', 2);";
/// Created on both nodes once the sidecars run (schema changes are not replicated yet).
const LATER: &str = "CREATE TABLE events (kind text, at int)";

fn rows(pg: &Instance, table: &str) -> String {
    pg.psql("postgres", &format!("SELECT string_agg(t::text, ' ' ORDER BY t::text) FROM {table} t")).unwrap()
}

fn identity(pg: &Instance, table: &str) -> String {
    pg.psql("postgres", &format!("SELECT relreplident FROM pg_class WHERE oid = '{table}'::regclass")).unwrap()
}

#[test]
fn tables_without_a_key_take_updates_and_deletes_and_replicate_exactly() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, "");
    let mut follower = Sidecar::follower(&dir.path().join("b"), "b", &follower_pg, &[&leader], "");
    leader.add_peer(&follower);
    leader.start();
    leader.wait_writable();
    follower.start();
    wait_until(Duration::from_secs(30), "the follower to connect", || {
        http_get(leader.admin_port, "/status").is_ok_and(|(_, body)| body.contains("\"connected\":true"))
    });
    assert_eq!(identity(&leader_pg, "logs"), "f", "an existing table without a key gets REPLICA IDENTITY FULL");
    assert!(leader.log_text().contains("REPLICA IDENTITY FULL"), "the sidecar says so in its log");
    let (_, status) = http_get(leader.admin_port, "/status").unwrap();
    assert!(status.contains("\"replica_identity_full\":[\"public.logs\"]"), "and in /status: {status}");

    // On the fenced follower, as an administrator would (README: Fencing).
    let on_follower = format!("BEGIN READ WRITE; SET LOCAL session_replication_role = replica; {LATER}; COMMIT");
    follower_pg.psql("postgres", &on_follower).unwrap();
    leader_pg.psql("postgres", LATER).unwrap();
    assert_eq!(identity(&leader_pg, "events"), "f", "a table created later gets it in its own transaction");

    // Both refuse nothing now: one of three identical rows changes, then two of them go, and
    // the new table takes the same.
    leader_pg
        .psql(
            "postgres",
            "UPDATE logs SET n = 5 WHERE ctid = (SELECT ctid FROM logs WHERE msg = 'dup' LIMIT 1); \
             DELETE FROM logs WHERE ctid IN (SELECT ctid FROM logs WHERE msg = 'dup' AND n = 1 LIMIT 2); \
             UPDATE logs SET n = n + 10 WHERE msg = 'other'; \
             INSERT INTO events VALUES ('a', 1), ('a', 1), ('b', 2); \
             UPDATE events SET at = 7 WHERE ctid = (SELECT ctid FROM events WHERE kind = 'a' LIMIT 1); \
             DELETE FROM events WHERE kind = 'b'",
        )
        .unwrap();
    assert_eq!(rows(&leader_pg, "logs"), "(dup,5) (other,12)");
    assert_eq!(rows(&leader_pg, "events"), "(a,1) (a,7)");
    wait_until(Duration::from_secs(30), "the follower to hold the same rows", || {
        rows(&follower_pg, "logs") == rows(&leader_pg, "logs")
            && rows(&follower_pg, "events") == rows(&leader_pg, "events")
    });
}

#[test]
fn an_operator_who_opts_out_is_refused_by_postgresql_as_before() {
    let (leader_pg, _follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let mut leader =
        Sidecar::leader(&dir.path().join("a"), "a", &leader_pg, "[source]\nauto_replica_identity = false\n");
    leader.start();
    leader.wait_writable();
    wait_until(Duration::from_secs(30), "the warning", || leader.log_text().contains("without a primary key"));
    assert_eq!(identity(&leader_pg, "logs"), "d", "left alone");
    let refused = leader_pg.psql("postgres", "DELETE FROM logs WHERE msg = 'other'").unwrap_err();
    assert!(refused.to_string().contains("replica identity"), "{refused}");
    leader_pg.psql("postgres", LATER).unwrap();
    assert_eq!(identity(&leader_pg, "events"), "d", "no event trigger either");
}
