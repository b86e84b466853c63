//! Evidence: metrics of the original, retrained and unlearned models, written as JSON (for
//! programs) and Markdown (for people).

use std::path::Path;

use anyhow::{Context, Result};
use rfa_eval::{
    Rows, Summary, accuracy, activation_distance, feature_distance, js_divergence, mia_efficacy,
    per_class_accuracy, true_label_confidence,
};
use serde::{Deserialize, Serialize};

use crate::engine::Outputs;
use crate::measure::Phase;
use crate::phase_record::PhaseRecord;
use crate::role::Role;

/// Outputs of one model on the three sets.
pub struct Evaluated {
    pub role: Role,
    pub forget: Outputs,
    pub retain: Outputs,
    pub test: Outputs,
    /// The phase that produced the model.
    pub record: PhaseRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub acc_forget: f64,
    /// Against the retrained model, on Df (absent for the retrained model itself).
    pub activation_distance: Option<f64>,
    pub js_divergence: Option<f64>,
    pub feature_distance_forget: Option<f64>,
    pub feature_distance_retain: Option<f64>,
    pub average_gap: Option<f64>,
    /// Mean residual norm ||r_l|| on Df and on Dr (models with adapters).
    pub residual_norm_forget: Option<f64>,
    pub residual_norm_retain: Option<f64>,
    pub per_class_test_accuracy: Vec<Option<f64>>,
    /// The phase that produced the model: time, memory, trainable parameters, backend.
    #[serde(flatten)]
    pub record: PhaseRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub dataset: String,
    pub classes: Vec<String>,
    pub train_samples: usize,
    pub test_samples: usize,
    pub forget_samples: usize,
    pub forget: String,
    pub backend: String,
    /// Classifiers' metrics (empty for a language model).
    pub models: Vec<ModelReport>,
    /// A language model's metrics and generations.
    #[serde(default)]
    pub language_model: Option<LmSection>,
    /// Residual norms per forget / retain sample (RFA model), for the histogram.
    #[serde(default)]
    pub residual_norms_forget: Vec<f32>,
    #[serde(default)]
    pub residual_norms_retain: Vec<f32>,
    /// How each RFA result was made: its resolved settings and why it stopped.
    #[serde(default)]
    pub rfa_runs: Vec<RfaRun>,
    /// The checkpoint M0 and M* were fine-tuned from (`model.path`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<Backbone>,
}

impl Backbone {
    fn markdown(&self) -> String {
        let made = match &self.pretrain {
            Some(p) => {
                let quality = match (p.held_out_accuracy, p.held_out_perplexity) {
                    (Some(a), _) => format!("held-out accuracy {a:.2} %"),
                    (_, Some(x)) => format!("held-out perplexity {x:.2}"),
                    _ => "no held-out measure".into(),
                };
                format!(
                    ", pre-trained by rfa ({} on {}, {} samples, {} epochs; {quality} on {} held-out samples)",
                    p.objective,
                    p.source,
                    p.samples,
                    p.epochs.len(),
                    p.held_out_samples
                )
            }
            None => String::new(),
        };
        format!(
            "Backbone: `{}` (model.safetensors SHA-256 `{}`){made}.\n\n",
            self.path, self.sha256
        )
    }
}

/// The backbone of a run: two runs on the same one are comparable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backbone {
    pub path: String,
    /// SHA-256 of its `model.safetensors`.
    pub sha256: String,
    /// `rfa pretrain`'s record, when rfa pre-trained it.
    pub pretrain: Option<crate::pretrain::PretrainRecord>,
}

/// One RFA result's settings and stop, from its `unlearn_log.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RfaRun {
    pub model: String,
    pub settings: crate::scenario::RfaSettings,
    /// The probe stop rule's outcome (absent with `stop = "epochs"`).
    pub stop: Option<RfaStop>,
    pub steps: usize,
    /// `unlearn.forget_selection = "unseen-error"`: what the forget term trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<crate::forget_selection::Selected>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RfaStop {
    pub reason: crate::probe::StopReason,
    pub stopped_after_step: usize,
    pub kept_step: usize,
    pub checks: usize,
    pub check_seconds: f64,
}

