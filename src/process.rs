//! Process runner: spawns a child (argv, no shell) in its own process
//! group, reads its stderr concurrently keeping the tail for error
//! messages, and kills the whole group when the job is cancelled, times out
//! or the owner drops it.

/// A child process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// What we tried to run.
        command: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("{command} failed ({status}){}", if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") })]
    Failed {
        /// What ran.
        command: String,
        /// Exit status, e.g. `exit status 1` or `killed by signal 9`.
        status: String,
        /// Last lines of its standard error.
        stderr_tail: String,
    },
}
