//! The replication connection against real PostgreSQL: authentication methods, transports,
//! slot creation, streaming and keepalives.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

use std::str::FromStr;
use std::time::{Duration, Instant};

use walship::localpg::{Auth, Instance, Options};
use walship::lsn::Lsn;
use walship::source::conn::{ReplConnection, ReplError};
use walship::source::stream::CopyMessage;

fn config(conninfo: &str) -> tokio_postgres::Config {
    tokio_postgres::Config::from_str(conninfo).expect("conninfo parses")
}

fn with_password(pg: &Instance, password: Option<&str>) -> tokio_postgres::Config {
    let mut c = config(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.port()));
    if let Some(p) = password {
        c.password(p);
    }
    c
}

async fn check_auth(auth: Auth) {
    let pg = Instance::start(Options { auth, password: Some("s3cret pass".into()), ..Options::default() }).unwrap();
    let mut conn = ReplConnection::connect(&with_password(&pg, Some("s3cret pass")), "walship_test").await.unwrap();
    let system = conn.identify_system().await.unwrap();
    assert!(!system.system_id.is_empty());
    assert!(system.wal_flush > Lsn::ZERO);

    match ReplConnection::connect(&with_password(&pg, Some("wrong")), "walship_test").await {
        Err(e @ ReplError::Server { .. }) => assert_eq!(e.sqlstate(), Some("28P01"), "{e}"),
        Err(e) => panic!("expected invalid_password, got {e}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    match ReplConnection::connect(&with_password(&pg, None), "walship_test").await {
        Err(ReplError::Auth(msg)) => assert!(msg.contains("password"), "{msg}"),
        Err(e) => panic!("expected a missing-password error, got {e}"),
        Ok(_) => panic!("connected without a password"),
    }
}

#[tokio::test]
async fn scram_sha_256_authenticates() {
    check_auth(Auth::Scram).await;
}

#[tokio::test]
async fn md5_authenticates() {
    check_auth(Auth::Md5).await;
}

#[tokio::test]
async fn unix_socket_and_trust_work() {
    let pg = Instance::start(Options::default()).unwrap();
    let conninfo = format!("host={} port={} user=postgres dbname=postgres", pg.socket_dir().display(), pg.port());
    let mut conn = ReplConnection::connect(&config(&conninfo), "walship_test").await.unwrap();
    let system = conn.identify_system().await.unwrap();
    let expected_id = pg.psql("postgres", "SELECT system_identifier FROM pg_control_system()").unwrap();
    assert_eq!(system.system_id, expected_id.trim());
    assert_eq!(system.timeline, 1);
    assert!(system.wal_flush > Lsn::ZERO);
    // The server sees a walsender on the socket (no client address), which asked for no password.
    let seen = pg
        .psql(
            "postgres",
            "SELECT backend_type || ' ' || (client_addr IS NULL) FROM pg_stat_activity \
             WHERE application_name = 'walship_test'",
        )
        .unwrap();
    assert_eq!(seen.trim(), "walsender true");
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = config(&format!("host=127.0.0.1 port={port} user=postgres"));
    match ReplConnection::connect(&c, "walship_test").await {
        Err(ReplError::Connect { addr, .. }) => assert!(addr.contains(&port.to_string())),
        Err(e) => panic!("expected a connect error, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn a_slot_streams_committed_changes_and_confirms_what_is_flushed() {
    let pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR ALL TABLES").unwrap();
    let c = config(&pg.conninfo("postgres"));
    let mut conn = ReplConnection::connect(&c, "walship_test").await.unwrap();
    let slot = conn.create_slot("test_slot", false).await.unwrap();
    assert_eq!(slot.slot_name, "test_slot");
    assert!(!slot.snapshot_name.is_empty());
    pg.psql("postgres", "INSERT INTO t VALUES (1), (2)").unwrap();
    let mut stream = conn.start_replication("test_slot", slot.consistent_point, "p").await.unwrap();
    let mut tags = Vec::new();
    while !tags.contains(&b'C') {
        match stream.try_next_copy().unwrap() {
            Some(CopyMessage::XLogData { data, .. }) => tags.push(data[0]),
            Some(CopyMessage::Keepalive { .. }) => {}
            None => {
                stream.fill(std::time::Duration::from_millis(100)).unwrap();
            }
        }
    }
    assert_eq!(tags, vec![b'B', b'R', b'I', b'I', b'C']);
    // Once told the transaction is flushed, the slot confirms it.
    let end: Lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap().trim().parse().unwrap();
    stream.send_status(end, end, end, false).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let confirmed: Lsn = pg
            .psql("postgres", "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'test_slot'")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if confirmed >= end {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never confirmed {end}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stream.close();
}

/// The walsender asks for a reply (`k` with the reply flag) once half its `wal_sender_timeout`
/// passes without one, and ends the connection when a whole timeout passes.
const WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn keepalives_that_ask_for_a_reply_are_answered_and_keep_the_stream_open() {
    let timeout = format!("{}ms", WAL_SENDER_TIMEOUT.as_millis());
    let settings = vec![("wal_sender_timeout".to_owned(), timeout)];
    let pg = Instance::start(Options { settings, ..Options::default() }).unwrap();
    pg.psql("postgres", "CREATE PUBLICATION p FOR ALL TABLES").unwrap();
    let mut conn = ReplConnection::connect(&config(&pg.conninfo("postgres")), "walship_test").await.unwrap();
    let slot = conn.create_slot("test_slot", false).await.unwrap();
    let start = slot.consistent_point;
    let mut stream = conn.start_replication("test_slot", start, "p").await.unwrap();

    // Answered for three timeouts: the server keeps asking, and keeps the stream open.
    let mut asked = Vec::new();
    let answering_until = Instant::now() + 3 * WAL_SENDER_TIMEOUT;
    while Instant::now() < answering_until {
        match stream.try_next_copy().unwrap() {
            Some(CopyMessage::Keepalive { wal_end, reply_requested: true }) => {
                assert!(wal_end >= start, "keepalive at {wal_end}, before the slot's start {start}");
                asked.push(wal_end);
                stream.send_status(start, start, start, false).unwrap();
            }
            Some(_) => {}
            None => {
                stream.fill(Duration::from_millis(50)).unwrap();
            }
        }
    }
    assert!(asked.len() >= 2, "keepalives asking for a reply in {:?}: {asked:?}", 3 * WAL_SENDER_TIMEOUT);
    let replied = pg
        .psql(
            "postgres",
            "SELECT reply_time IS NOT NULL FROM pg_stat_replication WHERE application_name = 'walship_test'",
        )
        .unwrap();
    assert_eq!(replied.trim(), "t", "the walsender saw no reply");

    // Unanswered, the same keepalives end the stream within about one timeout.
    let deadline = Instant::now() + 5 * WAL_SENDER_TIMEOUT;
    let ended = loop {
        assert!(Instant::now() < deadline, "the stream outlived {:?} of unanswered keepalives", 5 * WAL_SENDER_TIMEOUT);
        match stream.try_next_copy() {
            Err(e) => break e,
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = stream.fill(Duration::from_millis(50)) {
                    break e;
                }
            }
        }
    };
    assert!(matches!(ended, ReplError::Closed | ReplError::Server { .. }), "the stream ended with {ended}");
}
