-- One row that the metadata server's /healthz rewrites: the health check
-- fails (503) while the database cannot take a write (a full disk, an I/O
-- error), not only while it cannot answer a read.
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked INTEGER NOT NULL
);
