//! The restic repository's parameters: `uri`, `password` or
//! `password_file`, `env`, `cache_dir`, `restic_binary`, `extra_args`,
//! `lock_wait`. Read and checked here only: `config check` and the
//! repository adapter get the same answer for the same file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::Params;

/// Environment variables that choose restic's repository or password.
/// `params.env` may not set them (the repository and password have their
/// own parameters), and restic never inherits them from our environment.
pub const REPOSITORY_ENV_VARS: &[&str] = &[
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_KEY_HINT",
];

/// Where the repository password comes from.
#[derive(Clone, PartialEq)]
pub enum Password {
    /// The password itself (given to restic as `RESTIC_PASSWORD`).
    Value(String),
    /// A file holding it (`RESTIC_PASSWORD_FILE`).
    File(PathBuf),
}

/// Never shows the password itself.
impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Value(_) => f.write_str("<hidden>"),
            Password::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// The repository's parameters, read and checked.
#[derive(Clone, PartialEq)]
pub struct ResticParams {
    /// The repository location (may carry credentials: never log it as is).
    pub uri: String,
    /// Where the password comes from.
    pub password: Password,
    /// Extra environment for restic (backend credentials, tuning).
    pub env: BTreeMap<String, String>,
    /// restic's cache directory (`None`: restic's default).
    pub cache_dir: Option<PathBuf>,
    /// The restic binary (default `restic`, found on `PATH`).
    pub binary: String,
    /// Arguments added to every restic command.
    pub extra_args: Vec<String>,
    /// How long to wait for a repository locked by someone else (`None`:
    /// the adapter's default).
    pub lock_wait: Option<Duration>,
}

/// Never shows the password, environment values (credentials) or the
/// password part of the URI.
impl std::fmt::Debug for ResticParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResticParams")
            .field("uri", &crate::redact::url(&self.uri))
            .field("password", &self.password)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("cache_dir", &self.cache_dir)
            .field("binary", &self.binary)
            .field("extra_args", &self.extra_args)
            .field("lock_wait", &self.lock_wait)
            .finish()
    }
}

impl ResticParams {
    /// Read and check the parameters; every mistake is returned as
    /// `(parameter name, message)`.
    pub fn from_params(params: &Params) -> Result<ResticParams, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let uri = match params.get_str("uri") {
            Ok(Some(u)) if !u.trim().is_empty() => u,
            Ok(_) => {
                errors.push((
                    "uri",
                    "missing: the restic repository, e.g. /srv/restic or s3:https://host/bucket"
                        .to_string(),
                ));
                String::new()
            }
            Err(e) => {
                errors.push(("uri", e.to_string()));
                String::new()
            }
        };
        let mut secret = |key: &'static str| match params.get_str(key) {
            Ok(Some(v)) if v.trim().is_empty() => {
                errors.push((key, "is empty: give a value or remove the key".to_string()));
                None
            }
            Ok(v) => v,
            Err(e) => {
                errors.push((key, e.to_string()));
                None
            }
        };
        let value = secret("password");
        let file = secret("password_file");
        let password = match (value, file) {
            (Some(v), None) => Some(Password::Value(v)),
            (None, Some(f)) => Some(Password::File(PathBuf::from(f))),
            (Some(_), Some(_)) => {
                errors.push((
                    "password",
                    "password and password_file exclude each other: keep one (password_file is safer)"
                        .to_string(),
                ));
                None
            }
            (None, None) => {
                if !params.contains("password") && !params.contains("password_file") {
                    errors.push((
                        "password_file",
                        "missing: give exactly one of params.password_file (a file holding the restic password) or params.password"
                            .to_string(),
                    ));
                }
                None
            }
        };
        let env = match params.get_str_map("env") {
            Ok(env) => {
                for k in env
                    .keys()
                    .filter(|k| REPOSITORY_ENV_VARS.contains(&k.as_str()))
                {
                    errors.push((
                        "env",
                        format!(
                            "sets {k}: use params.uri, params.password or params.password_file instead"
                        ),
                    ));
                }
                env
            }
            Err(e) => {
                errors.push(("env", e.to_string()));
                BTreeMap::new()
            }
        };
        let mut optional_str = |key: &'static str| match params.get_str(key) {
            Ok(v) => v.filter(|v| !v.is_empty()),
            Err(e) => {
                errors.push((key, e.to_string()));
                None
            }
        };
        let cache_dir = optional_str("cache_dir").map(PathBuf::from);
        let binary = optional_str("restic_binary").unwrap_or_else(|| "restic".to_string());
        let extra_args = params.get_str_list("extra_args").unwrap_or_else(|e| {
            errors.push(("extra_args", e.to_string()));
            Vec::new()
        });
        let lock_wait = params.get_duration("lock_wait").unwrap_or_else(|e| {
            errors.push(("lock_wait", e.to_string()));
            None
        });
        match password {
            Some(password) if errors.is_empty() => Ok(ResticParams {
                uri,
                password,
                env,
                cache_dir,
                binary,
                extra_args,
                lock_wait,
            }),
            _ => Err(errors),
        }
    }
}

