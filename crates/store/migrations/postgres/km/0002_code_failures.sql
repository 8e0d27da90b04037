-- Wrong tries against a user's enrolment code; at a limit the code is burned.
ALTER TABLE enrol_codes ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