impl RfaRun {
    /// An RFA result's settings, selection and stop, from its unlearning log; None for a log
    /// without settings (made before they were recorded).
    pub fn from_log(model: String, log: crate::engine::UnlearnLog) -> Option<Self> {
        Some(Self {
            model,
            settings: log.settings?,
            steps: log.steps.len(),
            selected: log
                .selected
                .map(|s| crate::forget_selection::Selected { rows: Vec::new(), ..s }),
            stop: log.stop.map(|st| RfaStop {
                reason: st.reason,
                stopped_after_step: st.stopped_after_step,
                kept_step: st.kept_step,
                checks: st.checks.len(),
                check_seconds: st.check_seconds,
            }),
        })
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let stop = match &self.stop {
            Some(st) => format!(
                "stop rule `probe`: stopped after step {} of {} ({}), kept the adapter of step {}; {} checks on the validation probes took {:.1} s",
                st.stopped_after_step,
                self.steps,
                st.reason,
                st.kept_step,
                st.checks,
                st.check_seconds
            ),
            None => format!("stop rule `epochs`: {} steps", self.steps),
        };
        let selection = match &self.selected {
            Some(x) => format!(
                "forget selection `{}`: the forget term trained on {} of {} samples of Df (unseen data's error rate: M0 was {:.1} % right on the validation probe, {:.1} % on Df)",
                s.forget_selection, x.samples, x.of, x.unseen_accuracy, x.forget_accuracy
            ),
            None => format!("forget selection `{}`", s.forget_selection),
        };
        format!(
            "{}: target `{}`, retain sampling `{}`, task weight γ = {}, balance `{}`, {selection}; {stop}.\n",
            self.model, s.target, s.retain_sampling, s.retain_task_weight, s.balance,
        )
    }
}

fn rows<'a>(what: &'static str, v: &'a [f32], cols: usize) -> Result<Rows<'a>> {
    Ok(Rows::new(what, v, cols)?)
}

/// One model's classifier metrics; distances against `gold` (M*) unless it is M* itself.
fn model_report(m: &Evaluated, gold: Option<&Evaluated>, mia: Result<f64>) -> Result<ModelReport> {
    let c = m.test.classes;
    let (lf, lr, lt) = (
        rows("forget logits", &m.forget.logits, c)?,
        rows("retain logits", &m.retain.logits, c)?,
        rows("test logits", &m.test.logits, c)?,
    );
    let acc_forget = accuracy(&lf, &m.forget.labels)?;
    let summary = Summary {
        ua: 100.0 - acc_forget,
        ra: accuracy(&lr, &m.retain.labels)?,
        ta: accuracy(&lt, &m.test.labels)?,
        mia_efficacy: mia?,
    };
    let (mut ad, mut js, mut fdf, mut fdr) = (None, None, None, None);
    if let Some(g) = gold.filter(|g| g.role != m.role) {
        let gf = rows("forget logits", &g.forget.logits, c)?;
        ad = Some(activation_distance(&lf, &gf)?);
        js = Some(js_divergence(&lf, &gf)?);
        let d = m.forget.feature_dim;
        fdf = Some(feature_distance(
            &rows("forget features", &m.forget.features, d)?,
            &rows("forget features", &g.forget.features, d)?,
        )?);
        fdr = Some(feature_distance(
            &rows("retain features", &m.retain.features, d)?,
            &rows("retain features", &g.retain.features, d)?,
        )?);
    }
    let mean = |v: &[f32]| {
        (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64)
    };
    Ok(ModelReport {
        name: m.role.name(),
        summary,
        acc_forget,
        activation_distance: ad,
        js_divergence: js,
        feature_distance_forget: fdf,
        feature_distance_retain: fdr,
        average_gap: None,
        residual_norm_forget: mean(&m.forget.residual_norms),
        residual_norm_retain: mean(&m.retain.residual_norms),
        per_class_test_accuracy: per_class_accuracy(&lt, &m.test.labels, c),
        record: m.record.clone(),
    })
}

