//! `rfa eval`: the models a run compares, the classifier metrics, the report, its plots and the
//! comparison table.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rfa_models::{Architecture, FusedAutodiff, FusedOps};

use crate::engine::{self, outputs};
use crate::engine_model::{EngineModel, Samples};
use crate::model_init::{Bert, Vit};
use crate::phase_record::{PhaseRecord, verify_phase};
use crate::report::{Evaluated, Report, model_reports};
use crate::role::Role;
use crate::run_lock::RunLock;
use crate::staged_dir::StagedDir;
use crate::task::Task;
use crate::{Inner, Method, Run, compare, plots};

/// The report's folder in a run: `report.md`, `report.json`, `comparison.md`, `plots/`.
pub const REPORT_DIR: &str = "report";

impl Run {
    /// The models the report compares: M0, M*, and every unlearning result in the run (M0 with
    /// its adapter, or its merged / fully trained model), each with the record of the phase
    /// that made it.
    pub(crate) fn evaluated_models<B: FusedOps, M: EngineModel<B>>(
        &self,
        device: &B::Device,
    ) -> Result<Vec<(Role, M, PhaseRecord)>> {
        let mut v = Vec::new();
        for role in [Role::Original, Role::Retrained] {
            let path = role.dir(&self.dir);
            let record = verify_phase(&path)?;
            let model = <M as EngineModel<B>>::load(&path, device)
                .with_context(|| format!("loading {}", path.display()))?;
            v.push((role, model, record));
        }
        let unlearned = self.unlearned();
        if unlearned.is_empty() {
            bail!("no unlearning result in {} (run `rfa unlearn` first)", self.dir.display());
        }
        let original_sha256 =
            v[0].2.sha256_of(&Role::Original.dir(&self.dir), "model.safetensors")?;
        for role in unlearned {
            let dir = role.dir(&self.dir);
            let record = verify_phase(&dir)?;
            // A request that continued a chain started from the previous request's model, not
            // from M0: its merged model is the result (checked by its phase record).
            let chained = crate::receipt::Receipt::read(&dir.join(crate::receipt::RECEIPT))
                .is_ok_and(|r| r.previous.is_some());
            if chained {
                let model = <M as EngineModel<B>>::load(&dir.join("merged"), device)
                    .with_context(|| format!("loading {}", dir.display()))?;
                v.push((role, model, record));
                continue;
            }
            if let Some(base) = record.base_model_sha256.as_ref().filter(|b| **b != original_sha256)
            {
                bail!(
                    "{} was made from another original model (sha256 {base}) than this run's \
                     original/ (sha256 {original_sha256}): run that unlearning again",
                    dir.display()
                );
            }
            let model = if dir.join("adapter").is_dir() {
                let mut m = <M as EngineModel<B>>::load(&Role::Original.dir(&self.dir), device)?;
                lora_core::load_adapter(&mut m, &dir.join("adapter"))?;
                m
            } else {
                <M as EngineModel<B>>::load(&dir.join("merged"), device)
                    .with_context(|| format!("loading {}", dir.display()))?
            };
            v.push((role, model, record));
        }
        Ok(v)
    }

    /// `rfa eval`: metrics of M0, M*, RFA → report.json, report.md, plots.
    pub fn eval<B: FusedAutodiff>(&self, backend: &str, device: &B::Device) -> Result<Report> {
        // eval writes the report and plots: a writer.
        let _lock = RunLock::exclusive(&self.dir, "rfa eval")?;
        match self.arch {
            Architecture::Vit => {
                self.eval_classifier::<Inner<B>, Vit<Inner<B>>>(self.images()?, backend, device)
            }
            Architecture::Bert => {
                self.eval_classifier::<Inner<B>, Bert<Inner<B>>>(self.text()?, backend, device)
            }
            Architecture::Gpt2 => self.eval_lm::<Inner<B>>(backend, device),
        }
    }

    /// A report with the run's description and no models yet.
    pub(crate) fn report_header<D: Samples>(&self, t: &Task<D>, backend: &str) -> Report {
        Report {
            name: self.cfg.name.clone(),
            dataset: format!("{} ({})", self.cfg.data.dataset, t.train.source()),
            classes: t.train.class_names().to_vec(),
            train_samples: t.train.len(),
            test_samples: t.reported_test.len(),
            forget_samples: t.split.forget.len(),
            forget: self.cfg.data.forget.clone(),
            backend: backend.into(),
            models: Vec::new(),
            language_model: None,
            residual_norms_forget: Vec::new(),
            residual_norms_retain: Vec::new(),
            rfa_runs: self.rfa_runs(),
            backbone: self.backbone(),
        }
    }

    /// `model.path` and the SHA-256 of its weights (hashed once per run), with rfa's pretrain
    /// record when it made the checkpoint.
    fn backbone(&self) -> Option<crate::report::Backbone> {
        let path = self.cfg.model.path.as_ref()?;
        let sha256 = self.start_checkpoint_sha256().ok().flatten()?.to_string();
        Some(crate::report::Backbone {
            path: path.display().to_string(),
            sha256,
            pretrain: crate::pretrain::PretrainRecord::read(path),
        })
    }

