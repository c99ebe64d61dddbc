//! The `pipe` handler's parameters: `backup_command`, `restore_command`,
//! `parallel_dumps`, `spool_budget`. Read and checked here only, for
//! `config check` and for a run.

use super::{Params, parse_size};

/// How many dumps of one dataset run at once unless `parallel_dumps` says
/// otherwise.
pub const DEFAULT_PARALLEL_DUMPS: usize = 2;

/// The pipe handler's parameters (from the handler and the source),
/// checked in one place for `config check` and for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PipeParams {
    /// Writes one atom's data to stdout.
    pub backup_command: String,
    /// Reads one atom's data from stdin.
    pub restore_command: String,
    /// Dumps of one multi-atom dataset running at once.
    pub parallel_dumps: usize,
    /// Most bytes a multi-atom dataset's spool may hold (`None`: the free
    /// space of `work_dir`'s file system, less a reserve).
    pub spool_budget: Option<u64>,
}

impl PipeParams {
    /// Read and check the parameters; every mistake is returned as
    /// `(parameter name, message)`.
    pub fn from_params(params: &Params) -> Result<PipeParams, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let mut command = |key: &'static str| match params.get_str(key) {
            Ok(Some(c)) if !c.trim().is_empty() => c,
            Ok(_) => {
                errors.push((
                    key,
                    format!(
                        "missing: the pipe handler needs params.{key} (in the source or the handler)"
                    ),
                ));
                String::new()
            }
            Err(e) => {
                errors.push((key, e.to_string()));
                String::new()
            }
        };
        let backup_command = command("backup_command");
        let restore_command = command("restore_command");
        let parallel_dumps = match params.get_int("parallel_dumps") {
            Ok(None) => DEFAULT_PARALLEL_DUMPS,
            Ok(Some(n)) if (1..=256).contains(&n) => n as usize,
            Ok(Some(n)) => {
                errors.push((
                    "parallel_dumps",
                    format!("{n} is out of range: dumps running at once, 1 to 256"),
                ));
                DEFAULT_PARALLEL_DUMPS
            }
            Err(e) => {
                errors.push(("parallel_dumps", e.to_string()));
                DEFAULT_PARALLEL_DUMPS
            }
        };
        let spool_budget = match params.get_str("spool_budget") {
            Ok(None) => None,
            Ok(Some(text)) => match parse_size(&text) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(("spool_budget", e));
                    None
                }
            },
            Err(e) => {
                errors.push(("spool_budget", e.to_string()));
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PipeParams {
            backup_command,
            restore_command,
            parallel_dumps,
            spool_budget,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamValue;

    fn params(pairs: &[(&str, ParamValue)]) -> Params {
        Params::from_pairs(pairs)
    }

    fn s(v: &str) -> ParamValue {
        ParamValue::Str(v.into())
    }

    #[test]
    fn params_are_read_and_checked_once() {
        let base = [
            ("backup_command", s("dump")),
            ("restore_command", s("load")),
        ];
        let p = PipeParams::from_params(&params(&base)).unwrap();
        assert_eq!(p.parallel_dumps, DEFAULT_PARALLEL_DUMPS);
        assert_eq!(p.spool_budget, None);

        let mut more = base.to_vec();
        more.push(("parallel_dumps", ParamValue::Int(8)));
        more.push(("spool_budget", s("2GiB")));
        let p = PipeParams::from_params(&params(&more)).unwrap();
        assert_eq!((p.parallel_dumps, p.spool_budget), (8, Some(2 << 30)));

        let bad = [
            ("backup_command", s(" ")),
            ("parallel_dumps", ParamValue::Int(0)),
            ("spool_budget", s("lots")),
        ];
        let errors = PipeParams::from_params(&params(&bad)).unwrap_err();
        let keys: Vec<_> = errors.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "backup_command",
                "restore_command",
                "parallel_dumps",
                "spool_budget"
            ]
        );
        assert!(errors[0].1.starts_with("missing"));
        assert!(errors[3].1.contains("not a size"), "{}", errors[3].1);
        assert!(parse_size("0").is_err());
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
    }
}
