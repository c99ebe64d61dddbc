//! Logging setup: `tracing` to standard error, as text (colours only on a
//! terminal) or JSON lines; spans carry source, dataset and backup id so
//! every line of a job says which job it belongs to.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::cli::progress::LogWriter;

/// Install the global subscriber. `RUST_LOG` overrides the level chosen by
/// `verbose` (0: info, 1: debug, 2+: trace).
pub fn init(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
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
