//! A phase's result folder written beside the old one and switched in by renames, so that a
//! failure or a kill while writing never costs the earlier good result, and readers never see a
//! folder that mixes two results.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `<parent>/.<name>.part` while it is written; [`StagedDir::commit`] makes it `<parent>/<name>`.
pub(crate) struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.{suffix}"))
}

/// Finishes a switch a kill interrupted: the old result moved aside and the new one not yet in
/// place gives the old one back.
pub(crate) fn recover(target: &Path) -> Result<()> {
    let old = sibling(target, "old");
    if old.is_dir() && !target.exists() {
        std::fs::rename(&old, target)
            .with_context(|| format!("restoring {} from {}", target.display(), old.display()))?;
    } else if old.is_dir() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

impl StagedDir {
    /// An empty staging folder for `target` (a stale one from an interrupted run is cleared).
    pub fn new(target: &Path) -> Result<Self> {
        recover(target)?;
        let staging = sibling(target, "part");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("clearing {}", staging.display()))?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        Ok(Self { staging, target: target.to_path_buf() })
    }

    /// Where the phase writes.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the old result aside, the new one into place, then deletes the old one. A kill
    /// between the two renames is undone by [`recover`] at the next start.
    pub fn commit(self) -> Result<()> {
        let old = sibling(&self.target, "old");
        if self.target.exists() {
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("moving {} aside", self.target.display()))?;
        }
        std::fs::rename(&self.staging, &self.target)
            .with_context(|| format!("switching {} in", self.target.display()))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    /// An uncommitted staging folder (the phase failed) is removed; the old result stays.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("file"), text).unwrap();
    }

    fn read(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("file")).unwrap()
    }

    #[test]
    fn a_committed_result_replaces_the_old_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("rfa");
        write(&target, "old");
        std::fs::write(target.join("stale-extra"), "x").unwrap();
        let staged = StagedDir::new(&target).unwrap();
        write(staged.path(), "new");
        assert_eq!(read(&target), "old", "readers see the old result while the new one is written");
        staged.commit().unwrap();
        assert_eq!(read(&target), "new");
        assert!(!target.join("stale-extra").exists());
        let names: Vec<_> =
            std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["rfa"]);
    }

    #[test]
    fn a_failed_phase_keeps_the_old_result() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("rfa");
        write(&target, "old");
        {
            let staged = StagedDir::new(&target).unwrap();
            write(staged.path(), "half");
            // dropped without commit: the phase failed
        }
        assert_eq!(read(&target), "old");
        assert!(!sibling(&target, "part").exists());
    }

    #[test]
    fn a_kill_between_the_renames_is_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("rfa");
        // The state a kill after the first rename leaves: the old result aside, no target.
        write(&sibling(&target, "old"), "old");
        write(&sibling(&target, "part"), "half");
        let staged = StagedDir::new(&target).unwrap();
        assert_eq!(read(&target), "old");
        assert!(!staged.path().join("file").exists(), "a stale staging folder is cleared");
        // After the second rename, the old copy is only left-over.
        drop(staged);
        write(&sibling(&target, "old"), "older");
        recover(&target).unwrap();
        assert_eq!(read(&target), "old");
        assert!(!sibling(&target, "old").exists());
    }
}
