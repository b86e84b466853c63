//! The fused ops on burn's libtorch backend: libtorch's own kernels where the burn-ops fallback
//! would launch one kernel per elementary operation.
//!
//! - GELU and softmax, forward and backward: one kernel each (the tanh GELU's backward in
//!   elementary ops is about a dozen, each reading and writing the whole `[tokens, 4 · width]`
//!   activation).
//! - Attention: PyTorch's scaled-dot-product-attention kernels, the ones `transformers` runs
//!   through `F.scaled_dot_product_attention` — the CPU flash-attention kernel, and on CUDA the
//!   memory-efficient (cutlass) kernel, which takes an additive bias and f32 (the flash kernel
//!   does neither). Both keep no `[b, heads, tq, tk]` weights: the forward pass returns the
//!   per-row logsumexp, and the backward pass recomputes the weights from it and needs the
//!   output (`attention_backward_uses_output`). The operands stay in rfa's `[b, t, heads · d]`
//!   layout — for these kernels `[b, t, heads, d]` is the native one, so the head split is a view.
//!   A causal mask is the kernels' own (`is_causal`, top-left): the CUDA kernel skips the tiles
//!   above the diagonal instead of reading a `[t, t]` bias, as PyTorch's GPT-2 does.
//!
//! One difference from rfa's other attention kernels: a query row whose every key is masked
//! (the bias's −1e30) gets uniform weights but not the right gradients: its logsumexp,
//! −1e30 + ln tk, rounds to −1e30, and the backward pass weighs each key 1 instead of 1/tk
//! (PyTorch itself does the same with a finite mask); under the causal flag its weights spread
//! over the keys it sees, where the generic ops' folded bias also takes in the unmasked keys
//! above the diagonal. Such a row is always a padding query's (it sees only padding), and rfa's
//! losses leave padding out, so no gradient reaches it and nothing reads its output;
//! tests/attention.rs states this (`exempt_fully_masked_rows`).
//!
//! `RFA_TCH_ATTENTION=ops` runs attention in elementary tensor ops instead (the burn-ops
//! fallback, on libtorch's kernels): a diagnostic switch, to time one against the other.

use std::sync::OnceLock;

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::TensorMetadata;
use tch::{Device, Kind, Tensor};

use super::{
    AttentionDims, AttentionMask, AttentionSaved, FusedOps, GeluKind, LayerNormSaved, fallback,
};

/// libtorch's name for the GELU variant.
fn approximate(kind: GeluKind) -> &'static str {
    match kind {
        GeluKind::Erf => "none",
        GeluKind::Tanh => "tanh",
    }
}

/// Which attention the libtorch backend runs (`RFA_TCH_ATTENTION`, read once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionPath {
    Sdpa,
    Ops,
}

/// Which attention the libtorch backend runs, for reports: `sdpa` (PyTorch's kernels) or `ops`.
pub fn attention_kernels() -> &'static str {
    match attention_path() {
        AttentionPath::Sdpa => "sdpa",
        AttentionPath::Ops => "ops",
    }
}

fn attention_path() -> AttentionPath {
    static PATH: OnceLock<AttentionPath> = OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("RFA_TCH_ATTENTION").as_deref() {
        Err(_) | Ok("") | Ok("sdpa") => AttentionPath::Sdpa,
        Ok("ops") => AttentionPath::Ops,
        Ok(other) => panic!(
            "RFA_TCH_ATTENTION={other}: expected `sdpa` (PyTorch's fused attention kernels, the default) \
             or `ops` (attention in elementary tensor ops)"
        ),
    })
}

/// The SDPA kernel for these operands, if one takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    CpuFlash,
    CudaEfficient,
}

