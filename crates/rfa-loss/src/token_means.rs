//! `own-token-mean`, the language models' target: each forgotten token is sent to the mean
//! feature of the same input token over Dr. What a token carries in any context stays; what the
//! forgotten text's context adds to it goes. Per-position or global means move every token of a
//! forgotten text towards one vector, and the adapter that does so moves retained texts too.
//!
//! Only the token ids that occur in Df are tracked, so the table is `[ids in Df + 1, d_l]` per
//! layer (the last row: the global mean, for an id Dr never shows).

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::LossError;

/// Σ and count of `p_l` per tracked token id, per layer, accumulated on the host.
#[derive(Debug, Clone)]
pub struct TokenStats {
    /// Token id → row.
    rows: HashMap<i64, usize>,
    /// Per layer: `[rows, d_l]` sums, row-major; and Σ over every real token, `[d_l]`.
    sums: Vec<Vec<f64>>,
    totals: Vec<Vec<f64>>,
    dims: Vec<usize>,
    counts: Vec<f64>,
    tokens: f64,
}

impl TokenStats {
    /// Tracks the ids in `forget_ids` (the token ids of every forgotten text).
    pub fn new(forget_ids: impl IntoIterator<Item = i64>) -> Self {
        let mut rows = HashMap::new();
        for id in forget_ids {
            let next = rows.len();
            rows.entry(id).or_insert(next);
        }
        let n = rows.len();
        Self {
            rows,
            sums: Vec::new(),
            totals: Vec::new(),
            dims: Vec::new(),
            counts: vec![0.0; n],
            tokens: 0.0,
        }
    }

    /// Adds one retain batch: per layer `[batch, seq, d_l]` features, the `[batch, seq]` ids and
    /// mask (1 = real token) on the host, row-major.
    pub fn add<B: Backend>(
        &mut self,
        features: &[Tensor<B, 3>],
        ids: &[i64],
        mask: &[f32],
    ) -> Result<(), LossError> {
        if !self.dims.is_empty() && self.dims.len() != features.len() {
            return Err(LossError::LayerCount {
                what: "token statistics",
                expected: self.dims.len(),
                found: features.len(),
            });
        }
        let fresh = self.dims.is_empty();
        for (l, f) in features.iter().enumerate() {
            let [b, t, d] = f.dims();
            if ids.len() != b * t || mask.len() != b * t {
                return Err(LossError::TokenShape {
                    ids: ids.len(),
                    mask: mask.len(),
                    tokens: b * t,
                });
            }
            if fresh {
                self.dims.push(d);
                self.sums.push(vec![0.0; self.counts.len() * d]);
                self.totals.push(vec![0.0; d]);
            }
            let v: Vec<f32> = f.clone().into_data().convert::<f32>().into_vec().expect("f32");
            let (sums, totals) = (&mut self.sums[l], &mut self.totals[l]);
            for k in (0..b * t).filter(|&k| mask[k] > 0.0) {
                let x = &v[k * d..(k + 1) * d];
                totals.iter_mut().zip(x).for_each(|(s, &x)| *s += x as f64);
                if let Some(&r) = self.rows.get(&ids[k]) {
                    sums[r * d..(r + 1) * d].iter_mut().zip(x).for_each(|(s, &x)| *s += x as f64);
                    if l == 0 {
                        self.counts[r] += 1.0;
                    }
                }
            }
        }
        self.tokens += mask.iter().filter(|&&m| m > 0.0).count() as f64;
        Ok(())
    }

    /// The targets: per layer `[rows + 1, d_l]`, each tracked id's mean (the global mean where
    /// Dr never showed the id) and the global mean last.
    pub fn resolve<B: Backend>(&self, device: &B::Device) -> Result<TokenTargets<B>, LossError> {
        if self.tokens == 0.0 {
            return Err(LossError::NoStatistics);
        }
        let n = self.counts.len();
        let table = self
            .dims
            .iter()
            .enumerate()
            .map(|(l, &d)| {
                let global: Vec<f64> = self.totals[l].iter().map(|s| s / self.tokens).collect();
                let mut v = Vec::with_capacity((n + 1) * d);
                for r in 0..n {
                    let c = self.counts[r];
                    if c > 0.0 {
                        v.extend(self.sums[l][r * d..(r + 1) * d].iter().map(|s| (s / c) as f32));
                    } else {
                        v.extend(global.iter().map(|&g| g as f32));
                    }
                }
                v.extend(global.iter().map(|&g| g as f32));
                Tensor::from_data(TensorData::new(v, [n + 1, d]), device)
            })
            .collect();
        let seen = self.counts.iter().filter(|&&c| c > 0.0).count();
        Ok(TokenTargets { table, rows: self.rows.clone(), seen_in_retain: seen })
    }
}

