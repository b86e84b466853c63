//! LoRA on a burn model of your own: build its linear layers as `LoraLinear`, list them by module
//! path (`LoraModel`), attach adapters by PEFT's `target_modules`, train only the adapters, and
//! save them in PEFT's format.
//!
//!     cargo run -p lora-core --example own_model -- OUT_DIR
//!
//! The adapter's keys are `base_model.model.<path>.lora_{A,B}.weight`: they load with
//! `peft.PeftModel.from_pretrained(model, OUT_DIR)` into a PyTorch model whose modules carry the
//! same paths (here: `encoder.0`, `encoder.1`, `head`).

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, activation};
use lora_core::{
    ForeachAdamW, LoraConfig, LoraLinear, LoraModel, ModuleNames, TargetModules, WeightLayout,
    attach_lora, count_params, save_adapter,
};

/// A two-layer MLP encoder and a linear head; the weights would come from your checkpoint.
#[derive(Module, Debug)]
struct Classifier<B: Backend> {
    encoder: Vec<LoraLinear<B>>,
    head: LoraLinear<B>,
}

impl<B: Backend> Classifier<B> {
    fn new(sizes: &[usize], classes: usize, device: &B::Device) -> Self {
        // burn's `[in, out]` layout, frozen: `from_weights` sets no gradient on the base.
        let linear = |d_in: usize, d_out: usize| {
            LoraLinear::from_weights(
                Tensor::random([d_in, d_out], Distribution::Normal(0.0, 0.2), device),
                Some(Tensor::zeros([d_out], device)),
                WeightLayout::Linear,
            )
        };
        let encoder = sizes.windows(2).map(|w| linear(w[0], w[1])).collect();
        Self { encoder, head: linear(*sizes.last().expect("sizes"), classes) }
    }

    fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for layer in &self.encoder {
            x = activation::gelu(layer.forward(x));
        }
        self.head.forward(x)
    }
}

/// The paths PEFT will see: as in the PyTorch model, `encoder.N` and `head`.
impl<B: Backend> LoraModel<B> for Classifier<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v: Vec<(String, &LoraLinear<B>)> =
            self.encoder.iter().enumerate().map(|(i, l)| (format!("encoder.{i}"), l)).collect();
        v.push(("head".into(), &self.head));
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v: Vec<(String, &mut LoraLinear<B>)> =
            self.encoder.iter_mut().enumerate().map(|(i, l)| (format!("encoder.{i}"), l)).collect();
        v.push(("head".into(), &mut self.head));
        v
    }

    /// `all-linear` leaves the head out, as PEFT does.
    fn output_layers(&self) -> Vec<String> {
        vec!["head".into()]
    }
}

type B = Autodiff<NdArray<f32>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "own-model-adapter".into());
    let device = Default::default();
    let model = Classifier::<B>::new(&[16, 32, 32], 3, &device);

    // LoRA of rank 4 on every encoder layer (the head is an output layer).
    let (mut model, adapted) =
        attach_lora(model, &LoraConfig::new(4, 8.0, TargetModules::parse("all-linear")))?;
    let params = count_params(&model);
    println!("adapted {adapted:?}; {params:?}");

    // A few steps on random data: only the adapters have gradients.
    let x = Tensor::<B, 2>::random([64, 16], Distribution::Normal(0.0, 1.0), &device);
    let target = Tensor::<B, 2>::random([64, 3], Distribution::Normal(0.0, 1.0), &device);
    let mut optim = ForeachAdamW::<B>::new(0.0, 1e-8);
    for step in 0..20 {
        let loss = (model.forward(x.clone()) - target.clone()).powi_scalar(2).mean();
        if step % 5 == 0 {
            println!("step {step}: loss {:.4}", loss.clone().into_scalar());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads)?;
    }

    // PEFT's adapter_config.json + adapter_model.safetensors.
    let config = save_adapter(&model, out.as_ref(), Some("my-classifier"), ModuleNames::default())?;
    println!("saved the adapter to {out}: target_modules {:?}", config.target_modules);
    Ok(())
}
