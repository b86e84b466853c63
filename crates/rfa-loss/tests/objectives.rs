//! The RFA objectives and targets on small tensors with hand-computed values.

use approx::assert_relative_eq;
use burn::tensor::{Tensor, TensorData};
use lora_core::Tap;
use rfa_loss::{FeatureStats, LossError, RfaObjective, TargetStrategy, Targets, target_classes};

type B = burn::backend::NdArray<f32>;
type AB = burn::backend::Autodiff<B>;

fn t3<Bk: burn::tensor::backend::Backend>(v: Vec<f32>, s: [usize; 3]) -> Tensor<Bk, 3> {
    Tensor::from_data(TensorData::new(v, s), &Default::default())
}

fn scalar<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 1>) -> f32 {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()[0]
}

fn tap(pre: Vec<f32>, res: Vec<f32>, s: [usize; 3]) -> Tap<B> {
    Tap { pre: t3(pre, s), residual: t3(res, s) }
}

#[test]
fn retain_term_is_the_weighted_mean_squared_residual_norm() {
    // Layer 0: tokens (1,2) and (3,4): norms² 5 and 25, mean 15. Layer 1: zero residual.
    let taps = vec![
        tap(vec![0.0; 4], vec![1.0, 2.0, 3.0, 4.0], [1, 2, 2]),
        tap(vec![9.0; 4], vec![0.0; 4], [1, 2, 2]),
    ];
    let obj = RfaObjective::default();
    assert_relative_eq!(scalar(obj.retain_loss(&taps, None).unwrap()), 7.5);
    let weighted = RfaObjective { layer_weights: vec![2.0, 1.0], ..Default::default() };
    assert_relative_eq!(scalar(weighted.retain_loss(&taps, None).unwrap()), 15.0);
    // Padding excluded: only the first token counts.
    let mask =
        Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &Default::default());
    assert_relative_eq!(scalar(obj.retain_loss(&taps, Some(&mask)).unwrap()), 2.5);
}

#[test]
fn forget_term_pulls_the_feature_to_the_target() {
    // p + r − mu per token: (1,1) − (0,1) = (1,0) and (2,2) + (1,0) − (0,1) = (3,1): norms² 1 and
    // 10.
    let taps = vec![tap(vec![1.0, 1.0, 2.0, 2.0], vec![0.0, 0.0, 1.0, 0.0], [1, 2, 2])];
    let mu = vec![t3(vec![0.0, 1.0], [1, 1, 2])];
    let obj = RfaObjective { lambda: 3.0, ..Default::default() };
    assert_relative_eq!(scalar(obj.forget_loss(&taps, &mu, None).unwrap()), 5.5);
    let retain = vec![tap(vec![0.0; 2], vec![1.0, 1.0], [1, 1, 2])];
    let l = obj.total(&retain, None, &taps, &mu, None).unwrap();
    assert_relative_eq!(scalar(l.total(obj.lambda)), 2.0 + 3.0 * 5.5);
    assert_relative_eq!(scalar(l.retain), 2.0);
}

#[test]
fn layer_count_mismatch_is_an_error() {
    let taps = vec![tap(vec![0.0; 2], vec![0.0; 2], [1, 1, 2])];
    let obj = RfaObjective { layer_weights: vec![1.0, 1.0], ..Default::default() };
    assert!(matches!(obj.retain_loss(&taps, None), Err(LossError::LayerCount { .. })));
    assert!(matches!(
        RfaObjective::default().forget_loss(&taps, &[], None),
        Err(LossError::LayerCount { .. })
    ));
}

#[test]
fn gradient_of_the_retain_term_is_2r_over_tokens_and_layers() {
    let r = Tensor::<AB, 3>::from_data(
        TensorData::new(vec![1.0f32, -2.0, 0.5, 4.0], [2, 1, 2]),
        &Default::default(),
    )
    .require_grad();
    let taps = vec![Tap { pre: r.clone().zeros_like(), residual: r.clone() }];
    let loss = RfaObjective::default().retain_loss(&taps, None).unwrap();
    let g = r.grad(&loss.backward()).unwrap().into_data().into_vec::<f32>().unwrap();
    // L = (1/2) Σ_tokens ||r||²  → dL/dr = r.
    assert_eq!(g, vec![1.0, -2.0, 0.5, 4.0]);
}

