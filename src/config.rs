//! Configuration: the agent's main file (`agent.yml`) plus `handlers/*.yml`
//! and `sources/*.yml` beside it.
//!
//! Two stages, as in ripgrep: [`raw`] mirrors what the user wrote (serde,
//! unknown keys rejected), [`load()`] reads the tree and validates it into the
//! resolved types below, collecting every error with its file and field.

pub mod load;
pub mod probe;
pub mod raw;
pub mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::params::Params;
pub use load::{ConfigError, ConfigErrors, load};

/// Atom versions a verify run drills unless `verify.sample` or `--sample`
/// says otherwise.
pub const DEFAULT_VERIFY_SAMPLE: usize = 10;

/// Default location of the main configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tabacco/agent.yml";

/// The whole, validated configuration tree.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the main file this was read from.
    pub path: PathBuf,
    /// This host's name (defaults to the machine's host name).
    pub hostname: String,
    /// Worker limits per job queue (`queue_config`).
    pub queue: QueueSpec,
    /// Where backups go.
    pub repository: RepositorySpec,
    /// Every operation stops after its plan: no command runs, nothing is
    /// written or recorded (`dry_run: true`, or `--dry-run`). Operations
    /// read it in one place only, the runtime context's `plan_then_apply`.
    pub dry_run: bool,
    /// `nice` level for user commands and restic (0: unchanged).
    pub default_nice_level: i32,
    /// `ionice` class for user commands and restic (0: unchanged).
    pub default_io_class: i32,
    /// Directory for state: the embedded metadata database, locks, outbox.
    pub work_dir: PathBuf,
    /// File holding this host's random seed (default: in `work_dir`).
    pub random_seed_file: PathBuf,
    /// Remote metadata server (`metadb`); `None`: embedded SQLite store.
    pub metadb: Option<MetadbClientConfig>,
    /// Agent shutdown: how long running jobs get to finish before they
    /// are cancelled (`shutdown_timeout`, default 60 s).
    pub shutdown_timeout: Duration,
    /// How often the agent reports its running jobs and sources' state to
    /// the metadata store (`status_report_interval`, default 30 s).
    pub status_report_interval: Duration,
    /// Verification: the agent's `verify_schedule` and the options of
    /// its runs (also `tabacco verify`'s defaults).
    pub verify: VerifySpec,
    /// When the agent prunes the repository (`prune_schedule`, validated);
    /// `None`: this host never prunes.
    pub prune_schedule: Option<String>,
    /// Handlers by name.
    pub handlers: BTreeMap<String, HandlerSpec>,
    /// Sources in the order they were read (files sorted by name).
    pub sources: Vec<SourceSpec>,
}

impl Config {
    /// The source with this name.
    pub fn find_source(&self, name: &str) -> Option<&SourceSpec> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// `verify_schedule` and `verify:` of `agent.yml` (run by `tabacco verify` and the agent).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifySpec {
    /// When the agent verifies (a source schedule); `None`: never.
    pub schedule: Option<String>,
    /// Glob on `source/dataset/atom` choosing the atoms.
    pub pattern: String,
    /// Atom versions drilled per run (`None` with `all`: every one).
    pub sample: Option<usize>,
    /// Versions per atom considered, newest first (0: all).
    pub num_versions: i64,
    /// Run `restic check` first.
    pub check: bool,
    /// `--read-data-subset` of the check.
    pub read_data_subset: Option<String>,
    /// Share (percent) of compared live files that may differ.
    pub live_tolerance_percent: f64,
    /// Most bytes a drill's scratch directory may hold.
    pub scratch_budget: Option<u64>,
}

impl Default for VerifySpec {
    fn default() -> VerifySpec {
        VerifySpec {
            schedule: None,
            pattern: "*".into(),
            sample: Some(DEFAULT_VERIFY_SAMPLE),
            num_versions: 1,
            check: true,
            read_data_subset: None,
            live_tolerance_percent: 0.0,
            scratch_budget: None,
        }
    }
}

/// Worker limits of the job queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Number of workers by queue name (`backup`, `restore`, ...).
    pub workers: BTreeMap<String, usize>,
}

