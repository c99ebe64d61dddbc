//! `handlers/*.yml` and `sources/*.yml`: handlers, sources, their datasets
//! and atoms, resolved and checked (names, references, parameters through
//! [`crate::params`]).

use super::*;

/// A handler as read, with where it was defined (for messages).
pub(super) struct HandlerEntry {
    /// `None` when the type was missing or unknown (already reported).
    pub(super) kind: Option<HandlerType>,
    pub(super) params: Params,
    pub(super) file: PathBuf,
    pub(super) field: String,
}

pub(super) fn resolve_handlers(
    files: Vec<SpecFile<RawHandler>>,
    out: &mut Vec<ConfigError>,
) -> BTreeMap<String, HandlerEntry> {
    let mut handlers: BTreeMap<String, HandlerEntry> = BTreeMap::new();
    for file in files {
        let mut errs = FileErrors {
            file: &file.path,
            out: &mut *out,
        };
        for (i, raw) in file.specs.into_iter().enumerate() {
            let p = spec_prefix("handlers", file.list, i);
            let name = match raw.name {
                None => {
                    errs.add(join(&p, "name"), "missing: every handler needs a name");
                    None
                }
                Some(n) if n.trim().is_empty() => {
                    errs.add(join(&p, "name"), "is empty: every handler needs a name");
                    None
                }
                Some(n) => Some(n),
            };
            let kind = match raw.kind.as_deref() {
                Some("file") => Some(HandlerType::File),
                Some("pipe") => Some(HandlerType::Pipe),
                None => {
                    errs.add(join(&p, "type"), "missing: must be file or pipe");
                    None
                }
                Some(k) => {
                    errs.add(
                        join(&p, "type"),
                        format!("unknown handler type {k:?}: must be file or pipe"),
                    );
                    None
                }
            };
            let Some(name) = name else { continue };
            if let Some(first) = handlers.get(&name) {
                errs.add(
                    join(&p, "name"),
                    format!(
                        "handler {name:?} is already defined in {} ({}): handler names must be unique",
                        first.file.display(),
                        if first.field.is_empty() { "name".to_string() } else { join(&first.field, "name") }
                    ),
                );
                continue;
            }
            handlers.insert(
                name,
                HandlerEntry {
                    kind,
                    params: raw.params.unwrap_or_default(),
                    file: file.path.clone(),
                    field: p,
                },
            );
        }
    }
    handlers
}

// ---------------------------------------------------------------------------
// Sources

/// `Some(s)` unless absent or blank.
pub(super) fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

pub(super) fn resolve_sources(
    files: Vec<SpecFile<RawSource>>,
    handlers: &BTreeMap<String, HandlerEntry>,
    default_retention: Option<Policy>,
    out: &mut Vec<ConfigError>,
) -> Vec<SourceSpec> {
    let mut seen: HashMap<String, (PathBuf, String)> = HashMap::new();
    let mut sources = Vec::new();
    for file in files {
        for (i, raw) in file.specs.into_iter().enumerate() {
            let p = spec_prefix("sources", file.list, i);
            let mut errs = FileErrors {
                file: &file.path,
                out: &mut *out,
            };
            if let Some(s) =
                resolve_source(&p, raw, handlers, default_retention, &mut errs, &mut seen)
            {
                sources.push(s);
            }
        }
    }
    sources
}

