-- The compliance vault's tables and its audit log (SQLite). IF NOT EXISTS: a
-- database made before versioned migrations takes this version as is.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS envelopes (message_id TEXT PRIMARY KEY, room TEXT NOT NULL, ts INTEGER NOT NULL,
    ciphertext_sha256 BLOB NOT NULL, envelope BLOB NOT NULL, envelope_sha256 BLOB NOT NULL,
    received_ms INTEGER NOT NULL, log_index INTEGER NOT NULL, device TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS envelopes_ts ON envelopes(ts);
CREATE INDEX IF NOT EXISTS envelopes_room ON envelopes(room, ts);
CREATE UNIQUE INDEX IF NOT EXISTS envelopes_log ON envelopes(log_index);
CREATE TABLE IF NOT EXISTS tokens (period INTEGER NOT NULL, token BLOB NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (period, token, message_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_msg ON tokens(message_id);
CREATE TABLE IF NOT EXISTS audit_log (idx INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_room ON audit_log(room, idx);
CREATE INDEX IF NOT EXISTS audit_kind ON audit_log(kind, idx);
CREATE TABLE IF NOT EXISTS audit_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (message_id TEXT PRIMARY KEY, deleted_ms INTEGER NOT NULL);
