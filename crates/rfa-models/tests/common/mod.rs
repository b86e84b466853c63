// Shared by the integration tests (each test file includes it as a module).
#![allow(dead_code)]

use std::path::PathBuf;

pub type B = burn::backend::NdArray<f32>;
pub type AB = burn::backend::Autodiff<B>;

pub fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// The libtorch device the tests run on: `RFA_TCH_DEVICE` (`tch-cpu`, the default, or
/// `tch-cuda[:N]`, as `rfa --device` names them; the GPU run sets it).
#[cfg(feature = "tch")]
pub fn tch_device_from_env() -> burn::backend::libtorch::LibTorchDevice {
    use burn::backend::libtorch::LibTorchDevice;
    let name = std::env::var("RFA_TCH_DEVICE").unwrap_or_else(|_| "tch-cpu".into());
    let cuda = |n: &str| n.parse().map(LibTorchDevice::Cuda).ok();
    match name.as_str() {
        "tch" | "tch-cpu" => Some(LibTorchDevice::Cpu),
        "tch-cuda" => Some(LibTorchDevice::Cuda(0)),
        _ => name.strip_prefix("tch-cuda:").and_then(cuda),
    }
    .unwrap_or_else(|| panic!("RFA_TCH_DEVICE={name}: expected tch-cpu or tch-cuda[:N]"))
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
    let labels: Vec<i64> = ids
        .to_i64()
        .iter()
        .zip(mask.to_i64())
        .map(|(&t, m)| if m == 0 { -100 } else { t })
        .collect();
    let shape = ids.shape.clone();
    let out = model.forward(ids.to_int_tensor(device), Some(mask.to_int_tensor(device)));
    let labels = Tensor::<AB, 2, Int>::from_data(TensorData::new(labels, shape), device);
    let n = out.taps.len() as f64;
    let retain = out
        .taps
        .into_iter()
        .map(|t| t.residual.powf_scalar(2.0).mean())
        .reduce(|a, b| a + b)
        .unwrap()
        .div_scalar(n);
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

/// The BERT (`name` "bert") or ViT ("vit") fixture with its peft adapter on `AB`, frozen weights
/// in `base_dtype`: the logits, then the gradients of every adapter matrix (A then B, in tap
/// order) for a loss over the logits and every tap (the mean of r² and of (p + r)²), all as f32
/// host values. Panics unless the logits, hidden states and taps come out f32 whatever the
/// weights' type (the model's contract with the objective and the evaluation).
pub fn classifier_lora_grads<AB: rfa_models::FusedAutodiff>(
    name: &str,
    device: &AB::Device,
    base_dtype: Option<burn::tensor::DType>,
) -> Vec<Vec<f32>> {
    use burn::tensor::DType;
    use lora_core::{LoraModel, TensorFile};
    use rfa_models::{BertForSequenceClassification, ClassifierOutput, VitForImageClassification};

    fn grads<AB: rfa_models::FusedAutodiff, M: LoraModel<AB>>(
        model: &M,
        out: ClassifierOutput<AB>,
    ) -> Vec<Vec<f32>> {
        assert_eq!(out.logits.dtype(), DType::F32, "logits");
        assert!(out.hidden_states.iter().all(|h| h.dtype() == DType::F32), "hidden states");
        assert!(
            out.taps
                .iter()
                .all(|t| t.pre.dtype() == DType::F32 && t.residual.dtype() == DType::F32),
            "taps"
        );
        let host = |x: burn::tensor::TensorData| x.convert::<f32>().into_vec::<f32>().unwrap();
        let mut loss = out.logits.clone().powf_scalar(2.0).mean();
        for t in &out.taps {
            loss = loss
                + t.residual.clone().powf_scalar(2.0).mean()
                + (t.pre.clone() + t.residual.clone()).powf_scalar(2.0).mean();
        }
        let grads = loss.backward();
        let mut all = vec![host(out.logits.into_data())];
        for (_, l) in model.linears() {
            if let Some(a) = &l.lora {
                all.extend(
                    [&a.lora_a, &a.lora_b]
                        .map(|p| host(p.val().grad(&grads).expect("adapter gradient").into_data())),
                );
            }
        }
        all
    }

    let dir = fixtures().join("hf-parity").join(name);
    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    match name {
        "bert" => {
            let mut model =
                BertForSequenceClassification::<AB>::load(&dir.join("model"), device).unwrap();
            lora_core::load_adapter(&mut model, &dir.join("adapter")).unwrap();
            if let Some(dt) = base_dtype {
                lora_core::set_base_dtype(&mut model, dt);
            }
            let int = |k: &str| reference.tensors.get(k).map(|t| t.to_int_tensor(device));
            let out = model.forward(
                int("input_ids").unwrap(),
                int("attention_mask"),
                int("token_type_ids"),
            );
            grads(&model, out)
        }
        "vit" => {
            let mut model =
                VitForImageClassification::<AB>::load(&dir.join("model"), device).unwrap();
            lora_core::load_adapter(&mut model, &dir.join("adapter")).unwrap();
            if let Some(dt) = base_dtype {
                lora_core::set_base_dtype(&mut model, dt);
            }
            let out = model.forward(reference.get("pixel_values").unwrap().to_tensor(device));
            grads(&model, out)
        }
        other => panic!("no classifier fixture `{other}`"),
    }
}

/// Checks the GPT-2, BERT and ViT fixtures on `B` against the reference outputs, prints each
/// report under `label`, and fails on any comparison over `tol`.
pub fn assert_fixtures_match<B: rfa_models::FusedOps>(
    label: &str,
    tol: rfa_models::parity::Tolerance,
    device: &B::Device,
) {
    let reports: Vec<_> = ["gpt2", "bert", "vit"]
        .iter()
        .map(|name| {
            rfa_models::parity::check_dir::<B>(
                &fixtures().join("hf-parity").join(name),
                tol,
                device,
            )
            .unwrap()
        })
        .collect();
    for r in &reports {
        println!("{label} {r}");
    }
    for r in &reports {
        assert!(r.ok(), "{}: {:?}", r.dir.display(), r.failures());
    }
}

/// `n` pseudo-random values, uniform in `[-half_width, half_width)` (a fixed LCG: the same on
/// every backend and run, without burn's global RNG).
pub fn uniform(seed: u64, n: usize, half_width: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * half_width - half_width
        })
        .collect()
}

