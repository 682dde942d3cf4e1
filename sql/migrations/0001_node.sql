-- The node this database belongs to. pgcourier init records it once; a later
-- init with another node id is refused, so two configs can never share (and
-- corrupt) one database's outbox or progress.
CREATE TABLE pgcourier.node (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id         text        NOT NULL,
    role       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgcourier.node IS 'The pgcourier node that owns this database (one row).';
