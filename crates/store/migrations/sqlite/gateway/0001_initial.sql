-- A gateway's state (SQLite): its bridged conversations and how far each
-- was relayed, the transactions the network pushed, the inbound messages
-- not yet posted into Cloister, and what could not be delivered.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    room TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    contact TEXT NOT NULL,
    remote TEXT,
    opener TEXT,
    cursor INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_remote ON conversations (network, remote);
CREATE TABLE IF NOT EXISTS transactions (
    network TEXT NOT NULL,
    txn TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (network, txn)
);
-- Every event taken (a retried one in a new transaction is taken once,
-- also after it left the inbox).
CREATE TABLE IF NOT EXISTS seen_events (
    network TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (network, remote_id)
);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    network TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (network, remote_id)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    direction TEXT NOT NULL,
    room TEXT,
    item TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
