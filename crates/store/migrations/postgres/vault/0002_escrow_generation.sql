-- The escrow generation each envelope is sealed to (escrow-key rotation):
-- how many are still under a generation is a query, not a decryption.
ALTER TABLE envelopes ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
CREATE INDEX envelopes_generation ON envelopes(generation);
