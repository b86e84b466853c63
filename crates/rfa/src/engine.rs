//! Training, unlearning and evaluation of image classifiers, generic over burn backends.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::{LoraConfig, TargetModules, attach_lora, count_params};
use rfa_data::images::{fashion_mnist_classes, load_cifar10_bin, load_idx, load_image_folder};
use rfa_data::{ForgetSpec, ForgetSplit, ImageDataset, Preprocess, Rng, batches, select_forget};
use rfa_loss::{FeatureStats, RfaObjective, Targets};
use rfa_models::{VitConfig, VitForImageClassification};
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, ModelConfig, TrainConfig, UnlearnConfig};

pub type Vit<B> = VitForImageClassification<B>;

/// Training data, test data and the forget / retain split.
pub struct Task {
    pub train: ImageDataset,
    pub test: ImageDataset,
    pub split: ForgetSplit,
}

/// The Fashion-MNIST subset shipped in the repository (data/fashion-mnist-subset).
pub fn embedded_data_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-subset");
    if here.is_dir() { here } else { PathBuf::from("data/fashion-mnist-subset") }
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

/// Reads the data set the config names, applies the size limits and selects the forget set.
pub fn load_task(cfg: &DataConfig, seed: u64) -> Result<Task> {
    let dir = if cfg.path.as_os_str().is_empty() { embedded_data_dir() } else { cfg.path.clone() };
    let (train, test) = match cfg.dataset.as_str() {
        "fashion-mnist" | "mnist" => {
            let names = if cfg.dataset == "mnist" { (0..10).map(|i| i.to_string()).collect() } else { fashion_mnist_classes() };
            let (ti, tl) = idx_pair(&dir, "train")?;
            let (vi, vl) = idx_pair(&dir, "t10k")?;
            (load_idx(&ti, &tl, names.clone())?, load_idx(&vi, &vl, names)?)
        }
        "cifar10" => {
            let train: Vec<PathBuf> = (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect();
            (load_cifar10_bin(&train)?, load_cifar10_bin(&[dir.join("test_batch.bin")])?)
        }
        "image-folder" => {
            let train = load_image_folder(&dir.join("train"))?;
            let test = load_image_folder(&dir.join("test"))?;
            if train.class_names != test.class_names {
                bail!("{}: train and test have different class folders", dir.display());
            }
            (train, test)
        }
        other => bail!("unknown dataset `{other}` (fashion-mnist, mnist, cifar10, image-folder)"),
    };
    let train = limit(train, cfg.max_train, seed);
    let test = limit(test, cfg.max_test, seed ^ 1);
    let spec = ForgetSpec::parse(&cfg.forget)?;
    let split = select_forget(&train.labels, &train.class_names, &spec, seed)?;
    Ok(Task { train, test, split })
}

/// At most `max` samples, the same number from each class where possible, chosen by `seed`.
fn limit(ds: ImageDataset, max: usize, seed: u64) -> ImageDataset {
    if max == 0 || max >= ds.len() {
        return ds;
    }
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    Rng::new(seed).shuffle(&mut idx);
    let per = max.div_ceil(ds.num_classes().max(1));
    let mut taken = vec![0; ds.num_classes()];
    let mut keep: Vec<usize> = idx
        .into_iter()
        .filter(|&i| {
            let c = ds.labels[i];
            taken[c] += 1;
            taken[c] <= per
        })
        .collect();
    keep.truncate(max);
    keep.sort();
    ds.subset(&keep)
}

/// The model's architecture for a preset, sized for the data's classes and channels.
pub fn preset_config(model: &ModelConfig, classes: &[String], channels: usize) -> Result<VitConfig> {
    Ok(match model.preset.as_str() {
        "vit-tiny" => VitConfig::new(28, 7, channels, 64, 2, 4, 128, classes),
        "vit-small" => VitConfig::new(32, 4, channels, 128, 4, 4, 256, classes),
        other => bail!("unknown model preset `{other}` (vit-tiny, vit-small, or set model.path)"),
    })
}

/// The model to train as the original (and as the retrained gold standard): a preset from
/// scratch, or a pre-trained checkpoint with a fresh head.
pub fn initial_model<B: AutodiffBackend>(model: &ModelConfig, task: &Task, seed: u64, device: &B::Device) -> Result<Vit<B>> {
    let classes = task.train.num_classes();
    Ok(match (&model.path, &model.config) {
        (Some(p), _) => lora_core::unfreeze(Vit::load_with_new_head(p, classes, seed, device)?),
        (None, Some(c)) => {
            let mut cfg: VitConfig = rfa_models::common::read_config(c)?;
            cfg.id2label = Some(task.train.class_names.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone())).collect());
            cfg.num_labels = None;
            Vit::init(&cfg, seed, device)?
        }
        (None, None) => Vit::init(&preset_config(model, &task.train.class_names, task.train.channels.max(1))?, seed, device)?,
    })
}

