//! A run: its resolved configuration, its data and its folder `runs/<name>/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use rfa_data::{ForgetSpec, ImageDataset};
use rfa_models::Architecture;
use rfa_models::tokenizer::TextTokenizer;

use crate::chain::{self, Link};
use crate::config::RunConfig;
use crate::engine_model::{Samples, TokenizedText};
use crate::fingerprint::samples_digest;
use crate::model_init;
use crate::scenario::Scenario;
use crate::task::{self, Task};

/// The run's task: the forget / retain split of `data.forget`, with every sample the requests of
/// `data.after`'s chain (checked) forgot kept out of Dr; and that chain.
/// The validation probe's share follows the scenario where `data.probe_percent = "auto"`.
fn split_task<D: Samples>(
    cfg: &RunConfig,
    train: D,
    test: D,
    language_model: bool,
) -> Result<(Task<D>, Vec<Link>)> {
    let (links, earlier) = match &cfg.data.after {
        None => (Vec::new(), BTreeSet::new()),
        Some(after) => {
            let receipt = chain::resolve(after, &cfg.unlearn.out_dir())
                .with_context(|| format!("data.after = {}", after.display()))?;
            let links = chain::walk(&receipt)?;
            let all: Vec<usize> = (0..train.len()).collect();
            let ids = chain::forgotten_ids(&links, train.len(), &samples_digest(&train, &all))?;
            (links, ids)
        }
    };
    let d = &cfg.data;
    let class_wise = matches!(ForgetSpec::parse(&d.forget)?, ForgetSpec::Class(_));
    let scenario = Scenario::new(class_wise, language_model, train.class_names().len());
    let probe_percent = d.probe_percent.or(scenario.probe_percent());
    Ok((Task::new(train, test, &d.forget, cfg.seed, probe_percent, &earlier)?, links))
}

/// ` (model.path = …)` where the model comes from a checkpoint, for errors about the model.
fn model_path_note(cfg: &RunConfig) -> String {
    cfg.model.path.as_ref().map_or(String::new(), |p| format!(" (model.path = {})", p.display()))
}

/// A run's data: images for ViT, tokenised text for BERT and GPT-2.
pub enum Data {
    Images(Task<ImageDataset>),
    /// Tokenised text, with the tokenizer that encoded it and the folder it came from (saved
    /// beside every model the run writes).
    Text {
        task: Task<TokenizedText>,
        tokenizer: TextTokenizer,
        tokenizer_dir: PathBuf,
    },
}

/// How many samples each set of a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSizes {
    /// D, the training set.
    pub train: usize,
    /// Df, the samples to forget.
    pub forget: usize,
    /// Dr = D without Df.
    pub retain: usize,
    /// Dt, the reported test set.
    pub test: usize,
    /// The validation probe held out of the test set.
    pub probe: usize,
}

pub struct Run {
    pub cfg: RunConfig,
    pub arch: Architecture,
    pub data: Data,
    /// `data.after`: the chain of earlier requests this one follows, oldest first (empty for a
    /// first request). Unlearning starts from the model its last entry leaves.
    pub after: Vec<Link>,
    pub dir: PathBuf,
    /// The backend the phases run on, as the report names it (the `rfa` binary sets it).
    pub backend: Option<String>,
    /// `--force`: a training phase starts over where its folder holds a model made under
    /// another fingerprint, instead of refusing.
    pub force: bool,
    /// `--sign KEY`: unlearning signs its receipt with this key (`receipt.sig`).
    pub sign: Option<crate::signature::SigningKey>,
    /// SHA-256 of `model.path`'s weights, read once: every fingerprint check names it.
    start_checkpoint_sha256: OnceLock<Option<String>>,
}

