//! The fused operations on burn `Tensor`s: what model code calls.

use burn::tensor::{Tensor, TensorPrimitive};

use crate::{AttentionMask, FusedOps, GeluKind, TapSplit, TapWeights};

/// GELU of a tensor of any rank.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>, kind: GeluKind) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_gelu(x.into_primitive().tensor(), kind)))
}

/// LayerNorm over the last dimension; see [`FusedOps::fused_layer_norm`].
pub fn layer_norm<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let p = |t: Tensor<B, 1>| t.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_layer_norm(
        x.into_primitive().tensor(),
        p(gamma),
        p(beta),
        eps,
    )))
}

/// RFA's two terms for one adapted layer over a pass of the retain and the forget batch
/// concatenated (docs/rfa-method.md): `[Σ w_r ‖r‖², Σ w_f ‖p + r − mu‖²]`, the first over
/// the retain rows' tokens, the second over the forget rows' (first) tokens, `w` the
/// [`TapWeights`] (uniform: the mean). `pre`, `res` `[rows, tokens, width]`; `mu` broadcasts
/// to the forget rows' `[forget_rows, forget_tokens, width]` and is a constant, as are the
/// weights (no gradient reaches them). Under autodiff always one node with the analytic
/// backward — no split of the taps, so no zero-padded gradients to add up; callers choose
/// between it and the split op-by-op definition by [`FusedOps::tap_terms_as_one_node`], as
/// `rfa_loss::RfaObjective::total_rows` does.
pub fn tap_terms<B: FusedOps>(
    pre: Tensor<B, 3>,
    res: Tensor<B, 3>,
    mu: Tensor<B, 3>,
    weights: [Option<Tensor<B, 2>>; 2],
    split: TapSplit,
) -> Tensor<B, 1> {
    let [rows, ..] = res.dims();
    assert!(
        split.retain_rows > 0 && split.retain_rows < rows,
        "tap_terms: {} retain rows of {rows} leaves a batch empty",
        split.retain_rows
    );
    assert_eq!(
        pre.dims(),
        res.dims(),
        "tap_terms: pre-trained and residual features differ in shape"
    );
    let [wr, wf] = weights.map(|w| w.map(|w| w.into_primitive().tensor()));
    let w = TapWeights { retain: wr, forget: wf };
    let p = |x: Tensor<B, 3>| x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_tap_terms(
        p(pre),
        p(res),
        p(mu),
        w,
        split,
    )))
}

/// Softmax over the last dimension of a tensor of any rank.
pub fn softmax_last<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_softmax(x.into_primitive().tensor())))
}

/// Multi-head attention; see [`FusedOps::fused_attention`].
pub fn attention<B: FusedOps>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Option<Tensor<B, 4>>,
    causal: bool,
    heads: usize,
    scale: f64,
) -> Tensor<B, 3> {
    let p = |x: Tensor<B, 3>| x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention(
        p(q),
        p(k),
        p(v),
        AttentionMask::of(bias, causal),
        heads,
        scale,
    )))
}

/// Multi-head attention over a packed `[batch, seq, 3 · hidden]` projection; see
/// [`FusedOps::fused_attention_packed`].
pub fn attention_packed<B: FusedOps>(
    qkv: Tensor<B, 3>,
    bias: Option<Tensor<B, 4>>,
    causal: bool,
    heads: usize,
    scale: f64,
) -> Tensor<B, 3> {
    let mask = AttentionMask::of(bias, causal);
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention_packed(
        qkv.into_primitive().tensor(),
        mask,
        heads,
        scale,
    )))
}
