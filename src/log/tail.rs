//! Following a live log from async code: a blocking thread reads records and hands them over
//! through a bounded queue, waiting for new flushes when it has caught up.

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::log::{LogError, LogReader, Record};

/// Starts a thread that reads `reader` into a queue of `capacity` records. It stops at the
/// first error (after queueing it) or when the receiver is dropped.
pub fn spawn(reader: LogReader, capacity: usize) -> (mpsc::Receiver<Result<Record, LogError>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let handle = Handle::current();
    let thread = tokio::task::spawn_blocking(move || tail(reader, tx, handle));
    (rx, thread)
}

fn tail(mut reader: LogReader, tx: mpsc::Sender<Result<Record, LogError>>, handle: Handle) {
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                if tx.blocking_send(Ok(record)).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let Some(mut wait) = reader.wait_handle() else { return };
                let closed = handle.block_on(async {
                    tokio::select! {
                        changed = wait.changed() => changed.is_err(),
                        _ = tx.closed() => true,
                    }
                });
                if closed {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}
