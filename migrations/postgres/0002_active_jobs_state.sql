-- What each host's latest report says beyond its running jobs: the state
-- of every source (schedule, last run and result, error, last success)
-- and the outbox backlog, as JSON text (metadata::HostState; text, like
-- active_jobs.jobs, because jsonb refuses the \u0000 escape). NULL: the
-- host's agent does not report it (an older agent).
ALTER TABLE active_jobs ADD COLUMN state TEXT;
