//! `tabacco restore --target DIR PATTERN`: find atoms and restore them,
//! from what the index records (any host's atoms, onto any host).

use std::path::{Path, PathBuf};

use clap::Args;

use super::interrupt::Interrupts;
use super::{AtomFilter, CliError, load_config_with_dry_run, open_store, progress};
use crate::manager::restore::short;
use crate::manager::{Manager, ManagerError, RestoreOptions, RestoreReport};
use crate::metadb::page::shell_quote;
use crate::runtime::RuntimeContext;

/// Arguments of `tabacco restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Directory to restore under; file atoms land at `TARGET/<absolute
    /// path recorded at backup>` (`--target /` restores in place), raw
    /// pipe atoms at `TARGET/<source>/<dataset>/<atom>`.
    #[arg(long)]
    pub target: PathBuf,
    /// Host, time and backup filters. Without `--host` (and without
    /// `--backup-id`), only this host's backups are considered.
    #[command(flatten)]
    pub filter: AtomFilter,
    /// Restore the newest N versions of each atom (default 1, 0: all);
    /// with more than one, each backup goes to `TARGET/<backup id>/`.
    #[arg(long, default_value_t = 1)]
    pub num_versions: u32,
    /// Write each pipe atom's stream as the file
    /// `TARGET/<source>/<dataset>/<atom>` instead of feeding the local
    /// `restore_command` (hosts without the source always do).
    #[arg(long)]
    pub raw: bool,
    /// Print the plan (every atom, version, host, snapshot, target path
    /// and size) and the command that runs it; restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Glob on `source/dataset/atom` (`*` also matches `/`).
    pub pattern: String,
}

/// Run the restore; exit 1 if nothing matched or anything failed.
/// `SIGINT` / `SIGTERM` stop it: restic gets `SIGINT`, the restore
/// commands their stop signal; exit 130 / 143.
pub async fn run(config_path: &Path, args: RestoreArgs) -> Result<(), CliError> {
    let mut req = args.filter.request(&args.pattern, args.num_versions)?;
    let interrupts = Interrupts::catch()?;
    let config = load_config_with_dry_run(config_path, args.dry_run)?;
    // Every host of a fleet uses the same atom names: without --host,
    // this host's backups only (a backup id names its host already).
    let host_defaulted = args.filter.host.is_none() && args.filter.backup_id.is_none();
    if host_defaulted {
        req.host = config.hostname.clone();
    }
    let opts = RestoreOptions {
        raw: args.raw,
        backup_id: args.filter.backup_id.clone(),
        host_defaulted,
    };
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    let manager = Manager::new(store);
    // Bytes restored so far: bars on a terminal, log lines otherwise.
    let observer = progress::observer();
    let result = tokio::select! {
        r = manager.restore(&rctx, &req, &args.target, &opts, &observer) => r,
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
    progress::suspend(|| {
        if config.dry_run {
            print!("{}", plan_text(&report));
            if !report.restored.is_empty() {
                println!(
                    "to run it: {}",
                    run_command(config_path, &args, &report, &req.host, host_defaulted)
                );
            }
        } else {
            for item in report.restored.iter().filter(|_| !progress::quiet()) {
                println!(
                    "restored {} from backup {} ({}, host {}) into {}",
                    item.atoms.join(", "),
                    item.backup_id,
                    item.timestamp
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    item.host,
                    item.target.display()
                );
            }
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

/// The plan of a dry run: one row per atom.
pub fn plan_text(report: &RestoreReport) -> String {
    let mut rows = vec![
        [
            "ATOM", "VERSION", "HOST", "BACKUP", "SNAPSHOT", "SIZE", "TARGET", "HOW",
        ]
        .map(String::from),
    ];
    for item in &report.restored {
        for a in &item.planned {
            let size = crate::model::size_text(a.size, a.files).unwrap_or_else(|| "?".into());
            rows.push([
                a.atom.clone(),
                item.timestamp
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                item.host.clone(),
                item.backup_id.clone(),
                short(&item.snapshot_id).to_string(),
                size,
                a.target.display().to_string(),
                item.how.to_string(),
            ]);
        }
    }
    crate::util::table(&rows, "")
}

/// The command that runs what a dry run planned: pinned to the backup
/// when the plan has one (the newest version may change meanwhile).
fn run_command(
    config: &Path,
    args: &RestoreArgs,
    report: &RestoreReport,
    host: &str,
    host_defaulted: bool,
) -> String {
    let mut words = vec![
        "tabacco".to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "restore".to_string(),
        "--target".to_string(),
        args.target.display().to_string(),
    ];
    let mut backups: Vec<&str> = report
        .restored
        .iter()
        .map(|i| i.backup_id.as_str())
        .collect();
    backups.dedup();
    if let [only] = backups.as_slice() {
        words.extend(["--backup-id".to_string(), only.to_string()]);
    } else {
        if !host_defaulted && !host.is_empty() {
            words.extend(["--host".to_string(), host.to_string()]);
        }
        if let Some(t) = args.filter.older_than {
            words.extend(["--older-than".to_string(), t.to_rfc3339()]);
        }
        words.extend(["--num-versions".to_string(), args.num_versions.to_string()]);
    }
    if args.raw {
        words.push("--raw".to_string());
    }
    words.push(args.pattern.clone());
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Split a command line the way a POSIX shell would for the words
    /// [`crate::metadb::page::shell_quote`] produces (bare words and single-quoted ones).
    fn shell_split(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    in_word = true;
                }
                '\\' if !quoted => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ' ' if !quoted => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                _ => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(cur);
        }
        words
    }

    #[test]
    fn restore_command_selects_exactly_that_version_and_parses() {
        let cmd = crate::metadb::page::restore_command("0190a1b2c3", "mysql/it's/a*b");
        assert_eq!(
            cmd,
            "tabacco restore --backup-id 0190a1b2c3 --target /tmp/restore 'mysql/it'\\''s/a[*]b'"
        );
        let words = shell_split(&cmd);
        let cli = crate::cli::Cli::try_parse_from(&words).unwrap();
        let crate::cli::Command::Restore(args) = cli.command else {
            panic!("not a restore: {words:?}");
        };
        // The backup names the version (and its host).
        assert_eq!(args.filter.backup_id.as_deref(), Some("0190a1b2c3"));
        assert_eq!(args.filter.host, None);
        let p = crate::glob::Pattern::parse(&args.pattern).unwrap();
        assert!(p.matches("mysql/it's/a*b") && !p.matches("mysql/it's/axb"));
        assert_eq!(
            args.target,
            std::path::PathBuf::from(crate::metadb::page::RESTORE_TARGET)
        );
    }
}
