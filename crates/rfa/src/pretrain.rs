//! `rfa pretrain`: the backbone M0 and M* are fine-tuned from, trained on a source corpus the
//! task does not own, into `<runs_dir>/<name>/pretrained/` (a complete Hugging Face checkpoint:
//! config, weights, preprocessor config or tokenizer). A run's `model.path` then names it.
//!
//! - `supervised`: a ViT on another image set's own classes (CIFAR-10 for the Fashion-MNIST
//!   tasks; grey images are repeated over the backbone's channels and resized at fine-tuning);
//! - `rotation`: a ViT learns by how many quarter turns an image was rotated. Self-supervised:
//!   the source's labels are never read, so the task's own training images may be its source;
//! - `causal-lm`: a GPT-2 learns next-token prediction on text (IMDB's reviews).
//!
//! Each epoch's state is switched in whole and resumed like `rfa train`'s; a resume under
//! another source corpus or configuration is refused before anything is written. The held-out
//! quality (accuracy under the objective, or perplexity) goes to `pretrain.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::module::AutodiffModule;
use rfa_data::ImageDataset;
use rfa_data::text::load_aclimdb;
use rfa_models::{Architecture, FusedAutodiff};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoints;
use crate::config::{DataConfig, PretrainConfig, PretrainObjective, RunConfig, TrainConfig};
use crate::engine::outputs;
use crate::engine_model::{EngineModel, Samples, TokenizedText};
use crate::fingerprint::{Fingerprint, flatten, samples_digest};
use crate::measure::measure;
use crate::model_init;
use crate::phase_record::{PhaseRecord, write_json, write_phase};
use crate::run_lock::RunLock;
use crate::staged_dir::StagedDir;
use crate::task::{balanced, load_images, text_subset};
use crate::train::{EpochLog, train_model};
use crate::{Inner, Run};

/// The backbone's folder in its run.
pub const PRETRAINED: &str = "pretrained";
/// What the pre-training was and how well the backbone does on held-out source data.
pub const PRETRAIN_RECORD: &str = "pretrain.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainRecord {
    pub objective: PretrainObjective,
    /// The source corpus: data set and where it was read.
    pub source: String,
    pub samples: usize,
    pub held_out_samples: usize,
    /// Images: accuracy (percent) on held-out source images under the objective (their
    /// classes, or their rotations).
    pub held_out_accuracy: Option<f64>,
    /// Text: perplexity on held-out source text.
    pub held_out_perplexity: Option<f64>,
    pub epochs: Vec<EpochLog>,
    /// How the held-out texts were drawn (causal-lm), so that a fine-tuned model can be
    /// measured on the same ones ([`held_out_text`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_text: Option<HeldOutText>,
}

/// The held-out part of a text corpus: `max` reviews of aclImdb's test split at `path`
/// (balanced, drawn with `seed`), `max_len` tokens each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutText {
    pub path: PathBuf,
    pub max: usize,
    pub max_len: usize,
    pub seed: u64,
}

/// The reviews a split of aclImdb holds, `max` of them balanced over the labels (`seed`).
fn imdb_texts(
    path: &Path,
    split: &str,
    max: usize,
    seed: u64,
) -> Result<rfa_data::text::TextDataset> {
    let ds = load_aclimdb(path, split)?;
    let keep = balanced(&ds.labels, ds.class_names.len(), max, seed);
    Ok(text_subset(&ds, &keep))
}

/// The backbone's held-out texts, tokenised with `tok` as they were at pre-training.
pub fn held_out_text(
    h: &HeldOutText,
    tok: &rfa_models::tokenizer::TextTokenizer,
) -> Result<TokenizedText> {
    let eos = model_init::eos_id(tok);
    TokenizedText::new(imdb_texts(&h.path, "test", h.max, h.seed ^ 1)?, tok, h.max_len, eos)
}

