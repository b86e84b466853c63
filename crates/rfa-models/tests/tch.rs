//! The same models on burn's libtorch backend (cargo feature `tch`): PyTorch's kernels under our
//! model code, autodiff and fused-op definitions. Parity with the reference and LoRA / attention
//! gradients equal to burn-ndarray's.
//!
//! The device comes from `RFA_TCH_DEVICE` (`tch-cpu`, the default, or `tch-cuda[:N]`; the GPU
//! machine runs these through scripts/device-run.sh). The test binary needs the libtorch it was
//! built against on the library path (scripts/fetch-libtorch.sh).
//!
//! Tolerances: on the CPU both sides compute in f32 (measured: ≤ 1e-5 relative); on CUDA PyTorch
//! keeps f32 matmuls in f32 but lets cuDNN run convolutions (ViT's patch embedding) on TF32.
#![cfg(feature = "tch")]

mod common;

use burn::backend::libtorch::LibTorchDevice;
use burn::backend::{Autodiff, LibTorch};
use common::{
    AB, assert_fixtures_match, attention_case, classifier_lora_grads, gpt2_lora_grads,
    layer_norm_case, max_rel_error, tap_terms_case,
};
use rfa_models::parity::Tolerance;

type T = LibTorch<f32>;

fn device() -> LibTorchDevice {
    common::tch_device_from_env()
}

/// (abs tolerance of logits and hidden states, scaled by magnitude; relative for losses; gradients)
fn tolerances(device: &LibTorchDevice) -> (f32, f32, f32) {
    match device {
        LibTorchDevice::Cpu => (1e-4, 1e-5, 1e-4),
        _ => (4e-3, 1e-3, 1e-2),
    }
}

#[test]
fn models_on_tch_match_the_reference() {
    let device = device();
    let (abs, rel, _) = tolerances(&device);
    let tol = Tolerance { abs, rel, scale_by_magnitude: true };
    assert_fixtures_match::<T>(&format!("tch {device:?}"), tol, &device);
}

#[test]
fn lora_gradients_on_tch_equal_ndarrays() {
    let device = device();
    let (_, rel, grad_tol) = tolerances(&device);
    let (loss_cpu, cpu) = gpt2_lora_grads::<AB>(&Default::default(), None);
    let (loss_tch, tch) = gpt2_lora_grads::<Autodiff<T>>(&device, None);
    println!("loss ndarray {loss_cpu:.7} tch {loss_tch:.7}");
    assert!(
        (loss_cpu - loss_tch).abs() <= rel * loss_cpu.abs().max(1.0),
        "{loss_cpu} vs {loss_tch}"
    );
    assert_eq!(cpu.len(), tch.len());
    let worst = cpu.iter().zip(&tch).map(|(c, g)| max_rel_error(c, g)).fold(0.0f32, f32::max);
    println!(
        "{} adapter gradients, worst max-abs error relative to the tensor's largest entry: {worst:.2e}",
        cpu.len()
    );
    assert!(worst <= grad_tol, "{worst}");
}

#[test]
fn attention_gradients_on_tch_equal_ndarrays() {
    let device = device();
    let (_, _, grad_tol) = tolerances(&device);
    let (cpu, tch) =
        (attention_case::<AB>(&Default::default()), attention_case::<Autodiff<T>>(&device));
    for (name, (c, g)) in ["out", "dq", "dk", "dv"].iter().zip(cpu.iter().zip(&tch)) {
        let err = max_rel_error(c, g);
        println!("attention {name}: max-abs error relative to the largest entry {err:.2e}");
        assert!(err <= grad_tol, "{name}: {err}");
    }
}

/// `--dtype bf16` on libtorch: frozen weights in bf16, the rest in f32; gradients equal the f32
/// ones to bf16's precision (as on burn-cuda).
#[test]
fn bf16_base_weights_on_tch_give_ndarrays_gradients_to_bf16_precision() {
    let device = device();
    let (loss_cpu, cpu) = gpt2_lora_grads::<AB>(&Default::default(), None);
    let (loss_tch, tch) = gpt2_lora_grads::<Autodiff<T>>(&device, Some(burn::tensor::DType::BF16));
    println!("loss ndarray f32 {loss_cpu:.7} tch bf16 base {loss_tch:.7}");
    assert!((loss_cpu - loss_tch).abs() <= 1e-2 * loss_cpu.abs().max(1.0));
    let worst = cpu.iter().zip(&tch).map(|(c, g)| max_rel_error(c, g)).fold(0.0f32, f32::max);
    println!(
        "{} adapter gradients with bf16 base weights, worst relative error {worst:.2e}",
        cpu.len()
    );
    assert!(worst <= 5e-2, "{worst}");
}

