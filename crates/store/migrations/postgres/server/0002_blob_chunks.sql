-- Attachment ciphertext kept in the database (server nodes sharing one
-- database), in chunks; an upload in progress is under 'tmp:…'.
CREATE TABLE blob_chunks (id TEXT NOT NULL, n BIGINT NOT NULL, data BYTEA NOT NULL,
    created BIGINT NOT NULL, PRIMARY KEY (id, n));
