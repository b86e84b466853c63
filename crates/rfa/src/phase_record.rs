//! `phase.json`: what a phase left beside its model — its time and memory, where it ran, and the
//! SHA-256 of every other file of its folder, so that a reader can tell a complete folder whose
//! parts belong together from a mixed or damaged one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::fingerprint::sha256_file;
use crate::measure::Phase;

/// The record's file name in a phase's folder.
pub const PHASE_RECORD: &str = "phase.json";

/// What a phase left beside its model (`phase.json`), and what a report says of the phase that
/// produced each model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// Time and memory (`seconds`, `peak_rss_mib`, …).
    #[serde(flatten)]
    pub phase: Phase,
    pub trainable_params: usize,
    /// Backend and precision the phase ran on (its time depends on them); absent in records
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
    /// Unlearning results: SHA-256 of the `original/model.safetensors` the adapter was trained
    /// on; an adapter is only ever applied to that model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_sha256: Option<String>,
    /// SHA-256 of every other file of the phase's folder, by path relative to it (`/`-separated);
    /// empty in records written before it was kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl PhaseRecord {
    /// SHA-256 of the file `name` of the phase's folder `dir`: the one the record lists (checked
    /// by [`verify_phase`]), computed only for records written before the list was kept.
    pub(crate) fn sha256_of(&self, dir: &Path, name: &str) -> Result<String> {
        match self.files.get(name) {
            Some(hash) => Ok(hash.clone()),
            None => sha256_file(&dir.join(name)),
        }
    }
}

/// `phase.json` as written before the record was flattened (`{"phase": {…}, …}`).
#[derive(Deserialize)]
struct NestedPhaseRecord {
    phase: Phase,
    trainable_params: usize,
    #[serde(default)]
    ran_on: Option<String>,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    lora_core::tensors::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

/// The record in `dir`, as written (nothing checked but its syntax).
pub(crate) fn read_phase(dir: &Path) -> Result<PhaseRecord> {
    let p = dir.join(PHASE_RECORD);
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("{} is missing: run that phase first", p.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?;
    if value.get("phase").is_some_and(serde_json::Value::is_object) {
        let NestedPhaseRecord { phase, trainable_params, ran_on } =
            serde_json::from_value(value).with_context(|| format!("reading {}", p.display()))?;
        return Ok(PhaseRecord { phase, trainable_params, ran_on, ..Default::default() });
    }
    serde_json::from_value(value).with_context(|| format!("reading {}", p.display()))
}

/// Writes `record` into `dir` as its last file, with the SHA-256 of every other file there.
/// `record.files` may hold SHA-256 the caller took of files it just wrote (the receipt's
/// outputs): those are kept, every other file of `dir` is hashed.
pub(crate) fn write_phase(dir: &Path, mut record: PhaseRecord) -> Result<()> {
    record.files = file_hashes(dir, &record.files)?;
    write_json(&dir.join(PHASE_RECORD), &record)
}

/// The record in `dir`, once every file it lists is there with the content it lists: a folder
/// that a kill, a copy or a hand left incomplete or mixed is refused, naming the file.
pub(crate) fn verify_phase(dir: &Path) -> Result<PhaseRecord> {
    let record = read_phase(dir)?;
    for (name, expected) in &record.files {
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is incomplete: {name} is missing ({} lists it); run that phase again",
                dir.display(),
                PHASE_RECORD
            );
        }
        let found = sha256_file(&path)?;
        if &found != expected {
            bail!(
                "{} does not belong to this phase: its SHA-256 is {found}, {} of {} says {expected}; \
                 the folder was changed after the phase wrote it — run that phase again",
                path.display(),
                PHASE_RECORD,
                dir.display()
            );
        }
    }
    Ok(record)
}

/// SHA-256 of every file under `dir` but the record itself (and temporary files), by relative
/// path.
fn file_hashes(dir: &Path, known: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    fn walk(
        root: &Path,
        dir: &Path,
        known: &BTreeMap<String, String>,
        out: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().with_context(|| format!("reading {}", path.display()))?.is_dir() {
                walk(root, &path, known, out)?;
            } else if !(dir == root && name == PHASE_RECORD) && !name.starts_with('.') {
                let rel = path.strip_prefix(root).expect("under root");
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let sha = match known.get(&key) {
                    Some(sha) => sha.clone(),
                    None => sha256_file(&path)?,
                };
                out.insert(key, sha);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, known, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_accepted_only_as_its_record_lists_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("adapter")).unwrap();
        std::fs::write(dir.join("adapter/adapter_model.safetensors"), "a").unwrap();
        std::fs::write(dir.join("unlearn_log.json"), "{}").unwrap();
        write_phase(dir, PhaseRecord::default()).unwrap();
        let record = verify_phase(dir).unwrap();
        assert_eq!(
            record.files.keys().collect::<Vec<_>>(),
            ["adapter/adapter_model.safetensors", "unlearn_log.json"]
        );
        std::fs::write(dir.join("adapter/adapter_model.safetensors"), "another").unwrap();
        let e = verify_phase(dir).unwrap_err().to_string();
        assert!(e.contains("adapter_model.safetensors") && e.contains("does not belong"), "{e}");
        std::fs::remove_file(dir.join("adapter/adapter_model.safetensors")).unwrap();
        let e = verify_phase(dir).unwrap_err().to_string();
        assert!(e.contains("incomplete") && e.contains("adapter/adapter_model.safetensors"), "{e}");
    }

    #[test]
    fn records_written_before_the_file_list_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(PHASE_RECORD),
            r#"{"phase": {"seconds": 2.0, "peak_rss_mib": null}, "trainable_params": 7}"#,
        )
        .unwrap();
        let r = verify_phase(tmp.path()).unwrap();
        assert_eq!((r.phase.seconds, r.trainable_params, r.files.len()), (2.0, 7, 0));
    }
}
