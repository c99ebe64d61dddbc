//! `tabacco backup SOURCE...`: back up sources now, with progress.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::HumanBytes;

use super::{CliError, load_config, open_stores, progress};
use crate::jobs::lock::{HolderKind, SourceLock};
use crate::manager::Manager;
use crate::metadata::outbox::{DeliveryReport, OutboxStore};
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

/// Run the backups; exit 1 if any dataset failed, or if a source is being
/// backed up already (by the agent or another `tabacco backup`: the
/// message names the holder of the source's lock).
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
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let stores = open_stores(&config).await?;
    let manager = Manager::new(stores.store.clone());
    let observer = progress::observer();
    let mut failed = 0usize;
    for name in &names {
        // The same lock as the agent's: never two backups of a source at
        // once. A locked source is skipped; the others still run.
        let _lock = if config.dry_run {
            None
        } else {
            match SourceLock::try_acquire(&config.work_dir, name, HolderKind::Cli) {
                Ok(l) => Some(l),
                Err(e) => {
                    if names.len() == 1 {
                        return Err(CliError::failed(e));
                    }
                    progress::suspend(|| println!("FAILED  {name}: {e}"));
                    failed += 1;
                    continue;
                }
            }
        };
        let report = manager
            .backup(&rctx, name, observer.clone())
            .await
            .map_err(CliError::failed)?;
        progress::suspend(|| {
            for ds in &report.planned {
                let atoms: Vec<&str> = ds.atoms.iter().map(|a| a.name.as_str()).collect();
                println!(
                    "dry run: would back up {}/{}: atoms {}",
                    ds.source,
                    ds.name,
                    atoms.join(", ")
                );
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
                    report
                        .backup
                        .timestamp
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    report.backup.datasets.len(),
                    report.failures.len() + usize::from(report.fatal.is_some()),
                );
            }
        });
        if !report.is_ok() {
            failed += 1;
        }
    }
    let mut refused = 0u64;
    if let Some(outbox) = &stores.outbox
        && !config.dry_run
    {
        let report = outbox.deliver_pending_within(FINAL_DELIVERY_BUDGET).await;
        let summary = delivery_summary(outbox, &report);
        progress::suspend(|| print!("{summary}"));
        refused = outbox.outbox().rejected_total();
    }
    if failed > 0 {
        return Err(CliError::failed(anyhow::anyhow!(
            "{failed} of {} source(s) had errors",
            names.len()
        )));
    }
    if refused > 0 {
        return Err(CliError::failed(anyhow::anyhow!(
            "the metadata server refused {refused} dataset record(s); they are kept with the reason in {}",
            stores
                .outbox
                .as_ref()
                .map(|o| o.outbox().rejected_dir().display().to_string())
                .unwrap_or_default()
        )));
    }
    Ok(())
}

/// Time the final delivery at the end of `tabacco backup` may take; what is
/// left stays queued for the agent or the next run.
pub const FINAL_DELIVERY_BUDGET: Duration = Duration::from_secs(60);

/// What `tabacco backup` says about the outbox at its end.
pub fn delivery_summary(outbox: &OutboxStore, report: &DeliveryReport) -> String {
    let url = outbox.url();
    let delivered = outbox.outbox().delivered_total();
    let mut out = String::new();
    if delivered > 0 || report.pending == 0 {
        out.push_str(&format!(
            "metadata: {delivered} record(s) delivered to {url}\n"
        ));
    }
    if report.pending > 0 {
        out.push_str(&format!(
            "{} record(s) pending delivery to {url}; they will be retried by the agent or the next `tabacco backup`\n",
            report.pending
        ));
        if report.busy {
            out.push_str("  (another tabacco process is delivering them right now)\n");
        } else if let Some(e) = &report.error {
            out.push_str(&format!("  (last error: {e})\n"));
        }
    } else if let Some(e) = &report.error {
        out.push_str(&format!("metadata: delivery problem: {e}\n"));
    }
    let rejected = outbox.outbox().rejected_total();
    if rejected > 0 {
        out.push_str(&format!(
            "{rejected} record(s) refused by {url}, kept with the reason in {}\n",
            outbox.outbox().rejected_dir().display()
        ));
    }
    out
}