fn kernel(q: &Tensor, k: &Tensor, v: &Tensor, dims: &AttentionDims) -> Option<Kernel> {
    if attention_path() == AttentionPath::Ops {
        return None;
    }
    let kind = q.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half)
        || k.kind() != kind
        || v.kind() != kind
    {
        return None;
    }
    // Both kernels read each head's rows as contiguous vectors.
    if ![q, k, v].iter().all(|x| x.stride()[2] == 1) {
        return None;
    }
    match q.device() {
        Device::Cpu if dims.dk == dims.dv => Some(Kernel::CpuFlash),
        // The cutlass kernel reads 128-bit vectors: head widths and row strides in multiples
        // of 8 elements (PyTorch's own dispatcher asks the same before choosing it).
        Device::Cuda(_) if dims.dk.is_multiple_of(8) && dims.dv.is_multiple_of(8) => {
            let aligned = [q, k, v].iter().all(|x| x.stride()[1] % 8 == 0);
            aligned.then_some(Kernel::CudaEfficient)
        }
        _ => None,
    }
}

/// `[b, t, heads · w]` as `[b, t, heads, w]` (a view for rfa's projections).
fn split(x: &Tensor, heads: usize) -> Tensor {
    let s = x.size();
    x.reshape([s[0], s[1], heads as i64, s[2] / heads as i64])
}

/// `[b, heads, t, w]` (BHMK, what the SDPA entry points take) over rfa's layout.
fn heads_first(x: &Tensor, heads: usize) -> Tensor {
    split(x, heads).transpose(1, 2)
}

/// Back from `[b, heads, t, w]` to `[b, t, heads · w]`: a view when the kernel wrote
/// `[b, t, heads, w]` rows, as these do.
fn merge(x: Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}

/// The bias as the cutlass kernel reads it: the full `[b, heads, tq, tk]` shape (broadcast
/// dimensions as zero strides), the query's dtype, contiguous rows whose stride is a multiple of
/// 16 elements — padded like PyTorch's dispatcher pads it, then narrowed back to `tk`.
fn efficient_bias(bias: &Tensor, dims: &AttentionDims, kind: Kind) -> Tensor {
    let full = [dims.batch, dims.heads, dims.tq, dims.tk].map(|d| d as i64);
    let tk = full[3];
    let bias = bias.to_kind(kind);
    let aligned = bias.size()[3] == tk
        && bias.stride()[3] == 1
        && bias.stride().iter().all(|s| s % 16 == 0 || *s == 1);
    let bias = if aligned && tk % 16 == 0 {
        bias
    } else {
        let mut padded_shape = bias.size();
        padded_shape[3] = (tk + 15) / 16 * 16;
        let padded = Tensor::zeros(padded_shape, (kind, bias.device()));
        let mut view = padded.narrow(3, 0, tk);
        view.copy_(&bias);
        view
    };
    bias.expand(full, false)
}

/// What a failing kernel call leaves the user with: the error and the switch around it
/// (PyTorch's checks name the constraint; burn's backend API has no error channel).
fn kernel_failed(what: &str, e: tch::TchError) -> ! {
    let e = e.to_string();
    let first = e.lines().next().unwrap_or_default();
    panic!(
        "PyTorch's fused attention kernel ({what}) failed: {first}\nSet RFA_TCH_ATTENTION=ops to run attention in elementary tensor ops instead."
    )
}

/// The attention's output `[b, tq, heads · dv]` and per-row logsumexp `[b, heads, rows]`
/// (`rows` ≥ `tq`: the cutlass kernel pads it to a multiple of 32).
#[allow(clippy::too_many_arguments)]
fn sdpa_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    causal: bool,
    dims: &AttentionDims,
    scale: f64,
    kernel: Kernel,
) -> (Tensor, Tensor) {
    let h = dims.heads;
    let (qh, kh, vh) = (heads_first(q, h), heads_first(k, h), heads_first(v, h));
    let (out, lse) = match kernel {
        Kernel::CpuFlash => {
            let bias = bias.map(|b| b.to_kind(q.kind()));
            Tensor::f_internal_scaled_dot_product_flash_attention_for_cpu(
                &qh,
                &kh,
                &vh,
                0.0,
                causal,
                bias.as_ref(),
                scale,
            )
            .unwrap_or_else(|e| kernel_failed("CPU flash, forward", e))
        }
        Kernel::CudaEfficient => {
            let bias = bias.map(|b| efficient_bias(b, dims, q.kind()));
            let (out, lse, _seed, _offset) =
                Tensor::f_internal_scaled_dot_product_efficient_attention(
                    &qh,
                    &kh,
                    &vh,
                    bias.as_ref(),
                    true,
                    0.0,
                    causal,
                    scale,
                )
                .unwrap_or_else(|e| kernel_failed("CUDA memory-efficient, forward", e));
            (out, lse)
        }
    };
    (merge(out), lse)
}

