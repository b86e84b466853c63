//! How precisely the retain statistics pin down the class means the targets are taken from:
//! the pass over Dr may stop once more samples would not move them ([`FeatureStats::
//! class_mean_relative_error`]).

use burn::tensor::backend::Backend;

use crate::FeatureStats;

/// Every layer's class means on the host, as one vector per class (the layers concatenated).
pub(crate) struct HostClassMeans {
    rows: Vec<Vec<f64>>,
}

impl HostClassMeans {
    /// Σ over layers of the squared distance between the means of classes `a` and `b`.
    pub(crate) fn squared_distance(&self, a: usize, b: usize) -> f64 {
        self.rows[a].iter().zip(&self.rows[b]).map(|(x, y)| (x - y).powi(2)).sum()
    }

    fn squared_norm(&self, c: usize) -> f64 {
        self.rows[c].iter().map(|x| x * x).sum()
    }
}

fn host<B: Backend, const D: usize>(t: &burn::tensor::Tensor<B, D>) -> Vec<f64> {
    t.clone().into_data().convert::<f64>().into_vec().expect("f64")
}

impl<B: Backend> FeatureStats<B> {
    pub(crate) fn host_class_means(&self) -> HostClassMeans {
        let per_layer: Vec<(Vec<f64>, usize)> =
            self.class_means().iter().map(|m| (host(m), m.dims()[1])).collect();
        let rows = (0..self.classes)
            .map(|c| per_layer.iter().flat_map(|(m, d)| m[c * d..(c + 1) * d].to_vec()).collect())
            .collect();
        HostClassMeans { rows }
    }

    /// Samples counted per class so far.
    pub fn class_counts(&self) -> &[f64] {
        &self.class_count
    }

    /// Per class: the standard error of its mean feature (the root of the summed variances of
    /// every layer's dimensions, over the samples' count) divided by the distance from its mean
    /// to the nearest other class's. `None` for a class with fewer than two samples, or while
    /// no other class has a sample. A ratio of 0.05 means that more samples could move the
    /// class's target by about 5 % of the way to its nearest neighbour.
    pub fn class_mean_relative_error(&self) -> Vec<Option<f64>> {
        let means = self.host_class_means();
        let sq: Vec<f64> =
            self.class_sq.iter().map(host).fold(vec![0.0; self.classes], |a, l| {
                a.iter().zip(&l).map(|(x, y)| x + y).collect()
            });
        (0..self.classes)
            .map(|c| {
                let n = self.class_count[c];
                if n < 2.0 {
                    return None;
                }
                let nearest = (0..self.classes)
                    .filter(|&o| o != c && self.class_count[o] > 0.0)
                    .map(|o| means.squared_distance(c, o))
                    .min_by(f64::total_cmp)?;
                // Summed sample variance: (Σ‖x‖² − n‖mean‖²) / (n − 1).
                let variance = ((sq[c] - n * means.squared_norm(c)) / (n - 1.0)).max(0.0);
                let standard_error = (variance / n).sqrt();
                Some(if nearest > 0.0 { standard_error / nearest.sqrt() } else { f64::INFINITY })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};

    use super::*;

    type B = NdArray<f64>;

    /// One-token features of one layer.
    fn add(stats: &mut FeatureStats<B>, rows: &[[f64; 2]], labels: &[usize]) {
        let v: Vec<f64> = rows.iter().flatten().copied().collect();
        let t =
            Tensor::<B, 3>::from_data(TensorData::new(v, [rows.len(), 1, 2]), &Default::default());
        stats.add_features(&[t], Some(labels), None).unwrap();
    }

    #[test]
    fn the_relative_error_is_the_standard_error_over_the_nearest_distance() {
        let mut s = FeatureStats::<B>::new(3);
        // Class 0: mean (0, 0), per-dimension variances 1 and 0 (sample variance with n − 1).
        // Class 1: mean (4, 0), one sample only. Class 2: no sample.
        add(&mut s, &[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], &[0, 0, 0, 0]);
        add(&mut s, &[[4.0, 0.0]], &[1]);
        let r = s.class_mean_relative_error();
        // Σ variance = 4/3, standard error √(4/3 / 4) = √(1/3); distance 4.
        approx::assert_abs_diff_eq!(r[0].unwrap(), (1.0f64 / 3.0).sqrt() / 4.0, epsilon = 1e-12);
        assert_eq!((r[1], r[2]), (None, None), "one sample, no sample");
        assert_eq!(s.class_counts(), &[4.0, 1.0, 0.0]);
        // More samples of the same spread: the error falls as 1/√n.
        add(&mut s, &[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], &[0, 0, 0, 0]);
        let r8 = s.class_mean_relative_error()[0].unwrap();
        approx::assert_abs_diff_eq!(r8, (8.0f64 / 7.0 / 8.0).sqrt() / 4.0, epsilon = 1e-12);
    }

    #[test]
    fn a_class_alone_has_no_neighbour_to_be_measured_against() {
        let mut s = FeatureStats::<B>::new(2);
        add(&mut s, &[[1.0, 2.0], [3.0, 4.0]], &[0, 0]);
        assert_eq!(s.class_mean_relative_error(), vec![None, None]);
    }
}
