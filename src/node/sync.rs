//! Which entries the leader may confirm to PostgreSQL as flushed: the acknowledgement rule of
//! the three replication modes, without I/O.
//!
//! PostgreSQL lets a committing client return once its synchronous standby (the leader
//! sidecar's replication connection) reports the commit flushed. What the sidecar reports is
//! the end of the last entry this rule confirms:
//!
//! - `async`: every entry durable in the leader's own log;
//! - `semi-sync` with quorum `k`: also durable in the logs of `k` followers, whichever they
//!   are (the `k`-th highest acknowledged `flushed` index), so a dead or slow follower is
//!   replaced by the next one at once;
//! - `sync`: durable on every follower in `[[peers]]` (one that never acknowledged holds
//!   everything back).
//!
//! A follower's acknowledgement stays valid after it disconnects: what it flushed is on its
//! disk. Strict mode waits for ever. Otherwise, when the oldest entry not yet confirmed has
//! waited [`SyncPolicy::timeout`], the rule degrades to async and confirms everything durable
//! locally; it is synchronous again once the followers confirm entries within a quarter of the
//! timeout of their becoming durable, so a follower still catching up does not make commits
//! stall for a whole timeout again and again.
//!
//! Confirmed positions never go backwards: the caller reports the highest one yet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::lsn::Index;

/// Entries durable locally but not yet confirmed, remembered for their age; beyond this many
/// the oldest are merged (their age is kept, their index moves up).
pub const PENDING_KEPT: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPolicy {
    pub mode: Mode,
    /// Followers that must hold an entry in `semi-sync`.
    pub quorum: usize,
    pub strict: bool,
    pub timeout: Duration,
}

/// Where the rule stands, for `/status`, the log and a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// `async` mode: nothing to wait for.
    Async,
    /// Commits wait for followers, and none has waited long.
    Synchronous,
    /// Not strict, and followers were too slow: confirming as in async mode.
    Degraded,
}

/// The decision: confirm every entry through `through`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub through: Option<Index>,
    pub state: SyncState,
}

#[derive(Debug)]
pub struct SyncRule {
    policy: SyncPolicy,
    degraded: bool,
    /// Local durable indexes not yet confirmed by the quorum, with when they became durable.
    pending: VecDeque<(Index, Instant)>,
}

