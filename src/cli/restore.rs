//! `tabacco restore --target DIR PATTERN`: find atoms and restore them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::interrupt::Interrupts;
use super::{AtomFilter, CliError, load_config, open_store, progress};
use crate::manager::{Manager, ManagerError};
use crate::runtime::RuntimeContext;

/// Arguments of `tabacco restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Directory to restore under; files land at `TARGET/<original
    /// absolute path>` (`--target /` restores in place).
    #[arg(long)]
    pub target: PathBuf,
    /// Host and time filters.
    #[command(flatten)]
    pub filter: AtomFilter,
    /// Restore the newest N versions of each atom (default 1, 0: all);
    /// with more than one, each backup goes to `TARGET/<backup id>/`.
    #[arg(long, default_value_t = 1)]
    pub num_versions: u32,
    /// Log what would be restored; restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Glob on `source/dataset/atom` (`*` also matches `/`).
    pub pattern: String,
}

/// Run the restore; exit 1 if nothing matched or anything failed.
/// `SIGINT` / `SIGTERM` stop it: restic gets `SIGINT`, the restore
/// commands their stop signal; exit 130 / 143.
pub async fn run(config_path: &Path, args: RestoreArgs) -> Result<(), CliError> {
    let req = args.filter.request(&args.pattern, args.num_versions)?;
    let interrupts = Interrupts::catch()?;
    let mut config = load_config(config_path)?;
    if args.dry_run {
        Arc::make_mut(&mut config).dry_run = true;
    }
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    let manager = Manager::new(store);
    let result = tokio::select! {
        r = manager.restore(&rctx, &req, &args.target) => r,
        sig = interrupts.first() => {
            // The restore's future is gone: its commands got their stop
            // signals; wait for them.
            let all_gone = interrupts.wait_children().await;
            return Err(sig.error(anyhow::anyhow!(
                "restore interrupted by {}: restic and the restore commands were stopped{}; what is under {} may be incomplete (no post_restore_command ran)",
                sig.name(),
                if all_gone { " and have exited" } else { " (some had not exited when we stopped waiting)" },
                args.target.display()
            )));
        }
    };
    let report = result.map_err(|e| match e {
        ManagerError::Metadata(e) => super::store_error(e),
        e => CliError::failed(e),
    })?;
    let verb = if config.dry_run {
        "would restore"
    } else {
        "restored"
    };
    progress::suspend(|| {
        for item in report.restored.iter().filter(|_| !progress::quiet()) {
            println!(
                "{verb} {} from backup {} ({}, host {}) into {}",
                item.atoms.join(", "),
                item.backup_id,
                item.timestamp
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
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
