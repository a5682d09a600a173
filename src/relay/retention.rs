//! Log retention on the leader: keep every entry some follower still needs, up to a size cap.
//!
//! A follower that connected reports what its log holds; one that never connected (or has not
//! since this leader started) needs everything. Beyond `retain_max_bytes` the oldest segments
//! go anyway: a follower that needed them is refused with `NotRetained` when it comes back and
//! must be re-seeded from a snapshot. [`retain_from`] decides without I/O; [`run`] applies it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::log::{Log, LogError};
use crate::lsn::Index;
use crate::relay::progress::{FollowerProgress, Followers};
use crate::relay::Serving;

/// How often the leader reconsiders what to keep.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(5);

/// The lowest index any of `peers` still needs; `None` with no peers.
pub fn needed_from(peers: &[String], progress: &BTreeMap<String, FollowerProgress>, first: Index) -> Option<Index> {
    peers
        .iter()
        .map(|peer| match progress.get(peer).and_then(|p| p.flushed) {
            Some(flushed) => flushed.index.next(),
            None => first,
        })
        .min()
}

/// The index before which whole segments may be removed: what followers need, moved forward
/// as far as needed to bring the log under `cap` bytes. Never touches the last (active) segment.
pub fn retain_from(needed: Option<Index>, segments: &[(Index, u64)], cap: u64) -> Option<Index> {
    let (first, _) = *segments.first()?;
    let mut keep_from = needed.unwrap_or(first);
    let mut total: u64 = segments.iter().map(|(_, len)| len).sum();
    for pair in segments.windows(2) {
        if total <= cap {
            break;
        }
        let ((_, len), (next_first, _)) = (pair[0], pair[1]);
        keep_from = keep_from.max(next_first);
        total -= len;
    }
    Some(keep_from)
}

/// Applies retention every [`RETENTION_INTERVAL`] while this node leads, until `cancel`. A
/// node that does not lead keeps its whole log: replay may still need any of it.
pub async fn run(
    log: Arc<Mutex<Log>>,
    followers: Followers,
    peers: Vec<String>,
    cap: u64,
    serving: watch::Receiver<Serving>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !serving.borrow().leading {
            continue;
        }
        let (log, progress, peers) = (log.clone(), followers.snapshot(), peers.clone());
        let outcome = tokio::task::spawn_blocking(move || apply(&log, &progress, &peers, cap)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "log retention failed"),
            Err(_) => error!("log retention panicked"),
        }
    }
}

fn apply(
    log: &Mutex<Log>,
    progress: &BTreeMap<String, FollowerProgress>,
    peers: &[String],
    cap: u64,
) -> Result<(), LogError> {
    let mut log = log.lock().map_err(|_| LogError::Failed)?;
    let Some(first) = log.first_index() else { return Ok(()) };
    let needed = needed_from(peers, progress, first);
    let Some(keep_from) = retain_from(needed, &log.segment_sizes(), cap) else { return Ok(()) };
    if needed.is_some_and(|n| n < keep_from) {
        warn!(
            needed = %needed.unwrap_or(first),
            keep_from = %keep_from,
            cap_bytes = cap,
            "the log is over its size cap: entries a lagging follower still needs are removed; it will have to be re-seeded"
        );
    }
    let freed = log.remove_before(keep_from)?;
    if freed > 0 {
        info!(freed_bytes = freed, first = ?log.first_index(), "removed log segments every follower has");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{EntryId, Term};

    fn progress(flushed: &[(&str, Option<u64>)]) -> BTreeMap<String, FollowerProgress> {
        flushed
            .iter()
            .map(|(node, index)| {
                let flushed = index.map(|i| EntryId { term: Term(1), index: Index(i) });
                ((*node).to_owned(), FollowerProgress { flushed, ..FollowerProgress::default() })
            })
            .collect()
    }

    #[test]
    fn the_slowest_follower_decides_and_an_unknown_one_keeps_everything() {
        let peers = vec!["b".to_owned(), "c".to_owned()];
        assert_eq!(needed_from(&peers, &progress(&[("b", Some(50)), ("c", Some(20))]), Index(1)), Some(Index(21)));
        assert_eq!(needed_from(&peers, &progress(&[("b", Some(50))]), Index(7)), Some(Index(7)));
        assert_eq!(needed_from(&[], &progress(&[]), Index(7)), None);
    }

    #[test]
    fn whole_segments_go_only_when_needed_or_over_the_cap() {
        let segments = [(Index(1), 100), (Index(11), 100), (Index(21), 100), (Index(31), 10)];
        // Followers need 15: segments holding only 1..=10 may go.
        assert_eq!(retain_from(Some(Index(15)), &segments, 1_000), Some(Index(15)));
        // Over the cap, older segments go even though a follower needs them.
        assert_eq!(retain_from(Some(Index(5)), &segments, 250), Some(Index(11)));
        assert_eq!(retain_from(Some(Index(5)), &segments, 150), Some(Index(21)));
        assert_eq!(retain_from(Some(Index(5)), &segments, 5), Some(Index(31)));
        // The active segment always stays.
        assert_eq!(retain_from(Some(Index(1)), &[(Index(1), 500)], 10), Some(Index(1)));
        assert_eq!(retain_from(None, &[], 10), None);
    }
}
