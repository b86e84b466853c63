//! The retain statistics the targets are taken from: per-layer sums of M0's features over Dr,
//! overall, per class and per position.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use lora_core::Tap;

use crate::LossError;

/// Per-layer sums of the pre-trained features `p_l` over the retain set, overall, per class
/// and per position, from which the targets are taken.
#[derive(Debug, Clone)]
pub struct FeatureStats<B: Backend> {
    /// Per layer: Σ over samples and tokens of `p_l`, `[d_l]`.
    pub(crate) sum: Vec<Tensor<B, 1>>,
    /// Per layer: Σ over tokens of the per-sample mean, by class, `[classes, d_l]`.
    pub(crate) class_sum: Vec<Tensor<B, 2>>,
    /// Per layer: Σ over samples at each position, `[positions, d_l]`.
    pub(crate) pos_sum: Vec<Tensor<B, 2>>,
    /// Per layer: Σ over samples of ‖per-sample mean‖², by class, `[classes]` (the spread of
    /// the class means' estimate: [`FeatureStats::class_mean_relative_error`]).
    pub(crate) class_sq: Vec<Tensor<B, 1>>,
    pub(crate) tokens: f64,
    pub(crate) class_count: Vec<f64>,
    pub(crate) pos_count: Vec<f64>,
    pub(crate) classes: usize,
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
