-- MLS rooms (ADR 0028): the server as delivery service. Key packages per
-- device (one-time, and one last-resort), each group's public state as the
-- server follows it, its commits in epoch order, and Welcomes waiting for
-- the devices a commit added.
CREATE TABLE mls_key_packages (
    device TEXT NOT NULL,
    kp_ref TEXT NOT NULL,
    body BYTEA NOT NULL,
    last_resort BIGINT NOT NULL,
    PRIMARY KEY (device, kp_ref)
);
CREATE TABLE mls_groups (
    room TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    state BYTEA NOT NULL,
    -- when the server first saw a leaf in this epoch that may not be there
    -- (revoked device, disabled user, non-member); NULL when none
    stale_since BIGINT
);
CREATE TABLE mls_commits (
    room TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (room, epoch)
);
CREATE TABLE mls_welcomes (
    device TEXT NOT NULL,
    room TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (device, room)
);
