//! Operations the models run as one op with a hand-written backward, where a backend is worth
//! it: the GELUs, the softmax over the last dimension, multi-head attention, LayerNorm (one
//! op on libtorch and the GPU backends; see [`FusedOps::layer_norm_as_one_node`]), and RFA's
//! per-layer objective terms ([`tap_terms`]; likewise).
//!
//! Why not burn's own: burn 0.21's `gelu` backward is the tanh approximation's derivative even
//! for the exact GELU (up to 7 % wrong near x ≈ −3), and written in burn's element-wise ops both
//! activations and the softmax cost many passes over memory — forward and again in autodiff's
//! backward, each keeping its intermediates. On burn-flex those ops (`exp`, `erf`, `tanh`) are
//! scalar libm calls on one core: the GPT-2 MLP's GELU took 98 ms forward + backward on
//! [8, 128, 3072] (`cargo xtask bench-ops --backends flex`), ×12 layers ≈ 1.2 s of a 5.7 s step.
//!
//! [`FusedOps`] is a burn backend extension: every method has a default written in burn's
//! tensor ops (what ndarray and CUDA run), [`Autodiff`] records one node per call whose backward
//! is the analytic derivative (so every backend gets the right GELU gradient and keeps only the
//! input), and burn-flex overrides the f32 case with single-pass, multi-threaded, vectorised
//! loops ([`kernels`]) and, for attention, per-head products on strided views
//! (`ops/attention.rs`, which says why).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Bool, Bytes, DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::{Flex, FlexTensor, Layout};

/// Which GELU: Hugging Face's `gelu` (erf) or the tanh approximation (`gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluKind {
    Erf,
    Tanh,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const TANH_CUBIC: f64 = 0.044715;

/// The fused operations the models call; see the module documentation.
pub trait FusedOps: Backend {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        fallback::gelu::<Self>(x, kind)
    }

    /// `grad · gelu'(x)`.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
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
    fn fused_attention_backward(saved: AttentionSaved<Self>, grad: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        fallback::attention_backward::<Self>(saved, grad)
    }

    /// Attention over a packed projection `[b, t, 3c]`: q, k and v side by side (GPT-2's
    /// `c_attn`). One autodiff node for the projection, so that its gradient is written once
    /// instead of as three zero-padded slices that are then added up.
    fn fused_attention_packed(qkv: FloatTensor<Self>, mask: AttentionMask<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        let [q, k, v] = fallback::unpack::<Self>(qkv);
        Self::fused_attention(q, k, v, mask, heads, scale)
    }

    /// The gradient of the packed projection (`saved.q` holds it, `k` and `v` are unused):
    /// those of q, k and v side by side.
    fn fused_attention_packed_backward(saved: AttentionSaved<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_cat(Self::fused_attention_backward(saved.unpacked(), grad).to_vec(), 2)
    }

    /// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · gamma + beta`
    /// (Hugging Face's and burn's). By default the backend's own `layer_norm`, which is what
    /// burn's `nn::LayerNorm` runs.
    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
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
    fn fused_layer_norm_backward(saved: LayerNormSaved<Self>, grad: FloatTensor<Self>, need: [bool; 3]) -> [Option<FloatTensor<Self>>; 3] {
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
    /// the residual stream, the norms and the objective are f32 ([`crate::common::interior`]).
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

/// Where a step's concatenated batch splits for RFA's objective: rows `0..retain_rows` are
/// the retain batch, the rest the forget batch; the forget term reads every token or only the
/// first (`unlearn.forget_tokens = "cls"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapSplit {
    pub retain_rows: usize,
    pub forget_first_token_only: bool,
}

/// Per-token weights of the two terms, `[retain_rows, tokens]` and `[forget_rows, forget
/// tokens]`, each summing to 1 (a padding mask divided by its count); `None`: the mean over
/// every token.
#[derive(Debug, Clone)]
pub struct TapWeights<B: Backend> {
    pub retain: Option<FloatTensor<B>>,
    pub forget: Option<FloatTensor<B>>,
}

/// What the tap-terms node's backward pass keeps: the retain rows' residual and the forget
/// rows' `p + r − mu` (the inputs of the two squares, as the op-by-op graph keeps them).
#[derive(Debug, Clone)]
pub struct TapTermsSaved<B: Backend> {
    pub res_retain: FloatTensor<B>,
    pub diff: FloatTensor<B>,
    pub weights: TapWeights<B>,
    /// `[rows, tokens, width]` of the taps.
    pub shape: [usize; 3],
}

