-- Actions waiting for an operator's approval, and how each was decided.
CREATE TABLE pending_actions (
    id TEXT PRIMARY KEY NOT NULL,
    incident_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    proposed_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'denied')),
    decided_by TEXT NOT NULL DEFAULT '',
    decided_ms INTEGER,
    outcome TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX pending_actions_by_state ON pending_actions (state, proposed_ms);
