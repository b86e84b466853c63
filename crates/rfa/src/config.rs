//! The run configuration: a TOML file (`--config run.toml`) whose every field can be overridden
//! by a command-line flag. The resolved configuration is written next to the run's results.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rfa_loss::TargetStrategy;
use serde::{Deserialize, Serialize};

use crate::balance::Balance;
use crate::forget_selection::ForgetSelection;
use crate::method::Method;
use crate::scenario::{Auto, RetainSampling, RfaSettings, Scenario, StopRule};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Results go to `<runs_dir>/<name>/`.
    pub name: String,
    #[serde(default = "runs_dir")]
    pub runs_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub unlearn: UnlearnConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `rfa pretrain`: the backbone `model.preset` (or `model.config`) describes, trained on a
    /// source corpus into `<runs_dir>/<name>/pretrained/`; a run's `model.path` then names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainConfig>,
}

/// What a backbone learns from before it is fine-tuned ([`crate::pretrain`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// The source corpus: an image set (`cifar10`, `image-folder`, `fashion-mnist`, `mnist`,
    /// read as `data.dataset` reads them) or text (`imdb`: the reviews' text, labels unused).
    pub dataset: String,
    #[serde(default)]
    pub path: PathBuf,
    /// `supervised` (the source's own classes), `rotation` (self-supervised: by how many
    /// quarter turns an image was rotated; the source's labels are never read), or `causal-lm`
    /// (text: next-token prediction).
    pub objective: PretrainObjective,
    /// Source training samples at most (seeded, balanced); 0 = all.
    #[serde(default)]
    pub max_samples: usize,
    /// Held-out samples of the source's test split the backbone is measured on (accuracy, or
    /// perplexity for text) at most; 0 = all.
    #[serde(default = "held_out")]
    pub max_held_out: usize,
    /// Text: tokens per sample at most.
    #[serde(default = "max_len")]
    pub max_len: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    #[serde(default = "wd")]
    pub weight_decay: f64,
}

fn held_out() -> usize {
    1000
}

/// How a backbone is pre-trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PretrainObjective {
    Supervised,
    Rotation,
    CausalLm,
}

impl std::fmt::Display for PretrainObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Supervised => "supervised",
            Self::Rotation => "rotation",
            Self::CausalLm => "causal-lm",
        })
    }
}

