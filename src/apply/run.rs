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

/// Whether a change's key is in the run already.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// Not yet: it is recorded as the next row's.
    New,
    /// The row at this position (held, or in the set-based batch) has it.
    At(usize),
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

    /// Looks the key of a change's `params` up among the run's rows, recording it as the
    /// next row's when new. Row-by-row runs keep no keys: every row is new.
    pub fn find_key(&mut self, params: &[TextParam]) -> Key {
        let next = match self.mode {
            Mode::RowByRow | Mode::Copy => return Key::New,
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
            return Key::New;
        }
        let row = match self.mode {
            Mode::Holding => self.held.get(at).map(|row| row.params.as_slice()),
            _ => self.set.row(at),
        };
        let same = row
            .and_then(|row| row.get(self.set_params..))
            .is_some_and(|row| row.len() == key.len() && row.iter().zip(key).all(|(a, b)| a.0 == b.0));
        if same {
            Key::At(at)
        } else {
            Key::Clash
        }
    }

    /// Forgets the keys: the set-based batch holding them went out.
    pub fn clear_keys(&mut self) {
        self.keys.clear();
    }
}

/// The open runs, in the order they were opened, which is the order they go out at commit.
#[derive(Default)]
pub(super) struct Runs {
    pub open: Vec<Run>,
}

impl Runs {
    /// The position of the table's open run.
    pub fn find(&self, rel_id: u32) -> Option<usize> {
        self.open.iter().position(|run| run.rel_id == rel_id)
    }

    /// Another table has an open run that must keep its order.
    pub fn others_ordered(&self, rel_id: u32) -> bool {
        self.open.iter().any(|run| run.ordered && run.rel_id != rel_id)
    }

    pub fn clear(&mut self) {
        self.open.clear();
    }
}
