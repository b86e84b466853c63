//! What RFA's per-layer objective node takes and keeps ([`crate::tap_terms`]).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

/// Where a step's concatenated batch splits for RFA's objective: rows `0..retain_rows` are
/// the retain batch, the rest the forget batch; the forget term reads every token or only the
/// first (`unlearn.forget_tokens = "cls"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapSplit {
    pub retain_rows: usize,
    pub forget_first_token_only: bool,
}

/// Per-token weights of the two terms, `[retain_rows, tokens]` and `[forget_rows, forget
/// tokens]`, each summing to 1 (a padding mask divided by its count); `None`: the mean over
/// every token.
#[derive(Debug, Clone)]
pub struct TapWeights<B: Backend> {
    pub retain: Option<FloatTensor<B>>,
    pub forget: Option<FloatTensor<B>>,
}

/// What the tap-terms node's backward pass keeps: the retain rows' residual and the forget
/// rows' `p + r − mu` (the inputs of the two squares, as the op-by-op graph keeps them).
#[derive(Debug, Clone)]
pub struct TapTermsSaved<B: Backend> {
    pub res_retain: FloatTensor<B>,
    pub diff: FloatTensor<B>,
    pub weights: TapWeights<B>,
    /// `[rows, tokens, width]` of the taps.
    pub shape: [usize; 3],
}
