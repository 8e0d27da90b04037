-- Wrong tries against a user's enrolment code; at a limit the code is burned.
ALTER TABLE enrol_codes ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
