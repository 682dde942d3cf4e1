-- Parts: a source transaction too large for one batch travels as several
-- batches in a row, every one but the last marked continued (see
-- docs/batch-format.md). Capture writes the parts as the transaction streams
-- in, so its memory stays bounded; the applier applies them all in one
-- transaction when the last arrives.

-- The transaction whose parts capture is writing: its commit LSN and the
-- changes of it the outbox already holds. They change in the same
-- transaction as each part's outbox insert, so a restarted capture skips
-- exactly the changes already written when the slot sends the transaction
-- again. part_lsn is NULL when no transaction is in parts.
ALTER TABLE pgcourier.capture_state
    ADD COLUMN part_lsn  pg_lsn,
    ADD COLUMN part_rows bigint NOT NULL DEFAULT 0 CHECK (part_rows >= 0);

-- Upstream: the parts received of a source transaction whose last part has
-- not arrived yet, as the source sent them (wire format). Staging a part
-- advances the source's progress like applying a batch does; the last part's
-- transaction applies every staged part before its own changes and deletes
-- them, so the source transaction takes effect whole or not at all.
CREATE TABLE pgcourier.staged (
    source    text        NOT NULL,
    epoch     bigint      NOT NULL,
    seq       bigint      NOT NULL CHECK (seq >= 1),
    first_seq bigint      NOT NULL CHECK (first_seq <= seq), -- the seq of the transaction's first part
    rows      integer     NOT NULL,
    payload   bytea       NOT NULL,
    staged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, epoch, seq)
);

-- Payloads are already compressed.
ALTER TABLE pgcourier.staged ALTER COLUMN payload SET STORAGE EXTERNAL;
