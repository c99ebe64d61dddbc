//! The `tabacco` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `tabacco __supervise PROGRAM ARGS...`: the process supervisor, run
    // before anything else (no runtime, no logging, no threads).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            tabacco::process::supervise::SUPERVISE_ARG,
        ))
    {
        tabacco::process::supervise::main(args.collect());
    }
    tabacco::process::supervise::enable_self();
    let cli = tabacco::cli::Cli::parse_args();
    tabacco::cli::logging::init(
        cli.log_format,
        tabacco::cli::logging::level(cli.is_service(), cli.verbose, cli.quiet),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tabacco: cannot start the async runtime: {e}");
            return ExitCode::from(tabacco::cli::EXIT_FAILED);
        }
    };
    runtime.block_on(tabacco::cli::run(cli))
}
