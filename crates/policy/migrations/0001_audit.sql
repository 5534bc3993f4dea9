-- The audit log: one row per decision, verdict or exec, each hash-chained to the one before.
-- Rows are only ever inserted; `sequence` has no gaps unless someone deleted a row.
PRAGMA application_id = 1398361665; -- "SYNA"

CREATE TABLE audit (
    sequence INTEGER PRIMARY KEY NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;

CREATE INDEX audit_by_principal ON audit (principal, sequence);
CREATE INDEX audit_by_kind ON audit (kind, sequence);
