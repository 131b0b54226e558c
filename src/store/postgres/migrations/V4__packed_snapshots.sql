-- Snapshot bodies (full and incremental) compressed by the broker: `packing` says how (0: stored
-- as written, as earlier builds wrote them; 1: zstd frames). Format 3 stops a broker that knows
-- nothing of `packing` from misreading a compressed body; rows of formats 1 and 2 are still read.
ALTER TABLE labaid_snapshot ADD COLUMN packing smallint NOT NULL DEFAULT 0;
ALTER TABLE labaid_delta ADD COLUMN packing smallint NOT NULL DEFAULT 0;
UPDATE labaid_store SET format = 3 WHERE id = 1 AND format < 3;
