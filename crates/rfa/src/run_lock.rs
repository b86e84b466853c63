//! The run folder's lock: every command that writes into `runs/<name>/` holds it exclusively,
//! so that two writers never interleave and no reader sees a half-written model. The lock file
//! names its holder (pid and command) for the error a second command gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Held while it lives; the operating system releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join(".lock")
}

fn open(dir: &Path) -> Result<(File, PathBuf)> {
    let path = lock_path(dir);
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

impl RunLock {
    /// For a command that writes into the run (`train`, `retrain`, `unlearn`, `eval`).
    pub fn exclusive(dir: &Path, command: &str) -> Result<Self> {
        let (mut file, path) = open(dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "{} is in use by {} (lock {}): wait for it to finish",
                dir.display(),
                holder(&mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "pid {} ({command})", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        // A writer first finishes the folder switches a killed command left half done.
        crate::staged_dir::recover_all(dir)?;
        Ok(Self { _file: file })
    }

    /// For a command that only reads the run (`export`): any number of readers, no writer.
    pub fn shared(dir: &Path) -> Result<Self> {
        let (mut file, path) = open(dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self { _file: file }),
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
}
