//! Command line: argument parsing and one module per subcommand.