pub(super) fn resolve_source(
    p: &str,
    raw: RawSource,
    handlers: &BTreeMap<String, HandlerEntry>,
    default_retention: Option<Policy>,
    errs: &mut FileErrors<'_>,
    seen: &mut HashMap<String, (PathBuf, String)>,
) -> Option<SourceSpec> {
    let before = errs.out.len();
    let name_field = join(p, "name");

    let name = raw.name.unwrap_or_default();
    if let Err(e) = check_source_name(&name) {
        errs.add(&name_field, e);
    } else if let Some((file, field)) = seen.get(&name) {
        errs.add(
            &name_field,
            format!(
                "source {name:?} is already defined in {} ({field}): source names must be unique",
                file.display()
            ),
        );
    } else {
        seen.insert(name.clone(), (errs.file.to_path_buf(), name_field.clone()));
    }

    let handler_name = raw.handler.unwrap_or_default();
    let handler = if handler_name.trim().is_empty() {
        errs.add(join(p, "handler"), "missing: name one of the handlers");
        None
    } else {
        match handlers.get(&handler_name) {
            Some(h) => Some(h),
            None => {
                let known: Vec<&str> = handlers.keys().map(String::as_str).collect();
                errs.add(
                    join(p, "handler"),
                    if known.is_empty() {
                        format!("unknown handler {handler_name:?}: no handlers are defined (handlers/*.yml)")
                    } else {
                        format!(
                            "unknown handler {handler_name:?}: known handlers are {}",
                            known.join(", ")
                        )
                    },
                );
                None
            }
        }
    };

    let schedule = non_empty(raw.schedule).map(|s| s.trim().to_string());
    if let Some(Err(e)) = schedule.as_deref().map(check_schedule) {
        errs.add(join(p, "schedule"), e);
    }

    let timeout = match non_empty(raw.timeout) {
        None => None,
        Some(t) => match parse_positive_duration(&t) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.add(join(p, "timeout"), e);
                None
            }
        },
    };

    let retention = match raw.retention {
        Some(r) => resolve_retention(&join(p, "retention"), r, errs),
        None => default_retention,
    };

    let datasets_field = join(p, "datasets");
    let command = non_empty(raw.datasets_command);
    let datasets = match (raw.datasets, command) {
        (Some(list), Some(_)) if !list.is_empty() => {
            errs.add(
                &datasets_field,
                "datasets and datasets_command exclude each other: keep one",
            );
            None
        }
        (_, Some(cmd)) => Some(DatasetsSource::Command(cmd)),
        (Some(list), None) if list.is_empty() => {
            errs.add(
                &datasets_field,
                "is empty: list at least one dataset, or use datasets_command",
            );
            None
        }
        (Some(list), None) => {
            let mut problems = Vec::new();
            let specs = resolve_datasets(list, &datasets_field, &mut problems);
            for (field, message) in problems {
                errs.add(field, message);
            }
            Some(DatasetsSource::Static(specs))
        }
        (None, None) => {
            errs.add(
                &datasets_field,
                "missing: give datasets (a list) or datasets_command (a command printing them)",
            );
            None
        }
    };

    let params = raw.params.unwrap_or_default();
    if let Some((h, kind)) = handler.and_then(|h| h.kind.map(|k| (h, k))) {
        check_handler_fit(p, &handler_name, h, kind, &params, datasets.as_ref(), errs);
    }

    if errs.out.len() > before {
        return None;
    }
    Some(SourceSpec {
        name,
        handler: handler_name,
        schedule,
        datasets: datasets?,
        pre_backup_command: non_empty(raw.pre_backup_command),
        post_backup_command: non_empty(raw.post_backup_command),
        pre_restore_command: non_empty(raw.pre_restore_command),
        post_restore_command: non_empty(raw.post_restore_command),
        params,
        timeout,
        retention,
        file: errs.file.to_path_buf(),
    })
}

/// Checks that depend on the source's handler type: required parameters
/// (after merging) and what static datasets may hold.
pub(super) fn check_handler_fit(
    p: &str,
    handler_name: &str,
    handler: &HandlerEntry,
    kind: HandlerType,
    params: &Params,
    datasets: Option<&DatasetsSource>,
    errs: &mut FileErrors<'_>,
) {
    let merged = handler.params.merged_with(params);
    let origin = |key: &str| {
        if params.contains(key) {
            String::new()
        } else {
            format!(
                " (from handler {handler_name:?} in {})",
                handler.file.display()
            )
        }
    };
    let static_sets = match datasets {
        Some(DatasetsSource::Static(sets)) => sets.as_slice(),
        _ => &[],
    };
    match kind {
        HandlerType::File => {
            let checked = crate::params::file::FileParams::from_params(&merged).map(|_| ());
            add_param_errors(p, checked, &merged, &origin, errs);
            for (j, set) in static_sets.iter().enumerate() {
                let AtomsSource::Static(atoms) = &set.atoms else {
                    continue;
                };
                for (k, atom) in atoms.iter().enumerate() {
                    if let Some(Err(e)) = atom.path.as_deref().map(check_atom_path) {
                        errs.add(
                            join(&index(&index(p, "datasets", j), "atoms", k), "path"),
                            e,
                        );
                    }
                }
            }
        }
        HandlerType::Pipe => {
            let checked = crate::params::pipe::PipeParams::from_params(&merged).map(|_| ());
            add_param_errors(p, checked, &merged, &origin, errs);
        }
    }
}