impl PretrainRecord {
    /// The record beside a checkpoint, if it is an `rfa pretrain` backbone.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(PRETRAIN_RECORD)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The source corpus read as `data.*` reads a data set: its training split (at most
/// `max_samples`) and its held-out split (at most `max_held_out`).
fn source_data(cfg: &RunConfig, p: &PretrainConfig) -> DataConfig {
    DataConfig {
        dataset: p.dataset.clone(),
        path: p.path.clone(),
        forget: String::new(),
        after: None,
        max_train: p.max_samples,
        max_test: p.max_held_out,
        max_len: p.max_len,
        ..cfg.data.clone()
    }
}

/// Every image in its four quarter-turn rotations, labelled by the turn: the pretext task of
/// Gidaris et al. (2018). The source's own labels are dropped.
pub fn rotations(ds: &ImageDataset) -> Result<ImageDataset> {
    ensure!(
        ds.height == ds.width,
        "{}: rotation pre-training needs square images, these are {}×{}",
        ds.source,
        ds.height,
        ds.width
    );
    let (c, s) = (ds.channels, ds.height);
    let mut pixels = Vec::with_capacity(ds.pixels.len() * 4);
    let mut labels = Vec::with_capacity(ds.len() * 4);
    for i in 0..ds.len() {
        let img = ds.image(i);
        for turn in 0..4 {
            for ch in 0..c {
                let plane = &img[ch * s * s..(ch + 1) * s * s];
                for y in 0..s {
                    for x in 0..s {
                        // Counter-clockwise by `turn` quarter turns.
                        let (sy, sx) = match turn {
                            0 => (y, x),
                            1 => (x, s - 1 - y),
                            2 => (s - 1 - y, s - 1 - x),
                            _ => (s - 1 - x, y),
                        };
                        pixels.push(plane[sy * s + sx]);
                    }
                }
            }
            labels.push(turn);
        }
    }
    Ok(ImageDataset {
        pixels,
        labels,
        class_names: ["0°", "90°", "180°", "270°"].map(String::from).to_vec(),
        source: format!("{} (rotated)", ds.source),
        ..*ds
    })
}

/// What determines the backbone: the `pretrain.*` and `model.*` fields, the seed and the
/// source samples' digest (`pretrain.epochs` aside: a resume may raise it).
fn fingerprint<D: Samples>(cfg: &RunConfig, p: &PretrainConfig, source: &D) -> Result<Fingerprint> {
    let mut fields = std::collections::BTreeMap::new();
    flatten("pretrain", &table(p)?, &mut fields);
    flatten("model", &table(&cfg.model)?, &mut fields);
    // model.path is the output, not an input; a resume may raise pretrain.epochs.
    fields.remove("model.path");
    fields.remove("pretrain.epochs");
    fields.insert("seed".into(), cfg.seed.to_string());
    let all: Vec<usize> = (0..source.len()).collect();
    fields.insert(
        "source samples".into(),
        format!("{} (sha256 {})", source.len(), samples_digest(source, &all)),
    );
    Ok(Fingerprint(fields))
}

/// A configuration section as a TOML table.
fn table<T: Serialize>(v: &T) -> Result<toml::Table> {
    Ok(toml::Table::try_from(v)?)
}

impl Run {
    /// `rfa pretrain`: trains the backbone `cfg.model` describes (its preset or `config.json`)
    /// on `cfg.pretrain`'s corpus into `<run>/pretrained/`; returns that folder.
    pub fn pretrain<B: FusedAutodiff>(
        cfg: &RunConfig,
        backend: Option<&str>,
        force: bool,
        device: &B::Device,
    ) -> Result<PathBuf> {
        Self::pretrain_on::<B>(cfg, backend, force, std::slice::from_ref(device))
    }

