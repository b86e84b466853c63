//! `ForeachAdamW` against burn's own `AdamW`: the same parameters after every step, bit for bit.

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use lora_core::{AdamWState, ForeachAdamW, OptimError};
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

fn rebuild(v: &Params) -> Toy<Ad> {
    fn t<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<Ad, D> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }
    Toy {
        w: Param::from_tensor(t(&v[0], [5, 3])),
        bias: Param::from_tensor(t(&v[1], [3])),
        frozen: Param::from_tensor(t(&v[2], [4, 4])).set_require_grad(false),
        inner: Inner {
            a: Param::from_tensor(t(&v[3], [3, 2])),
            c: Param::from_tensor(t(&v[4], [2, 2, 3])),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// Saving the state after `k` steps, then a fresh model and optimizer from the saved files,
    /// continues exactly as the uninterrupted run: what a resumed training relies on.
    #[test]
    fn a_restored_state_continues_bit_for_bit(seed in 0u64..1000, k in 0usize..4, group in 1usize..40) {
        let (steps, wd, lr) = (5, 0.01, 2e-2);
        let uninterrupted = run(seed, steps, wd, lr, group);
        let x = tensor([4, 5], &mut (seed ^ 0xabc));
        let mut m = init(seed);
        let mut opt = ForeachAdamW::<Ad>::new(wd, 1e-8);
        opt.group_numel = group;
        for _ in 0..k {
            let g = GradientsParams::from_grads(loss(&m, &x, true).backward(), &m);
            m = opt.step(lr, m, g).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.state().save(&path).unwrap();
        let again = dir.path().join("again.safetensors");
        opt.state().save(&again).unwrap();
        prop_assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap(), "the same state, the same bytes");
        let loaded = AdamWState::load(&path).unwrap();
        prop_assert_eq!(&loaded, &opt.state());
        let mut m = rebuild(&values(&m));
        let mut resumed = ForeachAdamW::<Ad>::new(wd, 1e-8);
        resumed.group_numel = group;
        resumed.restore(loaded).unwrap();
        for (i, expected) in uninterrupted.iter().enumerate().skip(k) {
            let g = GradientsParams::from_grads(loss(&m, &x, true).backward(), &m);
            m = resumed.step(lr, m, g).unwrap();
            prop_assert_eq!(&values(&m), &expected.0, "step {}", i);
        }
    }
}

#[test]
fn a_state_of_other_parameters_or_settings_is_refused() {
    let x = tensor([4, 5], &mut 11);
    let mut m = init(3);
    let mut opt = ForeachAdamW::<Ad>::new(0.0, 1e-8);
    let g = GradientsParams::from_grads(loss(&m, &x, true).backward(), &m);
    m = opt.step(1e-3, m, g).unwrap();
    let state = opt.state();
    let err = ForeachAdamW::<Ad>::new(0.1, 1e-8).restore(state.clone()).unwrap_err();
    assert!(matches!(err, OptimError::SettingMismatch { field: "weight_decay", .. }), "{err}");
    let mut other = ForeachAdamW::<Ad>::new(0.0, 1e-8);
    other.restore(state).unwrap();
    let g = GradientsParams::from_grads(loss(&m, &x, false).backward(), &m);
    let err = other.step(1e-3, m, g).unwrap_err().to_string();
    assert!(err.contains("inner.c [2, 2, 3]") && err.contains("does not belong"), "{err}");
}

#[test]
fn another_safetensors_file_is_not_taken_for_an_optimizer_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("w".to_string(), lora_core::HostTensor::f32(vec![2], vec![1.0, 2.0]));
    lora_core::tensors::write_safetensors(&path, &t, None).unwrap();
    let err = AdamWState::load(&path).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("`rfa.adamw.v1`"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any header, including groups of absurd sizes: an error naming the file, never a panic.
    #[test]
    fn any_optimizer_header_is_an_answer(header in prop_oneof![
        "\\PC{0,120}",
        (0usize..3, prop_oneof![Just(0usize), 1usize..8, Just(usize::MAX)]).prop_map(|(n, d)| format!(
            r#"{{"steps":1,"beta_1":0.9,"beta_2":0.999,"epsilon":1e-8,"weight_decay":0.0,"groups":[[{}]]}}"#,
            (0..n).map(|i| format!(r#"{{"name":"p{i}","shape":[{d},{d}]}}"#)).collect::<Vec<_>>().join(",")
        )),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let mut t = std::collections::BTreeMap::new();
        t.insert("groups.0.exp_avg".to_string(), lora_core::HostTensor::f32(vec![4], vec![0.0; 4]));
        let meta = std::collections::HashMap::from([("rfa.adamw.v1".to_string(), header)]);
        lora_core::tensors::write_safetensors(&path, &t, Some(meta)).unwrap();
        if let Err(e) = AdamWState::load(&path) {
            prop_assert!(e.to_string().contains("optimizer.safetensors"), "{}", e);
        }
    }
}
