//! Command line: argument parsing, exit codes, and one module per
//! subcommand.

pub mod agent;
pub mod backup;
pub mod check;
pub mod interrupt;
pub mod logging;
pub mod maintenance;
pub mod metadb;
pub mod progress;
pub mod query;
pub mod repo;
pub mod restore;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, DEFAULT_CONFIG_PATH};
use crate::glob::Pattern;
use crate::metadata::MetadataStore;
use crate::metadata::client::Stores;
use crate::model::FindRequest;

/// Exit codes, also listed in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed (a dataset failed to back up or restore, nothing matched,
     the source is locked by a running backup, ...)
  2  invalid command line, configuration or pattern
  130, 143  `backup`, `restore` or `verify` interrupted by SIGINT / SIGTERM (restic was
     stopped with SIGINT, so it removed its repository lock; unfinished datasets
     are not recorded)";

/// Exit status: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: invalid command line or configuration.
pub const EXIT_USAGE: u8 = 2;

/// tabacco: back up application datasets with restic, index every atom,
/// restore any of them anywhere by name.
#[derive(Debug, Parser)]
#[command(name = "tabacco", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Main configuration file of the agent, `backup`, `restore`, `query`
    /// and `config check`; `handlers/` and `sources/` are read from its
    /// directory. (`metadb` reads its own, see `tabacco metadb --help`.)
    #[arg(long, global = true, env = "TABACCO_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output. Commands show only warnings and errors, progress
    /// bars and one summary by default; -v adds the log (info), -vv debug,
    /// -vvv trace. The agent and the server log info by default (-v
    /// debug, -vv trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only failures (for cron): errors, no bars, no summary of what
    /// went well. The exit status says the rest.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Where `config` came from (command line, `TABACCO_CONFIG`, default);
    /// set by [`Cli::parse_args`].
    #[arg(skip)]
    pub config_source: Option<clap::parser::ValueSource>,
}

impl Cli {
    /// Whether the command is a long-running service (agent, metadata
    /// server), whose log is its output.
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Agent(_) | Command::Metadb(_))
    }

    /// Parse the process's arguments (exiting on `--help` or a mistake, as
    /// clap does), remembering where `--config` came from.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.config_source = matches.value_source("config");
        cli
    }

    /// Whether `--config` was given on the command line itself.
    pub fn config_on_command_line(&self) -> bool {
        self.config_source == Some(clap::parser::ValueSource::CommandLine)
    }
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: back up each source on its schedule, serve a status
    /// page and metrics; SIGHUP reloads the configuration, SIGTERM stops.
    Agent(agent::AgentArgs),
    /// Back up sources now, with a progress display.
    Backup(backup::BackupArgs),
    /// Find atoms in the index and restore them under a directory.
    Restore(restore::RestoreArgs),
    /// List backed up atoms matching a pattern.
    Query(query::QueryArgs),
    /// Check the repository and run restore drills of this host's atoms
    /// (least recently verified first); record the results in the index.
    Verify(verify::VerifyArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the metadata server (the fleet's central index). Its own
    /// configuration file is `--server-config` (or `TABACCO_METADB_CONFIG`,
    /// default /etc/tabacco/metadb.yml if present); `TABACCO_CONFIG`, the
    /// agent's, is ignored.
    Metadb(metadb::MetadbArgs),
    /// Apply the sources' retention policies to this host's versions:
    /// remove their records from the index, then forget their snapshots.
    Forget(maintenance::ForgetArgs),
    /// Remove the data no snapshot references from the repository (restic's
    /// exclusive lock: backups of other hosts wait meanwhile).
    Prune,
    /// Make the index and the repository agree: remove records whose
    /// snapshot is gone, index snapshots that have no record (rebuilds a
    /// lost index).
    Reconcile(maintenance::ReconcileArgs),
    /// Repository tools: `repo init` creates the configured repository
    /// (the fleet procedure for a shared remote repository: once, before
    /// the hosts).
    #[command(subcommand)]
    Repo(repo::RepoCommand),
}

/// `tabacco config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration; print a summary or every error (with
    /// file and field).
    Check,
}

/// An error that ends the command with an exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit status.
    pub code: u8,
    /// What to tell the user.
    pub error: anyhow::Error,
}

impl CliError {
    /// An operation failure (exit 1).
    pub fn failed(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }

    /// A usage or configuration error (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    progress::set_quiet(cli.quiet);
    let config_on_command_line = cli.config_on_command_line();
    let result = match cli.command {
        Command::Agent(args) => agent::run(&cli.config, args).await,
        Command::Backup(args) => backup::run(&cli.config, args).await,
        Command::Restore(args) => restore::run(&cli.config, args).await,
        Command::Query(args) => query::run(&cli.config, args).await,
        Command::Verify(args) => verify::run(&cli.config, args).await,
        Command::Config(ConfigCommand::Check) => check::run(&cli.config),
        Command::Metadb(args) => {
            let explicit = config_on_command_line.then_some(cli.config.as_path());
            metadb::run(explicit, args).await
        }
        Command::Repo(cmd) => repo::run(&cli.config, cmd).await,
        Command::Forget(args) => maintenance::forget(&cli.config, args).await,
        Command::Prune => maintenance::prune(&cli.config).await,
        Command::Reconcile(args) => maintenance::reconcile(&cli.config, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress::suspend(|| eprintln!("tabacco: error: {:#}", e.error));
            ExitCode::from(e.code)
        }
    }
}

