-- Delivery: which outbox batches their final destination has applied, which
-- a relay holds, and how each route upstream fared (see docs/operations.md);
-- and upstream, the encoded batch a source is blocked on, so that an
-- operator can park it (pgcourier park).

-- acked_at is set when an applying node confirmed the batch applied (or a
-- duplicate); the batch is deleted once it is older than the retention.
-- relayed_at is set when a relay confirmed it stored the batch: the batch
-- stays pending until the final destination's confirmation comes back.
ALTER TABLE pgcourier.outbox
    ADD COLUMN acked_at   timestamptz,
    ADD COLUMN relayed_at timestamptz;

CREATE INDEX outbox_pending ON pgcourier.outbox (epoch, seq) WHERE acked_at IS NULL;
CREATE INDEX outbox_acked ON pgcourier.outbox (acked_at) WHERE acked_at IS NOT NULL;

-- One row per configured route: its last success and last error, for
-- pgcourier status. Written by the router when something changes.
CREATE TABLE pgcourier.route_state (
    route           text        PRIMARY KEY,  -- the route's name, such as "route[0] rest"
    target          text        NOT NULL,     -- where it leads, without secrets
    last_success_at timestamptz,
    last_seq        bigint,                   -- the last seq it delivered
    last_error      text,
    last_error_at   timestamptz,
    needs_action    boolean     NOT NULL DEFAULT false, -- the last error is one someone must fix (a refused token, password, batch)
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The blocked batch itself (wire format), as the applier last received it.
ALTER TABLE pgcourier.blocked ADD COLUMN payload bytea;

-- Raises SQLSTATE PGC01, naming the table, unless ok: a statement the
-- applier ran on the bet that no change needs judging (an insert of a new
-- key, an update or a delete of a row the source wrote last) lost the bet;
-- the applier then applies the batch again with judged statements.
CREATE FUNCTION pgcourier.apply_fast_check(ok boolean, table_schema text, table_name text) RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'PGC01', SCHEMA = table_schema, TABLE = table_name,
            MESSAGE = format('pgcourier apply: %I.%I: a change needs judging', table_schema, table_name);
    END IF;
    RETURN true;
END
$$;

-- The conflict policy the node applies with ([apply] conflict), so that a
-- postgres route writing straight into this database from below applies
-- with the same policy as the node's own listener.
ALTER TABLE pgcourier.node ADD COLUMN conflict text;
