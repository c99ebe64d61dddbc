-- The latest restore drill of each atom version (tabacco verify): when it
-- ran, how it ended, what differed, and when a drill of it last ended ok.
-- Rows go with their atom (retention removes both).
CREATE TABLE verifications (
    backup_id   TEXT COLLATE "C" NOT NULL,
    dataset_id  TEXT COLLATE "C" NOT NULL,
    atom        TEXT COLLATE "C" NOT NULL,
    verified_at TIMESTAMPTZ NOT NULL,
    -- 'ok' or 'failed' (model::VerifyResult).
    result      TEXT        NOT NULL,
    -- What differed or failed; NULL when it matched.
    error       TEXT,
    -- The last drill that ended 'ok'; NULL: none yet.
    last_ok     TIMESTAMPTZ,
    PRIMARY KEY (backup_id, dataset_id, atom),
    FOREIGN KEY (backup_id, dataset_id, atom)
        REFERENCES atoms (backup_id, dataset_id, name) ON DELETE CASCADE
);
