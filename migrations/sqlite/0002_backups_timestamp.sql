-- The newest backups of all hosts (the metadata server's web page).
CREATE INDEX backups_timestamp ON backups (timestamp);
