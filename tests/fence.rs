//! Fencing a real PostgreSQL: a client cannot write, nor undo the fence, by any ordinary means;
//! walship's replica-mode sessions and superusers still can; unfencing restores everything.

#![allow(clippy::unwrap_used)] // a failed step is a failed test

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use walship::fence::{self, TRIGGER};
use walship::localpg::{Instance, Options};

const SCHEMA: &str = "CREATE ROLE app LOGIN;
    CREATE SCHEMA shop AUTHORIZATION app;
    SET ROLE app;
    CREATE TABLE shop.orders (id int PRIMARY KEY, note text);
    CREATE TABLE shop.events (at int, what text) PARTITION BY RANGE (at);
    CREATE TABLE shop.events_low PARTITION OF shop.events FOR VALUES FROM (0) TO (100);
    RESET ROLE;
    CREATE TABLE public.\"Odd \"\"name\" (id int);
    GRANT ALL ON public.\"Odd \"\"name\" TO app;";

async fn connect(pg: &Instance, user: &str) -> Client {
    let mut config: tokio_postgres::Config = pg.conninfo("postgres").parse().unwrap();
    config.user(user).application_name("a client");
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn superuser(pg: &Instance) -> Client {
    let config: tokio_postgres::Config = pg.conninfo("postgres").parse().unwrap();
    walship::sql::connect(&config).await.unwrap()
}

/// The SQLSTATE `sql` fails with, or `None` when it succeeds.
async fn refused(client: &Client, sql: &str) -> Option<SqlState> {
    match client.batch_execute(sql).await {
        Ok(()) => None,
        Err(e) => Some(e.code().cloned().unwrap_or_else(|| panic!("{sql}: no SQLSTATE in {e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_database_refuses_every_client_write_and_unfencing_restores_them() {
    let pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", SCHEMA).unwrap();
    let admin = superuser(&pg).await;
    let app = connect(&pg, "app").await;
    assert_eq!(refused(&app, "INSERT INTO shop.orders VALUES (1, 'before')").await, None);

    fence::fence(&admin).await.unwrap();
    assert!(fence::is_fenced(&admin).await.unwrap());
    let app = connect(&pg, "app").await; // a new session, under the database's new default
    let ro = Some(SqlState::READ_ONLY_SQL_TRANSACTION);
    for sql in [
        "INSERT INTO shop.orders VALUES (2, 'plain')",
        "BEGIN READ WRITE; INSERT INTO shop.orders VALUES (3, 'read write'); COMMIT",
        "SET default_transaction_read_only = off; INSERT INTO shop.orders VALUES (4, 'guc off')",
        "SET default_transaction_read_only = off; UPDATE shop.orders SET note = 'x'",
        "SET default_transaction_read_only = off; DELETE FROM shop.orders",
        "SET default_transaction_read_only = off; TRUNCATE shop.orders",
        "SET default_transaction_read_only = off; INSERT INTO shop.events VALUES (5, 'parent')",
        "SET default_transaction_read_only = off; INSERT INTO shop.events_low VALUES (6, 'partition')",
        "SET default_transaction_read_only = off; INSERT INTO public.\"Odd \"\"name\" VALUES (7)",
        // Undoing the fence as the tables' owner, or going around it.
        "SET default_transaction_read_only = off; DROP TRIGGER walship_fence ON shop.orders",
        "SET default_transaction_read_only = off; ALTER TABLE shop.orders DISABLE TRIGGER ALL",
        "SET default_transaction_read_only = off; CREATE TABLE shop.fresh (id int)",
        "SET default_transaction_read_only = off; CREATE TEMP TABLE scratch (id int)",
    ] {
        app.batch_execute("ROLLBACK").await.ok();
        assert_eq!(refused(&app, sql).await, ro, "{sql}");
    }
    let denied = refused(&app, "SET session_replication_role = replica").await;
    assert_eq!(denied, Some(SqlState::INSUFFICIENT_PRIVILEGE), "a client cannot switch the triggers off");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM shop.orders").unwrap(), "1");

    // walship's replay writes in replica mode; a superuser can too (documented).
    admin
        .batch_execute(
            "BEGIN READ WRITE; SET LOCAL session_replication_role = replica; \
             INSERT INTO shop.orders VALUES (10, 'replayed'); COMMIT",
        )
        .await
        .unwrap();
    // Fencing again is a no-op that also covers tables created meanwhile by replay.
    admin
        .batch_execute(
            "BEGIN READ WRITE; SET LOCAL session_replication_role = replica; \
             CREATE TABLE shop.replayed (id int); COMMIT",
        )
        .await
        .unwrap();
    fence::fence(&admin).await.unwrap();
    let triggers = pg.psql("postgres", &format!("SELECT count(*) FROM pg_trigger WHERE tgname = '{TRIGGER}'")).unwrap();
    assert_eq!(triggers, "5", "orders, events, events_low, Odd\"name, replayed: each once");

    fence::unfence(&admin).await.unwrap();
    assert!(!fence::is_fenced(&admin).await.unwrap());
    let app = connect(&pg, "app").await;
    for sql in [
        "INSERT INTO shop.orders VALUES (20, 'after')",
        "INSERT INTO shop.events VALUES (21, 'after')",
        "CREATE TABLE shop.later (id int)",
        "TRUNCATE shop.later",
    ] {
        assert_eq!(refused(&app, sql).await, None, "{sql}");
    }
    let left = pg.psql("postgres", &format!("SELECT count(*) FROM pg_trigger WHERE tgname = '{TRIGGER}'")).unwrap();
    assert_eq!(left, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_ends_a_write_transaction_in_flight_so_it_cannot_commit_after() {
    let pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", SCHEMA).unwrap();
    let admin = superuser(&pg).await;
    let writer = connect(&pg, "app").await;
    let reader = connect(&pg, "app").await;
    writer.batch_execute("BEGIN; INSERT INTO shop.orders VALUES (1, 'in flight')").await.unwrap();
    reader.batch_execute("BEGIN; SELECT count(*) FROM shop.orders").await.unwrap();

    tokio::time::timeout(Duration::from_secs(30), fence::fence(&admin)).await.unwrap().unwrap();

    assert!(writer.batch_execute("COMMIT").await.is_err(), "the writer's session was ended");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM shop.orders").unwrap(), "0");
    // A session that only read is left alone.
    reader.batch_execute("SELECT count(*) FROM shop.orders; COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_before_the_fence_is_refused_after_it() {
    let pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", SCHEMA).unwrap();
    let admin = superuser(&pg).await;
    let app = connect(&pg, "app").await;
    let insert = app.prepare("INSERT INTO shop.orders VALUES ($1, 'prepared')").await.unwrap();
    app.execute(&insert, &[&1i32]).await.unwrap();
    fence::fence(&admin).await.unwrap();
    let refused = app.execute(&insert, &[&2i32]).await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{refused}");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM shop.orders").unwrap(), "1");
}
