//! The two features of an adapted layer, as [`crate::LoraLinear::split`] gives them.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// One adapted layer's two features from a forward pass: `p_l` (frozen weights) and `r_l`
/// (adapter). A model's taps come in the order of [`crate::adapted_paths`].
#[derive(Debug, Clone)]
pub struct Tap<B: Backend> {
    pub pre: Tensor<B, 3>,
    pub residual: Tensor<B, 3>,
}

impl<B: Backend> Tap<B> {
    /// Applies `f` to both features (e.g. keeping one token, moving between backends).
    pub fn map<C: Backend>(self, f: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>) -> Tap<C> {
        Tap { pre: f(self.pre), residual: f(self.residual) }
    }

    /// Splits one pass over two concatenated batches into the taps of the first `n` rows and of
    /// the rest (the retain and the forget batch of an RFA step).
    pub fn split_rows(taps: &[Tap<B>], n: usize) -> (Vec<Tap<B>>, Vec<Tap<B>>) {
        let rows = |t: &Tap<B>, s: usize, l: usize| t.clone().map(|x| x.narrow(0, s, l));
        let total = taps.first().map(|t| t.pre.dims()[0]).unwrap_or(n);
        (
            taps.iter().map(|t| rows(t, 0, n)).collect(),
            taps.iter().map(|t| rows(t, n, total - n)).collect(),
        )
    }
}

/// Where a forward pass leaves the taps of its adapted layers.
pub type Taps<B> = Vec<Tap<B>>;
