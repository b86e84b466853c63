//! The same models on CUDA (cargo feature `cuda`; run on the GPU machine by
//! scripts/device-check.sh): parity with the reference within 1e-3, and a LoRA backward pass
//! whose gradients equal the CPU's.
#![cfg(feature = "cuda")]

mod common;

use burn::backend::{Autodiff, Cuda};
use common::{fixtures, gpt2_lora_grads, AB};
use rfa_models::parity::{check_dir, Tolerance};

type C = Cuda<f32, i32>;

#[test]
fn models_on_cuda_match_the_reference() {
    let device = Default::default();
    for name in ["gpt2", "bert", "vit"] {
        let report = check_dir::<C>(&fixtures().join("hf-parity").join(name), Tolerance { abs: 1e-3, rel: 1e-4 }, &device).unwrap();
        println!("CUDA {report}");
        assert!(report.ok(), "{name}: {:?}", report.failures());
    }
}

#[test]
fn lora_gradients_on_cuda_equal_the_cpu() {
    let (loss_cpu, cpu) = gpt2_lora_grads::<AB>(&Default::default());
    let (loss_gpu, gpu) = gpt2_lora_grads::<Autodiff<C>>(&Default::default());
    println!("loss cpu {loss_cpu:.7} cuda {loss_gpu:.7}");
    assert!((loss_cpu - loss_gpu).abs() <= 1e-4 * loss_cpu.abs().max(1.0));
    assert_eq!(cpu.len(), gpu.len());
    let mut worst = 0f32;
    for (c, g) in cpu.iter().zip(&gpu) {
        let scale = c.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = c.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
        worst = worst.max(err);
    }
    println!("{} adapter gradients, worst max-abs error relative to the tensor's largest entry: {worst:.2e}", cpu.len());
    assert!(worst <= 1e-3, "{worst}");
}
