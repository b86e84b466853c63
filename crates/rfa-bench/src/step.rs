//! `cargo xtask bench`: the RFA unlearning step, timed, one JSON line per configuration. The step
//! is the method document's: one adapted pass over a retain and a forget batch (concatenated),
//! the taps of every adapted layer, the retain and forget terms, backward through the adapters,
//! AdamW. The pass ends at the last adapted layer (`forward_taps`, as `rfa unlearn` runs it: RFA
//! needs no logits), so the rest of the last block and the head are not computed. Weights are
//! random: timing does not depend on their values.
//!
//! The first step is reported on its own (`first_step_ms`): on CUDA it includes the run-time
//! compilation of every kernel the step needs, which a user waits for once per process. The
//! steady state is the median of `steps` after `warmup` further steps.

use std::time::{Duration, Instant};

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{DType, Distribution, Int, Tensor};
use lora_core::{
    ForeachAdamW, LoraConfig, LoraModel, TargetModules, attach_lora, count_params, set_base_dtype,
};
use rfa_fused::TapSplit;
use rfa_loss::RfaObjective;
use rfa_models::memory::{DeviceMemory, SampledPeak, sample_peak};
use rfa_models::{
    BertConfig, BertForSequenceClassification, FusedAutodiff, Gpt2Config, Gpt2LmHeadModel,
    VitConfig, VitForImageClassification,
};

pub struct Shape {
    pub model: String,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub batch: usize,
    pub seq: usize,
    /// `foreach` (rfa's optimizer) or `burn` (burn's AdamW).
    pub optimizer: String,
    /// The objective's terms split op by op even where the backend runs them as one node per
    /// layer (`FusedOps::tap_terms_as_one_node`): for A/B comparisons.
    pub split_taps: bool,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `f32`, or `bf16`: frozen base weights stored in bf16 (their products on bf16 tensor cores),
/// activations, adapters, optimizer state and loss in f32 — PyTorch autocast's split, with the
/// adapter kept in f32.
pub fn base_dtype(dtype: &str) -> Result<Option<DType>> {
    match dtype {
        "f32" | "fp32" => Ok(None),
        "bf16" => Ok(Some(DType::BF16)),
        other => anyhow::bail!("unknown dtype `{other}` (f32, bf16)"),
    }
}

/// Runs `first + warmup + steps` steps of `step`, timing each after a device sync.
fn time_steps<B: FusedAutodiff>(
    device: &B::Device,
    steps: usize,
    warmup: usize,
    mut step: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    let mut first = 0.0;
    let mut times = Vec::new();
    for i in 0..1 + warmup + steps {
        let t0 = Instant::now();
        step()?;
        B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if i == 0 {
            first = ms;
        } else if i > warmup {
            times.push(ms);
        }
    }
    Ok((first, times))
}

/// The step's optimizer: rfa's (`ForeachAdamW`, what `rfa unlearn` runs) or burn's `AdamW`
/// (one parameter at a time; the same numbers, for launch-count and time comparisons).
enum StepOptimizer<B: FusedAutodiff, M: AutodiffModule<B>> {
    Foreach(ForeachAdamW<B>),
    Burn(OptimizerAdaptor<AdamW, M, B>),
}

impl<B: FusedAutodiff, M: AutodiffModule<B>> StepOptimizer<B, M> {
    fn new(name: &str) -> Result<Self> {
        // Both with burn's AdamWConfig default weight decay (1e-4).
        match name {
            "foreach" => Ok(Self::Foreach(ForeachAdamW::new(1e-4, 1e-8))),
            "burn" => Ok(Self::Burn(AdamWConfig::new().with_epsilon(1e-8).init())),
            other => anyhow::bail!("unknown optimizer `{other}` (foreach, burn)"),
        }
    }