/// Check a `--read-data-subset` value: `P%` (a share, more than 0 and at
/// most 100), `n/t` (part n of t, 1 <= n <= t) or a size such as `500M`
/// (`K`, `M`, `G`, `T`; restic 0.15 and newer). The one owner of this
/// rule: `tabacco verify` and the `verify:` configuration both call it.
pub fn check_data_subset(spec: &str) -> Result<(), String> {
    let bad =
        || format!("read_data_subset {spec:?} is not a share (10%), a part (1/5) or a size (500M)");
    if let Some(p) = spec.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!(
                "read_data_subset {spec:?}: the share must be more than 0% and at most 100%"
            ));
        }
        return Ok(());
    }
    if let Some((n, t)) = spec.split_once('/') {
        let (n, t): (u64, u64) = (n.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?);
        if n == 0 || n > t {
            return Err(format!(
                "read_data_subset {spec:?}: part n/t needs 1 <= n <= t"
            ));
        }
        return Ok(());
    }
    let digits = spec.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    if !digits.is_empty()
        && digits.len() + 1 >= spec.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
    {
        return Ok(());
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamValue;

    fn s(v: &str) -> ParamValue {
        ParamValue::Str(v.into())
    }

    fn keys(pairs: &[(&str, ParamValue)]) -> Vec<&'static str> {
        ResticParams::from_params(&Params::from_pairs(pairs))
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn every_mistake_is_reported_with_its_parameter() {
        let env = ParamValue::Map([("RESTIC_PASSWORD".to_string(), s("y"))].into());
        assert_eq!(
            keys(&[
                ("password", s("x")),
                ("password_file", s("/f")),
                ("env", env),
                ("extra_args", ParamValue::Map(BTreeMap::new())),
                ("lock_wait", s("soon")),
            ]),
            ["uri", "password", "env", "extra_args", "lock_wait"]
        );
        assert_eq!(keys(&[("uri", s("/r"))]), ["password_file"]);
        assert_eq!(
            keys(&[("uri", s("/r")), ("password", s(" "))]),
            ["password"]
        );
    }

    #[test]
    fn defaults_and_values() {
        let p = ResticParams::from_params(&Params::from_pairs(&[
            ("uri", s("/r")),
            ("password_file", s("/etc/pw")),
            ("lock_wait", s("2m")),
        ]))
        .unwrap();
        assert_eq!(p.password, Password::File("/etc/pw".into()));
        assert_eq!(p.binary, "restic");
        assert_eq!(p.lock_wait, Some(Duration::from_secs(120)));
        assert_eq!(p.cache_dir, None);
        assert_eq!(
            format!("{:?}", Password::Value("hunter2".into())),
            "<hidden>"
        );
    }
}