    /// [`Run::pretrain`] data-parallel over `devices` ([`crate::data_parallel`]); the first
    /// builds the model and evaluates it.
    pub fn pretrain_on<B: FusedAutodiff>(
        cfg: &RunConfig,
        backend: Option<&str>,
        force: bool,
        devices: &[B::Device],
    ) -> Result<PathBuf> {
        let device = devices.first().context("no device to pre-train on")?;
        cfg.validate()?;
        let mut cfg = cfg.clone();
        cfg.expand_home();
        let p = cfg.pretrain.clone().context(
            "the configuration has no [pretrain] section (pretrain.dataset, objective, …)",
        )?;
        let dir = cfg.run_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = RunLock::folder(&dir, PRETRAINED, "rfa pretrain")?;
        let out = dir.join(PRETRAINED);
        // The backbone is built from the preset or config.json; model.path names the result.
        let mut model_cfg = cfg.model.clone();
        if model_cfg.path.as_ref().is_some_and(|m| !same_folder(m, &out)) {
            bail!(
                "model.path = {} but `rfa pretrain` writes {}: pre-training builds the backbone from model.preset / model.config",
                model_cfg.path.as_ref().expect("set").display(),
                out.display()
            );
        }
        model_cfg.path = None;
        let arch = model_init::architecture(&model_cfg)?;
        let train_cfg = TrainConfig {
            epochs: p.epochs,
            lr: p.lr,
            batch_size: p.batch_size,
            weight_decay: p.weight_decay,
        };
        let source = source_data(&cfg, &p);
        let seed = cfg.seed;
        let backend = backend.map(str::to_string);
        match (p.objective, arch) {
            (PretrainObjective::Supervised | PretrainObjective::Rotation, Architecture::Vit) => {
                ensure!(
                    !crate::task::is_text(&source),
                    "pretrain.dataset = \"{}\" is text: a ViT pre-trains on images",
                    p.dataset
                );
                let (train, held) = load_images(&source, seed)?;
                let (train, held) = if p.objective == PretrainObjective::Rotation {
                    (rotations(&train)?, rotations(&held)?)
                } else {
                    (train, held)
                };
                let model = model_init::initial_vit::<B>(
                    &model_cfg,
                    &train.class_names,
                    train.channels,
                    seed,
                    device,
                )?;
                let fp = fingerprint(&cfg, &p, &train)?;
                let run = Pretraining { out: &out, p: &p, train_cfg, seed, fp, force, backend };
                run.go(model, &train, &held, &|_| Ok(()), None, devices)?;
            }
            (PretrainObjective::CausalLm, Architecture::Gpt2) => {
                ensure!(
                    p.dataset == "imdb",
                    "pretrain.dataset = \"{}\": causal-lm pre-trains on text (`imdb`)",
                    p.dataset
                );
                ensure!(
                    !p.path.as_os_str().is_empty(),
                    "pretrain.path must name the aclImdb folder"
                );
                let (tok, tok_dir) = model_init::tokenizer(&model_cfg)?;
                let eos = model_init::eos_id(&tok);
                let train = imdb_texts(&p.path, "train", p.max_samples, seed)?;
                let train = TokenizedText::new(train, &tok, p.max_len, eos)?;
                let spec = HeldOutText {
                    path: p.path.clone(),
                    max: p.max_held_out,
                    max_len: p.max_len,
                    seed,
                };
                let held = held_out_text(&spec, &tok)?;
                let model = model_init::initial_gpt2::<B>(&model_cfg, &tok, seed, device)?;
                let fp = fingerprint(&cfg, &p, &train)?;
                let copy_tok = |d: &Path| model_init::copy_tokenizer(&tok_dir, d);
                let run = Pretraining { out: &out, p: &p, train_cfg, seed, fp, force, backend };
                run.go(model, &train, &held, &copy_tok, Some(spec), devices)?;
            }
            (objective, arch) => bail!(
                "pretrain.objective = \"{objective}\" does not train a {arch:?} (model.preset / model.config): supervised and rotation pre-train a ViT, causal-lm a GPT-2"
            ),
        }
        Ok(out)
    }
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// One pre-training: where, on what, and how.
struct Pretraining<'a> {
    out: &'a Path,
    p: &'a PretrainConfig,
    train_cfg: TrainConfig,
    seed: u64,
    fp: Fingerprint,
    force: bool,
    backend: Option<String>,
}

impl Pretraining<'_> {
    fn go<B: FusedAutodiff, M: EngineModel<B> + AutodiffModule<B>>(
        self,
        model: M,
        train: &M::Data,
        held: &M::Data,
        extras: &dyn Fn(&Path) -> Result<()>,
        held_out_text: Option<HeldOutText>,
        devices: &[B::Device],
    ) -> Result<()>
    where
        M::InnerModule: EngineModel<Inner<B>, Data = M::Data>,
    {
        let device = &devices[0];
        let resume = match self.fp.check(self.out, "pass --force to pre-train from scratch") {
            Ok(()) => true,
            Err(e) if self.force => {
                eprintln!(
                    "pretrain: --force: starting over; {} will be replaced ({e:#})",
                    self.out.display()
                );
                false
            }
            Err(e) => return Err(e),
        };
        let params = lora_core::count_params(&model).total;
        let all_extras = |dir: &Path| -> Result<()> {
            self.fp.write(dir)?;
            extras(dir)
        };
        let ckpt = Checkpoints { dir: self.out, resume, extras: &all_extras };
        let indices: Vec<usize> = (0..train.len()).collect();
        let ((model, epochs), phase) = measure(|| {
            train_model(
                model,
                train,
                &indices,
                &self.train_cfg,
                self.seed,
                "pretrain",
                &ckpt,
                devices,
            )
        })?;
        let model = model.valid();
        let held_idx: Vec<usize> = (0..held.len()).collect();
        let o = outputs(&model, held, &held_idx, device)?;
        let (accuracy, perplexity) = match model.num_labels() {
            Some(classes) => {
                let rows = rfa_eval::Rows::new("held-out logits", &o.logits, classes)?;
                (Some(rfa_eval::accuracy(&rows, &o.labels)?), None)
            }
            None => (None, rfa_eval::perplexity(&o.token_logprobs)),
        };
        let record = PretrainRecord {
            objective: self.p.objective,
            source: train.source().to_string(),
            samples: train.len(),
            held_out_samples: held.len(),
            held_out_accuracy: accuracy,
            held_out_perplexity: perplexity,
            epochs,
            held_out_text,
        };
        match (accuracy, perplexity) {
            (Some(a), _) => {
                eprintln!("pretrain: held-out accuracy {a:.2} % on {} samples", held.len())
            }
            (_, Some(p)) => {
                eprintln!("pretrain: held-out perplexity {p:.2} on {} texts", held.len())
            }
            _ => {}
        }
        let staged = StagedDir::continuing(self.out)?;
        write_json(&staged.path().join(PRETRAIN_RECORD), &record)?;
        write_phase(
            staged.path(),
            PhaseRecord {
                phase,
                trainable_params: params,
                ran_on: self.backend.clone(),
                base_model_sha256: None,
                files: Default::default(),
            },
        )?;
        staged.commit()
    }
}
