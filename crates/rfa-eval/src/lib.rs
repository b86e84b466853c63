//! Unlearning metrics on host data (rows of logits or probabilities), with the variants named
//! as in docs/rfa-method.md:
//!
//! - accuracy on `Df`, `Dr`, `Dt` → UA = 100 − Acc(Df), RA, TA (SalUn);
//! - MIA-Efficacy: SalUn's `SVC_MIA` (confidence on the true label; members = the first |Dt|
//!   samples of `Dr`, non-members = `Dt`; RBF SVC, C = 3, gamma = 1/n_features; % of `Df`
//!   predicted non-member);
//! - activation distance (Bad-Teacher: mean L2 between softmax outputs) and JS divergence
//!   against the retrained model;
//! - feature distance (mean L2 between penultimate features);
//! - average gap to the retrained model over UA, RA, TA, MIA-Efficacy.
//!
//! Depends on no tensor library (no burn) and on no other rfa crate: metrics take host rows.

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("{what}: {rows} rows of {cols} values do not fit {len} values")]
    Shape { what: &'static str, rows: usize, cols: usize, len: usize },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("membership attack: {0}")]
    Mia(String),
    #[error("{what}: non-finite value at row {row}")]
    NonFinite { what: &'static str, row: usize },
}

/// Row-major `rows × cols` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub cols: usize,
}

impl<'a> Rows<'a> {
    pub fn new(what: &'static str, data: &'a [f32], cols: usize) -> Result<Self, EvalError> {
        if cols == 0 || data.len() % cols != 0 {
            return Err(EvalError::Shape {
                what,
                rows: data.len() / cols.max(1),
                cols,
                len: data.len(),
            });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite { what, row: i / cols });
        }
        Ok(Self { data, cols })
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.cols
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Softmax of every row (in f64, max-subtracted).
pub fn softmax(logits: &Rows) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.data.len());
    for i in 0..logits.rows() {
        let r = logits.row(i);
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / s) as f32));
    }
    out
}

/// Arg-max of every row.
pub fn predictions(logits: &Rows) -> Vec<usize> {
    (0..logits.rows())
        .map(|i| {
            logits
                .row(i)
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(j, _)| j)
                .unwrap_or(0)
        })
        .collect()
}

/// Accuracy in percent.
pub fn accuracy(logits: &Rows, labels: &[usize]) -> Result<f64, EvalError> {
    if labels.is_empty() {
        return Err(EvalError::Empty("label set"));
    }
    let p = predictions(logits);
    Ok(100.0 * p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64)
}

/// Accuracy per class in percent (`None` for classes without samples).
pub fn per_class_accuracy(logits: &Rows, labels: &[usize], classes: usize) -> Vec<Option<f64>> {
    let p = predictions(logits);
    (0..classes)
        .map(|c| {
            let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            (!idx.is_empty()).then(|| {
                100.0 * idx.iter().filter(|&&i| p[i] == c).count() as f64 / idx.len() as f64
            })
        })
        .collect()
}

/// Softmax probability of the true label of every row: the attack's feature.
pub fn true_label_confidence(logits: &Rows, labels: &[usize]) -> Vec<f64> {
    let probs = softmax(logits);
    labels.iter().enumerate().map(|(i, &y)| probs[i * logits.cols + y] as f64).collect()
}

/// An RBF SVC as scikit-learn's `SVC(C, gamma, kernel="rbf")` trains it (libsvm's SMO, here
/// linfa-svm's port of it): fitted on member (1) / non-member (0) features.
pub struct MembershipSvc {
    model: Svm<f64, bool>,
    n_features: usize,
}

