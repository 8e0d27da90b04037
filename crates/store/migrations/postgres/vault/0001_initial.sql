-- The compliance vault's tables and its audit log (PostgreSQL).
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE envelopes (message_id TEXT PRIMARY KEY, room TEXT NOT NULL, ts BIGINT NOT NULL,
    ciphertext_sha256 BYTEA NOT NULL, envelope BYTEA NOT NULL, envelope_sha256 BYTEA NOT NULL,
    received_ms BIGINT NOT NULL, log_index BIGINT NOT NULL, device TEXT NOT NULL);
CREATE INDEX envelopes_ts ON envelopes(ts);
CREATE INDEX envelopes_room ON envelopes(room, ts);
CREATE UNIQUE INDEX envelopes_log ON envelopes(log_index);
CREATE TABLE tokens (period BIGINT NOT NULL, token BYTEA NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (period, token, message_id));
CREATE INDEX tokens_msg ON tokens(message_id);
CREATE TABLE audit_log (idx BIGINT PRIMARY KEY, ts BIGINT NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BYTEA NOT NULL);
CREATE INDEX audit_room ON audit_log(room, idx);
CREATE INDEX audit_kind ON audit_log(kind, idx);
CREATE TABLE audit_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE tombstones (message_id TEXT PRIMARY KEY, deleted_ms BIGINT NOT NULL);
