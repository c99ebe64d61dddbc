//! A human-readable summary of a validated [`Config`], printed by
//! `tabacco config check`. Secrets never appear: the repository shows only
//! its URI, with any password inside the URI masked.

use std::path::PathBuf;

use super::{Config, DatasetsSource};

/// File name of the embedded metadata database inside `work_dir`.
pub const EMBEDDED_METADB_FILE: &str = "metadata.db";

impl Config {
    /// Path of the embedded SQLite metadata database (used when no
    /// `metadb` is configured): `<work_dir>/metadata.db`.
    pub fn embedded_metadb_path(&self) -> PathBuf {
        self.work_dir.join(EMBEDDED_METADB_FILE)
    }

    /// `verify_schedule` and the drill options, in one line.
    fn verify_summary(&self) -> String {
        let v = &self.verify;
        let schedule = v
            .schedule
            .as_deref()
            .map_or_else(|| "not scheduled".to_string(), |s| format!("schedule {s}"));
        let drills = match v.sample {
            Some(n) => format!("sample {n}"),
            None => "all".to_string(),
        };
        let check = match (v.check, &v.read_data_subset) {
            (false, _) => "no check".to_string(),
            (true, None) => "check".to_string(),
            (true, Some(d)) => format!("check reading {d}"),
        };
        format!(
            "{schedule}; {drills} of '{}', {} version(s) each; {check}; live tolerance {}%",
            v.pattern,
            if v.num_versions == 0 {
                "all".to_string()
            } else {
                v.num_versions.to_string()
            },
            v.live_tolerance_percent
        )
    }

    /// A plain-text, aligned summary: main file, host, repository (URI
    /// only), directories, metadata store, handlers and sources.
    pub fn summary(&self) -> String {
        let uri = self
            .repository
            .params
            .get_str("uri")
            .ok()
            .flatten()
            .map(|u| crate::redact::url(&u))
            .unwrap_or_else(|| "(no uri)".to_string());
        let metadb = match &self.metadb {
            Some(m) => m.url.clone(),
            None => format!(
                "embedded SQLite at {}",
                self.embedded_metadb_path().display()
            ),
        };
        let queues = crate::config::QUEUES
            .iter()
            .map(|(q, _, _)| {
                let n = self.queue.workers(q);
                let set = if self.queue.workers.contains_key(*q) {
                    ""
                } else {
                    " (default)"
                };
                format!("{q}: {n}{set}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let main = vec![
            row(["config", &self.path.display().to_string()]),
            row(["hostname", &self.hostname]),
            row([
                "repository",
                &format!("{} ({}) {uri}", self.repository.name, self.repository.kind),
            ]),
            row(["work_dir", &self.work_dir.display().to_string()]),
            row([
                "random_seed_file",
                &self.random_seed_file.display().to_string(),
            ]),
            row(["metadb", &metadb]),
            row(["queues", &queues]),
            row(["dry_run", if self.dry_run { "yes" } else { "no" }]),
            row([
                "shutdown_timeout",
                &humantime::format_duration(self.shutdown_timeout).to_string(),
            ]),
            row(["verify", &self.verify_summary()]),
        ];
        let mut out = crate::util::table(&main, "");

        out.push_str(&format!("\nhandlers ({}):\n", self.handlers.len()));
        if !self.handlers.is_empty() {
            let mut rows = vec![row(["NAME", "TYPE"])];
            rows.extend(
                self.handlers
                    .values()
                    .map(|h| row([h.name.as_str(), h.kind.as_str()])),
            );
            out.push_str(&crate::util::table(&rows, "  "));
        }

        out.push_str(&format!("\nsources ({}):\n", self.sources.len()));
        if !self.sources.is_empty() {
            let mut rows = vec![row(["NAME", "HANDLER", "SCHEDULE", "DATASETS", "TIMEOUT"])];
            rows.extend(self.sources.iter().map(|s| {
                let datasets = match &s.datasets {
                    DatasetsSource::Static(sets) => sets.len().to_string(),
                    DatasetsSource::Command(_) => "from command".to_string(),
                };
                let timeout = s
                    .timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_else(|| "none".to_string());
                row([
                    s.name.as_str(),
                    s.handler.as_str(),
                    s.schedule.as_deref().unwrap_or("on demand"),
                    &datasets,
                    &timeout,
                ])
            }));
            out.push_str(&crate::util::table(&rows, "  "));
        }
        out
    }
}

/// A table row from string slices.
fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;

    /// Load a config tree made of `files` (relative path, content).
    fn load_tree(files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let c = load(&dir.path().join("agent.yml")).unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    const MAIN: &str = "\
hostname: host1
repository:
  type: restic
  params:
    uri: rest:https://backup:uri-secret@rest.example:8000/host1
    password: hunter2-secret
    env: {AWS_SECRET_ACCESS_KEY: env-secret}
work_dir: /var/lib/tabacco
";

    fn full_tree(main: &str) -> (tempfile::TempDir, Config) {
        load_tree(&[
            ("agent.yml", main),
            (
                "handlers/h.yml",
                "- {name: files, type: file, params: {path: /}}\n- {name: mysql, type: pipe, params: {backup_command: d, restore_command: r}}\n",
            ),
            (
                "sources/s.yml",
                "\
- name: etc
  handler: files
  schedule: '@daily'
  timeout: 1h30m
  datasets: [{name: a, atoms_command: ls}, {name: b, atoms_command: ls}]
- name: databases
  handler: mysql
  datasets_command: list-dbs
",
            ),
        ])
    }

    #[test]
    fn summary_lists_settings_handlers_and_sources() {
        let (dir, c) = full_tree(MAIN);
        let s = c.summary();
        let lines: Vec<&str> = s.lines().collect();
        let main_file = dir.path().join("agent.yml").display().to_string();
        assert_eq!(lines[0], format!("config            {main_file}"));
        assert!(lines.contains(&"hostname          host1"), "{s}");
        assert!(lines.contains(&"work_dir          /var/lib/tabacco"), "{s}");
        assert!(
            lines.contains(&"metadb            embedded SQLite at /var/lib/tabacco/metadata.db"),
            "{s}"
        );
        assert!(
            lines.contains(
                &"repository        main (restic) rest:https://backup:***@rest.example:8000/host1"
            ),
            "{s}"
        );
        let tail = s.split("\nhandlers (2):\n").nth(1).unwrap();
        assert_eq!(
            tail,
            "  NAME   TYPE
  files  file
  mysql  pipe

sources (2):
  NAME       HANDLER  SCHEDULE   DATASETS      TIMEOUT
  etc        files    @daily     2             1h 30m
  databases  mysql    on demand  from command  none
"
        );
    }

    #[test]
    fn summary_never_contains_the_password() {
        let (_dir, c) = full_tree(MAIN);
        let s = c.summary();
        for secret in ["hunter2-secret", "uri-secret", "env-secret"] {
            assert!(!s.contains(secret), "{secret} leaked:\n{s}");
        }
        let with_file = MAIN.replace("password: hunter2-secret", "password_file: /etc/pw");
        let (_dir, c) = full_tree(&with_file);
        assert!(!c.summary().contains("/etc/pw"));
    }

    #[test]
    fn summary_shows_remote_metadb_and_empty_lists() {
        let main = format!("{MAIN}metadb:\n  url: https://metadb.example:5332\n");
        let (_dir, c) = load_tree(&[("agent.yml", &main)]);
        let s = c.summary();
        assert!(
            s.contains("\nmetadb            https://metadb.example:5332\n"),
            "{s}"
        );
        assert!(s.contains("\nhandlers (0):\n\nsources (0):\n"), "{s}");
    }
}
