//! `tabacco backup SOURCE...`: back up sources now, with progress.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use super::interrupt::Interrupts;
use super::{CliError, load_config_with_dry_run, open_stores, progress};
use crate::jobs::backup::SourceJob;
use crate::jobs::lock::HolderKind;
use crate::manager::{Manager, Observer};
use crate::metadata::client::outbox::OutboxStore;
use crate::metadata::client::outbox::queue::DeliveryReport;
use crate::model::{Dataset, RunningJobStatus};
use crate::repository::SnapshotInfo;
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

/// Passes events on, and keeps the names of the datasets running, so that
/// an interrupt can say which ones it stopped.
struct Running {
    inner: Arc<dyn Observer>,
    datasets: Mutex<BTreeSet<String>>,
}

impl Running {
    fn names(&self) -> Vec<String> {
        self.datasets
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Observer for Running {
    fn backup_started(&self, backup: &crate::model::Backup) {
        self.inner.backup_started(backup)
    }
    fn dataset_started(&self, dataset: &Dataset) {
        if let Ok(mut d) = self.datasets.lock() {
            d.insert(dataset.name.clone());
        }
        self.inner.dataset_started(dataset)
    }
    fn progress(&self, dataset: &Dataset, status: &RunningJobStatus) {
        self.inner.progress(dataset, status)
    }
    fn dataset_finished(&self, dataset: &Dataset, outcome: Result<&SnapshotInfo, &str>) {
        if let Ok(mut d) = self.datasets.lock() {
            d.remove(&dataset.name);
        }
        self.inner.dataset_finished(dataset, outcome)
    }
}

/// Run the backups; exit 1 if any dataset failed, or if a source is being
/// backed up already (by the agent or another `tabacco backup`: the
/// message names the holder of the source's lock). `SIGINT` / `SIGTERM`
/// stop the run: restic gets `SIGINT` (it removes its repository lock),
/// the datasets it was writing are not recorded, those finished before
/// are; exit 130 / 143.
pub async fn run(config_path: &Path, args: BackupArgs) -> Result<(), CliError> {
    let interrupts = Interrupts::catch()?;
    let config = load_config_with_dry_run(config_path, args.dry_run)?;
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
    let mut recorded_total = 0usize;
    let mut stopped: Vec<String> = Vec::new();
    let mut not_started: Vec<&str> = Vec::new();
    for name in &names {
        if interrupts.received().is_some() {
            not_started.push(name);
            continue;
        }
        // The same flow as the agent's: never two backups of a source at
        // once. A locked source is skipped; the others still run.
        let job = match SourceJob::start(rctx.clone(), name, HolderKind::Cli) {
            Ok(job) => job,
            Err(e) => {
                if names.len() == 1 {
                    return Err(CliError::failed(e));
                }
                progress::suspend(|| println!("FAILED  {name}: {e}"));
                failed += 1;
                continue;
            }
        };
        let running = Arc::new(Running {
            inner: observer.clone(),
            datasets: Mutex::new(BTreeSet::new()),
        });
        let report = job
            .backup(
                &manager,
                running.clone(),
                &tokio_util::sync::CancellationToken::new(),
                interrupts.first_name(),
            )
            .await
            .map_err(CliError::failed)?;
        drop(job);
        recorded_total += report.backup.datasets.len();
        if interrupts.received().is_some() {
            stopped.extend(running.names().into_iter().map(|d| format!("{name}/{d}")));
        }
        progress::suspend(|| {
            for line in &report.planned {
                println!("dry run: {line}");
            }
            for ds in report.backup.datasets.iter().filter(|_| !progress::quiet()) {
                println!(
                    "ok      {}/{}  snapshot {}  {} files  {}  {} added",
                    ds.source,
                    ds.name,
                    &ds.snapshot_id[..ds.snapshot_id.len().min(8)],
                    ds.total_files,
                    crate::util::bytes(ds.total_bytes),
                    crate::util::bytes(ds.bytes_added),
                );
            }
            for f in &report.failures {
                println!("FAILED  {}/{}: {}", name, f.dataset, f.error);
            }
            if let Some(e) = &report.fatal {
                println!("FAILED  {name}: {e}");
            }
            if progress::quiet() {
                // Failures only: printed above.
            } else if config.dry_run {
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
    if let Some(sig) = interrupts.received() {
        let all_gone = interrupts.wait_children().await;
        // No final delivery: an interrupted run ends now.
        let pending = match &stores.outbox {
            Some(o) => format!(
                "; {} record(s) stay queued for delivery to {} by the agent or the next `tabacco backup`",
                o.outbox().pending().unwrap_or(0),
                o.url()
            ),
            None => String::new(),
        };
        let mut what = vec![format!(
            "{recorded_total} dataset(s) were recorded before it{pending}"
        )];
        if !stopped.is_empty() {
            what.push(format!(
                "stopped and NOT recorded: {} (restic was stopped with SIGINT{})",
                stopped.join(", "),
                if all_gone {
                    " and has exited"
                } else {
                    "; it had not exited when we stopped waiting"
                }
            ));
        }
        if !not_started.is_empty() {
            what.push(format!("not started: {}", not_started.join(", ")));
        }
        return Err(sig.error(anyhow::anyhow!(
            "backup interrupted by {}: {}",
            sig.name(),
            what.join("; ")
        )));
    }
    let mut refused = 0u64;
    if let Some(outbox) = &stores.outbox
        && !config.dry_run
    {
        let report = outbox.deliver_at_exit(FINAL_DELIVERY_BUDGET).await;
        if !progress::quiet() {
            let summary = delivery_summary(outbox, &report);
            progress::suspend(|| print!("{summary}"));
        }
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
            "the metadata server refused {refused} record(s); they are kept with the reason in {}",
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
