-- Apply: what this node applied from each source, what it refused, and why
-- (see docs/apply.md). Every table here changes in the same transaction as
-- the data it describes, except pgcourier.blocked, which records a batch
-- that could not be applied and so is written after its rollback.

-- One row per source: the position of its stream on this node. A batch is
-- applied only if it is the next one: (epoch, applied_seq + 1), or seq 1 of
-- a newer epoch. applied_seq changes in the batch's own transaction, so a
-- batch takes effect exactly once however often it arrives.
CREATE TABLE pgcourier.source_progress (
    source           text        PRIMARY KEY,
    epoch            bigint      NOT NULL,
    applied_seq      bigint      NOT NULL CHECK (applied_seq >= 1),
    applied_at       timestamptz NOT NULL DEFAULT now(),    -- when the last batch committed here
    last_commit_lsn  pg_lsn,                                -- the source's commit LSN of that batch's last transaction
    last_commit_time timestamptz,                           -- and its commit time on the source
    batches          bigint      NOT NULL DEFAULT 0,        -- batches applied or parked since the first
    rows             bigint      NOT NULL DEFAULT 0,        -- row changes in them
    conflicts        bigint      NOT NULL DEFAULT 0,        -- row changes of them recorded in conflicts
    first_applied_at timestamptz NOT NULL DEFAULT now()
);

-- Every epoch of every source seen here. The current one is also in
-- source_progress; a replaced one keeps the last seq applied from it, so a
-- late copy of one of its batches is recognised as a duplicate.
CREATE TABLE pgcourier.source_epochs (
    source     text        NOT NULL,
    epoch      bigint      NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,          -- when a newer epoch replaced it
    final_seq  bigint,               -- the last seq applied from it, once replaced
    PRIMARY KEY (source, epoch)
);

-- Row changes that were not applied as they came, kept whole so that an
-- operator can list, inspect and re-apply them (pgcourier conflicts). Values
-- are text as Postgres prints them (JSON null for SQL NULL), keyed by column
-- name.
CREATE TABLE pgcourier.conflicts (
    id                 bigserial   PRIMARY KEY,
    source             text        NOT NULL,  -- the source of the incoming change
    epoch              bigint      NOT NULL,
    seq                bigint      NOT NULL,
    position           integer,               -- the change's index in its batch (0-based); NULL for a whole parked batch without contents
    commit_lsn         pg_lsn,                -- the source transaction's commit LSN
    commit_time        timestamptz,           -- and its commit time on the source
    table_schema       text,
    table_name         text,
    op                 text        NOT NULL,  -- insert, update, delete, truncate (or batch)
    rule               text        NOT NULL,  -- why: last_writer, key_collision, reject, needs_resync, truncate, parked
    incoming           jsonb,                 -- the incoming row: the new image, or the old key of a delete
    incoming_old       jsonb,                 -- the old image an update carried (changed key, REPLICA IDENTITY FULL)
    unchanged          text[],                -- columns the source left out as unchanged TOAST values
    stored             jsonb,                 -- the row upstream when the change was refused
    stored_source      text,                  -- who wrote that row version: a source id, or this node's id for a local edit
    stored_commit_time timestamptz,           -- and when
    detail             text,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,           -- set by whoever resolves it
    resolution         text
);

CREATE INDEX conflicts_batch ON pgcourier.conflicts (source, epoch, seq);
CREATE INDEX conflicts_open ON pgcourier.conflicts (recorded_at) WHERE resolved_at IS NULL;

-- The batch each source's stream is stuck on, if any: the error that keeps
-- it from applying, and a hint. Written outside the failed transaction;
-- removed when the source's next batch is applied or parked.
CREATE TABLE pgcourier.blocked (
    source      text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    seq         bigint      NOT NULL,
    sqlstate    text,
    table_name  text,                   -- schema.table, when the error concerns one
    column_name text,
    error       text        NOT NULL,
    hint        text,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 1,
    retry_at    timestamptz             -- the earliest time the applier tries again
);

-- Raises internal_error unless ok: lets a multi-statement apply abort its
-- transaction when a statement did less than it was asked to.
CREATE FUNCTION pgcourier.apply_check(ok boolean, message text) RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'internal_error', MESSAGE = 'pgcourier apply: ' || message;
    END IF;
    RETURN true;
END
$$;
