//! The `file` handler's parameters: `path`, the absolute root the atoms'
//! paths are relative to. Read and checked here only, for `config check`,
//! its probes and a run.

use std::path::PathBuf;

use super::Params;

/// The file handler's parameters (from the handler and the source),
/// checked in one place for `config check` and for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FileParams {
    /// The absolute root directory the atoms' paths are relative to.
    pub root: PathBuf,
}

impl FileParams {
    /// Read and check the parameters; every mistake is returned as
    /// `(parameter name, message)`.
    pub fn from_params(params: &Params) -> Result<FileParams, Vec<(&'static str, String)>> {
        match params.get_str("path") {
            Ok(Some(root)) if root.starts_with('/') => Ok(FileParams { root: root.into() }),
            Ok(Some(root)) => Err(vec![(
                "path",
                format!(
                    "{root:?} must be an absolute directory (the root the atoms' paths are relative to)"
                ),
            )]),
            Ok(None) => Err(vec![(
                "path",
                "missing: the file handler needs params.path, the absolute root directory (in the source or the handler)".to_string(),
            )]),
            Err(e) => Err(vec![("path", e.to_string())]),
        }
    }
}
