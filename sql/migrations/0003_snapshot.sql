-- Capture: progress of the initial snapshot of each captured table. A table
-- is snapshotted in key order, one chunk at a time; each chunk's progress is
-- recorded in the same transaction as the outbox batch that carries it, so a
-- crash resumes after the last chunk in the outbox.
CREATE TABLE pgcourier.snapshot_progress (
    slot          text        NOT NULL,
    table_name    text        NOT NULL, -- schema.table, quoted where needed
    done          boolean     NOT NULL DEFAULT false,
    last_key      text[],               -- key of the last row captured; NULL before the first chunk
    rows_done     bigint      NOT NULL DEFAULT 0,
    rows_estimate bigint      NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, table_name)
);
