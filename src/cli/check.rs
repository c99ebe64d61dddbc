//! `tabacco config check`: validate the configuration tree and print a
//! summary, or every error with its file and field.

use std::path::Path;

use super::CliError;
use crate::config;

/// Run the check.
pub fn run(path: &Path) -> Result<(), CliError> {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}", cfg.summary());
            println!("configuration OK");
            Ok(())
        }
        Err(errors) => Err(CliError::usage(errors)),
    }
}