/// The gradients of q, k and v, each `[b, t, heads · w]`.
fn sdpa_backward(
    saved: &AttentionSaved<LibTorch<f32>>,
    [q, k, v]: &[Tensor; 3],
    out: &Tensor,
    grad: &Tensor,
    dims: &AttentionDims,
    kernel: Kernel,
) -> [Tensor; 3] {
    let h = dims.heads;
    let lse = saved.stats.tensor.squeeze_dim(3);
    let (bias, causal) = (saved.mask.bias.as_ref().map(|b| &b.tensor), saved.mask.causal);
    let (dq, dk, dv) = match kernel {
        Kernel::CpuFlash => {
            let bias = bias.map(|b| b.to_kind(q.kind()));
            let (dq, dk, dv) =
                Tensor::f_internal_scaled_dot_product_flash_attention_for_cpu_backward(
                    &heads_first(grad, h),
                    &heads_first(q, h),
                    &heads_first(k, h),
                    &heads_first(v, h),
                    &heads_first(out, h),
                    &lse,
                    0.0,
                    causal,
                    bias.as_ref(),
                    saved.scale,
                )
                .unwrap_or_else(|e| kernel_failed("CPU flash, backward", e));
            (merge(dq), merge(dk), merge(dv))
        }
        Kernel::CudaEfficient => {
            // `_efficient_attention_backward` takes [b, t, heads, w] (BMHK), rfa's own layout.
            let bias = bias.map(|b| efficient_bias(b, dims, q.kind()));
            // Dropout's random state: unused at p = 0, but the signature wants tensors.
            let unused = || Tensor::zeros(&[] as &[i64], (Kind::Int64, Device::Cpu));
            let (dq, dk, dv, _) = Tensor::f_internal_efficient_attention_backward(
                &split(grad, h),
                &split(q, h),
                &split(k, h),
                &split(v, h),
                bias.as_ref(),
                &split(out, h),
                None::<&Tensor>,
                None::<&Tensor>,
                dims.tq as i64,
                dims.tk as i64,
                &lse,
                0.0,
                &unused(),
                &unused(),
                // sdp::CustomMaskType: 0 none, 1 causal from the top left.
                i64::from(causal),
                false,
                saved.scale,
                None,
                None,
                false,
            )
            .unwrap_or_else(|e| kernel_failed("CUDA memory-efficient, backward", e));
            let flat = |x: Tensor| {
                let s = x.size();
                x.reshape([s[0], s[1], s[2] * s[3]])
            };
            (flat(dq), flat(dk), flat(dv))
        }
    };
    [dq, dk, dv]
}