impl SyncRule {
    pub fn new(policy: SyncPolicy) -> SyncRule {
        SyncRule { policy, degraded: false, pending: VecDeque::new() }
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// A new policy (configuration reloaded); the next decision applies it.
    pub fn set_policy(&mut self, policy: SyncPolicy) {
        if policy.mode == Mode::Async {
            self.degraded = false;
        }
        self.policy = policy;
    }

    /// Decides what may be confirmed now. `local`: the last entry durable in this node's log;
    /// `flushed`: the `flushed` index each configured follower acknowledged (`None`: never).
    pub fn decide(&mut self, local: Option<Index>, flushed: &[Option<Index>], now: Instant) -> Confirm {
        let Some(local) = local else { return Confirm { through: None, state: self.state() } };
        if self.policy.mode == Mode::Async {
            self.pending.clear();
            return Confirm { through: Some(local), state: SyncState::Async };
        }
        self.remember(local, now);
        let quorum = self.quorum_index(flushed).map(|q| q.min(local));
        while self.pending.front().is_some_and(|&(i, _)| quorum.is_some_and(|q| i <= q)) {
            self.pending.pop_front();
        }
        let oldest_wait = self.pending.front().map(|&(_, at)| now.saturating_duration_since(at));
        if self.degraded {
            if oldest_wait.is_none_or(|w| w <= self.policy.timeout / 4) {
                self.degraded = false;
            }
        } else if !self.policy.strict && oldest_wait.is_some_and(|w| w >= self.policy.timeout) {
            self.degraded = true;
        }
        let through = if self.degraded { Some(local) } else { quorum };
        Confirm { through, state: self.state() }
    }

    fn state(&self) -> SyncState {
        match (self.policy.mode, self.degraded) {
            (Mode::Async, _) => SyncState::Async,
            (_, true) => SyncState::Degraded,
            (_, false) => SyncState::Synchronous,
        }
    }

    /// The highest index that enough followers hold.
    fn quorum_index(&self, flushed: &[Option<Index>]) -> Option<Index> {
        match self.policy.mode {
            Mode::Async => None,
            Mode::Sync => flushed.iter().copied().min().flatten(),
            Mode::SemiSync => {
                let mut held: Vec<Index> = flushed.iter().flatten().copied().collect();
                held.sort_unstable_by(|a, b| b.cmp(a));
                held.get(self.policy.quorum.max(1) - 1).copied()
            }
        }
    }

    fn remember(&mut self, local: Index, now: Instant) {
        if self.pending.back().is_some_and(|&(i, _)| i >= local) {
            return;
        }
        if self.pending.len() == PENDING_KEPT {
            // Merge the two oldest: the older time stands for both.
            if let (Some((_, at)), Some(next)) = (self.pending.pop_front(), self.pending.front_mut()) {
                next.1 = at;
            }
        }
        self.pending.push_back((local, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn rule(mode: Mode, quorum: usize, strict: bool) -> SyncRule {
        SyncRule::new(SyncPolicy { mode, quorum, strict, timeout: TIMEOUT })
    }

    fn i(n: u64) -> Option<Index> {
        Some(Index(n))
    }

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn async_confirms_what_is_durable_locally() {
        let mut r = rule(Mode::Async, 1, false);
        let now = Instant::now();
        assert_eq!(r.decide(i(7), &[None, None], now), Confirm { through: i(7), state: SyncState::Async });
        assert_eq!(r.decide(None, &[], now).through, None);
    }

    #[test]
    fn semi_sync_confirms_what_the_quorum_holds_whichever_followers_they_are() {
        let mut r = rule(Mode::SemiSync, 1, true);
        let t = Instant::now();
        assert_eq!(r.decide(i(10), &[i(4), i(9), None], t), Confirm { through: i(9), state: SyncState::Synchronous });
        // The fast follower dies; the next one's acknowledgements take its place at once.
        assert_eq!(r.decide(i(12), &[i(11), i(9), None], t).through, i(11));
        let mut two = rule(Mode::SemiSync, 2, true);
        assert_eq!(two.decide(i(10), &[i(4), i(9), i(6)], t).through, i(6));
        assert_eq!(two.decide(i(10), &[i(4), None, None], t).through, None, "one follower is not a quorum of two");
        // Never past what is durable locally.
        assert_eq!(r.decide(i(12), &[i(20)], t).through, i(12));
    }

    #[test]
    fn sync_needs_every_follower() {
        let mut r = rule(Mode::Sync, 1, true);
        let t = Instant::now();
        assert_eq!(r.decide(i(10), &[i(8), i(9)], t).through, i(8));
        assert_eq!(r.decide(i(10), &[i(10), None], t).through, None);
    }

    #[test]
    fn strict_waits_for_ever() {
        let mut r = rule(Mode::Sync, 1, true);
        let t = Instant::now();
        r.decide(i(5), &[i(5), i(5)], t);
        for s in [1, 60, 3600] {
            let c = r.decide(i(6), &[i(6), i(5)], t + Duration::from_secs(s));
            assert_eq!(c, Confirm { through: i(5), state: SyncState::Synchronous });
        }
    }

    #[test]
    fn not_strict_degrades_after_the_timeout_and_returns_once_followers_keep_up() {
        let mut r = rule(Mode::SemiSync, 1, false);
        let t = Instant::now();
        assert_eq!(r.decide(i(5), &[i(5)], t).state, SyncState::Synchronous);
        // The follower stops acknowledging at 5.
        assert_eq!(r.decide(i(6), &[i(5)], at(t, 1)).through, i(5));
        assert_eq!(r.decide(i(8), &[i(5)], at(t, 9_000)).state, SyncState::Synchronous);
        let degraded = r.decide(i(9), &[i(5)], at(t, 10_001));
        assert_eq!(degraded, Confirm { through: i(9), state: SyncState::Degraded });
        // It comes back and catches up slowly: each entry confirmed long after it was durable.
        r.decide(i(20), &[i(5)], at(t, 11_000));
        assert_eq!(r.decide(i(30), &[i(9)], at(t, 20_000)).state, SyncState::Degraded);
        assert_eq!(r.decide(i(31), &[i(20)], at(t, 25_000)).through, i(31), "still degraded: it lags 5 s");
        // Caught up: what it confirms became durable moments ago.
        r.decide(i(32), &[i(31)], at(t, 25_100));
        let back = r.decide(i(33), &[i(32)], at(t, 25_200));
        assert_eq!(back, Confirm { through: i(32), state: SyncState::Synchronous });
    }

    #[test]
    fn steady_load_with_prompt_acknowledgements_never_degrades() {
        // Under continuous load the quorum is always a little behind; that is not waiting.
        let mut r = rule(Mode::SemiSync, 1, false);
        let t = Instant::now();
        for n in 1..=100_000u64 {
            let c = r.decide(i(n + 3), &[i(n)], at(t, n));
            assert_eq!(c.state, SyncState::Synchronous, "at {n}");
            assert_eq!(c.through, i(n));
        }
    }

    #[test]
    fn a_reloaded_policy_applies_at_the_next_decision() {
        let mut r = rule(Mode::Async, 1, false);
        let t = Instant::now();
        assert_eq!(r.decide(i(4), &[None], t).through, i(4));
        r.set_policy(SyncPolicy { mode: Mode::SemiSync, quorum: 1, strict: true, timeout: TIMEOUT });
        assert_eq!(r.decide(i(5), &[i(3)], t), Confirm { through: i(3), state: SyncState::Synchronous });
    }

    #[test]
    fn pending_entries_stay_bounded_and_keep_their_age() {
        let mut r = rule(Mode::Sync, 1, false);
        let t = Instant::now();
        for n in 1..=(PENDING_KEPT as u64 + 1000) {
            r.decide(i(n), &[None], t + Duration::from_micros(n));
        }
        assert_eq!(r.pending.len(), PENDING_KEPT);
        assert_eq!(r.pending.front().map(|p| p.1), Some(t + Duration::from_micros(1)));
        let later = t + TIMEOUT + Duration::from_millis(1);
        assert_eq!(r.decide(i(PENDING_KEPT as u64 + 1001), &[None], later).state, SyncState::Degraded);
    }
}
