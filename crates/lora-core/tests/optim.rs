//! `ForeachAdamW` against burn's own `AdamW`: the same parameters after every step, bit for bit.

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use lora_core::{ForeachAdamW, OptimError};
use proptest::prelude::*;

type Ad = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

#[derive(Module, Debug)]
struct Toy<B: Backend> {
    w: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
    frozen: Param<Tensor<B, 2>>,
    inner: Inner<B>,
}

#[derive(Module, Debug)]
struct Inner<B: Backend> {
    a: Param<Tensor<B, 2>>,
    c: Param<Tensor<B, 3>>,
}

/// Deterministic values without burn's global RNG, which tests running in parallel share.
fn tensor<const D: usize>(shape: [usize; D], state: &mut u64) -> Tensor<Ad, D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn init(seed: u64) -> Toy<Ad> {
    let s = &mut seed.clone();
    Toy {
        w: Param::from_tensor(tensor([5, 3], s)),
        bias: Param::from_tensor(tensor([3], s)),
        frozen: Param::from_tensor(tensor([4, 4], s)).set_require_grad(false),
        inner: Inner {
            a: Param::from_tensor(tensor([3, 2], s)),
            c: Param::from_tensor(tensor([2, 2, 3], s)),
        },
    }
}

/// A loss whose gradients differ in size and sign across parameters and steps; `use_c` drops
/// `inner.c` from the graph.
fn loss(m: &Toy<Ad>, x: &Tensor<Ad, 2>, use_c: bool) -> Tensor<Ad, 1> {
    let h = (m.frozen.val().matmul(x.clone().matmul(m.w.val())) + m.bias.val().unsqueeze()).tanh();
    let y = h.matmul(m.inner.a.val());
    let mut l = y.clone().powf_scalar(2.0).mean() + m.w.val().abs().sum().mul_scalar(0.01);
    if use_c {
        l = l
            + (m.inner.c.val().sum_dim(2).reshape([2, 2]) * y.clone().narrow(0, 0, 2)).sum().sin();
    }
    l
}

fn values(m: &Toy<Ad>) -> Vec<Vec<f32>> {
    let v = |t: TensorData| t.convert::<f32>().into_vec::<f32>().unwrap();
    vec![
        v(m.w.val().into_data()),
        v(m.bias.val().into_data()),
        v(m.frozen.val().into_data()),
        v(m.inner.a.val().into_data()),
        v(m.inner.c.val().into_data()),
    ]
}

/// Runs `steps` steps of burn's AdamW and of ForeachAdamW from the same start; returns both
/// models' parameters after each step.
/// Every parameter tensor's values, in `values`' order.
type Params = Vec<Vec<f32>>;

fn run(
    seed: u64,
    steps: usize,
    weight_decay: f32,
    lr: f64,
    group_numel: usize,
) -> Vec<(Params, Params)> {
    let x = tensor([4, 5], &mut (seed ^ 0xabc));
    let (mut ours, mut theirs) = (init(seed), init(seed));
    let mut burn_opt =
        AdamWConfig::new().with_weight_decay(weight_decay).with_epsilon(1e-8).init::<Ad, Toy<Ad>>();
    let mut foreach = ForeachAdamW::<Ad>::new(weight_decay, 1e-8);
    foreach.group_numel = group_numel;
    let mut out = Vec::new();
    for _ in 0..steps {
        let g = GradientsParams::from_grads(loss(&theirs, &x, true).backward(), &theirs);
        theirs = burn_opt.step(lr, theirs, g);
        let g = GradientsParams::from_grads(loss(&ours, &x, true).backward(), &ours);
        ours = foreach.step(lr, ours, g).unwrap();
        out.push((values(&ours), values(&theirs)));
    }
    assert_eq!(foreach.steps() as usize, steps);
    out
}

#[test]
fn equals_burns_adamw_bit_for_bit() {
    for (i, (ours, theirs)) in run(7, 5, 0.01, 3e-2, 1 << 24).into_iter().enumerate() {
        assert_eq!(ours, theirs, "step {i}");
    }
    // The update moved the trainable tensors and left the frozen one alone.
    let start = values(&init(7));
    let end = run(7, 1, 0.01, 3e-2, 1 << 24).pop().unwrap().0;
    for (k, (s, e)) in start.iter().zip(&end).enumerate() {
        assert_eq!(s == e, k == 2, "tensor {k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Any split into groups, any decay (0 skips burn's multiplication) and rate.
    #[test]
    fn any_grouping_equals_burns_adamw(seed in 0u64..1000, group in 1usize..40, wd in prop_oneof![Just(0.0f32), 1e-4f32..0.1], lr in 1e-4f64..0.1) {
        for (i, (ours, theirs)) in run(seed, 3, wd, lr, group).into_iter().enumerate() {
            prop_assert_eq!(ours, theirs, "step {}", i);
        }
    }
}

#[test]
fn a_changed_parameter_set_is_refused() {
    let x = tensor([4, 5], &mut 11);
    let mut m = init(3);
    let mut opt = ForeachAdamW::<Ad>::new(0.0, 1e-8);
    let g = GradientsParams::from_grads(loss(&m, &x, true).backward(), &m);
    m = opt.step(1e-3, m, g).unwrap();
    let g = GradientsParams::from_grads(loss(&m, &x, false).backward(), &m);
    let err = opt.step(1e-3, m, g).unwrap_err().to_string();
    assert!(
        matches!(err.as_str(), e if e.contains("first: w, bias, inner.a, inner.c") && e.contains("now: w, bias, inner.a)")),
        "{err}"
    );
}

#[test]
fn no_gradient_is_refused() {
    let m = init(3);
    let err = ForeachAdamW::<Ad>::new(0.0, 1e-8).step(1e-3, m, GradientsParams::new()).unwrap_err();
    assert!(matches!(err, OptimError::NoGradients), "{err}");
}