/// What the one-node LayerNorm's backward pass keeps; the backend's forward pass chooses.
#[derive(Debug, Clone)]
pub struct LayerNormSaved<B: Backend> {
    /// The generic ops keep the normalised input x̂, libtorch the input x.
    pub kept: FloatTensor<B>,
    /// Per-row statistics `[.., 1]`: the generic ops' standard deviation, libtorch's mean and
    /// reciprocal standard deviation.
    pub stats: Vec<FloatTensor<B>>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// The attention's mask: an additive bias and/or the causal mask; see [`FusedOps::fused_attention`].
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    pub bias: Option<FloatTensor<B>>,
    pub causal: bool,
}

impl<B: Backend> AttentionMask<B> {
    pub fn none() -> Self {
        Self { bias: None, causal: false }
    }

    fn of(bias: Option<Tensor<B, 4>>, causal: bool) -> Self {
        Self { bias: bias.map(|b| b.into_primitive().tensor()), causal }
    }

    /// The causal mask folded into the bias (`causal` false after): what kernels without a
    /// causal mode of their own run. `[1, 1, tq, tk]` alone, or the sum with the bias (causal
    /// first, as the models added them before the flag existed, so the numbers do not move).
    pub fn folded(self, tq: usize, tk: usize, device: &B::Device) -> Self {
        if !self.causal {
            return self;
        }
        // Built on the device (a host copy per layer and pass would cost a transfer on a GPU).
        let above = Tensor::<B, 4, Bool>::tril_mask([1, 1, tq, tk], 0, device);
        let causal = Tensor::<B, 4>::zeros([1, 1, tq, tk], device).mask_fill(above, MASK_BIAS);
        let bias = match self.bias {
            Some(bias) => {
                let bias: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(bias));
                causal + bias
            }
            None => causal,
        };
        Self { bias: Some(bias.into_primitive().tensor()), causal: false }
    }
}

/// The additive bias of a masked position: finite, so that a row with every key masked has
/// uniform weights instead of NaN (what Hugging Face's models use is `finfo.min`; any value
/// whose exponential underflows does the same).
pub const MASK_BIAS: f32 = -1.0e30;

/// What the attention's backward pass keeps: the operands, the mask, the per-row statistics of
/// [`FusedOps::fused_attention_stats`], the scale, and the output where the backend asks for it
/// ([`FusedOps::attention_backward_uses_output`]). For the packed op `q` is the packed
/// projection and `k`, `v` are `None`.
#[derive(Debug, Clone)]
pub struct AttentionSaved<B: Backend> {
    pub q: FloatTensor<B>,
    pub k: Option<FloatTensor<B>>,
    pub v: Option<FloatTensor<B>>,
    pub mask: AttentionMask<B>,
    /// `[b, heads, rows, n]`: the generic ops' `n = 2` (row max, sum of exponentials); a
    /// backend's own kernels may keep other per-row numbers (libtorch: `n = 1`, logsumexp).
    pub stats: FloatTensor<B>,
    pub scale: f64,
    pub out: Option<FloatTensor<B>>,
}

impl<B: Backend> AttentionSaved<B> {
    pub fn heads(&self) -> usize {
        self.stats.shape()[1]
    }

    /// q, k, v as separate views (of the packed projection if that is what `q` holds).
    pub fn unpacked(self) -> Self {
        match (&self.k, &self.v) {
            (Some(_), Some(_)) => self,
            _ => {
                let [q, k, v] = fallback::unpack::<B>(self.q);
                Self { q, k: Some(k), v: Some(v), ..self }
            }
        }
    }

    /// `[q, k, v]`; panics for a packed record (call [`AttentionSaved::unpacked`] first).
    pub fn operands(&self) -> [FloatTensor<B>; 3] {
        let k = self.k.clone().expect("separate q, k, v");
        let v = self.v.clone().expect("separate q, k, v");
        [self.q.clone(), k, v]
    }
}

/// An autodiff backend whose inner backend has the fused operations too (evaluation runs on it).
pub trait FusedAutodiff: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}
impl<B> FusedAutodiff for B where B: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

/// GELU of a tensor of any rank.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>, kind: GeluKind) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_gelu(x.into_primitive().tensor(), kind)))
}

/// LayerNorm over the last dimension; see [`FusedOps::fused_layer_norm`].
pub fn layer_norm<B: FusedOps, const D: usize>(x: Tensor<B, D>, gamma: Tensor<B, 1>, beta: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let p = |t: Tensor<B, 1>| t.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_layer_norm(x.into_primitive().tensor(), p(gamma), p(beta), eps)))
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
    assert_eq!(pre.dims(), res.dims(), "tap_terms: pre-trained and residual features differ in shape");
    let [wr, wf] = weights.map(|w| w.map(|w| w.into_primitive().tensor()));
    let w = TapWeights { retain: wr, forget: wf };
    let p = |x: Tensor<B, 3>| x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_tap_terms(p(pre), p(res), p(mu), w, split)))
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
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention(p(q), p(k), p(v), AttentionMask::of(bias, causal), heads, scale)))
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
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention_packed(qkv.into_primitive().tensor(), mask, heads, scale)))
}

