//! The Residual Feature Alignment objectives (docs/rfa-method.md), computed from the taps
//! `(p_l, r_l)` of one adapted forward pass:
//!
//! ```text
//! L = (1/|L|) Σ_l w_l · mean ||r_l(x_r)||²                       retain: zero residual
//!   + λ · (1/|L|) Σ_l w_l · mean ||p_l(x_u) + r_l(x_u) − mu_l||²   forget: shifted residual
//!   [+ γ · task loss on Dr]
//! ```
//!
//! Means run over the batch and the (unpadded) tokens; `||·||²` sums over the features.
//! The targets `mu_l` come from [`FeatureStats`], accumulated over `Dr` with the original model.
//!
//! Depends on burn, lora-core (taps) and rfa-fused (the objective's one-node kernel); never on
//! the models (rfa-models) or data.

pub mod baseline_losses;
mod feature_stats;
mod mean_precision;
mod targets;
mod token_means;

pub use feature_stats::FeatureStats;
pub use targets::{TargetStrategy, Targets, boundary_targets, target_classes};
pub use token_means::{TokenStats, TokenTargets};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use lora_core::Tap;
use rfa_fused::{FusedOps, TapSplit, tap_terms};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LossError {
    #[error("{what}: expected {expected} adapted layers, the forward pass gave {found} taps")]
    LayerCount { what: &'static str, expected: usize, found: usize },
    #[error("no feature statistics: the retain set was empty")]
    NoStatistics,
    #[error("class-mean target for class {class}: no other class has retain samples")]
    NoOtherClass { class: usize },
    #[error("a step needs retain and forget rows: {retain} retain rows of {rows}")]
    EmptySplit { retain: usize, rows: usize },
    #[error("class {class} is out of range for {classes} classes")]
    ClassOutOfRange { class: usize, classes: usize },
    #[error(
        "a target from the sample's own class (own-class-mean, boundary-mean) for a sample of \
         class {class}: Dr has no sample of that class (class-wise forgetting removes it; use \
         runner-up-class-mean)"
    )]
    NoOwnClass { class: usize },
    #[error(
        "own-token-mean targets come from token statistics (TokenStats) and need each forget \
         token's id"
    )]
    NeedsTokenIds,
    #[error("token statistics: {ids} ids and {mask} mask values for {tokens} tokens")]
    TokenShape { ids: usize, mask: usize, tokens: usize },
    #[error("own-token-mean targets: {ids} ids for a forget batch of {tokens} tokens")]
    TokenBatchShape { ids: usize, tokens: usize },
    #[error("{what}: {found} values for {samples} forget samples × {classes} classes")]
    LogitShape { what: &'static str, found: usize, samples: usize, classes: usize },
}

/// Options of the objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfaObjective {
    /// λ, the forget term's weight.
    pub lambda: f64,
    /// `w_l` per adapted layer; empty means all 1.
    #[serde(default)]
    pub layer_weights: Vec<f64>,
    pub target: TargetStrategy,
    /// γ, the weight of an optional task loss on `Dr` (0 = off).
    #[serde(default)]
    pub retain_task_weight: f64,
}

impl Default for RfaObjective {
    fn default() -> Self {
        Self {
            lambda: 1.0,
            layer_weights: Vec::new(),
            target: TargetStrategy::GlobalMean,
            retain_task_weight: 0.0,
        }
    }
}

impl RfaObjective {
    fn weight(&self, l: usize) -> f64 {
        self.layer_weights.get(l).copied().unwrap_or(1.0)
    }

    fn check(&self, what: &'static str, taps: usize, layers: usize) -> Result<(), LossError> {
        if taps != layers || (!self.layer_weights.is_empty() && self.layer_weights.len() != layers)
        {
            let expected =
                if self.layer_weights.is_empty() { layers } else { self.layer_weights.len() };
            return Err(LossError::LayerCount { what, expected, found: taps });
        }
        Ok(())
    }

