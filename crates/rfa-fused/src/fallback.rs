//! The definitions in burn's tensor ops (any backend, any float type): what ndarray and the
//! cubecl backends run, and what the other backends fall back to outside f32.

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::{
    AttentionDims, AttentionMask, AttentionSaved, FusedOps, GeluKind, LayerNormSaved,
    SQRT_2_OVER_PI, TANH_CUBIC,
};
use crate::{TapSplit, TapTermsSaved, TapWeights};

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// Element-wise work is done on a flat view; the shape is restored at the end.
fn flat<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 1>, Shape) {
    let shape = x.shape();
    let n = shape.num_elements();
    (tensor(B::float_reshape(x, Shape::new([n]))), shape)
}

fn unflat<B: Backend>(x: Tensor<B, 1>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(x.into_primitive().tensor(), shape)
}

/// Rows of the last dimension: `[rows, last]`.
fn rows<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 2>, Shape) {
    let shape = x.shape();
    let last = shape[shape.num_dims() - 1];
    (tensor(B::float_reshape(x, Shape::new([shape.num_elements() / last.max(1), last]))), shape)
}

pub fn gelu<B: Backend>(x: FloatTensor<B>, kind: GeluKind) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let y = match kind {
        GeluKind::Erf => (x.clone() * (x * std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0))
            .mul_scalar(0.5),
        // ½(1 + tanh u) = σ(2u), exact in real arithmetic and one op cheaper.
        GeluKind::Tanh => {
            let cube = x.clone() * x.clone() * x.clone();
            x.clone() * sigmoid((cube.mul_scalar(TANH_CUBIC) + x).mul_scalar(2.0 * SQRT_2_OVER_PI))
        }
    };
    unflat(y, shape)
}

pub fn gelu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    kind: GeluKind,
) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let (grad, _) = flat::<B>(grad);
    let d = match kind {
        // Φ(x) + x·φ(x)
        GeluKind::Erf => {
            let cdf =
                (x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
            let pdf = (x.clone() * x.clone())
                .mul_scalar(-0.5)
                .exp()
                .mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            cdf + x * pdf
        }
        // s + x·s(1 − s)·2u', s = σ(2u), u = k(x + c·x³)
        GeluKind::Tanh => {
            let x2 = x.clone() * x.clone();
            let u = (x2.clone().mul_scalar(TANH_CUBIC).add_scalar(1.0) * x.clone())
                .mul_scalar(SQRT_2_OVER_PI);
            let s = sigmoid(u.mul_scalar(2.0));
            let du =
                x2.mul_scalar(3.0 * TANH_CUBIC).add_scalar(1.0).mul_scalar(2.0 * SQRT_2_OVER_PI);
            s.clone() + x * s.clone() * s.neg().add_scalar(1.0) * du
        }
    };
    unflat(grad * d, shape)
}

pub fn softmax_last<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    B::float_reshape(softmax(x, 1).into_primitive().tensor(), shape)
}

pub fn softmax_last_backward<B: Backend>(
    y: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let (y, shape) = rows::<B>(y);
    let (grad, _) = rows::<B>(grad);
    let dot = (grad.clone() * y.clone()).sum_dim(1);
    B::float_reshape((y * (grad - dot)).into_primitive().tensor(), shape)
}

/// Along the last dimension of a rank-`rank` shape: `[1, …, 1, d]`.
fn row_vector<B: Backend>(v: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let d = v.shape().num_elements();
    B::float_reshape(
        v,
        Shape::from((0..rank).map(|i| if i + 1 == rank { d } else { 1 }).collect::<Vec<_>>()),
    )
}

/// burn's `layer_norm` op for op (the same output), keeping x̂ and the standard deviation.
pub fn layer_norm_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, LayerNormSaved<B>) {
    let rank = x.shape().num_dims();
    let last = rank - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let std = B::float_sqrt(B::float_add_scalar(var, eps.into()));
    let normalized = B::float_div(centered, std.clone());
    let y = B::float_add(
        B::float_mul(normalized.clone(), row_vector::<B>(gamma.clone(), rank)),
        row_vector::<B>(beta.clone(), rank),
    );
    (y, LayerNormSaved { kept: normalized, stats: vec![std], gamma, beta })
}