impl MembershipSvc {
    /// `gamma = None` is scikit-learn's `"auto"`: 1 / n_features.
    pub fn fit(
        members: &[Vec<f64>],
        non_members: &[Vec<f64>],
        c: f64,
        gamma: Option<f64>,
    ) -> Result<Self, EvalError> {
        if members.is_empty() || non_members.is_empty() {
            return Err(EvalError::Mia(
                "both members and non-members are needed to train the attack".into(),
            ));
        }
        let n_features = members[0].len();
        let rows: Vec<f64> = members.iter().chain(non_members).flatten().copied().collect();
        let n = members.len() + non_members.len();
        if rows.len() != n * n_features || n_features == 0 {
            return Err(EvalError::Mia("feature vectors differ in length".into()));
        }
        let x = Array2::from_shape_vec((n, n_features), rows)
            .map_err(|e| EvalError::Mia(e.to_string()))?;
        let y: Array1<bool> = (0..n).map(|i| i < members.len()).collect();
        let gamma = gamma.unwrap_or(1.0 / n_features as f64);
        // linfa's Gaussian kernel is exp(-||x - y||² / eps): eps = 1 / gamma. libsvm's default
        // stopping tolerance (scikit-learn's tol) is 1e-3.
        let model = Svm::<f64, bool>::params()
            .pos_neg_weights(c, c)
            .gaussian_kernel(1.0 / gamma)
            .eps(1e-3)
            .fit(&Dataset::new(x, y))
            .map_err(|e| EvalError::Mia(e.to_string()))?;
        Ok(Self { model, n_features })
    }

    /// `true` = predicted member.
    pub fn predict(&self, features: &[Vec<f64>]) -> Result<Vec<bool>, EvalError> {
        if features.iter().any(|f| f.len() != self.n_features) {
            return Err(EvalError::Mia("feature vectors differ in length".into()));
        }
        let rows: Vec<f64> = features.iter().flatten().copied().collect();
        let x = Array2::from_shape_vec((features.len(), self.n_features), rows)
            .map_err(|e| EvalError::Mia(e.to_string()))?;
        Ok(self.model.predict(&x).to_vec())
    }

    /// The decision value `Σ α_i y_i K(x_i, x) − ρ` (scikit-learn's `decision_function`).
    pub fn decision(&self, feature: &[f64]) -> f64 {
        self.model.weighted_sum(&Array1::from_vec(feature.to_vec())) - self.model.rho
    }
}

/// SalUn's MIA-Efficacy in percent: an SVC on the true-label confidence, trained with the first
/// |Dt| retain samples as members and `Dt` as non-members; the share of `Df` it calls
/// non-member. High means the forget set looks unseen.
pub fn mia_efficacy(
    retain_conf: &[f64],
    test_conf: &[f64],
    forget_conf: &[f64],
) -> Result<f64, EvalError> {
    if forget_conf.is_empty() {
        return Err(EvalError::Empty("forget set"));
    }
    let n = test_conf.len().min(retain_conf.len());
    let members: Vec<Vec<f64>> = retain_conf[..n].iter().map(|&c| vec![c]).collect();
    let non: Vec<Vec<f64>> = test_conf.iter().map(|&c| vec![c]).collect();
    let svc = MembershipSvc::fit(&members, &non, 3.0, None)?;
    let pred = svc.predict(&forget_conf.iter().map(|&c| vec![c]).collect::<Vec<_>>())?;
    Ok(100.0 * pred.iter().filter(|m| !**m).count() as f64 / pred.len() as f64)
}

