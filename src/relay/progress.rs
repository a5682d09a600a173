//! What the leader knows of each follower: whether it is connected, and the last entry it
//! acknowledged at each stage. Read by the admin API, metrics and retention.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::lsn::{EntryId, Lsn};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowerProgress {
    pub connected: bool,
    pub received: Option<EntryId>,
    pub flushed: Option<EntryId>,
    pub applied: Option<EntryId>,
    /// The leader WAL position just past the follower's applied entry.
    pub applied_lsn: Lsn,
    pub last_ack: Option<Instant>,
}

/// Progress of every follower that ever connected, by node name.
#[derive(Clone, Debug)]
pub struct Followers {
    inner: Arc<Mutex<BTreeMap<String, FollowerProgress>>>,
    /// Bumped at every change, for those who react to acknowledgements.
    changes: watch::Sender<u64>,
}

impl Default for Followers {
    fn default() -> Followers {
        Followers { inner: Arc::default(), changes: watch::Sender::new(0) }
    }
}

impl Followers {
    /// A follower connected saying what its log holds: that is the truth from now on, even
    /// when it is less than before (a follower restored from an older copy).
    pub fn connected(&self, node: &str, flushed: Option<EntryId>) {
        self.update(node, |p| {
            p.connected = true;
            p.flushed = flushed;
            p.received = flushed;
            p.last_ack = Some(Instant::now()); // heard from: it connected
        });
    }

    pub fn disconnected(&self, node: &str) {
        self.update(node, |p| p.connected = false);
    }

    pub fn acked(
        &self,
        node: &str,
        received: Option<EntryId>,
        flushed: Option<EntryId>,
        applied: Option<EntryId>,
        applied_lsn: Lsn,
    ) {
        self.update(node, |p| {
            p.received = p.received.max_by_index(received);
            p.flushed = p.flushed.max_by_index(flushed);
            p.applied = p.applied.max_by_index(applied);
            p.applied_lsn = p.applied_lsn.max(applied_lsn);
            p.last_ack = Some(Instant::now());
        });
    }

    /// Changes whenever a follower's progress does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn snapshot(&self) -> BTreeMap<String, FollowerProgress> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut FollowerProgress)) {
        if let Ok(mut map) = self.inner.lock() {
            f(map.entry(node.to_owned()).or_default());
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

trait MaxByIndex {
    fn max_by_index(self, other: Self) -> Self;
}

impl MaxByIndex for Option<EntryId> {
    /// Within a connection, acknowledged positions only move forward.
    fn max_by_index(self, other: Self) -> Self {
        match (self, other) {
            (Some(a), Some(b)) if b.index >= a.index => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Index, Term};

    fn id(index: u64) -> Option<EntryId> {
        Some(EntryId { term: Term(1), index: Index(index) })
    }

    #[test]
    fn progress_only_moves_forward() {
        let f = Followers::default();
        f.connected("b", id(5));
        f.acked("b", id(9), id(8), id(7), Lsn(70));
        f.acked("b", id(6), id(6), None, Lsn(10));
        let p = &f.snapshot()["b"];
        assert!(p.connected);
        assert_eq!((p.received, p.flushed, p.applied, p.applied_lsn), (id(9), id(8), id(7), Lsn(70)));
        f.disconnected("b");
        assert!(!f.snapshot()["b"].connected);
        // Reconnecting from an older copy resets what the leader assumes it holds.
        f.connected("b", id(3));
        assert_eq!(f.snapshot()["b"].flushed, id(3));
    }
}
