//! Runs: changes of one kind to one table, applied together.
//!
//! Inserts into one table form a run; so do updates (or deletes) of one table and one shape
//! (see `statement`). A run's first rows are held back; a short run then goes row by row, as
//! pipelined prepared statements, which is cheapest for a few rows. Once a run holds
//! [`BULK_MIN_ROWS`] rows it goes in bulk: inserts by COPY (`copy`), updates and deletes by
//! set-based statements (`set`) when their shape allows, else row by row.
//!
//! Each table has at most one open run. A change to a table whose open run is of another kind
//! or shape ends that run first: per table, changes go out in log order. A set-based batch
//! has distinct keys (and so that a run can go set-based, its held rows must too): an update
//! of a key the run has replaces that row's values when the run is collapsible (an update
//! of the same shape assigns the same columns, with values, not deltas, so only the last one
//! counts), and otherwise ends the run. The earlier update then never runs on the follower:
//! the final state is the leader's, but a value the follower could not have stored in
//! between (a narrower column type, a constraint only the follower has) goes unnoticed until
//! a change that stays does the same; replay in strict order never collapses. Runs of different tables stay open side by side until the commit, so that the
//! interleaved changes of many small transactions (pgbench's: an update of three tables and
//! an insert into a fourth) still make long runs. Changes to different tables commute: the
//! apply session fires no foreign-key triggers (`session_replication_role = replica`). Where
//! order across tables can matter it is kept: a table with triggers that fire on a replica,
//! a truncate, a schema change, and replay in strict order (see [`super::ApplyError::Batched`])
//! end every other run first.
//!
//! A run may span several entries of the open transaction: they commit together, so each
//! stays atomic.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use bytes::Bytes;

use super::copy::CopyBatch;
use super::param::TextParam;
use super::set::SetBatch;
use super::statement::SET;
use crate::lsn::EntryId;

/// A run goes in bulk once it holds this many rows.
pub const BULK_MIN_ROWS: usize = 8;
/// Most runs open at once; one more ends them all. With each run's batch sent at
/// [`super::COPY_BATCH_BYTES`], this bounds the memory of the open batches.
pub const MAX_OPEN_RUNS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RunKind {
    Insert,
    /// Updates or deletes of one shape.
    Change {
        shape: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Rows are held until the run is long enough for bulk, or ends.
    Holding,
    /// Rows go out one statement each as they come.
    RowByRow,
    /// Rows go into the COPY batch.
    Copy,
    /// Rows go into the set-based batch.
    Set,
}

/// One row of a run, as it would go out alone.
pub(super) struct Held {
    pub entry: EntryId,
    /// The record buffer the parameters and message point into; `None` once they are
    /// copies of their own (see [`Held::detach`]).
    pub payload: Option<Bytes>,
    /// The row's pgoutput message, to name its key in an error.
    pub message: Bytes,
    pub params: Vec<TextParam>,
}

impl Held {
    /// Copies the row's values out of its record buffer, so that a row held back does not
    /// keep a whole record (up to a spilled chunk) in memory.
    pub fn detach(self) -> Held {
        let copy = |bytes: &Bytes| Bytes::copy_from_slice(bytes);
        Held {
            entry: self.entry,
            payload: None,
            message: copy(&self.message),
            params: self.params.iter().map(|p| TextParam(p.0.as_ref().map(copy))).collect(),
        }
    }

    /// The memory the row keeps alive while its statement is in flight, beyond its record.
    pub fn own_bytes(&self) -> usize {
        match self.payload {
            Some(_) => 0,
            None => self.message.len() + self.params.iter().filter_map(|p| p.0.as_ref()).map(Bytes::len).sum::<usize>(),
        }
    }
}

/// What [`Run::claim_key`] found of a change's key in the run.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeyClaim {
    /// The key was not there: it is now recorded as the next row's, which the caller adds.
    Claimed,
    /// The row at this position (held, or in the set-based batch) has it.
    Existing(usize),
    /// Another key with the same hash is there: the run must end before this row.
    Clash,
}

pub(super) struct Run {
    pub rel_id: u32,
    pub kind: RunKind,
    pub mode: Mode,
    /// The table's changes must keep their order with other tables' (replica triggers).
    pub ordered: bool,
    /// Updates of one shape that may go set-based: a later update of a key replaces the
    /// earlier one's values, which it overwrites entirely (same columns, values not deltas).
    pub collapsible: bool,
    pub held: Vec<Held>,
    pub copy: CopyBatch,
    pub set: SetBatch,
    /// The position of each key's row among the held rows or in the set-based batch, by
    /// the hash of the key.
    keys: HashMap<u64, usize>,
    hasher: RandomState,
    /// Of a change run: how many leading parameters are assigned values, not the key.
    set_params: usize,
}