fn stats() -> FeatureStats<B> {
    // Three classes, one layer, d = 2, two tokens per sample.
    // class 0: sample features (0,0),(2,0) → mean (1,0); class 1: (10,0),(10,2) → (10,1);
    // class 2: (2,2),(2,2) → (2,2).
    let mut s = FeatureStats::<B>::new(3);
    let pre = vec![0.0, 0.0, 2.0, 0.0, 10.0, 0.0, 10.0, 2.0, 2.0, 2.0, 2.0, 2.0];
    let taps = vec![tap(pre, vec![0.0; 12], [3, 2, 2])];
    s.add(&taps, Some(&[0, 1, 2]), None).unwrap();
    s
}

#[test]
fn global_class_and_position_means() {
    let s = stats();
    let g = s.global_mean().unwrap()[0].clone().into_data().into_vec::<f32>().unwrap();
    assert_eq!(g, vec![26.0 / 6.0, 6.0 / 6.0]);
    let c = s.class_means()[0].clone().into_data().into_vec::<f32>().unwrap();
    assert_eq!(c, vec![1.0, 0.0, 10.0, 1.0, 2.0, 2.0]);
    let p = s.position_means()[0].clone().into_data().into_vec::<f32>().unwrap();
    assert_eq!(p, vec![12.0 / 3.0, 2.0 / 3.0, 14.0 / 3.0, 4.0 / 3.0]);
    // Nearest other class: 0 → 2 (dist² 5), 1 → 2 (65 < 82), 2 → 0.
    assert_eq!(s.substitute_classes(true, 0).unwrap(), vec![2, 2, 0]);
    let random = s.substitute_classes(false, 7).unwrap();
    assert!(random.iter().enumerate().all(|(c, &o)| c != o));
    assert_eq!(random, s.substitute_classes(false, 7).unwrap());
}

#[test]
fn targets_for_a_batch() {
    let s = stats();
    let shared =
        Targets::resolve(TargetStrategy::GlobalMean, &s).unwrap().for_batch(2, 2, None).unwrap();
    assert_eq!(shared[0].dims(), [1, 1, 2]);
    let zero = Targets::resolve(TargetStrategy::Zero, &s).unwrap().for_batch(2, 2, None).unwrap();
    assert_eq!(zero[0].clone().into_data().into_vec::<f32>().unwrap(), vec![0.0, 0.0]);
    let nearest = TargetStrategy::ClassMeanNearest;
    let classes = target_classes(nearest, &s, &[1, 2], None, 0).unwrap().unwrap();
    // class 1 → class 2, class 2 → class 0.
    assert_eq!(classes, vec![2, 0]);
    let by_class = Targets::resolve(nearest, &s).unwrap().for_batch(2, 2, Some(&classes)).unwrap();
    assert_eq!(
        by_class[0].clone().into_data().into_vec::<f32>().unwrap(),
        vec![2.0, 2.0, 1.0, 0.0]
    );
    let by_pos = Targets::resolve(TargetStrategy::PerPositionMean, &s)
        .unwrap()
        .for_batch(1, 3, None)
        .unwrap();
    assert_eq!(by_pos[0].dims(), [1, 3, 2]);
    assert!(matches!(
        Targets::resolve(TargetStrategy::GlobalMean, &FeatureStats::<B>::new(2)),
        Err(LossError::NoStatistics)
    ));
    assert_eq!(target_classes(TargetStrategy::GlobalMean, &s, &[1], None, 0).unwrap(), None);
}

/// Class 1 of four has no retain sample (class-wise forgetting): classes 0, 2, 3 do.
fn stats_without_class_1() -> FeatureStats<B> {
    let mut s = FeatureStats::<B>::new(4);
    let pre = vec![0.0, 0.0, 4.0, 0.0, 0.0, 4.0];
    s.add(&[tap(pre, vec![0.0; 6], [3, 1, 2])], Some(&[0, 2, 3]), None).unwrap();
    s
}

