-- The first bytes of each full snapshot row's body as written (its length and checksum), so a
-- broker that kept a local copy of the row can tell, without fetching the body, whether its copy
-- is this row's. Additive: a format-3 broker that knows nothing of it ignores it.
ALTER TABLE labaid_snapshot ADD COLUMN head bytea;
