//! Evidence: metrics of the original, retrained and unlearned models, written as JSON (for
//! programs) and Markdown (for people).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use rfa_eval::{
    Rows, Summary, accuracy, activation_distance, feature_distance, js_divergence, mia_efficacy, per_class_accuracy, true_label_confidence,
};
use serde::{Deserialize, Serialize};

use crate::engine::Outputs;

/// Wall time and peak resident memory of one phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Phase {
    pub seconds: f64,
    /// Peak resident set size during the phase (Linux VmHWM after resetting it), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Runs `f`, measuring wall time and the process's peak RSS over it.
pub fn measure<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Phase)> {
    // Writing 5 to clear_refs resets the peak-RSS counter (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let v = f()?;
    Ok((v, Phase { seconds: t.elapsed().as_secs_f64(), peak_rss_mib: peak_rss_mib() }))
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Outputs of one model on the three sets.
pub struct Evaluated {
    pub name: String,
    pub forget: Outputs,
    pub retain: Outputs,
    pub test: Outputs,
    pub phase: Phase,
    pub trainable_params: usize,
    /// Backend and precision of the phase that produced the model, where recorded.
    pub ran_on: Option<String>,
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
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub trainable_params: usize,
    /// Backend and precision of the phase that produced the model (its time depends on them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
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
}

fn rows<'a>(what: &'static str, v: &'a [f32], cols: usize) -> Result<Rows<'a>> {
    Ok(Rows::new(what, v, cols)?)
}

/// Metrics of every evaluated model; `retrained` names the gold standard they are compared to.
pub fn model_reports(models: &[Evaluated], retrained: &str) -> Result<Vec<ModelReport>> {
    let gold = models.iter().find(|m| m.name == retrained);
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
                    let (r, t, f) = (conf("retain logits", &m.retain)?, conf("test logits", &m.test)?, conf("forget logits", &m.forget)?);
                    Ok(mia_efficacy(&r, &t, &f)?)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().expect("membership attack thread")).collect()
    });
    let mut out = Vec::new();
    for (m, mia) in models.iter().zip(mias) {
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
        if let Some(g) = gold.filter(|g| g.name != m.name) {
            let gf = rows("forget logits", &g.forget.logits, c)?;
            ad = Some(activation_distance(&lf, &gf)?);
            js = Some(js_divergence(&lf, &gf)?);
            let d = m.forget.feature_dim;
            fdf =
                Some(feature_distance(&rows("forget features", &m.forget.features, d)?, &rows("forget features", &g.forget.features, d)?)?);
            fdr =
                Some(feature_distance(&rows("retain features", &m.retain.features, d)?, &rows("retain features", &g.retain.features, d)?)?);
        }
        let mean = |v: &[f32]| (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64);
        out.push(ModelReport {
            name: m.name.clone(),
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
            seconds: m.phase.seconds,
            peak_rss_mib: m.phase.peak_rss_mib,
            trainable_params: m.trainable_params,
            ran_on: m.ran_on.clone(),
        });
    }
    if let Some(g) = out.iter().find(|r| r.name == retrained).map(|r| r.summary) {
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
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub trainable_params: usize,
    /// Backend and precision of the phase that produced the model (its time depends on them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
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
        )
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
                m.seconds,
                f(m.peak_rss_mib, 0),
                m.trainable_params
            );
        }
        s += "\nUA = 100 − accuracy on the forget set Df, RA / TA = accuracy on the retain set Dr / test set Dt (%). \
MIA-Efficacy: % of Df that SalUn's SVC membership attack calls non-member. Activation distance and JS divergence: \
between the model's and the retrained model's output distributions on Df. Average gap: mean |difference| to the \
retrained model over UA, RA, TA, MIA-Efficacy. Time: the phase that produced the model (training, retraining, unlearning).\n\n";
        s += &ran_on(self.models.iter().map(|m| (&m.name, &m.ran_on)));
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
        lora_core::tensors::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        lora_core::tensors::write_atomic(&dir.join("report.md"), self.markdown().as_bytes())?;
        Ok(())
    }
}

/// A paragraph naming where each model's phase ran, for the models whose record says so.
fn ran_on<'a>(models: impl Iterator<Item = (&'a String, &'a Option<String>)>) -> String {
    let known: Vec<String> = models.filter_map(|(name, on)| on.as_ref().map(|on| format!("{name}: {on}"))).collect();
    if known.is_empty() { String::new() } else { format!("Phases ran on — {}.\n\n", known.join("; ")) }
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
                m.seconds,
                f(m.peak_rss_mib, 0),
                m.trainable_params
            );
        }
        s += &format!(
            "\nPerplexity: exp of the mean token negative log-likelihood. Membership attacks tell the forget set Df from \
{} ({} texts) by the text's loss, or by Min-K% Prob (mean log-probability of its {}% least likely tokens); AUC 50 = \
they cannot be told apart, which is what the retrained model shows for data it never saw. AUC gap: mean |difference| to \
the retrained model over the two AUCs. Dr perplexity over {} retained texts.\n\n",
            self.held_out, self.held_out_samples, self.min_k_percent, self.retain_samples_evaluated
        );
        s += &ran_on(self.models.iter().map(|m| (&m.name, &m.ran_on)));
        if !self.generations.is_empty() {
            s += "## Generations (greedy)\n\n| from | prompt | model | continuation |\n|---|---|---|---|\n";
            for g in &self.generations {
                for (model, text) in &g.continuations {
                    s += &format!("| {} ({}) | {} | {} | {} |\n", g.from, cell(&g.category), cell(&g.prompt), model, cell(text));
                }
            }
        }
        s
    }
}