/// dx = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / std with g = grad ⊙ gamma; dgamma = Σ grad ⊙ x̂
/// and dbeta = Σ grad over every dimension but the last.
pub fn layer_norm_backward<B: Backend>(
    saved: LayerNormSaved<B>,
    grad: FloatTensor<B>,
    need: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let (xhat, shape) = rows::<B>(saved.kept);
    let (grad, _) = rows::<B>(grad);
    let gamma = tensor::<B, 1>(saved.gamma).unsqueeze::<2>();
    let std =
        tensor::<B, 2>(B::float_reshape(saved.stats[0].clone(), Shape::new([xhat.dims()[0], 1])));
    let dx = need[0].then(|| {
        let g = grad.clone() * gamma;
        let m1 = g.clone().mean_dim(1);
        let m2 = (g.clone() * xhat.clone()).mean_dim(1);
        B::float_reshape(((g - m1 - xhat.clone() * m2) / std).into_primitive().tensor(), shape)
    });
    let dgamma = need[1]
        .then(|| (grad.clone() * xhat).sum_dim(0).flatten::<1>(0, 1).into_primitive().tensor());
    let dbeta = need[2].then(|| grad.sum_dim(0).flatten::<1>(0, 1).into_primitive().tensor());
    [dx, dgamma, dbeta]
}

/// `[Σ w ‖x‖²]` over a `[rows, tokens, width]` block: the weighted sum, or the mean.
fn weighted_sq<B: Backend>(x: Tensor<B, 3>, w: &Option<FloatTensor<B>>) -> Tensor<B, 1> {
    let [a, b, _] = x.dims();
    let sq = (x.clone() * x).sum_dim(2).reshape([a, b]);
    match w {
        Some(w) => (sq * tensor::<B, 2>(w.clone())).sum(),
        None => sq.mean(),
    }
}

/// [`super::tap_terms`] in burn's tensor ops, and what its backward pass keeps.
pub fn tap_terms_forward<B: Backend>(
    pre: FloatTensor<B>,
    res: FloatTensor<B>,
    mu: FloatTensor<B>,
    weights: TapWeights<B>,
    split: TapSplit,
) -> (FloatTensor<B>, TapTermsSaved<B>) {
    let (pre, res, mu) = (tensor::<B, 3>(pre), tensor::<B, 3>(res), tensor::<B, 3>(mu));
    let shape = res.dims();
    let [rows, tokens, _] = shape;
    let (nr, nf) = (split.retain_rows, rows - split.retain_rows);
    let tf = if split.forget_first_token_only { 1 } else { tokens };
    let forget = |x: Tensor<B, 3>| {
        let x = x.narrow(0, nr, nf);
        if tf < tokens { x.narrow(1, 0, tf) } else { x }
    };
    let res_retain = res.clone().narrow(0, 0, nr);
    let diff = forget(pre) + forget(res) - mu;
    let out = Tensor::cat(
        vec![
            weighted_sq(res_retain.clone(), &weights.retain),
            weighted_sq(diff.clone(), &weights.forget),
        ],
        0,
    );
    let saved = TapTermsSaved {
        res_retain: res_retain.into_primitive().tensor(),
        diff: diff.into_primitive().tensor(),
        weights,
        shape,
    };
    (out.into_primitive().tensor(), saved)
}

/// The gradients of `pre` (when `need_pre`) and `res` from the terms' gradient `[2]`:
/// `2 w_r g_0 r` on the retain rows, `2 w_f g_1 (p + r − mu)` on the forget rows' tokens
/// (both for `res`, the second alone for `pre`), zero elsewhere.
pub fn tap_terms_backward<B: Backend>(
    saved: TapTermsSaved<B>,
    grad: FloatTensor<B>,
    need_pre: bool,
) -> [Option<FloatTensor<B>>; 2] {
    let g = tensor::<B, 1>(grad);
    let [rows, tokens, width] = saved.shape;
    let scaled = |x: FloatTensor<B>, w: Option<FloatTensor<B>>, gi: Tensor<B, 1>| {
        let x = tensor::<B, 3>(x);
        let [a, b, _] = x.dims();
        let c = match w {
            Some(w) => {
                tensor::<B, 2>(w).unsqueeze_dim::<3>(2) * gi.reshape([1, 1, 1]).mul_scalar(2.0)
            }
            None => gi.reshape([1, 1, 1]).mul_scalar(2.0 / (a * b) as f64),
        };
        x * c
    };
    let g_retain = scaled(saved.res_retain, saved.weights.retain, g.clone().narrow(0, 0, 1));
    let g_forget = scaled(saved.diff, saved.weights.forget, g.narrow(0, 1, 1));
    let nr = g_retain.dims()[0];
    let [nf, tf, _] = g_forget.dims();
    let device = g_forget.device();
    let g_forget = if tf < tokens {
        Tensor::zeros([nf, tokens, width], &device).slice_assign([0..nf, 0..tf, 0..width], g_forget)
    } else {
        g_forget
    };
    debug_assert_eq!(nr + nf, rows);
    let d_pre = need_pre.then(|| {
        Tensor::cat(vec![Tensor::zeros([nr, tokens, width], &device), g_forget.clone()], 0)
            .into_primitive()
            .tensor()
    });
    let d_res = Tensor::cat(vec![g_retain, g_forget], 0).into_primitive().tensor();
    [d_pre, Some(d_res)]
}

