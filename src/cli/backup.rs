//! `tabacco backup SOURCE...`: back up sources now, with progress.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use indicatif::HumanBytes;

use super::{CliError, load_config, open_store, progress};
use crate::manager::Manager;
use crate::runtime::RuntimeContext;

/// Arguments of `tabacco backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Sources to back up, in this order.
    #[arg(required_unless_present = "all")]
    pub sources: Vec<String>,
    /// Back up every configured source.
    #[arg(long, conflicts_with = "sources")]
    pub all: bool,
    /// Log what would be done; run and record nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Run the backups; exit 1 if any dataset failed.
pub async fn run(config_path: &Path, args: BackupArgs) -> Result<(), CliError> {
    let mut config = load_config(config_path)?;
    if args.dry_run {
        Arc::make_mut(&mut config).dry_run = true;
    }
    let names: Vec<String> = if args.all {
        config.sources.iter().map(|s| s.name.clone()).collect()
    } else {
        args.sources.clone()
    };
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| config.find_source(n).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::usage(anyhow::anyhow!(
            "unknown source(s): {} (configured: {})",
            unknown.join(", "),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    }
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    let manager = Manager::new(store);
    let observer = progress::observer();
    let mut failed = 0usize;
    for name in &names {
        let report = manager
            .backup(&rctx, name, observer.clone())
            .await
            .map_err(CliError::failed)?;
        progress::suspend(|| {
            for ds in &report.planned {
                let atoms: Vec<&str> = ds.atoms.iter().map(|a| a.name.as_str()).collect();
                println!("dry run: would back up {}/{}: atoms {}", ds.source, ds.name, atoms.join(", "));
            }
            for ds in &report.backup.datasets {
                println!(
                    "ok      {}/{}  snapshot {}  {} files  {}  {} added",
                    ds.source,
                    ds.name,
                    &ds.snapshot_id[..ds.snapshot_id.len().min(8)],
                    ds.total_files,
                    HumanBytes(ds.total_bytes.max(0) as u64),
                    HumanBytes(ds.bytes_added.max(0) as u64),
                );
            }
            for f in &report.failures {
                println!("FAILED  {}/{}: {}", name, f.dataset, f.error);
            }
            if let Some(e) = &report.fatal {
                println!("FAILED  {name}: {e}");
            }
            if !report.planned.is_empty() || config.dry_run {
                println!("{name}: dry run, nothing was backed up or recorded");
            } else {
                println!(
                    "{name}: backup {} at {}: {} dataset(s) recorded, {} failed",
                    report.backup.id,
                    report.backup.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    report.backup.datasets.len(),
                    report.failures.len() + usize::from(report.fatal.is_some()),
                );
            }
        });
        if !report.is_ok() {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(CliError::failed(anyhow::anyhow!(
            "{failed} of {} source(s) had errors",
            names.len()
        )));
    }
    Ok(())
}
