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
mod mean_precision;
mod token_means;

pub use token_means::{TokenStats, TokenTargets};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
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
    #[error("{what}: {found} values for {samples} forget samples × {classes} classes")]
    LogitShape { what: &'static str, found: usize, samples: usize, classes: usize },
}

/// How the forget target `mu_l` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStrategy {
    /// Mean of `p_l` over all of `Dr` (default).
    #[default]
    GlobalMean,
    /// Mean of `p_l` over the retain samples of the class nearest to the sample's own class
    /// (distance between class means, summed over layers).
    ClassMeanNearest,
    /// Mean of `p_l` over the retain samples of a random other class (seeded).
    ClassMeanRandom,
    /// Class-wise forgetting: for each forgotten sample, the mean of `p_l` over the retain
    /// samples of the class M0 ranks highest after the sample's own (and after every class with
    /// no retain sample) — what a retrained model tends to predict for it.
    RunnerUpClassMean,
    /// Random / id-list forgetting: the mean of `p_l` over the retain samples of the sample's own
    /// class, which keeps what the class shares and removes what is specific to the sample.
    OwnClassMean,
    /// `mu_l = 0`.
    Zero,
    /// Mean of `p_l` over `Dr` at each token position (sequence models).
    PerPositionMean,
    /// Language models: each forgotten token's target is the mean of `p_l` over Dr's tokens with
    /// the same input id ([`TokenStats`]; the global mean for an id Dr lacks).
    OwnTokenMean,
    /// Random / id-list forgetting: the midpoint of the sample's own class mean and the mean of
    /// the class M0 ranks next over Dr ([`boundary_targets`]): near the boundary between the
    /// two, so that Df ends uncertain rather than wrong, as unseen data is.
    BoundaryMean,
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

impl TargetStrategy {
    pub const ALL: [TargetStrategy; 9] = [
        Self::GlobalMean,
        Self::ClassMeanNearest,
        Self::ClassMeanRandom,
        Self::RunnerUpClassMean,
        Self::OwnClassMean,
        Self::Zero,
        Self::PerPositionMean,
        Self::OwnTokenMean,
        Self::BoundaryMean,
    ];

    /// Whether each forget sample is sent to a class's mean (and so needs class labels).
    pub fn by_class(self) -> bool {
        matches!(
            self,
            Self::ClassMeanNearest
                | Self::ClassMeanRandom
                | Self::RunnerUpClassMean
                | Self::OwnClassMean
                | Self::BoundaryMean
        )
    }

    /// The name as configurations spell it (`global-mean`, `runner-up-class-mean`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::GlobalMean => "global-mean",
            Self::ClassMeanNearest => "class-mean-nearest",
            Self::ClassMeanRandom => "class-mean-random",
            Self::RunnerUpClassMean => "runner-up-class-mean",
            Self::OwnClassMean => "own-class-mean",
            Self::Zero => "zero",
            Self::PerPositionMean => "per-position-mean",
            Self::OwnTokenMean => "own-token-mean",
            Self::BoundaryMean => "boundary-mean",
        }
    }
}

impl std::fmt::Display for TargetStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

    /// `retain + λ · forget`.
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
        let total = retain.clone() + forget.clone().mul_scalar(self.lambda);
        Ok(RfaLoss { total, retain, forget })
    }

    /// `retain + λ · forget` from the taps of one pass over a retain batch (rows
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
        let total = retain.clone() + forget.clone().mul_scalar(self.lambda);
        Ok(RfaLoss { total, retain, forget })
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

/// The loss and its two parts (for logging).
#[derive(Debug, Clone)]
pub struct RfaLoss<B: Backend> {
    pub total: Tensor<B, 1>,
    pub retain: Tensor<B, 1>,
    pub forget: Tensor<B, 1>,
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

/// Per-layer sums of the pre-trained features `p_l` over the retain set, overall, per class
/// and per position, from which the targets are taken.
#[derive(Debug, Clone)]
pub struct FeatureStats<B: Backend> {
    /// Per layer: Σ over samples and tokens of `p_l`, `[d_l]`.
    sum: Vec<Tensor<B, 1>>,
    /// Per layer: Σ over tokens of the per-sample mean, by class, `[classes, d_l]`.
    class_sum: Vec<Tensor<B, 2>>,
    /// Per layer: Σ over samples at each position, `[positions, d_l]`.
    pos_sum: Vec<Tensor<B, 2>>,
    /// Per layer: Σ over samples of ‖per-sample mean‖², by class, `[classes]` (the spread of
    /// the class means' estimate: [`FeatureStats::class_mean_relative_error`]).
    class_sq: Vec<Tensor<B, 1>>,
    tokens: f64,
    class_count: Vec<f64>,
    pos_count: Vec<f64>,
    classes: usize,
}

impl<B: Backend> FeatureStats<B> {
    pub fn new(classes: usize) -> Self {
        Self {
            sum: Vec::new(),
            class_sum: Vec::new(),
            pos_sum: Vec::new(),
            class_sq: Vec::new(),
            tokens: 0.0,
            class_count: vec![0.0; classes],
            pos_count: Vec::new(),
            classes,
        }
    }