#[test]
fn runner_up_targets_skip_the_own_and_the_empty_classes() {
    let s = stats_without_class_1();
    // Sample 0 (class 1): M0 ranks 1 > 3 > 0 > 2 → class 3. Sample 1 (class 1): 1 > 2 → 2.
    // Sample 2 (class 0, random forgetting): own class 0 is skipped, empty class 1 too → 2.
    let logits = [1.0, 9.0, 0.5, 3.0, 0.0, 9.0, 2.0, 1.0, 9.0, 8.0, 7.0, 6.0];
    let got = target_classes(TargetStrategy::RunnerUpClassMean, &s, &[1, 1, 0], Some(&logits), 0)
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![3, 2, 2]);
    let mu = Targets::resolve(TargetStrategy::RunnerUpClassMean, &s)
        .unwrap()
        .for_batch(3, 1, Some(&got))
        .unwrap();
    assert_eq!(
        mu[0].clone().into_data().into_vec::<f32>().unwrap(),
        vec![0.0, 4.0, 4.0, 0.0, 4.0, 0.0]
    );
    assert!(matches!(
        target_classes(TargetStrategy::RunnerUpClassMean, &s, &[1], Some(&[0.0; 3]), 0),
        Err(LossError::LogitShape { found: 3, samples: 1, classes: 4, .. })
    ));
}

#[test]
fn own_class_targets_keep_the_class_and_refuse_an_empty_one() {
    let s = stats_without_class_1();
    let got = target_classes(TargetStrategy::OwnClassMean, &s, &[3, 0, 2], None, 0).unwrap();
    assert_eq!(got, Some(vec![3, 0, 2]));
    let mu = Targets::resolve(TargetStrategy::OwnClassMean, &s)
        .unwrap()
        .for_batch(1, 1, Some(&[3]))
        .unwrap();
    assert_eq!(mu[0].clone().into_data().into_vec::<f32>().unwrap(), vec![0.0, 4.0]);
    assert_eq!(
        target_classes(TargetStrategy::OwnClassMean, &s, &[1], None, 0),
        Err(LossError::NoOwnClass { class: 1 })
    );
    assert!(matches!(
        target_classes(TargetStrategy::OwnClassMean, &s, &[7], None, 0),
        Err(LossError::ClassOutOfRange { class: 7, classes: 4 })
    ));
}

#[test]
fn statistics_accumulate_over_batches_of_different_lengths() {
    let mut s = FeatureStats::<B>::new(1);
    s.add(&[tap(vec![1.0, 3.0], vec![0.0; 2], [1, 1, 2])], Some(&[0]), None).unwrap();
    s.add(&[tap(vec![3.0, 5.0, 7.0, 9.0], vec![0.0; 4], [1, 2, 2])], Some(&[0]), None).unwrap();
    let g = s.global_mean().unwrap()[0].clone().into_data().into_vec::<f32>().unwrap();
    assert_eq!(g, vec![11.0 / 3.0, 17.0 / 3.0]);
    let p = s.position_means()[0].clone().into_data().into_vec::<f32>().unwrap();
    assert_eq!(p, vec![2.0, 4.0, 7.0, 9.0]);
    assert!(matches!(
        s.add(&[tap(vec![0.0; 2], vec![0.0; 2], [1, 1, 2])], Some(&[3]), None),
        Err(LossError::ClassOutOfRange { .. })
    ));
}