/// The largest absolute difference between `a` and `b`, relative to `a`'s largest entry.
pub fn max_rel_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale
}

/// The fused attention (separate q, k, v of 2 × 37 × 64, 4 heads, batch 1's last five keys
/// padded) on `A`: its output, then the gradients of q, k and v for a fixed weighting of the
/// output — to compare backends.
pub fn attention_case<A: rfa_models::FusedAutodiff>(device: &A::Device) -> Vec<Vec<f32>> {
    use burn::tensor::{Tensor, TensorData};
    let (b, t, c, heads) = (2, 37, 64, 4);
    let values = |seed: u64| uniform(seed, b * t * c, 1.0);
    let leaf = |seed| {
        Tensor::<A, 3>::from_data(TensorData::new(values(seed), [b, t, c]), device).require_grad()
    };
    let (q, k, v) = (leaf(1), leaf(2), leaf(3));
    let bias: Vec<f32> =
        (0..b * t).map(|i| if i / t == 1 && i % t >= t - 5 { -1.0e30 } else { 0.0 }).collect();
    let bias = Tensor::<A, 4>::from_data(TensorData::new(bias, [b, 1, 1, t]), device);
    let out = rfa_fused::attention(q.clone(), k.clone(), v.clone(), Some(bias), false, heads, 0.25);
    let w = Tensor::<A, 3>::from_data(TensorData::new(values(4), [b, t, c]), device);
    let grads = (out.clone() * w).sum().backward();
    let host =
        |x: Tensor<A::InnerBackend, 3>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let mut all = vec![host(out.inner())];
    all.extend([q, k, v].iter().map(|x| host(x.grad(&grads).expect("a gradient"))));
    all
}