    /// Adds one retain batch: its taps (from the original model, so `p_l` is `M0`'s feature),
    /// labels (`None` for unlabelled text) and padding mask.
    pub fn add(
        &mut self,
        taps: &[Tap<B>],
        labels: Option<&[usize]>,
        mask: Option<&Tensor<B, 2>>,
    ) -> Result<(), LossError> {
        let pre: Vec<Tensor<B, 3>> = taps.iter().map(|t| t.pre.clone()).collect();
        self.add_features(&pre, labels, mask)
    }

    /// Adds one batch of features `[batch, tokens, d_l]` per layer (any features: the taps'
    /// `p_l`, or the classifier's input as one token).
    pub fn add_features(
        &mut self,
        features: &[Tensor<B, 3>],
        labels: Option<&[usize]>,
        mask: Option<&Tensor<B, 2>>,
    ) -> Result<(), LossError> {
        if !self.sum.is_empty() && self.sum.len() != features.len() {
            return Err(LossError::LayerCount {
                what: "feature statistics",
                expected: self.sum.len(),
                found: features.len(),
            });
        }
        let Some(first) = features.first() else { return Ok(()) };
        let [b, t, _] = first.dims();
        let device = first.device();
        let m = mask.cloned().unwrap_or_else(|| Tensor::ones([b, t], &device));
        let m3 = m.clone().reshape([b, t, 1]);
        let mvec: Vec<f32> = m.clone().into_data().convert::<f32>().into_vec().expect("mask");
        self.tokens += mvec.iter().map(|&v| v as f64).sum::<f64>();
        if self.pos_count.len() < t {
            self.pos_count.resize(t, 0.0);
        }
        for (pos, c) in self.pos_count.iter_mut().enumerate().take(t) {
            *c += (0..b).map(|i| mvec[i * t + pos] as f64).sum::<f64>();
        }
        let onehot = labels.map(|ls| -> Result<Tensor<B, 2>, LossError> {
            let mut v = vec![0f32; self.classes * b];
            for (i, &c) in ls.iter().enumerate() {
                if c >= self.classes {
                    return Err(LossError::ClassOutOfRange { class: c, classes: self.classes });
                }
                v[c * b + i] = 1.0;
                self.class_count[c] += 1.0;
            }
            Ok(Tensor::from_data(TensorData::new(v, [self.classes, b]), &device))
        });
        let onehot = onehot.transpose()?;
        let fresh = self.sum.is_empty();
        for (l, pre) in features.iter().enumerate() {
            let p = pre.clone().detach() * m3.clone();
            let d = p.dims()[2];
            let s = p.clone().sum_dim(1).reshape([b, d]);
            let tok_sum = s.clone().sum_dim(0).reshape([d]);
            let per_sample_mean = s.div(m.clone().sum_dim(1));
            let sq = per_sample_mean.clone().powi_scalar(2).sum_dim(1);
            let cls_sq = onehot
                .clone()
                .map(|oh| oh.matmul(sq).reshape([self.classes]))
                .unwrap_or_else(|| Tensor::zeros([self.classes], &device));
            let cls = onehot
                .clone()
                .map(|oh| oh.matmul(per_sample_mean))
                .unwrap_or_else(|| Tensor::zeros([self.classes, d], &device));
            let pos = p.sum_dim(0).reshape([t, d]);
            if fresh {
                self.sum.push(tok_sum);
                self.class_sum.push(cls);
                self.class_sq.push(cls_sq);
                self.pos_sum.push(pos);
            } else {
                self.sum[l] = self.sum[l].clone() + tok_sum;
                self.class_sum[l] = self.class_sum[l].clone() + cls;
                self.class_sq[l] = self.class_sq[l].clone() + cls_sq;
                let old = &self.pos_sum[l];
                let tp = old.dims()[0];
                self.pos_sum[l] = if tp >= t {
                    old.clone().slice_assign([0..t, 0..d], old.clone().narrow(0, 0, t) + pos)
                } else {
                    pos.clone().slice_assign([0..tp, 0..d], pos.narrow(0, 0, tp) + old.clone())
                };
            }
        }
        Ok(())
    }

    pub fn layers(&self) -> usize {
        self.sum.len()
    }