impl Run {
    /// Checks the whole configuration, then reads the data. Writes nothing: `config.toml` is
    /// written when a phase succeeds ([`Run::record_config`]).
    pub fn open(mut cfg: RunConfig) -> Result<Self> {
        cfg.validate()?;
        cfg.expand_home();
        let arch = model_init::architecture(&cfg.model)?;
        let after;
        let data = if task::is_text(&cfg.data) {
            if arch == Architecture::Vit {
                bail!(
                    "data set `{}` is text, the model a ViT{}: use a BERT (model.path) or GPT-2 model",
                    cfg.data.dataset,
                    model_path_note(&cfg)
                );
            }
            let (tok, tok_dir) = model_init::tokenizer(&cfg.model)?;
            let (train, test) = task::load_text(&cfg.data, cfg.seed)?;
            let eos = if arch == Architecture::Gpt2 { model_init::eos_id(&tok) } else { None };
            let train = TokenizedText::new(train, &tok, cfg.data.max_len, eos)?;
            let test = TokenizedText::new(test, &tok, cfg.data.max_len, eos)?;
            if train.truncated + test.truncated > 0 {
                eprintln!(
                    "note: {} of {} training and {} of {} test texts are longer than data.max_len = {} tokens and were cut to it",
                    train.truncated,
                    train.len(),
                    test.truncated,
                    test.len(),
                    cfg.data.max_len
                );
            }
            for ds in [&train, &test] {
                if ds.text.lossy > 0 {
                    eprintln!(
                        "note: {} texts of {} were not valid UTF-8 (decoded with U+FFFD)",
                        ds.text.lossy,
                        ds.source()
                    );
                }
            }
            let task;
            (task, after) = split_task(&cfg, train, test, arch == Architecture::Gpt2)?;
            Data::Text { task, tokenizer: tok, tokenizer_dir: tok_dir }
        } else {
            if arch != Architecture::Vit {
                bail!(
                    "data set `{}` is images: the model must be a ViT, not {arch:?}{}",
                    cfg.data.dataset,
                    model_path_note(&cfg)
                );
            }
            let (train, test) = task::load_images(&cfg.data, cfg.seed)?;
            let task;
            (task, after) = split_task(&cfg, train, test, false)?;
            Data::Images(task)
        };
        let dir = cfg.run_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            cfg,
            arch,
            data,
            after,
            dir,
            backend: None,
            force: false,
            sign: None,
            start_checkpoint_sha256: OnceLock::new(),
        })
    }

    /// Writes the resolved configuration to `config.toml`: after a phase succeeded, so that a
    /// failed command leaves the run's record of its configuration as it was.
    pub(crate) fn record_config(&self) -> Result<()> {
        lora_core::tensors::write_atomic(
            &self.dir.join("config.toml"),
            self.cfg.to_toml().as_bytes(),
        )?;
        Ok(())
    }

    /// What a phase's record says it ran on: the backend, and a precision other than f32.
    pub(crate) fn ran_on(&self, precision: Option<String>) -> Option<String> {
        match (&self.backend, precision) {
            (Some(b), Some(p)) => Some(format!("{b}; {p}")),
            (b, p) => b.clone().or(p),
        }
    }

    /// SHA-256 digests of the training samples and of the forgotten ones, as receipts record
    /// them.
    pub fn sample_digests(&self) -> (String, String) {
        fn of<D: Samples>(t: &Task<D>) -> (String, String) {
            let all: Vec<usize> = (0..t.train.len()).collect();
            (samples_digest(&t.train, &all), samples_digest(&t.train, &t.split.forget))
        }
        match &self.data {
            Data::Images(t) => of(t),
            Data::Text { task, .. } => of(task),
        }
    }

    /// Training, forget, retain and test set sizes.
    pub fn sizes(&self) -> SetSizes {
        fn of<D: Samples>(t: &Task<D>) -> SetSizes {
            SetSizes {
                train: t.train.len(),
                forget: t.split.forget.len(),
                retain: t.split.retain.len(),
                test: t.reported_test.len(),
                probe: t.probe.len(),
            }
        }
        match &self.data {
            Data::Images(t) => of(t),
            Data::Text { task, .. } => of(task),
        }
    }

    pub fn text(&self) -> Result<&Task<TokenizedText>> {
        match &self.data {
            Data::Text { task, .. } => Ok(task),
            Data::Images(_) => bail!("this run's data are images"),
        }
    }

    pub fn images(&self) -> Result<&Task<ImageDataset>> {
        match &self.data {
            Data::Images(t) => Ok(t),
            Data::Text { .. } => bail!("this run's data are text"),
        }
    }

    /// SHA-256 of the weights `model.path` names (`None` for a model built from scratch), hashed
    /// on first use.
    pub(crate) fn start_checkpoint_sha256(&self) -> Result<Option<&str>> {
        if self.start_checkpoint_sha256.get().is_none() {
            let weights = self.cfg.model.path.as_ref().map(|p| p.join("model.safetensors"));
            let sha = match weights.filter(|w| w.is_file()) {
                Some(w) => Some(crate::fingerprint::sha256_file(&w)?),
                None => None,
            };
            let _ = self.start_checkpoint_sha256.set(sha);
        }
        Ok(self.start_checkpoint_sha256.get().and_then(|s| s.as_deref()))
    }

    /// The tokenizer of a text run; an error for images.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        match &self.data {
            Data::Text { tokenizer, .. } => Ok(tokenizer),
            Data::Images(_) => bail!("this run's data are images: it has no tokenizer"),
        }
    }

    /// Saves a text run's tokenizer beside a model it wrote, so the folder is a complete
    /// checkpoint; nothing for images.
    pub(crate) fn copy_tokenizer(&self, to: &Path) -> Result<()> {
        match &self.data {
            Data::Text { tokenizer_dir, .. } => model_init::copy_tokenizer(tokenizer_dir, to),
            Data::Images(_) => Ok(()),
        }
    }
}
