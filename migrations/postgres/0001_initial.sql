-- The metadata index on PostgreSQL: the same tables as the SQLite schema
-- (migrations/sqlite), with the same meaning.
--
-- Every text column uses the "C" collation: comparisons and ORDER BY are
-- by code point (= UTF-8 byte order), exactly like SQLite's BINARY, so
-- both backends sort results identically and a literal-prefix range
-- `global_path >= 'a/' AND global_path < 'a0'` is served by the B-tree
-- indexes whatever the database's default collation is.
--
-- Timestamps are timestamptz (microsecond resolution; the server truncates
-- finer input before storing, as the SQLite store does).

CREATE TABLE backups (
    id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    host      TEXT COLLATE "C" NOT NULL,
    timestamp TIMESTAMPTZ      NOT NULL
);
-- hosts() and per-host listings.
CREATE INDEX backups_host_timestamp ON backups (host, timestamp);
-- The newest backups of all hosts (the web page).
CREATE INDEX backups_timestamp ON backups (timestamp);

CREATE TABLE datasets (
    backup_id   TEXT COLLATE "C" NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    id          TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    source      TEXT COLLATE "C" NOT NULL,
    snapshot_id TEXT COLLATE "C" NOT NULL,
    total_files BIGINT           NOT NULL,
    total_bytes BIGINT           NOT NULL,
    bytes_added BIGINT           NOT NULL,
    duration    BIGINT           NOT NULL,
    PRIMARY KEY (backup_id, id)
);

-- One row per atom version. host, timestamp and global_path are copies of
-- the backup's and dataset's fields so that find_atoms filters and ranks
-- on this table alone.
CREATE TABLE atoms (
    backup_id   TEXT COLLATE "C" NOT NULL,
    dataset_id  TEXT COLLATE "C" NOT NULL,
    -- Atom name within its dataset.
    name        TEXT COLLATE "C" NOT NULL,
    -- Atom.path (file handler: path relative to the source root), '' if none.
    path        TEXT COLLATE "C" NOT NULL,
    -- source/dataset/atom: what find patterns match.
    global_path TEXT COLLATE "C" NOT NULL,
    host        TEXT COLLATE "C" NOT NULL,
    timestamp   TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (backup_id, dataset_id, name),
    FOREIGN KEY (backup_id, dataset_id) REFERENCES datasets (backup_id, id) ON DELETE CASCADE
);
-- Pattern lookups: equality or literal-prefix range on global_path; the
-- walk over distinct paths and the newest-N seek per path (num_versions).
CREATE INDEX atoms_global_path_timestamp ON atoms (global_path, timestamp);
-- The same restricted to one host.
CREATE INDEX atoms_host_global_path_timestamp ON atoms (host, global_path, timestamp);

-- Latest report of running jobs per host (JSON array of JobStatus, kept as
-- text: jsonb refuses the \u0000 escape a job's file name may carry).
CREATE TABLE active_jobs (
    host     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    received TIMESTAMPTZ      NOT NULL,
    jobs     TEXT             NOT NULL
);
