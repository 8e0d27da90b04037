-- The Key Manager's tables and its audit log (SQLite). IF NOT EXISTS: a
-- database made before versioned migrations takes this version as is.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, roles TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrol_codes (code_hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, user_id TEXT NOT NULL, cert BLOB NOT NULL,
    status TEXT NOT NULL, issued_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS km_devices_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS room_log (room TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (room, seq));
CREATE TABLE IF NOT EXISTS room_keys (room TEXT NOT NULL, epoch INTEGER NOT NULL, wrapped BLOB NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (room, epoch));
CREATE TABLE IF NOT EXISTS cases (case_id TEXT PRIMARY KEY, version INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (case_id TEXT NOT NULL, version INTEGER NOT NULL, custodian TEXT NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (case_id, version, custodian));
CREATE TABLE IF NOT EXISTS nonces (device TEXT NOT NULL, nonce BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (device, nonce));
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces(ts);
CREATE TABLE IF NOT EXISTS audit_log (idx INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_room ON audit_log(room, idx);
CREATE INDEX IF NOT EXISTS audit_kind ON audit_log(kind, idx);
CREATE TABLE IF NOT EXISTS audit_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS escrow (id INTEGER PRIMARY KEY CHECK (id = 1), descriptor BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS escrow_shares (number INTEGER PRIMARY KEY, custodian TEXT NOT NULL, share BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS directory (kind TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (kind, id)) WITHOUT ROWID;