/// The sizes of an attention call, checked: `[b, tq, c]`, `[b, tk, c]`, `[b, tk, cv]`, heads
/// dividing `c` and `cv`, a bias that broadcasts to `[b, heads, tq, tk]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionDims {
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub dk: usize,
    pub dv: usize,
}

impl AttentionDims {
    pub(crate) fn new(q: &Shape, k: &Shape, v: &Shape, bias: Option<&Shape>, heads: usize) -> Self {
        let dims3 = |s: &Shape, name: &str| -> [usize; 3] {
            assert_eq!(s.num_dims(), 3, "attention: {name} must be [batch, seq, hidden], got {s:?}");
            [s[0], s[1], s[2]]
        };
        let ([b, tq, c], [bk, tk, ck], [bv, tv, cv]) = (dims3(q, "query"), dims3(k, "key"), dims3(v, "value"));
        assert!(b == bk && b == bv, "attention: batch sizes differ (query {b}, key {bk}, value {bv})");
        assert_eq!(tk, tv, "attention: key and value lengths differ");
        assert_eq!(c, ck, "attention: query and key widths differ");
        assert!(
            heads > 0 && c.is_multiple_of(heads) && cv.is_multiple_of(heads),
            "attention: {heads} heads do not divide widths {c} / {cv}"
        );
        if let Some(bs) = bias {
            assert_eq!(bs.num_dims(), 4, "attention: the bias must be 4-d, got {bs:?}");
            for (i, want) in [b, heads, tq, tk].into_iter().enumerate() {
                assert!(bs[i] == want || bs[i] == 1, "attention: bias {bs:?} does not broadcast to [{b}, {heads}, {tq}, {tk}]");
            }
        }
        Self { batch: b, heads, tq, tk, dk: c / heads, dv: cv / heads }
    }
}

impl FusedOps for burn::backend::NdArray<f32> {}

// burn's cubecl backends (CUDA; wgpu, which runs the same code without a GPU), where every op is
// a kernel launch: LayerNorm as one autodiff node over the generic definition (the same forward
// ops, a backward of 8 ops instead of autodiff's ≈ 20, one kept activation instead of two) and
// the objective's terms as one node per layer (no split of the taps). A BERT-base step, counted
// on lavapipe: 3,832 → 3,436 launches with the LayerNorm node, → 3,082 with the objective node.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
macro_rules! cubecl_fused_ops {
    ($backend:ty) => {
        impl FusedOps for $backend {
            fn layer_norm_as_one_node() -> bool {
                true
            }

            fn tap_terms_as_one_node() -> bool {
                true
            }
        }
    };
}
#[cfg(feature = "cuda")]
cubecl_fused_ops!(burn::backend::Cuda<f32, i32>);
#[cfg(feature = "wgpu")]
cubecl_fused_ops!(burn::backend::Wgpu<f32, i32>);
#[cfg(feature = "tch")]
mod libtorch;
#[cfg(feature = "tch")]
pub use libtorch::attention_kernels as tch_attention_kernels;

