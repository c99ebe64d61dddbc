//! SQL pieces shared by the SQLite and PostgreSQL stores: both use the same
//! table shapes and query shapes, so row decoding, the path-range
//! conditions and the last stage of `find_atoms` are written once, generic
//! over the sqlx database.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::glob::PathCondition;
use crate::model::{Atom, Backup, Dataset};

/// The dataset columns [`dataset_from_row`] decodes, in order, as a
/// literal for `concat!` (sqlx takes only static query text).
macro_rules! dataset_columns {
    () => {
        "id, name, source, snapshot_id, total_files, total_bytes, bytes_added, duration, \
         handler, repository_id"
    };
}
pub(crate) use dataset_columns;

/// The atom columns [`atom_from_row`] decodes, in order, as a literal for
/// `concat!`.
macro_rules! atom_columns {
    () => {
        "name, path, snapshot_path, size, files, sha256"
    };
}
pub(crate) use atom_columns;

/// [`dataset_columns`] of the table aliased `d`.
const D_DATASET_COLUMNS: &str = "d.id, d.name, d.source, d.snapshot_id, \
     d.total_files, d.total_bytes, d.bytes_added, d.duration, d.handler, d.repository_id";

/// How many columns [`dataset_from_row`] decodes.
const DATASET_COLUMN_COUNT: usize = 10;

/// Decode the dataset columns [`dataset_columns`] starting at column `at`.
pub(crate) fn dataset_from_row<R>(row: &R, at: usize) -> Result<Dataset, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Dataset {
        id: row.try_get(at)?,
        name: row.try_get(at + 1)?,
        source: row.try_get(at + 2)?,
        atoms: Vec::new(),
        snapshot_id: row.try_get(at + 3)?,
        total_files: row.try_get(at + 4)?,
        total_bytes: row.try_get(at + 5)?,
        bytes_added: row.try_get(at + 6)?,
        duration: row.try_get(at + 7)?,
        handler: row.try_get(at + 8)?,
        repository_id: row.try_get(at + 9)?,
    })
}

/// Decode the atom columns [`atom_columns`] starting at column 0.
pub(crate) fn atom_from_row<R>(row: &R) -> Result<Atom, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Atom {
        name: row.try_get(0)?,
        path: row.try_get(1)?,
        snapshot_path: row.try_get(2)?,
        size: row.try_get(3)?,
        files: row.try_get(4)?,
        sha256: row.try_get(5)?,
    })
}

/// Append `WITH RECURSIVE paths(p) AS (...)`: the distinct global paths
/// to look up for `cond`. A literal path is the one row (`literal_cast`
/// after its parameter, e.g. PostgreSQL's `::text`); a glob walks the
/// distinct paths of `host` (if not empty) in the pattern's literal-prefix
/// range through an `atoms` index, one seek per path (a "loose index
/// scan"), ending with a NULL row. The caller keeps the paths that match
/// the pattern (`WHERE paths.p GLOB ...` or a regex).
pub(crate) fn push_matching_paths<DB>(
    qb: &mut QueryBuilder<DB>,
    cond: &PathCondition,
    host: &str,
    literal_cast: &str,
) where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push("WITH RECURSIVE paths(p) AS (");
    match cond {
        PathCondition::Equals(path) => {
            qb.push("SELECT ")
                .push_bind(path.clone())
                .push(literal_cast);
        }
        PathCondition::Glob { lower, upper, .. } => {
            qb.push("SELECT (SELECT global_path FROM atoms");
            let upper = upper.as_deref();
            if !host.is_empty() || !lower.is_empty() || upper.is_some() {
                qb.push(" WHERE ");
                push_path_walk_filter(qb, host, None, lower, upper);
            }
            qb.push(
                " ORDER BY global_path LIMIT 1) \
                 UNION ALL SELECT (SELECT global_path FROM atoms WHERE ",
            );
            push_path_walk_filter(qb, host, Some("paths.p"), lower, upper);
            qb.push(" ORDER BY global_path LIMIT 1) FROM paths WHERE paths.p IS NOT NULL");
        }
    }
    qb.push(")");
}

/// Append the conditions selecting `atoms` rows of `host` (if not empty)
/// whose global path lies after `after` (an SQL expression, exclusive) or
/// from `lower` (inclusive, if not empty), and before `upper`, joined by
/// `AND`. Appends nothing if there is no condition.
fn push_path_walk_filter<DB>(
    qb: &mut QueryBuilder<DB>,
    host: &str,
    after: Option<&str>,
    lower: &str,
    upper: Option<&str>,
) where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut conds = qb.separated(" AND ");
    if !host.is_empty() {
        conds.push("host = ").push_bind_unseparated(host.to_owned());
    }
    if let Some(expr) = after {
        conds.push("global_path > ").push_unseparated(expr);
    } else if !lower.is_empty() {
        conds
            .push("global_path >= ")
            .push_bind_unseparated(lower.to_owned());
    }
    if let Some(upper) = upper {
        conds
            .push("global_path < ")
            .push_bind_unseparated(upper.to_owned());
    }
}

