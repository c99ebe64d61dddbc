//! Serde mirror of the YAML files as the user wrote them (unknown keys are
//! errors). Validated into the types of [`crate::config`] by
//! [`crate::config::load()`].
//!
//! Every key is optional here, even the required ones: a missing key is
//! reported by validation, with its file and field, alongside every other
//! mistake, instead of stopping the parse at the first one. Numbers are read
//! as `i64` so that out-of-range values get a message naming the range.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::params::Params;

/// The main file, `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This host's name; default: the machine's host name.
    pub hostname: Option<String>,
    /// Worker limits per job queue.
    pub queue_config: Option<RawQueueConfig>,
    /// Where backups go.
    pub repository: Option<RawRepository>,
    /// Plan every operation, carry none out (as `--dry-run`).
    pub dry_run: Option<bool>,
    /// `nice` level for user commands and restic (-20..=19).
    pub default_nice_level: Option<i64>,
    /// `ionice` class for user commands and restic (0..=3).
    pub default_io_class: Option<i64>,
    /// State directory; default `/var/lib/tabacco`.
    pub work_dir: Option<String>,
    /// Random seed file; default `<work_dir>/random_seed`.
    pub random_seed_file: Option<String>,
    /// Remote metadata server; absent: embedded SQLite store.
    pub metadb: Option<RawMetadb>,
    /// Agent shutdown: how long running jobs get to finish before they
    /// are cancelled, e.g. `60s`, `5m` (`0s`: cancel at once); default 60s.
    pub shutdown_timeout: Option<String>,
    /// How often the agent reports its running jobs and the state of its
    /// sources to the metadata server, e.g. `30s`; default 30s.
    pub status_report_interval: Option<String>,
    /// When the agent runs a verification (`tabacco verify` with the
    /// options under `verify:`), as a source schedule; absent: never.
    pub verify_schedule: Option<String>,
    /// Options of verification runs (the agent's and `tabacco verify`'s
    /// defaults).
    pub verify: Option<RawVerify>,
    /// Default retention policy of the sources that have none.
    pub retention: Option<RawRetention>,
    /// When the agent prunes the repository (a schedule); absent: this
    /// host never prunes.
    pub prune_schedule: Option<String>,
}

/// `verify` in `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// Glob on `source/dataset/atom`; default `*`.
    pub pattern: Option<String>,
    /// Atom versions drilled per run; default 10.
    pub sample: Option<i64>,
    /// Drill every matching atom version (instead of a sample).
    pub all: Option<bool>,
    /// Versions per atom considered, newest first (0: all); default 1.
    pub num_versions: Option<i64>,
    /// Run `restic check` first; default true.
    pub check: Option<bool>,
    /// `--read-data-subset` of the check (`10%`, `1/5`, `500M`).
    pub read_data_subset: Option<String>,
    /// Share (percent) of compared live files that may differ; default 0.
    pub live_tolerance_percent: Option<f64>,
    /// Most bytes a drill's scratch directory may hold (`20GiB`).
    pub scratch_budget: Option<String>,
}

/// `retention` of a source or in `agent.yml`: restic's `forget` policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Keep the newest N versions.
    pub keep_last: Option<i64>,
    /// Keep one version for each of the last N hours with one.
    pub keep_hourly: Option<i64>,
    /// The same per day.
    pub keep_daily: Option<i64>,
    /// The same per week.
    pub keep_weekly: Option<i64>,
    /// The same per month.
    pub keep_monthly: Option<i64>,
    /// The same per year.
    pub keep_yearly: Option<i64>,
    /// Keep every version within this duration of the newest, restic's
    /// format (`30d`, `1y6m`, `2d12h`).
    pub keep_within: Option<String>,
}

/// `queue_config` in `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueueConfig {
    /// Number of workers by queue name.
    pub workers: Option<std::collections::BTreeMap<String, i64>>,
}

/// `repository` in `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepository {
    /// Name, for messages; default `main`.
    pub name: Option<String>,
    /// Kind; only `restic`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Kind-specific parameters (`uri`, `password` or `password_file`, ...).
    pub params: Option<Params>,
}

