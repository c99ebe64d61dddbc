-- What a restore needs without the backing up host's configuration
-- (issue 11); the same columns as the SQLite schema
-- (migrations/sqlite/0005_restore_record.sql). Every column is NULL in
-- records written before: a restore then falls back to the local
-- configuration. Adding a nullable column without a default rewrites no
-- rows.
ALTER TABLE datasets ADD COLUMN handler TEXT COLLATE "C";
ALTER TABLE datasets ADD COLUMN repository_id TEXT COLLATE "C";
ALTER TABLE atoms ADD COLUMN snapshot_path TEXT COLLATE "C";
ALTER TABLE atoms ADD COLUMN size BIGINT;
ALTER TABLE atoms ADD COLUMN files BIGINT;
ALTER TABLE atoms ADD COLUMN sha256 TEXT COLLATE "C";
