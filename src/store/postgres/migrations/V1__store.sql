-- labaid's PostgreSQL store: the format stamp, the leadership lease, the journal and snapshots.
CREATE TABLE labaid_store (
    id integer PRIMARY KEY CHECK (id = 1),
    format integer NOT NULL
);
INSERT INTO labaid_store (id, format) VALUES (1, 1);

-- One row: the leader's epoch, who holds it, where it serves, and until when (the database's clock).
CREATE TABLE labaid_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    address text NOT NULL,
    expires timestamptz NOT NULL
);
INSERT INTO labaid_lease (id, epoch, holder, address, expires) VALUES (1, 0, '', '', '-infinity');

-- One row per journaled entry, numbered from 0 with no gaps.
CREATE TABLE labaid_journal (
    lsn bigint PRIMARY KEY,
    epoch bigint NOT NULL,
    body bytea NOT NULL
);

-- The state after `lsn` entries; only the newest is kept.
CREATE TABLE labaid_snapshot (
    lsn bigint PRIMARY KEY,
    epoch bigint NOT NULL,
    body bytea NOT NULL
);
