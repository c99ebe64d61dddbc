-- The metadata index: backups, their datasets and the datasets' atoms,
-- plus the latest running-jobs report of each host.
--
-- Timestamps are INTEGER microseconds since the Unix epoch, UTC: they sort
-- numerically, compare cheaply, take 8 bytes in a table of millions of
-- rows and two of its indexes, and have PostgreSQL's timestamptz
-- resolution (sub-microsecond input is truncated).

CREATE TABLE backups (
    id        TEXT    NOT NULL PRIMARY KEY,
    host      TEXT    NOT NULL,
    timestamp INTEGER NOT NULL
);
-- hosts() and per-host listings.
CREATE INDEX backups_host_timestamp ON backups (host, timestamp);

CREATE TABLE datasets (
    backup_id   TEXT    NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    id          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    snapshot_id TEXT    NOT NULL,
    total_files INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL,
    bytes_added INTEGER NOT NULL,
    duration    INTEGER NOT NULL,
    PRIMARY KEY (backup_id, id)
);

-- One row per atom version. host, timestamp and global_path are copies of
-- the backup's and dataset's fields so that find_atoms filters and ranks
-- on this table alone.
CREATE TABLE atoms (
    backup_id   TEXT    NOT NULL,
    dataset_id  TEXT    NOT NULL,
    -- Atom name within its dataset.
    name        TEXT    NOT NULL,
    -- Atom.path (file handler: path relative to the source root), '' if none.
    path        TEXT    NOT NULL,
    -- source/dataset/atom: what find patterns match.
    global_path TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    timestamp   INTEGER NOT NULL,
    PRIMARY KEY (backup_id, dataset_id, name),
    FOREIGN KEY (backup_id, dataset_id) REFERENCES datasets (backup_id, id) ON DELETE CASCADE
);
-- Pattern lookups: equality or literal-prefix range on global_path; the
-- walk over distinct paths and the newest-N seek per path (num_versions).
CREATE INDEX atoms_global_path_timestamp ON atoms (global_path, timestamp);
-- The same restricted to one host.
CREATE INDEX atoms_host_global_path_timestamp ON atoms (host, global_path, timestamp);

-- Latest report of running jobs per host (JSON array of JobStatus).
CREATE TABLE active_jobs (
    host     TEXT    NOT NULL PRIMARY KEY,
    received INTEGER NOT NULL,
    jobs     TEXT    NOT NULL
);
