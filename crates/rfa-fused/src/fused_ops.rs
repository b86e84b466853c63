//! The [`FusedOps`] trait: what the models call, with defaults in burn's tensor ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::{
    AttentionMask, AttentionSaved, GeluKind, LayerNormSaved, TapSplit, TapWeights, fallback,
};

/// The fused operations the models call; see the module documentation.
pub trait FusedOps: Backend {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        fallback::gelu::<Self>(x, kind)
    }

    /// `grad · gelu'(x)`.
    fn fused_gelu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: GeluKind,
    ) -> FloatTensor<Self> {
        fallback::gelu_backward::<Self>(x, grad, kind)
    }

    /// Softmax over the last dimension.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        fallback::softmax_last::<Self>(x)
    }

    /// The input gradient of the softmax from its output `y`: `y · (grad − Σ grad·y)`.
    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        fallback::softmax_last_backward::<Self>(y, grad)
    }

    /// Multi-head scaled dot-product attention on `[batch, seq, heads · d]` projections:
    /// `softmax(q_h k_hᵀ · scale + bias) v_h` per head, heads concatenated again in the output
    /// `[batch, seq_q, heads · d_v]` — the layout the output projection reads. `q` `[b, tq, c]`,
    /// `k` `[b, tk, c]`, `v` `[b, tk, cv]`; `bias` broadcasts to `[b, heads, tq, tk]` and is a
    /// constant (masks): no gradient reaches it. `causal`: query `i` also sees only keys
    /// `j <= i` (top-left aligned; a causal model's own mask, which kernels can skip instead of
    /// reading: the generic ops add it to the bias as [`MASK_BIAS`]).
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::fused_attention_stats(q, k, v, mask, heads, scale).0
    }

    /// [`FusedOps::fused_attention`] and, per query row, the max of its scores and the sum of
    /// their exponentials `[b, heads, tq, 2]`: the backward pass recomputes the attention
    /// weights from them instead of keeping `b · heads · tq · tk` values per layer.
    fn fused_attention_stats(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        fallback::attention::<Self>(q, k, v, mask, heads, scale)
    }

    /// Whether [`FusedOps::fused_attention_backward`] reads the forward pass's output
    /// ([`AttentionSaved::out`]): the kernels that recompute the weights from a per-row
    /// logsumexp (PyTorch's SDPA) need `Σ dO ⊙ O` per row. Off by default, so that the other
    /// backends do not keep one more `[b, tq, cv]` tensor per layer.
    fn attention_backward_uses_output() -> bool {
        false
    }

    /// The gradients of `q`, `k` and `v` from the output's gradient.
    fn fused_attention_backward(
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        fallback::attention_backward::<Self>(saved, grad)
    }

    /// Attention over a packed projection `[b, t, 3c]`: q, k and v side by side (GPT-2's
    /// `c_attn`). One autodiff node for the projection, so that its gradient is written once
    /// instead of as three zero-padded slices that are then added up.
    fn fused_attention_packed(
        qkv: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        let [q, k, v] = fallback::unpack::<Self>(qkv);
        Self::fused_attention(q, k, v, mask, heads, scale)
    }

    /// The gradient of the packed projection (`saved.q` holds it, `k` and `v` are unused):
    /// those of q, k and v side by side.
    fn fused_attention_packed_backward(
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::float_cat(Self::fused_attention_backward(saved.unpacked(), grad).to_vec(), 2)
    }

    /// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · gamma + beta`
    /// (Hugging Face's and burn's). By default the backend's own `layer_norm`, which is what
    /// burn's `nn::LayerNorm` runs.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }

    /// Whether training records LayerNorm as one autodiff node over
    /// [`FusedOps::fused_layer_norm_forward`] / [`FusedOps::fused_layer_norm_backward`]: on
    /// libtorch (PyTorch's kernel forward) and burn's cubecl backends (fewer kernel launches).
    /// Off by default: autodiff then differentiates burn's definition op by op, exactly as with
    /// burn's `nn::LayerNorm` (9 element-wise passes and reductions forward, about 20 backward,
    /// keeping two activations), so the CPU backends' numbers do not move.
    fn layer_norm_as_one_node() -> bool {
        false
    }

    /// The forward pass of the one-node LayerNorm and what its backward pass keeps. By default
    /// burn's definition op for op (the same output) keeping the normalised input and the
    /// per-row standard deviation.
    fn fused_layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, LayerNormSaved<Self>) {
        fallback::layer_norm_forward::<Self>(x, gamma, beta, eps)
    }

    /// The gradients of x, gamma and beta (those `need`ed: LayerNorm weights are frozen under
    /// LoRA) from the output's gradient.
    fn fused_layer_norm_backward(
        saved: LayerNormSaved<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        fallback::layer_norm_backward::<Self>(saved, grad, need)
    }

    /// Whether RFA's objective records each tap's two terms as one autodiff node
    /// ([`tap_terms`]): on libtorch and burn's cubecl backends, where every operation is a
    /// kernel launch. Off by default: the objective then splits the taps into retain and forget
    /// rows and autodiff differentiates its definition op by op (each split row block costs a
    /// zero fill, a slice-assign and an add in the backward pass), so the CPU backends' numbers
    /// do not move.
    fn tap_terms_as_one_node() -> bool {
        false
    }

    /// Whether, with the frozen weights in bf16 (`--dtype bf16`), the blocks' interiors run in
    /// bf16 as under PyTorch's autocast: the input of the projections is cast once, their
    /// outputs, the adapters' products, attention and the MLP's activation stay bf16, and only
    /// the residual stream, the norms and the objective are f32
    /// (`rfa_models::precision::interior`).
    /// On libtorch (PyTorch's bf16 kernels: flash attention, GELU). Off by default: the
    /// activations stay f32 and each frozen product casts its input to bf16 and its output
    /// back — burn-cuda's bf16 path as measured, whose bf16 element-wise kernels are untested.
    fn bf16_activations() -> bool {
        false
    }

    /// [`tap_terms`]'s value, `[2]`.
    fn fused_tap_terms(
        pre: FloatTensor<Self>,
        res: FloatTensor<Self>,
        mu: FloatTensor<Self>,
        w: TapWeights<Self>,
        split: TapSplit,
    ) -> FloatTensor<Self> {
        fallback::tap_terms_forward::<Self>(pre, res, mu, w, split).0
    }
}
