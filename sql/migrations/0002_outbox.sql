-- Capture: what this node captured from its own database, as encoded batches
-- (see docs/batch-format.md), waiting to be shipped upstream.

-- One row per replication slot the node captures through. epoch names the
-- slot's incarnation: a recreated slot (or database) starts a new epoch at
-- seq 1. next_seq and last_commit_lsn change in the same transaction as the
-- outbox insert, so after any crash capture skips exactly the transactions the
-- outbox already holds.
CREATE TABLE pgcourier.capture_state (
    slot            text        PRIMARY KEY,
    epoch           bigint      NOT NULL,
    next_seq        bigint      NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    last_commit_lsn pg_lsn      NOT NULL DEFAULT '0/0',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The outbox. A batch stays until its final destination acknowledged it.
CREATE TABLE pgcourier.outbox (
    epoch            bigint      NOT NULL,
    seq              bigint      NOT NULL CHECK (seq >= 1),
    first_commit_lsn pg_lsn      NOT NULL,
    last_commit_lsn  pg_lsn      NOT NULL,
    last_commit_time timestamptz NOT NULL,
    transactions     integer     NOT NULL,
    rows             integer     NOT NULL,
    payload          bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (epoch, seq)
);

-- Batch payloads are already compressed.
ALTER TABLE pgcourier.outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