/// Report what a handler's parameter check found, each at `p.params.KEY`,
/// saying which handler file a value came from when the source did not set
/// it.
pub(super) fn add_param_errors(
    p: &str,
    checked: Result<(), Vec<(&'static str, String)>>,
    merged: &Params,
    origin: &dyn Fn(&str) -> String,
    errs: &mut FileErrors<'_>,
) {
    for (key, message) in checked.err().unwrap_or_default() {
        let origin = if merged.contains(key) {
            origin(key)
        } else {
            String::new()
        };
        errs.add(
            join(p, &format!("params.{key}")),
            format!("{message}{origin}"),
        );
    }
}

/// Resolve a list of raw datasets, adding `(field, message)` for every
/// mistake (fields start with `prefix[i]`). Returns the datasets that were
/// valid enough to build.
pub(super) fn resolve_datasets(
    raw: Vec<RawDataset>,
    prefix: &str,
    problems: &mut Vec<(String, String)>,
) -> Vec<DatasetSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (j, ds) in raw.into_iter().enumerate() {
        let dp = format!("{prefix}[{j}]");
        let name = ds.name.unwrap_or_default();
        let mut ok = true;
        if let Err(e) = check_name("dataset", &name) {
            problems.push((join(&dp, "name"), e));
            ok = false;
        } else if !names.insert(name.clone()) {
            problems.push((
                join(&dp, "name"),
                format!(
                    "dataset {name:?} appears twice: dataset names must be unique within a source"
                ),
            ));
            ok = false;
        }
        let atoms_field = join(&dp, "atoms");
        let command = non_empty(ds.atoms_command);
        let atoms = match (ds.atoms, command) {
            (Some(list), Some(_)) if !list.is_empty() => {
                problems.push((
                    atoms_field,
                    "atoms and atoms_command exclude each other: keep one".to_string(),
                ));
                None
            }
            (_, Some(cmd)) => Some(AtomsSource::Command(cmd)),
            (Some(list), None) if list.is_empty() => {
                problems.push((
                    atoms_field,
                    "is empty: list at least one atom, or use atoms_command".to_string(),
                ));
                None
            }
            (Some(list), None) => {
                let mut atom_names = HashSet::new();
                let mut atoms = Vec::new();
                for (k, a) in list.into_iter().enumerate() {
                    let ap = format!("{atoms_field}[{k}]");
                    let name = a.name.unwrap_or_default();
                    if let Err(e) = check_name("atom", &name) {
                        problems.push((join(&ap, "name"), e));
                    } else if !atom_names.insert(name.clone()) {
                        problems.push((
                            join(&ap, "name"),
                            format!(
                                "atom {name:?} appears twice: atom names must be unique within a dataset"
                            ),
                        ));
                    } else {
                        atoms.push(AtomSpec { name, path: a.path });
                    }
                }
                Some(AtomsSource::Static(atoms))
            }
            (None, None) => {
                problems.push((
                    atoms_field,
                    "missing: give atoms (a list of {name, path}) or atoms_command (a command printing one atom name a line)".to_string(),
                ));
                None
            }
        };
        if let (true, Some(atoms)) = (ok, atoms) {
            out.push(DatasetSpec { name, atoms });
        }
    }
    out
}