    /// Mean of `p_l` over all retain tokens, per layer.
    pub fn global_mean(&self) -> Result<Vec<Tensor<B, 1>>, LossError> {
        if self.tokens == 0.0 {
            return Err(LossError::NoStatistics);
        }
        Ok(self.sum.iter().map(|s| s.clone().div_scalar(self.tokens)).collect())
    }

    /// Mean of `p_l` per class, per layer: `[classes, d_l]` (rows of empty classes are 0).
    pub fn class_means(&self) -> Vec<Tensor<B, 2>> {
        let counts: Vec<f32> = self.class_count.iter().map(|&c| c.max(1.0) as f32).collect();
        self.class_sum
            .iter()
            .map(|s| {
                let c = Tensor::<B, 1>::from_data(
                    TensorData::new(counts.clone(), [self.classes]),
                    &s.device(),
                );
                s.clone().div(c.reshape([self.classes, 1]))
            })
            .collect()
    }

    /// For each class, the other class whose means are nearest (squared distance summed over
    /// layers), or a seeded random other class. Classes without retain samples are never chosen.
    pub fn substitute_classes(&self, nearest: bool, seed: u64) -> Result<Vec<usize>, LossError> {
        let present: Vec<usize> =
            (0..self.classes).filter(|&c| self.class_count[c] > 0.0).collect();
        let means = self.host_class_means();
        let dist = |a: usize, b: usize| means.squared_distance(a, b);
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        (0..self.classes)
            .map(|c| {
                let others: Vec<usize> = present.iter().copied().filter(|&o| o != c).collect();
                if others.is_empty() {
                    return Err(LossError::NoOtherClass { class: c });
                }
                Ok(if nearest {
                    *others
                        .iter()
                        .min_by(|&&a, &&b| dist(c, a).total_cmp(&dist(c, b)))
                        .expect("non-empty")
                } else {
                    state =
                        state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    others[((state >> 33) as usize) % others.len()]
                })
            })
            .collect()
    }

    /// Mean of `p_l` at each position, per layer, `[positions, d_l]` (positions never seen: 0).
    pub fn position_means(&self) -> Vec<Tensor<B, 2>> {
        let counts: Vec<f32> = self.pos_count.iter().map(|&c| c.max(1.0) as f32).collect();
        self.pos_sum
            .iter()
            .map(|s| {
                let t = s.dims()[0];
                let c = Tensor::<B, 1>::from_data(
                    TensorData::new(counts[..t].to_vec(), [t]),
                    &s.device(),
                );
                s.clone().div(c.reshape([t, 1]))
            })
            .collect()
    }
}

/// The forget targets, resolved once before unlearning.
#[derive(Debug, Clone)]
pub enum Targets<B: Backend> {
    /// One `[d_l]` vector per layer (global mean, zero).
    Shared(Vec<Tensor<B, 1>>),
    /// Per layer `[classes, d_l]` class means; each forget sample is sent to the mean of its
    /// target class ([`target_classes`]).
    ByClass(Vec<Tensor<B, 2>>),
    /// Per layer `[positions, d_l]`.
    ByPosition(Vec<Tensor<B, 2>>),
    /// `own-token-mean`: by the forget tokens' ids ([`TokenTargets::for_batch`]).
    ByToken(TokenTargets<B>),
}

impl<B: Backend> Targets<B> {
    pub fn resolve(strategy: TargetStrategy, stats: &FeatureStats<B>) -> Result<Self, LossError> {
        let global = stats.global_mean()?;
        Ok(match strategy {
            TargetStrategy::GlobalMean => Self::Shared(global),
            TargetStrategy::Zero => {
                Self::Shared(global.into_iter().map(|m| m.zeros_like()).collect())
            }
            s if s.by_class() => Self::ByClass(stats.class_means()),
            TargetStrategy::OwnTokenMean => return Err(LossError::NeedsTokenIds),
            _ => Self::ByPosition(stats.position_means()),
        })
    }

