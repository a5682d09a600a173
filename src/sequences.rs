//! Sequences through the log.
//!
//! pgoutput on PostgreSQL 15 carries no sequence changes, so a promoted follower would hand out
//! ids the old leader already used. The leader therefore ships its sequences itself: at every
//! heartbeat where one moved (and all of them every [`FULL_SHIP_INTERVAL`]) it emits a
//! non-transactional logical message with prefix [`SEQUENCES_PREFIX`], which travels the WAL and
//! the log like any entry; followers apply it with `setval`.
//!
//! # The value shipped: ahead, by a margin
//!
//! A follower must never hand out an id the old leader handed out, even one the old leader
//! handed out after its last shipment and before it died. So the value shipped is not the
//! sequence's `last_value` but a value ahead of it, in the sequence's direction:
//!
//! `shipped = last_value + increment × max(MIN_MARGIN_STEPS, 2 × steps since the last look)`,
//!
//! clamped to the sequence's bounds, and never behind a value shipped before. A promoted node
//! therefore starts each sequence beyond the last shipped value with no further step: the old
//! leader could only have reached it by using, between two heartbeats, more than twice what it
//! used in the interval before and at least [`MIN_MARGIN_STEPS`] values, and dying before the
//! next heartbeat shipped it. A burst like that is the one way an id can repeat; raise the
//! margin (or the heartbeat rate) for workloads that burst so. The cost is a gap in the ids
//! after a promotion, as PostgreSQL's own sequences leave gaps after a crash. A sequence
//! restarted lower on the leader (`ALTER SEQUENCE ... RESTART`) stays at the higher value on
//! the followers until the leader passes it.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The logical message prefix of a sequences shipment.
pub const SEQUENCES_PREFIX: &str = "walship.sequences";
/// Every sequence is shipped at least this often, moved or not, so a follower that missed
/// nothing still converges after its own sequences were touched.
pub const FULL_SHIP_INTERVAL: Duration = Duration::from_secs(60);
/// The smallest margin, in increments, shipped ahead of a sequence's `last_value`.
pub const MIN_MARGIN_STEPS: i64 = 1000;

/// The sequences on the leader, read from `pg_sequences`.
pub const LEADER_SEQUENCES: &str = "SELECT schemaname::text, sequencename::text, last_value, increment_by, \
     min_value, max_value FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL ORDER BY 1, 2";

/// One sequence as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub increment: i64,
    pub min_value: i64,
    pub max_value: i64,
}

/// The message's content: JSON, so any name passes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub sequences: Vec<Shipped>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    pub schema: String,
    pub name: String,
    /// The value to `setval` (with `is_called = true`) on the followers.
    pub value: i64,
}

impl Shipment {
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn decode(content: &[u8]) -> Result<Shipment, serde_json::Error> {
        serde_json::from_slice(content)
    }
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    last_value: i64,
    shipped: i64,
}

/// Decides what the leader ships, from one look at its sequences to the next.
#[derive(Debug, Default)]
pub struct Shipper {
    seen: HashMap<(String, String), Seen>,
    since_full: Option<Duration>,
}

impl Shipper {
    /// Given the sequences now and the time since the last look, what to ship (`None`: nothing
    /// moved and no full shipment is due).
    pub fn look(&mut self, now: &[Observed], elapsed: Duration) -> Option<Shipment> {
        let since_full = self.since_full.map(|s| s + elapsed);
        let full = since_full.is_none_or(|s| s >= FULL_SHIP_INTERVAL);
        self.since_full = if full { Some(Duration::ZERO) } else { since_full };
        let mut shipment = Shipment::default();
        for seq in now {
            let key = (seq.schema.clone(), seq.name.clone());
            let before = self.seen.get(&key).copied();
            if !full && before.is_some_and(|b| b.last_value == seq.last_value) {
                continue;
            }
            let shipped = ahead(seq, before);
            self.seen.insert(key, Seen { last_value: seq.last_value, shipped });
            shipment.sequences.push(Shipped { schema: seq.schema.clone(), name: seq.name.clone(), value: shipped });
        }
        (!shipment.sequences.is_empty()).then_some(shipment)
    }
}

