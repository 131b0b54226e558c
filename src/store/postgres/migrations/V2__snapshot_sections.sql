-- Snapshot rows are written in the file store's sectioned snapshot format from here on. Format 2
-- stops a broker that knows only format 1 (one postcard value per row) from misreading them;
-- rows in format 1 are still read.
UPDATE labaid_store SET format = 2 WHERE id = 1 AND format < 2;
