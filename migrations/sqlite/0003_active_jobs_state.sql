-- What each host's latest report says beyond its running jobs: the state
-- of every source (schedule, last run and result, error, last success)
-- and the outbox backlog, as JSON (metadata::HostState). NULL: the host's
-- agent does not report it (an older agent), or no report since.
ALTER TABLE active_jobs ADD COLUMN state TEXT;