    fn step(&mut self, lr: f64, m: M, g: GradientsParams) -> Result<M> {
        Ok(match self {
            Self::Foreach(o) => o.step(lr, m, g)?,
            Self::Burn(o) => o.step(lr, m, g),
        })
    }
}

/// One RFA step on `model` for the inputs `forward` feeds it: taps split into retain (first `b`
/// rows) and forget rows, targets `mus`, AdamW on the adapters. `after_loss` runs between the
/// forward pass and the backward pass, when the most activations are alive.
fn rfa_step<B, M>(
    model: &mut Option<M>,
    opt: &mut StepOptimizer<B, M>,
    b: usize,
    one_node: bool,
    mus: &[Tensor<B, 3>],
    forward: &impl Fn(&M) -> lora_core::Taps<B>,
    after_loss: &mut dyn FnMut(&Tensor<B, 1>),
) -> Result<()>
where
    B: FusedAutodiff,
    M: AutodiffModule<B> + LoraModel<B>,
{
    let m = model.take().expect("model");
    let taps = forward(&m);
    let split = TapSplit { retain_rows: b, forget_first_token_only: false };
    let objective = RfaObjective::default();
    let loss = objective.total_rows_as(&taps, split, None, mus, one_node)?.total(objective.lambda);
    after_loss(&loss);
    let g = GradientsParams::from_grads(loss.backward(), &m);
    *model = Some(opt.step(5e-5, m, g)?);
    Ok(())
}

/// Times the step; returns the JSON row. `memory` reads the device allocator (`None` on CPU
/// backends) from any thread: after the timed steps one more step reads it at the end of the
/// forward pass (with a device sync there) while a second thread samples it throughout, so the
/// timed steps run undisturbed.
pub fn run<B: FusedAutodiff>(
    s: &Shape,
    dtype: &str,
    steps: usize,
    warmup: usize,
    backend: &str,
    device: &B::Device,
    memory: &(dyn Fn() -> Option<DeviceMemory> + Sync),
) -> Result<serde_json::Value> {
    let cast = base_dtype(dtype)?;
    let one_node = B::tap_terms_as_one_node() && !s.split_taps;
    let (b, n) = (s.batch, 2 * s.batch);
    let start = Instant::now();
    let normal = Distribution::Normal(0.0, 1.0);
    // Weights of the linear layers the step runs (the pass ends at the last adapted one), for the
    // FLOP estimate.
    let (params, trainable, tokens, compute_params, first, times, mem);
    macro_rules! bench {
        ($model:expr, $targets:expr, $forward:expr) => {{
            let (mut m, adapted) =
                attach_lora($model, &LoraConfig::new(8, 16.0, TargetModules::parse($targets)))?;
            if let Some(dt) = cast {
                set_base_dtype(&mut m, dt);
            }
            let pc = count_params(&m);
            let linears = m.linears();
            let last =
                linears.iter().rposition(|(p, _)| adapted.contains(p)).expect("an adapted layer");
            let ran: usize = linears[..=last].iter().map(|(_, l)| l.d_in() * l.d_out()).sum();
            let widths: Vec<usize> = adapted
                .iter()
                .map(|p| linears.iter().find(|(q, _)| q == p).expect("adapted layer").1.d_out())
                .collect();
            let mus: Vec<Tensor<B, 3>> =
                widths.iter().map(|&w| Tensor::random([1, 1, w], normal, device)).collect();
            let mut opt = StepOptimizer::new(&s.optimizer)?;
            let mut m = Some(m);
            let fwd = $forward;
            let (f, t) = time_steps::<B>(device, steps.max(1), warmup, || {
                rfa_step(&mut m, &mut opt, b, one_node, &mus, &fwd, &mut |_| ())
            })?;
            let mut at_forward = None;
            let mut peak = None;
            if memory().is_some() {
                // Back to back: this step is not timed, and a short peak is less likely missed.
                let (done, sampled) = sample_peak(memory, Duration::ZERO, || {
                    rfa_step(&mut m, &mut opt, b, one_node, &mus, &fwd, &mut |loss| {
                        // The loss's value forces the forward pass to run (lazy backends).
                        let _ = loss.clone().into_data();
                        let _ = B::sync(device);
                        at_forward = memory();
                    })
                    .and_then(|()| {
                        B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))
                    })
                });
                done?;
                peak = Some(sampled);
            }
            (pc, ran, f, t, (at_forward, peak))
        }};
    }
    match s.model.as_str() {
        "gpt2" => {
            let cfg = Gpt2Config::new(50257, 1024, s.width, s.layers, s.heads);
            let ids = Tensor::<B, 2, Int>::random(
                [n, s.seq],
                Distribution::Uniform(0.0, 50257.0),
                device,
            );
            let (pc, ran, f, t, mf) = bench!(
                Gpt2LmHeadModel::<B>::init(&cfg, 0, device)?,
                "c_attn",
                |m: &Gpt2LmHeadModel<B>| m.forward_taps(ids.clone(), None)
            );
            (params, trainable, tokens, compute_params, first, times, mem) =
                (pc.total, pc.trainable, s.seq, ran, f, t, mf);
        }
        "bert" => {
            let cfg = BertConfig::new(30522, 512, s.width, s.layers, s.heads);
            let ids = Tensor::<B, 2, Int>::random(
                [n, s.seq],
                Distribution::Uniform(0.0, 30522.0),
                device,
            );
            let mask = Tensor::<B, 2, Int>::ones([n, s.seq], device);
            let (pc, ran, f, t, mf) = bench!(
                BertForSequenceClassification::<B>::init(&cfg, 0, device)?,
                "query,value",
                |m: &BertForSequenceClassification<B>| m.forward_taps(
                    ids.clone(),
                    Some(mask.clone()),
                    None
                )
            );
            (params, trainable, tokens, compute_params, first, times, mem) =
                (pc.total, pc.trainable, s.seq, ran, f, t, mf);
        }
        "vit" => {
            let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
            let side = s.seq;
            let patch = if side % 16 == 0 { 16 } else { 7 };
            let cfg =
                VitConfig::new(side, patch, 3, s.width, s.layers, s.heads, 4 * s.width, &names);
            let x = Tensor::<B, 4>::random([n, 3, side, side], normal, device);
            let (pc, ran, f, t, mf) = bench!(
                VitForImageClassification::<B>::init(&cfg, 0, device)?,
                "query,value",
                |m: &VitForImageClassification<B>| m.forward_taps(x.clone())
            );
            (params, trainable, tokens, compute_params, first, times, mem) =
                (pc.total, pc.trainable, cfg.num_patches() + 1, ran, f, t, mf);
        }
        other => anyhow::bail!("unknown bench model `{other}` (gpt2, bert, vit)"),
    }
    let (mem_forward, mem_peak): (Option<DeviceMemory>, Option<SampledPeak>) = mem;
    let med = median(times.clone());
    // Forward (2·N·T) + input-gradient backward (2·N·T) over both batches, N the weights of the
    // linear layers run (LoRA's rank-r products, attention's T² terms and ViT's patch
    // projection not counted).
    let flops = 4.0 * compute_params as f64 * (n * tokens) as f64;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(serde_json::json!({
        "model": s.model, "backend": backend, "optimizer": s.optimizer, "objective": if one_node { "one node per layer" } else { "split, op by op" }, "dtype": if cast.is_some() { "bf16" } else { "f32" },
        "layers": s.layers, "width": s.width, "heads": s.heads,
        "batch_retain": b, "batch_forget": b, "tokens_per_sample": tokens, "params": params, "trainable": trainable,
        "first_step_ms": r3(first),
        "step_ms_median": r3(med),
        "step_ms_min": r3(times.iter().cloned().fold(f64::INFINITY, f64::min)),
        "step_ms_max": r3(times.iter().cloned().fold(0.0, f64::max)),
        "steps_timed": times.len(),
        "total_s": r3(start.elapsed().as_secs_f64()),
        "samples_per_s": (n as f64 / (med / 1000.0) * 10.0).round() / 10.0,
        "flop_per_step": flops,
        "approx_gflops": (flops / (med / 1000.0) / 1e9 * 10.0).round() / 10.0,
        // The process's peak resident memory, as the PyTorch reference reports on CPU
        // (ru_maxrss); on CUDA the device's peak is nvidia-smi's (scripts/device-run.sh).
        "peak_rss_gib": peak_rss_gib().map(|g| (g * 100.0).round() / 100.0),
        // The device allocator at the end of the forward pass (tensors alive: weights, optimizer
        // state, what autodiff keeps for the backward pass) and what it had reserved then.
        "device_in_use_after_forward_gib": mem_forward.as_ref().map(|m| gib(m.in_use)),
        "device_reserved_after_forward_gib": mem_forward.as_ref().map(|m| gib(m.reserved)),
        // The largest readings of the allocator sampled from a second thread during that step: a
        // lower bound of its peak (see `sample_peak`), and how many readings it took.
        "device_peak_in_use_sampled_gib": mem_peak.as_ref().map(|p| gib(p.in_use)),
        "device_peak_reserved_sampled_gib": mem_peak.as_ref().map(|p| gib(p.reserved)),
        "device_memory_samples": mem_peak.as_ref().map(|p| p.samples),
    }))
}