/// A metadata store error: the user's mistake (bad pattern, also when the
/// metadata server answers 400) is a usage error, anything else an
/// operation failure.
pub fn store_error(e: crate::metadata::MetadataError) -> CliError {
    match e {
        crate::metadata::MetadataError::BadRequest(_)
        | crate::metadata::MetadataError::Rejected { status: 400, .. } => CliError::usage(e),
        e => CliError::failed(e),
    }
}

/// Load and validate the configuration (exit 2 on errors).
pub fn load_config(path: &Path) -> Result<Arc<Config>, CliError> {
    config::load(path).map(Arc::new).map_err(CliError::usage)
}

/// [`load_config`] for a command with `--dry-run`: the flag turns on the
/// configuration's `dry_run`, the one switch every operation obeys (see
/// [`crate::runtime::RuntimeContext::plan_then_apply`]).
pub fn load_config_with_dry_run(path: &Path, dry_run: bool) -> Result<Arc<Config>, CliError> {
    let mut config = load_config(path)?;
    if dry_run {
        Arc::make_mut(&mut config).dry_run = true;
    }
    Ok(config)
}

/// Open the metadata stores the configuration asks for
/// ([`crate::metadata::client::Stores::open`]): a mistake in the `metadb` block
/// exits 2, a store that cannot be opened 1.
pub async fn open_stores(config: &Config) -> Result<Stores, CliError> {
    Stores::open(config).await.map_err(|e| match e.recovery() {
        crate::metadata::Recovery::FixSetup => CliError::usage(e),
        _ => CliError::failed(e),
    })
}

/// Open the metadata store the configuration asks for: the metadata server
/// (through the outbox) when `metadb` is configured, else the embedded
/// SQLite store.
pub async fn open_store(config: &Config) -> Result<Arc<dyn MetadataStore>, CliError> {
    Ok(open_stores(config).await?.store)
}

/// Filters shared by `query` and `restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct AtomFilter {
    /// Only atoms backed up by this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only versions backed up before this time (RFC 3339, a date such as
    /// `2026-11-24`, or an age such as `2d`).
    #[arg(long, value_parser = parse_time)]
    pub older_than: Option<DateTime<Utc>>,
    /// Only this backup (its id, as `query` shows it), every version
    /// filter aside.
    #[arg(long)]
    pub backup_id: Option<String>,
}

impl AtomFilter {
    /// The index request for `pattern` with these filters, the pattern
    /// checked here first (exit 2 naming the mistake, before any store or
    /// server is asked). `num_versions`: 0 for every version.
    pub fn request(&self, pattern: &str, num_versions: u32) -> Result<FindRequest, CliError> {
        Pattern::parse(pattern)
            .map_err(|e| CliError::usage(anyhow::anyhow!("pattern {pattern:?}: {e}")))?;
        if let Some(id) = &self.backup_id {
            crate::names::check_id("backup id", id)
                .map_err(|e| CliError::usage(anyhow::anyhow!("--backup-id: {e}")))?;
        }
        Ok(FindRequest {
            pattern: pattern.to_string(),
            host: self.host.clone().unwrap_or_default(),
            num_versions: i64::from(num_versions),
            older_than: self.older_than,
        })
    }
}

/// Parse a point in time: RFC 3339 (`2026-11-24T10:00:00Z`), a date
/// (`2026-11-24`, midnight UTC), or an age like `3d` or `12h` meaning that
/// long before now.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    match humantime::parse_duration(s) {
        Ok(d) => chrono::TimeDelta::from_std(d)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .ok_or_else(|| format!("'{s}' is too far in the past")),
        Err(_) => Err(format!(
            "'{s}' is neither an RFC 3339 time (2026-11-24T10:00:00Z), a date (2026-11-24) nor an age (3d, 12h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let t = parse_time("2026-11-24T10:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T09:00:00+00:00");
        let t = parse_time("2h").unwrap();
        let age = Utc::now() - t;
        assert!(age.num_minutes() >= 119 && age.num_minutes() <= 121);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        let t = parse_time("2026-11-28").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T00:00:00+00:00");
    }

    #[test]
    fn patterns_are_checked_before_any_store_is_asked() {
        let f = AtomFilter {
            host: Some("h1".into()),
            older_than: None,
            backup_id: None,
        };
        let req = f.request("db/*", 0).unwrap();
        assert_eq!((req.host.as_str(), req.num_versions), ("h1", 0));
        let e = f.request("", 1).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        let bad_id = AtomFilter {
            backup_id: Some("../b".into()),
            ..f.clone()
        };
        assert_eq!(bad_id.request("db/*", 0).unwrap_err().code, EXIT_USAGE);
        let e = f.request("db/[a", 1).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(format!("{:#}", e.error).contains("db/[a"));
    }

    #[test]
    fn cli_accepts_config_before_or_after_subcommand() {
        let a = Cli::try_parse_from(["tabacco", "--config", "/x.yml", "config", "check"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/x.yml"));
        let b = Cli::try_parse_from(["tabacco", "backup", "src", "--config", "/y.yml"]).unwrap();
        assert_eq!(b.config, PathBuf::from("/y.yml"));
    }
}