/// Bad-Teacher's activation distance: mean over rows of ||softmax(a) − softmax(b)||₂.
pub fn activation_distance(a: &Rows, b: &Rows) -> Result<f64, EvalError> {
    same_shape(a, b)?;
    let (pa, pb) = (softmax(a), softmax(b));
    let n = a.rows();
    Ok((0..n)
        .map(|i| {
            let r = i * a.cols..(i + 1) * a.cols;
            pa[r.clone()]
                .iter()
                .zip(&pb[r])
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n as f64)
}

/// Mean over rows of the Jensen–Shannon divergence (natural log) between the two softmax
/// distributions.
pub fn js_divergence(a: &Rows, b: &Rows) -> Result<f64, EvalError> {
    same_shape(a, b)?;
    let (pa, pb) = (softmax(a), softmax(b));
    let kl = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let n = a.rows();
    Ok((0..n)
        .map(|i| {
            (i * a.cols..(i + 1) * a.cols)
                .map(|j| {
                    let (p, q) = (pa[j] as f64, pb[j] as f64);
                    let m = 0.5 * (p + q);
                    0.5 * kl(p, m) + 0.5 * kl(q, m)
                })
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64)
}

/// Mean over rows of the L2 distance between feature vectors.
pub fn feature_distance(a: &Rows, b: &Rows) -> Result<f64, EvalError> {
    same_shape(a, b)?;
    let n = a.rows();
    Ok((0..n)
        .map(|i| {
            a.row(i).iter().zip(b.row(i)).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt()
        })
        .sum::<f64>()
        / n as f64)
}

fn same_shape(a: &Rows, b: &Rows) -> Result<(), EvalError> {
    if a.cols != b.cols || a.rows() != b.rows() {
        return Err(EvalError::Shape {
            what: "compared outputs",
            rows: b.rows(),
            cols: b.cols,
            len: a.data.len(),
        });
    }
    if a.rows() == 0 {
        return Err(EvalError::Empty("compared outputs"));
    }
    Ok(())
}

/// The four numbers SalUn summarises, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// 100 − accuracy on Df.
    pub ua: f64,
    /// Accuracy on Dr.
    pub ra: f64,
    /// Accuracy on Dt.
    pub ta: f64,
    pub mia_efficacy: f64,
}

impl Summary {
    /// Mean absolute difference to the retrained model over UA, RA, TA, MIA-Efficacy.
    pub fn average_gap(&self, retrained: &Summary) -> f64 {
        ((self.ua - retrained.ua).abs()
            + (self.ra - retrained.ra).abs()
            + (self.ta - retrained.ta).abs()
            + (self.mia_efficacy - retrained.mia_efficacy).abs())
            / 4.0
    }
}

/// Area under the ROC curve, in percent, of a score that should be higher for `members` than
/// for `non_members` (the Mann–Whitney statistic; ties count one half). 50 = the attack cannot
/// tell them apart.
pub fn auc(members: &[f64], non_members: &[f64]) -> Result<f64, EvalError> {
    if members.is_empty() || non_members.is_empty() {
        return Err(EvalError::Empty("the member or non-member set of the AUC"));
    }
    if let Some(row) = members.iter().chain(non_members).position(|x| x.is_nan()) {
        return Err(EvalError::NonFinite { what: "AUC scores", row });
    }
    let mut all: Vec<(f64, bool)> =
        members.iter().map(|&x| (x, true)).chain(non_members.iter().map(|&x| (x, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the members' ranks, ties given their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (m, n) = (members.len() as f64, non_members.len() as f64);
    Ok(100.0 * (rank_sum - m * (m + 1.0) / 2.0) / (m * n))
}

/// Mean negative log-likelihood per token of one text (the loss attack's score, negated).
pub fn mean_nll(token_logprobs: &[f32]) -> Option<f64> {
    (!token_logprobs.is_empty()).then(|| {
        -token_logprobs.iter().map(|&x| x as f64).sum::<f64>() / token_logprobs.len() as f64
    })
}

/// Min-K% Prob (Shi et al., 2024): the mean log-probability of the `k_percent` % least likely
/// tokens of a text (at least one). Higher = more likely seen in training.
pub fn min_k_prob(token_logprobs: &[f32], k_percent: f64) -> Option<f64> {
    if token_logprobs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = token_logprobs.iter().map(|&x| x as f64).collect();
    v.sort_by(f64::total_cmp);
    let k = ((v.len() as f64) * k_percent / 100.0).ceil().max(1.0) as usize;
    Some(v[..k.min(v.len())].iter().sum::<f64>() / k.min(v.len()) as f64)
}

/// Perplexity over a set of texts: exp of the mean negative log-likelihood over all their tokens.
pub fn perplexity(texts: &[Vec<f32>]) -> Option<f64> {
    let n: usize = texts.iter().map(Vec::len).sum();
    (n > 0).then(|| (-texts.iter().flatten().map(|&x| x as f64).sum::<f64>() / n as f64).exp())
}