    /// Retain term: `(1/|L|) Σ_l w_l · mean ||r_l||²` over the retain batch's taps.
    /// `mask [batch, seq]` (1 = real token) excludes padding from the mean.
    pub fn retain_loss<B: Backend>(
        &self,
        taps: &[Tap<B>],
        mask: Option<&Tensor<B, 2>>,
    ) -> Result<Tensor<B, 1>, LossError> {
        self.check("retain taps", taps.len(), taps.len())?;
        let n = taps.len() as f64;
        let terms = taps.iter().enumerate().map(|(l, t)| {
            masked_mean_sq_norm(t.residual.clone(), mask).mul_scalar(self.weight(l) / n)
        });
        Ok(sum(terms, &taps[0].residual.device()))
    }

    /// Forget term (without λ): `(1/|L|) Σ_l w_l · mean ||p_l + r_l − mu_l||²`, with one target
    /// per sample and layer (`targets.for_batch`).
    pub fn forget_loss<B: Backend>(
        &self,
        taps: &[Tap<B>],
        targets: &[Tensor<B, 3>],
        mask: Option<&Tensor<B, 2>>,
    ) -> Result<Tensor<B, 1>, LossError> {
        self.check("forget taps", taps.len(), targets.len())?;
        let n = taps.len() as f64;
        let terms = taps.iter().zip(targets).enumerate().map(|(l, (t, mu))| {
            let diff = t.pre.clone() + t.residual.clone() - mu.clone();
            masked_mean_sq_norm(diff, mask).mul_scalar(self.weight(l) / n)
        });
        Ok(sum(terms, &taps[0].pre.device()))
    }

    /// The retain and the forget term (their sum with λ: [`RfaLoss::total`]).
    pub fn total<B: Backend>(
        &self,
        retain_taps: &[Tap<B>],
        retain_mask: Option<&Tensor<B, 2>>,
        forget_taps: &[Tap<B>],
        forget_targets: &[Tensor<B, 3>],
        forget_mask: Option<&Tensor<B, 2>>,
    ) -> Result<RfaLoss<B>, LossError> {
        let retain = self.retain_loss(retain_taps, retain_mask)?;
        let forget = self.forget_loss(forget_taps, forget_targets, forget_mask)?;
        Ok(RfaLoss { retain, forget })
    }

    /// The two terms from the taps of one pass over a retain batch (rows
    /// `0..split.retain_rows`) and a forget batch concatenated; `mask [rows, tokens]` is their
    /// padding (1 = real token), `targets` one per layer for the forget rows as
    /// [`RfaObjective::forget_loss`] takes them. Where the backend asks for it
    /// ([`FusedOps::tap_terms_as_one_node`]: libtorch, CUDA, wgpu) each layer's two terms are one
    /// autodiff node ([`tap_terms`]); elsewhere the taps are split into their two batches and
    /// [`RfaObjective::total`] runs — the same value up to rounding.
    pub fn total_rows<B: FusedOps>(
        &self,
        taps: &[Tap<B>],
        split: TapSplit,
        mask: Option<&Tensor<B, 2>>,
        targets: &[Tensor<B, 3>],
    ) -> Result<RfaLoss<B>, LossError> {
        self.total_rows_as(taps, split, mask, targets, B::tap_terms_as_one_node())
    }

    /// [`RfaObjective::total_rows`] with the way chosen by the caller (`one_node`), for tests and
    /// benchmarks.
    pub fn total_rows_as<B: FusedOps>(
        &self,
        taps: &[Tap<B>],
        split: TapSplit,
        mask: Option<&Tensor<B, 2>>,
        targets: &[Tensor<B, 3>],
        one_node: bool,
    ) -> Result<RfaLoss<B>, LossError> {
        self.check("taps", taps.len(), targets.len())?;
        if !one_node {
            let s = SplitTaps::new(taps, split, mask)?;
            return self.total(
                &s.retain,
                s.retain_mask.as_ref(),
                &s.forget,
                targets,
                s.forget_mask.as_ref(),
            );
        }
        let [retain_mask, forget_mask] = split_masks(taps, split, mask)?;
        // A mask divided by its count: the weighted sum is the masked mean.
        let weights = |m: Option<Tensor<B, 2>>| m.map(|m| m.clone() / m.sum().reshape([1, 1]));
        let w = [weights(retain_mask), weights(forget_mask)];
        let n = taps.len() as f64;
        let terms = taps.iter().zip(targets).enumerate().map(|(l, (t, mu))| {
            tap_terms(t.pre.clone(), t.residual.clone(), mu.clone(), w.clone(), split)
                .mul_scalar(self.weight(l) / n)
        });
        let both = sum(terms, &taps[0].pre.device());
        let (retain, forget) = (both.clone().narrow(0, 0, 1), both.narrow(0, 1, 1));
        Ok(RfaLoss { retain, forget })
    }
}

