//! Data sets as the configuration names them, size limits and the forget / retain split.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rfa_data::images::{fashion_mnist_classes, load_cifar10_bin, load_idx, load_image_folder};
use rfa_data::text::{TextDataset, eli5_experiment_set, load_aclimdb};
use rfa_data::{ForgetSpec, ForgetSplit, ImageDataset, select_forget_after};
use rfa_rng::SplitMix64;

use crate::config::DataConfig;
use crate::engine_model::Samples;
use crate::scenario::Scenario;

/// Training data, test data and the forget / retain split of the training data; the test data
/// split into the validation probe and the reported test set Dt.
pub struct Task<D> {
    pub train: D,
    pub test: D,
    pub split: ForgetSplit,
    /// Test indices held out as the validation probe (stop rule, choice of defaults).
    pub probe: Vec<usize>,
    /// Test indices of the reported Dt: every test sample not in `probe` (sorted).
    pub reported_test: Vec<usize>,
}

impl<D: Samples> Task<D> {
    /// `probe_percent` of the test set (seeded, at least one sample, one sample short of all
    /// at most) becomes the validation probe. `earlier`: the samples earlier requests of a
    /// chain forgot, out of Dr for good ([`select_forget_after`]).
    pub fn new(
        train: D,
        test: D,
        forget: &str,
        seed: u64,
        probe_percent: f64,
        earlier: &BTreeSet<usize>,
    ) -> Result<Self> {
        if train.class_names() != test.class_names() {
            bail!("{} and {} have different classes", train.source(), test.source());
        }
        let spec = ForgetSpec::parse(forget)?;
        let split = select_forget_after(train.labels(), train.class_names(), &spec, seed, earlier)?;
        let (probe, reported_test) = probe_split(test.len(), probe_percent, seed);
        if reported_test.is_empty() || probe.is_empty() {
            bail!(
                "{}: {} test samples cannot be split into a validation probe and a reported test set",
                test.source(),
                test.len()
            );
        }
        Ok(Self { train, test, split, probe, reported_test })
    }

    /// What is forgotten, for the scenario's defaults.
    pub fn scenario(&self, language_model: bool) -> Scenario {
        Scenario::new(self.split.class.is_some(), language_model, self.train.class_names().len())
    }
}

/// The validation probe and the reported test set, as sorted index lists over `n` test samples:
/// `percent` of them (rounded, at least one when `n` > 1) drawn with `seed`, and the rest.
pub fn probe_split(n: usize, percent: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let k = ((n as f64 * percent / 100.0).round() as usize).clamp(1.min(n), n.saturating_sub(1));
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ 0x009a_0be5).shuffle(&mut idx);
    let mut probe = idx[..k].to_vec();
    let mut rest = idx[k..].to_vec();
    probe.sort_unstable();
    rest.sort_unstable();
    (probe, rest)
}

/// The Fashion-MNIST subset of the repository (data/fashion-mnist-subset), compiled into the
/// binary so that an installed `rfa` runs the demo from any directory.
mod embedded {
    pub const TRAIN_IMAGES: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
    pub const TRAIN_LABELS: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
    pub const TEST_IMAGES: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
    pub const TEST_LABELS: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");
}

/// The embedded Fashion-MNIST subset (train, test): `rfa demo`'s data, and what a
/// `fashion-mnist` config without `data.path` reads.
pub fn embedded_fashion_mnist() -> Result<(ImageDataset, ImageDataset)> {
    let name = |f: &str| PathBuf::from(format!("<embedded>/data/fashion-mnist-subset/{f}"));
    let split = |images: &[u8], labels: &[u8], split: &str| {
        rfa_data::images::parse_idx(
            &name(&format!("{split}-images-idx3-ubyte.gz")),
            images.to_vec(),
            &name(&format!("{split}-labels-idx1-ubyte.gz")),
            labels.to_vec(),
            fashion_mnist_classes(),
        )
    };
    Ok((
        split(embedded::TRAIN_IMAGES, embedded::TRAIN_LABELS, "train")?,
        split(embedded::TEST_IMAGES, embedded::TEST_LABELS, "t10k")?,
    ))
}

/// Whether the configured data set is text (`imdb`, `eli5`) rather than images.
pub fn is_text(cfg: &DataConfig) -> bool {
    matches!(cfg.dataset.as_str(), "imdb" | "eli5")
}

fn idx_pair(dir: &Path, split: &str) -> Result<(PathBuf, PathBuf)> {
    for ext in [".gz", ""] {
        let i = dir.join(format!("{split}-images-idx3-ubyte{ext}"));
        let l = dir.join(format!("{split}-labels-idx1-ubyte{ext}"));
        if i.is_file() && l.is_file() {
            return Ok((i, l));
        }
    }
    bail!("{}: no {split}-images-idx3-ubyte[.gz] / {split}-labels-idx1-ubyte[.gz]", dir.display())
}

