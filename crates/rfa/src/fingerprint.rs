//! What determines a trained model, recorded beside it (`fingerprint.json`): the configuration
//! fields training reads and SHA-256 digests of its training samples and of the checkpoint it
//! starts from. A phase resumed, or a model reused by a later phase, under a configuration or data
//! that no longer match is refused, naming the first field that differs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RunConfig;
use crate::engine_model::Samples;

const FILE: &str = "fingerprint.json";

/// Field name → value, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub BTreeMap<String, String>);

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// SHA-256 over the samples `indices` of `data` (index, label, content), and the class names.
pub fn samples_digest<D: Samples>(data: &D, indices: &[usize]) -> String {
    let mut h = Sha256::new();
    for name in data.class_names() {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    for &i in indices {
        let bytes = data.sample_bytes(i);
        h.update((i as u64).to_le_bytes());
        h.update((data.labels()[i] as u64).to_le_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    format!("{:x}", h.finalize())
}

/// `table`'s scalar and array values under dotted keys.
pub(crate) fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

impl Fingerprint {
    /// M0 (`retrain` false: all of D) or M* (Dr): every `seed`, `model.*`, `data.*` and `train.*`
    /// field but those training does not read (`train.epochs`, which a resume may raise;
    /// `data.max_test`, `data.probe_percent`, `data.after`; and for M0 `data.forget`), the digest of the training samples, and the
    /// SHA-256 of the checkpoint it starts from (`model.path`'s weights, if any).
    pub fn of_training<D: Samples>(
        cfg: &RunConfig,
        retrain: bool,
        data: &D,
        indices: &[usize],
        start_checkpoint_sha256: Option<&str>,
    ) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(&cfg.to_toml()).context("the resolved configuration")?;
        let mut all = BTreeMap::new();
        flatten("", &table, &mut all);
        let skipped = |k: &str| {
            // data.after is a path: what it changes, Dr, is in the samples' digest.
            matches!(k, "train.epochs" | "data.max_test" | "data.probe_percent" | "data.after")
                || (!retrain && k == "data.forget")
        };
        let mut fields: BTreeMap<String, String> = all
            .into_iter()
            .filter(|(k, _)| {
                (k == "seed"
                    || k.starts_with("model.")
                    || k.starts_with("data.")
                    || k.starts_with("train."))
                    && !skipped(k)
            })
            .collect();
        fields.insert(
            "training samples".into(),
            format!("{} (sha256 {})", indices.len(), samples_digest(data, indices)),
        );
        if let Some(sha) = start_checkpoint_sha256 {
            fields.insert("model.path weights".into(), format!("sha256 {sha}"));
        }
        Ok(Self(fields))
    }

    /// The fingerprint recorded in `dir`, if any.
    pub fn recorded(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(FILE);
        if !p.is_file() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        lora_core::tensors::write_atomic(&dir.join(FILE), json.as_bytes())?;
        Ok(())
    }

    /// The first field whose value differs: (field, recorded, now).
    pub fn first_difference<'a>(&'a self, now: &'a Self) -> Option<(&'a str, &'a str, &'a str)> {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(now.0.keys()).collect();
        keys.into_iter().find_map(|k| {
            let (a, b) = (self.0.get(k), now.0.get(k));
            (a != b).then(|| {
                (
                    k.as_str(),
                    a.map_or("(absent)", |s| s.as_str()),
                    b.map_or("(absent)", |s| s.as_str()),
                )
            })
        })
    }

    /// Refuses the model in `dir` unless it was made under this fingerprint; `fix` says what to
    /// do (e.g. `rfa train --force`). A model recorded before fingerprints existed is accepted.
    pub fn check(&self, dir: &Path, fix: &str) -> Result<()> {
        let Some(recorded) = Self::recorded(dir)? else { return Ok(()) };
        if let Some((field, then, now)) = recorded.first_difference(self) {
            bail!(
                "{} was made with {field} = {then}, this configuration has {field} = {now}: {fix}",
                dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(pairs: &[(&str, &str)]) -> Fingerprint {
        Fingerprint(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_first_differing_field_is_named() {
        let a = fp(&[("data.forget", "\"class:1\""), ("seed", "0")]);
        let b = fp(&[("data.forget", "\"class:5\""), ("seed", "0")]);
        assert_eq!(a.first_difference(&b), Some(("data.forget", "\"class:1\"", "\"class:5\"")));
        assert_eq!(a.first_difference(&a.clone()), None);
        let c = fp(&[("seed", "0")]);
        assert_eq!(a.first_difference(&c), Some(("data.forget", "\"class:1\"", "(absent)")));
    }

    #[test]
    fn a_recorded_fingerprint_refuses_another_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let a = fp(&[("train.lr", "0.002")]);
        a.check(tmp.path(), "start over").unwrap();
        a.write(tmp.path()).unwrap();
        a.check(tmp.path(), "start over").unwrap();
        let e = fp(&[("train.lr", "0.1")]).check(tmp.path(), "start over").unwrap_err().to_string();
        assert!(
            e.contains("train.lr = 0.002")
                && e.contains("train.lr = 0.1")
                && e.ends_with("start over"),
            "{e}"
        );
    }
}