/// The definitions in burn's tensor ops (any backend, any float type).
pub mod fallback {
    use super::*;

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
            GeluKind::Erf => (x.clone() * (x * std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0)).mul_scalar(0.5),
            // ½(1 + tanh u) = σ(2u), exact in real arithmetic and one op cheaper.
            GeluKind::Tanh => {
                let cube = x.clone() * x.clone() * x.clone();
                x.clone() * sigmoid((cube.mul_scalar(TANH_CUBIC) + x).mul_scalar(2.0 * SQRT_2_OVER_PI))
            }
        };
        unflat(y, shape)
    }

    pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>, kind: GeluKind) -> FloatTensor<B> {
        let (x, shape) = flat::<B>(x);
        let (grad, _) = flat::<B>(grad);
        let d = match kind {
            // Φ(x) + x·φ(x)
            GeluKind::Erf => {
                let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
                let pdf = (x.clone() * x.clone()).mul_scalar(-0.5).exp().mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
                cdf + x * pdf
            }
            // s + x·s(1 − s)·2u', s = σ(2u), u = k(x + c·x³)
            GeluKind::Tanh => {
                let x2 = x.clone() * x.clone();
                let u = (x2.clone().mul_scalar(TANH_CUBIC).add_scalar(1.0) * x.clone()).mul_scalar(SQRT_2_OVER_PI);
                let s = sigmoid(u.mul_scalar(2.0));
                let du = x2.mul_scalar(3.0 * TANH_CUBIC).add_scalar(1.0).mul_scalar(2.0 * SQRT_2_OVER_PI);
                s.clone() + x * s.clone() * s.neg().add_scalar(1.0) * du
            }
        };
        unflat(grad * d, shape)
    }

    pub fn softmax_last<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let (x, shape) = rows::<B>(x);
        B::float_reshape(softmax(x, 1).into_primitive().tensor(), shape)
    }

    pub fn softmax_last_backward<B: Backend>(y: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
        let (y, shape) = rows::<B>(y);
        let (grad, _) = rows::<B>(grad);
        let dot = (grad.clone() * y.clone()).sum_dim(1);
        B::float_reshape((y * (grad - dot)).into_primitive().tensor(), shape)
    }

    /// Along the last dimension of a rank-`rank` shape: `[1, …, 1, d]`.
    fn row_vector<B: Backend>(v: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
        let d = v.shape().num_elements();
        B::float_reshape(v, Shape::from((0..rank).map(|i| if i + 1 == rank { d } else { 1 }).collect::<Vec<_>>()))
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
        let y = B::float_add(B::float_mul(normalized.clone(), row_vector::<B>(gamma.clone(), rank)), row_vector::<B>(beta.clone(), rank));
        (y, LayerNormSaved { kept: normalized, stats: vec![std], gamma, beta })
    }

    /// dx = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / std with g = grad ⊙ gamma; dgamma = Σ grad ⊙ x̂
    /// and dbeta = Σ grad over every dimension but the last.
    pub fn layer_norm_backward<B: Backend>(saved: LayerNormSaved<B>, grad: FloatTensor<B>, need: [bool; 3]) -> [Option<FloatTensor<B>>; 3] {
        let (xhat, shape) = rows::<B>(saved.kept);
        let (grad, _) = rows::<B>(grad);
        let gamma = tensor::<B, 1>(saved.gamma).unsqueeze::<2>();
        let std = tensor::<B, 2>(B::float_reshape(saved.stats[0].clone(), Shape::new([xhat.dims()[0], 1])));
        let dx = need[0].then(|| {
            let g = grad.clone() * gamma;
            let m1 = g.clone().mean_dim(1);
            let m2 = (g.clone() * xhat.clone()).mean_dim(1);
            B::float_reshape(((g - m1 - xhat.clone() * m2) / std).into_primitive().tensor(), shape)
        });
        let dgamma = need[1].then(|| (grad.clone() * xhat).sum_dim(0).flatten::<1>(0, 1).into_primitive().tensor());
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
        let out = Tensor::cat(vec![weighted_sq(res_retain.clone(), &weights.retain), weighted_sq(diff.clone(), &weights.forget)], 0);
        let saved =
            TapTermsSaved { res_retain: res_retain.into_primitive().tensor(), diff: diff.into_primitive().tensor(), weights, shape };
        (out.into_primitive().tensor(), saved)
    }

    /// The gradients of `pre` (when `need_pre`) and `res` from the terms' gradient `[2]`:
    /// `2 w_r g_0 r` on the retain rows, `2 w_f g_1 (p + r − mu)` on the forget rows' tokens
    /// (both for `res`, the second alone for `pre`), zero elsewhere.
    pub fn tap_terms_backward<B: Backend>(saved: TapTermsSaved<B>, grad: FloatTensor<B>, need_pre: bool) -> [Option<FloatTensor<B>>; 2] {
        let g = tensor::<B, 1>(grad);
        let [rows, tokens, width] = saved.shape;
        let scaled = |x: FloatTensor<B>, w: Option<FloatTensor<B>>, gi: Tensor<B, 1>| {
            let x = tensor::<B, 3>(x);
            let [a, b, _] = x.dims();
            let c = match w {
                Some(w) => tensor::<B, 2>(w).unsqueeze_dim::<3>(2) * gi.reshape([1, 1, 1]).mul_scalar(2.0),
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
        let d_pre =
            need_pre.then(|| Tensor::cat(vec![Tensor::zeros([nr, tokens, width], &device), g_forget.clone()], 0).into_primitive().tensor());
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
    fn scores<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, bias: Option<FloatTensor<B>>, heads: usize, scale: f64) -> Tensor<B, 4> {
        let scores = split_heads::<B>(q, heads).matmul(split_heads::<B>(k, heads).swap_dims(2, 3)).mul_scalar(scale);
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
        let d = AttentionDims::new(&q.shape(), &k.shape(), &v.shape(), mask.bias.as_ref().map(|b| b.shape()).as_ref(), heads);
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

    pub fn attention_backward<B: FusedOps>(saved: AttentionSaved<B>, grad: FloatTensor<B>) -> [FloatTensor<B>; 3] {
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
        let dscores = tensor::<B, 4>(B::fused_softmax_backward(probs.into_primitive().tensor(), dprobs.into_primitive().tensor()))
            .mul_scalar(saved.scale);
        let dq = dscores.clone().matmul(split_heads::<B>(k, heads));
        let dk = dscores.swap_dims(2, 3).matmul(split_heads::<B>(q, heads));
        [merge_heads(dq), merge_heads(dk), merge_heads(dv)]
    }
}

/// Hands each tracked parent of a multi-input node its gradient (untracked parents, and the
/// gradients a backward did not compute for them, get none).
fn register_grads<B: Backend, const N: usize>(grads: &mut Gradients, parents: [Option<NodeId>; N], d: [Option<FloatTensor<B>>; N]) {
    for (id, d) in parents.into_iter().zip(d) {
        if let (Some(id), Some(d)) = (id, d) {
            grads.register::<B>(id, d);
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward(GeluKind);

        impl<B: FusedOps> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let x = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_gelu_backward(x, grad, self.0));
            }
        }

        match GeluBackward(kind).prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::fused_gelu(x.primitive, kind))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.primitive, kind)),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SoftmaxBackward;

        impl<B: FusedOps> Backward<B, 1> for SoftmaxBackward {
            // The output: the backward needs y, not x.
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let y = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_softmax_backward(y, grad));
            }
        }

        match SoftmaxBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_softmax(x.primitive);
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.primitive)),
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: FusedOps> Backward<B, 3> for AttentionBackward {
            // q, k, v (what the decomposed graph keeps too), the bias and two numbers per query
            // row — not the attention weights.
            type State = AttentionSaved<B>;

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let d = B::fused_attention_backward(ops.state, grad);
                register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), d.map(Some));
            }
        }

        let mask = AttentionMask { bias: mask.bias.map(|b| b.primitive), causal: mask.causal };
        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        match AttentionBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.primitive, k.primitive, v.primitive);
                let (out, stats) = B::fused_attention_stats(q.clone(), k.clone(), v.clone(), mask.clone(), heads, scale);
                let kept = B::attention_backward_uses_output().then(|| out.clone());
                prep.finish(AttentionSaved { q, k: Some(k), v: Some(v), mask, stats, scale, out: kept }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(q.primitive, k.primitive, v.primitive, mask, heads, scale)),
        }
    }

    fn fused_attention_packed(qkv: FloatTensor<Self>, mask: AttentionMask<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct PackedAttentionBackward;

        impl<B: FusedOps> Backward<B, 1> for PackedAttentionBackward {
            type State = AttentionSaved<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let saved = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_attention_packed_backward(saved, grad));
            }
        }

        let mask = AttentionMask { bias: mask.bias.map(|b| b.primitive), causal: mask.causal };
        match PackedAttentionBackward.prepare::<C>([qkv.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let [q, k, v] = fallback::unpack::<B>(qkv.primitive.clone());
                let (out, stats) = B::fused_attention_stats(q, k, v, mask.clone(), heads, scale);
                let kept = B::attention_backward_uses_output().then(|| out.clone());
                prep.finish(AttentionSaved { q: qkv.primitive, k: None, v: None, mask, stats, scale, out: kept }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention_packed(qkv.primitive, mask, heads, scale)),
        }
    }

    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
            type State = LayerNormSaved<B>;

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let need = [0, 1, 2].map(|i| ops.parents[i].is_some());
                let d = B::fused_layer_norm_backward(ops.state, grad, need);
                register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), d);
            }
        }

        if !B::layer_norm_as_one_node() {
            // burn's definition in this backend's (autodiff) ops: what `nn::LayerNorm` records.
            return <Self as burn::tensor::ops::ModuleOps<Self>>::layer_norm(x, gamma, Some(beta), eps);
        }
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match LayerNormBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::fused_layer_norm_forward(x.primitive, gamma.primitive, beta.primitive, eps);
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps)),
        }
    }

    fn tap_terms_as_one_node() -> bool {
        B::tap_terms_as_one_node()
    }

    fn bf16_activations() -> bool {
        B::bf16_activations()
    }

    fn fused_tap_terms(
        pre: FloatTensor<Self>,
        res: FloatTensor<Self>,
        mu: FloatTensor<Self>,
        w: TapWeights<Self>,
        split: TapSplit,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct TapTermsBackward;

        impl<B: FusedOps> Backward<B, 2> for TapTermsBackward {
            type State = TapTermsSaved<B>;

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let d = fallback::tap_terms_backward::<B>(ops.state, grad, ops.parents[0].is_some());
                register_grads::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), d);
            }
        }

        // The targets and weights are constants: their values, not their graphs.
        let w = TapWeights { retain: w.retain.map(|t| t.primitive), forget: w.forget.map(|t| t.primitive) };
        let parents = [pre.node.clone(), res.node.clone()];
        match TapTermsBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = fallback::tap_terms_forward::<B>(pre.primitive, res.primitive, mu.primitive, w, split);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_tap_terms(pre.primitive, res.primitive, mu.primitive, w, split)),
        }
    }
}