/// Resize to the model's image size, its channel count, and the checkpoint's normalisation
/// (`preprocessor_config.json`, else ViT's 0.5 / 0.5).
fn preprocess<B: Backend>(m: &Vit<B>) -> Preprocess {
    let c = &m.config;
    let (mean, std) = m.normalisation();
    Preprocess { size: c.image_size, channels: c.num_channels, mean, std }
}

/// A batch of images as model input, with labels.
pub fn image_batch<B: Backend>(
    ds: &ImageDataset,
    idx: &[usize],
    pre: &Preprocess,
    device: &B::Device,
) -> Result<(Tensor<B, 4>, Vec<usize>)> {
    let x = pre.apply(ds, idx)?;
    let t = Tensor::from_data(TensorData::new(x, [idx.len(), pre.channels, pre.size, pre.size]), device);
    Ok((t, idx.iter().map(|&i| ds.labels[i]).collect()))
}

fn labels_tensor<B: Backend>(labels: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [labels.len()]), device)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32")[0] as f64
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})").expect("template").progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// One epoch's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub samples_per_s: f64,
}

/// Cross-entropy training of every parameter on `indices`, with AdamW. After each epoch the
/// model is saved atomically to `ckpt`; a run that finds a checkpoint there resumes after its
/// last completed epoch (the optimizer's moments restart). A non-finite loss stops training
/// with an error that names the last good checkpoint.
pub fn train_classifier<B: AutodiffBackend>(
    mut model: Vit<B>,
    ds: &ImageDataset,
    indices: &[usize],
    tc: &TrainConfig,
    seed: u64,
    what: &str,
    ckpt: &Path,
    device: &B::Device,
) -> Result<(Vit<B>, Vec<EpochLog>)> {
    if indices.is_empty() {
        bail!("{what}: no training samples");
    }
    if model.num_labels() != ds.num_classes() {
        bail!("{what}: the model has {} classes, the data {}", model.num_labels(), ds.num_classes());
    }
    let mut log: Vec<EpochLog> = Vec::new();
    let state_path = ckpt.join("train_state.json");
    if state_path.is_file() {
        log = serde_json::from_str(&std::fs::read_to_string(&state_path)?).with_context(|| format!("reading {}", state_path.display()))?;
        model = lora_core::unfreeze(Vit::load(ckpt, device)?);
        eprintln!("{what}: resuming after epoch {} from {}", log.len(), ckpt.display());
    }
    let pre = preprocess(&model);
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut optim = AdamWConfig::new().with_weight_decay(tc.weight_decay as f32).with_epsilon(1e-8).init::<B, Vit<B>>();
    for epoch in log.len()..tc.epochs {
        let bs = batches(indices, tc.batch_size, true, seed.wrapping_add(epoch as u64 * 7919));
        let pb = bar(indices.len() as u64, what);
        let start = Instant::now();
        let (mut sum, mut n) = (0.0, 0usize);
        for (step, b) in bs.iter().enumerate() {
            let (x, y) = image_batch::<B>(ds, b, &pre, device)?;
            let out = model.forward(x);
            let loss = ce.forward(out.logits, labels_tensor(&y, device));
            let l = scalar(loss.clone());
            if !l.is_finite() {
                pb.abandon();
                bail!(
                    "{what}: the loss became {l} at epoch {} step {step}; stopped. The last good model is {}",
                    epoch + 1,
                    if log.is_empty() {
                        "none (it diverged in the first epoch: lower the learning rate)".into()
                    } else {
                        ckpt.display().to_string()
                    }
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(tc.lr, model, grads);
            sum += l * b.len() as f64;
            n += b.len();
            pb.inc(b.len() as u64);
            pb.set_message(format!(
                "epoch {}/{} loss {:.4} {:.0} samples/s",
                epoch + 1,
                tc.epochs,
                sum / n as f64,
                n as f64 / start.elapsed().as_secs_f64()
            ));
        }
        pb.finish();
        log.push(EpochLog { epoch: epoch + 1, loss: sum / n as f64, samples_per_s: n as f64 / start.elapsed().as_secs_f64() });
        if pb.is_hidden() {
            eprintln!(
                "{what}: epoch {}/{} loss {:.4} {:.0} samples/s",
                epoch + 1,
                tc.epochs,
                sum / n as f64,
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
        save_checkpoint(&model, ckpt, &log)?;
    }
    Ok((model, log))
}

/// Saves the model and the epoch log into `dir` (each file atomically; the log last, so that a
/// kill between the two leaves the previous epoch's state consistent enough to resume).
fn save_checkpoint<B: Backend>(model: &Vit<B>, dir: &Path, log: &[EpochLog]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    model.save_pretrained(dir)?;
    lora_core::tensors::write_atomic(&dir.join("train_state.json"), serde_json::to_string_pretty(log)?.as_bytes())?;
    Ok(())
}

/// One RFA step's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub total: f64,
    pub retain: f64,
    pub forget: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlearnLog {
    pub steps: Vec<StepLog>,
    pub adapted: Vec<String>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub stats_seconds: f64,
}

/// Residual Feature Alignment (docs/rfa-method.md): LoRA adapters on the layers `uc.targets`
/// selects, B = 0 so the model starts at `m0`; targets `mu_l` from `m0`'s features on `Dr`;
/// then `uc.epochs` passes over `Df`, each forget batch paired with a retain batch in one
/// forward pass, loss = retain + λ·forget (+ γ·CE on the retain batch), AdamW on the adapters.
pub fn unlearn_rfa<B: AutodiffBackend>(
    m0: Vit<B>,
    task: &Task,
    uc: &UnlearnConfig,
    seed: u64,
    device: &B::Device,
) -> Result<(Vit<B>, UnlearnLog)> {
    let pre = preprocess(&m0);
    let cfg = LoraConfig { seed, ..LoraConfig::new(uc.rank, uc.alpha, TargetModules::parse(&uc.targets)) };
    let (mut model, adapted) = attach_lora(m0, &cfg)?;
    let params = count_params(&model);
    let cls_only = match uc.forget_tokens.as_str() {
        "all" => false,
        "cls" => true,
        other => bail!("unlearn.forget_tokens must be `all` or `cls`, not `{other}`"),
    };
    // The forget term's view of a tap: every token, or the first (CLS) one.
    let view = |t: Tensor<B, 3>| if cls_only { t.narrow(1, 0, 1) } else { t };
    let objective = RfaObjective {
        lambda: uc.lambda,
        layer_weights: uc.layer_weights.clone(),
        target: uc.target,
        retain_task_weight: uc.retain_task_weight,
    };

    // Targets from M0's pre-trained features on Dr (B = 0: the adapted model is M0).
    let t0 = Instant::now();
    let mut stats = FeatureStats::<B>::new(task.train.num_classes());
    let inner = model.valid();
    let pb = bar(task.split.retain.len() as u64, "features");
    for b in batches(&task.split.retain, 256, false, 0) {
        let (x, y) = image_batch::<B::InnerBackend>(&task.train, &b, &pre, device)?;
        let out = inner.forward(x);
        let taps: Vec<rfa_models::Tap<B>> = out.taps.into_iter().map(|t| t.map(|x| view(Tensor::from_inner(x)))).collect();
        stats.add(&taps, Some(&y), None)?;
        pb.inc(b.len() as u64);
    }
    pb.finish();
    let stats_seconds = t0.elapsed().as_secs_f64();
    let targets = Targets::resolve(uc.target, &stats, seed)?;

    let ce = CrossEntropyLossConfig::new().init(device);
    let mut optim = AdamWConfig::new().with_weight_decay(uc.weight_decay as f32).with_epsilon(1e-8).init::<B, Vit<B>>();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut retain_pool: Vec<usize> = Vec::new();
    let mut steps = Vec::new();
    let forget = &task.split.forget;
    let pb = bar((forget.len() * uc.epochs) as u64, "unlearn");
    let started = Instant::now();
    let mut seen = 0usize;
    for epoch in 0..uc.epochs {
        for fb in batches(forget, uc.batch_size, true, seed.wrapping_add(31 * epoch as u64 + 1)) {
            let mut rb = Vec::with_capacity(fb.len());
            while rb.len() < fb.len() {
                if retain_pool.is_empty() {
                    retain_pool = task.split.retain.clone();
                    rng.shuffle(&mut retain_pool);
                }
                rb.push(retain_pool.pop().expect("non-empty"));
            }
            let both: Vec<usize> = rb.iter().chain(&fb).copied().collect();
            let (x, y) = image_batch::<B>(&task.train, &both, &pre, device)?;
            let (nr, nf) = (rb.len(), fb.len());
            let out = model.forward(x);
            let (rt, ft) = rfa_models::Tap::split_rows(&out.taps, nr);
            let ft: Vec<_> = ft.into_iter().map(|t| t.map(view)).collect();
            let [_, seq, _] = ft[0].pre.dims();
            let mu = targets.for_batch(nf, seq, Some(&y[nr..]))?;
            let parts = objective.total(&rt, None, &ft, &mu, None)?;
            let mut total = parts.total.clone();
            if uc.retain_task_weight > 0.0 {
                let ce_r = ce.forward(out.logits.narrow(0, 0, nr), labels_tensor(&y[..nr], device));
                total = total + ce_r.mul_scalar(uc.retain_task_weight);
            }
            let (tv, rv, fv) = (scalar(total.clone()), scalar(parts.retain), scalar(parts.forget));
            if !tv.is_finite() {
                pb.abandon();
                bail!("unlearning: the loss became {tv} at step {}; lower unlearn.lr", steps.len());
            }
            let grads = GradientsParams::from_grads(total.backward(), &model);
            model = optim.step(uc.lr, model, grads);
            steps.push(StepLog { step: steps.len(), total: tv, retain: rv, forget: fv });
            pb.inc(nf as u64);
            seen += nr + nf;
            pb.set_message(format!("retain {rv:.4} forget {fv:.4} {:.0} samples/s", seen as f64 / started.elapsed().as_secs_f64()));
        }
    }
    pb.finish();
    Ok((model, UnlearnLog { steps, adapted, trainable_params: params.trainable, total_params: params.total, stats_seconds }))
}

/// Outputs of a model over a set of samples, on the host.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub logits: Vec<f32>,
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
    pub classes: usize,
    pub feature_dim: usize,
    /// Per sample: mean over adapted layers of the mean residual norm ||r_l|| over tokens
    /// (empty without adapters).
    pub residual_norms: Vec<f32>,
}

/// Runs `model` (without autodiff) over `indices` of `ds`.
pub fn outputs<B: Backend>(model: &Vit<B>, ds: &ImageDataset, indices: &[usize], device: &B::Device) -> Result<Outputs> {
    let pre = preprocess(model);
    let mut o = Outputs {
        logits: Vec::new(),
        features: Vec::new(),
        labels: Vec::new(),
        classes: model.num_labels(),
        feature_dim: model.config.hidden_size,
        residual_norms: Vec::new(),
    };
    for b in batches(indices, 256, false, 0) {
        let (x, y) = image_batch::<B>(ds, &b, &pre, device)?;
        let out = model.forward(x);
        o.logits.extend(out.logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
        o.features.extend(out.features.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
        if !out.taps.is_empty() {
            let n = out.taps.len() as f64;
            let per: Tensor<B, 1> = out
                .taps
                .into_iter()
                .map(|t| {
                    let [bb, tt, _] = t.residual.dims();
                    t.residual.powf_scalar(2.0).sum_dim(2).sqrt().reshape([bb, tt]).mean_dim(1).reshape([bb])
                })
                .reduce(|a, b| a + b)
                .expect("taps")
                .div_scalar(n);
            o.residual_norms.extend(per.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
        }
        o.labels.extend(y);
    }
    Ok(o)
}
