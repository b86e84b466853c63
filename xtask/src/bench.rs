//! `cargo xtask bench`: the RFA unlearning step, timed (median of `--steps` after `--warmup`),
//! one JSON line per configuration. The step is the method document's: one adapted pass over a
//! retain and a forget batch (concatenated), the taps of every adapted layer, the retain and
//! forget terms, backward through the adapters, AdamW. GPT-2 skips the LM head (RFA needs no
//! logits). Weights are random: timing does not depend on their values.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};
use lora_core::{LoraConfig, TargetModules, attach_lora, count_params};
use rfa_loss::RfaObjective;
use rfa_models::{Gpt2Config, Gpt2LmHeadModel, Tap, VitConfig, VitForImageClassification};

pub struct Shape {
    pub model: String,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub batch: usize,
    pub seq: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the step; returns the JSON row.
pub fn run<B: AutodiffBackend>(s: &Shape, steps: usize, warmup: usize, backend: &str, device: &B::Device) -> Result<serde_json::Value> {
    let obj = RfaObjective::default();
    let (b, n) = (s.batch, 2 * s.batch);
    let mut times = Vec::new();
    let (params, trainable, tokens);
    // Parameters that do matmul work (embedding tables excluded), for the FLOP estimate.
    let compute_params: usize;
    match s.model.as_str() {
        "gpt2" => {
            let cfg = Gpt2Config::new(50257, 1024, s.width, s.layers, s.heads);
            let m = Gpt2LmHeadModel::<B>::init(&cfg, 0, device)?;
            let (mut m, _) = attach_lora(m, &LoraConfig::new(8, 16.0, TargetModules::parse("c_attn")))?;
            let pc = count_params(&m);
            (params, trainable, tokens) = (pc.total, pc.trainable, s.seq);
            compute_params = params - (50257 + 1024) * s.width;
            let mut opt = AdamWConfig::new().with_epsilon(1e-8).init::<B, Gpt2LmHeadModel<B>>();
            let ids = Tensor::<B, 2, Int>::random([n, s.seq], Distribution::Uniform(0.0, 50257.0), device);
            let mus: Vec<Tensor<B, 3>> =
                (0..s.layers).map(|_| Tensor::random([1, 1, 3 * s.width], Distribution::Normal(0.0, 1.0), device)).collect();
            for i in 0..warmup + steps {
                let t0 = Instant::now();
                let (_, taps) = m.forward_hidden(ids.clone(), None);
                let (r, f) = Tap::split_rows(&taps, b);
                let loss = obj.total(&r, None, &f, &mus, None)?.total;
                let g = GradientsParams::from_grads(loss.backward(), &m);
                m = opt.step(5e-5, m, g);
                let _ = m.transformer.ln_f.gamma.val().into_data(); // wait for the backend
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        "vit" => {
            let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
            let side = s.seq;
            let patch = if side % 16 == 0 { 16 } else { 7 };
            let cfg = VitConfig::new(side, patch, 3, s.width, s.layers, s.heads, 4 * s.width, &names);
            let m = VitForImageClassification::<B>::init(&cfg, 0, device)?;
            let (mut m, adapted) = attach_lora(m, &LoraConfig::new(8, 16.0, TargetModules::parse("query,value")))?;
            let pc = count_params(&m);
            (params, trainable, tokens) = (pc.total, pc.trainable, cfg.num_patches() + 1);
            compute_params = params;
            let mut opt = AdamWConfig::new().with_epsilon(1e-8).init::<B, VitForImageClassification<B>>();
            let x = Tensor::<B, 4>::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), device);
            let mus: Vec<Tensor<B, 3>> =
                adapted.iter().map(|_| Tensor::random([1, 1, s.width], Distribution::Normal(0.0, 1.0), device)).collect();
            for i in 0..warmup + steps {
                let t0 = Instant::now();
                let out = m.forward(x.clone());
                let (r, f) = Tap::split_rows(&out.taps, b);
                let loss = obj.total(&r, None, &f, &mus, None)?.total;
                let g = GradientsParams::from_grads(loss.backward(), &m);
                m = opt.step(5e-5, m, g);
                let _ = m.classifier.base.weight.val().into_data();
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        other => anyhow::bail!("unknown bench model `{other}` (gpt2, vit)"),
    }
    let med = median(times.clone());
    // Adapted forward (2·N·T) + input-gradient backward (2·N·T) over both batches, N without
    // embedding tables; attention's T² terms not counted.
    let flops = 4.0 * compute_params as f64 * (n * tokens) as f64;
    Ok(serde_json::json!({
        "model": s.model, "backend": backend, "dtype": "f32", "layers": s.layers, "width": s.width, "heads": s.heads,
        "batch_retain": b, "batch_forget": b, "tokens_per_sample": tokens, "params": params, "trainable": trainable,
        "step_ms_median": (med * 1000.0).round() / 1000.0,
        "step_ms_min": times.iter().cloned().fold(f64::INFINITY, f64::min),
        "step_ms_max": times.iter().cloned().fold(0.0, f64::max),
        "samples_per_s": (n as f64 / (med / 1000.0) * 10.0).round() / 10.0,
        "approx_gflops": (flops / (med / 1000.0) / 1e9 * 10.0).round() / 10.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark runs and reports what it measured (no timing is asserted).
    #[test]
    fn bench_rows_are_complete() {
        type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        for (model, seq) in [("gpt2", 8), ("vit", 28)] {
            let s = Shape { model: model.into(), layers: 1, width: 32, heads: 2, batch: 2, seq };
            let row = run::<AB>(&s, 1, 0, "cpu ndarray", &Default::default()).unwrap();
            assert!(row["step_ms_median"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["trainable"].as_u64().unwrap() > 0 && row["trainable"].as_u64() < row["params"].as_u64(), "{row}");
        }
        let bad = Shape { model: "llama".into(), layers: 1, width: 32, heads: 2, batch: 1, seq: 8 };
        assert!(run::<AB>(&bad, 1, 0, "cpu", &Default::default()).is_err());
    }
}