/// The same for BERT and ViT (their blocks' bf16 interiors: post-norm, the padding bias of a
/// bf16 attention, the patch embedding), logits and adapter gradients.
#[test]
fn bf16_bert_and_vit_on_tch_give_ndarrays_gradients_to_bf16_precision() {
    let device = device();
    for name in ["bert", "vit"] {
        let cpu = classifier_lora_grads::<AB>(name, &Default::default(), None);
        let tch =
            classifier_lora_grads::<Autodiff<T>>(name, &device, Some(burn::tensor::DType::BF16));
        assert_eq!(cpu.len(), tch.len());
        let logits = max_rel_error(&cpu[0], &tch[0]);
        let worst =
            cpu[1..].iter().zip(&tch[1..]).map(|(c, g)| max_rel_error(c, g)).fold(0.0f32, f32::max);
        println!(
            "{name} bf16 on tch: logits {logits:.2e}, {} adapter gradients worst {worst:.2e}",
            cpu.len() - 1
        );
        assert!(logits <= 2e-2 && worst <= 5e-2, "{name}: logits {logits}, gradients {worst}");
    }
}

/// With bf16 frozen weights, an input already in bf16 (a block's interior on libtorch, as under
/// autocast) stays bf16 through the product, the bias and the adapter — no cast back to f32 —
/// while the adapter's parameters and their gradients stay f32.
#[test]
fn a_bf16_input_keeps_the_layer_in_bf16_and_its_adapter_gradients_in_f32() {
    use burn::tensor::{DType, Tensor, TensorData};
    type A = Autodiff<T>;
    let device = device();
    let w = Tensor::<A, 2>::from_data(
        TensorData::new(common::uniform(1, 48 * 32, 0.2), [48, 32]),
        &device,
    );
    let b = Tensor::<A, 1>::from_data(TensorData::new(common::uniform(2, 32, 0.2), [32]), &device);
    let mut lin = lora_core::LoraLinear::from_weights(w, Some(b), lora_core::WeightLayout::Linear);
    lin.attach(4, 8.0, false, 3);
    lin.set_base_dtype(DType::BF16);
    assert_eq!(lin.weight_dtype(), DType::BF16);
    let x = Tensor::<A, 3>::from_data(
        TensorData::new(common::uniform(4, 2 * 5 * 48, 1.0), [2, 5, 48]),
        &device,
    );
    let (p, r) = lin.split(x.cast(DType::BF16));
    let r = r.expect("an adapter");
    assert_eq!((p.dtype(), r.dtype()), (DType::BF16, DType::BF16));
    let grads = (p + r).cast(DType::F32).sum().backward();
    let lora = lin.lora.as_ref().unwrap();
    for (name, param) in [("A", &lora.lora_a), ("B", &lora.lora_b)] {
        assert_eq!(param.val().dtype(), DType::F32, "{name}");
        let g = param.val().grad(&grads).expect("a gradient");
        assert_eq!(g.dtype(), DType::F32, "{name}'s gradient");
    }
}

