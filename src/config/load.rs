//! Reads `agent.yml`, `handlers/*.yml` and `sources/*.yml` and validates
//! them into a [`Config`], collecting every error with its file and field.

use std::path::{Path, PathBuf};

use super::Config;

/// One configuration mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// File the mistake is in.
    pub file: PathBuf,
    /// Field path, e.g. `sources[0].datasets[1].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Every mistake found in a configuration tree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Read and validate the configuration tree rooted at the main file `path`.
pub fn load(_path: &Path) -> Result<Config, ConfigErrors> {
    todo!()
}