/// burn-flex: the f32 case runs [`kernels`]; other float types take the fallback.
impl FusedOps for Flex {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return fallback::gelu::<Self>(x, kind);
        }
        let shape = x.shape();
        let x = x.to_contiguous();
        flex_f32(kernels::gelu(f32s(&x), kind), shape)
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return fallback::gelu_backward::<Self>(x, grad, kind);
        }
        let shape = x.shape();
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        flex_f32(kernels::gelu_backward(f32s(&x), f32s(&grad), kind), shape)
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return fallback::softmax_last::<Self>(x);
        }
        let shape = x.shape();
        let last = shape[shape.num_dims() - 1];
        let x = x.to_contiguous();
        flex_f32(kernels::softmax_rows(f32s(&x), last), shape)
    }

    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return fallback::softmax_last_backward::<Self>(y, grad);
        }
        let shape = y.shape();
        let last = shape[shape.num_dims() - 1];
        let (y, grad) = (y.to_contiguous(), grad.to_contiguous());
        flex_f32(kernels::softmax_rows_backward(f32s(&y), f32s(&grad), last), shape)
    }

    fn fused_attention_stats(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[Some(&q), Some(&k), Some(&v), mask.bias.as_ref()]) {
            return fallback::attention::<Self>(q, k, v, mask, heads, scale);
        }
        attention::forward(&q, &k, &v, mask.bias.as_ref(), mask.causal, heads, scale)
    }

    fn fused_attention_backward(saved: AttentionSaved<Self>, grad: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        let saved = saved.unpacked();
        if !flex_f32_saved(&saved, &grad) {
            return fallback::attention_backward::<Self>(saved, grad);
        }
        attention::backward(&saved, &grad)
    }

    fn fused_attention_packed_backward(saved: AttentionSaved<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if !flex_f32_saved(&saved, &grad) || saved.k.is_some() {
            return Self::float_cat(Self::fused_attention_backward(saved.unpacked(), grad).to_vec(), 2);
        }
        attention::backward_packed(&saved, &grad)
    }
}

