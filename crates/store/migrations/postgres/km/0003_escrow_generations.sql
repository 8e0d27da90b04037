-- Escrow-key rotation: every live generation of the escrow key with its
-- custodians' sealed shares. The key from before rotation is generation 1.
CREATE TABLE escrow_keys (generation BIGINT PRIMARY KEY, descriptor BYTEA NOT NULL);
INSERT INTO escrow_keys (generation, descriptor) SELECT 1, descriptor FROM escrow;
CREATE TABLE escrow_key_shares (generation BIGINT NOT NULL, number BIGINT NOT NULL,
    custodian TEXT NOT NULL, share BYTEA NOT NULL, PRIMARY KEY (generation, number));
INSERT INTO escrow_key_shares (generation, number, custodian, share)
    SELECT 1, number, custodian, share FROM escrow_shares;
CREATE INDEX escrow_key_shares_custodian ON escrow_key_shares(custodian, generation);
DROP TABLE escrow_shares;
DROP TABLE escrow;
