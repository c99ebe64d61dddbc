//! Reads `agent.yml`, `handlers/*.yml` and `sources/*.yml` and validates
//! them into a [`Config`], collecting every error with its file and field.
//!
//! Parsing goes through [`super::raw`] (serde-saphyr, unknown keys
//! rejected); a YAML or type error ends the parse of that one file and is
//! reported with its field path and line/column, while the other files are
//! still read and validated. Validation then checks names, references,
//! schedules, durations and handler parameters, and keeps going past every
//! mistake so that `tabacco config check` can list them all at once.
//!
//! The pure checks ([`check_schedule`], [`parse_dataset_specs`]) are public
//! so that the manager can apply the same rules to what commands print at
//! backup time; names and ids are checked by [`crate::names`], the one
//! owner of those rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::names::{check_atom_path, check_host, check_name, check_source_name};
use crate::params::Params;
use crate::retention::{CalendarDuration, Policy};

mod main;
mod read;
mod sources;

use main::*;
use read::{SpecFile, read_main, read_spec_dir};
pub(crate) use read::{is_blank_yaml, parse_doc};
use sources::*;

use super::raw::{
    OneOrMany, RawConfig, RawDataset, RawHandler, RawMetadb, RawRetention, RawSource,
};
use super::{
    AtomSpec, AtomsSource, Config, DatasetSpec, DatasetsSource, HandlerSpec, HandlerType,
    MetadbClientConfig, QueueSpec, RepositorySpec, SourceSpec,
};

/// Default state directory when `work_dir` is not set.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/tabacco";

/// Name of the random seed file inside `work_dir` when `random_seed_file`
/// is not set.
pub const DEFAULT_RANDOM_SEED_FILE: &str = "random_seed";

/// Grace period for running jobs when the agent stops, when
/// `shutdown_timeout` is not set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the agent reports to the metadata store, when
/// `status_report_interval` is not set.
pub const DEFAULT_STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Repository name when `repository.name` is not set.
pub const DEFAULT_REPOSITORY_NAME: &str = "main";

/// Field name used for errors that concern a whole file or directory
/// rather than one of its fields (unreadable file, YAML syntax error).
pub const WHOLE_FILE: &str = "(document)";

/// One configuration mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// File the mistake is in.
    pub file: PathBuf,
    /// Field path, e.g. `sources[0].datasets[1].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Every mistake found in a configuration tree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Read and validate the configuration tree rooted at the main file `path`.
