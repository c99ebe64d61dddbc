//! `tabacco forget`, `tabacco prune` and `tabacco reconcile`: retention and
//! the agreement of the index with the repository (see
//! [`crate::manager::maintenance`]).

use std::path::Path;

use clap::Args;

use super::{CliError, load_config_with_dry_run, open_store, open_stores};
use crate::jobs::backup::{StartError, lock_source};
use crate::jobs::lock::{HolderKind, LockError, SourceLock};
use crate::manager::Manager;
use crate::manager::maintenance::{MaintenanceError, ReconcileMode, Scope};
use crate::runtime::RuntimeContext;

/// Arguments of `tabacco forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Show what the policies keep and remove, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the decisions as JSON (a list of datasets, each with its
    /// versions newest first: id, time, keep, reasons).
    #[arg(long)]
    pub json: bool,
    /// Sources whose policies to apply (default: every configured source).
    pub sources: Vec<String>,
}

/// Arguments of `tabacco reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Show the differences, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reconcile this host's records and snapshots (default: this host).
    #[arg(long, conflicts_with = "all_hosts")]
    pub host: Option<String>,
    /// Reconcile every host (rebuilding a whole lost index; through a
    /// metadata server this needs an admin identity).
    #[arg(long)]
    pub all_hosts: bool,
}

fn maintenance_error(e: MaintenanceError) -> CliError {
    match e {
        MaintenanceError::UnknownSource(_) => CliError::usage(e),
        e => CliError::failed(e),
    }
}

async fn setup(config_path: &Path, dry_run: bool) -> Result<(RuntimeContext, Manager), CliError> {
    let config = load_config_with_dry_run(config_path, dry_run)?;
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    Ok((rctx, Manager::new(store)))
}

/// The locks of the sources `tabacco forget` applies policies to, the
/// same locks as backups take ([`lock_source`]; a dry run takes none):
/// a source being backed up, or forgotten by another command, is left out.
struct ForgetLocks {
    /// The sources to forget (empty: every configured source).
    sources: Vec<String>,
    /// Sources left out, with who holds them.
    busy: Vec<LockError>,
    _held: Vec<SourceLock>,
}

fn lock_for_forget(rctx: &RuntimeContext, wanted: &[String]) -> Result<ForgetLocks, CliError> {
    let names: Vec<String> = if wanted.is_empty() {
        rctx.config()
            .sources
            .iter()
            .map(|s| s.name.clone())
            .collect()
    } else {
        wanted.to_vec()
    };
    let mut locks = ForgetLocks {
        sources: Vec::new(),
        busy: Vec::new(),
        _held: Vec::new(),
    };
    for name in names {
        match lock_source(rctx, &name, HolderKind::Forget) {
            Ok(lock) => {
                locks._held.extend(lock);
                locks.sources.push(name);
            }
            Err(StartError::Lock(e @ LockError::Busy { .. })) => locks.busy.push(e),
            Err(StartError::Lock(e)) => return Err(CliError::failed(e)),
            Err(StartError::NotConfigured(name)) => {
                return Err(maintenance_error(MaintenanceError::UnknownSource(name)));
            }
        }
    }
    Ok(locks)
}

/// Run `tabacco forget`: exit 1 when a source was left out because it was
/// busy (the others are applied).
pub async fn forget(config_path: &Path, args: ForgetArgs) -> Result<(), CliError> {
    let (rctx, manager) = setup(config_path, args.dry_run).await?;
    let locks = lock_for_forget(&rctx, &args.sources)?;
    for e in &locks.busy {
        eprintln!("skipped: {e}");
    }
    if locks.sources.is_empty() && !locks.busy.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "nothing forgotten: every source asked for is busy; run it again later"
        )));
    }
    let report = manager
        .forget(&rctx, &locks.sources)
        .await
        .map_err(maintenance_error)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report.groups).map_err(CliError::failed)?;
        println!("{text}");
    } else if report.dry_run {
        print!("{}", report.table());
        println!(
            "dry run: would remove {} version(s); nothing changed",
            report.to_remove()
        );
    } else {
        print!("{}", report.table());
        println!(
            "removed {} record(s) from the index and forgot {} snapshot(s); run `tabacco prune` (or set prune_schedule) to free their space",
            report.records_removed, report.forgotten
        );
    }
    if !locks.busy.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "{} source(s) were busy and left out (see above); run `tabacco forget` again later",
            locks.busy.len()
        )));
    }
    Ok(())
}

/// Run `tabacco prune`.
pub async fn prune(config_path: &Path) -> Result<(), CliError> {
    let (rctx, manager) = setup(config_path, false).await?;
    let report = manager.prune(&rctx).await.map_err(maintenance_error)?;
    for line in &report.summary {
        println!("{line}");
    }
    println!("prune done");
    Ok(())
}

/// Run `tabacco reconcile`. Through a metadata server it talks to the
/// server directly (after delivering the outbox): a record the server
/// refuses (another host's, without admin rights) is an error now, not a
/// file in `outbox/rejected/`.
pub async fn reconcile(config_path: &Path, args: ReconcileArgs) -> Result<(), CliError> {
    let config = load_config_with_dry_run(config_path, args.dry_run)?;
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let stores = open_stores(&config).await?;
    let manager = match &stores.outbox {
        Some(outbox) => {
            outbox.deliver_pending().await;
            Manager::new(outbox.remote().clone())
        }
        None => Manager::new(stores.store.clone()),
    };
    let scope = if args.all_hosts {
        Scope::AllHosts
    } else {
        let host = args.host.unwrap_or_else(|| rctx.hostname().to_string());
        crate::names::check_host(&host)
            .map_err(|e| CliError::usage(anyhow::anyhow!("--host: {e}")))?;
        Scope::Host(host)
    };
    let report = manager
        .reconcile(&rctx, &scope, ReconcileMode::Full)
        .await
        .map_err(maintenance_error)?;
    print!("{}", report.text());
    if !report.errors.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "{} repair(s) failed (see above); run reconcile again",
            report.errors.len()
        )));
    }
    Ok(())
}
