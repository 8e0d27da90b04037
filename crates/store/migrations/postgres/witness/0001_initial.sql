-- A witness's key and the logs it follows (PostgreSQL).
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE logs (origin TEXT PRIMARY KEY, vkey TEXT NOT NULL, size BIGINT NOT NULL DEFAULT 0, root BYTEA);
