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
        lora_core::fault::write_point("restoring", target);
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

    /// A staging folder that starts as a copy of the current result (hard links where the file
    /// system allows: files are only ever replaced, never changed in place), for a phase that
    /// adds to it.
    pub fn continuing(target: &Path) -> Result<Self> {
        let staged = Self::new(target)?;
        if target.is_dir() {
            link_tree(target, &staged.staging)?;
        }
        Ok(staged)
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
            lora_core::fault::write_point("moving aside", &self.target);
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("moving {} aside", self.target.display()))?;
        }
        lora_core::fault::write_point("switching in", &self.target);
        std::fs::rename(&self.staging, &self.target)
            .with_context(|| format!("switching {} in", self.target.display()))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }
}

/// Finishes, in the run folder `dir`, every switch a kill interrupted (see [`recover`]).
pub(crate) fn recover_all(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(target) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".old")) {
            recover(&dir.join(target))?;
        }
    }
    Ok(())
}

/// Recreates the tree `from` under `to`: folders made, files hard-linked (copied where links
/// are not possible).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().with_context(|| format!("reading {}", src.display()))?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            lora_core::fault::write_point("linking", &dst);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            }
        }
    }
    Ok(())
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
    fn a_continuing_phase_starts_from_the_current_result() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("original");
        write(&target, "epoch 1");
        write(&target.join("sub"), "nested");
        let staged = StagedDir::continuing(&target).unwrap();
        assert_eq!(read(staged.path()), "epoch 1");
        assert_eq!(read(&staged.path().join("sub")), "nested");
        // Replacing a file in the staging folder leaves the current result alone.
        lora_core::tensors::write_atomic(&staged.path().join("file"), b"epoch 2").unwrap();
        assert_eq!(read(&target), "epoch 1");
        staged.commit().unwrap();
        assert_eq!(read(&target), "epoch 2");
        assert_eq!(read(&target.join("sub")), "nested");
    }

    #[test]
    fn every_interrupted_switch_of_a_run_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join(".original.old"), "m0");
        write(&tmp.path().join(".rfa.old"), "rfa");
        write(&tmp.path().join("rfa"), "rfa new");
        recover_all(tmp.path()).unwrap();
        assert_eq!(read(&tmp.path().join("original")), "m0");
        assert_eq!(read(&tmp.path().join("rfa")), "rfa new");
        assert!(
            !tmp.path().join(".rfa.old").exists() && !tmp.path().join(".original.old").exists()
        );
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