/// The classifier metrics of each model; gaps and distances against the retrained model M*.
pub fn model_reports(models: &[Evaluated]) -> Result<Vec<ModelReport>> {
    let gold = models.iter().find(|m| m.role == Role::Retrained);
    // The membership attack's SVC fit is the slow part of evaluation (linfa's SMO: ~1.5 min for
    // CIFAR-10's 10,000 + 10,000 samples on one core); the models' fits are independent and run
    // side by side.
    let mias: Vec<Result<f64>> = std::thread::scope(|s| {
        let jobs: Vec<_> = models
            .iter()
            .map(|m| {
                s.spawn(move || -> Result<f64> {
                    let c = m.test.classes;
                    let conf = |what, split: &Outputs| -> Result<Vec<f64>> {
                        Ok(true_label_confidence(&rows(what, &split.logits, c)?, &split.labels))
                    };
                    let (r, t, f) = (
                        conf("retain logits", &m.retain)?,
                        conf("test logits", &m.test)?,
                        conf("forget logits", &m.forget)?,
                    );
                    Ok(mia_efficacy(&r, &t, &f)?)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().expect("membership attack thread")).collect()
    });
    // Every error names the model it came from ("forget logits: non-finite value at row 0" alone
    // does not say whose).
    let mut out = Vec::new();
    for (m, mia) in models.iter().zip(mias) {
        out.push(
            model_report(m, gold, mia).with_context(|| format!("evaluating {}", m.role.name()))?,
        );
    }
    if let Some(g) = models.iter().position(|m| m.role == Role::Retrained).map(|i| out[i].summary) {
        out.iter_mut().for_each(|r| r.average_gap = Some(r.summary.average_gap(&g)));
    }
    Ok(out)
}

/// A language model's evidence: perplexities, membership attacks, generations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmSection {
    pub models: Vec<LmModelReport>,
    pub generations: Vec<Generation>,
    /// What the attacks compare Df with: held-out text of the forgotten category, or all of Dt.
    pub held_out: String,
    pub held_out_samples: usize,
    pub retain_samples_evaluated: usize,
    pub min_k_percent: f64,
    /// A backbone rfa pre-trained on other text: its held-out corpus, on which every model's
    /// perplexity shows what fine-tuning and unlearning kept of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_corpus: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmModelReport {
    pub name: String,
    pub ppl_forget: f64,
    pub ppl_retain: f64,
    pub ppl_test: f64,
    /// Perplexity on the held-out texts the attacks use.
    pub ppl_held_out: f64,
    /// Loss attack (score = −mean NLL): AUC of Df against held-out text, %.
    pub loss_auc: f64,
    /// Min-K% Prob attack: AUC of Df against held-out text, %.
    pub min_k_auc: f64,
    /// Mean |difference| to the retrained model over the two AUCs.
    pub auc_gap: Option<f64>,
    pub feature_distance_forget: Option<f64>,
    pub residual_norm_forget: Option<f64>,
    pub residual_norm_retain: Option<f64>,
    /// Perplexity on the backbone's held-out pre-training text ([`LmSection::backbone_corpus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppl_backbone_corpus: Option<f64>,
    /// The phase that produced the model: time, memory, trainable parameters, backend.
    #[serde(flatten)]
    pub record: PhaseRecord,
}

/// Greedy continuations of one prompt by each model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// `forget` (a prompt from Df) or `retain`.
    pub from: String,
    pub category: String,
    pub prompt: String,
    /// (model, continuation)
    pub continuations: Vec<(String, String)>,
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "—".into())
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = self.header();
        for r in &self.rfa_runs {
            s += &r.markdown();
        }
        if !self.rfa_runs.is_empty() {
            s += "\n";
        }
        match &self.language_model {
            Some(lm) => s += &lm.markdown(),
            None => s += &self.classifier_markdown(),
        }
        s
    }

    fn header(&self) -> String {
        format!(
            "# Unlearning report: {}\n\n{} — {} training samples ({} forgotten: `{}`), {} test samples, {} classes; backend {}.\n\n",
            self.name,
            self.dataset,
            self.train_samples,
            self.forget_samples,
            self.forget,
            self.test_samples,
            self.classes.len(),
            self.backend
        ) + &self.backbone.as_ref().map_or(String::new(), Backbone::markdown)
    }

    fn classifier_markdown(&self) -> String {
        let mut s = String::new();
        s += "| model | UA | RA | TA | MIA-Efficacy | activation distance | JS | average gap | time (s) | peak RSS (MiB) | trainable params |\n";
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for m in &self.models {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.1} | {} | {} |\n",
                m.name,
                m.summary.ua,
                m.summary.ra,
                m.summary.ta,
                m.summary.mia_efficacy,
                f(m.activation_distance, 4),
                f(m.js_divergence, 4),
                f(m.average_gap, 2),
                m.record.phase.seconds,
                f(m.record.phase.peak_rss_mib, 0),
                m.record.trainable_params
            );
        }
        s += "\nUA = 100 − accuracy on the forget set Df, RA / TA = accuracy on the retain set Dr / test set Dt (%). \
MIA-Efficacy: % of Df that SalUn's SVC membership attack calls non-member. Activation distance and JS divergence: \
between the model's and the retrained model's output distributions on Df. Average gap: mean |difference| to the \
retrained model over UA, RA, TA, MIA-Efficacy. Time: the phase that produced the model (training, retraining, unlearning).\n\n";
        s += &ran_on(self.models.iter().map(|m| (&m.name, &m.record.ran_on)));
        s += &step_times(self.models.iter().map(|m| (&m.name, &m.record.phase)));
        s += &device_memory(self.models.iter().map(|m| (&m.name, &m.record.phase)));
        s += "## Features\n\n| model | feature distance to retrain on Df | on Dr | residual norm on Df | on Dr |\n|---|---:|---:|---:|---:|\n";
        for m in &self.models {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                m.name,
                f(m.feature_distance_forget, 4),
                f(m.feature_distance_retain, 4),
                f(m.residual_norm_forget, 4),
                f(m.residual_norm_retain, 4)
            );
        }
        s += "\n## Test accuracy per class (%)\n\n| class |";
        for m in &self.models {
            s += &format!(" {} |", m.name);
        }
        s += "\n|---|";
        s += &"---:|".repeat(self.models.len());
        s += "\n";
        for (c, name) in self.classes.iter().enumerate() {
            s += &format!("| {c} {name} |");
            for m in &self.models {
                s += &format!(" {} |", f(m.per_class_test_accuracy.get(c).copied().flatten(), 1));
            }
            s += "\n";
        }
        s
    }

    /// Writes `report.json` and `report.md` into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        lora_core::tensors::write_atomic(
            &dir.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        lora_core::tensors::write_atomic(&dir.join("report.md"), self.markdown().as_bytes())?;
        Ok(())
    }
}

