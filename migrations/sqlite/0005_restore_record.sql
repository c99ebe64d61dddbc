-- What a restore needs without the backing up host's configuration
-- (issue 11). Every column is NULL in records written before: a restore
-- then falls back to the local configuration.
--
-- datasets.handler: the handler type that made the snapshot ('file',
-- 'pipe'); datasets.repository_id: the identity of the repository holding
-- the snapshot (restic: its repository id).
ALTER TABLE datasets ADD COLUMN handler TEXT;
ALTER TABLE datasets ADD COLUMN repository_id TEXT;
-- atoms.snapshot_path: the atom's absolute path inside the snapshot;
-- atoms.size: bytes (pipe: streamed, file: total of its files);
-- atoms.files: a file atom's number of files; atoms.sha256: a pipe atom's
-- SHA-256 of its stream (lowercase hex).
ALTER TABLE atoms ADD COLUMN snapshot_path TEXT;
ALTER TABLE atoms ADD COLUMN size INTEGER;
ALTER TABLE atoms ADD COLUMN files INTEGER;
ALTER TABLE atoms ADD COLUMN sha256 TEXT;
