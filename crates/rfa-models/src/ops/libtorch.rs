//! The fused ops on burn's libtorch backend: libtorch's own single-kernel GELU and softmax
//! (forward and backward), where the burn-ops fallback would launch one kernel per elementary
//! operation (the tanh GELU's backward alone is about a dozen, each reading and writing the
//! whole `[tokens, 4 · width]` activation). Attention keeps the fallback (burn's ops, which
//! libtorch runs one kernel each).

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;

use super::{FusedOps, GeluKind};

/// libtorch's name for the GELU variant.
fn approximate(kind: GeluKind) -> &'static str {
    match kind {
        GeluKind::Erf => "none",
        GeluKind::Tanh => "tanh",
    }
}

impl FusedOps for LibTorch<f32> {
    fn fused_gelu(x: TchTensor, kind: GeluKind) -> TchTensor {
        TchTensor::new(x.tensor.gelu(approximate(kind)))
    }

    fn fused_gelu_backward(x: TchTensor, grad: TchTensor, kind: GeluKind) -> TchTensor {
        TchTensor::new(x.tensor.gelu_backward(&grad.tensor, approximate(kind)))
    }

    fn fused_softmax(x: TchTensor) -> TchTensor {
        TchTensor::new(x.tensor.softmax(-1, None))
    }

    fn fused_softmax_backward(y: TchTensor, grad: TchTensor) -> TchTensor {
        let kind = y.tensor.kind();
        TchTensor::new(tch::Tensor::internal_softmax_backward_data(&grad.tensor, &y.tensor, -1, kind))
    }
}
