-- The first bytes of each incremental snapshot row's body as written (its length and checksum),
-- as V5 added for full rows: a broker's local copy of the row is used only when they match.
ALTER TABLE labaid_delta ADD COLUMN head bytea;
