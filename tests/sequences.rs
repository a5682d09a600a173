//! Sequences reach the followers through the log, ahead of the leader, so that a promoted
//! follower never hands out an id the old leader handed out (`serial` and identity columns,
//! under load).

#![allow(clippy::unwrap_used)] // a failed step is a failed test

mod support;

use std::time::{Duration, Instant};

use support::{http_post, two_instances, wait_until, Sidecar, TEST_TOKEN};
use walship::localpg::{Instance, StopMode};

const SCHEMA: &str = "CREATE TABLE orders (id serial PRIMARY KEY, note text);
    CREATE TABLE invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount int);
    CREATE SEQUENCE countdown INCREMENT BY -3 MINVALUE -1000000 MAXVALUE 0 START -1;
    CREATE SCHEMA \"Odd schema\";
    CREATE SEQUENCE \"Odd schema\".\"tickets \"\"seq\"\"\";";

/// `last_value` of each sequence, or `None` before its first use.
fn sequence_value(pg: &Instance, schema: &str, name: &str) -> Option<i64> {
    let sql = format!(
        "SELECT last_value FROM pg_sequences WHERE schemaname = '{}' AND sequencename = '{}'",
        schema.replace('\'', "''"),
        name.replace('\'', "''")
    );
    pg.psql("postgres", &sql).unwrap().trim().parse().ok()
}

#[test]
fn a_follower_holds_every_sequence_ahead_of_the_leader_and_never_repeats_an_id_after_the_leader_dies() {
    let (mut leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, mut follower) = Sidecar::pair(dir.path(), &leader_pg, &follower_pg);
    leader.start();
    // Rows committed before the leader's slot exists are not replicated (a seeded follower
    // gets them with its snapshot; this one has its own copy of the schema only).
    let slot =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walship_a' AND confirmed_flush_lsn IS NOT NULL";
    wait_until(Duration::from_secs(30), "the leader's slot", || leader_pg.psql("postgres", slot).unwrap() == "1");
    leader.wait_writable();
    follower.start();

    // A load that takes ids from a serial and an identity column, and two other sequences.
    let load_until = Instant::now() + Duration::from_secs(4);
    let mut orders_ids: Vec<i64> = Vec::new();
    while Instant::now() < load_until {
        let ids = leader_pg
            .psql(
                "postgres",
                "INSERT INTO orders (note) SELECT 'x' FROM generate_series(1, 50) RETURNING id;
                 INSERT INTO invoices (amount) VALUES (1);
                 UPDATE invoices SET amount = amount + 1 WHERE id = (SELECT max(id) FROM invoices);
                 DELETE FROM invoices WHERE id = (SELECT min(id) FROM invoices);
                 SELECT nextval('countdown'); SELECT nextval('\"Odd schema\".\"tickets \"\"seq\"\"\"');",
            )
            .unwrap();
        // The 50 order ids come first; the last two lines are the other sequences' values.
        let lines: Vec<i64> = ids.lines().map(|l| l.trim().parse().unwrap()).collect();
        orders_ids.extend(&lines[..lines.len() - 2]);
    }
    let orders_max = sequence_value(&leader_pg, "public", "orders_id_seq").unwrap();
    let invoices_max = sequence_value(&leader_pg, "public", "invoices_id_seq").unwrap();
    let countdown_min = sequence_value(&leader_pg, "public", "countdown").unwrap();
    let tickets_max = sequence_value(&leader_pg, "Odd schema", "tickets \"seq\"").unwrap();
    assert!(orders_max > 1000 && countdown_min < 0, "the load ran: {orders_max} {countdown_min}");

    let tables = ["orders", "invoices"];
    wait_until(Duration::from_secs(30), "the rows on the follower", || {
        support::table_rows(&leader_pg, &tables) == support::table_rows(&follower_pg, &tables)
    });

    // Every sequence reaches the follower, ahead of the leader in its own direction.
    wait_until(Duration::from_secs(30), "the sequences on the follower", || {
        sequence_value(&follower_pg, "public", "orders_id_seq").is_some_and(|v| v > orders_max)
            && sequence_value(&follower_pg, "public", "invoices_id_seq").is_some_and(|v| v > invoices_max)
            && sequence_value(&follower_pg, "public", "countdown").is_some_and(|v| v < countdown_min)
            && sequence_value(&follower_pg, "Odd schema", "tickets \"seq\"").is_some_and(|v| v > tickets_max)
    });

    // The leader dies mid-load: the last ids it handed out were never shipped on their own.
    let more = leader_pg
        .psql("postgres", "INSERT INTO orders (note) SELECT 'y' FROM generate_series(1, 300) RETURNING id;")
        .unwrap();
    orders_ids.extend(more.lines().map(|l| l.trim().parse::<i64>().unwrap()));
    let invoices_max = invoices_max.max(sequence_value(&leader_pg, "public", "invoices_id_seq").unwrap());
    leader.kill();
    leader_pg.stop(StopMode::Immediate).unwrap();

    // The follower is promoted (forced: of a two-node cluster, it alone is no majority) and
    // its next ids repeat none of those the old leader handed out.
    let (code, body) = http_post(follower.admin_port, "/promote", Some(TEST_TOKEN)).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("force"), "{body}");
    let (code, body) = http_post(follower.admin_port, "/promote?force=true", Some(TEST_TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""unsafe_no_majority":true"#), "{body}");
    follower.wait_writable();
    let next = follower_pg
        .psql(
            "postgres",
            "INSERT INTO orders (note) VALUES ('after') RETURNING id;
             INSERT INTO invoices (amount) VALUES (2) RETURNING id;",
        )
        .unwrap();
    let next: Vec<i64> = next.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(next.len(), 2, "{next:?}");
    let handed_out_max = orders_ids.iter().copied().max().unwrap();
    assert!(next[0] > handed_out_max, "order id {} after the old leader handed out up to {handed_out_max}", next[0]);
    assert!(next[1] > invoices_max, "invoice id {} after the old leader's {invoices_max}", next[1]);
}
