//! Multi-head self-attention as BERT and ViT have it, and the padding mask as a bias.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use lora_core::{LoraLinear, WeightLayout};
use rfa_fused::FusedOps;

use crate::ModelError;
use crate::checkpoint::Checkpoint;
use crate::precision::interior;
use crate::taps::{TapSink, tapped};

/// Additive attention bias `[batch, 1, 1, seq]` from a 0/1 padding mask `[batch, seq]`
/// ([`rfa_fused::MASK_BIAS`] on padding); `None` without a mask or when the mask pads nothing, as
/// transformers' SDPA path drops an all-ones mask: the attention then runs without a bias (on
/// libtorch PyTorch's flash kernel, which takes none; elsewhere one addition less per layer), with
/// the same result. Costs one read of the mask's minimum back from the device per pass.
pub(crate) fn padding_bias<B: Backend>(mask: Option<Tensor<B, 2, Int>>) -> Option<Tensor<B, 4>> {
    let mask = mask.filter(|m| m.clone().min().into_scalar().elem::<i64>() < 1)?;
    let [b, t] = mask.dims();
    let keep = mask.float();
    Some(keep.neg().add_scalar(1.0).mul_scalar(rfa_fused::MASK_BIAS).reshape([b, 1, 1, t]))
}

/// Multi-head scaled dot-product attention over `[batch, seq, hidden]` projections.
pub(crate) fn attention<B: FusedOps>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    n_heads: usize,
    scale: f64,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    rfa_fused::attention(q, k, v, bias, false, n_heads, scale)
}

/// Self-attention with separate `query`, `key`, `value` projections (BERT's `attention.self`,
/// ViT's `attention.attention`); the output projection belongs to the caller.
#[derive(burn::module::Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: LoraLinear<B>,
    pub key: LoraLinear<B>,
    pub value: LoraLinear<B>,
    pub num_heads: usize,
}

impl<B: FusedOps> SelfAttention<B> {
    /// Reads `path.{query,key,value}` of a `d × d` attention.
    pub fn load(
        checkpoint: &mut Checkpoint<B>,
        path: &str,
        d: usize,
        heads: usize,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let mut lin = |name: &str| {
            checkpoint.linear(&format!("{path}.{name}"), d, d, bias, WeightLayout::Linear)
        };
        Ok(Self { query: lin("query")?, key: lin("key")?, value: lin("value")?, num_heads: heads })
    }

    /// The attention context (before the output projection), tapping q, k, v in that order.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Option<Tensor<B, 4>>,
        taps: &mut TapSink<B>,
    ) -> Option<Tensor<B, 3>> {
        let x = interior(x, &self.query);
        let q = tapped(&self.query, x.clone(), taps)?;
        let k = tapped(&self.key, x.clone(), taps)?;
        let v = tapped(&self.value, x.clone(), taps)?;
        let d = x.dims()[2];
        let scale = 1.0 / ((d / self.num_heads) as f64).sqrt();
        Some(attention(q, k, v, self.num_heads, scale, bias))
    }

    pub fn push_linears<'a>(&'a self, path: &str, v: &mut Vec<(String, &'a LoraLinear<B>)>) {
        v.push((format!("{path}.query"), &self.query));
        v.push((format!("{path}.key"), &self.key));
        v.push((format!("{path}.value"), &self.value));
    }

    pub fn push_linears_mut<'a>(
        &'a mut self,
        path: &str,
        v: &mut Vec<(String, &'a mut LoraLinear<B>)>,
    ) {
        v.push((format!("{path}.query"), &mut self.query));
        v.push((format!("{path}.key"), &mut self.key));
        v.push((format!("{path}.value"), &mut self.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn a_mask_that_pads_nothing_gives_no_bias() {
        let device = Default::default();
        let mask = |v: Vec<i64>| {
            Some(Tensor::<NdArray<f32>, 2, Int>::from_data(TensorData::new(v, [2, 3]), &device))
        };
        assert!(padding_bias::<NdArray<f32>>(None).is_none());
        assert!(padding_bias(mask(vec![1; 6])).is_none());
        let bias = padding_bias(mask(vec![1, 1, 1, 1, 1, 0])).expect("a padded position");
        assert_eq!(bias.dims(), [2, 1, 1, 3]);
        let v = bias.into_data().to_vec::<f32>().unwrap();
        assert_eq!(&v[..5], &[0.0; 5]);
        assert_eq!(v[5], rfa_fused::MASK_BIAS);
    }
}