/// A paragraph naming where each model's phase ran, for the models whose record says so.
fn ran_on<'a>(models: impl Iterator<Item = (&'a String, &'a Option<String>)>) -> String {
    let known: Vec<String> =
        models.filter_map(|(name, on)| on.as_ref().map(|on| format!("{name}: {on}"))).collect();
    if known.is_empty() {
        String::new()
    } else {
        format!("Phases ran on — {}.\n\n", known.join("; "))
    }
}

/// A paragraph with each model's device-memory peak, for the models whose phase sampled one (GPU
/// backends with a readable allocator); nothing otherwise.
fn device_memory<'a>(models: impl Iterator<Item = (&'a String, &'a Phase)>) -> String {
    let known: Vec<String> = models
        .filter_map(|(name, p)| {
            Some(format!("{name} {:.0} / {}", p.peak_device_mib?, f(p.peak_device_reserved_mib, 0)))
        })
        .collect();
    if known.is_empty() {
        String::new()
    } else {
        format!(
            "Peak device memory (the allocator's MiB in use / reserved, sampled every {} ms during the phase; \
nvidia-smi adds the CUDA context) — {}.\n\n",
            crate::measure::DEVICE_SAMPLE_INTERVAL.as_millis(),
            known.join("; ")
        )
    }
}

/// A paragraph with each unlearning's first-step and median step time, for the models whose
/// phase recorded them; nothing otherwise.
fn step_times<'a>(models: impl Iterator<Item = (&'a String, &'a Phase)>) -> String {
    let known: Vec<String> = models
        .filter_map(|(name, p)| {
            let first = p.first_step_seconds?;
            Some(match p.median_step_seconds {
                Some(m) => format!("{name} {first:.3} s, then {m:.3} s"),
                None => format!("{name} {first:.3} s (one step)"),
            })
        })
        .collect();
    if known.is_empty() {
        String::new()
    } else {
        format!(
            "Unlearning steps (the first step, which on a GPU includes compiling its kernels unless the kernel cache holds \
them, then the median of the others) — {}.\n\n",
            known.join("; ")
        )
    }
}

/// Markdown cell text: one line, no table separators.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ⏎ ").trim().to_string()
}

