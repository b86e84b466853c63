//! Data for unlearning experiments: loaders for standard formats ([`images`]), deterministic
//! shuffles and splits, and the forget / retain selection ([`select_forget`]).
//!
//! Depends on no tensor library (no burn): images are bytes, texts strings, splits ids. With the
//! `burn-dataset` feature the data sets are burn-dataset `Dataset`s ([`burn_dataset`]).

#[cfg(feature = "burn-dataset")]
pub mod burn_dataset;
pub mod images;
pub mod text;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use images::{ImageDataset, Preprocess};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String, kind: std::io::ErrorKind },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("forget set: {0}")]
    Forget(String),
    #[error("{0}")]
    Mismatch(String),
}

/// Reads a file, un-gzipping it when it starts with gzip's magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    gunzip_if_gz(raw, path)
}

/// An id file's size limit: far more than the ids of any training set take (21 bytes per id).
pub const ID_FILE_MAX_BYTES: u64 = 64 << 20;

/// Reads a text file of at most `max` bytes, naming the file when it is larger (a device, a wrong
/// path to a data set) instead of reading it whole into memory.
pub(crate) fn read_small_text(path: &Path, max: u64) -> Result<String, DataError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: format!("larger than {max} bytes: not an id file"),
        });
    }
    String::from_utf8(bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        reason: format!("not UTF-8 text: {e}"),
    })
}

/// Un-gzips bytes that start with gzip's magic bytes (`path` names them in errors); other bytes
/// are returned as they are.
pub(crate) fn gunzip_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| {
        DataError::Format { path: path.to_path_buf(), reason: format!("corrupt gzip data: {e}") }
    })?;
    Ok(out)
}

impl DataError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), reason: e.to_string(), kind: e.kind() }
    }
}

/// What to forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgetSpec {
    /// Every training sample of one class, by index or name.
    Class(String),
    /// A random share of the training set, in percent (0 < k < 100).
    Random(f64),
    /// Explicit sample ids (indices into the training set).
    Ids(Vec<usize>),
    /// A file of sample ids, one per line or separated by commas or spaces (`#` starts a comment).
    IdFile(PathBuf),
}

impl ForgetSpec {
    /// `class:3`, `class:Trouser`, `random:10`, `ids:1,5,9`, `id-file:forget.txt`.
    pub fn parse(spec: &str) -> Result<Self, DataError> {
        let (kind, arg) = spec.split_once(':').ok_or_else(|| {
            DataError::Forget(format!(
                "`{spec}`: expected class:NAME, random:PERCENT, ids:LIST or id-file:PATH"
            ))
        })?;
        Ok(match kind {
            "class" => Self::Class(arg.to_string()),
            "random" => Self::Random(
                arg.trim_end_matches('%')
                    .parse()
                    .map_err(|_| DataError::Forget(format!("`{arg}` is not a percentage")))?,
            ),
            "ids" => Self::Ids(parse_ids(arg, Path::new("--forget"))?),
            "id-file" => Self::IdFile(PathBuf::from(arg)),
            other => {
                return Err(DataError::Forget(format!(
                    "unknown kind `{other}` (class, random, ids, id-file)"
                )));
            }
        })
    }

    /// The class index when this spec names a class.
    pub fn class_index(&self, class_names: &[String]) -> Result<Option<usize>, DataError> {
        let Self::Class(c) = self else { return Ok(None) };
        if let Some(i) = class_names.iter().position(|n| n == c) {
            return Ok(Some(i));
        }
        match c.parse::<usize>() {
            Ok(i) if i < class_names.len() => Ok(Some(i)),
            _ => Err(DataError::Forget(format!(
                "unknown class `{c}` (classes: {})",
                class_names.join(", ")
            ))),
        }
    }
}

/// Sample ids as an id file or `ids:` holds them: one per line or separated by commas or spaces,
/// `#` starting a comment; `source` names the file in errors.
pub fn parse_ids(text: &str, source: &Path) -> Result<Vec<usize>, DataError> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>().map_err(|_| DataError::Format {
                path: source.to_path_buf(),
                reason: format!("`{t}` is not a sample id"),
            })
        })
        .collect()
}

