//! The fused multi-head attention (`rfa_fused::attention`): the context and the gradients
//! of q, k, v against an f64 computation written out here, on ndarray (the fallback in burn's
//! ops) and on flex (the per-head kernel), through autodiff and without it, for operands that
//! are contiguous, column slices of one fused projection, transposed views, or one packed
//! projection (`attention_packed`), with biases of every broadcast shape and fully masked rows,
//! with and without the causal flag.
//! With the `tch` feature also on libtorch (PyTorch's flash / memory-efficient attention kernels).

#[cfg(feature = "tch")]
mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use rfa_fused::{AttentionMask, FusedOps, attention, attention_packed};
use rfa_models::FusedAutodiff;

type Nd = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
type Fx = burn::backend::Autodiff<burn::backend::Flex>;

/// How the operands lie in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    Contiguous,
    /// Column slices of one `[b, t, 2c + cv]` tensor (GPT-2's `c_attn`); needs tq == tk.
    Fused,
    /// `[b, c, t]` tensors viewed as `[b, t, c]`: column stride t.
    Transposed,
    /// One `[b, t, 3c]` tensor given to `attention_packed`; needs tq == tk and dk == dv.
    Packed,
}

#[derive(Debug, Clone)]
struct Case {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    dk: usize,
    dv: usize,
    /// The bias's shape: each dimension the full size or 1.
    bias: Option<[usize; 4]>,
    /// The causal flag: query `i` sees keys `j <= i` only.
    causal: bool,
    layout: Layout,
    seed: u64,
}

/// Deterministic values in [−1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| amp * self.next()).collect()
    }
}

const MASK: f32 = -1.0e30;

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// The weights of the scalar whose gradients are compared: Σ out ⊙ w.
    w: Vec<f32>,
    /// Output elements not compared (see `for_sdpa_kernels`); empty: all compared.
    out_unchecked: Vec<bool>,
}

fn data(c: &Case) -> Data {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ c.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let (ck, cv) = (c.h * c.dk, c.h * c.dv);
    let q = r.vec(c.b * c.tq * ck, 1.5);
    let k = r.vec(c.b * c.tk * ck, 1.5);
    let v = r.vec(c.b * c.tk * cv, 1.0);
    let bias = c.bias.map(|s| {
        let mut values = r.vec(s.iter().product(), 0.5);
        // Masked entries, and with a full query dimension one fully masked row.
        for (i, x) in values.iter_mut().enumerate() {
            if i % 3 == 1 {
                *x = MASK;
            }
        }
        if s[2] > 1 {
            values[s[3]..2 * s[3]].fill(MASK);
        }
        values
    });
    let w = r.vec(c.b * c.tq * cv, 1.0);
    Data { q, k, v, bias, w, out_unchecked: Vec::new() }
}

