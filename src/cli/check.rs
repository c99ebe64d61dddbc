//! `tabacco config check`: validate the configuration tree and probe it on
//! this machine ([`crate::config::probe`]); print a summary, every warning,
//! or every error with its file and field.

use std::path::Path;

use super::CliError;
use crate::config::{self, load::ConfigErrors, probe};

/// Run the check.
pub fn run(path: &Path) -> Result<(), CliError> {
    let cfg = config::load(path).map_err(CliError::usage)?;
    let findings = probe::probe(&cfg);
    for w in &findings.warnings {
        eprintln!("warning: {w}");
    }
    if !findings.errors.is_empty() {
        return Err(CliError::usage(ConfigErrors(findings.errors)));
    }
    println!("{}", cfg.summary());
    println!("configuration OK");
    Ok(())
}
