//! The replication connection against real PostgreSQL: authentication methods, transports,
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test
//! slot creation and streaming.

use std::str::FromStr;

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
    conn.identify_system().await.unwrap();
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
async fn a_slot_streams_committed_changes_and_keepalives_are_answered() {
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