impl LmSection {
    fn markdown(&self) -> String {
        let mut s = String::from(
            "| model | perplexity Df | Dr | Dt | held-out | loss-attack AUC | Min-K% AUC | AUC gap | feature distance Df | time (s) | peak RSS (MiB) | trainable params |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.models {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {} | {} |\n",
                m.name,
                m.ppl_forget,
                m.ppl_retain,
                m.ppl_test,
                m.ppl_held_out,
                m.loss_auc,
                m.min_k_auc,
                f(m.auc_gap, 2),
                f(m.feature_distance_forget, 4),
                m.record.phase.seconds,
                f(m.record.phase.peak_rss_mib, 0),
                m.record.trainable_params
            );
        }
        if let Some(corpus) = &self.backbone_corpus {
            s += &format!(
                "\nPerplexity on the backbone's held-out pre-training text ({corpus}), before fine-tuning (the backbone) and after: {}.\n",
                self.models
                    .iter()
                    .map(|m| format!("{} {}", m.name, f(m.ppl_backbone_corpus, 2)))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        s += &format!(
            "\nPerplexity: exp of the mean token negative log-likelihood. Membership attacks tell the forget set Df from \
{} ({} texts) by the text's loss, or by Min-K% Prob (mean log-probability of its {}% least likely tokens); AUC 50 = \
they cannot be told apart, which is what the retrained model shows for data it never saw. AUC gap: mean |difference| to \
the retrained model over the two AUCs. Dr perplexity over {} retained texts.\n\n",
            self.held_out, self.held_out_samples, self.min_k_percent, self.retain_samples_evaluated
        );
        s += &ran_on(self.models.iter().map(|m| (&m.name, &m.record.ran_on)));
        s += &step_times(self.models.iter().map(|m| (&m.name, &m.record.phase)));
        s += &device_memory(self.models.iter().map(|m| (&m.name, &m.record.phase)));
        if !self.generations.is_empty() {
            s += "## Generations (greedy)\n\n| from | prompt | model | continuation |\n|---|---|---|---|\n";
            for g in &self.generations {
                for (model, text) in &g.continuations {
                    s += &format!(
                        "| {} ({}) | {} | {} | {} |\n",
                        g.from,
                        cell(&g.category),
                        cell(&g.prompt),
                        model,
                        cell(text)
                    );
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a probe the phase records the largest in-use and reserved readings in MiB; without
    /// one (CPU backends) no device fields, and the JSON has no device keys, so CPU reports and
    /// older `phase.json` files read and write as before.
    /// The first step apart, the median of the rest (odd and even counts), one step, none.
    #[test]
    fn unlearning_logs_give_the_first_step_and_the_median_of_the_others() {
        use crate::engine::{StepLog, StepTimes, UnlearnLog};
        let log = |secs: &[f64]| UnlearnLog {
            steps: secs
                .iter()
                .enumerate()
                .map(|(i, &s)| StepLog {
                    step: i,
                    total: 0.0,
                    retain: 0.0,
                    forget: 0.0,
                    seconds: s,
                })
                .collect(),
            adapted: vec![],
            trainable_params: 0,
            total_params: 0,
            stats_seconds: 0.0,
            stats_samples: 0,
            settings: None,
            selected: None,
            stop: None,
        };
        let times =
            |first_seconds, median_seconds| Some(StepTimes { first_seconds, median_seconds });
        assert_eq!(log(&[7.0, 0.3, 0.1, 0.2]).step_times(), times(7.0, Some(0.2)));
        assert_eq!(log(&[7.0, 0.4, 0.1, 0.2, 0.3]).step_times(), times(7.0, Some(0.3)));
        assert_eq!(log(&[2.0]).step_times(), times(2.0, None));
        assert_eq!(log(&[]).step_times(), None);
        // Logs written before steps were timed read as 0 s.
        let old: StepLog =
            serde_json::from_str(r#"{"step": 0, "total": 1.0, "retain": 0.5, "forget": 0.5}"#)
                .unwrap();
        assert_eq!(old.seconds, 0.0);

        let (a, b, c) = ("RFA".to_string(), "finetune".to_string(), "original (M0)".to_string());
        let steps = |first, median| Phase {
            first_step_seconds: first,
            median_step_seconds: median,
            ..Phase::default()
        };
        let (pa, pb, pc) =
            (steps(Some(7.0), Some(0.188)), steps(Some(1.5), None), steps(None, None));
        let text = step_times([(&a, &pa), (&b, &pb), (&c, &pc)].into_iter());
        assert!(text.contains("RFA 7.000 s, then 0.188 s; finetune 1.500 s (one step)."), "{text}");
        assert!(!text.contains("M0"), "{text}");
        assert_eq!(step_times([(&c, &pc)].into_iter()), "");
    }

    #[test]
    fn the_device_memory_paragraph_names_the_models_that_have_a_peak() {
        let (a, b, c) =
            ("original (M0)".to_string(), "rfa".to_string(), "retrain (M*)".to_string());
        let peak = |in_use, reserved| Phase {
            peak_device_mib: in_use,
            peak_device_reserved_mib: reserved,
            ..Phase::default()
        };
        let (pa, pb, pc) =
            (peak(Some(812.4), Some(1024.0)), peak(Some(1300.0), None), peak(None, None));
        let text = device_memory([(&a, &pa), (&b, &pb), (&c, &pc)].into_iter());
        assert!(text.starts_with("Peak device memory"), "{text}");
        assert!(text.contains("original (M0) 812 / 1024; rfa 1300 / —."), "{text}");
        assert!(!text.contains("retrain"), "{text}");
        assert_eq!(device_memory([(&c, &pc)].into_iter()), "");
    }
}