/// `metadb` in `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetadb {
    /// Base URL of the metadata server.
    pub url: Option<String>,
    /// Client TLS material.
    pub tls: Option<RawTls>,
    /// File holding a bearer token.
    pub token_file: Option<String>,
}

/// `metadb.tls` in `agent.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Client certificate (PEM).
    pub cert: Option<String>,
    /// Client key (PEM).
    pub key: Option<String>,
    /// CA of the server's certificate (PEM).
    pub ca: Option<String>,
}

/// A handler, in `handlers/*.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    /// Unique name.
    pub name: Option<String>,
    /// `file` or `pipe`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Default parameters; a source's `params` win.
    pub params: Option<Params>,
}

/// A source, in `sources/*.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Unique name.
    pub name: Option<String>,
    /// Name of a handler.
    pub handler: Option<String>,
    /// Schedule expression; absent: on demand only.
    pub schedule: Option<String>,
    /// Static datasets.
    pub datasets: Option<Vec<RawDataset>>,
    /// Command printing the datasets (YAML or JSON list).
    pub datasets_command: Option<String>,
    /// Run before a backup.
    pub pre_backup_command: Option<String>,
    /// Run after a backup.
    pub post_backup_command: Option<String>,
    /// Run before a restore.
    pub pre_restore_command: Option<String>,
    /// Run after a restore.
    pub post_restore_command: Option<String>,
    /// Handler parameters (over the handler's own).
    pub params: Option<Params>,
    /// Bound on the whole backup, e.g. `6h`, `1h30m`.
    pub timeout: Option<String>,
    /// Retention policy of this source's versions (over the default in
    /// `agent.yml`).
    pub retention: Option<RawRetention>,
}

/// A dataset, in a source's `datasets` or a `datasets_command`'s output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// Name, unique within the source.
    pub name: Option<String>,
    /// Static atoms.
    pub atoms: Option<Vec<RawAtom>>,
    /// Command printing one atom name per line.
    pub atoms_command: Option<String>,
}

/// An atom, in a dataset's `atoms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAtom {
    /// Name, unique within the dataset.
    pub name: Option<String>,
    /// For the `file` handler: path below the root (default: the name).
    pub path: Option<String>,
}

/// The content of a `handlers/` or `sources/` file: one spec (a map) or a
/// list of specs.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    /// The file holds a single spec.
    One(T),
    /// The file holds a list of specs.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The specs, and whether the file held a list.
    pub fn into_vec(self) -> (Vec<T>, bool) {
        match self {
            OneOrMany::One(t) => (vec![t], false),
            OneOrMany::Many(v) => (v, true),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

/// Dispatches on the document's shape without buffering it, so errors
/// inside a spec keep their location.
struct OneOrManyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a spec (a map) or a list of specs")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
    }
}

#[cfg(test)]
mod tests {
    /// Every key a user can write is documented in the README's
    /// configuration reference (as `` `key` ``).
    #[test]
    fn readme_documents_every_config_key() {
        let source = include_str!("raw.rs");
        let readme = include_str!("../../README.md");
        let mut rename: Option<String> = None;
        let mut missing = Vec::new();
        for line in source.lines().map(str::trim) {
            if line.starts_with("mod tests") {
                break;
            }
            if let Some(rest) = line.strip_prefix("#[serde(rename = \"") {
                rename = rest.split('"').next().map(str::to_string);
                continue;
            }
            let Some(rest) = line.strip_prefix("pub ") else {
                continue;
            };
            let Some((field, ty)) = rest.split_once(':') else {
                continue;
            };
            if !ty.trim_start().starts_with("Option<") || field.contains(' ') {
                continue;
            }
            let key = rename.take().unwrap_or_else(|| field.to_string());
            if !readme.contains(&format!("`{key}`")) {
                missing.push(key);
            }
        }
        assert!(missing.is_empty(), "README does not document: {missing:?}");
    }
}
