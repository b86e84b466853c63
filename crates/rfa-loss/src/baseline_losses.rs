//! The baselines' objectives on log-probabilities (the engine supplies them from a classifier's
//! logits or a language model's next-token distributions); `crates/rfa/src/baselines.rs` runs
//! them.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;

/// KL(teacher ‖ student) summed over the output space, mean over rows. Both arguments are
/// log-probabilities `[rows, outputs]`; the teacher is a constant (M0 for SCRUB).
pub fn kl_divergence<B: Backend>(
    teacher_logp: Tensor<B, 2>,
    student_logp: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = teacher_logp.dims()[0].max(1);
    (teacher_logp.clone().exp() * (teacher_logp - student_logp)).sum().div_scalar(n as f64)
}

/// Negative preference optimisation (Zhang et al., 2024), eq. 3:
/// −(2/β)·mean log σ(−β·(log πθ(y|x) − log π_ref(y|x))), per forget sample `[n]` log-likelihoods.
/// Equals (2/β)·ln 2 when the model is the reference, and falls towards 0 as the model's
/// likelihood of the forget data drops below the reference's.
pub fn npo_loss<B: Backend>(logp: Tensor<B, 1>, logp_ref: Tensor<B, 1>, beta: f64) -> Tensor<B, 1> {
    log_sigmoid((logp - logp_ref).mul_scalar(-beta)).mean().mul_scalar(-2.0 / beta)
}

/// Σ|w| of one weight tensor (l1-sparse sums it over the trained weights).
pub fn l1<B: Backend, const D: usize>(w: Tensor<B, D>) -> Tensor<B, 1> {
    w.abs().sum()
}
