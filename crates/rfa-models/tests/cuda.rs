//! The same models on CUDA (cargo feature `cuda`; run on the GPU machine by
//! scripts/device-run.sh): parity with the reference and a LoRA backward pass whose gradients
//! equal the CPU's.
//!
//! Tolerances are TF32's, not f32's: burn-cuda 0.21 runs every f32 matmul on tensor cores with
//! TF32 operands (cubek-matmul's `Strategy::Auto` → `SimpleCyclicCmma`, no switch to turn it
//! off), i.e. 10 mantissa bits, relative rounding 2^-11 ≈ 4.9e-4 per operand. Measured on an
//! H100: max abs errors up to 7.8e-3 on GPT-2 hidden states of magnitude 3.4 (2.3e-3 relative);
//! the CPU matches the same references to 2.4e-6.
//!
//! Without a GPU, feature `wgpu` (and not `cuda`) runs the same checks on burn's cubecl backend
//! over wgpu — with Mesa's lavapipe, on the CPU: burn-cuda's cubecl code paths (and, with
//! `--features burn/fusion`, its kernel fusion) compiled to WGSL. bf16 is CUDA's only.
#![cfg(any(feature = "cuda", feature = "wgpu"))]

mod common;

use burn::backend::Autodiff;
use common::{
    AB, assert_fixtures_match, attention_case, gpt2_lora_grads, layer_norm_case, max_rel_error,
    tap_terms_case,
};
use rfa_models::parity::Tolerance;

#[cfg(feature = "cuda")]
type C = burn::backend::Cuda<f32, i32>;
#[cfg(not(feature = "cuda"))]
type C = burn::backend::Wgpu<f32, i32>;
const GPU: &str = if cfg!(feature = "cuda") { "CUDA" } else { "wgpu" };

#[test]
fn models_on_cuda_match_the_reference() {
    let device = Default::default();
    // max abs error <= 4e-3 · max(1, max |reference|) per tensor; loss and retain MSE to 1e-3
    // relative (measured: 2.2e-4 at worst, the ViT retain MSE).
    let tol = Tolerance { abs: 4e-3, rel: 1e-3, scale_by_magnitude: true };
    assert_fixtures_match::<C>(GPU, tol, &device);
}

#[test]
fn lora_gradients_on_cuda_equal_the_cpu() {
    let (loss_cpu, cpu) = gpt2_lora_grads::<AB>(&Default::default(), None);
    let (loss_gpu, gpu) = gpt2_lora_grads::<Autodiff<C>>(&Default::default(), None);
    println!("loss cpu {loss_cpu:.7} {GPU} {loss_gpu:.7}");
    assert!((loss_cpu - loss_gpu).abs() <= 1e-4 * loss_cpu.abs().max(1.0));
    assert_eq!(cpu.len(), gpu.len());
    let worst = cpu.iter().zip(&gpu).map(|(c, g)| max_rel_error(c, g)).fold(0.0f32, f32::max);
    println!(
        "{} adapter gradients, worst max-abs error relative to the tensor's largest entry: {worst:.2e}",
        cpu.len()
    );
    assert!(worst <= 1e-2, "{worst}");
}

/// `--dtype bf16`: frozen weights in bf16, adapters and everything else in f32. Gradients equal
/// the CPU's f32 ones to bf16's precision (8 mantissa bits, 3.9e-3 relative per operand).
#[cfg(feature = "cuda")]
#[test]
fn bf16_base_weights_on_cuda_give_the_cpu_gradients_to_bf16_precision() {
    let (loss_cpu, cpu) = gpt2_lora_grads::<AB>(&Default::default(), None);
    let (loss_gpu, gpu) =
        gpt2_lora_grads::<Autodiff<C>>(&Default::default(), Some(burn::tensor::DType::BF16));
    println!("loss cpu f32 {loss_cpu:.7} cuda bf16 base {loss_gpu:.7}");
    assert!((loss_cpu - loss_gpu).abs() <= 1e-2 * loss_cpu.abs().max(1.0));
    let worst = cpu.iter().zip(&gpu).map(|(c, g)| max_rel_error(c, g)).fold(0.0f32, f32::max);
    println!(
        "{} adapter gradients with bf16 base weights, worst error relative to the tensor's largest entry: {worst:.2e}",
        cpu.len()
    );
    assert!(worst <= 5e-2, "{worst}");
}

/// The fused attention's output and q, k, v gradients (BERT's and ViT's path: separate
/// projections, a padding bias with padded keys) on CUDA equal the CPU's. GPT-2's packed path is
/// covered by `lora_gradients_on_cuda_equal_the_cpu`.
#[test]
fn attention_gradients_on_cuda_equal_the_cpu() {
    let (cpu, gpu) = (
        attention_case::<AB>(&Default::default()),
        attention_case::<Autodiff<C>>(&Default::default()),
    );
    for (name, (c, g)) in ["out", "dq", "dk", "dv"].iter().zip(cpu.iter().zip(&gpu)) {
        let err = max_rel_error(c, g);
        println!("attention {name}: max-abs error relative to the largest entry {err:.2e}");
        assert!(err <= 1e-2, "{name}: {err}");
    }
}

/// LayerNorm as one autodiff node (`FusedOps::layer_norm_as_one_node`): output and the gradients
/// of x, gamma and beta (full fine-tuning trains them) equal ndarray's op-by-op definition.
#[test]
fn layer_norm_on_cuda_equals_the_cpu() {
    assert!(<C as rfa_models::FusedOps>::layer_norm_as_one_node());
    let (cpu, gpu) = (
        layer_norm_case::<AB>(&Default::default()),
        layer_norm_case::<Autodiff<C>>(&Default::default()),
    );
    for (name, (c, g)) in ["out", "dx", "dgamma", "dbeta"].iter().zip(cpu.iter().zip(&gpu)) {
        let err = max_rel_error(c, g);
        println!("layer norm {name}: max-abs error relative to the largest entry {err:.2e}");
        // No matmul (no TF32); the near-constant first row's rounding (see tests/tch.rs).
        assert!(err <= 1e-4, "{name}: {err}");
    }
}

/// RFA's per-layer terms as one autodiff node (`FusedOps::tap_terms_as_one_node`), every token
/// and the first only: value and the gradients of both features equal ndarray's op-by-op
/// definition of the same terms.
#[test]
fn tap_terms_on_cuda_equal_the_cpu() {
    assert!(<C as rfa_models::FusedOps>::tap_terms_as_one_node());
    for cls in [false, true] {
        let (cpu, gpu) = (
            tap_terms_case::<AB>(&Default::default(), false, cls),
            tap_terms_case::<Autodiff<C>>(&Default::default(), true, cls),
        );
        for (name, (c, g)) in ["terms", "dpre", "dres"].iter().zip(cpu.iter().zip(&gpu)) {
            let err = max_rel_error(c, g);
            println!(
                "tap terms (cls {cls}) {name}: max-abs error relative to the largest entry {err:.2e}"
            );
            assert!(err <= 1e-5, "{name}: {err}");
        }
    }
}
