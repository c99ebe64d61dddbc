//! `tabacco repo init`: create the configured repository now, the way a
//! backup would on first use, and check that it opens with the configured
//! password. The fleet procedure for a shared remote repository: run this
//! once, then roll out the hosts (remote backends have no atomic create).

use std::path::Path;

use clap::Subcommand;

use super::{CliError, load_config};
use crate::repository::Creation;
use crate::runtime::RuntimeContext;

/// Subcommands of `tabacco repo`.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create the repository if it does not exist (safe while hosts back up
    /// into it) and check that it opens with the configured password.
    Init,
}

/// Run a `tabacco repo` subcommand.
pub async fn run(config_path: &Path, command: RepoCommand) -> Result<(), CliError> {
    match command {
        RepoCommand::Init => {
            let config = load_config(config_path)?;
            let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
            let uri = crate::redact::url(
                config
                    .repository
                    .params
                    .get_str("uri")
                    .ok()
                    .flatten()
                    .as_deref()
                    .unwrap_or_default(),
            );
            match rctx.repo().create().await.map_err(CliError::failed)? {
                Creation::Created => println!("created repository {uri}"),
                Creation::Existing => {
                    println!(
                        "repository {uri} exists already and opens with the configured password"
                    )
                }
            }
            Ok(())
        }
    }
}
