-- Attachment ciphertext kept in the database (server nodes sharing one
-- database), in chunks; an upload in progress is under 'tmp:…'.
CREATE TABLE blob_chunks (id TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
    created INTEGER NOT NULL, PRIMARY KEY (id, n));
