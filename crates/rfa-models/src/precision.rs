//! The float type a block's interior runs in (bf16 interiors, as PyTorch's autocast).

use burn::tensor::Tensor;
use lora_core::{LoraLinear, to_dtype};
use rfa_fused::FusedOps;

/// The input of a block's projections (`lin` one of them) in the type the block's interior runs
/// in: the frozen weights' type where the backend runs bf16 activations
/// ([`FusedOps::bf16_activations`]), else unchanged. Cast once here, the projections sharing an
/// input (q, k, v) do not each cast it; their outputs stay in that type up to the residual add,
/// which takes them back with [`to_dtype`] — PyTorch's autocast, which keeps the residual stream
/// and the norms in f32 and everything between them in bf16.
pub(crate) fn interior<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    lin: &LoraLinear<B>,
) -> Tensor<B, D> {
    if B::bf16_activations() { to_dtype(x, lin.weight_dtype()) } else { x }
}
