-- The Key Manager's tables and its audit log (PostgreSQL).
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE users (user_id TEXT PRIMARY KEY, roles TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE enrol_codes (code_hash BYTEA PRIMARY KEY, user_id TEXT NOT NULL, expires_at BIGINT NOT NULL);
CREATE TABLE devices (device TEXT PRIMARY KEY, user_id TEXT NOT NULL, cert BYTEA NOT NULL,
    status TEXT NOT NULL, issued_at BIGINT NOT NULL);
CREATE INDEX km_devices_user ON devices(user_id);
CREATE TABLE rooms (room TEXT PRIMARY KEY, seq BIGINT NOT NULL, state BYTEA NOT NULL);
CREATE TABLE room_log (room TEXT NOT NULL, seq BIGINT NOT NULL, entry BYTEA NOT NULL,
    hash BYTEA NOT NULL, PRIMARY KEY (room, seq));
CREATE TABLE room_keys (room TEXT NOT NULL, epoch BIGINT NOT NULL, wrapped BYTEA NOT NULL,
    created_ms BIGINT NOT NULL, PRIMARY KEY (room, epoch));
CREATE TABLE cases (case_id TEXT PRIMARY KEY, version BIGINT NOT NULL, blob BYTEA NOT NULL);
CREATE TABLE approvals (case_id TEXT NOT NULL, version BIGINT NOT NULL, custodian TEXT NOT NULL,
    blob BYTEA NOT NULL, PRIMARY KEY (case_id, version, custodian));
CREATE TABLE nonces (device TEXT NOT NULL, nonce BYTEA NOT NULL, ts BIGINT NOT NULL,
    PRIMARY KEY (device, nonce));
CREATE INDEX nonces_ts ON nonces(ts);
CREATE TABLE audit_log (idx BIGINT PRIMARY KEY, ts BIGINT NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BYTEA NOT NULL);
CREATE INDEX audit_room ON audit_log(room, idx);
CREATE INDEX audit_kind ON audit_log(kind, idx);
CREATE TABLE audit_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE escrow (id BIGINT PRIMARY KEY CHECK (id = 1), descriptor BYTEA NOT NULL);
CREATE TABLE escrow_shares (number BIGINT PRIMARY KEY, custodian TEXT NOT NULL, share BYTEA NOT NULL);
CREATE TABLE directory (kind TEXT NOT NULL, id TEXT NOT NULL, doc BYTEA NOT NULL, PRIMARY KEY (kind, id));