/// libtorch's own GELU (both kinds) and softmax kernels behind the fused ops equal the burn-ops
/// definitions on ndarray, values and input gradients.
#[test]
fn fused_gelu_and_softmax_on_tch_equal_ndarrays() {
    use burn::tensor::{Tensor, TensorData};
    use rfa_fused::{FusedAutodiff, GeluKind};
    use rfa_fused::{gelu, softmax_last};

    fn run<A: FusedAutodiff>(device: &A::Device) -> Vec<Vec<f32>> {
        let shape = [3, 5, 67];
        let mut s = 7u64;
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect();
        let weights: Vec<f32> = values.iter().rev().map(|v| v * 0.5 + 0.25).collect();
        let w = Tensor::<A, 3>::from_data(TensorData::new(weights, shape), device);
        let host =
            |x: Tensor<A::InnerBackend, 3>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let mut all = Vec::new();
        for op in 0..3 {
            let x = Tensor::<A, 3>::from_data(TensorData::new(values.clone(), shape), device)
                .require_grad();
            let y = match op {
                0 => gelu(x.clone(), GeluKind::Erf),
                1 => gelu(x.clone(), GeluKind::Tanh),
                _ => softmax_last(x.clone()),
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            all.push(host(y.inner()));
            all.push(host(x.grad(&grads).expect("a gradient")));
        }
        all
    }
    // Element-wise work and row sums: no TF32 on any device, so tight enough everywhere that
    // the two GELUs (1.2e-4 apart here) cannot pass for each other.
    let device = device();
    let (cpu, tch) = (run::<AB>(&Default::default()), run::<Autodiff<T>>(&device));
    let names =
        ["gelu erf", "gelu erf grad", "gelu tanh", "gelu tanh grad", "softmax", "softmax grad"];
    for (name, (c, g)) in names.iter().zip(cpu.iter().zip(&tch)) {
        let err = max_rel_error(c, g);
        println!("{name}: max-abs error relative to the largest entry {err:.2e}");
        assert!(err <= 1e-5, "{name}: {err}");
    }
}

/// LayerNorm on libtorch is one autodiff node over PyTorch's kernel; its output and the
/// gradients of x, gamma and beta equal burn's op-by-op definition on ndarray.
#[test]
fn layer_norm_on_tch_equals_ndarrays() {
    assert!(<T as rfa_models::FusedOps>::layer_norm_as_one_node());
    let device = device();
    let (cpu, tch) =
        (layer_norm_case::<AB>(&Default::default()), layer_norm_case::<Autodiff<T>>(&device));
    let errs: Vec<f32> = cpu.iter().zip(&tch).map(|(c, g)| max_rel_error(c, g)).collect();
    println!(
        "layer norm out, dx, dgamma, dbeta: max-abs errors relative to the largest entry {errs:?}"
    );
    // The first row spreads 1e-3 around 3.0: f32's rounding of x − mean there is ~1e-3 of the
    // row's deviation, and burn's two-pass statistics and PyTorch's Welford round differently
    // (measured: up to 3.2e-5 of the output's largest entry). A wrong formula, or a wrong eps
    // on that row (variance 3e-7 against eps 1e-5), is off by far more.
    for (name, err) in ["out", "dx", "dgamma", "dbeta"].iter().zip(errs) {
        assert!(err <= 1e-4, "{name}: {err}");
    }
}

/// Attention runs PyTorch's SDPA kernels (flash on the CPU, memory-efficient on CUDA): they keep
/// one logsumexp per query row, where rfa's generic attention keeps the row max and sum.
/// `RFA_TCH_ATTENTION=ops` switches back to the generic ops (CI runs this file both ways).
#[test]
fn attention_takes_pytorchs_sdpa_kernels_unless_switched_off() {
    use burn::tensor::{Distribution, Tensor, TensorPrimitive};
    use rfa_fused::FusedOps;

    let device = device();
    let (b, t, heads, d) = (2, 5, 2, 8);
    let x = || {
        Tensor::<T, 3>::random([b, t, heads * d], Distribution::Default, &device)
            .into_primitive()
            .tensor()
    };
    let (_, stats) =
        T::fused_attention_stats(x(), x(), x(), rfa_fused::AttentionMask::none(), heads, 0.5);
    let stats: Tensor<T, 4> = Tensor::from_primitive(TensorPrimitive::Float(stats));
    let [sb, sh, rows, n] = stats.dims();
    assert_eq!([sb, sh], [b, heads]);
    match std::env::var("RFA_TCH_ATTENTION").as_deref() {
        Ok("ops") => assert_eq!([rows, n], [t, 2], "the generic ops keep each row's max and sum"),
        // CUDA's kernel pads the rows to a multiple of 32.
        _ => assert!(
            n == 1 && rows >= t,
            "expected SDPA's logsumexp per row, got stats {:?}",
            stats.dims()
        ),
    }
    assert_eq!(<T as FusedOps>::attention_backward_uses_output(), n == 1);
    // What the reports and benchmark rows name.
    assert_eq!(rfa_fused::tch_attention_kernels(), if n == 1 { "sdpa" } else { "ops" });
}

/// RFA's per-layer terms as one autodiff node on libtorch, every token and the first only:
/// value and the gradients of both features equal ndarray's op-by-op definition.
#[test]
fn tap_terms_on_tch_equal_ndarrays() {
    assert!(<T as rfa_models::FusedOps>::tap_terms_as_one_node());
    let device = device();
    let tol = if matches!(device, LibTorchDevice::Cpu) { 1e-5 } else { 1e-4 };
    for cls in [false, true] {
        let (cpu, tch) = (
            tap_terms_case::<AB>(&Default::default(), false, cls),
            tap_terms_case::<Autodiff<T>>(&device, true, cls),
        );
        let errs: Vec<f32> = cpu.iter().zip(&tch).map(|(c, g)| max_rel_error(c, g)).collect();
        println!(
            "tap terms (cls {cls}) value, dpre, dres: max-abs errors relative to the largest entry {errs:?}"
        );
        assert!(errs.iter().all(|e| *e <= tol), "{errs:?}");
    }
}
