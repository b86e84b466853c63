//! What the one-node LayerNorm and the attention keep for their backward passes.

use burn::tensor::TensorMetadata;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::{AttentionMask, fallback};

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
