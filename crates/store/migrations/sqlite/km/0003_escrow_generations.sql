-- Escrow-key rotation: every live generation of the escrow key with its
-- custodians' sealed shares. The key from before rotation is generation 1.
CREATE TABLE escrow_keys (generation INTEGER PRIMARY KEY, descriptor BLOB NOT NULL);
INSERT INTO escrow_keys (generation, descriptor) SELECT 1, descriptor FROM escrow;
CREATE TABLE escrow_key_shares (generation INTEGER NOT NULL, number INTEGER NOT NULL,
    custodian TEXT NOT NULL, share BLOB NOT NULL, PRIMARY KEY (generation, number));
INSERT INTO escrow_key_shares (generation, number, custodian, share)
    SELECT 1, number, custodian, share FROM escrow_shares;
CREATE INDEX escrow_key_shares_custodian ON escrow_key_shares(custodian, generation);
DROP TABLE escrow_shares;
DROP TABLE escrow;
