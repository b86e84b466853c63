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
//! (`flex_attention.rs`, which says why).
//!
//! One file per part: the trait ([`FusedOps`], `fused_ops.rs`) and its tensor-level functions
//! (`functional.rs`), the definitions in burn's ops ([`fallback`]), the autodiff nodes
//! (`autodiff.rs`), burn-flex's implementation (`flex.rs`, [`kernels`], `flex_attention.rs`) and
//! libtorch's (`libtorch.rs`, feature `tch`). This crate knows nothing of models or data: it
//! depends on burn and lora-core only.

mod attention_mask;
mod autodiff;
pub mod fallback;
mod flex;
mod flex_attention;
mod functional;
mod fused_ops;
pub mod kernels;
#[cfg(feature = "tch")]
mod libtorch;
mod saved;
mod tap_terms;

use burn::tensor::backend::AutodiffBackend;

pub(crate) use attention_mask::AttentionDims;
pub use attention_mask::{AttentionMask, MASK_BIAS};
pub use functional::{attention, attention_packed, gelu, layer_norm, softmax_last, tap_terms};
pub use fused_ops::FusedOps;
#[cfg(feature = "tch")]
pub use libtorch::attention_kernels as tch_attention_kernels;
pub use saved::{AttentionSaved, LayerNormSaved};
pub use tap_terms::{TapSplit, TapTermsSaved, TapWeights};

/// Which GELU: Hugging Face's `gelu` (erf) or the tanh approximation (`gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluKind {
    Erf,
    Tanh,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const TANH_CUBIC: f64 = 0.044715;

/// An autodiff backend whose inner backend has the fused operations too (evaluation runs on it).
pub trait FusedAutodiff: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}
impl<B> FusedAutodiff for B where B: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

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
