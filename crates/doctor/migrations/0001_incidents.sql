-- The doctor's incidents: one row per incident, rewritten whole whenever it changes.
PRAGMA application_id = 1398361668; -- "SYND"
CREATE TABLE incidents (
    id TEXT PRIMARY KEY NOT NULL,
    check_name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'recovered')),
    severity TEXT NOT NULL CHECK (severity IN ('warning', 'critical')),
    first_seen_ms INTEGER NOT NULL,
    last_changed_ms INTEGER NOT NULL,
    recovered_at_ms INTEGER,
    occurrences INTEGER NOT NULL,
    -- JSON array of evidence lines, oldest first.
    evidence TEXT NOT NULL
) STRICT;
CREATE INDEX incidents_by_check ON incidents (check_name, last_changed_ms);
