//! The sample schema (a small shop) and a steady write load on the leader.
//!
//! Each worker has its own connection and writes its own customers and orders, so workers
//! never wait on each other's row locks. A worker cycles through ten transactions: a new
//! customer with a first order, four new orders, three order updates (status, and an item
//! appended to the jsonb), a customer update and an order deletion: 11 row changes, of
//! which 6 inserts, 4 updates, 1 delete. It paces itself by row changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use super::DemoError;

const SCHEMA: &str = "
CREATE TABLE customers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status      text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped')),
    items       jsonb NOT NULL,
    total_cents bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders (customer_id);";

/// The tables the monitor counts rows of.
pub(super) const TABLES: [&str; 2] = ["customers", "orders"];

/// At most this many connections; fewer below `ROWS_PER_WORKER` row changes per second each.
const MAX_WORKERS: u32 = 4;
const ROWS_PER_WORKER: u32 = 50;
/// A worker that fell this far behind its pace (a slow disk) starts again from now, rather
/// than catching up in a burst.
const MAX_BEHIND: Duration = Duration::from_secs(1);
/// Ids a worker remembers to update and delete.
const KEEP_CUSTOMERS: usize = 100;
const KEEP_ORDERS: usize = 1000;

/// An ordinary connection to a node's database.
pub(super) async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = conninfo.parse()?;
    crate::sql::connect(&config).await
}

pub(super) async fn create_schema(conninfo: &str) -> Result<(), tokio_postgres::Error> {
    connect(conninfo).await?.batch_execute(SCHEMA).await
}

/// What the load has written so far.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) rows: AtomicU64,
}

pub(super) struct Load {
    node: &'static str,
    rows_per_second: u32,
    workers: u32,
    started: Instant,
    cancel: CancellationToken,
    tasks: JoinSet<Result<(), tokio_postgres::Error>>,
    stats: Arc<Stats>,
}

impl Load {
    /// Connects the workers (so a failure shows here) and starts them.
    /// `leader`: `(node, conninfo)`.
    pub(super) async fn start(leader: &(&'static str, String), rows_per_second: u32) -> Result<Load, DemoError> {
        let (node, conninfo) = leader;
        let workers = (rows_per_second / ROWS_PER_WORKER).clamp(1, MAX_WORKERS).min(rows_per_second);
        let cancel = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let mut tasks = JoinSet::new();
        for id in 0..workers {
            let worker = Worker::connect(conninfo, id, stats.clone()).await.map_err(DemoError::Load)?;
            let row_interval = Duration::from_secs_f64(f64::from(workers) / f64::from(rows_per_second));
            tasks.spawn(worker.run(row_interval, cancel.clone()));
        }
        Ok(Load { node, rows_per_second, workers, started: Instant::now(), cancel, tasks, stats })
    }

    pub(super) fn describe(&self) -> String {
        match self.workers {
            0 => "load: none (--rows-per-second 0); heartbeats still move the followers".to_owned(),
            n => format!(
                "load: {} row changes/s on {} over {n} connections (inserts, updates, deletes in {})",
                self.rows_per_second,
                self.node,
                TABLES.join(" and ")
            ),
        }
    }

    pub(super) fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits for a worker to fail; workers only end early on an error.
    pub(super) async fn failed(&mut self) -> DemoError {
        match self.tasks.join_next().await {
            Some(Ok(Err(e))) => DemoError::Load(e),
            Some(Ok(Ok(()))) => DemoError::Task("a load worker ended early".to_owned()),
            Some(Err(e)) => DemoError::Task(e.to_string()),
            None => std::future::pending().await,
        }
    }

    /// Stops the workers after their current transaction; says what they wrote.
    pub(super) async fn stop(mut self) -> String {
        self.cancel.cancel();
        while let Some(result) = self.tasks.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("walship demo: the write load on the leader failed: {e}"),
                Err(e) => eprintln!("walship demo: a load worker failed: {e}"),
            }
        }
        let rows = self.stats.rows.load(Ordering::Relaxed);
        format!("the load wrote {rows} row changes in {} s", self.started.elapsed().as_secs())
    }
}

struct Statements {
    new_customer: Statement,
    new_order: Statement,
    set_status: Statement,
    add_item: Statement,
    rename_customer: Statement,
    delete_order: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            new_customer: client.prepare("INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id").await?,
            new_order: client
                .prepare(
                    "INSERT INTO orders (customer_id, items, total_cents) \
                     VALUES ($1, jsonb_build_array(jsonb_build_object('sku', $2::text, 'qty', $3::int, \
                     'price_cents', $4::int)), $3::int * $4::int) RETURNING id",
                )
                .await?,
            set_status: client.prepare("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1").await?,
            add_item: client
                .prepare(
                    "UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', $2::text, \
                     'qty', 1, 'price_cents', $3::int)), total_cents = total_cents + $3::int, updated_at = now() \
                     WHERE id = $1",
                )
                .await?,
            rename_customer: client.prepare("UPDATE customers SET name = $2 WHERE id = $1").await?,
            delete_order: client.prepare("DELETE FROM orders WHERE id = $1").await?,
        })
    }
}

