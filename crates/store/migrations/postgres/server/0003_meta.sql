-- Values every node of a server shares: the session key, the operator
-- token's hash, the cluster's id; and the login nonces used, so that a
-- login is good once on any node.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE login_nonces (nonce BYTEA PRIMARY KEY, ts BIGINT NOT NULL);
CREATE INDEX login_nonces_ts ON login_nonces(ts);
