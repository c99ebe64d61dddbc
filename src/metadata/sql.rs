//! SQL pieces shared by the SQLite and PostgreSQL stores: both use the same
//! table shapes and query shapes, so row decoding and the path-range
//! conditions are written once, generic over the sqlx database.

use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::model::Dataset;

/// Decode the dataset columns `id, name, source, snapshot_id, total_files,
/// total_bytes, bytes_added, duration` starting at column `at`.
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
    })
}

/// Append the conditions selecting `atoms` rows of `host` (if not empty)
/// whose global path lies after `after` (an SQL expression, exclusive) or
/// from `lower` (inclusive, if not empty), and before `upper`, joined by
/// `AND`. Appends nothing if there is no condition.
pub(crate) fn push_path_walk_filter<DB>(
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
