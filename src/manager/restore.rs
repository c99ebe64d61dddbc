//! Restore from the index record (issue 11): what each dataset version
//! needs is in its record (the handler type, the repository holding the
//! snapshot, each atom's path in the snapshot), so a host restores another
//! host's atoms, or any atom without the source in its configuration.
//!
//! Per dataset version, the plan is one of:
//!
//! - a file dataset whose atoms all have a recorded `snapshot_path`: those
//!   paths are restored to `TARGET/<snapshot path>`, whatever this host's
//!   configuration says;
//! - a pipe dataset on a host that configures its source with a pipe
//!   handler (and no `--raw`): each atom goes to the local
//!   `restore_command`;
//! - a pipe dataset otherwise, or with `--raw`: each atom's stream is
//!   written as the file `TARGET/<source>/<dataset>/<atom>`;
//! - a record written before these fields: the local source's handler, as
//!   before (it fails naming the source when this host has none).
//!
//! A record naming a repository other than this host's is refused, naming
//! both.

use std::path::{Path, PathBuf};

use crate::config::HandlerType;
use crate::handler::Handler;
use crate::model::{Backup, Dataset, atom_path};
use crate::names::join_below;
use crate::runtime::RuntimeContext;

/// How a dataset version is restored.
pub enum Method {
    /// `restic restore` of the recorded absolute paths.
    RecordedPaths(Vec<PathBuf>),
    /// Through the local source's handler.
    Local(Box<dyn Handler>),
    /// Each atom's stream written to a file (`--raw`, or no local pipe
    /// source).
    Raw,
}

impl Method {
    /// A short description for the plan.
    pub fn describe(&self) -> &'static str {
        match self {
            Method::RecordedPaths(_) => "files at their recorded paths",
            Method::Local(_) => "through the local source's handler",
            Method::Raw => "raw stream to a file",
        }
    }
}

/// One atom of a planned dataset restore.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAtom {
    /// Global atom path (`source/dataset/atom`).
    pub atom: String,
    /// Where its data lands (for a local pipe restore: the
    /// `TABACCO_TARGET` its `restore_command` gets).
    pub target: PathBuf,
    /// Its recorded size in bytes, if known.
    pub size: Option<i64>,
    /// Its recorded number of files, if known.
    pub files: Option<i64>,
}

/// The handler type of a dataset: as recorded, or (an older record) that
/// of the local source of that name.
pub fn handler_type(rctx: &RuntimeContext, ds: &Dataset) -> Option<HandlerType> {
    match ds.handler.as_deref() {
        Some("file") => Some(HandlerType::File),
        Some("pipe") => Some(HandlerType::Pipe),
        Some(_) => None,
        None => local_handler_type(rctx, &ds.source),
    }
}

/// The handler type of the local source `name`, if configured.
pub fn local_handler_type(rctx: &RuntimeContext, name: &str) -> Option<HandlerType> {
    let source = rctx.find_source(name)?;
    Some(rctx.handler_spec(&source.handler)?.kind)
}

/// Choose how to restore `ds` (of backup `b`) below `dest`; an error says
/// why it cannot be restored on this host.
pub fn method(
    rctx: &RuntimeContext,
    ds: &Dataset,
    raw: bool,
    local: impl FnOnce() -> Result<Box<dyn Handler>, String>,
) -> Result<Method, String> {
    let kind = handler_type(rctx, ds).ok_or_else(|| match &ds.handler {
        Some(h) => format!(
            "the record names handler type {h:?}, which this version of tabacco cannot restore"
        ),
        None => format!(
            "the record predates restore-anywhere (no handler type) and this host configures no source '{}': restore it on a host that does, or copy that source's configuration here",
            ds.source
        ),
    })?;
    let local_kind = local_handler_type(rctx, &ds.source);
    match kind {
        HandlerType::File => {
            let paths: Option<Vec<PathBuf>> = ds
                .atoms
                .iter()
                .map(|a| a.snapshot_path.as_ref().map(PathBuf::from))
                .collect();
            match paths {
                Some(paths) if !paths.is_empty() => Ok(Method::RecordedPaths(paths)),
                _ if local_kind == Some(HandlerType::File) => Ok(Method::Local(local()?)),
                _ => Err(format!(
                    "the record predates restore-anywhere (no paths in the snapshot) and this host configures no file source '{}': restore it on the host that made it, or copy that source's configuration here",
                    ds.source
                )),
            }
        }
        HandlerType::Pipe if !raw && local_kind == Some(HandlerType::Pipe) => {
            Ok(Method::Local(local()?))
        }
        HandlerType::Pipe => Ok(Method::Raw),
    }
}

/// Where each atom of `ds` lands with `method` below `dest`.
pub fn planned_atoms(
    ds: &Dataset,
    method: &Method,
    dest: &Path,
) -> Result<Vec<PlannedAtom>, String> {
    ds.atoms
        .iter()
        .map(|a| {
            let global = atom_path(&ds.source, &ds.name, &a.name);
            let target = match method {
                Method::RecordedPaths(_) => {
                    let recorded = a.snapshot_path.as_deref().unwrap_or_default();
                    join_below(dest, recorded.trim_start_matches('/'))?
                }
                Method::Raw => join_below(dest, &global)?,
                Method::Local(_) => dest.to_path_buf(),
            };
            Ok(PlannedAtom {
                atom: global,
                target,
                size: a.size,
                files: a.files,
            })
        })
        .collect()
}

/// The name of atom `name`'s stream in the snapshot, for `restic dump`:
/// the recorded path, or the name the pipe handler stores it under.
pub fn stream_name(ds: &Dataset, name: &str) -> String {
    ds.atoms
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.snapshot_path.as_deref())
        .map(|p| p.trim_start_matches('/').to_string())
        .unwrap_or_else(|| atom_path(&ds.source, &ds.name, name))
}