fn runs_dir() -> PathBuf {
    PathBuf::from("runs")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Images: `fashion-mnist` / `mnist` (IDX files in `path`), `cifar10` (binary batches in
    /// `path`), `image-folder` (`path/train/<class>/…`, `path/test/<class>/…`).
    /// Text: `imdb` (`path` = an `aclImdb` folder), `eli5` (`path` = ELI5-Category JSON / JSONL
    /// files, or a folder of them).
    pub dataset: String,
    /// Folder of the data; empty = the Fashion-MNIST subset embedded in the repository.
    #[serde(default)]
    pub path: PathBuf,
    /// `class:NAME|INDEX`, `random:PERCENT`, `ids:1,2,3`, `id-file:PATH`.
    pub forget: String,
    /// A request that follows an earlier one (`rfa unlearn --after`): that request's
    /// `receipt.json`, its result folder, or its run folder (this run's method's result there).
    /// Unlearning starts from that result's model; the samples every earlier request forgot
    /// leave Dr, so `rfa retrain` here trains M* without all of them.
    // Not skipped when unset: JSON shows `null` (the Python package resolves `after=` from it);
    // TOML leaves it out.
    #[serde(default)]
    pub after: Option<PathBuf>,
    /// Use at most this many training / test samples (first ones after a seeded shuffle,
    /// balanced over classes); 0 = all.
    #[serde(default)]
    pub max_train: usize,
    #[serde(default)]
    pub max_test: usize,
    /// Text: tokens per sample at most (longer texts keep their start).
    #[serde(default = "max_len")]
    pub max_len: usize,
    /// ELI5: the categories of the experiment set; empty = the `n_categories` largest.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default = "n_categories")]
    pub n_categories: usize,
    /// ELI5: questions per category at most.
    #[serde(default = "per_category")]
    pub per_category: usize,
    /// ELI5: append the first answer to the question.
    #[serde(default = "yes")]
    pub with_answer: bool,
    /// ELI5: share of each category held out as the test set, in percent.
    #[serde(default = "test_percent")]
    pub test_percent: f64,
    /// Share of the test set held out as the validation probe (seeded), in percent: RFA's stop
    /// rule and the choice of defaults read it; the reported TA and the attacks never do.
    /// `auto`: 30 for random / id-list forgetting of a classifier, else 10
    /// ([`crate::scenario::Scenario::probe_percent`]).
    #[serde(default)]
    pub probe_percent: Auto<f64>,
}

fn max_len() -> usize {
    128
}
fn n_categories() -> usize {
    10
}
fn per_category() -> usize {
    1000
}
fn yes() -> bool {
    true
}
fn test_percent() -> f64 {
    10.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `vit-tiny` (28², patch 7, 2 × 64, 4 heads: trains on 2 CPU cores), `vit-small`
    /// (32², patch 4, 4 × 128), `gpt2-tiny` (2 × 128, 4 heads, 512 positions), `gpt2-small`
    /// (GPT-2 small's shape: 12 × 768, 12 heads, 1024 positions); or `path` to a Hugging Face
    /// checkpoint (ViT, BERT, GPT-2) to fine-tune. BERT has no preset: pass a pre-trained one.
    #[serde(default = "preset")]
    pub preset: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A ViT or GPT-2 `config.json` to build and train from scratch (instead of a preset).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Text: the tokenizer's folder (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt` /
    /// `encoder.json` + `vocab.bpe`); default: `path`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

fn preset() -> String {
    "vit-tiny".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    #[serde(default = "wd")]
    pub weight_decay: f64,
}

fn wd() -> f64 {
    0.01
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlearnConfig {
    #[serde(default = "rfa")]
    pub method: Method,
    /// Passes over the forget set; each forget batch is paired with a retain batch.
    pub epochs: usize,
    pub lr: f64,
    /// Forget samples per step (the retain batch has the same size).
    pub batch_size: usize,
    pub rank: usize,
    pub alpha: f64,
    /// PEFT `target_modules`: names (`query,value`), a regex, or `all-linear`.
    pub targets: String,
    /// λ, the forget term's weight.
    pub lambda: f64,
    /// RFA's forget target (`global-mean`, `class-mean-nearest`, `class-mean-random`,
    /// `runner-up-class-mean`, `boundary-mean`, `own-class-mean`, `zero`, `per-position-mean`,
    /// `own-token-mean`); `auto` picks it from the forget specification ([`Scenario::defaults`]).
    #[serde(default)]
    pub target: Auto<TargetStrategy>,
    /// RFA: how retain batches are drawn (`uniform`, `confusable`, `auto`).
    #[serde(default)]
    pub retain_sampling: Auto<RetainSampling>,
    /// RFA, `confusable` sampling: the share of each retain batch drawn from the retained
    /// samples M0 most confuses with Df.
    #[serde(default = "half")]
    pub confusable_share: f64,
    /// RFA: when to stop (`epochs`: after `unlearn.epochs` passes; `probe`: on the validation
    /// probes, with `unlearn.epochs` passes at most; `auto`).
    #[serde(default)]
    pub stop: Auto<StopRule>,
    /// RFA with the `probe` stop rule: whether the forget term's weight follows the checks
    /// (`fixed`, `adaptive`, `auto`; [`crate::balance`]).
    #[serde(default)]
    pub balance: Auto<Balance>,
    /// RFA: which samples of Df the forget term trains on (`all`, `unseen-error`: as many as
    /// the validation probe's error rate, least confident first; `auto`;
    /// [`crate::forget_selection`]).
    #[serde(default)]
    pub forget_selection: Auto<ForgetSelection>,
    /// `probe` stop rule: steps between two checks; 0 = two checks per pass over Df.
    #[serde(default)]
    pub check_every: usize,
    /// `probe` stop rule: the retain guard — the accuracy on the Dr probe may fall at most this
    /// many points below M0's; the best adapter within it is kept.
    #[serde(default = "one")]
    pub max_retain_drop: f64,
    /// `probe` stop rule, class-wise: Df counts as forgotten once at most this share (percent)
    /// of it is predicted as the forgotten class.
    #[serde(default = "one")]
    pub forget_tolerance: f64,
    /// `probe` stop rule, random / ids: Df counts as forgotten once its accuracy is at most the
    /// validation probe's plus this many points (a retrained model classifies Df as unseen
    /// data), with the membership AUC within its limit.
    #[serde(default)]
    pub forget_accuracy_margin: f64,
    /// `probe` stop rule: samples of the Df and Dr probes (seeded subsets) at most.
    #[serde(default = "probe_samples")]
    pub probe_samples: usize,
    /// `w_l` per adapted layer; empty = all 1.
    #[serde(default)]
    pub layer_weights: Vec<f64>,
    /// γ: weight of the task loss on the retain batch (0 = off, the method document's form);
    /// unset = the scenario's default.
    #[serde(default)]
    pub retain_task_weight: Option<f64>,
    /// Ours, classifiers: weight of an extra retain term on the CLS token alone (its residual →
    /// 0). The retain term averages the CLS token with every patch / word token, so with
    /// `forget_tokens = "cls"` a change of the CLS token — the one the forget term and the
    /// classifier read — costs it only 1/T of its weight. 0 = off (the method document's form).
    #[serde(default)]
    pub retain_cls_weight: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Tokens the forget term (and the target statistics) use: `all` (the method document's
    /// mean over tokens) or `cls` (the first token only, which the classifier reads; ours).
    #[serde(default = "all_tokens")]
    pub forget_tokens: String,
    /// RFA: estimate the targets μ_l from at most this many retained samples (a seeded random
    /// subset of Dr); 0 = all of Dr, as the method document defines them. The estimate is a
    /// mean, so a few thousand samples suffice where Dr is large (the pass over all of Dr was
    /// 40 % of RFA's time on IMDB).
    #[serde(default)]
    pub stats_samples: usize,
    /// RFA on a classifier: the pass over Dr for the targets stops once every class's mean
    /// feature has a standard error of at most this share of the distance to the nearest other
    /// class's mean (at least 32 samples of each class read, in a seeded random order); 0 =
    /// read all of Dr (or `stats_samples` of it).
    #[serde(default = "stats_precision")]
    pub stats_precision: f64,
    /// Seed of the unlearning alone (adapter init, batch order); default: the run's seed. The
    /// result goes to `<method>-s<seed>/` so that several seeds sit side by side.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Baselines: `lora` (train adapters like RFA's: same rank, alpha, targets) or `full`
    /// (every weight of the model).
    #[serde(default = "lora")]
    pub adapter: String,
    /// `grad-diff` / `neggrad+`: weight of the ascent term on Df (the retain term has weight 1).
    #[serde(default = "one")]
    pub forget_weight: f64,
    /// `scrub` (Kurmanji et al., 2023): α, the weight of KL(M0 ‖ model) on Dr; γ, the weight of
    /// the task loss on Dr; and how many of the epochs also take the max step on Df.
    #[serde(default = "scrub_alpha")]
    pub scrub_alpha: f64,
    #[serde(default = "scrub_gamma")]
    pub scrub_gamma: f64,
    #[serde(default = "one_usize")]
    pub scrub_max_epochs: usize,
    /// `l1-sparse` (Jia et al., 2023): weight of the l1 norm of the trained weights.
    #[serde(default = "l1_weight")]
    pub l1_weight: f64,
    /// `salun` (Fan et al., 2024): share of the weights, by forget-gradient magnitude, that are
    /// updated.
    #[serde(default = "half")]
    pub salun_ratio: f64,
    /// `npo` (Zhang et al., 2024): β of negative preference optimisation.
    #[serde(default = "npo_beta")]
    pub npo_beta: f64,
    /// `f32`, or `bf16` (cuda, tch-cpu, tch-cuda): the frozen base weights are stored in bf16 and
    /// their products run on bf16 tensor cores; adapters, optimizer state, the residual stream,
    /// the norms and the loss stay f32, and the merged model is built from the f32 original. On
    /// libtorch the blocks' interiors (projection outputs, attention, the MLP's activation) also
    /// run in bf16, as under PyTorch's autocast. Methods that update every weight
    /// (`adapter = "full"`) run in f32 only.
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// Which transformers generation's module names the PEFT adapter is written with:
    /// `transformers-5` (default; ViT's `vit.layers.N.attention.q_proj`, …) or `transformers-4`
    /// (`vit.encoder.layer.N.attention.attention.query`, …). BERT and GPT-2 are named alike in
    /// both. The merged model's weights use the checkpoint keys, which both generations read.
    #[serde(default)]
    pub module_names: lora_core::ModuleNames,
}

fn probe_samples() -> usize {
    512
}

fn stats_precision() -> f64 {
    0.05
}

fn f32_name() -> String {
    "f32".into()
}

fn lora() -> String {
    "lora".into()
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn scrub_alpha() -> f64 {
    0.001
}
fn scrub_gamma() -> f64 {
    0.99
}
fn l1_weight() -> f64 {
    5e-5
}
fn half() -> f64 {
    0.5
}
fn npo_beta() -> f64 {
    0.1
}

impl UnlearnConfig {
    /// The float type of the frozen weights during unlearning (`None`: the backend's f32).
    pub fn base_dtype(&self) -> anyhow::Result<Option<burn::tensor::DType>> {
        match (self.dtype.as_str(), self.adapter.as_str()) {
            ("f32", _) => Ok(None),
            ("bf16", "full") => {
                anyhow::bail!(
                    "unlearn.dtype = \"bf16\" needs adapters: with adapter = \"full\" every weight is trained, in f32"
                )
            }
            ("bf16", _) => Ok(Some(burn::tensor::DType::BF16)),
            (other, _) => anyhow::bail!("unknown unlearn.dtype `{other}` (f32, bf16)"),
        }
    }

    /// RFA's settings for `scenario`, each `auto` (or unset) one resolved.
    pub fn rfa_settings(&self, scenario: Scenario) -> RfaSettings {
        let d = scenario.defaults();
        let stop = self.stop.or(d.stop);
        RfaSettings {
            target: self.target.or(d.target),
            retain_sampling: self.retain_sampling.or(d.retain_sampling),
            retain_task_weight: self.retain_task_weight.unwrap_or(d.retain_task_weight),
            stop,
            // Only the probe stop rule's checks can steer λ.
            balance: self.balance.or(if stop == StopRule::Probe {
                d.balance
            } else {
                Balance::Fixed
            }),
            forget_selection: self.forget_selection.or(d.forget_selection),
        }
    }

    /// The folder of this unlearning's result inside the run.
    pub fn out_dir(&self) -> String {
        match self.seed {
            Some(s) => format!("{}-s{s}", self.method),
            None => self.method.to_string(),
        }
    }
}

/// Evaluation options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Language models: k of the Min-K% Prob membership attack, in percent.
    #[serde(default = "min_k")]
    pub min_k_percent: f64,
    /// Language models: prompts from the forgotten data and from retained data whose greedy
    /// continuations the report shows (each).
    #[serde(default = "prompts")]
    pub prompts: usize,
    #[serde(default = "generate_tokens")]
    pub generate_tokens: usize,
    /// Language models: Dr perplexity over at most this many retained texts (a seeded sample;
    /// 0 = all).
    #[serde(default = "max_retain")]
    pub max_retain: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            min_k_percent: min_k(),
            prompts: prompts(),
            generate_tokens: generate_tokens(),
            max_retain: max_retain(),
        }
    }
}

fn min_k() -> f64 {
    20.0
}
fn prompts() -> usize {
    2
}
fn generate_tokens() -> usize {
    40
}
fn max_retain() -> usize {
    2000
}

fn all_tokens() -> String {
    "all".into()
}

fn rfa() -> Method {
    Method::Rfa
}

impl RunConfig {
    /// The configuration `rfa demo` runs: the embedded Fashion-MNIST subset, the tiny ViT,
    /// one class forgotten.
    pub fn demo() -> Self {
        Self {
            name: "demo".into(),
            runs_dir: runs_dir(),
            seed: 0,
            data: DataConfig {
                dataset: "fashion-mnist".into(),
                path: PathBuf::new(),
                forget: "class:1".into(),
                after: None,
                max_train: 0,
                max_test: 0,
                max_len: max_len(),
                categories: Vec::new(),
                n_categories: n_categories(),
                per_category: per_category(),
                with_answer: true,
                test_percent: test_percent(),
                probe_percent: Auto::Auto,
            },
            model: ModelConfig { preset: preset(), path: None, config: None, tokenizer: None },
            train: TrainConfig { epochs: 15, lr: 2e-3, batch_size: 64, weight_decay: 0.01 },
            // The forget term on the CLS token, λ = 0.1, five passes over Df at most; target,
            // sampling, task term and stop rule from the scenario (docs/RESULTS.md).
            unlearn: UnlearnConfig {
                method: rfa(),
                epochs: 5,
                lr: 5e-3,
                batch_size: 32,
                rank: 8,
                alpha: 16.0,
                targets: "all-linear".into(),
                lambda: 0.1,
                target: Auto::Auto,
                retain_sampling: Auto::Auto,
                confusable_share: half(),
                stop: Auto::Auto,
                balance: Auto::Auto,
                forget_selection: Auto::Auto,
                check_every: 0,
                max_retain_drop: one(),
                forget_tolerance: one(),
                forget_accuracy_margin: 0.0,
                probe_samples: probe_samples(),
                layer_weights: Vec::new(),
                retain_task_weight: None,
                retain_cls_weight: 0.0,
                weight_decay: 0.0,
                forget_tokens: "cls".into(),
                stats_samples: 0,
                stats_precision: stats_precision(),
                seed: None,
                adapter: lora(),
                forget_weight: 1.0,
                scrub_alpha: scrub_alpha(),
                scrub_gamma: scrub_gamma(),
                scrub_max_epochs: 1,
                l1_weight: l1_weight(),
                salun_ratio: half(),
                npo_beta: npo_beta(),
                dtype: f32_name(),
                module_names: lora_core::ModuleNames::default(),
            },
            eval: EvalConfig::default(),
            pretrain: None,
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            lora_core::tensors::read_text_limited(path, lora_core::tensors::CONFIG_MAX_BYTES)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// [`RunConfig::read`] on text already read; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Replaces a leading `~/` in every path with `$HOME`, so that shared configs can name the
    /// asset cache (`~/.cache/rfa-assets`).
    pub fn expand_home(&mut self) {
        let Some(home) = std::env::var_os("HOME") else { return };
        let expand = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("~") {
                *p = PathBuf::from(&home).join(rest);
            }
        };
        expand(&mut self.runs_dir);
        expand(&mut self.data.path);
        if let Some(p) = &mut self.data.after {
            expand(p);
        }
        if let Some(p) = &mut self.pretrain {
            expand(&mut p.path);
        }
        for p in [&mut self.model.path, &mut self.model.config, &mut self.model.tokenizer]
            .into_iter()
            .flatten()
        {
            expand(p);
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// This configuration with the fields at dotted keys (`unlearn.lr`) replaced, as
    /// `rfa … --set KEY=VALUE` does; the result is checked as a whole configuration.
    pub fn with_values<K: AsRef<str>>(
        &self,
        values: impl IntoIterator<Item = (K, toml::Value)>,
    ) -> anyhow::Result<Self> {
        let mut doc: toml::Table = toml::from_str(&self.to_toml())?;
        for (key, value) in values {
            let key = key.as_ref();
            let mut parts: Vec<&str> = key.split('.').collect();
            let last = parts.pop().filter(|l| !l.is_empty()).context("an empty key")?;
            let mut table = &mut doc;
            for p in parts {
                table = table
                    .get_mut(p)
                    .and_then(|v| v.as_table_mut())
                    .with_context(|| format!("{key}: no section `{p}`"))?;
            }
            table.insert(last.to_string(), value);
        }
        toml::from_str(&toml::to_string(&doc)?)
            .context("the settings give an invalid configuration")
    }
}

/// A value as `--set KEY=VALUE` reads it: TOML (numbers, booleans, arrays), else a string.
pub fn parse_setting(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_replace_fields_by_dotted_key_and_are_checked_whole() {
        let demo = RunConfig::demo();
        let c = demo
            .with_values([
                ("unlearn.lr", parse_setting("5e-4")),
                ("unlearn.targets", parse_setting("query,value")),
                ("seed", parse_setting("7")),
                ("unlearn.module_names", parse_setting("transformers-4")),
            ])
            .unwrap();
        assert_eq!(c.unlearn.lr, 5e-4);
        assert_eq!(c.unlearn.targets, "query,value");
        assert_eq!(c.seed, 7);
        assert_eq!(c.unlearn.module_names, lora_core::ModuleNames::Transformers4);
        assert_eq!(c.train, demo.train, "other fields unchanged");
        let e = demo.with_values([("nosuch.lr", parse_setting("1"))]).unwrap_err();
        assert_eq!(e.to_string(), "nosuch.lr: no section `nosuch`");
        let e = demo.with_values([("unlearn.lr", parse_setting("fast"))]).unwrap_err();
        assert!(format!("{e:#}").contains("invalid configuration"), "{e:#}");
        let e = demo.with_values([("unlearn.module_names", parse_setting("v5"))]).unwrap_err();
        assert!(format!("{e:#}").contains("transformers-5"), "{e:#}");
        assert!(demo.with_values([("", parse_setting("1"))]).is_err());
    }

    #[test]
    fn a_setting_is_toml_where_it_parses_and_a_string_otherwise() {
        assert_eq!(parse_setting("3"), toml::Value::Integer(3));
        assert_eq!(parse_setting("true"), toml::Value::Boolean(true));
        assert_eq!(parse_setting("[1, 2]"), toml::Value::Array(vec![1.into(), 2.into()]));
        assert_eq!(parse_setting("class:Coat"), toml::Value::String("class:Coat".into()));
        assert_eq!(parse_setting("\"7\""), toml::Value::String("7".into()));
    }
}
