// Shared by the integration tests (each test file includes it as a module).
#![allow(dead_code)]

use std::path::PathBuf;

pub type B = burn::backend::NdArray<f32>;
pub type AB = burn::backend::Autodiff<B>;

pub fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// `fixtures/` at the repository root (`$RFA_FIXTURES` when a test binary runs elsewhere, as on
/// the GPU machine).
pub fn fixtures() -> PathBuf {
    match std::env::var("RFA_FIXTURES") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// Gradients of every adapter matrix (A then B, in tap order) for one backward pass through the
/// GPT-2 fixture with its peft adapter: causal-LM loss plus the RFA retain term (mean squared
/// residual of every tap), so both the logits path and the taps are differentiated.
pub fn gpt2_lora_grads<AB: rfa_models::FusedAutodiff>(
    device: &AB::Device,
    base_dtype: Option<burn::tensor::DType>,
) -> (f32, Vec<Vec<f32>>) {
    use burn::tensor::{Int, Tensor, TensorData};
    use lora_core::{LoraModel, TensorFile};
    use rfa_models::{Gpt2LmHeadModel, causal_lm_loss};

    let dir = fixtures().join("hf-parity/gpt2");
    let mut model = Gpt2LmHeadModel::<AB>::load(&dir.join("model"), device).unwrap();
    lora_core::load_adapter(&mut model, &dir.join("adapter")).unwrap();
    if let Some(dt) = base_dtype {
        lora_core::set_base_dtype(&mut model, dt);
    }
    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    let ids = reference.get("input_ids").unwrap();
    let mask = reference.get("attention_mask").unwrap();
    let labels: Vec<i64> = ids.to_i64().iter().zip(mask.to_i64()).map(|(&t, m)| if m == 0 { -100 } else { t }).collect();
    let shape = ids.shape.clone();
    let out = model.forward(ids.to_int_tensor(device), Some(mask.to_int_tensor(device)));
    let labels = Tensor::<AB, 2, Int>::from_data(TensorData::new(labels, shape), device);
    let n = out.taps.len() as f64;
    let retain = out.taps.into_iter().map(|t| t.residual.powf_scalar(2.0).mean()).reduce(|a, b| a + b).unwrap().div_scalar(n);
    let loss = causal_lm_loss(out.logits, labels) + retain;
    let value: f32 = loss.clone().into_data().convert::<f32>().into_vec::<f32>().unwrap()[0];
    let grads = loss.backward();
    let mut all = Vec::new();
    for (_, l) in model.linears() {
        if let Some(a) = &l.lora {
            for p in [&a.lora_a, &a.lora_b] {
                let g = p.val().grad(&grads).expect("adapter gradient");
                all.push(g.into_data().convert::<f32>().into_vec::<f32>().unwrap());
            }
        }
    }
    (value, all)
}
