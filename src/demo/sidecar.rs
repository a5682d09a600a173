//! The demo's sidecars: how they start (`localcluster::Launch`) and how their failures are
//! reported.

use std::time::Duration;

use super::DemoError;
use crate::localcluster::{Launch, LocalClusterError, Sidecar};

/// How long a sidecar gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of a sidecar's log shown when it fails.
const TAIL_LINES: usize = 25;
/// Log lines at ERROR level shown at shutdown, per sidecar.
const ERROR_LINES: usize = 5;

/// `<this executable> run --config FILE`, in its own process group so a terminal's Ctrl-C
/// reaches only the demo, which stops it in order; a watcher stops it if the demo dies first.
pub(super) fn launch(node: &'static str) -> Result<Launch, DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Spawn { node, source })?;
    Ok(Launch { own_process_group: true, watcher: true, ..Launch::new(exe) })
}

/// `SidecarDied` once the process has exited (it is then forgotten: its exit is reported once).
pub(super) fn check(node: &'static str, sidecar: &mut Sidecar) -> Result<(), DemoError> {
    match sidecar.exited()? {
        None => Ok(()),
        Some(status) => Err(DemoError::SidecarDied {
            node,
            status,
            log: sidecar.log_path.clone(),
            tail: sidecar.log_tail(TAIL_LINES),
        }),
    }
}

/// SIGTERM, wait, SIGKILL. `true` when it exited with success by itself (or was not
/// running); otherwise says what happened, with the end of its log. Also reports ERROR lines
/// of its log.
pub(super) async fn stop(node: &'static str, mut sidecar: Sidecar) -> bool {
    let stopping = tokio::task::spawn_blocking(move || {
        let result = sidecar.stop(STOP_TIMEOUT);
        (result, sidecar)
    });
    let (result, sidecar) = match stopping.await {
        Ok(stopped) => stopped,
        Err(e) => {
            eprintln!("walship demo: stopping sidecar {node}: {e}");
            return false;
        }
    };
    let clean = match result {
        Ok(None) => return true,
        Ok(Some(status)) if status.success() => true,
        Ok(Some(status)) => {
            let tail = sidecar.log_tail(TAIL_LINES);
            eprintln!("walship demo: sidecar {node} exited with {status}; the end of its log:\n{tail}");
            false
        }
        Err(e @ LocalClusterError::StopTimeout { .. }) => {
            eprintln!("walship demo: {e}");
            false
        }
        Err(e) => {
            eprintln!("walship demo: sidecar {node}: {e}");
            false
        }
    };
    report_errors(node, &sidecar);
    clean
}

/// Prints the first ERROR lines of its log, if any.
fn report_errors(node: &'static str, sidecar: &Sidecar) {
    let errors = sidecar.error_lines();
    if !errors.is_empty() {
        let first = errors.iter().take(ERROR_LINES).cloned().collect::<Vec<_>>().join("\n");
        eprintln!("walship demo: sidecar {node} logged {} errors, the first:\n{first}", errors.len());
    }
}

/// The end of a sidecar's log, for a failure message.
pub(super) fn tail(sidecar: &Sidecar) -> String {
    sidecar.log_tail(TAIL_LINES)
}
