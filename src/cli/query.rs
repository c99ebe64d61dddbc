//! `tabacco query PATTERN`: list backed up atoms, as a table or as the
//! seed's `Backup` JSON objects.

use std::path::Path;

use clap::Args;

use std::collections::BTreeMap;

use super::{AtomFilter, CliError, load_config, open_store};
use crate::model::{AtomVersion, Backup, Verification, atom_path};

/// Arguments of `tabacco query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Host and time filters.
    #[command(flatten)]
    pub filter: AtomFilter,
    /// Only the newest N versions of each atom (default, or 0: all).
    #[arg(long, default_value_t = 0)]
    pub num_versions: u32,
    /// Print JSON (`[Backup]`, as the metadata API returns it).
    #[arg(long)]
    pub json: bool,
    /// Glob on `source/dataset/atom` (`*` also matches `/`).
    pub pattern: String,
}

/// Run the query.
pub async fn run(config_path: &Path, args: QueryArgs) -> Result<(), CliError> {
    let mut req = args.filter.request(&args.pattern, args.num_versions)?;
    if args.filter.backup_id.is_some() {
        // One backup: all its versions are one version.
        req.num_versions = 0;
    }
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    let mut backups = store.find_atoms(&req).await.map_err(super::store_error)?;
    if let Some(id) = &args.filter.backup_id {
        backups.retain(|b| &b.id == id);
    }
    // Without them the listing still answers (an older metadata server
    // does not keep verifications).
    let verified = crate::verify::verifications_of(store.as_ref(), &backups)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("cannot read the atoms' verifications: {e}");
            BTreeMap::new()
        });
    if args.json {
        let text = serde_json::to_string_pretty(&with_verifications(&backups, &verified))
            .map_err(CliError::failed)?;
        println!("{text}");
    } else if !backups.is_empty() {
        print!("{}", table(&backups, &verified));
    }
    // grep's convention: no match is exit 1.
    if backups.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "no backed up atom matches '{}'{}",
            args.pattern,
            args.filter
                .backup_id
                .as_ref()
                .map(|id| format!(" in backup {id}"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}

/// The backups as JSON (`[Backup]`), each atom with its latest
/// verification under `verification` (`{verified_at, result, error,
/// last_ok, ...}` as the index keeps it; absent: never verified).
pub fn with_verifications(
    backups: &[Backup],
    verified: &BTreeMap<AtomVersion, Verification>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(backups).unwrap_or_default();
    for (b, bv) in backups
        .iter()
        .zip(value.as_array_mut().into_iter().flatten())
    {
        let datasets = bv.get_mut("datasets").and_then(|d| d.as_array_mut());
        for (ds, dv) in b.datasets.iter().zip(datasets.into_iter().flatten()) {
            let atoms = dv.get_mut("atoms").and_then(|a| a.as_array_mut());
            for (a, av) in ds.atoms.iter().zip(atoms.into_iter().flatten()) {
                let key = AtomVersion::of(b, ds, a);
                if let (Some(v), Some(obj)) = (verified.get(&key), av.as_object_mut()) {
                    obj.insert(
                        "verification".into(),
                        serde_json::to_value(v).unwrap_or_default(),
                    );
                }
            }
        }
    }
    value
}

/// The human-readable table: one row per atom version, newest first.
pub fn table(backups: &[Backup], verified: &BTreeMap<AtomVersion, Verification>) -> String {
    let mut rows = vec![
        [
            "TIME", "HOST", "ATOM", "BACKUP", "SNAPSHOT", "SIZE", "VERIFIED",
        ]
        .map(String::from),
    ];
    for b in backups {
        for ds in &b.datasets {
            for a in &ds.atoms {
                let key = AtomVersion::of(b, ds, a);
                let verification = verified.get(&key).map_or_else(
                    || "never".to_string(),
                    |v| {
                        format!(
                            "{} {}",
                            v.result.as_str(),
                            v.verified_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )
                    },
                );
                rows.push([
                    b.timestamp
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    b.host.clone(),
                    atom_path(&ds.source, &ds.name, &a.name),
                    b.id.clone(),
                    ds.snapshot_id.chars().take(8).collect(),
                    crate::model::atom_size_text(ds, a),
                    verification,
                ]);
            }
        }
    }
    if rows.len() == 1 {
        return "no matching atoms\n".to_string();
    }
    crate::util::table(&rows, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Atom, Dataset};

    #[test]
    fn table_has_one_row_per_atom_version() {
        let b = Backup {
            id: "b".into(),
            timestamp: "2026-11-24T10:00:00Z".parse().unwrap(),
            host: "h1".into(),
            datasets: vec![Dataset {
                id: "d".into(),
                name: "users".into(),
                source: "home".into(),
                atoms: vec![
                    Atom {
                        name: "alice".into(),
                        path: String::new(),
                        ..Default::default()
                    },
                    Atom {
                        name: "bob".into(),
                        path: String::new(),
                        ..Default::default()
                    },
                ],
                snapshot_id: "0123456789abcdef".into(),
                total_files: 1,
                total_bytes: 2048,
                bytes_added: 0,
                duration: 1,
                ..Default::default()
            }],
        };
        let t = table(&[b], &BTreeMap::new());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME"));
        assert!(lines[1].contains("home/users/alice") && lines[1].contains("01234567"));
        assert!(
            lines[2].contains("2026-11-24T10:00:00Z") && lines[2].contains("2.00 KiB (dataset)")
        );
        assert_eq!(table(&[], &BTreeMap::new()), "no matching atoms\n");
        // A recorded atom size wins over the dataset's.
        let a = Atom {
            name: "x".into(),
            size: Some(5),
            files: Some(2),
            ..Default::default()
        };
        let ds = Dataset::default();
        assert_eq!(crate::model::atom_size_text(&ds, &a), "5 B (2 files)");
        assert_eq!(crate::model::size_text(None, Some(1)), None);
    }
}
