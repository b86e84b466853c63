//! Metrics on hand-computed values; the membership SVC against scikit-learn's predictions
//! (fixtures/svc_mia.json, made by fixtures/make_svc_fixture.py with scikit-learn 1.9.1).

use approx::assert_relative_eq;
use rfa_eval::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct SvcFixture {
    x_train: Vec<f64>,
    y_train: Vec<u8>,
    x_target: Vec<f64>,
    predictions: Vec<u8>,
    decision_function: Vec<f64>,
}

#[test]
fn svc_reproduces_scikit_learn() {
    let f: SvcFixture = serde_json::from_str(include_str!("fixtures/svc_mia.json")).unwrap();
    let members: Vec<Vec<f64>> =
        f.x_train.iter().zip(&f.y_train).filter(|(_, y)| **y == 1).map(|(x, _)| vec![*x]).collect();
    let non: Vec<Vec<f64>> =
        f.x_train.iter().zip(&f.y_train).filter(|(_, y)| **y == 0).map(|(x, _)| vec![*x]).collect();
    let svc = MembershipSvc::fit(&members, &non, 3.0, None).unwrap();
    let targets: Vec<Vec<f64>> = f.x_target.iter().map(|&x| vec![x]).collect();
    let ours = svc.predict(&targets).unwrap();
    let theirs: Vec<bool> = f.predictions.iter().map(|&p| p == 1).collect();
    let disagree: Vec<(f64, f64)> = (0..ours.len())
        .filter(|&i| ours[i] != theirs[i])
        .map(|i| (f.x_target[i], f.decision_function[i]))
        .collect();
    assert!(
        disagree.is_empty(),
        "predictions differ from scikit-learn at (x, sklearn decision) {disagree:?}"
    );
    let worst = f
        .x_target
        .iter()
        .zip(&f.decision_function)
        .map(|(&x, &d)| (svc.decision(&[x]) - d).abs())
        .fold(0.0, f64::max);
    println!("max |decision - sklearn decision| = {worst:.2e}");
    assert!(worst < 1e-2, "{worst}");
}

#[test]
fn mia_efficacy_counts_forget_samples_called_non_members() {
    // Members are confident (≥ 0.9), non-members are not (≤ 0.5).
    let retain: Vec<f64> = (0..60).map(|i| 0.9 + 0.1 * (i as f64) / 60.0).collect();
    let test: Vec<f64> = (0..40).map(|i| 0.1 + 0.4 * (i as f64) / 40.0).collect();
    // Only the first 40 retain samples are used (|Dt| = 40).
    let forget_seen = vec![0.97; 10];
    let forget_unseen = vec![0.2; 10];
    assert_relative_eq!(mia_efficacy(&retain, &test, &forget_seen).unwrap(), 0.0);
    assert_relative_eq!(mia_efficacy(&retain, &test, &forget_unseen).unwrap(), 100.0);
    let mixed: Vec<f64> = forget_seen.iter().chain(&forget_unseen[..5]).copied().collect();
    assert_relative_eq!(mia_efficacy(&retain, &test, &mixed).unwrap(), 100.0 / 3.0, epsilon = 1e-9);
    assert!(mia_efficacy(&retain, &test, &[]).is_err());
    assert!(mia_efficacy(&retain, &[], &forget_seen).is_err());
}

#[test]
fn accuracy_softmax_and_confidence() {
    let logits = [2.0f32, 0.0, 0.0, 1.0, 5.0, 4.0];
    let r = Rows::new("logits", &logits, 2).unwrap();
    assert_eq!(predictions(&r), vec![0, 1, 0]);
    assert_relative_eq!(accuracy(&r, &[0, 1, 1]).unwrap(), 200.0 / 3.0, epsilon = 1e-9);
    let p = softmax(&r);
    assert_relative_eq!(p[0], 1.0 / (1.0 + (-2.0f32).exp()), epsilon = 1e-6);
    assert_relative_eq!(p[2] + p[3], 1.0, epsilon = 1e-6);
    let c = true_label_confidence(&r, &[0, 0, 1]);
    assert_relative_eq!(c[1], 1.0 / (1.0 + 1.0f64.exp()), epsilon = 1e-6);
    assert_eq!(per_class_accuracy(&r, &[0, 1, 1], 3), vec![Some(100.0), Some(50.0), None]);
    assert!(Rows::new("logits", &logits, 4).is_err());
    assert!(matches!(Rows::new("logits", &[1.0, f32::NAN], 2), Err(EvalError::NonFinite { .. })));
}