    /// The settings and stop of every RFA result in the run, from their logs (results without a
    /// log of settings, made before they were recorded, are left out).
    fn rfa_runs(&self) -> Vec<crate::report::RfaRun> {
        self.unlearned()
            .into_iter()
            .filter(|r| matches!(r, Role::Unlearned { method: Method::Rfa, .. }))
            .filter_map(|role| {
                let p = role.dir(&self.dir).join("unlearn_log.json");
                let log: engine::UnlearnLog =
                    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
                crate::report::RfaRun::from_log(role.name(), log)
            })
            .collect()
    }

    fn eval_classifier<B: FusedOps, M: EngineModel<B>>(
        &self,
        t: &Task<M::Data>,
        backend: &str,
        device: &B::Device,
    ) -> Result<Report> {
        self.check_trained(t, false)?;
        self.check_trained(t, true)?;
        let test_idx = &t.reported_test;
        let mut evaluated = Vec::new();
        for (role, model, record) in self.evaluated_models::<B, M>(device)? {
            evaluated.push(Evaluated {
                role,
                forget: outputs(&model, &t.train, &t.split.forget, device)?,
                retain: outputs(&model, &t.train, &t.split.retain, device)?,
                test: outputs(&model, &t.test, test_idx, device)?,
                record,
            });
        }
        let models = model_reports(&evaluated)?;
        // The residual-norm histogram shows RFA's adapter (else the first result with adapters).
        let unlearned: Vec<&Evaluated> =
            evaluated.iter().filter(|e| matches!(e.role, Role::Unlearned { .. })).collect();
        let rfa =
            unlearned.iter().find(|e| !e.forget.residual_norms.is_empty()).unwrap_or(&unlearned[0]);
        let report = Report {
            models,
            residual_norms_forget: rfa.forget.residual_norms.clone(),
            residual_norms_retain: rfa.retain.residual_norms.clone(),
            ..self.report_header(t, backend)
        };
        self.publish(report)
    }

    /// Writes a finished report — `report.json`, `report.md`, `comparison.md` and `plots/` —
    /// into `report/`, switched in whole: a reader never finds a new `report.json` beside an old
    /// `report.md`, and a failure keeps the previous report.
    pub(crate) fn publish(&self, report: Report) -> Result<Report> {
        let staged = StagedDir::new(&self.dir.join(REPORT_DIR))?;
        let out = staged.path();
        report.write(out)?;
        self.plot(&report, out)?;
        self.write_comparison(&report, out)?;
        staged.commit()?;
        // Reports of earlier versions, written beside the models: superseded, and no longer
        // updated, so they go rather than contradict the new one.
        for old in ["report.json", "report.md", "comparison.md"] {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        let _ = std::fs::remove_dir_all(self.dir.join("plots"));
        Ok(report)
    }

    /// `comparison.md` and `plots/gap_vs_time.png` in `dir`: one row per method (mean ± std
    /// over seeds).
    fn write_comparison(&self, report: &Report, dir: &Path) -> Result<()> {
        let plots = dir.join("plots");
        std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
        lora_core::tensors::write_atomic(
            &dir.join("comparison.md"),
            compare::markdown(report).as_bytes(),
        )?;
        compare::plot_gap_vs_time(report, &plots.join("gap_vs_time.png"))
    }

    /// `plots/` in `report_dir`: per-class accuracy, residual norms on Df vs Dr, training and
    /// unlearning losses.
    fn plot(&self, report: &Report, report_dir: &Path) -> Result<()> {
        let dir = report_dir.join("plots");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if report.language_model.is_none() {
            plots::per_class_accuracy(report, &dir.join("per_class_accuracy.png"))?;
        }
        plots::residual_norms(
            &report.residual_norms_forget,
            &report.residual_norms_retain,
            &dir.join("residual_norms.png"),
        )?;
        let mut train = Vec::new();
        for (role, on) in [(Role::Original, "D"), (Role::Retrained, "Dr")] {
            let name = format!("{} on {on}", role.name());
            let p = role.dir(&self.dir).join("train_state.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let log: Vec<crate::train::EpochLog> = serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", p.display()))?;
                train.push((
                    name,
                    log.iter().map(|e| e.epoch as f64).collect(),
                    log.iter().map(|e| e.loss).collect(),
                ));
            }
        }
        plots::loss_curves(
            "Training loss (cross-entropy / causal-LM)",
            "epoch",
            &train,
            &dir.join("loss_training.png"),
        )?;
        let p = self.dir.join("rfa/unlearn_log.json");
        if !p.is_file() {
            return Ok(());
        }
        let log: engine::UnlearnLog = serde_json::from_str(&std::fs::read_to_string(&p)?)
            .with_context(|| format!("reading {}", p.display()))?;
        let x: Vec<f64> = log.steps.iter().map(|s| s.step as f64).collect();
        let series = vec![
            (
                "retain: mean ||r_l||²".to_string(),
                x.clone(),
                log.steps.iter().map(|s| s.retain).collect(),
            ),
            (
                "forget: mean ||p_l + r_l − mu_l||²".to_string(),
                x.clone(),
                log.steps.iter().map(|s| s.forget).collect(),
            ),
            ("total".to_string(), x, log.steps.iter().map(|s| s.total).collect()),
        ];
        plots::loss_curves("RFA unlearning loss", "step", &series, &dir.join("loss_unlearning.png"))
    }
}