/// Indices of the forget set `Df` and the retain set `Dr` (both sorted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetSplit {
    pub forget: Vec<usize>,
    pub retain: Vec<usize>,
    /// The forgotten class, for class-wise forgetting.
    pub class: Option<usize>,
    /// Samples earlier requests forgot ([`select_forget_after`]): in neither set.
    #[serde(default)]
    pub earlier: Vec<usize>,
    /// Ids this request names that an earlier one forgot already: reported, not forgotten again.
    #[serde(default)]
    pub repeated: Vec<usize>,
}

/// Splits `labels` (the training set) into forget and retain sets. An empty forget set, a
/// forget set that is the whole training set, an unknown class and an id out of range are
/// errors.
pub fn select_forget(
    labels: &[usize],
    class_names: &[String],
    spec: &ForgetSpec,
    seed: u64,
) -> Result<ForgetSplit, DataError> {
    select_forget_after(labels, class_names, spec, seed, &BTreeSet::new())
}

/// [`select_forget`] for a request that follows others, which forgot `earlier`: those samples
/// leave Dr for good. A class is what remains of it; `random:P` draws P % of the training set
/// from the samples not forgotten yet (the shuffle of the first request, continued); an id
/// forgotten before is listed in [`ForgetSplit::repeated`], not forgotten twice. A request left
/// with nothing new to forget is an error.
pub fn select_forget_after(
    labels: &[usize],
    class_names: &[String],
    spec: &ForgetSpec,
    seed: u64,
    earlier: &BTreeSet<usize>,
) -> Result<ForgetSplit, DataError> {
    let n = labels.len();
    if let Some(&bad) = earlier.iter().find(|&&i| i >= n) {
        return Err(DataError::Forget(format!(
            "an earlier request forgot sample {bad}, but the training set has {n} samples"
        )));
    }
    let class = spec.class_index(class_names)?;
    let named: BTreeSet<usize> = match spec {
        ForgetSpec::Class(_) => {
            let c = class.expect("class spec");
            (0..n).filter(|&i| labels[i] == c).collect()
        }
        ForgetSpec::Random(k) => {
            if !(*k > 0.0 && *k < 100.0) {
                return Err(DataError::Forget(format!(
                    "random share must be in (0, 100) percent, got {k}"
                )));
            }
            let m = ((n as f64) * k / 100.0).round() as usize;
            let mut idx: Vec<usize> = (0..n).collect();
            rfa_rng::SplitMix64::new(seed).shuffle(&mut idx);
            idx.into_iter().filter(|i| !earlier.contains(i)).take(m).collect()
        }
        ForgetSpec::Ids(ids) => check_ids(ids, n)?,
        ForgetSpec::IdFile(p) => {
            let text = read_small_text(p, ID_FILE_MAX_BYTES)?;
            check_ids(&parse_ids(&text, p)?, n)?
        }
    };
    let (repeated, forget): (BTreeSet<usize>, BTreeSet<usize>) =
        named.iter().partition(|i| earlier.contains(i));
    if forget.is_empty() {
        return Err(DataError::Forget(if repeated.is_empty() {
            format!("{spec:?} selects no training sample")
        } else {
            format!(
                "{spec:?} selects only samples that earlier requests forgot already ({} of them)",
                repeated.len()
            )
        }));
    }
    if forget.len() + earlier.len() == n {
        return Err(DataError::Forget(format!(
            "{spec:?} selects all {n} training samples (with the earlier requests): nothing would be retained"
        )));
    }
    let retain = (0..n).filter(|i| !forget.contains(i) && !earlier.contains(i)).collect();
    Ok(ForgetSplit {
        forget: forget.into_iter().collect(),
        retain,
        class,
        earlier: earlier.iter().copied().collect(),
        repeated: repeated.into_iter().collect(),
    })
}

fn check_ids(ids: &[usize], n: usize) -> Result<BTreeSet<usize>, DataError> {
    if let Some(&bad) = ids.iter().find(|&&i| i >= n) {
        return Err(DataError::Forget(format!(
            "sample id {bad} is out of range: the training set has {n} samples (ids 0..{})",
            n.saturating_sub(1)
        )));
    }
    Ok(ids.iter().copied().collect())
}

/// Batches of indices over `indices`, reshuffled per epoch from `seed` when `shuffle`.
pub fn batches(indices: &[usize], batch: usize, shuffle: bool, seed: u64) -> Vec<Vec<usize>> {
    let mut idx = indices.to_vec();
    if shuffle {
        rfa_rng::SplitMix64::new(seed).shuffle(&mut idx);
    }
    idx.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}
