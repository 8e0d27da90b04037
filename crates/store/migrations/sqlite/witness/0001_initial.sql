-- A witness's key and the logs it follows (SQLite).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, vkey TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, root BLOB);
