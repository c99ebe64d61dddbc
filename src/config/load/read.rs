//! Reading: one YAML (or JSON) document into its raw type with the field
//! path of any error, and the `handlers/` and `sources/` directories file
//! by file (a broken file is reported and skipped, the others still read).

use super::*;

/// A YAML document that did not parse: where, and why.
#[derive(Debug)]
pub(crate) struct ParseFailure {
    /// Field path inside the document (serde's view), possibly empty.
    pub(crate) path: String,
    /// serde-saphyr's message, with line and column.
    pub(crate) message: String,
}

impl ParseFailure {
    /// The field to report: the path, prefixed with `list_kind` when it
    /// starts inside a top-level list.
    pub(super) fn field(&self, list_kind: &str) -> String {
        if self.path.is_empty() {
            WHOLE_FILE.to_string()
        } else if self.path.starts_with('[') {
            format!("{list_kind}{}", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// Whether a document holds nothing but blank lines, comments and document
/// markers (such a file is read as "no specs").
pub(crate) fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// Parse one YAML (or JSON) document into `T`, tracking the field path of
/// any error.
pub(crate) fn parse_doc<T: DeserializeOwned>(text: &str) -> Result<T, ParseFailure> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        let r = T::deserialize(tracked);
        if r.is_err() {
            let p = track.path().to_string();
            if p != "." && p != "?" {
                path = p;
            }
        }
        r
    });
    result.map_err(|e| ParseFailure {
        path,
        message: e.without_snippet().to_string(),
    })
}

/// Read and parse the main file; `None` (with errors added) if that fails.
pub(super) fn read_main(file: &Path, out: &mut Vec<ConfigError>) -> Option<RawConfig> {
    let mut errs = FileErrors { file, out };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errs.add(
                WHOLE_FILE,
                format!("cannot read the main configuration file: {e}"),
            );
            return None;
        }
    };
    if is_blank_yaml(&text) {
        return Some(RawConfig::default());
    }
    match parse_doc::<RawConfig>(&text) {
        Ok(raw) => Some(raw),
        Err(f) => {
            errs.add(f.field(""), f.message);
            None
        }
    }
}

/// The specs read from one `handlers/` or `sources/` file.
pub(super) struct SpecFile<T> {
    /// The file.
    pub(super) path: PathBuf,
    /// Whether it held a list (field paths then start with `kind[i]`).
    pub(super) list: bool,
    /// The specs, in file order.
    pub(super) specs: Vec<T>,
}

/// Read every `*.yml` / `*.yaml` file of `dir` in file-name order. A
/// missing directory holds no files.
pub(super) fn read_spec_dir<T: DeserializeOwned>(
    dir: &Path,
    kind: &str,
    out: &mut Vec<ConfigError>,
) -> Vec<SpecFile<T>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "no {kind} directory");
            return Vec::new();
        }
        Err(e) => {
            FileErrors { file: dir, out }
                .add(WHOLE_FILE, format!("cannot list the {kind} directory: {e}"));
            return Vec::new();
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                FileErrors { file: dir, out }
                    .add(WHOLE_FILE, format!("cannot list the {kind} directory: {e}"));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yml") || name.ends_with(".yaml")) {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => paths.push(path),
            Ok(_) => FileErrors { file: &path, out }.add(
                WHOLE_FILE,
                format!("is not a regular file: every {kind}/*.yml must be a YAML file"),
            ),
            Err(e) => FileErrors { file: &path, out }.add(WHOLE_FILE, format!("cannot read: {e}")),
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut files = Vec::new();
    for path in paths {
        tracing::debug!(file = %path.display(), "reading {kind} file");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                FileErrors { file: &path, out }.add(WHOLE_FILE, format!("cannot read: {e}"));
                continue;
            }
        };
        if is_blank_yaml(&text) {
            tracing::warn!(file = %path.display(), "{kind} file is empty");
            continue;
        }
        match parse_doc::<OneOrMany<T>>(&text) {
            Ok(doc) => {
                let (specs, list) = doc.into_vec();
                files.push(SpecFile { path, list, specs });
            }
            Err(f) => FileErrors { file: &path, out }.add(f.field(kind), f.message),
        }
    }
    files
}
