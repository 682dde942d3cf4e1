-- Capture: the order a snapshot's last_key was read in, one element per
-- column of the chunking key: its name, type and collation. A table's key
-- can change while a snapshot is under way (a new primary key or replica
-- identity, a column's type or collation, a pgcourier that chunks by another
-- index); resuming from a last_key read in another order would skip rows, so
-- the snapshot starts over instead. NULL with no last_key, and in progress
-- written before this version, which chunked by the primary key, else by the
-- replica identity's index.
ALTER TABLE pgcourier.snapshot_progress ADD COLUMN key_columns text[];