/// The queues `queue_config.workers` may size: name, default number of
/// workers, and what they bound. The one list the loader checks names
/// against, the summary prints and [`QueueSpec::workers`] falls back on.
pub const QUEUES: &[(&str, usize, &str)] = &[
    ("backup", 2, "backup jobs of the agent running at once"),
    ("datasets", 2, "datasets of one source backed up at once"),
    (
        "verify",
        1,
        "verification runs of the agent at once (never delays backups)",
    ),
];

impl QueueSpec {
    /// Workers for a queue: the configured number, else its default from
    /// [`QUEUES`] (1 for a name not there).
    pub fn workers(&self, queue: &str) -> usize {
        self.workers.get(queue).copied().unwrap_or_else(|| {
            QUEUES
                .iter()
                .find(|(name, _, _)| *name == queue)
                .map_or(1, |(_, n, _)| *n)
        })
    }
}

/// The repository backups are stored in.
#[derive(Debug, Clone)]
pub struct RepositorySpec {
    /// Name, for messages.
    pub name: String,
    /// Kind; only `restic` exists.
    pub kind: String,
    /// Kind-specific parameters (`uri`, `password`, `password_file`, `env`,
    /// `cache_dir`, `restic_binary`, `extra_args`).
    pub params: Params,
}

/// Connection to a remote metadata server (`metadb` in `agent.yml`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetadbClientConfig {
    /// Base URL of the server, e.g. `https://metadb.example:5332`.
    pub url: String,
    /// Client certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA that signed the server's certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    /// File holding a bearer token.
    pub token_file: Option<PathBuf>,
}

/// Handler types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerType {
    /// Atoms are paths below a root directory.
    File,
    /// Atoms are streams from a backup command into a restore command.
    Pipe,
}

impl HandlerType {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerType::File => "file",
            HandlerType::Pipe => "pipe",
        }
    }
}

/// How a class of datasets is backed up and restored.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: HandlerType,
    /// Defaults for the handler's parameters; a source's `params` win.
    pub params: Params,
}

/// A named, scheduled unit of backup.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Unique name; first segment of its atoms' global paths.
    pub name: String,
    /// Name of the handler (exists: checked by validation).
    pub handler: String,
    /// Schedule expression as written (validated), `None`: on demand only.
    pub schedule: Option<String>,
    /// Where the datasets come from.
    pub datasets: DatasetsSource,
    /// Run before a backup; a failure aborts the backup.
    pub pre_backup_command: Option<String>,
    /// Run after a backup, always, with `TABACCO_STATUS=ok|error`.
    pub post_backup_command: Option<String>,
    /// Run before a restore.
    pub pre_restore_command: Option<String>,
    /// Run after a restore, always, with `TABACCO_STATUS=ok|error`.
    pub post_restore_command: Option<String>,
    /// Parameters for the handler (merged over the handler's own).
    pub params: Params,
    /// Bound on the whole backup of the source.
    pub timeout: Option<Duration>,
    /// Retention policy of its versions (its own `retention`, else the
    /// default of `agent.yml`); `None`: versions are never forgotten.
    pub retention: Option<crate::retention::Policy>,
    /// File this source was read from, for messages.
    pub file: PathBuf,
}

/// Static datasets, or a command printing them.
#[derive(Debug, Clone)]
pub enum DatasetsSource {
    /// Listed in the configuration.
    Static(Vec<DatasetSpec>),
    /// A command printing a YAML or JSON list of dataset specs.
    Command(String),
}

/// A dataset as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Name, unique within the source; a safe path segment (may contain `/`
    /// inside).
    pub name: String,
    /// Where the atoms come from.
    pub atoms: AtomsSource,
}

/// Static atoms, or a command printing one atom name a line.
#[derive(Debug, Clone, PartialEq)]
pub enum AtomsSource {
    /// Listed in the configuration.
    Static(Vec<AtomSpec>),
    /// A command printing one atom name per line.
    Command(String),
}

/// An atom as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomSpec {
    /// Name, unique within the dataset; a safe path segment.
    pub name: String,
    /// For the `file` handler: path relative to the root (default: name).
    pub path: Option<String>,
}
