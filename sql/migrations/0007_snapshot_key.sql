-- Capture: the names of the columns a snapshot's last_key is in. A table's
-- chunking key can change (a new primary key or replica identity, or a
-- pgcourier that orders chunks by another index); a snapshot resuming with a
-- last_key of other columns would skip rows, so it starts over instead.
-- NULL for progress written before this version, which chunked by the
-- primary key, else by the replica identity's index.
ALTER TABLE pgcourier.snapshot_progress ADD COLUMN key_columns text[];
