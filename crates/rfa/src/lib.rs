//! rfa: machine unlearning on pre-trained transformers by Residual Feature Alignment.
//!
//! The library behind the `rfa` command. A run lives in `runs/<name>/`:
//!
//! ```text
//! config.toml                   the resolved configuration
//! original/                     M0, trained on D (Hugging Face checkpoint + train_state.json)
//! retrain/                      M*, trained on Dr only (the gold standard)
//! rfa/adapter/                  the unlearning adapter, PEFT format
//! rfa/merged/                   M0 with the adapter merged, Hugging Face checkpoint
//! report.json, report.md        metrics of M0, M*, RFA
//! ```

pub mod alloc;
pub mod baselines;
pub mod compare;
pub mod config;
pub mod engine;
pub mod kernel_cache;
pub mod learner;
pub mod models;
pub mod plots;
pub mod report;
pub mod task;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rfa_data::ImageDataset;
use rfa_models::tokenizer::TextTokenizer;
use rfa_models::{Architecture, FusedAutodiff, FusedOps};
use serde::{Deserialize, Serialize};

use config::RunConfig;
use engine::{outputs, train_model, unlearn_rfa};
use learner::{Learner, Samples, TokenizedText};
use models::{Bert, Gpt2, Vit};
use report::{Evaluated, Generation, Phase, Report, measure, model_reports};
use task::Task;

/// What a phase left beside its model, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub trainable_params: usize,
    /// Backend and precision the phase ran on (its time depends on them); absent in records
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    lora_core::tensors::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

fn read_phase(dir: &Path) -> Result<PhaseRecord> {
    let p = dir.join("phase.json");
    serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("{} is missing: run that phase first", p.display()))?)
        .with_context(|| format!("reading {}", p.display()))
}

/// A run's data: images for ViT, tokenised text for BERT and GPT-2.
pub enum Data {
    Images(Task<ImageDataset>),
    Text(Task<TokenizedText>),
}

pub struct Run {
    pub cfg: RunConfig,
    pub arch: Architecture,
    pub data: Data,
    pub dir: PathBuf,
    /// Text runs: the tokenizer and the folder it came from.
    pub tokenizer: Option<(TextTokenizer, PathBuf)>,
    /// The backend the phases run on, as the report names it (the `rfa` binary sets it).
    pub backend: Option<String>,
}

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

