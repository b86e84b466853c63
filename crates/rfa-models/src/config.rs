//! Reading a model's `config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::ModelError;

/// Reads a `config.json` into a config struct, naming the file in every error.
pub fn read_config<C: DeserializeOwned>(path: &Path) -> Result<C, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Config { path: path.to_path_buf(), reason: e.to_string() })
}

pub(crate) fn check_divisible(path: &Path, hidden: usize, heads: usize) -> Result<(), ModelError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "hidden size {hidden} is not divisible by the number of attention heads {heads}"
            ),
        });
    }
    Ok(())
}
