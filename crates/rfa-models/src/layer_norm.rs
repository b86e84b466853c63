//! LayerNorm with Hugging Face's parameter names.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rfa_fused::FusedOps;

/// LayerNorm over the last dimension, Hugging Face's `weight` / `bias` as burn's `gamma` / `beta`.
/// burn's `nn::LayerNorm` keeps its epsilon private and is always differentiated op by op; this
/// one runs [`rfa_fused::layer_norm`], which libtorch and the GPU backends train as one op
/// ([`FusedOps::layer_norm_as_one_node`]).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub epsilon: f64,
}

impl<B: FusedOps> LayerNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rfa_fused::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}
