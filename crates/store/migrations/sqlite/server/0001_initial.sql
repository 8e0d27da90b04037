-- The messaging server's tables (SQLite). Written with IF NOT EXISTS so that
-- a database made before versioned migrations takes this version as is.
CREATE TABLE IF NOT EXISTS tenants (tenant TEXT PRIMARY KEY, km_pk BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, tenant TEXT NOT NULL, user_id TEXT NOT NULL,
    cert BLOB NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS devices_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS disabled_users (user_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tenant_notices (tenant TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL,
    notice BLOB NOT NULL, PRIMARY KEY (tenant, kind));
CREATE TABLE IF NOT EXISTS connections (id TEXT PRIMARY KEY, from_user TEXT NOT NULL, to_user TEXT NOT NULL,
    request BLOB NOT NULL, answer BLOB, removal BLOB, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS connections_from ON connections(from_user);
CREATE INDEX IF NOT EXISTS connections_to ON connections(to_user);
-- Capture notices once had a table of their own: move what an old database
-- holds there into tenant_notices.
CREATE TABLE IF NOT EXISTS capture_policy (tenant TEXT PRIMARY KEY, ts INTEGER NOT NULL, notice BLOB NOT NULL);
INSERT OR IGNORE INTO tenant_notices (tenant, kind, version, notice)
    SELECT tenant, 'capture', ts, notice FROM capture_policy;
DROP TABLE capture_policy;
CREATE TABLE IF NOT EXISTS room_directory (room TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS room_directory_tenant ON room_directory(tenant);
CREATE TABLE IF NOT EXISTS room_tenant (room TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS room_tenant_tenant ON room_tenant(tenant);
CREATE TABLE IF NOT EXISTS verdicts (room TEXT NOT NULL, message_id TEXT NOT NULL, device TEXT NOT NULL,
    verdict BLOB NOT NULL, PRIMARY KEY (room, message_id, device));
CREATE TABLE IF NOT EXISTS user_standing (user_id TEXT PRIMARY KEY, disabled INTEGER NOT NULL, ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shredded_notices (room TEXT NOT NULL, notice BLOB NOT NULL,
    PRIMARY KEY (room, notice)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS room_log (room TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (room, seq));
CREATE TABLE IF NOT EXISTS room_members (room TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (user_id, room));
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,
    msg_id TEXT NOT NULL UNIQUE, epoch INTEGER NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL,
    header BLOB NOT NULL, ciphertext BLOB NOT NULL, sig BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room, seq);
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, room TEXT NOT NULL, device TEXT NOT NULL,
    size INTEGER NOT NULL);
