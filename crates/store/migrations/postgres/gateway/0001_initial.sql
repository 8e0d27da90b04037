-- A gateway's state (PostgreSQL): its bridged conversations and how far
-- each was relayed, the transactions the network pushed, the inbound
-- messages not yet posted into Cloister, and what could not be delivered.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE conversations (
    room TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    contact TEXT NOT NULL,
    remote TEXT,
    opener TEXT,
    cursor BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX conversations_remote ON conversations (network, remote);
CREATE TABLE transactions (
    network TEXT NOT NULL,
    txn TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (network, txn)
);
-- Every event taken (a retried one in a new transaction is taken once,
-- also after it left the inbox).
CREATE TABLE seen_events (
    network TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (network, remote_id)
);
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
    network TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    body BYTEA NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (network, remote_id)
);
CREATE TABLE failures (
    id BIGSERIAL PRIMARY KEY,
    direction TEXT NOT NULL,
    room TEXT,
    item TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