    /// The per-layer targets for a forget batch of `batch × seq` tokens, broadcastable against
    /// the taps: `[1, 1, d]`, `[batch, 1, d]` (by class: `classes` holds each row's target
    /// class) or `[1, seq, d]` (by position).
    pub fn for_batch(
        &self,
        batch: usize,
        seq: usize,
        classes: Option<&[usize]>,
    ) -> Result<Vec<Tensor<B, 3>>, LossError> {
        Ok(match self {
            Self::Shared(mu) => mu.iter().map(|m| m.clone().reshape([1, 1, m.dims()[0]])).collect(),
            Self::ByClass(means) => {
                let classes = classes.unwrap_or(&[]);
                let n = means.first().map_or(0, |m| m.dims()[0]);
                let idx: Vec<i64> = (0..batch)
                    .map(|i| {
                        let c = classes.get(i).copied().unwrap_or(0);
                        if c < n {
                            Ok(c as i64)
                        } else {
                            Err(LossError::ClassOutOfRange { class: c, classes: n })
                        }
                    })
                    .collect::<Result<_, _>>()?;
                means
                    .iter()
                    .map(|m| {
                        let d = m.dims()[1];
                        let ix = Tensor::<B, 1, Int>::from_data(
                            TensorData::new(idx.clone(), [batch]),
                            &m.device(),
                        );
                        m.clone().select(0, ix).reshape([batch, 1, d])
                    })
                    .collect()
            }
            Self::ByPosition(means) => means
                .iter()
                .map(|m| {
                    let [t, d] = m.dims();
                    let take = seq.min(t);
                    let part = m.clone().narrow(0, 0, take);
                    let full = if take < seq {
                        Tensor::cat(vec![part, Tensor::zeros([seq - take, d], &m.device())], 0)
                    } else {
                        part
                    };
                    full.reshape([1, seq, d])
                })
                .collect(),
            Self::ByToken(_) => return Err(LossError::NeedsTokenIds),
        })
    }
}

/// For class-mean targets, the class each forget sample is sent to (one per entry of
/// `labels`); `None` for the other strategies. `logits` are M0's `[samples, classes]` logits on
/// the forget samples, row-major (read by `runner-up-class-mean` only). Classes without retain
/// samples are never chosen.
pub fn target_classes<B: Backend>(
    strategy: TargetStrategy,
    stats: &FeatureStats<B>,
    labels: &[usize],
    logits: Option<&[f32]>,
    seed: u64,
) -> Result<Option<Vec<usize>>, LossError> {
    let classes = stats.classes;
    if let Some(&c) = labels.iter().find(|&&c| c >= classes) {
        return Err(LossError::ClassOutOfRange { class: c, classes });
    }
    Ok(Some(match strategy {
        TargetStrategy::ClassMeanNearest | TargetStrategy::ClassMeanRandom => {
            let sub =
                stats.substitute_classes(strategy == TargetStrategy::ClassMeanNearest, seed)?;
            labels.iter().map(|&c| sub[c]).collect()
        }
        TargetStrategy::OwnClassMean => labels
            .iter()
            .map(|&c| {
                if stats.class_count[c] > 0.0 {
                    Ok(c)
                } else {
                    Err(LossError::NoOwnClass { class: c })
                }
            })
            .collect::<Result<_, _>>()?,
        TargetStrategy::RunnerUpClassMean | TargetStrategy::BoundaryMean => {
            let logits = logits.unwrap_or(&[]);
            if logits.len() != labels.len() * classes {
                return Err(LossError::LogitShape {
                    what: "runner-up / boundary targets",
                    found: logits.len(),
                    samples: labels.len(),
                    classes,
                });
            }
            labels
                .iter()
                .enumerate()
                .map(|(i, &own)| {
                    let row = &logits[i * classes..(i + 1) * classes];
                    (0..classes)
                        .filter(|&c| c != own && stats.class_count[c] > 0.0)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .ok_or(LossError::NoOtherClass { class: own })
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Ok(None),
    }))
}

/// `boundary-mean`: per forgotten sample, the midpoint of its own class's mean and its
/// runner-up class's mean (`runner_up`, from [`target_classes`]), per layer. Returns the targets
/// as [`Targets::ByClass`] over a table of the used midpoints, and each sample's row in it.
pub fn boundary_targets<B: Backend>(
    stats: &FeatureStats<B>,
    labels: &[usize],
    runner_up: &[usize],
) -> Result<(Targets<B>, Vec<usize>), LossError> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut rows = Vec::with_capacity(labels.len());
    for (&own, &next) in labels.iter().zip(runner_up) {
        if stats.class_count.get(own).is_none_or(|&c| c == 0.0) {
            return Err(LossError::NoOwnClass { class: own });
        }
        let row = pairs.iter().position(|&p| p == (own, next)).unwrap_or_else(|| {
            pairs.push((own, next));
            pairs.len() - 1
        });
        rows.push(row);
    }
    let means = stats.class_means();
    let table = means
        .iter()
        .map(|m| {
            let device = m.device();
            let pick = |c: Vec<i64>| {
                let n = c.len();
                m.clone()
                    .select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(c, [n]), &device))
            };
            let own = pick(pairs.iter().map(|p| p.0 as i64).collect());
            let next = pick(pairs.iter().map(|p| p.1 as i64).collect());
            (own + next).div_scalar(2.0)
        })
        .collect();
    Ok((Targets::ByClass(table), rows))
}
