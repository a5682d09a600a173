-- walship's own schema in a replica's database. Applied once, in one transaction, by the
-- applier at connect (see src/apply/migrate.rs); later versions go in 0002_*.sql and so on.

CREATE SCHEMA IF NOT EXISTS walship;

-- Which of these files ran, and when.
CREATE TABLE walship.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row: the last log entry whose changes are committed in this database. It is written in
-- the same transaction as those changes, so it never runs ahead of them nor behind them.
CREATE TABLE walship.progress (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    term          bigint NOT NULL,
    applied_index bigint NOT NULL,
    -- The leader WAL position just past the entry.
    end_lsn       pg_lsn NOT NULL,
    -- When the entry committed on the leader: lag in time is now() - commit_time.
    commit_time   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