/// The value to ship for `seq`: ahead of `last_value` by the margin, never behind what was
/// shipped before, within the sequence's bounds.
fn ahead(seq: &Observed, before: Option<Seen>) -> i64 {
    let step = if seq.increment == 0 { 1 } else { seq.increment };
    let used = before.map_or(0, |b| (seq.last_value.saturating_sub(b.last_value) / step).max(0));
    let margin = MIN_MARGIN_STEPS.max(used.saturating_mul(2));
    let target = seq.last_value.saturating_add(step.saturating_mul(margin)).clamp(seq.min_value, seq.max_value);
    match before {
        Some(b) if step > 0 => target.max(b.shipped),
        Some(b) => target.min(b.shipped),
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(name: &str, last_value: i64, increment: i64) -> Observed {
        Observed {
            schema: "public".into(),
            name: name.into(),
            last_value,
            increment,
            min_value: if increment > 0 { 1 } else { i64::MIN },
            max_value: if increment > 0 { i64::MAX } else { -1 },
        }
    }

    fn values(s: Option<Shipment>) -> Vec<(String, i64)> {
        s.map_or_else(Vec::new, |s| s.sequences.into_iter().map(|q| (q.name, q.value)).collect())
    }

    const BEAT: Duration = Duration::from_secs(1);

    #[test]
    fn ships_ahead_by_the_margin_and_only_what_moved() {
        let mut shipper = Shipper::default();
        let first = shipper.look(&[seq("a", 10, 1), seq("b", 5, 2)], BEAT);
        assert_eq!(values(first), vec![("a".into(), 1010), ("b".into(), 2005)]);
        assert_eq!(values(shipper.look(&[seq("a", 10, 1), seq("b", 5, 2)], BEAT)), vec![], "nothing moved");
        // `a` used 3000 values in a beat: twice that is shipped ahead.
        assert_eq!(values(shipper.look(&[seq("a", 3010, 1), seq("b", 5, 2)], BEAT)), vec![("a".into(), 9010)]);
        // It slows down: the value shipped never goes back.
        assert_eq!(values(shipper.look(&[seq("a", 3020, 1), seq("b", 5, 2)], BEAT)), vec![("a".into(), 9010)]);
    }

    #[test]
    fn the_leader_cannot_reach_the_value_shipped_before_its_next_heartbeat() {
        let pace = |beat: i64| if beat % 50 < 25 { 100 + beat % 5 * 40 } else { 3000 + beat % 3 * 1000 };
        let mut shipper = Shipper::default();
        let (mut last, mut shipped) = (1, 0);
        for beat in 0..500i64 {
            last += pace(beat);
            if let Some(s) = shipper.look(&[seq("ids", last, 1)], BEAT) {
                shipped = s.sequences[0].value;
            }
            // At most twice the pace of the beat before (or the minimum margin) until the next.
            if pace(beat + 1) <= (2 * pace(beat)).max(MIN_MARGIN_STEPS) {
                assert!(
                    shipped >= last + pace(beat + 1),
                    "beat {beat}: shipped {shipped}, leader reaches {}",
                    last + pace(beat + 1)
                );
            }
        }
    }

    #[test]
    fn descending_sequences_ship_downwards_and_bounds_hold() {
        let mut shipper = Shipper::default();
        assert_eq!(values(shipper.look(&[seq("down", -10, -1)], BEAT)), vec![("down".into(), -1010)]);
        let mut near_max = seq("small", 95, 1);
        near_max.max_value = 100;
        assert_eq!(values(shipper.look(&[near_max], BEAT)), vec![("small".into(), 100)]);
    }

    #[test]
    fn everything_is_shipped_again_every_full_interval() {
        let mut shipper = Shipper::default();
        let now = [seq("a", 1, 1)];
        assert!(shipper.look(&now, BEAT).is_some());
        assert!(shipper.look(&now, FULL_SHIP_INTERVAL - BEAT).is_none());
        assert_eq!(values(shipper.look(&now, BEAT)), vec![("a".into(), 1001)]);
        assert!(shipper.look(&now, BEAT).is_none());
    }

    #[test]
    fn shipments_round_trip_any_name() {
        let s =
            Shipment { sequences: vec![Shipped { schema: "we\"ird".into(), name: "tab\there\n".into(), value: -5 }] };
        assert_eq!(Shipment::decode(s.encode().unwrap().as_bytes()).unwrap(), s);
        assert!(Shipment::decode(b"{\"sequences\": 5}").is_err());
    }
}