impl Run {
    pub fn new(rel_id: u32, kind: RunKind, ordered: bool, collapsible: bool) -> Run {
        let set_params = match &kind {
            RunKind::Change { shape } => {
                shape.get(2..).unwrap_or_default().iter().filter(|&&bits| bits & SET != 0).count()
            }
            RunKind::Insert => 0,
        };
        Run {
            rel_id,
            kind,
            mode: Mode::Holding,
            ordered,
            collapsible,
            held: Vec::new(),
            copy: CopyBatch::default(),
            set: SetBatch::default(),
            keys: HashMap::new(),
            hasher: RandomState::new(),
            set_params,
        }
    }

    /// Claims the key of a change's `params` for the next row of the run, unless a row of
    /// the run has it (or another key with its hash) already: so a run's keys stay distinct.
    /// Once claimed, the caller must add the row, or end the run. Row-by-row runs keep no
    /// keys: every key is claimed.
    pub fn claim_key(&mut self, params: &[TextParam]) -> KeyClaim {
        let next = match self.mode {
            Mode::RowByRow | Mode::Copy => return KeyClaim::Claimed,
            Mode::Holding => self.held.len(),
            Mode::Set => self.set.len(),
        };
        let key = params.get(self.set_params..).unwrap_or_default();
        let mut hasher = self.hasher.build_hasher();
        for param in key {
            param.0.hash(&mut hasher);
        }
        let at = *self.keys.entry(hasher.finish()).or_insert(next);
        if at == next {
            return KeyClaim::Claimed;
        }
        let row = match self.mode {
            Mode::Holding => self.held.get(at).map(|row| row.params.as_slice()),
            _ => self.set.row(at),
        };
        let same = row
            .and_then(|row| row.get(self.set_params..))
            .is_some_and(|row| row.len() == key.len() && row.iter().zip(key).all(|(a, b)| a.0 == b.0));
        if same {
            KeyClaim::Existing(at)
        } else {
            KeyClaim::Clash
        }
    }

    /// Forgets the keys: the set-based batch holding them went out.
    pub fn clear_keys(&mut self) {
        self.keys.clear();
    }
}

/// The open runs, in the order they were opened, which is the order they go out at commit;
/// at most one per table.
#[derive(Default)]
pub(super) struct Runs {
    open: Vec<Run>,
}

/// The position of an open run among [`Runs`]. Since runs keep the order they were opened
/// in, the position of a run shifts when one opened before it leaves: a `RunIndex` holds
/// only until the next [`Runs::remove`], [`Runs::take_all`], [`Runs::take_all_but`] or
/// [`Runs::clear`], and is never kept beyond the change being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunIndex(usize);

impl Runs {
    /// The position of the table's open run.
    pub fn of_table(&self, rel_id: u32) -> Option<RunIndex> {
        self.open.iter().position(|run| run.rel_id == rel_id).map(RunIndex)
    }

    /// Another table has an open run that must keep its order.
    pub fn others_ordered(&self, rel_id: u32) -> bool {
        self.open.iter().any(|run| run.ordered && run.rel_id != rel_id)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds a run after the open ones; returns its position.
    pub fn push(&mut self, run: Run) -> RunIndex {
        self.open.push(run);
        RunIndex(self.open.len() - 1)
    }

    /// Takes a run out; the runs opened after it move up.
    pub fn remove(&mut self, at: RunIndex) -> Run {
        self.open.remove(at.0)
    }

    /// Takes every open run, in the order they were opened.
    pub fn take_all(&mut self) -> Vec<Run> {
        std::mem::take(&mut self.open)
    }

    /// Takes every open run but the table's, in the order they were opened.
    pub fn take_all_but(&mut self, rel_id: u32) -> Vec<Run> {
        if self.open.iter().all(|run| run.rel_id == rel_id) {
            return Vec::new();
        }
        let (keep, take): (Vec<Run>, Vec<Run>) = self.take_all().into_iter().partition(|run| run.rel_id == rel_id);
        self.open = keep;
        take
    }

    pub fn clear(&mut self) {
        self.open.clear();
    }
}

impl std::ops::Index<RunIndex> for Runs {
    type Output = Run;

    fn index(&self, at: RunIndex) -> &Run {
        &self.open[at.0]
    }
}

impl std::ops::IndexMut<RunIndex> for Runs {
    fn index_mut(&mut self, at: RunIndex) -> &mut Run {
        &mut self.open[at.0]
    }
}
