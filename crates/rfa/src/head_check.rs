//! The check before RFA's first step: M0's head, applied to a target, must not predict the
//! forgotten class.

use std::collections::HashMap;

use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rfa_loss::{FeatureStats, TargetStrategy, Targets};

use crate::engine::host;

/// Refuses targets that M0's head, applied to the same statistic of its own input (the pooled
/// features it classifies), assigns to the forgotten class: moving the forget features there
/// would move them towards what must be forgotten.
pub fn check_head_targets<B: Backend>(
    classify: impl Fn(Tensor<B, 2>) -> Option<Tensor<B, 2>>,
    strategy: TargetStrategy,
    head_stats: &FeatureStats<B>,
    target_class: &HashMap<usize, usize>,
    forgotten: usize,
    names: &[String],
) -> Result<()> {
    if matches!(strategy, TargetStrategy::OwnTokenMean | TargetStrategy::BoundaryMean) {
        // Per-token targets have no single point at the pooled features to check; midpoints
        // need the sample's own class, which class-wise forgetting has removed (refused before).
        return Ok(());
    }
    let points: Vec<(String, Tensor<B, 1>)> = match Targets::resolve(strategy, head_stats)? {
        Targets::Shared(mu) => vec![(strategy.to_string(), mu[0].clone())],
        Targets::ByClass(means) => {
            let mut used: Vec<usize> = target_class.values().copied().collect();
            used.sort_unstable();
            used.dedup();
            used.into_iter()
                .map(|c| {
                    let d = means[0].dims()[1];
                    (
                        format!("{strategy} (the mean of class `{}`)", names[c]),
                        means[0].clone().narrow(0, c, 1).reshape([d]),
                    )
                })
                .collect()
        }
        Targets::ByPosition(_) | Targets::ByToken(_) => return Ok(()),
    };
    for (what, point) in points {
        let d = point.dims()[0];
        let Some(logits) = classify(point.reshape([1, d])) else { return Ok(()) };
        let predicted =
            rfa_eval::predictions(&rfa_eval::Rows::new("head logits", &host(logits), names.len())?)
                [0];
        if predicted == forgotten {
            bail!(
                "unlearn.target = \"{strategy}\" lands in the forgotten class: M0's classifier, applied to the target {what} at the layer it reads (the pooled features), predicts the forgotten class `{}`; use runner-up-class-mean or class-mean-nearest",
                names[forgotten]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    type B = burn::backend::NdArray<f32>;
    type Head = Box<dyn Fn(Tensor<B, 2>) -> Option<Tensor<B, 2>>>;

    /// Three classes in 2-d: class 0 at (−4, 0), class 1 at (4, 0), class 2 at (0, 0.5) — the
    /// retained classes 0 and 1 average to (0, 0), inside class 2's region of this head.
    fn setup() -> (FeatureStats<B>, Head, Vec<String>) {
        let dev = Default::default();
        let mut stats = FeatureStats::<B>::new(3);
        let f = Tensor::<B, 3>::from_data(
            TensorData::new(vec![-4.0f32, 0.0, 4.0, 0.0], [2, 1, 2]),
            &dev,
        );
        stats.add_features(&[f], Some(&[0, 1]), None).unwrap();
        // A linear head whose class 2 wins near the origin: logits (−x − 1, x − 1, 0).
        let w = Tensor::<B, 2>::from_data(
            TensorData::new(vec![-1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0], [2, 3]),
            &dev,
        );
        let b = Tensor::<B, 2>::from_data(TensorData::new(vec![-1.0f32, -1.0, 0.0], [1, 3]), &dev);
        let names = vec!["a".to_string(), "b".to_string(), "forgotten".to_string()];
        (stats, Box::new(move |x: Tensor<B, 2>| Some(x.matmul(w.clone()) + b.clone())), names)
    }

    #[test]
    fn a_target_the_head_assigns_to_the_forgotten_class_is_refused() {
        let (stats, head, names) = setup();
        let err = check_head_targets(
            &head,
            TargetStrategy::GlobalMean,
            &stats,
            &HashMap::new(),
            2,
            &names,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("global-mean") && err.contains("`forgotten`"), "{err}");
        // The zero target is the origin too.
        assert!(
            check_head_targets(&*head, TargetStrategy::Zero, &stats, &HashMap::new(), 2, &names)
                .is_err()
        );
    }

    #[test]
    fn class_mean_targets_outside_the_forgotten_class_pass() {
        let (stats, head, names) = setup();
        // Forget samples 10 and 11 go to the means of classes 0 and 1.
        let to: HashMap<usize, usize> = [(10, 0), (11, 1)].into_iter().collect();
        check_head_targets(&*head, TargetStrategy::ClassMeanNearest, &stats, &to, 2, &names)
            .unwrap();
        // The same head is fine with the global mean when another class is forgotten.
        check_head_targets(&*head, TargetStrategy::GlobalMean, &stats, &HashMap::new(), 0, &names)
            .unwrap();
    }
}
