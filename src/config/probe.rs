//! Checks of a loaded configuration against this machine, run by `tabacco
//! config check`: what loading alone cannot know (a file the repository
//! needs, the state directory, the roots of `file` sources). Loading stays
//! a pure function of the files; a real run meets the same problems when
//! it uses the thing, and `config check` reports them all at once before.

use super::load::ConfigError;
use super::{Config, HandlerType};
use crate::params::file::FileParams;

/// What the probes found: errors (a run would fail) and warnings (a run
/// may fail, or the thing may appear later: a root mounted at boot).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Findings {
    /// Problems that make runs fail.
    pub errors: Vec<ConfigError>,
    /// Problems that may resolve themselves.
    pub warnings: Vec<ConfigError>,
}

/// Probe `config` on this machine.
pub fn probe(config: &Config) -> Findings {
    let mut f = Findings::default();
    let main = |field: &str, message: String| ConfigError {
        file: config.path.clone(),
        field: field.to_string(),
        message,
    };

    // restic reads the password file on every run.
    if let Ok(Some(pw)) = config.repository.params.get_str("password_file")
        && !pw.is_empty()
        && let Err(e) = std::fs::File::open(&pw)
    {
        f.errors.push(main(
            "repository.params.password_file",
            format!(
                "{pw}: cannot be read ({e}): create it with the repository's password, readable by tabacco only"
            ),
        ));
    }

    match std::fs::metadata(&config.work_dir) {
        Ok(m) if !m.is_dir() => f.errors.push(main(
            "work_dir",
            format!(
                "{} exists and is not a directory: tabacco keeps its state there",
                config.work_dir.display()
            ),
        )),
        _ => {}
    }

    for source in &config.sources {
        let Some(handler) = config.handlers.get(&source.handler) else {
            continue;
        };
        if handler.kind != HandlerType::File {
            continue;
        }
        let params = handler.params.merged_with(&source.params);
        if let Ok(FileParams { root }) = FileParams::from_params(&params)
            && !root.is_dir()
        {
            let root = root.display();
            f.warnings.push(ConfigError {
                file: source.file.clone(),
                field: "params.path".into(),
                message: format!(
                    "the root \"{root}\" is not a directory (yet): backups of this source fail until it is"
                ),
            });
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_password_file_work_dir_file_and_missing_root_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let root = dir.path().display();
        w(
            "agent.yml",
            &format!(
                "hostname: h\nwork_dir: {root}/state\nrepository:\n  type: restic\n  params:\n    uri: /srv/r\n    password_file: {root}/nope\n"
            ),
        );
        w("state", "a file, not a directory");
        w("handlers/files.yml", "name: files\ntype: file\n");
        w(
            "sources/home.yml",
            &format!(
                "name: home\nhandler: files\nparams: {{path: {root}/missing}}\ndatasets: [{{name: d, atoms: [{{name: a}}]}}]\n"
            ),
        );
        let config = crate::config::load(&dir.path().join("agent.yml")).unwrap();
        let f = probe(&config);
        let fields: Vec<&str> = f.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["repository.params.password_file", "work_dir"]);
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].message.contains("missing"));

        w("nope", "secret\n");
        std::fs::remove_file(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("missing")).unwrap();
        assert_eq!(probe(&config), Findings::default());
    }
}