struct Worker {
    id: u32,
    client: Client,
    statements: Statements,
    /// Transactions done; picks the next one.
    step: u64,
    customers: VecDeque<i64>,
    orders: VecDeque<i64>,
    stats: Arc<Stats>,
}

impl Worker {
    async fn connect(conninfo: &str, id: u32, stats: Arc<Stats>) -> Result<Worker, tokio_postgres::Error> {
        let client = connect(conninfo).await?;
        let statements = Statements::prepare(&client).await?;
        let (customers, orders) = (VecDeque::new(), VecDeque::new());
        Ok(Worker { id, client, statements, step: 0, customers, orders, stats })
    }

    /// One transaction per turn, each followed by `row_interval` per row it changed.
    async fn run(mut self, row_interval: Duration, cancel: CancellationToken) -> Result<(), tokio_postgres::Error> {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next) => {}
            }
            let rows = self.transaction().await?;
            self.stats.rows.fetch_add(rows, Ordering::Relaxed);
            next += row_interval * u32::try_from(rows.max(1)).unwrap_or(1);
            let now = Instant::now();
            if now > next + MAX_BEHIND {
                next = now;
            }
        }
    }

    /// The next transaction of the cycle; returns the row changes it made.
    async fn transaction(&mut self) -> Result<u64, tokio_postgres::Error> {
        let step = self.step;
        self.step += 1;
        let order = (!self.orders.is_empty()).then(|| self.orders[step as usize % self.orders.len()]);
        match (step % 10, order) {
            (0, _) | (_, None) => self.new_customer().await,
            (1..=4, _) => self.new_order().await,
            (5, Some(order)) => self.client.execute(&self.statements.set_status, &[&order, &"paid"]).await,
            (6, Some(order)) => self.client.execute(&self.statements.set_status, &[&order, &"shipped"]).await,
            (7, Some(order)) => {
                self.client.execute(&self.statements.add_item, &[&order, &sku(step), &price(step)]).await
            }
            (8, _) => self.rename_customer().await,
            (_, Some(_)) => self.delete_order().await,
        }
    }

    /// A customer and its first order, in one transaction.
    async fn new_customer(&mut self) -> Result<u64, tokio_postgres::Error> {
        let n = self.step;
        let name = format!("customer {}-{n}", self.id);
        let email = format!("c{}-{n}@example.com", self.id);
        let tx = self.client.transaction().await?;
        let customer: i64 = tx.query_one(&self.statements.new_customer, &[&name, &email]).await?.get(0);
        let row = tx.query_one(&self.statements.new_order, &[&customer, &sku(n), &quantity(n), &price(n)]).await?;
        tx.commit().await?;
        remember(&mut self.customers, customer, KEEP_CUSTOMERS);
        remember(&mut self.orders, row.get(0), KEEP_ORDERS);
        Ok(2)
    }

    async fn new_order(&mut self) -> Result<u64, tokio_postgres::Error> {
        let n = self.step;
        let Some(&customer) = self.customers.get(n as usize % self.customers.len().max(1)) else {
            return self.new_customer().await;
        };
        let row =
            self.client.query_one(&self.statements.new_order, &[&customer, &sku(n), &quantity(n), &price(n)]).await?;
        remember(&mut self.orders, row.get(0), KEEP_ORDERS);
        Ok(1)
    }

    async fn rename_customer(&mut self) -> Result<u64, tokio_postgres::Error> {
        let Some(&customer) = self.customers.back() else { return Ok(0) };
        let name = format!("customer {}-{} (renamed)", self.id, self.step);
        self.client.execute(&self.statements.rename_customer, &[&customer, &name]).await
    }

    /// Deletes the oldest order it remembers.
    async fn delete_order(&mut self) -> Result<u64, tokio_postgres::Error> {
        let Some(order) = self.orders.pop_front() else { return Ok(0) };
        self.client.execute(&self.statements.delete_order, &[&order]).await
    }
}

fn remember(ids: &mut VecDeque<i64>, id: i64, keep: usize) {
    ids.push_back(id);
    if ids.len() > keep {
        ids.pop_front();
    }
}

/// Varied but reproducible item values.
fn sku(n: u64) -> String {
    format!("sku-{:03}", n.wrapping_mul(37) % 500)
}

fn quantity(n: u64) -> i32 {
    1 + (n % 3) as i32
}

fn price(n: u64) -> i32 {
    100 + (n.wrapping_mul(53) % 5000) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_window() {
        let mut ids = VecDeque::new();
        (0..5).for_each(|id| remember(&mut ids, id, 3));
        assert_eq!(ids, [2, 3, 4]);
        assert!((100..5100).contains(&price(u64::MAX)));
        assert!((1..=3).contains(&quantity(7)));
    }
}
