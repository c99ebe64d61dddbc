//! `agent.yml`: the host's settings, queues, repository, metadata server,
//! verification and retention defaults, resolved and checked.

use super::*;

/// The resolved content of `agent.yml`.
pub(super) struct MainParts {
    pub(super) hostname: String,
    pub(super) queue: QueueSpec,
    pub(super) repository: RepositorySpec,
    pub(super) dry_run: bool,
    pub(super) default_nice_level: i32,
    pub(super) default_io_class: i32,
    pub(super) work_dir: PathBuf,
    pub(super) random_seed_file: PathBuf,
    pub(super) metadb: Option<MetadbClientConfig>,
    pub(super) shutdown_timeout: Duration,
    pub(super) status_report_interval: Duration,
    pub(super) verify: crate::config::VerifySpec,
    pub(super) retention: Option<Policy>,
    pub(super) prune_schedule: Option<String>,
}

/// `value` made absolute against `dir` when relative.
pub(super) fn resolve_path(dir: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// An optional path setting: empty is an error, relative is resolved.
pub(super) fn opt_path(
    dir: &Path,
    value: Option<String>,
    field: &str,
    errs: &mut FileErrors<'_>,
) -> Option<PathBuf> {
    let value = value?;
    if value.trim().is_empty() {
        errs.add(field, "is empty: give a path or remove the key");
        return None;
    }
    Some(resolve_path(dir, &value))
}

pub(super) fn resolve_main(
    file: &Path,
    dir: &Path,
    raw: RawConfig,
    out: &mut Vec<ConfigError>,
) -> Option<MainParts> {
    let before = out.len();
    let mut errs = FileErrors { file, out };

    let hostname = match raw.hostname.filter(|h| !h.trim().is_empty()) {
        Some(h) => {
            if let Err(e) = check_host(&h) {
                errs.add("hostname", e);
            }
            h
        }
        None => match gethostname::gethostname().into_string() {
            Ok(h) if !h.is_empty() => {
                if let Err(e) = check_host(&h) {
                    errs.add(
                        "hostname",
                        format!("not set, and the machine's {e}: set hostname"),
                    );
                }
                h
            }
            Ok(_) => {
                errs.add(
                    "hostname",
                    "not set, and the machine has no host name: set hostname",
                );
                String::new()
            }
            Err(h) => {
                errs.add(
                    "hostname",
                    format!(
                        "not set, and the machine's host name {h:?} is not valid UTF-8: set hostname"
                    ),
                );
                String::new()
            }
        },
    };

    let mut workers = BTreeMap::new();
    if let Some(q) = raw.queue_config {
        for (name, n) in q.workers.unwrap_or_default() {
            let field = format!("queue_config.workers.{name}");
            if !crate::config::QUEUES.iter().any(|(q, _, _)| *q == name) {
                let known: Vec<String> = crate::config::QUEUES
                    .iter()
                    .map(|(q, n, what)| format!("{q} ({what}, default {n})"))
                    .collect();
                errs.add(
                    field,
                    format!(
                        "unknown queue {name:?}: the queues are {}",
                        known.join(" and ")
                    ),
                );
            } else if n < 1 {
                errs.add(field, format!("must be at least 1, not {n}"));
            } else {
                workers.insert(name, usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
    }

    let repository = resolve_repository(raw.repository, &mut errs);

    let default_nice_level = match raw.default_nice_level.unwrap_or(0) {
        n @ -20..=19 => n as i32,
        n => {
            errs.add(
                "default_nice_level",
                format!("must be between -20 and 19 (0: unchanged), not {n}"),
            );
            0
        }
    };
    let default_io_class = match raw.default_io_class.unwrap_or(0) {
        n @ 0..=3 => n as i32,
        n => {
            errs.add(
                "default_io_class",
                format!(
                    "must be between 0 and 3 (0: unchanged, 1: realtime, 2: best-effort, 3: idle), not {n}"
                ),
            );
            0
        }
    };

    let work_dir = match raw.work_dir {
        None => PathBuf::from(DEFAULT_WORK_DIR),
        Some(w) if w.trim().is_empty() => {
            errs.add("work_dir", "is empty: give a directory or remove the key");
            PathBuf::from(DEFAULT_WORK_DIR)
        }
        Some(w) => resolve_path(dir, &w),
    };
    let random_seed_file = opt_path(dir, raw.random_seed_file, "random_seed_file", &mut errs)
        .unwrap_or_else(|| work_dir.join(DEFAULT_RANDOM_SEED_FILE));

    let metadb = raw.metadb.and_then(|m| resolve_metadb(dir, m, &mut errs));

    let shutdown_timeout = match raw.shutdown_timeout {
        None => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) => d,
            Err(e) => {
                errs.add(
                    "shutdown_timeout",
                    format!("{t:?} is not a duration ({e}): write e.g. 60s, 5m (0s: cancel running jobs at once)"),
                );
                DEFAULT_SHUTDOWN_TIMEOUT
            }
        },
    };

    let status_report_interval = match raw.status_report_interval {
        None => DEFAULT_STATUS_REPORT_INTERVAL,
        Some(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                errs.add(
                    "status_report_interval",
                    format!("{t:?} is too short: give at least 100ms (default 30s)"),
                );
                DEFAULT_STATUS_REPORT_INTERVAL
            }
            Err(e) => {
                errs.add(
                    "status_report_interval",
                    format!("{t:?} is not a duration ({e}): write e.g. 30s, 1m"),
                );
                DEFAULT_STATUS_REPORT_INTERVAL
            }
        },
    };

    let verify = resolve_verify(
        raw.verify_schedule,
        raw.verify.unwrap_or_default(),
        &mut errs,
    );
    let retention = raw
        .retention
        .and_then(|r| resolve_retention("retention", r, &mut errs));
    let prune_schedule = non_empty(raw.prune_schedule).map(|s| s.trim().to_string());
    if let Some(Err(e)) = prune_schedule.as_deref().map(check_schedule) {
        errs.add("prune_schedule", e);
    }

    if errs.out.len() > before {
        return None;
    }
    Some(MainParts {
        hostname,
        queue: QueueSpec { workers },
        repository: repository?,
        dry_run: raw.dry_run.unwrap_or(false),
        default_nice_level,
        default_io_class,
        work_dir,
        random_seed_file,
        metadb,
        shutdown_timeout,
        status_report_interval,
        verify,
        retention,
        prune_schedule,
    })
}

/// Check `verify_schedule` and `verify:` (every mistake reported with its
/// field).
pub(super) fn resolve_verify(
    schedule: Option<String>,
    raw: crate::config::raw::RawVerify,
    errs: &mut FileErrors<'_>,
) -> crate::config::VerifySpec {
    let mut spec = crate::config::VerifySpec {
        schedule: non_empty(schedule).map(|s| s.trim().to_string()),
        ..Default::default()
    };
    if let Some(Err(e)) = spec.schedule.as_deref().map(check_schedule) {
        errs.add("verify_schedule", e);
    }
    if let Some(p) = raw.pattern {
        if let Err(e) = crate::glob::Pattern::parse(&p) {
            errs.add("verify.pattern", format!("{p:?}: {e}"));
        }
        spec.pattern = p;
    }
    match (raw.all, raw.sample) {
        (Some(true), Some(_)) => {
            errs.add("verify.sample", "give either sample or all: true, not both")
        }
        (Some(true), None) => spec.sample = None,
        (_, Some(n)) if n >= 1 => spec.sample = usize::try_from(n).ok(),
        (_, Some(n)) => errs.add(
            "verify.sample",
            format!("{n}: give a positive number of atom versions per run"),
        ),
        _ => {}
    }
    if let Some(n) = raw.num_versions {
        if n < 0 {
            errs.add(
                "verify.num_versions",
                format!("{n}: give 0 for every version or a positive count"),
            );
        }
        spec.num_versions = n;
    }
    spec.check = raw.check.unwrap_or(true);
    if let Some(d) = raw.read_data_subset {
        if let Err(e) = crate::params::restic::check_data_subset(d.trim()) {
            errs.add("verify.read_data_subset", e);
        }
        spec.read_data_subset = Some(d.trim().to_string());
    }
    if let Some(t) = raw.live_tolerance_percent {
        if !(0.0..=100.0).contains(&t) {
            errs.add(
                "verify.live_tolerance_percent",
                format!("{t}: give a percentage from 0 to 100"),
            );
        }
        spec.live_tolerance_percent = t;
    }
    if let Some(b) = raw.scratch_budget {
        match crate::params::parse_size(&b) {
            Ok(n) => spec.scratch_budget = Some(n),
            Err(e) => errs.add("verify.scratch_budget", e),
        }
    }
    spec
}

/// Validate a `retention` policy (`field`: where it is written). An empty
/// policy is refused: it would keep everything or, with newer restic,
/// nothing.
pub(super) fn resolve_retention(
    field: &str,
    raw: RawRetention,
    errs: &mut FileErrors<'_>,
) -> Option<Policy> {
    let before = errs.out.len();
    let mut count = |key: &str, v: Option<i64>| -> u32 {
        match v {
            None => 0,
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
            Some(n) => {
                errs.add(
                    join(field, key),
                    format!("{n} is out of range: give a count from 0 (unset) upwards"),
                );
                0
            }
        }
    };
    let mut policy = Policy {
        keep_last: count("keep_last", raw.keep_last),
        keep_hourly: count("keep_hourly", raw.keep_hourly),
        keep_daily: count("keep_daily", raw.keep_daily),
        keep_weekly: count("keep_weekly", raw.keep_weekly),
        keep_monthly: count("keep_monthly", raw.keep_monthly),
        keep_yearly: count("keep_yearly", raw.keep_yearly),
        keep_within: None,
    };
    if let Some(w) = non_empty(raw.keep_within) {
        match CalendarDuration::parse(&w) {
            Ok(d) => policy.keep_within = Some(d),
            Err(e) => errs.add(join(field, "keep_within"), e),
        }
    }
    if errs.out.len() > before {
        return None;
    }
    if policy.is_empty() {
        errs.add(
            field,
            "keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within (remove the key to keep every version)",
        );
        return None;
    }
    Some(policy)
}

pub(super) fn resolve_repository(
    raw: Option<crate::config::raw::RawRepository>,
    errs: &mut FileErrors<'_>,
) -> Option<RepositorySpec> {
    let Some(raw) = raw else {
        errs.add(
            "repository",
            "missing: add a repository with type: restic and params.uri and params.password_file",
        );
        return None;
    };
    let before = errs.out.len();
    let name = match raw.name {
        None => DEFAULT_REPOSITORY_NAME.to_string(),
        Some(n) if n.trim().is_empty() => {
            errs.add("repository.name", "is empty: give a name or remove the key");
            n
        }
        Some(n) => n,
    };
    let kind = match raw.kind {
        None => {
            errs.add("repository.type", "missing: must be restic");
            String::new()
        }
        Some(k) if k == "restic" => k,
        Some(k) => {
            errs.add(
                "repository.type",
                format!("unknown repository type {k:?}: only restic is supported"),
            );
            k
        }
    };
    let params = raw.params.unwrap_or_default();
    if kind == "restic"
        && let Err(errors) = crate::params::restic::ResticParams::from_params(&params)
    {
        for (key, message) in errors {
            errs.add(format!("repository.params.{key}"), message);
        }
    }
    if errs.out.len() > before {
        return None;
    }
    Some(RepositorySpec { name, kind, params })
}

pub(super) fn resolve_metadb(
    dir: &Path,
    raw: RawMetadb,
    errs: &mut FileErrors<'_>,
) -> Option<MetadbClientConfig> {
    let url = match raw.url {
        None => {
            errs.add(
                "metadb.url",
                "missing: the metadata server's URL, e.g. https://metadb.example:5332 (remove metadb to use the embedded store)",
            );
            String::new()
        }
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            errs.add(
                "metadb.url",
                format!("{u:?} is not an http:// or https:// URL"),
            );
            u
        }
        Some(u) => u,
    };
    let (tls_cert, tls_key, tls_ca) = match raw.tls {
        None => (None, None, None),
        Some(t) => {
            let cert = opt_path(dir, t.cert, "metadb.tls.cert", errs);
            let key = opt_path(dir, t.key, "metadb.tls.key", errs);
            let ca = opt_path(dir, t.ca, "metadb.tls.ca", errs);
            match (&cert, &key) {
                (Some(_), None) => errs.add("metadb.tls.key", "missing: tls.cert needs tls.key"),
                (None, Some(_)) => errs.add("metadb.tls.cert", "missing: tls.key needs tls.cert"),
                _ => {}
            }
            (cert, key, ca)
        }
    };
    let token_file = opt_path(dir, raw.token_file, "metadb.token_file", errs);
    Some(MetadbClientConfig {
        url,
        tls_cert,
        tls_key,
        tls_ca,
        token_file,
    })
}