/// Append the last stage of a `find_atoms` query, after a `matched` CTE of
/// atom rows (`backup_id, dataset_id, host, timestamp` and
/// [`atom_columns`]): the matched atoms grouped into one row per dataset,
/// `atoms_aggregates` (a dialect's aggregates over the atom columns, e.g.
/// one JSON array) giving the atoms, joined with `datasets` once per
/// dataset, newest backup first. Columns: `backup_id, host, timestamp`,
/// the dataset columns of [`dataset_from_row`] from 3, then the
/// aggregates from [`FIND_AGGREGATES_AT`].
///
/// One row per dataset rather than per atom: a 10 000-atom answer of 100
/// datasets costs 100 dataset lookups and 100 rows through the driver,
/// not 10 000 (`bench/index_scale.sh`).
pub(crate) fn push_find_tail<DB: Database>(qb: &mut QueryBuilder<DB>, atoms_aggregates: &[&str]) {
    qb.push(") SELECT m.backup_id, m.host, m.timestamp, ")
        .push(D_DATASET_COLUMNS);
    for i in 0..atoms_aggregates.len() {
        qb.push(format_args!(", m.agg{i}"));
    }
    qb.push(" FROM (SELECT backup_id, dataset_id, host, timestamp");
    for (i, aggregate) in atoms_aggregates.iter().enumerate() {
        qb.push(format_args!(", {aggregate} AS agg{i}"));
    }
    qb.push(
        " FROM matched GROUP BY backup_id, dataset_id, host, timestamp) m \
         JOIN datasets d ON d.backup_id = m.backup_id AND d.id = m.dataset_id \
         ORDER BY m.timestamp DESC, m.backup_id, d.source, d.name, d.id",
    );
}

/// The first aggregate column of a [`push_find_tail`] row.
pub(crate) const FIND_AGGREGATES_AT: usize = 3 + DATASET_COLUMN_COUNT;

/// One row of a `find_atoms` answer: a dataset with its matching atoms,
/// and the backup it belongs to.
pub(crate) struct FoundDataset {
    pub backup_id: String,
    pub host: String,
    pub timestamp: DateTime<Utc>,
    pub dataset: Dataset,
}

/// Group `find_atoms` rows, consecutive per backup (as [`push_find_tail`]
/// orders them), into backups; each dataset's atoms are sorted by name.
pub(crate) fn group_backups(rows: impl IntoIterator<Item = FoundDataset>) -> Vec<Backup> {
    let mut backups: Vec<Backup> = Vec::new();
    for mut row in rows {
        row.dataset
            .atoms
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        match backups.last_mut() {
            Some(b) if b.id == row.backup_id => b.datasets.push(row.dataset),
            _ => backups.push(Backup {
                id: row.backup_id,
                host: row.host,
                timestamp: row.timestamp,
                datasets: vec![row.dataset],
            }),
        }
    }
    backups
}

/// One atom in SQLite's aggregate: the [`atom_columns`] as an array.
type AtomTuple = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// Atoms from a JSON array of [`atom_columns`] arrays (SQLite's
/// aggregate, `null` for a NULL column).
pub(crate) fn atoms_from_json(json: &str) -> Result<Vec<Atom>, serde_json::Error> {
    let rows: Vec<AtomTuple> = serde_json::from_str(json)?;
    Ok(rows
        .into_iter()
        .map(|(name, path, snapshot_path, size, files, sha256)| Atom {
            name,
            path,
            snapshot_path,
            size,
            files,
            sha256,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(backup: &str, dataset: &str, atoms: &[&str]) -> FoundDataset {
        FoundDataset {
            backup_id: backup.to_owned(),
            host: "h".to_owned(),
            timestamp: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            // Only id and source have no default.
            dataset: serde_json::from_value(serde_json::json!({
                "id": dataset,
                "source": "src",
                "atoms": atoms.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            }))
            .expect("a valid dataset"),
        }
    }

    #[test]
    fn consecutive_rows_of_a_backup_share_it_and_atoms_are_sorted() {
        let backups = group_backups([
            found("b2", "d1", &["z", "a"]),
            found("b2", "d2", &["m"]),
            found("b1", "d1", &["b", "a"]),
        ]);
        let shape: Vec<String> = backups
            .iter()
            .flat_map(|b| {
                b.datasets.iter().map(move |d| {
                    let atoms: Vec<&str> = d.atoms.iter().map(|a| a.name.as_str()).collect();
                    format!("{}/{}: {}", b.id, d.id, atoms.join(","))
                })
            })
            .collect();
        assert_eq!(shape, ["b2/d1: a,z", "b2/d2: m", "b1/d1: a,b"]);
        assert_eq!(backups.len(), 2);
    }

    #[test]
    fn json_atoms_keep_names_and_paths_with_any_characters() {
        let atoms = atoms_from_json(
            r#"[["db\"1","a/b",null,null,null,null],["$(x)","","/s/d/$(x)",5,null,"ab"]]"#,
        )
        .unwrap_or_default();
        assert_eq!(atoms.len(), 2);
        assert_eq!(atoms[0].name, "db\"1");
        assert_eq!(atoms[0].path, "a/b");
        assert_eq!(atoms[0].snapshot_path, None);
        assert_eq!(atoms[1].name, "$(x)");
        assert_eq!(atoms[1].snapshot_path.as_deref(), Some("/s/d/$(x)"));
        assert_eq!((atoms[1].size, atoms[1].files), (Some(5), None));
        assert_eq!(atoms[1].sha256.as_deref(), Some("ab"));
        assert!(atoms_from_json("[1]").is_err());
    }
}