#[test]
fn distances_and_divergence() {
    let a = [0.0f32, 0.0];
    let b = [(3.0f32).ln(), 0.0]; // softmax (0.75, 0.25)
    let (ra, rb) = (Rows::new("a", &a, 2).unwrap(), Rows::new("b", &b, 2).unwrap());
    assert_relative_eq!(
        activation_distance(&ra, &rb).unwrap(),
        (2.0 * 0.25f64.powi(2)).sqrt(),
        epsilon = 1e-6
    );
    assert_relative_eq!(activation_distance(&ra, &ra).unwrap(), 0.0);
    let m = [0.625f64, 0.375];
    let kl = |p: [f64; 2]| p[0] * (p[0] / m[0]).ln() + p[1] * (p[1] / m[1]).ln();
    let js = 0.5 * kl([0.5, 0.5]) + 0.5 * kl([0.75, 0.25]);
    assert_relative_eq!(js_divergence(&ra, &rb).unwrap(), js, epsilon = 1e-6);
    assert!(js_divergence(&ra, &rb).unwrap() <= std::f64::consts::LN_2);
    let f1 = [0.0f32, 0.0, 1.0, 1.0];
    let f2 = [3.0f32, 4.0, 1.0, 1.0];
    assert_relative_eq!(
        feature_distance(&Rows::new("f", &f1, 2).unwrap(), &Rows::new("g", &f2, 2).unwrap())
            .unwrap(),
        2.5
    );
    assert!(activation_distance(&ra, &Rows::new("c", &f1, 2).unwrap()).is_err());
}

#[test]
fn average_gap_is_the_mean_absolute_difference() {
    let m = Summary { ua: 10.0, ra: 90.0, ta: 85.0, mia_efficacy: 20.0 };
    let r = Summary { ua: 100.0, ra: 92.0, ta: 84.0, mia_efficacy: 100.0 };
    assert_relative_eq!(m.average_gap(&r), (90.0 + 2.0 + 1.0 + 80.0) / 4.0);
    assert_relative_eq!(r.average_gap(&r), 0.0);
}

#[test]
fn auc_counts_ordered_pairs_and_ties() {
    use rfa_eval::auc;
    // Members all above non-members: 100; below: 0; identical: 50.
    assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), 100.0);
    assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), 0.0);
    assert_eq!(auc(&[1.0, 1.0], &[1.0]).unwrap(), 50.0);
    // Member 2 beats 1, loses to 2.5, ties 2 (½); member 3 beats all three: 4.5 of 6 pairs.
    let a = auc(&[2.0, 3.0], &[1.0, 2.5, 2.0]).unwrap();
    assert!((a - 75.0).abs() < 1e-12, "{a}");
    assert!(auc(&[], &[1.0]).is_err());
    assert!(auc(&[f64::NAN], &[1.0]).is_err());
}

#[test]
fn language_model_scores() {
    use rfa_eval::{mean_nll, min_k_prob, perplexity};
    let lp = [-1.0f32, -3.0, -0.5, -2.0, -0.1];
    assert!((mean_nll(&lp).unwrap() - 6.6 / 5.0).abs() < 1e-6);
    // 20 % of 5 tokens = 1 token: the least likely one.
    assert!((min_k_prob(&lp, 20.0).unwrap() + 3.0).abs() < 1e-6);
    // 50 % of 5 → 3 tokens: −3, −2, −1.
    assert!((min_k_prob(&lp, 50.0).unwrap() + 2.0).abs() < 1e-6);
    assert!(min_k_prob(&[], 20.0).is_none());
    let ppl = perplexity(&[vec![-1.0, -1.0], vec![-2.0]]).unwrap();
    assert!((ppl - (4.0f64 / 3.0).exp()).abs() < 1e-5);
    assert!(perplexity(&[vec![]]).is_none());
}