/// The error for a snapshot held by another repository than this host's.
pub fn other_repository(
    b: &Backup,
    ds: &Dataset,
    recorded: &str,
    local_id: &str,
    location: &str,
) -> String {
    format!(
        "snapshot {} (backup {}, host {}) is in the repository with id {recorded}, but this host's repository {location} has id {local_id}: restore on a host that uses repository {recorded}, or point this host's configuration at it",
        short(&ds.snapshot_id),
        b.id,
        b.host,
    )
}

/// The first 8 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Atom;

    fn ds(handler: Option<&str>, paths: &[Option<&str>]) -> Dataset {
        Dataset {
            id: "d".into(),
            name: "sites".into(),
            source: "www".into(),
            handler: handler.map(str::to_string),
            atoms: paths
                .iter()
                .enumerate()
                .map(|(i, p)| Atom {
                    name: format!("a{i}"),
                    snapshot_path: p.map(str::to_string),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn recorded_paths_land_below_the_target_and_raw_streams_by_name() {
        let d = ds(Some("file"), &[Some("/srv/a/site1"), Some("/srv/a/x y")]);
        let m = Method::RecordedPaths(vec![]);
        let atoms = planned_atoms(&d, &m, Path::new("/t")).unwrap();
        assert_eq!(atoms[0].target, PathBuf::from("/t/srv/a/site1"));
        assert_eq!(atoms[1].target, PathBuf::from("/t/srv/a/x y"));
        let atoms = planned_atoms(&d, &Method::Raw, Path::new("/t")).unwrap();
        assert_eq!(atoms[0].target, PathBuf::from("/t/www/sites/a0"));
        assert_eq!(stream_name(&d, "a0"), "srv/a/site1");
        assert_eq!(stream_name(&ds(None, &[None]), "a0"), "www/sites/a0");
    }

    /// A context whose configuration has the file source `www` and the
    /// pipe source `mysql`.
    fn rctx(dir: &Path) -> RuntimeContext {
        let w = |rel: &str, text: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "agent.yml",
            "hostname: b\nwork_dir: work\nrepository:\n  type: restic\n  params:\n    uri: /nonexistent\n    password: x\n",
        );
        w("handlers/files.yml", "name: files\ntype: file\n");
        w(
            "handlers/dump.yml",
            "name: dump\ntype: pipe\nparams:\n  backup_command: echo x\n  restore_command: cat\n",
        );
        w(
            "sources/www.yml",
            "name: www\nhandler: files\nparams: {path: /srv/b}\ndatasets: [{name: sites, atoms: [{name: a0}]}]\n",
        );
        w(
            "sources/mysql.yml",
            "name: mysql\nhandler: dump\ndatasets: [{name: sites, atoms: [{name: a0}]}]\n",
        );
        let config = crate::config::load::load(&dir.join("agent.yml")).unwrap();
        RuntimeContext::new(std::sync::Arc::new(config)).unwrap()
    }

    fn choose(rctx: &RuntimeContext, d: &Dataset, raw: bool) -> Result<&'static str, String> {
        method(rctx, d, raw, || {
            Ok(Box::new(crate::handler::file::FileHandler::new(
                crate::params::file::FileParams {
                    root: "/local".into(),
                },
            )))
        })
        .map(|m| m.describe())
    }

    #[test]
    fn the_record_decides_and_the_local_configuration_only_fills_in() {
        let dir = tempfile::tempdir().unwrap();
        let rctx = rctx(dir.path());
        // A file record with its paths: those, whatever this host has.
        let file = ds(Some("file"), &[Some("/srv/a/a0")]);
        assert_eq!(
            choose(&rctx, &file, false),
            Ok("files at their recorded paths")
        );
        // An older file record: the local source, if this host has it.
        let old = ds(None, &[None]);
        assert_eq!(
            choose(&rctx, &old, false),
            Ok("through the local source's handler")
        );
        let mut elsewhere = old.clone();
        elsewhere.source = "db".into();
        let e = choose(&rctx, &elsewhere, false).unwrap_err();
        assert!(e.contains("no source 'db'"), "{e}");
        // Pipe: the local restore_command where configured, else raw.
        let mut pipe = ds(Some("pipe"), &[Some("/mysql/sites/a0")]);
        pipe.source = "mysql".into();
        assert_eq!(
            choose(&rctx, &pipe, false),
            Ok("through the local source's handler")
        );
        assert_eq!(choose(&rctx, &pipe, true), Ok("raw stream to a file"));
        pipe.source = "pg".into();
        assert_eq!(choose(&rctx, &pipe, false), Ok("raw stream to a file"));
        // A pipe record for a name this host uses as a file source: raw.
        pipe.source = "www".into();
        assert_eq!(choose(&rctx, &pipe, false), Ok("raw stream to a file"));
        let odd = ds(Some("tape"), &[None]);
        assert!(choose(&rctx, &odd, false).unwrap_err().contains("\"tape\""));
    }

    #[test]
    fn other_repository_names_both() {
        let b = Backup {
            id: "b1".into(),
            timestamp: chrono::Utc::now(),
            host: "a".into(),
            datasets: vec![],
        };
        let mut d = ds(Some("file"), &[]);
        d.snapshot_id = "0123456789".into();
        let e = other_repository(&b, &d, "1111", "2222", "/repo/b");
        assert!(
            e.contains("1111")
                && e.contains("2222")
                && e.contains("/repo/b")
                && e.contains("01234567"),
            "{e}"
        );
    }
}
