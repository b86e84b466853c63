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

pub mod config;
pub mod engine;
pub mod plots;
pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use config::RunConfig;
use engine::{Task, Vit, initial_model, load_task, outputs, train_classifier, unlearn_rfa};
use report::{Evaluated, Phase, Report, measure, model_reports};

/// What a phase left beside its model, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub trainable_params: usize,
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

pub struct Run {
    pub cfg: RunConfig,
    pub task: Task,
    pub dir: PathBuf,
}

impl Run {
    pub fn open(cfg: RunConfig) -> Result<Self> {
        let task = load_task(&cfg.data, cfg.seed)?;
        let dir = cfg.run_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        lora_core::tensors::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        Ok(Self { cfg, task, dir })
    }

    /// `rfa train` (all of D → `original/`) or `rfa retrain` (Dr only → `retrain/`).
    pub fn train<B: AutodiffBackend>(&self, retrain: bool, device: &B::Device) -> Result<()> {
        let (what, sub) = if retrain { ("retrain", "retrain") } else { ("train", "original") };
        let indices: Vec<usize> = if retrain { self.task.split.retain.clone() } else { (0..self.task.train.len()).collect() };
        let out = self.dir.join(sub);
        let model = initial_model::<B>(&self.cfg.model, &self.task, self.cfg.seed, device)?;
        let params = lora_core::count_params(&model).total;
        let (_, phase) =
            measure(|| train_classifier(model, &self.task.train, &indices, &self.cfg.train, self.cfg.seed, what, &out, device))?;
        let prev = read_phase(&out).ok();
        // A resumed run adds the time of the interrupted one.
        let phase = Phase { seconds: phase.seconds + prev.map(|p| p.phase.seconds).unwrap_or(0.0), ..phase };
        write_json(&out.join("phase.json"), &PhaseRecord { phase, trainable_params: params })
    }

    /// `rfa unlearn --method rfa`: adapter and merged model under `rfa/`.
    pub fn unlearn<B: AutodiffBackend>(&self, device: &B::Device) -> Result<()> {
        if self.cfg.unlearn.method != "rfa" {
            bail!("unlearning method `{}` is not implemented yet (available: rfa)", self.cfg.unlearn.method);
        }
        let m0 = Vit::<B>::load(&self.dir.join("original"), device).context("loading the original model (run `rfa train` first)")?;
        let ((model, log), phase) = measure(|| unlearn_rfa(m0, &self.task, &self.cfg.unlearn, self.cfg.seed, device))?;
        let out = self.dir.join("rfa");
        lora_core::save_adapter(&model, &out.join("adapter"), Some("../../original"))?;
        let mut merged = model.valid();
        lora_core::merge_and_unload(&mut merged);
        merged.save_pretrained(&out.join("merged"))?;
        write_json(&out.join("unlearn_log.json"), &log)?;
        write_json(&out.join("phase.json"), &PhaseRecord { phase, trainable_params: log.trainable_params })
    }

    /// `rfa eval`: metrics of M0, M*, RFA → report.json, report.md.
    pub fn eval<B: AutodiffBackend>(&self, backend: &str, device: &B::Device) -> Result<Report> {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let t = &self.task;
        let test_idx: Vec<usize> = (0..t.test.len()).collect();
        let mut evaluated = Vec::new();
        for (name, dir, adapter) in [("original (M0)", "original", false), ("retrain (M*)", "retrain", false), ("RFA", "original", true)] {
            let path = self.dir.join(dir);
            let mut model = Vit::<I<B>>::load(&path, device).with_context(|| format!("loading {}", path.display()))?;
            let rec = if adapter {
                lora_core::load_adapter(&mut model, &self.dir.join("rfa/adapter"))?;
                read_phase(&self.dir.join("rfa"))?
            } else {
                read_phase(&path)?
            };
            evaluated.push(Evaluated {
                name: name.into(),
                forget: outputs(&model, &t.train, &t.split.forget, device)?,
                retain: outputs(&model, &t.train, &t.split.retain, device)?,
                test: outputs(&model, &t.test, &test_idx, device)?,
                phase: rec.phase,
                trainable_params: rec.trainable_params,
            });
        }
        let models = model_reports(&evaluated, "retrain (M*)")?;
        let rfa = evaluated.last().expect("three models");
        let report = Report {
            name: self.cfg.name.clone(),
            dataset: format!("{} ({})", self.cfg.data.dataset, t.train.source),
            classes: t.train.class_names.clone(),
            train_samples: t.train.len(),
            test_samples: t.test.len(),
            forget_samples: t.split.forget.len(),
            forget: self.cfg.data.forget.clone(),
            backend: backend.into(),
            models,
            residual_norms_forget: rfa.forget.residual_norms.clone(),
            residual_norms_retain: rfa.retain.residual_norms.clone(),
        };
        report.write(&self.dir)?;
        self.plot(&report)?;
        Ok(report)
    }

    /// `plots/`: per-class accuracy, residual norms on Df vs Dr, training and unlearning losses.
    fn plot(&self, report: &Report) -> Result<()> {
        let dir = self.dir.join("plots");
        std::fs::create_dir_all(&dir)?;
        plots::per_class_accuracy(report, &dir.join("per_class_accuracy.png"))?;
        plots::residual_norms(&report.residual_norms_forget, &report.residual_norms_retain, &dir.join("residual_norms.png"))?;
        let mut train = Vec::new();
        for (name, sub) in [("original (M0) on D", "original"), ("retrain (M*) on Dr", "retrain")] {
            let p = self.dir.join(sub).join("train_state.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let log: Vec<engine::EpochLog> = serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?;
                train.push((name.to_string(), log.iter().map(|e| e.epoch as f64).collect(), log.iter().map(|e| e.loss).collect()));
            }
        }
        plots::loss_curves("Training loss (cross-entropy)", "epoch", &train, &dir.join("loss_training.png"))?;
        let p = self.dir.join("rfa/unlearn_log.json");
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