/// A step's taps split into the retain batch's and the forget batch's (the forget term's view:
/// every token or the first), with the masks each term reads.
pub struct SplitTaps<B: Backend> {
    pub retain: Vec<Tap<B>>,
    pub forget: Vec<Tap<B>>,
    pub retain_mask: Option<Tensor<B, 2>>,
    pub forget_mask: Option<Tensor<B, 2>>,
}

impl<B: Backend> SplitTaps<B> {
    pub fn new(
        taps: &[Tap<B>],
        split: TapSplit,
        mask: Option<&Tensor<B, 2>>,
    ) -> Result<Self, LossError> {
        let [retain_mask, forget_mask] = split_masks(taps, split, mask)?;
        let (retain, forget) = Tap::split_rows(taps, split.retain_rows);
        let forget = if split.forget_first_token_only {
            forget.into_iter().map(|t| t.map(|x| x.narrow(1, 0, 1))).collect()
        } else {
            forget
        };
        Ok(Self { retain, forget, retain_mask, forget_mask })
    }
}

/// The padding masks the retain and the forget term read (none for a first-token-only forget
/// term), after checking that the split leaves both batches rows.
fn split_masks<B: Backend>(
    taps: &[Tap<B>],
    split: TapSplit,
    mask: Option<&Tensor<B, 2>>,
) -> Result<[Option<Tensor<B, 2>>; 2], LossError> {
    let (nr, rows) = (split.retain_rows, taps.first().map_or(0, |t| t.pre.dims()[0]));
    if nr == 0 || nr >= rows {
        return Err(LossError::EmptySplit { retain: nr, rows });
    }
    let retain = mask.map(|m| m.clone().narrow(0, 0, nr));
    let forget =
        mask.filter(|_| !split.forget_first_token_only).map(|m| m.clone().narrow(0, nr, rows - nr));
    Ok([retain, forget])
}

/// The loss's two terms; [`RfaLoss::total`] weighs them with the λ of the step (which the
/// caller may steer: `unlearn.balance`).
#[derive(Debug, Clone)]
pub struct RfaLoss<B: Backend> {
    pub retain: Tensor<B, 1>,
    pub forget: Tensor<B, 1>,
}

impl<B: Backend> RfaLoss<B> {
    /// `retain + lambda · forget`.
    pub fn total(&self, lambda: f64) -> Tensor<B, 1> {
        self.retain.clone() + self.forget.clone().mul_scalar(lambda)
    }
}

fn sum<B: Backend>(terms: impl Iterator<Item = Tensor<B, 1>>, device: &B::Device) -> Tensor<B, 1> {
    terms.reduce(|a, b| a + b).unwrap_or_else(|| Tensor::zeros([1], device))
}

/// Mean over batch and tokens of the squared L2 norm over features; padded tokens excluded.
fn masked_mean_sq_norm<B: Backend>(x: Tensor<B, 3>, mask: Option<&Tensor<B, 2>>) -> Tensor<B, 1> {
    let [b, t, _] = x.dims();
    let sq = x.powf_scalar(2.0).sum_dim(2).reshape([b, t]);
    match mask {
        Some(m) => (sq * m.clone()).sum().div(m.clone().sum()),
        None => sq.mean(),
    }
}
