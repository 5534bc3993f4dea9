-- The memory store. Shipped migrations are never edited: change the schema in a new file.

-- Marks the file as a SynOS memory database ("SYNM"), so a foreign SQLite file is recognised
-- and refused instead of being migrated.
PRAGMA application_id = 1398361677;

CREATE TABLE memories (
    -- Stable row number for the full-text index (an implicit rowid may change on VACUUM).
    sequence        INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    scope           TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    text            TEXT    NOT NULL,
    -- NFKC, lower case, single spaces: what "the same text" means for duplicates.
    normalized_text TEXT    NOT NULL,
    importance      REAL    NOT NULL,
    source          TEXT    NOT NULL,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    accessed_ms     INTEGER NOT NULL,
    expires_ms      INTEGER,
    -- A JSON object of string values.
    metadata        TEXT    NOT NULL,
    -- Little-endian f32 values, unit length; NULL until the model has embedded the text.
    embedding       BLOB,
    embedding_model TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    UNIQUE (scope, normalized_text)
);

CREATE INDEX memories_by_scope ON memories (scope, sequence);
CREATE INDEX memories_by_expiry ON memories (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE INDEX memories_by_embedding_model ON memories (embedding_model);

-- Earlier versions of a memory, kept when a near duplicate or an update replaced them.
CREATE TABLE memory_versions (
    memory_sequence INTEGER NOT NULL REFERENCES memories (sequence) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    text            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    importance      REAL    NOT NULL,
    metadata        TEXT    NOT NULL,
    replaced_ms     INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    PRIMARY KEY (memory_sequence, version)
) WITHOUT ROWID;

-- Full-text index: the text, and the scope as one token (scope_key, "scope" + hex of the scope
-- + "0": one alphanumeric token per scope that no stemmer changes), so a search names its
-- scopes inside the MATCH expression and the index intersects them before ranking.
-- Contentless: the text lives once, in memories.
CREATE VIRTUAL TABLE memories_text USING fts5 (
    text,
    scope_key,
    content = '',
    contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER memories_text_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_text (rowid, text, scope_key)
    VALUES (new.sequence, new.text, 'scope' || hex(new.scope) || '0');
END;

CREATE TRIGGER memories_text_delete AFTER DELETE ON memories BEGIN
    DELETE FROM memories_text WHERE rowid = old.sequence;
END;

CREATE TRIGGER memories_text_update AFTER UPDATE OF text ON memories BEGIN
    DELETE FROM memories_text WHERE rowid = old.sequence;
    INSERT INTO memories_text (rowid, text, scope_key)
    VALUES (new.sequence, new.text, 'scope' || hex(new.scope) || '0');
END;