struct Reference {
    out: Vec<f64>,
    /// Per (batch, head, query row): the max of the scores and the sum of exp(score − max).
    stats: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// What is added to the score at `[batch, head, query, key]`: the bias, broadcast (0 without
/// one), and with the causal flag `MASK` above the diagonal (the generic ops' definition).
fn bias_at(c: &Case, d: &Data, at: [usize; 4]) -> f64 {
    let causal = if c.causal && at[3] > at[2] { MASK as f64 } else { 0.0 };
    causal
        + match (&c.bias, &d.bias) {
            (Some(s), Some(v)) => {
                let idx =
                    at.iter().zip(s).fold(0, |acc, (&x, &n)| acc * n + if n == 1 { 0 } else { x });
                v[idx] as f64
            }
            _ => 0.0,
        }
}

/// Whether query row `i` of (b, h) has every key masked (what the generic ops see: the causal
/// flag's −1e30 above the diagonal included).
fn fully_masked(c: &Case, d: &Data, b: usize, h: usize, i: usize) -> bool {
    (0..c.tk).all(|j| bias_at(c, d, [b, h, i, j]) <= MASK as f64)
}

/// Fully masked rows where a backend's kernels differ from the generic ops, and why the test
/// leaves them out. The uniform weights of such a row are an artefact of the finite mask (f32
/// absorbs the scores into −1e30): with the causal flag, kernels that leave the keys above the
/// diagonal out (flex's blocks, PyTorch's kernels) spread them over the keys the row sees,
/// where the generic ops' −1e30 above the diagonal also takes in the unmasked keys there. And
/// PyTorch's SDPA kernels get such a row's gradients wrong, as PyTorch itself does with a
/// finite mask: its logsumexp, −1e30 + ln tk, rounds to −1e30, so the backward pass weighs
/// every key 1 instead of 1/tk. Only a padding query sees nothing but padding, and rfa's losses
/// leave padding out, so no gradient reaches these rows and nothing reads their output: the
/// test gives them no output gradient (`gradients`) and does not compare their output
/// (`outputs`).
fn exempt_fully_masked_rows(c: &Case, d: &mut Data, gradients: bool, outputs: bool) {
    let cv = c.h * c.dv;
    d.out_unchecked = vec![false; d.w.len()];
    for b in 0..c.b {
        for h in 0..c.h {
            for i in 0..c.tq {
                if fully_masked(c, d, b, h, i) {
                    let row = (b * c.tq + i) * cv + h * c.dv..(b * c.tq + i) * cv + (h + 1) * c.dv;
                    if gradients {
                        d.w[row.clone()].fill(0.0);
                    }
                    d.out_unchecked[row].fill(outputs);
                }
            }
        }
    }
}

/// softmax(q_h k_hᵀ / √dk + bias) v_h per head, and the gradients of Σ out ⊙ w, in f64.
fn reference(c: &Case, d: &Data) -> Reference {
    let (ck, cv) = (c.h * c.dk, c.h * c.dv);
    let scale = 1.0 / (c.dk as f64).sqrt();
    let bias_at = |b, h, i, j| bias_at(c, d, [b, h, i, j]);
    let f = |x: &Vec<f32>| x.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (q, k, v, w) = (f(&d.q), f(&d.k), f(&d.v), f(&d.w));
    let mut r = Reference {
        out: vec![0.0; c.b * c.tq * cv],
        stats: Vec::new(),
        dq: vec![0.0; q.len()],
        dk: vec![0.0; k.len()],
        dv: vec![0.0; v.len()],
    };
    for b in 0..c.b {
        for h in 0..c.h {
            let qi = |i: usize, e: usize| q[(b * c.tq + i) * ck + h * c.dk + e];
            let kj = |j: usize, e: usize| k[(b * c.tk + j) * ck + h * c.dk + e];
            let vj = |j: usize, e: usize| v[(b * c.tk + j) * cv + h * c.dv + e];
            let wi = |i: usize, e: usize| w[(b * c.tq + i) * cv + h * c.dv + e];
            for i in 0..c.tq {
                let s: Vec<f64> = (0..c.tk)
                    .map(|j| {
                        scale * (0..c.dk).map(|e| qi(i, e) * kj(j, e)).sum::<f64>()
                            + bias_at(b, h, i, j)
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                r.stats.extend([m, z]);
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                for e in 0..c.dv {
                    r.out[(b * c.tq + i) * cv + h * c.dv + e] =
                        (0..c.tk).map(|j| p[j] * vj(j, e)).sum();
                }
                let dp: Vec<f64> =
                    (0..c.tk).map(|j| (0..c.dv).map(|e| wi(i, e) * vj(j, e)).sum()).collect();
                let dot: f64 = (0..c.tk).map(|j| dp[j] * p[j]).sum();
                for j in 0..c.tk {
                    let ds = scale * p[j] * (dp[j] - dot);
                    for e in 0..c.dv {
                        r.dv[(b * c.tk + j) * cv + h * c.dv + e] += p[j] * wi(i, e);
                    }
                    for e in 0..c.dk {
                        r.dq[(b * c.tq + i) * ck + h * c.dk + e] += ds * kj(j, e);
                        r.dk[(b * c.tk + j) * ck + h * c.dk + e] += ds * qi(i, e);
                    }
                }
            }
        }
    }
    r
}

fn t3<B: Backend>(v: &[f32], s: [usize; 3], dev: &B::Device) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(v.to_vec(), s), dev)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn close(what: &str, c: &Case, got: &[f32], want: &[f64]) {
    close_except(what, c, got, want, &[]);
}

/// [`close`] on the elements whose `unchecked` flag is not set (`unchecked` empty: all).
fn close_except(what: &str, c: &Case, got: &[f32], want: &[f64], unchecked: &[bool]) {
    assert_eq!(got.len(), want.len(), "{what}: length, {c:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if unchecked.get(i).copied().unwrap_or(false) {
            continue;
        }
        assert!((g as f64 - w).abs() <= 2e-5 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}, {c:?}");
    }
}

struct Operands<B: Backend> {
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
}

/// The tensors that hold the operands in the case's layout (the leaves gradients are taken of).
fn leaves<B: Backend>(c: &Case, d: &Data, dev: &B::Device) -> Vec<Tensor<B, 3>> {
    let (ck, cv) = (c.h * c.dk, c.h * c.dv);
    let (q, k, v) = (
        t3::<B>(&d.q, [c.b, c.tq, ck], dev),
        t3::<B>(&d.k, [c.b, c.tk, ck], dev),
        t3::<B>(&d.v, [c.b, c.tk, cv], dev),
    );
    match c.layout {
        Layout::Contiguous => vec![q, k, v],
        Layout::Fused | Layout::Packed => vec![Tensor::cat(vec![q, k, v], 2)],
        // Stored as [b, width, t].
        Layout::Transposed => [q, k, v]
            .into_iter()
            .map(|x| Tensor::from_data(x.swap_dims(1, 2).into_data(), dev))
            .collect(),
    }
}

/// q, k, v as views of the leaves.
fn operands<B: Backend>(c: &Case, leaves: &[Tensor<B, 3>]) -> Operands<B> {
    let (ck, cv) = (c.h * c.dk, c.h * c.dv);
    match c.layout {
        Layout::Contiguous => {
            Operands { q: leaves[0].clone(), k: leaves[1].clone(), v: leaves[2].clone() }
        }
        Layout::Fused | Layout::Packed => {
            let j = &leaves[0];
            Operands {
                q: j.clone().narrow(2, 0, ck),
                k: j.clone().narrow(2, ck, ck),
                v: j.clone().narrow(2, 2 * ck, cv),
            }
        }
        Layout::Transposed => Operands {
            q: leaves[0].clone().swap_dims(1, 2),
            k: leaves[1].clone().swap_dims(1, 2),
            v: leaves[2].clone().swap_dims(1, 2),
        },
    }
}

fn bias<B: Backend>(c: &Case, d: &Data, dev: &B::Device) -> Option<Tensor<B, 4>> {
    c.bias.map(|s| Tensor::from_data(TensorData::new(d.bias.clone().unwrap(), s), dev))
}

/// The gradients of the leaves, back in the `[b, t, width]` layouts of q, k, v.
fn leaf_grads(c: &Case, grads: Vec<Vec<f32>>) -> [Vec<f32>; 3] {
    let (ck, cv) = (c.h * c.dk, c.h * c.dv);
    match c.layout {
        Layout::Contiguous => grads.try_into().unwrap(),
        Layout::Fused | Layout::Packed => {
            let width = 2 * ck + cv;
            let cols = |lo: usize, n: usize| {
                grads[0].chunks(width).flat_map(|row| row[lo..lo + n].to_vec()).collect()
            };
            [cols(0, ck), cols(ck, ck), cols(2 * ck, cv)]
        }
        Layout::Transposed => {
            // Leaves are [b, w, t]: transpose back.
            let back = |g: &[f32], t: usize, w: usize| {
                let dev = Default::default();
                values(t3::<burn::backend::NdArray<f32>>(g, [c.b, w, t], &dev).swap_dims(1, 2))
            };
            [back(&grads[0], c.tq, ck), back(&grads[1], c.tk, ck), back(&grads[2], c.tk, cv)]
        }
    }
}

/// The attention of the case's operands: `attention_packed` for the packed layout.
fn run<B: FusedOps>(
    c: &Case,
    leaves: &[Tensor<B, 3>],
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 3> {
    if c.layout == Layout::Packed {
        return attention_packed(leaves[0].clone(), bias, c.causal, c.h, scale);
    }
    let ops = operands(c, leaves);
    attention(ops.q, ops.k, ops.v, bias, c.causal, c.h, scale)
}

fn check_on<AB: FusedAutodiff>(c: &Case) {
    check_on_device::<AB>(c, &data(c), &Default::default())
}

fn check_on_device<AB: FusedAutodiff>(c: &Case, d: &Data, dev: &AB::Device) {
    let want = reference(c, d);
    let scale = 1.0 / (c.dk as f64).sqrt();

    // Through autodiff.
    let inputs: Vec<_> = leaves::<AB>(c, d, dev).into_iter().map(|l| l.require_grad()).collect();
    let out = run(c, &inputs, bias::<AB>(c, d, dev), scale);
    close_except("out", c, &values(out.clone()), &want.out, &d.out_unchecked);
    let w = t3::<AB>(&d.w, [c.b, c.tq, c.h * c.dv], dev);
    let g = (out * w).sum().backward();
    let grads =
        inputs.iter().map(|l| values(l.grad(&g).expect("a gradient for every operand"))).collect();
    let [dq, dk, dv] = leaf_grads(c, grads);
    close("dq", c, &dq, &want.dq);
    close("dk", c, &dk, &want.dk);
    close("dv", c, &dv, &want.dv);

    // Without autodiff: the inference path (flex: no weights kept).
    let out =
        run(c, &leaves::<AB::InnerBackend>(c, d, dev), bias::<AB::InnerBackend>(c, d, dev), scale);
    close_except("out (no autodiff)", c, &values(out), &want.out, &d.out_unchecked);
}

fn check(c: &Case) {
    check_on::<Nd>(c);
    let mut d = data(c);
    exempt_fully_masked_rows(c, &mut d, c.causal, c.causal);
    check_on_device::<Fx>(c, &d, &Default::default());
    #[cfg(feature = "tch")]
    {
        let mut d = data(c);
        exempt_fully_masked_rows(c, &mut d, true, c.causal);
        check_on_device::<burn::backend::Autodiff<burn::backend::LibTorch<f32>>>(
            c,
            &d,
            &tch_device(),
        );
    }
}

/// libtorch (PyTorch's SDPA kernels where they take the operands): `RFA_TCH_DEVICE`, as in
/// tests/tch.rs.
#[cfg(feature = "tch")]
fn tch_device() -> burn::backend::libtorch::LibTorchDevice {
    common::tch_device_from_env()
}

/// `[b, heads, tq, tk, dk, dv]`.
fn case([b, h, tq, tk, dk, dv]: [usize; 6], bias: Option<[usize; 4]>, layout: Layout) -> Case {
    Case {
        b,
        h,
        tq,
        tk,
        dk,
        dv,
        bias,
        causal: false,
        layout,
        seed: (b * 31 + h * 7 + tq * 5 + tk * 3 + dk + dv) as u64,
    }
}

fn causal(c: Case) -> Case {
    Case { causal: true, ..c }
}

#[test]
fn attention_matches_f64_for_every_bias_shape_and_layout() {
    let (b, h, t, dk) = (2, 3, 5, 4);
    let biases = [
        None,
        Some([b, 1, 1, t]),
        Some([1, 1, t, t]),
        Some([b, 1, t, t]),
        Some([b, h, t, t]),
        Some([1, h, 1, t]),
        Some([b, 1, t, 1]),
    ];
    for bias in biases {
        for layout in [Layout::Contiguous, Layout::Fused, Layout::Transposed, Layout::Packed] {
            check(&case([b, h, t, t, dk, dk], bias, layout));
            check(&causal(case([b, h, t, t, dk, dk], bias, layout)));
        }
    }
}

#[test]
fn attention_with_different_lengths_and_widths() {
    check(&case([2, 2, 3, 7, 5, 3], Some([2, 1, 1, 7]), Layout::Contiguous));
    check(&case([1, 4, 9, 2, 2, 6], Some([1, 4, 9, 2]), Layout::Transposed));
    check(&case([3, 1, 1, 1, 8, 8], None, Layout::Fused));
    // Causal with fewer queries than keys (top-left: query i sees keys 0..=i) and more.
    check(&causal(case([2, 2, 3, 7, 4, 4], Some([2, 1, 1, 7]), Layout::Contiguous)));
    check(&causal(case([1, 3, 9, 4, 8, 8], None, Layout::Contiguous)));
}

#[test]
fn attention_at_model_like_sizes() {
    // Long enough rows for the vectorised loops and gemm's blocking; a causal + padding bias,
    // then GPT-2's call: padding as the bias and the causal flag.
    check(&case([2, 4, 70, 70, 16, 16], Some([2, 1, 70, 70]), Layout::Fused));
    check(&case([2, 4, 70, 70, 16, 16], Some([2, 1, 70, 70]), Layout::Packed));
    check(&causal(case([2, 4, 70, 70, 16, 16], Some([2, 1, 1, 70]), Layout::Packed)));
    // Several causal row blocks, with more queries than keys and fewer.
    check(&causal(case([1, 2, 150, 140, 8, 8], Some([1, 1, 1, 140]), Layout::Contiguous)));
    check(&causal(case([1, 2, 70, 130, 8, 16], None, Layout::Transposed)));
    check(&case([1, 2, 129, 129, 40, 24], Some([1, 1, 1, 129]), Layout::Contiguous));
}

/// `skip_fully_masked`: see `exempt_fully_masked_rows` (under the causal flag flex's row
/// statistics are over the keys a row sees).
fn stats_on<B: FusedOps>(c: &Case, skip_fully_masked: bool) {
    let d = data(c);
    let want = reference(c, &d);
    let dev = Default::default();
    let ops = operands(c, &leaves::<B>(c, &d, &dev));
    let p = |t: Tensor<B, 3>| t.into_primitive().tensor();
    let mask = AttentionMask {
        bias: bias::<B>(c, &d, &dev).map(|b| b.into_primitive().tensor()),
        causal: c.causal,
    };
    let (_, stats) = B::fused_attention_stats(
        p(ops.q),
        p(ops.k),
        p(ops.v),
        mask,
        c.h,
        1.0 / (c.dk as f64).sqrt(),
    );
    let stats: Tensor<B, 4> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(stats));
    assert_eq!(stats.dims(), [c.b, c.h, c.tq, 2]);
    let rows = (0..c.b * c.h * c.tq).map(|r| {
        skip_fully_masked && fully_masked(c, &d, r / (c.h * c.tq), r / c.tq % c.h, r % c.tq)
    });
    let unchecked: Vec<bool> = rows.flat_map(|skip| [skip, skip]).collect();
    close_except("stats", c, &values(stats), &want.stats, &unchecked);
}

#[test]
fn fused_attention_stats_are_each_rows_max_and_sum() {
    // With masked keys and a fully masked row (max −1e30, sum = tk: a uniform row).
    let c = case([2, 2, 4, 6, 3, 3], Some([2, 1, 4, 6]), Layout::Contiguous);
    stats_on::<burn::backend::Flex>(&c, false);
    stats_on::<burn::backend::NdArray<f32>>(&c, false);
    let c = causal(c);
    stats_on::<burn::backend::Flex>(&c, true);
    stats_on::<burn::backend::NdArray<f32>>(&c, false);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn attention_matches_f64_on_random_sizes(
        b in 1usize..3, h in 1usize..4, tq in 1usize..12, tk in 1usize..12, dk in 1usize..7, dv in 1usize..7,
        bias_kind in 0usize..5, layout_kind in 0usize..4, causal in any::<bool>(), seed in any::<u64>(),
    ) {
        let layout = match layout_kind {
            0 => Layout::Contiguous,
            1 if tq == tk => Layout::Fused,
            3 if tq == tk && dk == dv => Layout::Packed,
            _ => Layout::Transposed,
        };
        let bias = match bias_kind {
            0 => None,
            1 => Some([b, 1, 1, tk]),
            2 => Some([1, 1, tq, tk]),
            3 => Some([b, h, tq, tk]),
            _ => Some([1, h, tq, 1]),
        };
        check(&Case { b, h, tq, tk, dk, dv, bias, causal, layout, seed });
    }
}