impl Run {
    pub fn open(mut cfg: RunConfig) -> Result<Self> {
        cfg.expand_home();
        let arch = models::architecture(&cfg.model)?;
        let (data, tokenizer) = if task::is_text(&cfg.data) {
            if arch == Architecture::Vit {
                bail!("data set `{}` is text, the model a ViT: use a BERT (model.path) or GPT-2 model", cfg.data.dataset);
            }
            let (tok, tok_dir) = models::tokenizer(&cfg.model)?;
            let (train, test) = task::load_text(&cfg.data, cfg.seed)?;
            let eos = if arch == Architecture::Gpt2 { models::eos_id(&tok) } else { None };
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
                    eprintln!("note: {} texts of {} were not valid UTF-8 (decoded with U+FFFD)", ds.text.lossy, ds.source());
                }
            }
            (Data::Text(Task::new(train, test, &cfg.data.forget, cfg.seed)?), Some((tok, tok_dir)))
        } else {
            if arch != Architecture::Vit {
                bail!("data set `{}` is images: the model must be a ViT, not {arch:?}", cfg.data.dataset);
            }
            let (train, test) = task::load_images(&cfg.data, cfg.seed)?;
            (Data::Images(Task::new(train, test, &cfg.data.forget, cfg.seed)?), None)
        };
        let dir = cfg.run_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        lora_core::tensors::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        Ok(Self { cfg, arch, data, dir, tokenizer, backend: None })
    }

    /// What a phase's record says it ran on: the backend, and a precision other than f32.
    fn ran_on(&self, precision: Option<String>) -> Option<String> {
        match (&self.backend, precision) {
            (Some(b), Some(p)) => Some(format!("{b}; {p}")),
            (b, p) => b.clone().or(p),
        }
    }

    /// Training, forget, retain and test set sizes.
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        fn of<D: Samples>(t: &Task<D>) -> (usize, usize, usize, usize) {
            (t.train.len(), t.split.forget.len(), t.split.retain.len(), t.test.len())
        }
        match &self.data {
            Data::Images(t) => of(t),
            Data::Text(t) => of(t),
        }
    }

    pub fn text(&self) -> Result<&Task<TokenizedText>> {
        match &self.data {
            Data::Text(t) => Ok(t),
            Data::Images(_) => bail!("this run's data are images"),
        }
    }

    pub fn images(&self) -> Result<&Task<ImageDataset>> {
        match &self.data {
            Data::Images(t) => Ok(t),
            Data::Text(_) => bail!("this run's data are text"),
        }
    }

    /// `rfa train` (all of D → `original/`) or `rfa retrain` (Dr only → `retrain/`).
    pub fn train<B: FusedAutodiff>(&self, retrain: bool, device: &B::Device) -> Result<()> {
        let (m, seed) = (&self.cfg.model, self.cfg.seed);
        match self.arch {
            Architecture::Vit => {
                let t = self.images()?;
                let model = models::initial_vit::<B>(m, &t.train.class_names, t.train.channels, seed, device)?;
                self.train_with(model, t, retrain, device)
            }
            Architecture::Bert => {
                let t = self.text()?;
                self.train_with(models::initial_bert::<B>(m, t.train.class_names().len(), seed, device)?, t, retrain, device)
            }
            Architecture::Gpt2 => {
                let tok = &self.tokenizer.as_ref().context("text run without tokenizer")?.0;
                self.train_with(models::initial_gpt2::<B>(m, tok, seed, device)?, self.text()?, retrain, device)
            }
        }
    }

    fn train_with<B: FusedAutodiff, M: Learner<B> + AutodiffModule<B>>(
        &self,
        model: M,
        task: &Task<M::Data>,
        retrain: bool,
        device: &B::Device,
    ) -> Result<()> {
        let (what, sub) = if retrain { ("retrain", "retrain") } else { ("train", "original") };
        let indices: Vec<usize> = if retrain { task.split.retain.clone() } else { (0..task.train.len()).collect() };
        let out = self.dir.join(sub);
        let params = lora_core::count_params(&model).total;
        let (_, phase) = measure(|| train_model(model, &task.train, &indices, &self.cfg.train, self.cfg.seed, what, &out, device))?;
        self.copy_tokenizer(&out)?;
        let prev = read_phase(&out).ok();
        // A resumed run adds the time of the interrupted one.
        let phase = Phase { seconds: phase.seconds + prev.map(|p| p.phase.seconds).unwrap_or(0.0), ..phase };
        write_json(&out.join("phase.json"), &PhaseRecord { phase, trainable_params: params, ran_on: self.ran_on(None) })
    }

    fn copy_tokenizer(&self, to: &Path) -> Result<()> {
        match &self.tokenizer {
            Some((_, from)) => models::copy_tokenizer(from, to),
            None => Ok(()),
        }
    }

    /// `rfa unlearn --method NAME`: under `NAME/` (or `NAME-s<seed>/`), the adapter (PEFT) when
    /// adapters were trained, and the merged model (Hugging Face).
    pub fn unlearn<B: FusedAutodiff>(&self, device: &B::Device) -> Result<()> {
        if !config::METHODS.contains(&self.cfg.unlearn.method.as_str()) {
            bail!("unknown unlearning method `{}` ({})", self.cfg.unlearn.method, config::METHODS.join(", "));
        }
        match self.arch {
            Architecture::Vit => self.unlearn_with::<B, Vit<B>>(self.images()?, device),
            Architecture::Bert => self.unlearn_with::<B, Bert<B>>(self.text()?, device),
            Architecture::Gpt2 => self.unlearn_with::<B, Gpt2<B>>(self.text()?, device),
        }
    }

    fn unlearn_with<B, M>(&self, task: &Task<M::Data>, device: &B::Device) -> Result<()>
    where
        B: FusedAutodiff,
        M: Learner<B> + AutodiffModule<B>,
        M::InnerModule: Learner<Inner<B>, Data = M::Data>,
    {
        let uc = &self.cfg.unlearn;
        let base_dtype = uc.base_dtype()?;
        let mut m0 =
            <M as Learner<B>>::load(&self.dir.join("original"), device).context("loading the original model (run `rfa train` first)")?;
        if let Some(dt) = base_dtype {
            lora_core::set_base_dtype(&mut m0, dt);
        }
        let seed = uc.seed.unwrap_or(self.cfg.seed);
        let ((model, log), phase) = measure(|| {
            if uc.method == "rfa" {
                unlearn_rfa(m0, task, uc, seed, device)
            } else {
                baselines::unlearn_baseline(m0, task, uc, seed, device)
            }
        })?;
        let out = self.dir.join(uc.out_dir());
        // A result left by an earlier run of this method must not mix with this one.
        for sub in ["adapter", "merged"] {
            let _ = std::fs::remove_dir_all(out.join(sub));
        }
        if !log.adapted.is_empty() {
            lora_core::save_adapter(&model, &out.join("adapter"), Some("../../original"))?;
        }
        let mut merged = match base_dtype {
            // The bf16 copy of W0 is lossy: the f32 adapter goes into the f32 original instead.
            Some(_) => {
                let mut m = <M::InnerModule as Learner<Inner<B>>>::load(&self.dir.join("original"), device)?;
                lora_core::load_adapter(&mut m, &out.join("adapter"))?;
                m
            }
            None => model.valid(),
        };
        lora_core::merge_and_unload(&mut merged);
        merged.save(&out.join("merged"))?;
        self.copy_tokenizer(&out.join("merged"))?;
        write_json(&out.join("unlearn_log.json"), &log)?;
        let precision = base_dtype.map(|_| format!("frozen weights in {}", uc.dtype));
        let (first, median) = log.step_times().map_or((None, None), |(f, m)| (Some(f), m));
        let phase = Phase { first_step_seconds: first, median_step_seconds: median, ..phase };
        write_json(&out.join("phase.json"), &PhaseRecord { phase, trainable_params: log.trainable_params, ran_on: self.ran_on(precision) })
    }

    /// The unlearning results in the run folder, in `METHODS` order then by seed: (display
    /// name, folder).
    pub fn unlearned(&self) -> Vec<(String, PathBuf)> {
        let mut found: Vec<(usize, u64, String, PathBuf)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let (method, seed) = match name.rsplit_once("-s") {
                Some((m, s)) if s.parse::<u64>().is_ok() => (m.to_string(), Some(s.to_string())),
                _ => (name.clone(), None),
            };
            let Some(rank) = config::METHODS.iter().position(|m| *m == method) else { continue };
            let p = e.path();
            if p.join("phase.json").is_file() && (p.join("adapter").is_dir() || p.join("merged").is_dir()) {
                let display = if method == "rfa" { "RFA".to_string() } else { method.clone() };
                let display = match &seed {
                    Some(s) => format!("{display} (seed {s})"),
                    None => display,
                };
                found.push((rank, seed.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0), display, p));
            }
        }
        found.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        found.into_iter().map(|(_, _, d, p)| (d, p)).collect()
    }

    /// The models the report compares: M0, M*, and every unlearning result in the run (M0 with
    /// its adapter, or its merged / fully trained model), each with the record of the phase
    /// that made it.
    fn evaluated_models<B: FusedOps, M: Learner<B>>(&self, device: &B::Device) -> Result<Vec<(String, M, PhaseRecord)>> {
        let mut v = Vec::new();
        for (name, dir) in [("original (M0)", "original"), ("retrain (M*)", "retrain")] {
            let path = self.dir.join(dir);
            let model = <M as Learner<B>>::load(&path, device).with_context(|| format!("loading {}", path.display()))?;
            v.push((name.to_string(), model, read_phase(&path)?));
        }
        let unlearned = self.unlearned();
        if unlearned.is_empty() {
            bail!("no unlearning result in {} (run `rfa unlearn` first)", self.dir.display());
        }
        for (name, dir) in unlearned {
            let model = if dir.join("adapter").is_dir() {
                let mut m = <M as Learner<B>>::load(&self.dir.join("original"), device)?;
                lora_core::load_adapter(&mut m, &dir.join("adapter"))?;
                m
            } else {
                <M as Learner<B>>::load(&dir.join("merged"), device).with_context(|| format!("loading {}", dir.display()))?
            };
            v.push((name, model, read_phase(&dir)?));
        }
        Ok(v)
    }

    /// `rfa eval`: metrics of M0, M*, RFA → report.json, report.md, plots.
    pub fn eval<B: FusedAutodiff>(&self, backend: &str, device: &B::Device) -> Result<Report> {
        match self.arch {
            Architecture::Vit => self.eval_classifier::<Inner<B>, Vit<Inner<B>>>(self.images()?, backend, device),
            Architecture::Bert => self.eval_classifier::<Inner<B>, Bert<Inner<B>>>(self.text()?, backend, device),
            Architecture::Gpt2 => self.eval_lm::<Inner<B>>(backend, device),
        }
    }

    /// A report with the run's description and no models yet.
    fn report_header<D: Samples>(&self, t: &Task<D>, backend: &str) -> Report {
        Report {
            name: self.cfg.name.clone(),
            dataset: format!("{} ({})", self.cfg.data.dataset, t.train.source()),
            classes: t.train.class_names().to_vec(),
            train_samples: t.train.len(),
            test_samples: t.test.len(),
            forget_samples: t.split.forget.len(),
            forget: self.cfg.data.forget.clone(),
            backend: backend.into(),
            models: Vec::new(),
            language_model: None,
            residual_norms_forget: Vec::new(),
            residual_norms_retain: Vec::new(),
        }
    }

    fn eval_classifier<B: FusedOps, M: Learner<B>>(&self, t: &Task<M::Data>, backend: &str, device: &B::Device) -> Result<Report> {
        let test_idx: Vec<usize> = (0..t.test.len()).collect();
        let mut evaluated = Vec::new();
        for (name, model, rec) in self.evaluated_models::<B, M>(device)? {
            evaluated.push(Evaluated {
                name,
                forget: outputs(&model, &t.train, &t.split.forget, device)?,
                retain: outputs(&model, &t.train, &t.split.retain, device)?,
                test: outputs(&model, &t.test, &test_idx, device)?,
                phase: rec.phase,
                trainable_params: rec.trainable_params,
                ran_on: rec.ran_on,
            });
        }
        let models = model_reports(&evaluated, "retrain (M*)")?;
        // The residual-norm histogram shows RFA's adapter (else the first result with adapters).
        let rfa = evaluated.iter().skip(2).find(|e| !e.forget.residual_norms.is_empty()).unwrap_or(&evaluated[2]);
        let report = Report {
            models,
            residual_norms_forget: rfa.forget.residual_norms.clone(),
            residual_norms_retain: rfa.retain.residual_norms.clone(),
            ..self.report_header(t, backend)
        };
        report.write(&self.dir)?;
        self.plot(&report)?;
        self.write_comparison(&report)?;
        Ok(report)
    }

    /// Language-model evaluation: perplexities, loss and Min-K% attacks of Df against held-out
    /// text, greedy generations from Df and Dr prompts.
    fn eval_lm<B: FusedOps>(&self, backend: &str, device: &B::Device) -> Result<Report> {
        use rfa_eval::{auc, feature_distance, mean_nll, min_k_prob, perplexity};
        let t = self.text()?;
        let tok = &self.tokenizer.as_ref().context("text run without tokenizer")?.0;
        let ev = &self.cfg.eval;
        let test_idx: Vec<usize> = (0..t.test.len()).collect();
        // The attacks compare Df with held-out text like it: the forgotten category's test texts.
        let (held_name, held): (String, Vec<usize>) = match t.split.class {
            Some(c) => (
                format!("held-out texts of the forgotten category `{}`", t.train.class_names()[c]),
                test_idx.iter().copied().filter(|&i| t.test.labels()[i] == c).collect(),
            ),
            None => ("the held-out test set".into(), test_idx.clone()),
        };
        if held.is_empty() {
            bail!("no held-out text to compare the forget set with (the test set has none of its category)");
        }
        let retain: Vec<usize> = if ev.max_retain > 0 && ev.max_retain < t.split.retain.len() {
            let mut r = t.split.retain.clone();
            rfa_rng::SplitMix64::new(self.cfg.seed ^ 0xe7a1).shuffle(&mut r);
            r.truncate(ev.max_retain);
            r.sort();
            r
        } else {
            t.split.retain.clone()
        };
        // Prompts: the first line (an ELI5 title) of the first texts of Df and of Dr.
        let prompt_of = |i: usize| {
            let text = &t.train.text.texts[i];
            let first = text.lines().next().unwrap_or("").chars().take(200).collect::<String>();
            format!("{}\n", first.trim())
        };
        let mut generations: Vec<Generation> = Vec::new();
        for (from, set) in [("forget", &t.split.forget), ("retain", &t.split.retain)] {
            for &i in set.iter().take(ev.prompts) {
                let category = t.train.class_names()[t.train.labels()[i]].clone();
                generations.push(Generation { from: from.into(), category, prompt: prompt_of(i), continuations: Vec::new() });
            }
        }
        let eos = models::eos_id(tok);
        let mut evaluated = Vec::new();
        for (name, model, rec) in self.evaluated_models::<B, Gpt2<B>>(device)? {
            let pb = engine::bar(3, "evaluate");
            pb.set_message(name.clone());
            let f = outputs(&model, &t.train, &t.split.forget, device)?;
            pb.inc(1);
            let r = outputs(&model, &t.train, &retain, device)?;
            pb.inc(1);
            let te = outputs(&model, &t.test, &test_idx, device)?;
            pb.finish();
            for g in &mut generations {
                let ids = tok.encode(&g.prompt, false)?;
                let new = model.generate(&ids, ev.generate_tokens, None, 1.0, eos, self.cfg.seed);
                g.continuations.push((name.clone(), tok.decode(&new)?));
            }
            evaluated.push((name, f, r, te, rec));
        }
        let gold_features = evaluated.iter().find(|e| e.0 == "retrain (M*)").map(|e| e.1.features.clone());
        let mut lm_models = Vec::new();
        for (name, f, r, te, rec) in &evaluated {
            let held_lp: Vec<Vec<f32>> = held.iter().map(|&i| te.token_logprobs[i].clone()).collect();
            let scores =
                |sets: &[Vec<f32>], score: &dyn Fn(&[f32]) -> Option<f64>| -> Vec<f64> { sets.iter().filter_map(|s| score(s)).collect() };
            let neg_loss = |s: &[f32]| mean_nll(s).map(|x| -x);
            let min_k = |s: &[f32]| min_k_prob(s, ev.min_k_percent);
            let ppl = |sets: &[Vec<f32>]| perplexity(sets).unwrap_or(f64::NAN);
            let mean = |v: &[f32]| (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64);
            let fd = match &gold_features {
                Some(g) if name != "retrain (M*)" => {
                    let d = f.feature_dim;
                    Some(feature_distance(
                        &rfa_eval::Rows::new("forget features", &f.features, d)?,
                        &rfa_eval::Rows::new("forget features", g, d)?,
                    )?)
                }
                _ => None,
            };
            lm_models.push(report::LmModelReport {
                name: name.clone(),
                ppl_forget: ppl(&f.token_logprobs),
                ppl_retain: ppl(&r.token_logprobs),
                ppl_test: ppl(&te.token_logprobs),
                ppl_held_out: ppl(&held_lp),
                loss_auc: auc(&scores(&f.token_logprobs, &neg_loss), &scores(&held_lp, &neg_loss))?,
                min_k_auc: auc(&scores(&f.token_logprobs, &min_k), &scores(&held_lp, &min_k))?,
                auc_gap: None,
                feature_distance_forget: fd,
                residual_norm_forget: mean(&f.residual_norms),
                residual_norm_retain: mean(&r.residual_norms),
                phase: rec.phase,
                trainable_params: rec.trainable_params,
                ran_on: rec.ran_on.clone(),
            });
        }
        if let Some((la, ka)) = lm_models.iter().find(|m| m.name == "retrain (M*)").map(|m| (m.loss_auc, m.min_k_auc)) {
            for m in &mut lm_models {
                m.auc_gap = Some(((m.loss_auc - la).abs() + (m.min_k_auc - ka).abs()) / 2.0);
            }
        }
        let rfa = evaluated.iter().skip(2).find(|e| !e.1.residual_norms.is_empty()).unwrap_or(&evaluated[2]);
        let report = Report {
            language_model: Some(report::LmSection {
                models: lm_models,
                generations,
                held_out: held_name,
                held_out_samples: held.len(),
                retain_samples_evaluated: retain.len(),
                min_k_percent: ev.min_k_percent,
            }),
            residual_norms_forget: rfa.1.residual_norms.clone(),
            residual_norms_retain: rfa.2.residual_norms.clone(),
            ..self.report_header(t, backend)
        };
        report.write(&self.dir)?;
        self.plot(&report)?;
        self.write_comparison(&report)?;
        Ok(report)
    }

    /// `comparison.md` and `plots/gap_vs_time.png`: one row per method (mean ± std over seeds).
    fn write_comparison(&self, report: &Report) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("plots"))?;
        lora_core::tensors::write_atomic(&self.dir.join("comparison.md"), compare::markdown(report).as_bytes())?;
        compare::plot_gap_vs_time(report, &self.dir.join("plots/gap_vs_time.png"))
    }

    /// `plots/`: per-class accuracy, residual norms on Df vs Dr, training and unlearning losses.
    fn plot(&self, report: &Report) -> Result<()> {
        let dir = self.dir.join("plots");
        std::fs::create_dir_all(&dir)?;
        if report.language_model.is_none() {
            plots::per_class_accuracy(report, &dir.join("per_class_accuracy.png"))?;
        }
        plots::residual_norms(&report.residual_norms_forget, &report.residual_norms_retain, &dir.join("residual_norms.png"))?;
        let mut train = Vec::new();
        for (name, sub) in [("original (M0) on D", "original"), ("retrain (M*) on Dr", "retrain")] {
            let p = self.dir.join(sub).join("train_state.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let log: Vec<engine::EpochLog> = serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?;
                train.push((name.to_string(), log.iter().map(|e| e.epoch as f64).collect(), log.iter().map(|e| e.loss).collect()));
            }
        }
        plots::loss_curves("Training loss (cross-entropy / causal-LM)", "epoch", &train, &dir.join("loss_training.png"))?;
        let p = self.dir.join("rfa/unlearn_log.json");
        if !p.is_file() {
            return Ok(());
        }
        let log: engine::UnlearnLog =
            serde_json::from_str(&std::fs::read_to_string(&p)?).with_context(|| format!("reading {}", p.display()))?;
        let x: Vec<f64> = log.steps.iter().map(|s| s.step as f64).collect();
        let series = vec![
            ("retain: mean ||r_l||²".to_string(), x.clone(), log.steps.iter().map(|s| s.retain).collect()),
            ("forget: mean ||p_l + r_l − mu_l||²".to_string(), x.clone(), log.steps.iter().map(|s| s.forget).collect()),
            ("total".to_string(), x, log.steps.iter().map(|s| s.total).collect()),
        ];
        plots::loss_curves("RFA unlearning loss", "step", &series, &dir.join("loss_unlearning.png"))
    }
}
