//! Where a forward pass leaves the taps `(p_l, r_l)` of its adapted layers.

use burn::tensor::DType;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use lora_core::{LoraLinear, Tap, Taps, to_dtype};

/// Collects the taps of a forward pass. With a limit the pass stops as soon as it holds that
/// many: nothing after the last adapted layer reaches an objective built from taps alone (RFA's),
/// so that work — most of the last block, the head — is skipped.
pub(crate) struct TapSink<B: Backend> {
    pub taps: Taps<B>,
    limit: usize,
}

impl<B: Backend> TapSink<B> {
    /// Every tap: the pass runs to the end.
    pub fn all() -> Self {
        Self { taps: Vec::new(), limit: usize::MAX }
    }

    /// The first `limit` taps.
    pub fn first(limit: usize) -> Self {
        Self { taps: Vec::new(), limit }
    }

    fn full(&self) -> bool {
        self.taps.len() >= self.limit
    }
}

/// `LoraLinear::forward` that also records `(p_l, r_l)` when the layer is adapted; `None` once
/// the sink is full, which ends the pass (callers write `tapped(..)?`). Taps are f32 whatever
/// the layer ran in: the objective is computed in f32 (bf16 interiors,
/// [`crate::precision::interior`]).
pub(crate) fn tapped<B: Backend>(
    lin: &LoraLinear<B>,
    x: Tensor<B, 3>,
    sink: &mut TapSink<B>,
) -> Option<Tensor<B, 3>> {
    if sink.full() {
        return None;
    }
    let y = match lin.split(x) {
        (p, Some(r)) => {
            sink.taps.push(Tap {
                pre: to_dtype(p.clone(), DType::F32),
                residual: to_dtype(r.clone(), DType::F32),
            });
            p + r
        }
        (p, None) => p,
    };
    (!sink.full()).then_some(y)
}
