//! Our GELUs (written out for speed): values equal burn's `gelu` / `gelu_approximate`,
//! gradients equal the analytic derivatives computed in f64. (burn-ndarray 0.21's own `gelu`
//! backward is off by up to 7 % of the gradient around x ≈ −3: −0.006148 at x = −3.2178, where
//! Φ(x) + x·φ(x) = −0.006604 — which is one more reason not to use it.)

use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use rfa_models::Activation;

type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

fn value_and_grad(x: &[f32], f: impl Fn(Tensor<AB, 1>) -> Tensor<AB, 1>) -> (Vec<f32>, Vec<f32>) {
    let t = Tensor::<AB, 1>::from_data(TensorData::new(x.to_vec(), [x.len()]), &Default::default()).require_grad();
    let y = f(t.clone());
    let g = y.clone().sum().backward();
    (y.into_data().to_vec().unwrap(), t.grad(&g).unwrap().into_data().to_vec().unwrap())
}

/// erf to 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), enough for f32 comparisons.
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = 1.0 - t * p.exp();
    if x >= 0.0 { r } else { -r }
}

fn gelu_grad(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2)) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn gelu_tanh_grad(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let th = (k * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x)
}

fn check(x: &[f32]) {
    type F = fn(Tensor<AB, 1>) -> Tensor<AB, 1>;
    for (ours, reference, grad) in
        [(Activation::Gelu, gelu as F, gelu_grad as fn(f64) -> f64), (Activation::GeluTanh, gelu_approximate, gelu_tanh_grad)]
    {
        let (y0, _) = value_and_grad(x, reference);
        let (y1, g1) = value_and_grad(x, |t| ours.forward(t));
        for i in 0..x.len() {
            assert!((y0[i] - y1[i]).abs() <= 2e-6 * y0[i].abs().max(1.0), "{ours:?}({}) = {} vs {}", x[i], y1[i], y0[i]);
            let g = grad(x[i] as f64);
            assert!((g - g1[i] as f64).abs() <= 1e-5 * g.abs().max(1.0), "{ours:?}'({}) = {} vs {g}", x[i], g1[i]);
        }
    }
}

#[test]
fn gelus_equal_burns_on_a_sweep_including_the_tails() {
    let x: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).chain([-80.0, -30.0, 30.0, 80.0, 0.0, -0.0, 1e-7]).collect();
    check(&x);
}

proptest! {
    #[test]
    fn gelus_equal_burns_on_random_values(x in prop::collection::vec(-12.0f32..12.0, 1..64)) {
        check(&x);
    }
}
