//! A client application for failover tests and benches: it inserts numbered rows one by one,
//! each in its own transaction, into whichever node takes them (as an application behind a
//! router's health checks would: after a refusal or a broken connection it tries the next node,
//! 5 ms later), and records every insert the database acknowledged, when, and on which node.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::localpg::Instance;

/// One acknowledged insert: the row's number, when its commit returned, the node's position in
/// the targets.
pub type Ack = (i64, Instant, usize);

/// The running client. `insert` is a statement with one text parameter, `w<number>`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Starts writing to `targets` (tried in turn), beginning with the first.
    pub fn start(targets: Vec<tokio_postgres::Config>, insert: &'static str) -> std::io::Result<Writer> {
        let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stopping, acked) = (stop.clone(), acks.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::spawn(move || rt.block_on(write(targets, insert, stopping, acked)));
        Ok(Writer { stop, acks, thread })
    }

    /// Starts writing as `user` to the `postgres` database of each of `pgs`.
    pub fn to_instances(pgs: &[Instance], user: &str, insert: &'static str) -> std::io::Result<Writer> {
        let targets = pgs
            .iter()
            .map(|pg| {
                let mut config: tokio_postgres::Config =
                    pg.conninfo("postgres").parse().map_err(std::io::Error::other)?;
                config.user(user).application_name("a client").connect_timeout(Duration::from_secs(1));
                Ok(config)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Writer::start(targets, insert)
    }

    pub fn acknowledged(&self) -> usize {
        self.lock().len()
    }

    /// The longest gap between consecutive acknowledgements from the `from`-th on (the one
    /// before it included), with the nodes on either side of it.
    pub fn longest_pause_since(&self, from: usize) -> (Duration, usize, usize) {
        let acks = self.lock();
        let from = from.saturating_sub(1).min(acks.len());
        acks[from..].windows(2).map(|w| (w[1].1 - w[0].1, w[0].2, w[1].2)).max().unwrap_or_default()
    }

    /// Inserts acknowledged by `node` after `at`.
    pub fn acked_on_since(&self, node: usize, at: Instant) -> usize {
        self.lock().iter().filter(|(_, t, n)| *t > at && *n == node).count()
    }

    pub fn first_ack_after(&self, at: Instant) -> Option<Instant> {
        self.lock().iter().map(|(_, t, _)| *t).find(|t| *t > at)
    }

    /// The numbers of the rows acknowledged so far.
    pub fn rows(&self) -> BTreeSet<i64> {
        self.lock().iter().map(|(n, _, _)| *n).collect()
    }

    /// Stops writing; every acknowledged insert.
    pub fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Ack>> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn write(
    targets: Vec<tokio_postgres::Config>,
    insert: &'static str,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let (mut target, mut next) = (0usize, 1i64);
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) && !targets.is_empty() {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match targets[target].connect(NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        let note = format!("w{next}");
        let inserted = match &client {
            Some(c) => c.execute(insert, &[&note]).await.is_ok(),
            None => false,
        };
        if inserted {
            acks.lock().unwrap_or_else(|e| e.into_inner()).push((next, Instant::now(), target));
            next += 1;
        } else {
            // Refused (fenced) or gone: the next node.
            client = None;
            target = (target + 1) % targets.len();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
