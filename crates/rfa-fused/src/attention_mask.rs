//! The attention's mask and the checked sizes of an attention call.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Shape, Tensor, TensorPrimitive};

/// The attention's mask: an additive bias and/or the causal mask; see
/// [`FusedOps::fused_attention`].
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    pub bias: Option<FloatTensor<B>>,
    pub causal: bool,
}

impl<B: Backend> AttentionMask<B> {
    pub fn none() -> Self {
        Self { bias: None, causal: false }
    }

    pub(crate) fn of(bias: Option<Tensor<B, 4>>, causal: bool) -> Self {
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
            assert_eq!(
                s.num_dims(),
                3,
                "attention: {name} must be [batch, seq, hidden], got {s:?}"
            );
            [s[0], s[1], s[2]]
        };
        let ([b, tq, c], [bk, tk, ck], [bv, tv, cv]) =
            (dims3(q, "query"), dims3(k, "key"), dims3(v, "value"));
        assert!(
            b == bk && b == bv,
            "attention: batch sizes differ (query {b}, key {bk}, value {bv})"
        );
        assert_eq!(tk, tv, "attention: key and value lengths differ");
        assert_eq!(c, ck, "attention: query and key widths differ");
        assert!(
            heads > 0 && c.is_multiple_of(heads) && cv.is_multiple_of(heads),
            "attention: {heads} heads do not divide widths {c} / {cv}"
        );
        if let Some(bs) = bias {
            assert_eq!(bs.num_dims(), 4, "attention: the bias must be 4-d, got {bs:?}");
            for (i, want) in [b, heads, tq, tk].into_iter().enumerate() {
                assert!(
                    bs[i] == want || bs[i] == 1,
                    "attention: bias {bs:?} does not broadcast to [{b}, {heads}, {tq}, {tk}]"
                );
            }
        }
        Self { batch: b, heads, tq, tk, dk: c / heads, dv: cv / heads }
    }
}