fn dims_of(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    heads: usize,
) -> AttentionDims {
    let shape = |x: &Tensor| burn::tensor::Shape::from(x.size());
    AttentionDims::new(&shape(q), &shape(k), &shape(v), bias.map(shape).as_ref(), heads)
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
        TchTensor::new(Tensor::internal_softmax_backward_data(&grad.tensor, &y.tensor, -1, kind))
    }

    fn fused_attention_stats(
        q: TchTensor,
        k: TchTensor,
        v: TchTensor,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> (TchTensor, TchTensor) {
        let bias = mask.bias.as_ref().map(|b| &b.tensor);
        let dims = dims_of(&q.tensor, &k.tensor, &v.tensor, bias, heads);
        match kernel(&q.tensor, &k.tensor, &v.tensor, &dims) {
            Some(kernel) => {
                let (out, lse) = sdpa_forward(
                    &q.tensor,
                    &k.tensor,
                    &v.tensor,
                    bias,
                    mask.causal,
                    &dims,
                    scale,
                    kernel,
                );
                (TchTensor::new(out), TchTensor::new(lse.unsqueeze(3)))
            }
            None => fallback::attention::<Self>(q, k, v, mask, heads, scale),
        }
    }

    fn attention_backward_uses_output() -> bool {
        attention_path() == AttentionPath::Sdpa
    }

    fn fused_attention_backward(saved: AttentionSaved<Self>, grad: TchTensor) -> [TchTensor; 3] {
        let saved = saved.unpacked();
        // The forward pass's choice shows in what it kept: one number per row (logsumexp) and
        // the output for the SDPA kernels, two per row for the fallback.
        let out = match (&saved.out, saved.stats.shape()[3]) {
            (Some(out), 1) => out.tensor.shallow_clone(),
            _ => return fallback::attention_backward::<Self>(saved, grad),
        };
        let qkv = saved.operands().map(|x| x.tensor);
        let [q, k, v] = &qkv;
        let dims = dims_of(q, k, v, saved.mask.bias.as_ref().map(|b| &b.tensor), saved.heads());
        let kernel = match q.device() {
            Device::Cpu => Kernel::CpuFlash,
            _ => Kernel::CudaEfficient,
        };
        // Autodiff may hand over a broadcast (zero-stride) gradient.
        sdpa_backward(&saved, &qkv, &out, &grad.tensor.contiguous(), &dims, kernel)
            .map(TchTensor::new)
    }

    fn fused_layer_norm(x: TchTensor, gamma: TchTensor, beta: TchTensor, eps: f64) -> TchTensor {
        let d = last_dim(&x.tensor);
        TchTensor::new(x.tensor.layer_norm([d], Some(&gamma.tensor), Some(&beta.tensor), eps, true))
    }

    fn layer_norm_as_one_node() -> bool {
        true
    }

    fn tap_terms_as_one_node() -> bool {
        true
    }

    fn bf16_activations() -> bool {
        true
    }

    /// PyTorch's LayerNorm kernel (one pass instead of burn's nine), keeping x and the per-row
    /// mean and 1/std it returns.
    fn fused_layer_norm_forward(
        x: TchTensor,
        gamma: TchTensor,
        beta: TchTensor,
        eps: f64,
    ) -> (TchTensor, LayerNormSaved<Self>) {
        let d = last_dim(&x.tensor);
        let (y, mean, rstd) =
            x.tensor.native_layer_norm([d], Some(&gamma.tensor), Some(&beta.tensor), eps);
        (
            TchTensor::new(y),
            LayerNormSaved {
                kept: x,
                stats: vec![TchTensor::new(mean), TchTensor::new(rstd)],
                gamma,
                beta,
            },
        )
    }

    /// tch has no binding for `native_layer_norm_backward`: the analytic gradients in a few
    /// libtorch ops on the kept x, mean and 1/std.
    fn fused_layer_norm_backward(
        saved: LayerNormSaved<Self>,
        grad: TchTensor,
        need: [bool; 3],
    ) -> [Option<TchTensor>; 3] {
        let (x, grad) = (&saved.kept.tensor, &grad.tensor);
        let (mean, rstd) = (&saved.stats[0].tensor, &saved.stats[1].tensor);
        let xhat = (x - mean) * rstd;
        let rows: Vec<i64> = (0..x.dim() as i64 - 1).collect();
        let dx = need[0].then(|| {
            let g = grad * &saved.gamma.tensor;
            let m1 = g.mean_dim(-1, true, None);
            let m2 = (&g * &xhat).mean_dim(-1, true, None);
            (g - m1 - &xhat * m2) * rstd
        });
        let dgamma = need[1].then(|| (grad * &xhat).sum_dim_intlist(rows.as_slice(), false, None));
        let dbeta = need[2].then(|| grad.sum_dim_intlist(rows.as_slice(), false, None));
        [dx, dgamma, dbeta].map(|d| d.map(TchTensor::new))
    }
}

fn last_dim(x: &Tensor) -> i64 {
    *x.size().last().expect("LayerNorm of a 0-d tensor")
}
