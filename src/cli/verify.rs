//! `tabacco verify [--dry-run] [--sample N | --all] [--read-data-subset
//! SPEC] [PATTERN]`: check the repository and run restore drills of this
//! host's atoms (see [`crate::verify`]).

use std::path::Path;

use clap::Args;

use super::interrupt::Interrupts;
use super::{CliError, load_config_with_dry_run, open_store, progress};
use crate::glob::Pattern;
use crate::runtime::RuntimeContext;
use crate::verify::{self, DrillOutcome, Selection, VerifyError};

/// Arguments of `tabacco verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Drill the N least recently verified atom versions (never verified
    /// first); default: `sample` of the `verify:` configuration, else 10.
    #[arg(long, conflicts_with = "all")]
    pub sample: Option<usize>,
    /// Drill every matching atom version.
    #[arg(long)]
    pub all: bool,
    /// Versions of each atom to consider, newest first (0: all); default
    /// `num_versions` of the `verify:` configuration, else 1.
    #[arg(long)]
    pub num_versions: Option<u32>,
    /// Also read and verify this share of the repository's data in the
    /// check (`10%`, `1/5`, `500M`; restic's `--read-data-subset`).
    #[arg(long)]
    pub read_data_subset: Option<String>,
    /// Skip the repository check; drills only.
    #[arg(long)]
    pub no_check: bool,
    /// Share (percent) of compared live files that may differ from the
    /// backup before a file atom's drill fails; default
    /// `live_tolerance_percent` of the `verify:` configuration, else 0.
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// List what would be checked and drilled; restore nothing, record
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Glob on `source/dataset/atom` (`*` also matches `/`); default: all
    /// of this host's atoms.
    pub pattern: Option<String>,
}

/// Run the verification; exit 1 when the check found damage, a drill
/// failed or could not run, or the results could not be recorded (results
/// safely queued in the outbox for the metadata server are not a failure:
/// the output says they are queued, not recorded).
pub async fn run(config_path: &Path, args: VerifyArgs) -> Result<(), CliError> {
    let config = load_config_with_dry_run(config_path, args.dry_run)?;
    let mut opts = verify::VerifyOptions::from_spec(&config.verify);
    if let Some(p) = args.pattern {
        Pattern::parse(&p).map_err(|e| CliError::usage(anyhow::anyhow!("pattern {p:?}: {e}")))?;
        opts.pattern = p;
    }
    if args.all {
        opts.selection = Selection::All;
    } else if let Some(n) = args.sample {
        if n == 0 {
            return Err(CliError::usage(anyhow::anyhow!(
                "--sample 0 drills nothing: give a positive count, or --no-check for drills only"
            )));
        }
        opts.selection = Selection::Sample(n);
    }
    if let Some(n) = args.num_versions {
        opts.num_versions = i64::from(n);
    }
    if let Some(spec) = args.read_data_subset {
        crate::params::restic::check_data_subset(&spec)
            .map_err(|e| CliError::usage(anyhow::anyhow!("--read-data-subset: {e}")))?;
        opts.read_data_subset = Some(spec);
    }
    if args.no_check {
        opts.check_repository = false;
    }
    if let Some(t) = args.tolerance {
        if !(0.0..=100.0).contains(&t) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--tolerance {t}: give a percentage from 0 to 100"
            )));
        }
        opts.live_tolerance_percent = t;
    }
    let interrupts = Interrupts::catch()?;
    let rctx = RuntimeContext::new(config.clone()).map_err(CliError::usage)?;
    let store = open_store(&config).await?;
    let result = tokio::select! {
        r = verify::run(&rctx, store.as_ref(), &opts) => r,
        sig = interrupts.first() => {
            let all_gone = interrupts.wait_children().await;
            return Err(sig.error(anyhow::anyhow!(
                "verify interrupted by {}: restic was stopped{}; the scratch directory was removed and nothing was recorded",
                sig.name(),
                if all_gone { " and has exited" } else { " (it had not exited when we stopped waiting)" },
            )));
        }
    };
    let report = result.map_err(|e| match e {
        VerifyError::Metadata(e) => super::store_error(e),
        e => CliError::failed(e),
    })?;
    progress::suspend(|| {
        if let Some(c) = &report.check {
            if c.ok {
                println!("OK      repository check ({:.1} s)", c.seconds);
            } else {
                println!("FAILED  repository check: {}", c.detail);
            }
        }
        for d in &report.drills {
            println!("{:<7} {}: {}", d.outcome.word(), d.name(), d.detail);
        }
        if !config.dry_run {
            println!(
                "{} atom versions verified, {} failed, {} skipped; {} restored in {:.1} s",
                report.count(DrillOutcome::Ok),
                report.count(DrillOutcome::Failed),
                report.count(DrillOutcome::Skipped),
                crate::util::bytes(report.bytes()),
                report.drill_seconds
            );
            if let Some(line) = report.recording() {
                println!("{line}");
            }
        }
    });
    if !report.is_ok() {
        let problems = report.problems();
        return Err(CliError::failed(anyhow::anyhow!(
            "verification failed: {}",
            problems.join("; ")
        )));
    }
    Ok(())
}