#[test]
fn baseline_objectives_match_their_definitions() {
    use rfa_loss::baseline_losses::{kl_divergence, l1, npo_loss};
    type B = burn::backend::NdArray<f32>;
    let dev = Default::default();
    let t = |v: Vec<f32>, s: [usize; 2]| {
        Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(v, s), &dev)
    };
    // KL([0.5, 0.5] ‖ [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3); the second row is identical → 0.
    let p = t(vec![0.5f32.ln(), 0.5f32.ln(), 0.2f32.ln(), 0.8f32.ln()], [2, 2]);
    let q = t(vec![0.25f32.ln(), 0.75f32.ln(), 0.2f32.ln(), 0.8f32.ln()], [2, 2]);
    let kl: f32 = kl_divergence(p.clone(), q).into_scalar();
    let want = (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln()) / 2.0;
    assert!((kl as f64 - want).abs() < 1e-6, "{kl} vs {want}");
    assert!(kl_divergence(p.clone(), p).into_scalar().abs() < 1e-7);
    // NPO at the reference: (2/β) ln 2; lower likelihood than the reference lowers it.
    let v = |x: Vec<f32>| {
        Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(x.clone(), [x.len()]), &dev)
    };
    let at_ref: f32 = npo_loss(v(vec![-3.0, -5.0]), v(vec![-3.0, -5.0]), 0.1).into_scalar();
    assert!((at_ref as f64 - 20.0 * 2f64.ln()).abs() < 1e-4);
    let lower: f32 = npo_loss(v(vec![-30.0]), v(vec![-3.0]), 0.1).into_scalar();
    // −20·log σ(−0.1·(−27)) = 20·ln(1 + e^(−2.7))
    assert!((lower as f64 - 20.0 * (1.0 + (-2.7f64).exp()).ln()).abs() < 1e-4, "{lower}");
    assert_eq!(l1(t(vec![1.0, -2.0, 0.5, 0.0], [2, 2])).into_scalar(), 3.5);
}

