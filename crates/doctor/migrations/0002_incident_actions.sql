-- What the doctor did about each incident: a JSON array of lines, oldest first.
ALTER TABLE incidents ADD COLUMN actions TEXT NOT NULL DEFAULT '[]';