fn gib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0
}

/// `VmHWM` of /proc/self/status (Linux), in GiB.
fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn shape(model: &str, batch: usize, seq: usize) -> Shape {
        Shape {
            model: model.into(),
            layers: 1,
            width: 32,
            heads: 2,
            batch,
            seq,
            optimizer: "foreach".into(),
            split_taps: false,
        }
    }

    /// The benchmark runs and reports what it measured (no timing is asserted).
    #[test]
    fn bench_rows_are_complete() {
        type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        // (model, seq, tokens per sample, weights of the linear layers up to the last adapted one)
        for (model, seq, tokens, ran) in
            [("gpt2", 8, 8, 32 * 96), ("bert", 8, 8, 3 * 32 * 32), ("vit", 28, 17, 3 * 32 * 32)]
        {
            let s = shape(model, 2, seq);
            // On the bench thread: 3 GiB in use, 2.5 reserved. From the sampling thread: 4 / 6 GiB
            // at its first reading, 1 / 1 after, so its peak must be the first reading's.
            let bench_thread = std::thread::current().id();
            let (samples, sampled) = (AtomicU64::new(0), AtomicU64::new(0));
            let memory = || {
                if std::thread::current().id() == bench_thread {
                    samples.fetch_add(1, Ordering::Relaxed);
                    return Some(DeviceMemory { in_use: 3 << 30, reserved: 5 << 29 });
                }
                let first = sampled.fetch_add(1, Ordering::Relaxed) == 0;
                Some(if first {
                    DeviceMemory { in_use: 4 << 30, reserved: 6 << 30 }
                } else {
                    DeviceMemory { in_use: 1 << 30, reserved: 1 << 30 }
                })
            };
            let row =
                run::<AB>(&s, "f32", 1, 0, "cpu ndarray", &Default::default(), &memory).unwrap();
            assert!(
                row["step_ms_median"].as_f64().unwrap() > 0.0
                    && row["first_step_ms"].as_f64().unwrap() > 0.0,
                "{row}"
            );
            assert!(
                row["trainable"].as_u64().unwrap() > 0
                    && row["trainable"].as_u64() < row["params"].as_u64(),
                "{row}"
            );
            assert_eq!(row["steps_timed"], 1);
            // ndarray keeps the split objective (`FusedOps::tap_terms_as_one_node` is off there).
            assert_eq!(
                (row["optimizer"].as_str(), row["objective"].as_str()),
                (Some("foreach"), Some("split, op by op")),
                "{row}"
            );
            assert_eq!(
                row["flop_per_step"].as_f64(),
                Some(4.0 * ran as f64 * (4 * tokens) as f64),
                "{row}"
            );
            // One probe to see whether the device has an allocator, one at the end of the forward
            // pass.
            assert_eq!(samples.load(Ordering::Relaxed), 2);
            assert_eq!(row["device_in_use_after_forward_gib"].as_f64(), Some(3.0), "{row}");
            assert_eq!(row["device_reserved_after_forward_gib"].as_f64(), Some(2.5), "{row}");
            // The sampler's largest readings, and all of its readings counted.
            assert_eq!(row["device_peak_in_use_sampled_gib"].as_f64(), Some(4.0), "{row}");
            assert_eq!(row["device_peak_reserved_sampled_gib"].as_f64(), Some(6.0), "{row}");
            assert_eq!(
                row["device_memory_samples"].as_u64(),
                Some(sampled.load(Ordering::Relaxed)),
                "{row}"
            );
            assert!(sampled.load(Ordering::Relaxed) >= 1);
            if cfg!(target_os = "linux") {
                assert!(row["peak_rss_gib"].as_f64().unwrap() > 0.0, "{row}");
            }
        }
        let s = shape("gpt2", 1, 8);
        let row = run::<AB>(&s, "f32", 1, 0, "cpu", &Default::default(), &|| None).unwrap();
        assert!(row["device_in_use_after_forward_gib"].is_null(), "{row}");
        assert!(
            row["device_peak_in_use_sampled_gib"].is_null()
                && row["device_memory_samples"].is_null(),
            "{row}"
        );
        // burn's AdamW for the A/B; an unknown optimizer is refused.
        let row = run::<AB>(
            &Shape { optimizer: "burn".into(), split_taps: true, ..shape("gpt2", 1, 8) },
            "f32",
            1,
            0,
            "cpu",
            &Default::default(),
            &|| None,
        )
        .unwrap();
        assert_eq!(row["optimizer"].as_str(), Some("burn"), "{row}");
        let err = run::<AB>(
            &Shape { optimizer: "sgd".into(), ..shape("gpt2", 1, 8) },
            "f32",
            1,
            0,
            "cpu",
            &Default::default(),
            &|| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown optimizer `sgd`"), "{err}");
        assert!(
            run::<AB>(&shape("llama", 1, 8), "f32", 1, 0, "cpu", &Default::default(), &|| None)
                .is_err()
        );
        assert!(
            run::<AB>(&shape("vit", 1, 28), "f16", 1, 0, "cpu", &Default::default(), &|| None)
                .is_err()
        );
    }
}