/// Pseudo-random values in [-2, 2) without burn's global RNG (tests run in parallel).
fn values(n: usize, state: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// The loss and the gradients of every tap's pre-trained and residual feature, with the terms
/// as one node per layer or split op by op; three layers, 3 retain + 2 forget rows.
fn rows_case(
    one_node: bool,
    masked: bool,
    cls: bool,
    mu_tokens: usize,
    seed: u64,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (rows, t, d, nr) = (5, 4, 6, 3);
    let st = &mut seed.clone();
    let leaf = |st: &mut u64, tracked: bool| {
        let x = Tensor::<AB, 3>::from_data(
            TensorData::new(values(rows * t * d, st), [rows, t, d]),
            &Default::default(),
        );
        if tracked { x.require_grad() } else { x }
    };
    // The first layer's pre-trained feature is a constant (nothing trainable before it).
    let taps: Vec<Tap<AB>> =
        (0..3).map(|l| Tap { pre: leaf(st, l > 0), residual: leaf(st, true) }).collect();
    let tm = if cls { 1 } else { mu_tokens };
    let mus: Vec<Tensor<AB, 3>> = (0..3)
        .map(|_| {
            Tensor::from_data(
                TensorData::new(values((rows - nr) * tm * d, st), [rows - nr, tm, d]),
                &Default::default(),
            )
        })
        .collect();
    // Padding: the last token of rows 1 and 4, the last two of row 2.
    let mask: Vec<f32> = (0..rows * t)
        .map(|i| {
            if (i / t == 1 || i / t == 4) && i % t == 3 || i / t == 2 && i % t >= 2 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let mask = Tensor::<AB, 2>::from_data(TensorData::new(mask, [rows, t]), &Default::default());
    let obj =
        RfaObjective { lambda: 0.7, layer_weights: vec![1.0, 0.5, 2.0], ..RfaObjective::default() };
    let split = rfa_fused::TapSplit { retain_rows: nr, forget_first_token_only: cls };
    let loss = obj.total_rows_as(&taps, split, masked.then_some(&mask), &mus, one_node).unwrap();
    let (r, f) = (scalar(loss.retain.clone()), scalar(loss.forget.clone()));
    let total = loss.total(obj.lambda);
    let grads = total.clone().backward();
    let host = |x: Option<Tensor<B, 3>>| {
        x.map(|x| x.into_data().convert::<f32>().into_vec::<f32>().unwrap()).unwrap_or_default()
    };
    let g = taps
        .iter()
        .flat_map(|tp| [host(tp.pre.grad(&grads)), host(tp.residual.grad(&grads))])
        .collect();
    (vec![scalar(total), r, f], g)
}

#[test]
fn one_node_terms_equal_the_split_objective() {
    for (masked, cls, mu_tokens) in
        [(false, false, 1), (true, false, 4), (true, true, 1), (false, true, 1), (true, false, 1)]
    {
        let (v1, g1) = rows_case(true, masked, cls, mu_tokens, 9);
        let (v2, g2) = rows_case(false, masked, cls, mu_tokens, 9);
        let case = format!("masked {masked} cls {cls} mu tokens {mu_tokens}");
        for (a, b) in v1.iter().zip(&v2) {
            assert_relative_eq!(*a, *b, max_relative = 1e-5);
        }
        assert_eq!(g1.len(), g2.len());
        assert!(
            g1[0].is_empty() && g2[0].is_empty(),
            "{case}: the constant first layer got a gradient"
        );
        for (k, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_eq!(a.len(), b.len(), "{case}: gradient {k}");
            let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(
                err <= 1e-5 * scale,
                "{case}: gradient {k} differs by {err} (largest entry {scale})"
            );
        }
        // Padding and, with `cls`, every token after the first get no forget gradient.
        let pre = &g1[2];
        let at = |r: usize, tok: usize| {
            pre[(r * 4 + tok) * 6..(r * 4 + tok + 1) * 6].iter().all(|x| *x == 0.0)
        };
        assert!(
            (0..3).all(|r| (0..4).all(|tok| at(r, tok))),
            "{case}: retain rows got a pre-trained feature gradient"
        );
        assert_eq!(at(4, 3), masked || cls, "{case}");
        assert_eq!(at(3, 1), cls, "{case}");
    }
}

#[test]
fn a_split_without_retain_or_forget_rows_is_refused() {
    let taps = vec![tap(vec![0.0; 8], vec![1.0; 8], [2, 2, 2])];
    let mu = [t3::<B>(vec![0.0; 2], [1, 1, 2])];
    for retain_rows in [0, 2] {
        let split = rfa_fused::TapSplit { retain_rows, forget_first_token_only: false };
        for one_node in [false, true] {
            let err = RfaObjective::default()
                .total_rows_as(&taps, split, None, &mu, one_node)
                .unwrap_err();
            assert_eq!(err, LossError::EmptySplit { retain: retain_rows, rows: 2 });
        }
    }
}

#[test]
fn no_taps_is_an_error_not_a_panic() {
    let split = rfa_fused::TapSplit { retain_rows: 2, forget_first_token_only: false };
    for one_node in [false, true] {
        let err = RfaObjective::default()
            .total_rows_as::<B>(&[], split, None, &[], one_node)
            .unwrap_err();
        assert_eq!(err, LossError::EmptySplit { retain: 2, rows: 0 });
    }
}

#[test]
fn boundary_targets_are_midpoints_of_the_own_and_the_runner_up_class() {
    let s = stats_without_class_1();
    // Sample 0 (class 0): M0 ranks 3 next → midpoint of (0, 0) and (0, 4). Sample 1 (class 2):
    // 0 next → midpoint of (4, 0) and (0, 0). Sample 2 repeats sample 0's pair: the same row.
    let logits = [9.0, 1.0, 2.0, 3.0, 5.0, 1.0, 9.0, 2.0, 9.0, 1.0, 2.0, 3.0];
    let labels = [0, 2, 0];
    let next = target_classes(TargetStrategy::BoundaryMean, &s, &labels, Some(&logits), 0)
        .unwrap()
        .unwrap();
    assert_eq!(next, vec![3, 0, 3]);
    let (targets, rows) = rfa_loss::boundary_targets(&s, &labels, &next).unwrap();
    assert_eq!(rows, vec![0, 1, 0]);
    let mu = targets.for_batch(3, 1, Some(&rows)).unwrap();
    assert_eq!(
        mu[0].clone().into_data().into_vec::<f32>().unwrap(),
        vec![0.0, 2.0, 2.0, 0.0, 0.0, 2.0]
    );
    // Class-wise forgetting leaves no own class to start from.
    assert_eq!(
        rfa_loss::boundary_targets(&s, &[1], &[0]).unwrap_err(),
        LossError::NoOwnClass { class: 1 }
    );
}
