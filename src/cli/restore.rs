//! `tabacco restore --target DIR PATTERN`: find atoms and restore them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;

use super::{CliError, load_config, open_store, parse_time, progress};
use crate::manager::Manager;
use crate::model::FindRequest;
use crate::runtime::RuntimeContext;

/// Arguments of `tabacco restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Directory to restore under; files land at `TARGET/<original
    /// absolute path>` (`--target /` restores in place).
    #[arg(long)]
    pub target: PathBuf,
    /// Only atoms backed up by this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only versions backed up before this time (RFC 3339, or an age such
    /// as `2d`).
    #[arg(long, value_parser = parse_time)]
    pub older_than: Option<DateTime<Utc>>,
    /// Restore the newest N versions of each atom (default 1); with more
    /// than one, each backup goes to `TARGET/<backup id>/`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_versions: Option<u32>,
    /// Log what would be restored; restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Glob on `source/dataset/atom` (`*` also matches `/`).
    pub pattern: String,
}

/// Run the restore; exit 1 if nothing matched or anything failed.
pub async fn run(config_path: &Path, args: RestoreArgs) -> Result<(), CliError> {
    let mut config = load_config(config_path)?;
    if args.dry_run {
        Arc::make_mut(&mut config).dry_run = true;
    }
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    let manager = Manager::new(store);
    let req = FindRequest {
        pattern: args.pattern.clone(),
        host: args.host.clone().unwrap_or_default(),
        num_versions: i64::from(args.num_versions.unwrap_or(1)),
        older_than: args.older_than,
    };
    let report = manager
        .restore(&rctx, &req, &args.target)
        .await
        .map_err(CliError::failed)?;
    let verb = if config.dry_run { "would restore" } else { "restored" };
    progress::suspend(|| {
        for item in &report.restored {
            println!(
                "{verb} {} from backup {} ({}, host {}) into {}",
                item.atoms.join(", "),
                item.backup_id,
                item.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                item.host,
                item.target.display()
            );
        }
        for f in &report.failures {
            println!("FAILED  {}: {}", f.dataset, f.error);
        }
    });
    if !report.failures.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "{} restore(s) failed",
            report.failures.len()
        )));
    }
    Ok(())
}
