//! The run folder's locks. A command that needs the whole run (`eval`, which reads every model
//! and writes the report) holds the run's lock exclusively. A phase that writes one folder
//! (`train` → `original/`, `retrain`, `unlearn` → its result, `pretrain`) holds the run's lock
//! shared and that folder's lock exclusively: phases of different folders run side by side (the
//! cells of a sharded sweep), two writers of one folder never interleave, and no reader sees a
//! half-written model. Each lock file names its holder (pid and command) for the error a second
//! command gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Held while it lives; the operating system releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _files: Vec<File>,
}

const RUN_LOCK: &str = ".lock";
/// A folder's lock: `.lock-<folder>` in the run.
const FOLDER_LOCK: &str = ".lock-";

fn open(dir: &Path) -> Result<(File, PathBuf)> {
    open_named(dir, RUN_LOCK)
}

fn open_named(dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the run's lock {}", path.display()))?;
    Ok((file, path))
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut text));
    let text = text.trim();
    if text.is_empty() { "another process".into() } else { text.to_string() }
}

/// Who holds the run: an exclusive holder's own line, or the phases holding folder locks.
fn run_holders(dir: &Path, run_file: &mut File) -> String {
    let mut phases = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(FOLDER_LOCK)
                && let Ok(mut f) = File::open(e.path())
                && matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock))
            {
                phases.push(holder(&mut f));
            }
        }
    }
    if phases.is_empty() { holder(run_file) } else { phases.join(", ") }
}

fn write_holder(file: &mut File, path: &Path, command: &str) -> Result<()> {
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "pid {} ({command})", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))
}

impl RunLock {
    /// For a phase that writes the run's folder `folder` only (`train`, `retrain`, `unlearn`,
    /// `pretrain`): beside phases of other folders, never beside another writer of `folder` or
    /// a command that holds the whole run.
    pub fn folder(dir: &Path, folder: &str, command: &str) -> Result<Self> {
        let (mut run_file, run_path) = open(dir)?;
        match run_file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{} is in use by {} (lock {}): wait for it to finish",
                dir.display(),
                holder(&mut run_file),
                run_path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", run_path.display()));
            }
        }
        let (mut file, path) = open_named(dir, &format!("{FOLDER_LOCK}{folder}"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{} is in use by {} (lock {}): wait for it to finish",
                dir.join(folder).display(),
                holder(&mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        write_holder(&mut file, &path, command)?;
        // A writer first finishes a switch of its folder a killed command left half done.
        crate::staged_dir::recover(&dir.join(folder))?;
        Ok(Self { _files: vec![run_file, file] })
    }

    /// For a command that needs the whole run (`eval`): no other writer, no reader.
    pub fn exclusive(dir: &Path, command: &str) -> Result<Self> {
        let (mut file, path) = open(dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{} is in use by {} (lock {}): wait for it to finish",
                dir.display(),
                run_holders(dir, &mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        write_holder(&mut file, &path, command)?;
        // A writer first finishes the folder switches a killed command left half done.
        crate::staged_dir::recover_all(dir)?;
        Ok(Self { _files: vec![file] })
    }

    /// For a command that only reads the run (`export`): any number of readers, no writer.
    pub fn shared(dir: &Path) -> Result<Self> {
        let (mut file, path) = open(dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self { _files: vec![file] }),
            Err(TryLockError::WouldBlock) => bail!(
                "{} is being written by {} (lock {}): wait for it to finish",
                dir.display(),
                holder(&mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RunLock::exclusive(tmp.path(), "rfa train").unwrap();
        let e = RunLock::exclusive(tmp.path(), "rfa unlearn").unwrap_err().to_string();
        assert!(e.contains(&format!("pid {} (rfa train)", std::process::id())), "{e}");
        let e = RunLock::shared(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("being written by") && e.contains("rfa train"), "{e}");
        drop(first);
        let readers = [RunLock::shared(tmp.path()).unwrap(), RunLock::shared(tmp.path()).unwrap()];
        assert!(
            RunLock::exclusive(tmp.path(), "rfa eval").is_err(),
            "a writer waits for the readers"
        );
        drop(readers);
        RunLock::exclusive(tmp.path(), "rfa eval").unwrap();
    }

    #[test]
    fn phases_of_different_folders_run_side_by_side() {
        let tmp = tempfile::tempdir().unwrap();
        let m0 = RunLock::folder(tmp.path(), "original", "rfa train").unwrap();
        let star = RunLock::folder(tmp.path(), "retrain", "rfa retrain").unwrap();
        let e = RunLock::folder(tmp.path(), "original", "rfa train").unwrap_err().to_string();
        assert!(e.contains("original is in use by") && e.contains("(rfa train)"), "{e}");
        // The whole run waits for both phases, and names them.
        let e = RunLock::exclusive(tmp.path(), "rfa eval").unwrap_err().to_string();
        assert!(e.contains("(rfa train)") && e.contains("(rfa retrain)"), "{e}");
        drop((m0, star));
        let eval = RunLock::exclusive(tmp.path(), "rfa eval").unwrap();
        let e = RunLock::folder(tmp.path(), "rfa", "rfa unlearn").unwrap_err().to_string();
        assert!(e.contains("in use by") && e.contains("(rfa eval)"), "{e}");
        drop(eval);
        RunLock::folder(tmp.path(), "rfa", "rfa unlearn").unwrap();
    }
}
