//! Keeps the local PostgreSQL writable for clients only while this node leads: the desired
//! state is set by `MakeWritable` / `MakeReadOnly`, and one task applies it (see
//! [`crate::fence`]), again every [`RECHECK`] so that a PostgreSQL that restarted or was
//! changed by hand is put back.
//!
//! Every change has a generation. `MakeWritable` takes effect only once the leader's source
//! is ready (its slot exists, so no client write can be missed), and only if no later
//! `MakeReadOnly` came in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::fence;

/// How often the fence is checked against the desired state.
pub const RECHECK: Duration = Duration::from_secs(5);
/// How long `MakeReadOnly` waits for the database to be fenced before going on.
pub const FENCE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Desired {
    writable: bool,
    generation: u64,
}

/// The control loop's handle on the fence task.
pub struct Fencer {
    /// `None` until the first request: a restarting leader's PostgreSQL is left as it is.
    desired: watch::Sender<Option<Desired>>,
    /// The newest request's generation. A `MakeWritable` waiting for its source changes the
    /// desired state only if no request came after it, and until then leaves it alone (a
    /// needless fence would hold up the slot's creation).
    generation: Arc<AtomicU64>,
    /// The generation the task last applied, with the state it applied.
    applied: watch::Receiver<Option<Desired>>,
}

impl Fencer {
    /// Starts the task on `pg`; it acts from the first request on.
    pub fn spawn(pg: tokio_postgres::Config, cancel: CancellationToken) -> Fencer {
        let desired = watch::Sender::new(None);
        let (applied_tx, applied) = watch::channel(None);
        tokio::spawn(run(pg, desired.subscribe(), applied_tx, cancel));
        Fencer { desired, applied, generation: Arc::new(AtomicU64::new(0)) }
    }

    /// Read-only from now on; waits (up to [`FENCE_WAIT`]) until the database is fenced.
    pub async fn make_read_only(&mut self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.desired.send_replace(Some(Desired { writable: false, generation }));
        let done = self.applied.wait_for(|a| a.is_some_and(|a| a.generation >= generation && !a.writable));
        if tokio::time::timeout(FENCE_WAIT, done).await.is_err() {
            error!("PostgreSQL is not fenced yet (is it down?): retrying every {RECHECK:?}");
        }
    }

    /// Writable once `ready` fires (the source's slot exists), unless made read-only again
    /// before.
    pub fn make_writable(&mut self, ready: Option<oneshot::Receiver<()>>) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let (desired, newest) = (self.desired.clone(), self.generation.clone());
        tokio::spawn(async move {
            if let Some(ready) = ready {
                if ready.await.is_err() {
                    return;
                }
            }
            // Under the watch's lock: a later request either came before (and wins) or
            // waits for this one to be written (and overwrites it).
            desired.send_if_modified(|d| {
                let current = newest.load(Ordering::SeqCst) == generation;
                if current {
                    *d = Some(Desired { writable: true, generation });
                }
                current
            });
        });
    }
}

async fn run(
    pg: tokio_postgres::Config,
    mut desired: watch::Receiver<Option<Desired>>,
    applied: watch::Sender<Option<Desired>>,
    cancel: CancellationToken,
) {
    loop {
        let wanted = *desired.borrow_and_update();
        if let Some(want) = wanted {
            let changed = applied.borrow().is_none_or(|a| a != want);
            match apply(&pg, want.writable, changed).await {
                Ok(()) => {
                    applied.send_replace(Some(want));
                }
                Err(e) => warn!(error = %e, writable = want.writable, "cannot set PostgreSQL's fence; retrying"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = desired.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Fences or unfences. A new read-only request fences again even when the database is
/// fenced (which ends writers and covers tables created since); a recheck only repairs.
async fn apply(pg: &tokio_postgres::Config, writable: bool, changed: bool) -> Result<(), fence::FenceError> {
    let client = crate::sql::connect(pg)
        .await
        .map_err(|source| fence::FenceError::Postgres { action: "connect to PostgreSQL", source })?;
    let fenced = fence::is_fenced(&client).await?;
    match (writable, fenced) {
        (true, true) => fence::unfence(&client).await,
        (false, false) => fence::fence(&client).await,
        (false, true) if changed => fence::fence(&client).await,
        _ => Ok(()),
    }
}
