//! [`FusedOps`] on burn-flex: the f32 case runs [`crate::kernels`] and the per-head attention of
//! [`crate::flex_attention`]; other float types take the fallback.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Bytes, DType, Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor, Layout};

use crate::{
    AttentionMask, AttentionSaved, FusedOps, GeluKind, fallback, flex_attention as attention,
    kernels,
};

impl FusedOps for Flex {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return fallback::gelu::<Self>(x, kind);
        }
        let shape = x.shape();
        let x = x.to_contiguous();
        flex_f32(kernels::gelu(f32s(&x), kind), shape)
    }

    fn fused_gelu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: GeluKind,
    ) -> FloatTensor<Self> {
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

    fn fused_attention_backward(
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        let saved = saved.unpacked();
        if !flex_f32_saved(&saved, &grad) {
            return fallback::attention_backward::<Self>(saved, grad);
        }
        attention::backward(&saved, &grad)
    }

    fn fused_attention_packed_backward(
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !flex_f32_saved(&saved, &grad) || saved.k.is_some() {
            return Self::float_cat(
                Self::fused_attention_backward(saved.unpacked(), grad).to_vec(),
                2,
            );
        }
        attention::backward_packed(&saved, &grad)
    }
}

fn flex_f32_saved(saved: &AttentionSaved<Flex>, grad: &FlexTensor) -> bool {
    all_f32(&[
        Some(&saved.q),
        saved.k.as_ref(),
        saved.v.as_ref(),
        saved.mask.bias.as_ref(),
        Some(&saved.stats),
        Some(grad),
    ])
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
