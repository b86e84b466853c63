//! The element-wise activations of Hugging Face configs (`activations.py`).

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, silu};
use rfa_fused::{FusedOps, GeluKind};

use crate::ModelError;

/// The element-wise activations Hugging Face configs name (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
    Silu,
    QuickGelu,
    Tanh,
}

impl Activation {
    pub fn parse(name: &str, config: &Path) -> Result<Self, ModelError> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            "tanh" => Self::Tanh,
            other => {
                return Err(ModelError::Config {
                    path: config.to_path_buf(),
                    reason: format!("unsupported activation `{other}`"),
                });
            }
        })
    }

    /// The GELUs run as fused ops ([`rfa_fused`]): one kernel and the analytic derivative
    /// instead of burn's `gelu` / `gelu_approximate`, whose backward is wrong for the exact GELU
    /// and, with the rest of the element-wise chain, costs several passes over memory.
    pub fn forward<B: FusedOps, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Gelu => rfa_fused::gelu(x, GeluKind::Erf),
            Self::GeluTanh => rfa_fused::gelu(x, GeluKind::Tanh),
            Self::Relu => relu(x),
            Self::Silu => silu(x),
            Self::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
            Self::Tanh => x.tanh(),
        }
    }
}