///
/// `handlers/*.yml` and `sources/*.yml` (also `.yaml`; hidden files are
/// skipped) are read from the main file's directory in file-name order; a
/// missing directory means none. Relative paths in the main file are
/// resolved against its directory. Returns every mistake found, each with
/// its file and field.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let main_path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = main_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut errors = Vec::new();

    let main = read_main(&main_path, &mut errors)
        .and_then(|raw| resolve_main(&main_path, &dir, raw, &mut errors));

    let handler_files = read_spec_dir::<RawHandler>(&dir.join("handlers"), "handlers", &mut errors);
    let handlers = resolve_handlers(handler_files, &mut errors);

    let source_files = read_spec_dir::<RawSource>(&dir.join("sources"), "sources", &mut errors);
    let default_retention = main.as_ref().and_then(|m| m.retention);
    let sources = resolve_sources(source_files, &handlers, default_retention, &mut errors);

    // Parse errors were found while reading each directory, validation
    // errors afterwards: present them file by file, in reading order.
    let handlers_dir = dir.join("handlers");
    errors.sort_by_cached_key(|e| {
        let group = if e.file == main_path {
            0
        } else if e.file.starts_with(&handlers_dir) {
            1
        } else {
            2
        };
        (group, e.file.clone())
    });

    match main {
        Some(main) if errors.is_empty() => Ok(Config {
            path: main_path,
            hostname: main.hostname,
            queue: main.queue,
            repository: main.repository,
            dry_run: main.dry_run,
            default_nice_level: main.default_nice_level,
            default_io_class: main.default_io_class,
            work_dir: main.work_dir,
            random_seed_file: main.random_seed_file,
            metadb: main.metadb,
            shutdown_timeout: main.shutdown_timeout,
            status_report_interval: main.status_report_interval,
            verify: main.verify,
            prune_schedule: main.prune_schedule,
            handlers: handlers
                .into_iter()
                .filter_map(|(name, h)| {
                    h.kind.map(|kind| {
                        (
                            name.clone(),
                            HandlerSpec {
                                name,
                                kind,
                                params: h.params,
                            },
                        )
                    })
                })
                .collect(),
            sources,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

// ---------------------------------------------------------------------------
// Error collection and field paths

/// Appends errors for one file.
struct FileErrors<'a> {
    file: &'a Path,
    out: &'a mut Vec<ConfigError>,
}

impl FileErrors<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(ConfigError {
            file: self.file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// `prefix.key`, or `key` at the top.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `prefix.key[i]`.
fn index(prefix: &str, key: &str, i: usize) -> String {
    format!("{}[{i}]", join(prefix, key))
}

/// Field prefix of the `i`th spec of a file: `kind[i]` for a list file,
/// nothing for a single-spec file.
fn spec_prefix(kind: &str, list: bool, i: usize) -> String {
    if list {
        format!("{kind}[{i}]")
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------
// Pure checks, public for the manager

/// Check a schedule expression: `@hourly`, `@daily`, `@weekly`,
/// `@monthly`, `@every DURATION`, `@random_every DURATION` (duration > 0,
/// e.g. `6h`, `1h30m`) or a five-field cron expression (minute hour
/// day-of-month month day-of-week). The parsing itself lives in
/// [`crate::schedule::Schedule::parse`], which the agent uses too.
pub fn check_schedule(s: &str) -> Result<(), String> {
    crate::schedule::Schedule::parse(s).map(|_| ())
}

/// Parse a duration such as `90s`, `30m`, `6h` or `1h30m`; zero is an
/// error.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}): write e.g. 90s, 30m, 6h or 1h30m"))?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is zero: a duration must be greater than zero"
        ));
    }
    Ok(d)
}

/// Parse what a `datasets_command` printed: a YAML or JSON list of dataset
/// specs (`name`, `atoms: [{name, path}]` or `atoms_command`), checked with
/// the same rules as static datasets. Blank output is an empty list. The
/// error lists every mistake, each with its field (`datasets[1].name`).
pub fn parse_dataset_specs(text: &str) -> Result<Vec<DatasetSpec>, String> {
    if is_blank_yaml(text) {
        return Ok(Vec::new());
    }
    let raw: Vec<RawDataset> =
        parse_doc(text).map_err(|f| format!("{}: {}", f.field("datasets"), f.message))?;
    let mut problems = Vec::new();
    let specs = resolve_datasets(raw, "datasets", &mut problems);
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HandlerType;
    use crate::params::ParamValue;

    /// Main file used by most tests: valid, minimal.
    const MAIN: &str = "\
hostname: host1
repository:
  type: restic
  params:
    uri: /srv/restic
    password_file: /etc/tabacco/restic-password
";

    /// A file handler and a pipe handler, one per file.
    const HANDLERS: &[(&str, &str)] = &[
        (
            "handlers/files.yml",
            "name: files\ntype: file\nparams:\n  path: /\n",
        ),
        (
            "handlers/pipes.yml",
            "name: pg\ntype: pipe\nparams:\n  backup_command: pg_dump \"$TABACCO_ATOM\"\n  restore_command: psql\n",
        ),
    ];

    /// Write `files` (relative path, content) into a fresh temp dir.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    /// Load a tree made of `MAIN`, `HANDLERS` and `extra` (which may
    /// replace them).
    fn load_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, ConfigErrors>) {
        let mut files: Vec<(&str, &str)> = vec![("agent.yml", MAIN)];
        files.extend_from_slice(HANDLERS);
        for (rel, content) in extra {
            files.retain(|(r, _)| r != rel);
            files.push((rel, content));
        }
        let dir = tree(&files);
        let r = load(&dir.path().join("agent.yml"));
        (dir, r)
    }

    fn ok(extra: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let (dir, r) = load_with(extra);
        match r {
            Ok(c) => (dir, c),
            Err(e) => panic!("expected a valid config, got {e}"),
        }
    }

    fn errors(extra: &[(&str, &str)]) -> (tempfile::TempDir, Vec<ConfigError>) {
        let (dir, r) = load_with(extra);
        match r {
            Ok(_) => panic!("expected errors, the config was accepted"),
            Err(e) => (dir, e.0),
        }
    }

    /// Assert that an error exists in `file` (relative to the tree) at
    /// `field` whose message contains `needle`.
    fn assert_error(
        dir: &tempfile::TempDir,
        errs: &[ConfigError],
        file: &str,
        field: &str,
        needle: &str,
    ) {
        let file = dir.path().join(file);
        assert!(
            errs.iter()
                .any(|e| e.file == file && e.field == field && e.message.contains(needle)),
            "no error in {} at {field:?} containing {needle:?}; got:\n{}",
            file.display(),
            ConfigErrors(errs.to_vec())
        );
    }

    /// Only the given error (file, field, needle) is reported.
    fn assert_only_error(extra: &[(&str, &str)], file: &str, field: &str, needle: &str) {
        let (dir, errs) = errors(extra);
        assert_error(&dir, &errs, file, field, needle);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    }

    // ----- valid trees -----

    #[test]
    fn valid_tree_with_single_and_list_files() {
        let main = "\
hostname: host1
queue_config:
  workers:
    backup: 3
    datasets: 1
repository:
  name: offsite
  type: restic
  params:
    uri: s3:https://s3.example/bucket
    password_file: secrets/pw
    env:
      AWS_ACCESS_KEY_ID: abc
dry_run: true
default_nice_level: 10
default_io_class: 3
work_dir: state
metadb:
  url: https://metadb.example:5332
  tls:
    cert: tls/client.pem
    key: /etc/ssl/client.key
    ca: tls/ca.pem
  token_file: token
";
        let more_handlers = "\
- name: raw
  type: file
- name: mysql
  type: pipe
  params:
    backup_command: mysqldump --databases \"$TABACCO_ATOM\"
    restore_command: mysql
";
        let single_source = "\
name: etc
handler: files
schedule: '@daily'
timeout: 1h30m
params:
  path: /etc
datasets:
  - name: config
    atoms:
      - name: ssh
        path: ssh
      - name: passwd
  - name: spool/mail
    atoms_command: ls /var/spool/mail
";
        let list_sources = "\
- name: sites
  handler: mysql
  schedule: 15 3 * * *
  datasets_command: list-sites --yaml
  pre_backup_command: ' '
  post_backup_command: echo done
- name: home
  handler: raw
  params:
    path: /home
  datasets:
    - name: users
      atoms: [{name: alice}]
";
        let (dir, c) = ok(&[
            ("agent.yml", main),
            ("handlers/more.yaml", more_handlers),
            ("sources/a.yml", single_source),
            ("sources/b.yml", list_sources),
            ("sources/notes.txt", "not: [yaml"),
            ("sources/.hidden.yml", "not: [yaml"),
        ]);
        let root = dir.path();
        assert_eq!(c.path, root.join("agent.yml"));
        assert_eq!(c.hostname, "host1");
        assert_eq!(c.queue.workers("backup"), 3);
        assert_eq!(c.queue.workers("datasets"), 1);
        assert_eq!(c.repository.name, "offsite");
        assert_eq!(c.repository.kind, "restic");
        assert_eq!(
            c.repository
                .params
                .get_str("password_file")
                .unwrap()
                .as_deref(),
            Some("secrets/pw"),
            "password_file stays as written"
        );
        assert!(c.dry_run);
        assert_eq!(c.default_nice_level, 10);
        assert_eq!(c.default_io_class, 3);
        assert_eq!(c.work_dir, root.join("state"));
        assert_eq!(c.random_seed_file, root.join("state").join("random_seed"));
        let m = c.metadb.as_ref().unwrap();
        assert_eq!(m.url, "https://metadb.example:5332");
        assert_eq!(m.tls_cert, Some(root.join("tls/client.pem")));
        assert_eq!(m.tls_key, Some(PathBuf::from("/etc/ssl/client.key")));
        assert_eq!(m.tls_ca, Some(root.join("tls/ca.pem")));
        assert_eq!(m.token_file, Some(root.join("token")));

        let names: Vec<_> = c.handlers.keys().cloned().collect();
        assert_eq!(names, ["files", "mysql", "pg", "raw"]);
        assert_eq!(c.handlers["mysql"].kind, HandlerType::Pipe);
        assert_eq!(c.handlers["raw"].kind, HandlerType::File);

        let names: Vec<_> = c.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["etc", "sites", "home"],
            "file order, then list order"
        );
        let etc = c.find_source("etc").unwrap();
        assert_eq!(etc.file, root.join("sources/a.yml"));
        assert_eq!(etc.schedule.as_deref(), Some("@daily"));
        assert_eq!(etc.timeout, Some(Duration::from_secs(5400)));
        assert_eq!(etc.params.get_str("path").unwrap().as_deref(), Some("/etc"));
        let DatasetsSource::Static(sets) = &etc.datasets else {
            panic!("static datasets expected")
        };
        assert_eq!(
            sets[0],
            DatasetSpec {
                name: "config".into(),
                atoms: AtomsSource::Static(vec![
                    AtomSpec {
                        name: "ssh".into(),
                        path: Some("ssh".into())
                    },
                    AtomSpec {
                        name: "passwd".into(),
                        path: None
                    },
                ]),
            }
        );
        assert_eq!(
            sets[1].atoms,
            AtomsSource::Command("ls /var/spool/mail".into())
        );
        let sites = c.find_source("sites").unwrap();
        assert_eq!(sites.file, root.join("sources/b.yml"));
        assert_eq!(sites.schedule.as_deref(), Some("15 3 * * *"));
        assert!(matches!(&sites.datasets, DatasetsSource::Command(c) if c == "list-sites --yaml"));
        assert_eq!(sites.pre_backup_command, None, "blank command means none");
        assert_eq!(sites.post_backup_command.as_deref(), Some("echo done"));
        assert_eq!(sites.timeout, None);
        assert_eq!(c.find_source("home").unwrap().schedule, None);
    }

    #[test]
    fn verify_schedule_and_options_are_read_and_checked() {
        let (_d, c) = ok(&[("agent.yml", MAIN)]);
        assert_eq!(c.verify, crate::config::VerifySpec::default());
        let (_d, c) = ok(&[(
            "agent.yml",
            &format!(
                "{MAIN}verify_schedule: '@weekly'\nverify:\n  pattern: 'db/*'\n  all: true\n  num_versions: 0\n  check: false\n  read_data_subset: 5%\n  live_tolerance_percent: 2.5\n  scratch_budget: 1GiB\n"
            ),
        )]);
        let v = &c.verify;
        assert_eq!(v.schedule.as_deref(), Some("@weekly"));
        assert_eq!(
            (v.pattern.as_str(), v.sample, v.num_versions, v.check),
            ("db/*", None, 0, false)
        );
        assert_eq!(v.read_data_subset.as_deref(), Some("5%"));
        assert_eq!(
            (v.live_tolerance_percent, v.scratch_budget),
            (2.5, Some(1 << 30))
        );
        let bad = format!(
            "{MAIN}verify_schedule: sometimes\nverify:\n  pattern: '[a'\n  sample: 0\n  read_data_subset: lots\n  live_tolerance_percent: 101\n  scratch_budget: big\n"
        );
        let (dir, errs) = errors(&[("agent.yml", &bad)]);
        for field in [
            "verify_schedule",
            "verify.pattern",
            "verify.sample",
            "verify.read_data_subset",
            "verify.live_tolerance_percent",
            "verify.scratch_budget",
        ] {
            assert_error(&dir, &errs, "agent.yml", field, "");
        }
    }

    #[test]
    fn retention_defaults_from_agent_yml_and_is_checked() {
        let src = "name: s\nhandler: files\ndatasets: [{name: d, atoms: [{name: a}]}]\n";
        let own = format!("{src}retention: {{keep_daily: 7, keep_within: 1y2d}}\n");
        let main = format!("{MAIN}retention: {{keep_last: 3}}\nprune_schedule: '@weekly'\n");
        let (_d, c) = ok(&[
            ("agent.yml", &main),
            ("sources/a.yml", src),
            ("sources/b.yml", &own.replace("name: s", "name: t")),
        ]);
        let a = c.find_source("s").unwrap().retention.unwrap();
        assert_eq!((a.keep_last, a.keep_daily), (3, 0));
        let b = c.find_source("t").unwrap().retention.unwrap();
        assert_eq!((b.keep_last, b.keep_daily), (0, 7));
        assert_eq!(b.keep_within.unwrap().to_string(), "1y2d");
        assert_eq!(c.prune_schedule.as_deref(), Some("@weekly"));
        let (_d, c) = ok(&[("sources/a.yml", src)]);
        assert!(c.find_source("s").unwrap().retention.is_none());
        assert!(c.prune_schedule.is_none());
        assert_only_error(
            &[(
                "sources/a.yml",
                &format!("{src}retention: {{keep_within: 2w}}\n"),
            )],
            "sources/a.yml",
            "retention.keep_within",
            "unknown unit",
        );
        assert_only_error(
            &[(
                "sources/a.yml",
                &format!("{src}retention: {{keep_last: -1}}\n"),
            )],
            "sources/a.yml",
            "retention.keep_last",
            "out of range",
        );
        assert_only_error(
            &[("agent.yml", &format!("{MAIN}retention: {{keep_last: 0}}\n"))],
            "agent.yml",
            "retention",
            "keeps nothing",
        );
        assert_only_error(
            &[("agent.yml", &format!("{MAIN}prune_schedule: sometimes\n"))],
            "agent.yml",
            "prune_schedule",
            "",
        );
    }

    #[test]
    fn shutdown_timeout_defaults_to_a_minute_and_must_parse() {
        let (_d, c) = ok(&[]);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
        let (_d, c) = ok(&[("agent.yml", &format!("{MAIN}shutdown_timeout: 2m30s\n"))]);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(150));
        let (_d, c) = ok(&[("agent.yml", &format!("{MAIN}shutdown_timeout: 0s\n"))]);
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
        assert_only_error(
            &[("agent.yml", &format!("{MAIN}shutdown_timeout: soon\n"))],
            "agent.yml",
            "shutdown_timeout",
            "not a duration",
        );
    }

    #[test]
    fn missing_handlers_and_sources_dirs_are_empty() {
        let dir = tree(&[("agent.yml", MAIN)]);
        let c = load(&dir.path().join("agent.yml")).unwrap();
        assert!(c.handlers.is_empty());
        assert!(c.sources.is_empty());
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let main = "repository:\n  type: restic\n  params: {uri: /r, password: secret}\n";
        let dir = tree(&[("agent.yml", main)]);
        let c = load(&dir.path().join("agent.yml")).unwrap();
        let machine = gethostname::gethostname().into_string().unwrap();
        assert_eq!(c.hostname, machine);
        assert_eq!(c.repository.name, "main");
        assert_eq!(c.work_dir, PathBuf::from("/var/lib/tabacco"));
        assert_eq!(
            c.random_seed_file,
            PathBuf::from("/var/lib/tabacco/random_seed")
        );
        assert!(c.metadb.is_none());
        assert!(!c.dry_run);
        assert_eq!((c.default_nice_level, c.default_io_class), (0, 0));
        assert_eq!(c.queue.workers("backup"), 2);
    }

    #[test]
    fn relative_work_dir_and_seed_file_resolve_against_main_dir() {
        let main = format!("{MAIN}work_dir: ./var/state\nrandom_seed_file: seed\n");
        let dir = tree(&[("etc/agent.yml", main.as_str())]);
        let c = load(&dir.path().join("etc/agent.yml")).unwrap();
        assert_eq!(c.work_dir, dir.path().join("etc/./var/state"));
        assert_eq!(c.random_seed_file, dir.path().join("etc/seed"));
    }

    #[test]
    fn relative_main_path_is_made_absolute() {
        let dir = tree(&[("agent.yml", MAIN)]);
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(dir.path(), &cwd).join("agent.yml");
        let c = load(&rel).unwrap();
        assert!(c.path.is_absolute());
        assert!(c.work_dir.is_absolute());
    }

    /// `target` relative to `base` via enough `..` (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let mut p = PathBuf::new();
        for _ in base.components().skip(1) {
            p.push("..");
        }
        p.join(target.strip_prefix("/").unwrap())
    }

    #[test]
    fn empty_source_file_is_skipped() {
        let (_d, c) = ok(&[("sources/empty.yml", "# nothing yet\n---\n")]);
        assert!(c.sources.is_empty());
    }

    // ----- main file -----

    #[test]
    fn main_file_missing_is_reported() {
        let dir = tree(&[]);
        let errs = load(&dir.path().join("agent.yml")).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].file, dir.path().join("agent.yml"));
        assert!(errs[0].message.contains("cannot read"), "{}", errs[0]);
    }

    #[test]
    fn repository_is_required() {
        assert_only_error(
            &[("agent.yml", "hostname: h\n")],
            "agent.yml",
            "repository",
            "missing",
        );
    }

    #[test]
    fn repository_type_must_be_restic() {
        let main = MAIN.replace("type: restic", "type: borg");
        assert_only_error(
            &[("agent.yml", &main)],
            "agent.yml",
            "repository.type",
            "only restic",
        );
        let main = MAIN.replace("  type: restic\n", "");
        assert_only_error(
            &[("agent.yml", &main)],
            "agent.yml",
            "repository.type",
            "missing",
        );
    }

    #[test]
    fn repository_uri_is_required() {
        let main = MAIN.replace("    uri: /srv/restic\n", "");
        assert_only_error(
            &[("agent.yml", &main)],
            "agent.yml",
            "repository.params.uri",
            "missing",
        );
    }

    #[test]
    fn repository_needs_exactly_one_password_source() {
        let neither = MAIN.replace("    password_file: /etc/tabacco/restic-password\n", "");
        assert_only_error(
            &[("agent.yml", &neither)],
            "agent.yml",
            "repository.params.password_file",
            "exactly one of params.password_file",
        );
        let both = format!("{MAIN}    password: hunter2\n");
        let (dir, errs) = errors(&[("agent.yml", &both)]);
        assert_error(
            &dir,
            &errs,
            "agent.yml",
            "repository.params.password",
            "exclude each other",
        );
        assert!(!ConfigErrors(errs).to_string().contains("hunter2"));
        let inline = MAIN.replace("password_file: /etc/tabacco/restic-password", "password: x");
        ok(&[("agent.yml", &inline)]);
    }

    /// Issue 16: `config check` and the repository adapter read the
    /// repository's parameters with one reader, so a file the adapter
    /// refuses is refused here too.
    #[test]
    fn repository_env_may_not_choose_the_password() {
        let env = format!("{MAIN}    env:\n      RESTIC_PASSWORD: x\n");
        assert_only_error(
            &[("agent.yml", &env)],
            "agent.yml",
            "repository.params.env",
            "sets RESTIC_PASSWORD",
        );
    }

    #[test]
    fn repository_name_defaults_to_main() {
        let (_d, c) = ok(&[]);
        assert_eq!(c.repository.name, "main");
    }

    #[test]
    fn io_class_and_nice_level_ranges() {
        for (extra, field) in [
            ("default_io_class: 4\n", "default_io_class"),
            ("default_io_class: -1\n", "default_io_class"),
            ("default_nice_level: 20\n", "default_nice_level"),
            ("default_nice_level: -21\n", "default_nice_level"),
        ] {
            let main = format!("{MAIN}{extra}");
            assert_only_error(
                &[("agent.yml", &main)],
                "agent.yml",
                field,
                "must be between",
            );
        }
        let main = format!("{MAIN}default_io_class: 0\ndefault_nice_level: -20\n");
        ok(&[("agent.yml", &main)]);
        let main = format!("{MAIN}default_io_class: 3\ndefault_nice_level: 19\n");
        ok(&[("agent.yml", &main)]);
    }

    #[test]
    fn queue_workers_must_be_positive() {
        let main = format!("{MAIN}queue_config:\n  workers:\n    backup: 0\n");
        assert_only_error(
            &[("agent.yml", &main)],
            "agent.yml",
            "queue_config.workers.backup",
            "at least 1",
        );
    }

    #[test]
    fn metadb_needs_an_http_url_and_tls_pairs() {
        let main = format!("{MAIN}metadb:\n  url: metadb.example\n  tls:\n    cert: c.pem\n");
        let (dir, errs) = errors(&[("agent.yml", &main)]);
        assert_error(&dir, &errs, "agent.yml", "metadb.url", "not an http");
        assert_error(
            &dir,
            &errs,
            "agent.yml",
            "metadb.tls.key",
            "tls.cert needs tls.key",
        );
        assert_eq!(errs.len(), 2);
    }

    // ----- parse errors -----

    #[test]
    fn unknown_key_in_main_file_is_rejected() {
        let main = format!("{MAIN}work_directory: /x\n");
        let (dir, errs) = errors(&[("agent.yml", &main)]);
        assert_error(
            &dir,
            &errs,
            "agent.yml",
            "work_directory",
            "unknown field `work_directory`",
        );
    }

    #[test]
    fn unknown_key_in_nested_spec_names_file_and_key() {
        let src = "\
- name: a
  handler: files
  datasets: [{name: d, atoms: [{name: x}]}]
- name: b
  handler: files
  datasets:
    - name: d
      atoms:
        - name: x
          paht: y
";
        let (dir, errs) = errors(&[("sources/s.yml", src)]);
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "sources[1].datasets[0].atoms[0].paht",
            "unknown field `paht`",
        );
        assert!(errs[0].message.contains("line 10"), "{}", errs[0]);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn unknown_key_in_single_spec_file_has_no_list_prefix() {
        let (dir, errs) = errors(&[("handlers/x.yml", "name: x\ntype: file\nparam: {}\n")]);
        assert_error(
            &dir,
            &errs,
            "handlers/x.yml",
            "param",
            "unknown field `param`",
        );
    }

    #[test]
    fn yaml_syntax_error_is_reported_with_file_and_line() {
        let (dir, errs) = errors(&[("sources/bad.yml", "name: a\n  handler: : files\n")]);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].file, dir.path().join("sources/bad.yml"));
        assert!(errs[0].message.contains("line 2"), "{}", errs[0]);
    }

    #[test]
    fn wrong_type_is_reported_with_field_path() {
        let (dir, errs) = errors(&[(
            "sources/s.yml",
            "name: a\nhandler: files\ndatasets:\n  - name: d\n    atoms: 3\n",
        )]);
        assert_error(&dir, &errs, "sources/s.yml", "datasets[0].atoms", "line 5");
    }

    // ----- names -----

    #[test]
    fn handler_name_must_be_non_empty() {
        assert_only_error(
            &[("handlers/x.yml", "type: file\n")],
            "handlers/x.yml",
            "name",
            "missing",
        );
        assert_only_error(
            &[("handlers/x.yml", "- name: ''\n  type: file\n")],
            "handlers/x.yml",
            "handlers[0].name",
            "empty",
        );
    }

    #[test]
    fn handler_type_must_be_file_or_pipe() {
        assert_only_error(
            &[("handlers/x.yml", "name: x\ntype: tar\n")],
            "handlers/x.yml",
            "type",
            "must be file or pipe",
        );
    }

    #[test]
    fn duplicate_handler_names_report_both_files() {
        let (dir, errs) = errors(&[("handlers/zz.yml", "- name: files\n  type: pipe\n")]);
        assert_error(
            &dir,
            &errs,
            "handlers/zz.yml",
            "handlers[0].name",
            "already defined",
        );
        let other = dir.path().join("handlers/files.yml").display().to_string();
        assert!(errs[0].message.contains(&other), "{}", errs[0]);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn duplicate_source_names_report_both_files() {
        let s = "name: etc\nhandler: files\ndatasets: [{name: d, atoms_command: ls}]\n";
        let (dir, errs) = errors(&[("sources/a.yml", s), ("sources/b.yml", s)]);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_error(&dir, &errs, "sources/b.yml", "name", "already defined");
        let first = dir.path().join("sources/a.yml").display().to_string();
        assert!(errs[0].message.contains(&first), "{}", errs[0]);
    }

    #[test]
    fn source_name_must_be_a_safe_segment() {
        for bad in ["", "a/b", "..", ".", "a,b", "a b", "a\tb"] {
            let s = format!(
                "name: {bad:?}\nhandler: files\ndatasets: [{{name: d, atoms_command: ls}}]\n"
            );
            assert_only_error(&[("sources/s.yml", &s)], "sources/s.yml", "name", "");
        }
    }

    #[test]
    fn dataset_and_atom_names_are_checked() {
        let s = "\
name: s
handler: files
datasets:
  - name: ''
    atoms: [{name: x}]
  - name: a/../b
    atoms: [{name: x}]
  - name: ok
    atoms: [{name: x}, {path: y}, {name: /abs}]
";
        let (dir, errs) = errors(&[("sources/s.yml", s)]);
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[0].name",
            "needs a name",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[1].name",
            "\"..\" path segment",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[2].atoms[1].name",
            "needs a name",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[2].atoms[2].name",
            "starts or ends",
        );
        assert_eq!(errs.len(), 4, "{}", ConfigErrors(errs.clone()));
    }

    #[test]
    fn dataset_names_unique_within_source_and_atoms_within_dataset() {
        let s = "\
name: s
handler: files
datasets:
  - name: d
    atoms: [{name: x}, {name: y}, {name: x}]
  - name: d
    atoms_command: ls
";
        let (dir, errs) = errors(&[("sources/s.yml", s)]);
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[0].atoms[2].name",
            "appears twice",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[1].name",
            "appears twice",
        );
        assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
        // The same dataset name in two sources is fine.
        let two = "\
- {name: a, handler: files, datasets: [{name: d, atoms_command: ls}]}
- {name: b, handler: files, datasets: [{name: d, atoms_command: ls}]}
";
        ok(&[("sources/s.yml", two)]);
    }

    // ----- references, schedules, timeouts -----

    #[test]
    fn source_handler_must_exist() {
        let s = "name: s\nhandler: nope\ndatasets: [{name: d, atoms_command: ls}]\n";
        assert_only_error(
            &[("sources/s.yml", s)],
            "sources/s.yml",
            "handler",
            "known handlers are files, pg",
        );
        let s = "name: s\ndatasets: [{name: d, atoms_command: ls}]\n";
        assert_only_error(
            &[("sources/s.yml", s)],
            "sources/s.yml",
            "handler",
            "missing",
        );
    }

    #[test]
    fn schedule_must_parse() {
        let s = "name: s\nhandler: files\nschedule: '* * * * * *'\ndatasets: [{name: d, atoms_command: ls}]\n";
        assert_only_error(&[("sources/s.yml", s)], "sources/s.yml", "schedule", "five");
    }

    #[test]
    fn timeout_must_parse_and_be_positive() {
        for (t, needle) in [
            ("soon", "not a duration"),
            ("0s", "zero"),
            ("90", "not a duration"),
        ] {
            let s = format!(
                "name: s\nhandler: files\ntimeout: {t}\ndatasets: [{{name: d, atoms_command: ls}}]\n"
            );
            assert_only_error(&[("sources/s.yml", &s)], "sources/s.yml", "timeout", needle);
        }
    }

    // ----- datasets / atoms shape -----

    #[test]
    fn datasets_or_datasets_command_exactly_one() {
        let both = "name: s\nhandler: files\ndatasets_command: ls\ndatasets: [{name: d, atoms_command: ls}]\n";
        assert_only_error(
            &[("sources/s.yml", both)],
            "sources/s.yml",
            "datasets",
            "exclude each other",
        );
        let neither = "name: s\nhandler: files\n";
        assert_only_error(
            &[("sources/s.yml", neither)],
            "sources/s.yml",
            "datasets",
            "missing",
        );
        let empty = "name: s\nhandler: files\ndatasets: []\n";
        assert_only_error(
            &[("sources/s.yml", empty)],
            "sources/s.yml",
            "datasets",
            "is empty",
        );
        let blank_cmd = "name: s\nhandler: files\ndatasets_command: ''\n";
        assert_only_error(
            &[("sources/s.yml", blank_cmd)],
            "sources/s.yml",
            "datasets",
            "missing",
        );
    }

    #[test]
    fn atoms_or_atoms_command_exactly_one() {
        let s = "\
- name: s
  handler: files
  datasets:
    - {name: both, atoms: [{name: x}], atoms_command: ls}
    - {name: neither}
    - {name: empty, atoms: []}
";
        let (dir, errs) = errors(&[("sources/s.yml", s)]);
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "sources[0].datasets[0].atoms",
            "exclude each other",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "sources[0].datasets[1].atoms",
            "missing",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "sources[0].datasets[2].atoms",
            "is empty",
        );
        assert_eq!(errs.len(), 3, "{}", ConfigErrors(errs.clone()));
    }

    // ----- handler fit -----

    #[test]
    fn unknown_queue_names_and_directories_named_yml_are_mistakes() {
        let main = format!("{MAIN}queue_config:\n  workers:\n    backups: 3\n");
        let (dir, errs) = errors(&[("agent.yml", &main)]);
        assert_error(
            &dir,
            &errs,
            "agent.yml",
            "queue_config.workers.backups",
            "unknown queue \"backups\": the queues are backup",
        );
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));

        let (dir, r) = load_with(&[("sources/sub.yml/x.yml", "name: x\n")]);
        let errs = r.unwrap_err().0;
        assert_error(
            &dir,
            &errs,
            "sources/sub.yml",
            WHOLE_FILE,
            "is not a regular file",
        );
    }

    #[test]
    fn pipe_datasets_hold_any_number_of_atoms() {
        let s = "\
name: db
handler: pg
params: {parallel_dumps: 4, spool_budget: 10GiB}
datasets:
  - name: one
    atoms: [{name: a}]
  - name: two
    atoms: [{name: a}, {name: b}]
";
        ok(&[("sources/s.yml", s)]);
        let s = "name: db\nhandler: pg\nparams: {parallel_dumps: 0}\ndatasets: [{name: d, atoms_command: ls}]\n";
        assert_only_error(
            &[("sources/s.yml", s)],
            "sources/s.yml",
            "params.parallel_dumps",
            "out of range",
        );
    }

    #[test]
    fn file_atom_paths_must_stay_below_the_root() {
        let s = "\
name: s
handler: files
datasets:
  - name: d
    atoms:
      - {name: a, path: /etc}
      - {name: b, path: x/../../y}
      - {name: c, path: x/y}
";
        let (dir, errs) = errors(&[("sources/s.yml", s)]);
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[0].atoms[0].path",
            "absolute",
        );
        assert_error(
            &dir,
            &errs,
            "sources/s.yml",
            "datasets[0].atoms[1].path",
            "'..'",
        );
        assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
        // Paths are not the pipe handler's business.
        let p = "name: s\nhandler: pg\ndatasets: [{name: d, atoms: [{name: a, path: /x}]}]\n";
        ok(&[("sources/s.yml", p)]);
    }

    #[test]
    fn file_handler_needs_an_absolute_root() {
        let h = [("handlers/files.yml", "name: files\ntype: file\n")];
        let s = "name: s\nhandler: files\ndatasets: [{name: d, atoms_command: ls}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        assert_only_error(&files, "sources/s.yml", "params.path", "missing");

        let s = "name: s\nhandler: files\nparams: {path: rel}\ndatasets: [{name: d, atoms_command: ls}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        assert_only_error(&files, "sources/s.yml", "params.path", "absolute");

        // The handler's root counts, and a relative one is blamed on it.
        let h2 = [(
            "handlers/files.yml",
            "name: files\ntype: file\nparams: {path: srv}\n",
        )];
        let s = "name: s\nhandler: files\ndatasets: [{name: d, atoms_command: ls}]\n";
        let mut files = h2.to_vec();
        files.push(("sources/s.yml", s));
        assert_only_error(
            &files,
            "sources/s.yml",
            "params.path",
            "from handler \"files\"",
        );

        let s = "name: s\nhandler: files\nparams: {path: /srv}\ndatasets: [{name: d, atoms_command: ls}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        let (_d, c) = ok(&files);
        assert_eq!(
            c.find_source("s")
                .unwrap()
                .params
                .get_str("path")
                .unwrap()
                .as_deref(),
            Some("/srv")
        );
    }

    #[test]
    fn pipe_handler_needs_backup_and_restore_commands() {
        let h = [(
            "handlers/pipes.yml",
            "name: pg\ntype: pipe\nparams: {backup_command: dump}\n",
        )];
        let s = "name: s\nhandler: pg\ndatasets: [{name: d, atoms: [{name: a}]}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        assert_only_error(&files, "sources/s.yml", "params.restore_command", "missing");

        let s = "name: s\nhandler: pg\nparams: {restore_command: load}\ndatasets: [{name: d, atoms: [{name: a}]}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        ok(&files);

        let s = "name: s\nhandler: pg\nparams: {restore_command: [a]}\ndatasets: [{name: d, atoms: [{name: a}]}]\n";
        let mut files = h.to_vec();
        files.push(("sources/s.yml", s));
        assert_only_error(
            &files,
            "sources/s.yml",
            "params.restore_command",
            "must be a string",
        );
    }

    // ----- many mistakes at once -----

    #[test]
    fn bad_tree_reports_every_mistake_with_file_and_field() {
        let main = "\
repository:
  type: restic
  params:
    uri: /srv/restic
default_io_class: 7
";
        let handlers = "\
- name: files
  type: file
  params: {path: /}
- name: ''
  type: pipe
- name: odd
  type: zip
";
        let a = "\
name: mail
handler: files
schedule: every day
datasets:
  - name: boxes
    atoms: [{name: alice}, {name: alice}]
";
        let b = "\
- name: mail
  handler: ghost
  datasets_command: ls
- name: web
  handler: files
  timeout: forever
  datasets:
    - name: sites
      atoms:
        - {name: a, path: ../etc}
";
        let c = "name: broken\nhandler: [files\n";
        let (dir, errs) = errors(&[
            ("agent.yml", main),
            ("handlers/files.yml", handlers),
            ("sources/a.yml", a),
            ("sources/b.yml", b),
            ("sources/c.yml", c),
        ]);
        let expected = [
            (
                "agent.yml",
                "repository.params.password_file",
                "exactly one",
            ),
            ("agent.yml", "default_io_class", "between 0 and 3"),
            ("handlers/files.yml", "handlers[1].name", "empty"),
            ("handlers/files.yml", "handlers[2].type", "\"zip\""),
            ("sources/a.yml", "schedule", "five"),
            (
                "sources/a.yml",
                "datasets[0].atoms[1].name",
                "appears twice",
            ),
            ("sources/b.yml", "sources[0].name", "already defined"),
            (
                "sources/b.yml",
                "sources[0].handler",
                "unknown handler \"ghost\"",
            ),
            ("sources/b.yml", "sources[1].timeout", "not a duration"),
            (
                "sources/b.yml",
                "sources[1].datasets[0].atoms[0].path",
                "'..'",
            ),
        ];
        for (file, field, needle) in expected {
            assert_error(&dir, &errs, file, field, needle);
        }
        let c_errs: Vec<_> = errs
            .iter()
            .filter(|e| e.file == dir.path().join("sources/c.yml"))
            .collect();
        assert_eq!(c_errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert!(c_errs[0].message.contains("line"), "{}", c_errs[0]);
        assert_eq!(
            errs.len(),
            expected.len() + 1,
            "{}",
            ConfigErrors(errs.clone())
        );
        // Reported in file order: main file, handlers, then sources by name.
        let order: Vec<PathBuf> = errs.iter().map(|e| e.file.clone()).collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|f| (!f.ends_with("agent.yml"), f.clone()));
        assert_eq!(order, sorted);
    }

    // ----- datasets_command output -----

    #[test]
    fn parse_dataset_specs_reads_yaml() {
        let text = "\
- name: site1
  atoms:
    - name: db
- name: site2/files
  atoms_command: ls /srv/site2
";
        let specs = parse_dataset_specs(text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            specs[0],
            DatasetSpec {
                name: "site1".into(),
                atoms: AtomsSource::Static(vec![AtomSpec {
                    name: "db".into(),
                    path: None
                }]),
            }
        );
        assert_eq!(specs[1].atoms, AtomsSource::Command("ls /srv/site2".into()));
    }

    #[test]
    fn parse_dataset_specs_reads_json() {
        let text = r#"[{"name": "a", "atoms": [{"name": "x", "path": "data/x"}]}, {"name": "b", "atoms_command": "ls"}]"#;
        let specs = parse_dataset_specs(text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            specs[0].atoms,
            AtomsSource::Static(vec![AtomSpec {
                name: "x".into(),
                path: Some("data/x".into())
            }])
        );
        assert_eq!(parse_dataset_specs("  \n").unwrap(), Vec::new());
        assert_eq!(parse_dataset_specs("[]").unwrap(), Vec::new());
    }

    #[test]
    fn parse_dataset_specs_rejects_malformed_output() {
        let e = parse_dataset_specs(r#"[{"name": "a", "atoms": [{"name": "x"}"#).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_dataset_specs("- name: a\n  atom: [x]\n").unwrap_err();
        assert!(
            e.starts_with("datasets[0].atom: unknown field `atom`"),
            "{e}"
        );
        let e = parse_dataset_specs("name: a\natoms_command: ls\n").unwrap_err();
        assert!(e.contains("line 1"), "a single map is not a list: {e}");
        let e =
            parse_dataset_specs("- {name: ../x, atoms_command: ls}\n- {name: y}\n").unwrap_err();
        assert!(e.contains("datasets[0].name: dataset name \"../x\""), "{e}");
        assert!(e.contains("datasets[1].atoms: missing"), "{e}");
    }

    #[test]
    fn errors_display_file_field_and_message() {
        let (dir, r) = load_with(&[(
            "sources/s.yml",
            "name: a/b\nhandler: files\ndatasets_command: ls\n",
        )]);
        let text = r.unwrap_err().to_string();
        let file = dir.path().join("sources/s.yml");
        assert_eq!(
            text,
            format!(
                "1 configuration error(s):\n  {}: name: source name \"a/b\" contains '/': it must be a single path segment",
                file.display()
            )
        );
    }

    #[test]
    fn params_accept_all_value_kinds() {
        let s = "\
name: s
handler: files
params:
  path: /srv
  n: {y: 1, on: [a, 2, 1.5, true, {no: off}]}
datasets_command: ls
";
        let (_d, c) = ok(&[("sources/s.yml", s)]);
        let p = &c.find_source("s").unwrap().params;
        let ParamValue::Map(n) = &p.0["n"] else {
            panic!("map expected")
        };
        assert_eq!(n["y"], ParamValue::Int(1));
        assert!(matches!(&n["on"], ParamValue::List(l) if l.len() == 5));
    }
}