/// q, k, v: views of the three equal column blocks of `[b, t, 3c]`.
pub fn unpack<B: Backend>(qkv: FloatTensor<B>) -> [FloatTensor<B>; 3] {
    let x = tensor::<B, 3>(qkv);
    let w = x.dims()[2];
    assert!(w.is_multiple_of(3), "packed attention: width {w} is not 3 × the hidden size");
    [0, 1, 2].map(|i| x.clone().narrow(2, i * w / 3, w / 3).into_primitive().tensor())
}

/// `[b, t, heads · d]` → `[b, heads, t, d]` (a view where the backend allows).
fn split_heads<B: Backend>(x: FloatTensor<B>, heads: usize) -> Tensor<B, 4> {
    let [b, t, c] = tensor::<B, 3>(x.clone()).dims();
    tensor::<B, 3>(x).reshape([b, t, heads, c / heads]).swap_dims(1, 2)
}

fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> FloatTensor<B> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d]).into_primitive().tensor()
}

/// Scores `[b, heads, tq, tk]`: `q_h k_hᵀ · scale + bias`.
fn scores<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    heads: usize,
    scale: f64,
) -> Tensor<B, 4> {
    let scores = split_heads::<B>(q, heads)
        .matmul(split_heads::<B>(k, heads).swap_dims(2, 3))
        .mul_scalar(scale);
    match bias {
        // The bias is built in f32; bf16 scores take it in their own type (libtorch would
        // promote the sum to f32 and then fail on the f32 × bf16 product with v).
        Some(bias) => {
            let dt = scores.dtype();
            scores + lora_core::to_dtype(tensor::<B, 4>(bias), dt)
        }
        None => scores,
    }
}

pub fn attention<B: FusedOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: AttentionMask<B>,
    heads: usize,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let d = AttentionDims::new(
        &q.shape(),
        &k.shape(),
        &v.shape(),
        mask.bias.as_ref().map(|b| b.shape()).as_ref(),
        heads,
    );
    let bias = mask.folded(d.tq, d.tk, &B::float_device(&q)).bias;
    // burn's softmax, op for op (so ndarray's numbers do not move), keeping its max and sum.
    let s = scores::<B>(q, k, bias, heads, scale);
    let max = s.clone().max_dim(3);
    let e = (s - max.clone()).exp();
    let sum = e.clone().sum_dim(3);
    let probs = e / sum.clone();
    let out = merge_heads(probs.matmul(split_heads::<B>(v, heads)));
    (out, Tensor::cat(vec![max, sum], 3).into_primitive().tensor())
}

pub fn attention_backward<B: FusedOps>(
    saved: AttentionSaved<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let saved = saved.unpacked();
    let heads = saved.heads();
    let [q, k, v] = saved.operands();
    let (tq, tk) = (q.shape()[1], k.shape()[1]);
    let bias = saved.mask.folded(tq, tk, &B::float_device(&q)).bias;
    let stats = tensor::<B, 4>(saved.stats);
    let (max, sum) = (stats.clone().narrow(3, 0, 1), stats.narrow(3, 1, 1));
    let probs = (scores::<B>(q.clone(), k.clone(), bias, heads, saved.scale) - max).exp() / sum;
    let grad = split_heads::<B>(grad, heads);
    let dv = probs.clone().swap_dims(2, 3).matmul(grad.clone());
    let dprobs = grad.matmul(split_heads::<B>(v, heads).swap_dims(2, 3));
    let dscores = tensor::<B, 4>(B::fused_softmax_backward(
        probs.into_primitive().tensor(),
        dprobs.into_primitive().tensor(),
    ))
    .mul_scalar(saved.scale);
    let dq = dscores.clone().matmul(split_heads::<B>(k, heads));
    let dk = dscores.swap_dims(2, 3).matmul(split_heads::<B>(q, heads));
    [merge_heads(dq), merge_heads(dk), merge_heads(dv)]
}