fn flex_f32_saved(saved: &AttentionSaved<Flex>, grad: &FlexTensor) -> bool {
    all_f32(&[Some(&saved.q), saved.k.as_ref(), saved.v.as_ref(), saved.mask.bias.as_ref(), Some(&saved.stats), Some(grad)])
}

/// Every tensor present is f32.
fn all_f32(ts: &[Option<&FlexTensor>]) -> bool {
    ts.iter().flatten().all(|t| t.dtype() == DType::F32)
}

fn f32s(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn flex_f32(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

mod attention;

/// Single-pass f32 loops, split over rayon's threads in blocks and written so that the compiler
/// vectorises them (AVX2 + FMA when the CPU has them, chosen at run time): `exp` by range
/// reduction and a degree-6 polynomial (Cephes' `expf`, ≈ 1 ulp), `erf` by Abramowitz & Stegun
/// 7.1.26 (absolute error ≤ 1.5·10⁻⁷). NaN stays NaN.
pub mod kernels {
    use std::mem::MaybeUninit;

    use rayon::prelude::*;

    use super::{GeluKind, SQRT_2_OVER_PI, TANH_CUBIC};

    /// Elements per task: large enough to amortise rayon, small enough to share 2–64 cores.
    const BLOCK: usize = 1 << 14;

    /// Runs `body` with AVX2 + FMA enabled when the CPU has them (the loops inside are then
    /// vectorised 8 wide), else as compiled for the baseline target.
    macro_rules! with_simd {
        ($body:expr) => {{
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<R>(f: impl FnOnce() -> R) -> R {
                    f()
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    let f = || $body;
                    // SAFETY: the CPU supports the features the function is compiled for.
                    unsafe { avx2(f) }
                } else {
                    $body
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $body
            }
        }};
    }

    #[inline(always)]
    fn select(c: bool, a: f32, b: f32) -> f32 {
        if c { a } else { b }
    }

    /// e^x in f32. Below −87 (where e^x leaves f32's normal range) it is 0; above 88, e^88.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        let tiny = x < -87.0;
        // Comparisons written so that NaN falls through unchanged.
        let x = select(tiny, -87.0, x);
        let x = select(x > 88.0, 88.0, x);
        // 1.5·2²³ pushes x·log2(e) into the low mantissa bits: t's bits hold round(x·log2 e).
        let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
        let n = t - 12_582_912.0;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
        let p = p * r * r + r + 1.0;
        let scale = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
        select(tiny, 0.0, p * scale)
    }

    /// erf(x) and e^(−x²) (the exact GELU's derivative needs both).
    #[inline(always)]
    fn erf_and_gauss(x: f32) -> (f32, f32) {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
        let g = exp(-z * z);
        ((1.0 - poly * g).copysign(x), g)
    }

    #[inline(always)]
    fn gelu_erf(x: f32) -> f32 {
        let (e, _) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
        0.5 * x * (1.0 + e)
    }

    #[inline(always)]
    fn gelu_erf_grad(x: f32) -> f32 {
        // e^(−(x/√2)²) = e^(−x²/2): φ(x)·√(2π)
        let (e, g) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
        0.5 * (1.0 + e) + x * g * 0.398_942_3
    }

    /// σ(2u), u = √(2/π)(x + 0.044715·x³) — the tanh GELU is x·σ(2u).
    #[inline(always)]
    fn gelu_tanh_gate(x: f32) -> f32 {
        let z = -2.0 * (SQRT_2_OVER_PI as f32) * (x + (TANH_CUBIC as f32) * x * x * x);
        // Past e^88 the gate is below f32's normal range: exactly 0, as tanh gives.
        select(z > 88.0, 0.0, 1.0 / (1.0 + exp(z)))
    }

    #[inline(always)]
    fn gelu_tanh(x: f32) -> f32 {
        x * gelu_tanh_gate(x)
    }

    #[inline(always)]
    fn gelu_tanh_grad(x: f32) -> f32 {
        let s = gelu_tanh_gate(x);
        let du = 2.0 * (SQRT_2_OVER_PI as f32) * (1.0 + 3.0 * (TANH_CUBIC as f32) * x * x);
        s + x * s * (1.0 - s) * du
    }

    /// A vector of `n` values each written exactly once by `fill`, blocks in parallel.
    fn build(n: usize, block: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n].par_chunks_mut(block.max(1)).enumerate().for_each(|(i, chunk)| fill(i * block, chunk));
        // SAFETY: every element of [0, n) was written by `fill` (the chunks cover it).
        unsafe { out.set_len(n) };
        out
    }

    pub fn gelu(x: &[f32], kind: GeluKind) -> Vec<f32> {
        build(x.len(), BLOCK, |start, out| {
            let x = &x[start..start + out.len()];
            match kind {
                GeluKind::Erf => with_simd!(out.iter_mut().zip(x).for_each(|(o, &v)| {
                    o.write(gelu_erf(v));
                })),
                GeluKind::Tanh => with_simd!(out.iter_mut().zip(x).for_each(|(o, &v)| {
                    o.write(gelu_tanh(v));
                })),
            }
        })
    }

    pub fn gelu_backward(x: &[f32], grad: &[f32], kind: GeluKind) -> Vec<f32> {
        assert_eq!(x.len(), grad.len(), "gelu_backward: input and gradient differ in size");
        build(x.len(), BLOCK, |start, out| {
            let (x, g) = (&x[start..start + out.len()], &grad[start..start + out.len()]);
            match kind {
                GeluKind::Erf => with_simd!(out.iter_mut().zip(x.iter().zip(g)).for_each(|(o, (&v, &g))| {
                    o.write(g * gelu_erf_grad(v));
                })),
                GeluKind::Tanh => with_simd!(out.iter_mut().zip(x.iter().zip(g)).for_each(|(o, (&v, &g))| {
                    o.write(g * gelu_tanh_grad(v));
                })),
            }
        })
    }

    const LANES: usize = 16;

    /// Max and sum over a row in LANES independent accumulators, so that they vectorise.
    #[inline(always)]
    fn row_reduce(r: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
        let mut acc = [init; LANES];
        let chunks = r.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = f(acc[i], c[i]);
            }
        }
        acc.iter().chain(rest).fold(init, |a, &v| f(a, v))
    }

    /// The row viewed as initialised values, once every element has been written.
    ///
    /// SAFETY: the caller has written every element of `o`.
    #[inline(always)]
    unsafe fn assume_init(o: &mut [MaybeUninit<f32>]) -> &mut [f32] {
        unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) }
    }

    /// Blocks of whole rows, about BLOCK elements each.
    fn row_block(last: usize) -> usize {
        (BLOCK / last.max(1)).max(1) * last.max(1)
    }

    /// Softmax of one row in place; returns the row's max and the sum of `exp(x − max)`. A NaN
    /// is never the max; it still makes its row NaN through exp and the sum.
    #[inline(always)]
    fn softmax_row(r: &mut [f32]) -> (f32, f32) {
        let m = row_reduce(r, f32::NEG_INFINITY, |a, v| select(v > a, v, a));
        for v in r.iter_mut() {
            *v = exp(*v - m);
        }
        let sum = row_reduce(r, 0.0, |a, v| a + v);
        scale_row(r, 1.0 / sum);
        (m, sum)
    }

    #[inline(always)]
    fn scale_row(r: &mut [f32], inv: f32) {
        for v in r.iter_mut() {
            *v *= inv;
        }
    }

    /// `g ← scale · y · (g − Σ g·y)` for one row: the softmax's input gradient from its output.
    #[inline(always)]
    fn softmax_row_grad(y: &[f32], g: &mut [f32], scale: f32) {
        let mut acc = [0.0f32; LANES];
        for (y, g) in y.chunks(LANES).zip(g.chunks(LANES)) {
            for i in 0..y.len() {
                acc[i] += y[i] * g[i];
            }
        }
        let dot: f32 = acc.iter().sum();
        for (g, &y) in g.iter_mut().zip(y) {
            *g = scale * y * (*g - dot);
        }
    }

    pub fn softmax_rows(x: &[f32], last: usize) -> Vec<f32> {
        if last == 0 {
            return Vec::new();
        }
        build(x.len(), row_block(last), |start, out| {
            let x = &x[start..start + out.len()];
            with_simd!(for (o, r) in out.chunks_mut(last).zip(x.chunks(last)) {
                for (o, &v) in o.iter_mut().zip(r) {
                    o.write(v);
                }
                // SAFETY: the loop above wrote the whole row.
                softmax_row(unsafe { assume_init(o) });
            })
        })
    }

    pub fn softmax_rows_backward(y: &[f32], grad: &[f32], last: usize) -> Vec<f32> {
        assert_eq!(y.len(), grad.len(), "softmax_backward: output and gradient differ in size");
        if last == 0 {
            return Vec::new();
        }
        build(y.len(), row_block(last), |start, out| {
            let (y, g) = (&y[start..start + out.len()], &grad[start..start + out.len()]);
            with_simd!(for ((o, y), g) in out.chunks_mut(last).zip(y.chunks(last)).zip(g.chunks(last)) {
                for (o, &g) in o.iter_mut().zip(g) {
                    o.write(g);
                }
                // SAFETY: the loop above wrote the whole row.
                softmax_row_grad(y, unsafe { assume_init(o) }, 1.0);
            })
        })
    }

    #[inline(always)]
    fn add_row(r: &mut [f32], b: Option<&[f32]>) {
        if let Some(b) = b {
            for (v, &b) in r.iter_mut().zip(b) {
                *v += b;
            }
        }
    }

    /// The rows `[rows, last]` of attention scores in place: `bias(i)` added to row `i` where
    /// there is one, then softmax; each row's max and sum go to `stats` (pairs).
    pub(crate) fn biased_softmax_rows<'a>(s: &mut [f32], last: usize, bias: impl Fn(usize) -> Option<&'a [f32]>, stats: &mut [f32]) {
        with_simd!(for (i, r) in s.chunks_mut(last.max(1)).enumerate() {
            add_row(r, bias(i));
            let (m, sum) = softmax_row(r);
            stats[2 * i] = m;
            stats[2 * i + 1] = sum;
        })
    }

    /// The same softmax from the rows' stored max and sum (pairs in `stats`): the weights of
    /// [`biased_softmax_rows`] again, bit for bit, without a max or sum pass.
    pub(crate) fn biased_softmax_rows_from<'a>(s: &mut [f32], last: usize, bias: impl Fn(usize) -> Option<&'a [f32]>, stats: &[f32]) {
        with_simd!(for (i, r) in s.chunks_mut(last.max(1)).enumerate() {
            add_row(r, bias(i));
            let m = stats[2 * i];
            for v in r.iter_mut() {
                *v = exp(*v - m);
            }
            scale_row(r, 1.0 / stats[2 * i + 1]);
        })
    }

    /// The gradient of scores `[rows, last]` in place, from the softmax's output `y` and the
    /// gradient `g` of that output, times `scale`.
    pub(crate) fn softmax_rows_grad_in_place(y: &[f32], g: &mut [f32], last: usize, scale: f32) {
        with_simd!(for (y, g) in y.chunks(last.max(1)).zip(g.chunks_mut(last.max(1))) {
            softmax_row_grad(y, g, scale);
        })
    }
}
