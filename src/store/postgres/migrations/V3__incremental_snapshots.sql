-- Incremental snapshot rows: the requests changed since the snapshot row before (full or
-- incremental), in the file store's incremental snapshot format. Each applies only to the state
-- its `after` names. Journal rows stay until the next full snapshot row, so a broker that knows
-- nothing of this table (format 2) still recovers from the full row and the journal; the format
-- stamp stays 2.
CREATE TABLE labaid_delta (
    lsn bigint PRIMARY KEY,
    after bigint NOT NULL,
    epoch bigint NOT NULL,
    body bytea NOT NULL
);

-- Snapshot bodies are stored uncompressed: a restart reads them whole, and decompressing tens of
-- megabytes on the server took longer than sending them.
ALTER TABLE labaid_snapshot ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE labaid_delta ALTER COLUMN body SET STORAGE EXTERNAL;