/// The resolved `own-token-mean` targets.
#[derive(Debug, Clone)]
pub struct TokenTargets<B: Backend> {
    table: Vec<Tensor<B, 2>>,
    rows: HashMap<i64, usize>,
    /// Tracked ids that Dr showed (the others fall back to the global mean).
    pub seen_in_retain: usize,
}

impl<B: Backend> TokenTargets<B> {
    /// The same targets on `device`.
    pub fn to_device(&self, device: &B::Device) -> Self {
        Self {
            table: self.table.iter().map(|t| t.clone().to_device(device)).collect(),
            rows: self.rows.clone(),
            seen_in_retain: self.seen_in_retain,
        }
    }

    /// Ids of Df tracked.
    pub fn tracked(&self) -> usize {
        self.rows.len()
    }

    /// Per layer `[batch, seq, d_l]` targets for a forget batch with `[batch, seq]` ids
    /// (host, row-major); an untracked id gets the global mean.
    pub fn for_batch(
        &self,
        batch: usize,
        seq: usize,
        ids: &[i64],
    ) -> Result<Vec<Tensor<B, 3>>, LossError> {
        if ids.len() != batch * seq {
            return Err(LossError::TokenBatchShape { ids: ids.len(), tokens: batch * seq });
        }
        let fallback = self.rows.len() as i64;
        let idx: Vec<i64> =
            ids.iter().map(|id| self.rows.get(id).map_or(fallback, |&r| r as i64)).collect();
        Ok(self
            .table
            .iter()
            .map(|m| {
                let d = m.dims()[1];
                let ix = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(idx.clone(), [batch * seq]),
                    &m.device(),
                );
                m.clone().select(0, ix).reshape([batch, seq, d])
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    type B = NdArray<f64>;

    fn features(v: &[[f64; 2]], b: usize, t: usize) -> Tensor<B, 3> {
        let flat: Vec<f64> = v.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [b, t, 2]), &Default::default())
    }

    #[test]
    fn each_tracked_id_gets_its_mean_over_dr_and_an_unseen_id_the_global_mean() {
        // Df holds ids 7 and 9; Dr shows 7 twice and 5 once, never 9.
        let mut s = TokenStats::new([7, 9, 7]);
        let f = features(&[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [100.0, 100.0]], 2, 2);
        // The last token is padding: neither its id nor its feature counts.
        s.add(&[f], &[7, 5, 7, 7], &[1.0, 1.0, 1.0, 0.0]).unwrap();
        let t = s.resolve::<B>(&Default::default()).unwrap();
        assert_eq!((t.tracked(), t.seen_in_retain), (2, 1));
        // A forget batch of one text: ids 9, 7, 4 (4 untracked).
        let mu = t.for_batch(1, 3, &[9, 7, 4]).unwrap();
        let got: Vec<f64> = mu[0].clone().into_data().into_vec().unwrap();
        let global = [3.0, 2.0]; // mean of (1,0), (3,2), (5,4)
        let own7 = [3.0, 2.0]; // mean of (1,0), (5,4)
        assert_eq!(got, [global, own7, global].concat());
        assert_eq!(mu[0].dims(), [1, 3, 2]);
    }

    #[test]
    fn shapes_are_checked() {
        let mut s = TokenStats::new([1]);
        let f = features(&[[1.0, 0.0], [3.0, 2.0]], 1, 2);
        let err = s.add(&[f.clone()], &[1], &[1.0, 1.0]).unwrap_err();
        assert_eq!(err, LossError::TokenShape { ids: 1, mask: 2, tokens: 2 });
        s.add(&[f.clone()], &[1, 1], &[1.0, 1.0]).unwrap();
        let err = s.add(&[f.clone(), f], &[1, 1], &[1.0, 1.0]).unwrap_err();
        assert!(matches!(err, LossError::LayerCount { .. }));
        assert!(TokenStats::new([1]).resolve::<B>(&Default::default()).is_err(), "no statistics");
        let t = s.resolve::<B>(&Default::default()).unwrap();
        assert!(t.for_batch(1, 2, &[1]).is_err());
    }
}
