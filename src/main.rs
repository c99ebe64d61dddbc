//! The `tabacco` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tabacco::cli::Cli::parse();
    tabacco::logging::init(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tabacco: cannot start the async runtime: {e}");
            return ExitCode::from(tabacco::cli::EXIT_FAILED);
        }
    };
    runtime.block_on(tabacco::cli::run(cli))
}
