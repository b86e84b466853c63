//! The retain batches RFA pairs with each forget batch: uniform over Dr, or with a share drawn
//! from the retained samples M0 most confuses with Df — for class-wise forgetting those M0 gives
//! the most probability of the forgotten class, otherwise those whose features (the
//! classifier's input) lie nearest (cosine) to a forgotten sample's. Uniform batches average the
//! retain term over every token of samples mostly far from Df, so the neighbours that collapse
//! when the forget features move have almost no weight.

use rfa_rng::SplitMix64;

/// At most this many forget samples are compared with each candidate (a seeded sample of Df):
/// the nearest-neighbour scores cost |candidates| × this × d.
const MAX_FORGET_REFERENCES: usize = 512;

/// How confusable each candidate is with Df (higher = more).
pub enum Confusion<'a> {
    /// M0's probability of the forgotten class, per candidate.
    ForgottenClassProbability(Vec<f64>),
    /// Features (`[n, d]` row-major) of the candidates and of Df: the score is the largest cosine
    /// similarity to a forget sample.
    NearestForgetFeature { candidates: &'a [f32], forget: &'a [f32], dim: usize, seed: u64 },
}

impl Confusion<'_> {
    pub fn scores(&self) -> Vec<f64> {
        match self {
            Self::ForgottenClassProbability(p) => p.clone(),
            Self::NearestForgetFeature { candidates, forget, dim, seed } => {
                let unit = |v: &[f32]| -> Vec<f32> {
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter().map(|x| x / n).collect()
                };
                let mut refs: Vec<Vec<f32>> = forget.chunks(*dim).map(unit).collect();
                if refs.len() > MAX_FORGET_REFERENCES {
                    SplitMix64::new(*seed).shuffle(&mut refs);
                    refs.truncate(MAX_FORGET_REFERENCES);
                }
                candidates
                    .chunks(*dim)
                    .map(|c| {
                        let c = unit(c);
                        refs.iter()
                            .map(|r| r.iter().zip(&c).map(|(a, b)| a * b).sum::<f32>() as f64)
                            .fold(f64::NEG_INFINITY, f64::max)
                    })
                    .collect()
            }
        }
    }
}

/// The `k` candidates with the highest scores (ties: the earlier one), most confusable first.
pub fn most_confusable(candidates: &[usize], scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| candidates[i]).collect()
}

/// Draws from a set without replacement, reshuffled once exhausted.
#[derive(Clone)]
struct Cycle {
    items: Vec<usize>,
    pool: Vec<usize>,
}

impl Cycle {
    fn draw(&mut self, rng: &mut SplitMix64) -> usize {
        if self.pool.is_empty() {
            self.pool = self.items.clone();
            rng.shuffle(&mut self.pool);
        }
        self.pool.pop().expect("a non-empty set")
    }
}

/// The retain batches of one unlearning (a clone draws the same batches: every data-parallel
/// replica pairs each forget batch with the same retain batch).
#[derive(Clone)]
pub struct RetainSampler {
    rng: SplitMix64,
    uniform: Cycle,
    confusable: Option<(Cycle, f64)>,
}

impl RetainSampler {
    /// Uniform batches from `retain` (non-empty).
    pub fn uniform(retain: &[usize], seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            uniform: Cycle { items: retain.to_vec(), pool: Vec::new() },
            confusable: None,
        }
    }

    /// `share` of each batch from `pool` (the most confusable samples), the rest uniform.
    pub fn with_confusable(mut self, pool: Vec<usize>, share: f64) -> Self {
        if !pool.is_empty() && share > 0.0 {
            self.confusable = Some((Cycle { items: pool, pool: Vec::new() }, share));
        }
        self
    }

    /// The next retain batch of `n` samples.
    pub fn batch(&mut self, n: usize) -> Vec<usize> {
        let from_pool =
            self.confusable.as_ref().map_or(0, |(_, s)| (s * n as f64).round() as usize);
        let mut out = Vec::with_capacity(n);
        if let Some((pool, _)) = &mut self.confusable {
            for _ in 0..from_pool.min(n) {
                out.push(pool.draw(&mut self.rng));
            }
        }
        while out.len() < n {
            out.push(self.uniform.draw(&mut self.rng));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_confusable_come_first() {
        assert_eq!(most_confusable(&[10, 11, 12, 13], &[0.1, 0.9, 0.5, 0.9], 3), vec![11, 13, 12]);
    }

    #[test]
    fn nearest_forget_features_score_by_cosine() {
        // Candidates (1, 0) and (0, 2); one forget sample at (3, 0).
        let c = Confusion::NearestForgetFeature {
            candidates: &[1.0, 0.0, 0.0, 2.0],
            forget: &[3.0, 0.0],
            dim: 2,
            seed: 0,
        };
        assert_eq!(c.scores(), vec![1.0, 0.0]);
    }

    #[test]
    fn batches_draw_the_share_from_the_pool_and_the_rest_uniformly() {
        let retain: Vec<usize> = (0..100).collect();
        let mut s = RetainSampler::uniform(&retain, 1).with_confusable(vec![7, 8], 0.5);
        for _ in 0..5 {
            let b = s.batch(8);
            assert_eq!(b.len(), 8);
            assert!(b[..4].iter().all(|i| [7, 8].contains(i)), "{b:?}");
        }
        // Uniform batches visit every retained sample once per pass.
        let mut u = RetainSampler::uniform(&retain, 1);
        let mut seen: Vec<usize> = (0..10).flat_map(|_| u.batch(10)).collect();
        seen.sort_unstable();
        assert_eq!(seen, retain);
    }
}
