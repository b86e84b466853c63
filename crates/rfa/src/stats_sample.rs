//! When RFA's pass over Dr for the targets may stop: once every class's mean feature is pinned
//! down to `unlearn.stats_precision` of the distance to its nearest neighbour's, more samples
//! would not move the targets. The pass reads Dr in a seeded random order, so what it has read
//! is a uniform sample; a class whose samples are all read counts as precise.

use burn::tensor::backend::Backend;
use rfa_loss::FeatureStats;

/// A class's variance is not trusted from fewer samples than this.
const MIN_PER_CLASS: f64 = 32.0;

/// The classes the pass waits for, and how precise their means must be.
pub struct MeanPrecision {
    /// Per class: retained samples in the pass's set.
    available: Vec<f64>,
    precision: f64,
}

impl MeanPrecision {
    /// `set`: the samples the pass may read; `labels`: every training sample's class.
    pub fn new(set: &[usize], labels: &[usize], classes: usize, precision: f64) -> Self {
        let mut available = vec![0.0; classes];
        for &i in set {
            if let Some(c) = available.get_mut(labels[i]) {
                *c += 1.0;
            }
        }
        Self { available, precision }
    }

    /// Whether the statistics so far are precise enough to stop reading.
    pub fn reached<B: Backend>(&self, stats: &FeatureStats<B>) -> bool {
        let counts = stats.class_counts();
        let short = |c: usize| counts[c] < self.available[c].min(MIN_PER_CLASS);
        if (0..self.available.len()).any(short) {
            return false;
        }
        let errors = stats.class_mean_relative_error();
        (0..self.available.len()).all(|c| {
            counts[c] >= self.available[c] || errors[c].is_some_and(|e| e <= self.precision)
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};
    use rfa_rng::SplitMix64;

    use super::*;

    type B = NdArray<f64>;

    /// Two classes of 2-d features: means (0, 0) and (`gap`, 0), each coordinate ±1 around it.
    fn batch(n: usize, gap: f64, rng: &mut SplitMix64) -> (Tensor<B, 3>, Vec<usize>) {
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let v: Vec<f64> = labels
            .iter()
            .flat_map(|&c| {
                let sign = |r: u64| if r % 2 == 0 { 1.0 } else { -1.0 };
                [c as f64 * gap + sign(rng.next_u64()), sign(rng.next_u64())]
            })
            .collect();
        (Tensor::from_data(TensorData::new(v, [n, 1, 2]), &Default::default()), labels)
    }

    fn read_until_precise(gap: f64, available: usize, precision: f64) -> usize {
        let labels: Vec<usize> = (0..available).map(|i| i % 2).collect();
        let set: Vec<usize> = (0..available).collect();
        let p = MeanPrecision::new(&set, &labels, 2, precision);
        let mut stats = FeatureStats::<B>::new(2);
        let mut rng = SplitMix64::new(7);
        let mut read = 0;
        while read < available {
            let (x, l) = batch(16, gap, &mut rng);
            stats.add_features(&[x], Some(&l), None).unwrap();
            read += 16;
            if p.reached(&stats) {
                break;
            }
        }
        read
    }

    #[test]
    fn well_separated_classes_stop_the_pass_early_close_ones_read_more() {
        // Standard error √2/√n over a distance of 10: 5 % needs n ≥ 8 per class, but at least 32.
        assert_eq!(read_until_precise(10.0, 4096, 0.05), 64);
        // Distance 1: 5 % needs n ≥ 800 per class (the estimated distance varies around 1).
        let close = read_until_precise(1.0, 4096, 0.05);
        assert!((1_400..=2_000).contains(&close), "{close}");
        // A set smaller than that is read to its end.
        assert_eq!(read_until_precise(1.0, 640, 0.05), 640);
    }

    #[test]
    fn a_class_missing_from_the_set_is_not_waited_for() {
        let labels = vec![0; 64];
        let set: Vec<usize> = (0..64).collect();
        let p = MeanPrecision::new(&set, &labels, 2, 0.05);
        let mut stats = FeatureStats::<B>::new(2);
        let mut rng = SplitMix64::new(1);
        let (x, _) = batch(32, 1.0, &mut rng);
        stats.add_features(&[x], Some(&[0; 32]), None).unwrap();
        // Class 0 alone has no neighbour to be measured against: read to the end.
        assert!(!p.reached(&stats));
        let (x, _) = batch(32, 1.0, &mut rng);
        stats.add_features(&[x], Some(&[0; 32]), None).unwrap();
        assert!(p.reached(&stats), "every available sample read");
    }
}
