//! Side-by-side summaries of several unlearning methods in one run: results of one method with
//! several seeds (`NAME (seed N)`) are folded into mean ± standard deviation.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::report::Report;

/// Mean and sample standard deviation (0 for one value).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Self> {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, std })
    }

    fn cell(s: Option<Self>, digits: usize) -> String {
        match s {
            Some(s) if s.std > 0.0 => format!("{:.digits$} ± {:.digits$}", s.mean, s.std),
            Some(s) => format!("{:.digits$}", s.mean),
            None => "—".into(),
        }
    }
}

/// One method's row: its metrics over seeds, by column name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodRow {
    pub method: String,
    pub seeds: usize,
    pub metrics: Vec<(String, Option<Stat>)>,
}

/// The method a report row belongs to (`salun (seed 2)` → `salun`).
pub fn method_of(name: &str) -> &str {
    match name.rfind(" (seed ") {
        Some(i) if name.ends_with(')') => &name[..i],
        _ => name,
    }
}

/// The columns and digits of the comparison: the gap to the retrained model is `average gap`
/// for classifiers, `AUC gap` for language models.
pub fn columns(report: &Report) -> Vec<(&'static str, usize)> {
    if report.language_model.is_some() {
        vec![
            ("perplexity Df", 2),
            ("perplexity Dr", 2),
            ("perplexity Dt", 2),
            ("loss-attack AUC", 2),
            ("Min-K% AUC", 2),
            ("AUC gap", 2),
            ("time (s)", 1),
            ("peak RSS (MiB)", 0),
            ("trainable params", 0),
        ]
    } else {
        vec![
            ("UA", 2),
            ("RA", 2),
            ("TA", 2),
            ("MIA-Efficacy", 2),
            ("activation distance", 4),
            ("average gap", 2),
            ("time (s)", 1),
            ("peak RSS (MiB)", 0),
            ("trainable params", 0),
        ]
    }
}

fn values(report: &Report) -> Vec<(String, Vec<Option<f64>>)> {
    match &report.language_model {
        Some(lm) => lm
            .models
            .iter()
            .map(|m| {
                let v = vec![
                    Some(m.ppl_forget),
                    Some(m.ppl_retain),
                    Some(m.ppl_test),
                    Some(m.loss_auc),
                    Some(m.min_k_auc),
                    m.auc_gap,
                    Some(m.record.phase.seconds),
                    m.record.phase.peak_rss_mib,
                    Some(m.record.trainable_params as f64),
                ];
                (m.name.clone(), v)
            })
            .collect(),
        None => report
            .models
            .iter()
            .map(|m| {
                let s = &m.summary;
                let v = vec![
                    Some(s.ua),
                    Some(s.ra),
                    Some(s.ta),
                    Some(s.mia_efficacy),
                    m.activation_distance,
                    m.average_gap,
                    Some(m.record.phase.seconds),
                    m.record.phase.peak_rss_mib,
                    Some(m.record.trainable_params as f64),
                ];
                (m.name.clone(), v)
            })
            .collect(),
    }
}

/// One row per method, in the report's order.
pub fn summarize(report: &Report) -> Vec<MethodRow> {
    let cols = columns(report);
    let mut rows: Vec<(String, Vec<Vec<Option<f64>>>)> = Vec::new();
    for (name, v) in values(report) {
        let m = method_of(&name).to_string();
        match rows.iter_mut().find(|r| r.0 == m) {
            Some(r) => r.1.push(v),
            None => rows.push((m, vec![v])),
        }
    }
    rows.into_iter()
        .map(|(method, runs)| MethodRow {
            seeds: runs.len(),
            metrics: cols
                .iter()
                .enumerate()
                .map(|(j, (c, _))| {
                    let v: Vec<f64> = runs.iter().filter_map(|r| r[j]).collect();
                    (c.to_string(), Stat::of(&v))
                })
                .collect(),
            method,
        })
        .collect()
}

/// A Markdown table of `summarize`.
pub fn markdown(report: &Report) -> String {
    let cols = columns(report);
    let mut s = String::from("| method | seeds |");
    for (c, _) in &cols {
        s += &format!(" {c} |");
    }
    s += "\n|---|---:|";
    s += &"---:|".repeat(cols.len());
    s += "\n";
    for r in summarize(report) {
        s += &format!("| {} | {} |", r.method, r.seeds);
        for ((_, st), (_, digits)) in r.metrics.iter().zip(&cols) {
            s += &format!(" {} |", Stat::cell(*st, *digits));
        }
        s += "\n";
    }
    s
}

/// Gap to the retrained model against wall time, one point per method (means over seeds);
/// M0 and M* (gap 0 at the cost of retraining) are the reference points.
pub fn plot_gap_vs_time(report: &Report, path: &Path) -> Result<()> {
    let rows = summarize(report);
    let gap_col = if report.language_model.is_some() { "AUC gap" } else { "average gap" };
    let get = |r: &MethodRow, c: &str| {
        r.metrics.iter().find(|m| m.0 == c).and_then(|m| m.1).map(|s| s.mean)
    };
    let points: Vec<(String, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.method.clone(), get(r, "time (s)")?, get(r, gap_col)?)))
        .collect();
    crate::plots::scatter_log_x(
        &format!("{gap_col} to the retrained model vs time"),
        "time (s, log scale)",
        gap_col,
        &points,
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_fold_into_mean_and_sample_std() {
        assert_eq!(method_of("salun (seed 2)"), "salun");
        assert_eq!(method_of("retrain (M*)"), "retrain (M*)");
        let s = Stat::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.std - 1.0).abs() < 1e-12);
        assert_eq!(Stat::of(&[4.0]).unwrap().std, 0.0);
        assert!(Stat::of(&[]).is_none());
        assert_eq!(Stat::cell(Some(Stat { mean: 1.234, std: 0.5 }), 1), "1.2 ± 0.5");
    }
}