/// LayerNorm (`ops::layer_norm`, eps 1e-5) of a `[3, 5, 67]` input with trained gamma and beta
/// on `A`: its output, then the gradients of x, gamma and beta for a fixed weighting of the
/// output — to compare backends. Rows of very different scales, one nearly constant.
pub fn layer_norm_case<A: rfa_models::FusedAutodiff>(device: &A::Device) -> Vec<Vec<f32>> {
    use burn::tensor::{Tensor, TensorData};
    let (rows, d) = (15, 67);
    let values = |seed: u64, n: usize| uniform(seed, n, 1.0);
    let x: Vec<f32> = values(1, rows * d)
        .iter()
        .enumerate()
        .map(|(i, v)| match i / d {
            0 => 3.0 + v * 1e-3,
            r => v * (r as f32) + r as f32,
        })
        .collect();
    let x = Tensor::<A, 3>::from_data(TensorData::new(x, [3, 5, d]), device).require_grad();
    let gamma =
        Tensor::<A, 1>::from_data(TensorData::new(values(2, d), [d]), device).require_grad();
    let beta = Tensor::<A, 1>::from_data(TensorData::new(values(3, d), [d]), device).require_grad();
    let y = rfa_fused::layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5);
    let w = Tensor::<A, 3>::from_data(TensorData::new(values(4, rows * d), [3, 5, d]), device);
    let grads = (y.clone() * w).sum().backward();
    let host = |x: burn::tensor::TensorData| x.convert::<f32>().to_vec::<f32>().unwrap();
    vec![
        host(y.inner().into_data()),
        host(x.grad(&grads).expect("x's gradient").into_data()),
        host(gamma.grad(&grads).expect("gamma's gradient").into_data()),
        host(beta.grad(&grads).expect("beta's gradient").into_data()),
    ]
}

/// RFA's per-layer terms over 3 retain + 2 forget rows of `[5, 4, 6]` taps with a padding
/// mask, the forget term over every token (`cls` false) or the first: `[out, dpre, dres]` for
/// a fixed weighting of the two terms. `one_node`: `ops::tap_terms` (the node with its
/// analytic backward); otherwise the same definition in burn's ops, differentiated by autodiff.
pub fn tap_terms_case<A: rfa_models::FusedAutodiff>(
    device: &A::Device,
    one_node: bool,
    cls: bool,
) -> Vec<Vec<f32>> {
    use burn::tensor::{Tensor, TensorData};
    let (rows, t, d, nr) = (5, 4, 6, 3);
    let (nf, tf) = (rows - nr, if cls { 1 } else { t });
    let values = |seed: u64, n: usize| uniform(seed, n, 2.0);
    let leaf = |seed| {
        Tensor::<A, 3>::from_data(TensorData::new(values(seed, rows * t * d), [rows, t, d]), device)
            .require_grad()
    };
    let (pre, res) = (leaf(1), leaf(2));
    let mu = Tensor::<A, 3>::from_data(TensorData::new(values(3, nf * d), [nf, 1, d]), device);
    // Weights: a padding mask over its count (row 1's and row 4's last token padded).
    let mask = |r0: usize, n: usize, tk: usize| {
        let m: Vec<f32> = (r0..r0 + n)
            .flat_map(|r| {
                (0..tk).map(move |k| if (r == 1 || r == 4) && k == 3 { 0.0 } else { 1.0 })
            })
            .collect();
        let count: f32 = m.iter().sum();
        Tensor::<A, 2>::from_data(
            TensorData::new(m.iter().map(|x| x / count).collect::<Vec<f32>>(), [n, tk]),
            device,
        )
    };
    let (wr, wf) = (mask(0, nr, t), mask(nr, nf, tf));
    let out = if one_node {
        let split = rfa_fused::TapSplit { retain_rows: nr, forget_first_token_only: cls };
        rfa_fused::tap_terms(pre.clone(), res.clone(), mu, [Some(wr), Some(wf)], split)
    } else {
        let sq = |x: Tensor<A, 3>, w: Tensor<A, 2>| {
            let [a, b, _] = x.dims();
            (x.powf_scalar(2.0).sum_dim(2).reshape([a, b]) * w).sum()
        };
        let forget = |x: Tensor<A, 3>| x.narrow(0, nr, nf).narrow(1, 0, tf);
        let diff = forget(pre.clone()) + forget(res.clone()) - mu;
        Tensor::cat(vec![sq(res.clone().narrow(0, 0, nr), wr), sq(diff, wf)], 0)
    };
    let grads = (out.clone()
        * Tensor::<A, 1>::from_data(TensorData::new(vec![0.3f32, 1.7], [2]), device))
    .sum()
    .backward();
    let host = |x: burn::tensor::TensorData| x.convert::<f32>().to_vec::<f32>().unwrap();
    vec![
        host(out.inner().into_data()),
        host(pre.grad(&grads).expect("pre's gradient").into_data()),
        host(res.grad(&grads).expect("res's gradient").into_data()),
    ]
}