/// Reads the image data set the config names and applies the size limits.
pub fn load_images(cfg: &DataConfig, seed: u64) -> Result<(ImageDataset, ImageDataset)> {
    let dir = cfg.path.clone();
    let (train, test) = match cfg.dataset.as_str() {
        "fashion-mnist" if dir.as_os_str().is_empty() => embedded_fashion_mnist()?,
        "mnist" | "cifar10" | "image-folder" if dir.as_os_str().is_empty() => bail!(
            "data.path is empty: only `fashion-mnist` has data embedded in rfa; name the folder of `{}`",
            cfg.dataset
        ),
        "fashion-mnist" | "mnist" => {
            let names = if cfg.dataset == "mnist" {
                (0..10).map(|i| i.to_string()).collect()
            } else {
                fashion_mnist_classes()
            };
            let (ti, tl) = idx_pair(&dir, "train")?;
            let (vi, vl) = idx_pair(&dir, "t10k")?;
            (load_idx(&ti, &tl, names.clone())?, load_idx(&vi, &vl, names)?)
        }
        "cifar10" => {
            let train: Vec<PathBuf> =
                (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect();
            (load_cifar10_bin(&train)?, load_cifar10_bin(&[dir.join("test_batch.bin")])?)
        }
        "image-folder" => {
            (load_image_folder(&dir.join("train"))?, load_image_folder(&dir.join("test"))?)
        }
        other => bail!(
            "unknown dataset `{other}` (fashion-mnist, mnist, cifar10, image-folder, imdb, eli5)"
        ),
    };
    let train = train.subset(&balanced(&train.labels, train.num_classes(), cfg.max_train, seed));
    let test = test.subset(&balanced(&test.labels, test.num_classes(), cfg.max_test, seed ^ 1));
    Ok((train, test))
}

/// Reads the text data set the config names (untokenised) and applies the size limits.
///
/// `imdb`: `path` is an `aclImdb` folder (`train/`, `test/`). `eli5`: `path` is a JSON / JSONL
/// file (gzipped or not) or a folder of them; the experiment set is `data.categories` (or the
/// `data.n_categories` largest) with up to `data.per_category` questions each, and
/// `data.test_percent` of each category is held out as the test set.
pub fn load_text(cfg: &DataConfig, seed: u64) -> Result<(TextDataset, TextDataset)> {
    if cfg.path.as_os_str().is_empty() {
        bail!("data.path must name the {} data (no text data set is embedded)", cfg.dataset);
    }
    let (train, test) = match cfg.dataset.as_str() {
        "imdb" => (load_aclimdb(&cfg.path, "train")?, load_aclimdb(&cfg.path, "test")?),
        "eli5" => {
            let files = eli5_files(&cfg.path)?;
            let all = eli5_experiment_set(
                &files,
                &cfg.categories,
                cfg.n_categories,
                cfg.per_category,
                cfg.with_answer,
                seed,
            )?;
            if !(0.0..100.0).contains(&cfg.test_percent) || cfg.test_percent <= 0.0 {
                bail!("data.test_percent must be in (0, 100), not {}", cfg.test_percent);
            }
            let mut rng = SplitMix64::new(seed ^ 0xe115);
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for c in 0..all.class_names.len() {
                let mut members: Vec<usize> =
                    (0..all.len()).filter(|&i| all.labels[i] == c).collect();
                rng.shuffle(&mut members);
                let k =
                    ((members.len() as f64) * cfg.test_percent / 100.0).round().max(1.0) as usize;
                test.extend_from_slice(&members[..k.min(members.len())]);
                train.extend_from_slice(&members[k.min(members.len())..]);
            }
            train.sort();
            test.sort();
            (text_subset(&all, &train), text_subset(&all, &test))
        }
        other => bail!("`{other}` is not a text data set (imdb, eli5)"),
    };
    let n = train.class_names.len();
    let train_keep = balanced(&train.labels, n, cfg.max_train, seed);
    let test_keep = balanced(&test.labels, n, cfg.max_test, seed ^ 1);
    Ok((text_subset(&train, &train_keep), text_subset(&test, &test_keep)))
}

fn eli5_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            [".json", ".jsonl", ".json.gz", ".jsonl.gz"].iter().any(|e| n.ends_with(e))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .json / .jsonl files (gzipped or not)", path.display());
    }
    Ok(files)
}

/// The samples `keep` (sorted) of a text data set.
pub fn text_subset(ds: &TextDataset, keep: &[usize]) -> TextDataset {
    TextDataset {
        texts: keep.iter().map(|&i| ds.texts[i].clone()).collect(),
        labels: keep.iter().map(|&i| ds.labels[i]).collect(),
        ids: keep.iter().map(|&i| ds.ids[i].clone()).collect(),
        class_names: ds.class_names.clone(),
        source: ds.source.clone(),
        lossy: ds.lossy,
    }
}

/// Indices of at most `max` samples (all when `max` is 0), the same number from each class
/// where possible, chosen by `seed`, in their original order.
pub fn balanced(labels: &[usize], classes: usize, max: usize, seed: u64) -> Vec<usize> {
    if max == 0 || max >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut idx: Vec<usize> = (0..labels.len()).collect();
    SplitMix64::new(seed).shuffle(&mut idx);
    let per = max.div_ceil(classes.max(1));
    let mut taken = vec![0; classes.max(1)];
    let mut keep: Vec<usize> = idx
        .into_iter()
        .filter(|&i| {
            let c = labels[i].min(taken.len() - 1);
            taken[c] += 1;
            taken[c] <= per
        })
        .collect();
    keep.truncate(max);
    keep.sort();
    keep
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::probe_split;

    proptest! {
        /// The validation probe and the reported test set are disjoint, cover the test set,
        /// and neither is empty.
        #[test]
        fn the_probe_is_disjoint_from_the_reported_test_set(n in 2usize..400, percent in 0.1f64..99.9, seed: u64) {
            let (probe, rest) = probe_split(n, percent, seed);
            prop_assert!(!probe.is_empty() && !rest.is_empty());
            let mut all: Vec<usize> = probe.iter().chain(&rest).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            prop_assert_eq!(probe_split(n, percent, seed), (probe, rest));
        }
    }
}
