//! Logging setup: `tracing` to standard error, as text (colours only on a
//! terminal) or JSON lines; spans carry source, dataset and backup id so
//! every line of a job says which job it belongs to.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::cli::progress::LogWriter;

/// The log level of tabacco's own lines: a service (agent, server) logs
/// what it does (info; `verbose` 1: debug, 2+: trace); a command run by
/// hand or by cron shows only warnings and errors (its output is bars and
/// a summary; `verbose` 1: info, 2: debug, 3+: trace); `quiet`: errors.
pub fn level(service: bool, verbose: u8, quiet: bool) -> &'static str {
    const LEVELS: [&str; 4] = ["warn", "info", "debug", "trace"];
    if quiet {
        return "error";
    }
    let step = usize::from(verbose) + usize::from(service);
    LEVELS[step.min(LEVELS.len() - 1)]
}

/// Install the global subscriber at [`level`]; `RUST_LOG` overrides it.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,tabacco={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("tabacco: cannot set up logging: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_show_warnings_services_their_log() {
        assert_eq!(level(false, 0, false), "warn");
        assert_eq!(level(false, 1, false), "info");
        assert_eq!(level(false, 9, false), "trace");
        assert_eq!(level(true, 0, false), "info");
        assert_eq!(level(true, 1, false), "debug");
        assert_eq!(level(false, 0, true), "error");
        assert_eq!(level(true, 0, true), "error");
    }
}
