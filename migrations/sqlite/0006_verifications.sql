-- The latest restore drill of each atom version (tabacco verify): when it
-- ran, how it ended, what differed, and when a drill of it last ended ok.
-- Rows go with their atom (retention removes both). Times are INTEGER
-- microseconds since the Unix epoch, as in 0001.
CREATE TABLE verifications (
    backup_id   TEXT    NOT NULL,
    dataset_id  TEXT    NOT NULL,
    atom        TEXT    NOT NULL,
    verified_at INTEGER NOT NULL,
    -- 'ok' or 'failed' (model::VerifyResult).
    result      TEXT    NOT NULL,
    -- What differed or failed; NULL when it matched.
    error       TEXT,
    -- The last drill that ended 'ok'; NULL: none yet.
    last_ok     INTEGER,
    PRIMARY KEY (backup_id, dataset_id, atom),
    FOREIGN KEY (backup_id, dataset_id, atom)
        REFERENCES atoms (backup_id, dataset_id, name) ON DELETE CASCADE
);
