//! Properties of the adapter layer and of PEFT import/export, on a toy two-block model.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use lora_core::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use lora_core::{
    LoraAdapter, LoraConfig, LoraError, LoraLinear, LoraModel, TargetModules, WeightLayout,
    adapted_paths, attach_lora, count_params, load_adapter, merge, save_adapter, unmerge,
};
use proptest::prelude::*;

type Nd = burn::backend::NdArray<f32>;
type Ad = burn::backend::Autodiff<Nd>;

fn rand<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn layer<B: Backend>(d_in: usize, d_out: usize, layout: WeightLayout) -> LoraLinear<B> {
    LoraLinear::from_weights(rand([d_in, d_out]), Some(rand([d_out])), layout)
}

fn vals<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Two "blocks" with a query and an MLP projection each, named like a Hugging Face model.
#[derive(Module, Debug)]
struct Toy<B: Backend> {
    query: Vec<LoraLinear<B>>,
    fc: Vec<LoraLinear<B>>,
}

impl<B: Backend> Toy<B> {
    fn new(d: usize, layout: WeightLayout) -> Self {
        Self {
            query: (0..2).map(|_| layer(d, d, layout)).collect(),
            fc: (0..2).map(|_| layer(d, 2 * d, layout)).collect(),
        }
    }
}

impl<B: Backend> LoraModel<B> for Toy<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        for i in 0..2 {
            v.push((format!("model.layers.{i}.attn.query"), &self.query[i]));
            v.push((format!("model.layers.{i}.mlp.fc"), &self.fc[i]));
        }
        v
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, (q, f)) in self.query.iter_mut().zip(self.fc.iter_mut()).enumerate() {
            v.push((format!("model.layers.{i}.attn.query"), q));
            v.push((format!("model.layers.{i}.mlp.fc"), f));
        }
        v
    }
}

fn with_random_b(mut l: LoraLinear<Nd>) -> LoraLinear<Nd> {
    let lora = l.lora.take().unwrap();
    let [r, out] = lora.lora_b.dims();
    l.lora =
        Some(LoraAdapter::from_tensors(lora.lora_a.val(), rand([r, out]), lora.alpha, lora.rslora));
    l
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fresh_adapter_gives_the_base_output_exactly(d_in in 1usize..24, d_out in 1usize..24, r in 1usize..8, batch in 1usize..5, alpha in 0.5f64..64.0) {
        let mut l = layer::<Nd>(d_in, d_out, WeightLayout::Linear);
        let x = rand::<Nd, 3>([batch, 3, d_in]);
        let base = vals(l.forward(x.clone()));
        l.attach(r, alpha, false, 7);
        let (p, res) = l.split(x.clone());
        prop_assert_eq!(vals(p), base.clone());
        prop_assert!(vals(res.unwrap()).iter().all(|&v| v == 0.0));
        prop_assert_eq!(vals(l.forward(x)), base);
    }

    #[test]
    fn merged_forward_equals_split_sum_and_unmerge_restores(d_in in 1usize..24, d_out in 1usize..24, r in 1usize..8, alpha in 0.5f64..32.0) {
        let mut l = layer::<Nd>(d_in, d_out, WeightLayout::Linear);
        let w0 = vals(l.base.weight.val());
        l.attach(r, alpha, false, 7);
        let mut l = with_random_b(l);
        let x = rand::<Nd, 3>([2, 5, d_in]);
        let (p, res) = l.split(x.clone());
        let sum = vals(p + res.unwrap());
        l.merge();
        prop_assert!(l.merged);
        let merged = vals(l.forward(x));
        let scale = sum.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        prop_assert!(max_diff(&sum, &merged) <= 1e-5 * scale, "{}", max_diff(&sum, &merged));
        l.unmerge();
        let w1 = vals(l.base.weight.val());
        let wscale = w0.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        prop_assert!(max_diff(&w0, &w1) <= 1e-5 * wscale);
    }

    #[test]
    fn scaling_follows_alpha_over_r(d in 1usize..16, r in 1usize..8, alpha in 0.5f64..32.0) {
        let a = rand::<Nd, 2>([d, r]);
        let b = rand::<Nd, 2>([r, d]);
        let x = rand::<Nd, 2>([3, d]);
        let one = LoraAdapter::from_tensors(a.clone(), b.clone(), r as f64, false); // scale 1
        let lora = LoraAdapter::from_tensors(a.clone(), b.clone(), alpha, false);
        prop_assert!((lora.scale - alpha / r as f64).abs() < 1e-12);
        let unit = vals(one.forward(x.clone()));
        let scaled = vals(lora.forward(x.clone()));
        let s = (alpha / r as f64) as f32;
        let tol = 1e-5 * unit.iter().fold(1.0f32, |m, v| m.max(v.abs())) * s.max(1.0);
        prop_assert!(unit.iter().zip(&scaled).all(|(u, v)| (u * s - v).abs() <= tol));
        let rs = LoraAdapter::from_tensors(a, b, alpha, true);
        prop_assert!((rs.scale - alpha / (r as f64).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn peft_export_import_round_trip_is_bit_exact(d in 2usize..12, r in 1usize..6, conv in any::<bool>()) {
        let layout = if conv { WeightLayout::Conv1D } else { WeightLayout::Linear };
        let cfg = LoraConfig::new(r, 2.0 * r as f64, TargetModules::names(&["query", "fc"]));
        let (mut toy, _) = attach_lora(Toy::<Nd>::new(d, layout), &cfg).unwrap();
        for (_, l) in toy.linears_mut() {
            *l = with_random_b(l.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        let written = save_adapter(&toy, dir.path(), Some("toy"), lora_core::ModuleNames::default()).unwrap();
        prop_assert_eq!(written.fan_in_fan_out, conv);
        let mut fresh = Toy::<Nd>::new(d, layout);
        for ((_, a), (_, b)) in fresh.linears_mut().into_iter().zip(toy.linears()) {
            a.base = b.base.clone();
        }
        let read = load_adapter(&mut fresh, dir.path()).unwrap();
        prop_assert_eq!(read.r, r);
        for ((pa, a), (pb, b)) in toy.linears().into_iter().zip(fresh.linears()) {
            prop_assert_eq!(pa, pb);
            let (a, b) = (a.lora.as_ref().unwrap(), b.lora.as_ref().unwrap());
            prop_assert_eq!(vals(a.lora_a.val()), vals(b.lora_a.val()));
            prop_assert_eq!(vals(a.lora_b.val()), vals(b.lora_b.val()));
            prop_assert_eq!(a.scale, b.scale);
        }
    }
}

#[test]
fn targets_select_by_name_suffix_regex_or_all_linear() {
    let cfg = |t: TargetModules| LoraConfig::new(4, 8.0, t);
    let (m, paths) =
        attach_lora(Toy::<Nd>::new(8, WeightLayout::Linear), &cfg(TargetModules::parse("query")))
            .unwrap();
    assert_eq!(paths, vec!["model.layers.0.attn.query", "model.layers.1.attn.query"]);
    assert_eq!(adapted_paths(&m), paths);
    let (_, paths) = attach_lora(
        Toy::<Nd>::new(8, WeightLayout::Linear),
        &cfg(TargetModules::parse(r".*\.1\..*")),
    )
    .unwrap();
    assert_eq!(paths, vec!["model.layers.1.attn.query", "model.layers.1.mlp.fc"]);
    let (_, paths) = attach_lora(
        Toy::<Nd>::new(8, WeightLayout::Linear),
        &cfg(TargetModules::parse("all-linear")),
    )
    .unwrap();
    assert_eq!(paths.len(), 4);
    // "uery" is not a whole module name.
    let err =
        attach_lora(Toy::<Nd>::new(8, WeightLayout::Linear), &cfg(TargetModules::parse("uery")))
            .unwrap_err();
    assert!(matches!(err, LoraError::NoTarget { .. }), "{err}");
    assert!(err.to_string().contains("model.layers.0.attn.query"));
}

#[test]
fn only_adapter_parameters_are_trainable() {
    let d = 8;
    let (m, _) = attach_lora(
        Toy::<Ad>::new(d, WeightLayout::Linear),
        &LoraConfig::new(2, 4.0, TargetModules::parse("query")),
    )
    .unwrap();
    let count = count_params(&m);
    assert_eq!(count.trainable, 2 * (2 * (d + d)));
    assert_eq!(count.total, 2 * (d * d + d) + 2 * (d * 2 * d + 2 * d) + count.trainable);
    // Gradients reach A (Nd = 0 makes dL/dA zero but present, dL/dB non-zero) and never the base.
    let x = rand::<Ad, 2>([3, d]);
    let q = &m.query[0];
    let loss = m.fc[0].forward(q.forward(x)).sum();
    let grads = loss.backward();
    let lora = q.lora.as_ref().unwrap();
    assert!(lora.lora_a.val().grad(&grads).is_some());
    let gb = lora.lora_b.val().grad(&grads).unwrap();
    assert!(vals(gb).iter().any(|&g| g != 0.0));
    assert!(q.base.weight.val().grad(&grads).is_none());
    assert!(m.fc[0].base.weight.val().grad(&grads).is_none());
}

#[test]
fn merge_over_a_model_changes_forward_only_by_rounding() {
    let (mut m, _) = attach_lora(
        Toy::<Nd>::new(6, WeightLayout::Conv1D),
        &LoraConfig::new(3, 6.0, TargetModules::parse("query,fc")),
    )
    .unwrap();
    for (_, l) in m.linears_mut() {
        *l = with_random_b(l.clone());
    }
    let x = rand::<Nd, 2>([4, 6]);
    let before = vals(m.fc[1].forward(m.query[1].forward(x.clone())));
    merge(&mut m);
    let after = vals(m.fc[1].forward(m.query[1].forward(x.clone())));
    assert!(max_diff(&before, &after) < 1e-4);
    unmerge(&mut m);
    let again = vals(m.fc[1].forward(m.query[1].forward(x)));
    assert!(max_diff(&before, &again) < 1e-4);
}

fn saved_toy(dir: &Path) -> Toy<Nd> {
    let (mut toy, _) = attach_lora(
        Toy::<Nd>::new(4, WeightLayout::Linear),
        &LoraConfig::new(2, 4.0, TargetModules::parse("query")),
    )
    .unwrap();
    for (_, l) in toy.linears_mut() {
        if l.lora.is_some() {
            *l = with_random_b(l.clone());
        }
    }
    save_adapter(&toy, dir, None, lora_core::ModuleNames::default()).unwrap();
    toy
}

fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, lora_core::HostTensor>),
) {
    let mut f = lora_core::TensorFile::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
    edit(&mut f.tensors);
    lora_core::tensors::write_safetensors(&dir.join(ADAPTER_WEIGHTS), &f.tensors, None).unwrap();
}

#[test]
fn adapter_for_a_module_that_does_not_exist_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved_toy(dir.path());
    rewrite_weights(dir.path(), |t| {
        let keys: Vec<String> = t.keys().cloned().collect();
        for k in keys {
            let v = t.remove(&k).unwrap();
            t.insert(k.replace("attn.query", "attn.nonexistent"), v);
        }
    });
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    assert!(matches!(err, LoraError::UnknownModule { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("attn.nonexistent") && msg.contains(ADAPTER_WEIGHTS), "{msg}");
}

#[test]
fn adapter_with_wrong_shape_is_rejected_naming_key_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    saved_toy(dir.path());
    let err = load_adapter(&mut Toy::<Nd>::new(5, WeightLayout::Linear), dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::Shape { .. }), "{msg}");
    assert!(
        msg.contains("lora_A.weight") && msg.contains("[2, 4]") && msg.contains("[2, 5]"),
        "{msg}"
    );
}

#[test]
fn adapter_missing_half_of_a_pair_or_with_foreign_keys_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved_toy(dir.path());
    rewrite_weights(dir.path(), |t| {
        t.retain(|k, _| !k.ends_with("layers.1.attn.query.lora_B.weight"));
    });
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_A and lora_B"), "{err}");
    saved_toy(dir.path());
    rewrite_weights(dir.path(), |t| {
        let v = t.values().next().unwrap().clone();
        t.insert("base_model.model.model.layers.0.attn.query.lora_magnitude_vector".into(), v);
    });
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_magnitude_vector"), "{err}");
}

#[test]
fn bad_adapter_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing config.
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    assert!(
        matches!(err, LoraError::Io { .. }) && err.to_string().contains(ADAPTER_CONFIG),
        "{err}"
    );
    saved_toy(dir.path());
    // Truncated weights.
    let w = dir.path().join(ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a valid safetensors file"), "{err}");
    // DoRA is not LoRA.
    saved_toy(dir.path());
    let c = dir.path().join(ADAPTER_CONFIG);
    let text =
        std::fs::read_to_string(&c).unwrap().replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(&c, text).unwrap();
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    assert!(matches!(err, LoraError::Unsupported { .. }), "{err}");
    // Not JSON.
    std::fs::write(&c, "{ not json").unwrap();
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    assert!(matches!(err, LoraError::Json { .. }), "{err}");
}

#[test]
fn saved_config_is_what_peft_reads() {
    let dir = tempfile::tempdir().unwrap();
    saved_toy(dir.path());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(v["peft_type"], "LORA");
    assert_eq!(v["r"], 2);
    assert_eq!(v["lora_alpha"], 4.0);
    assert_eq!(v["target_modules"], serde_json::json!(["query"]));
    assert_eq!(v["fan_in_fan_out"], false);
    assert_eq!(v["bias"], "none");
    let f = lora_core::TensorFile::open(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
    let a = f.get("base_model.model.model.layers.0.attn.query.lora_A.weight").unwrap();
    let b = f.get("base_model.model.model.layers.0.attn.query.lora_B.weight").unwrap();
    assert_eq!((a.shape.clone(), b.shape.clone()), (vec![2, 4], vec![4, 2]));
    assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
    // Nothing temporary is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn adapter_init_is_seeded_and_within_peft_bounds() {
    let base = Toy::<Nd>::new(9, WeightLayout::Linear);
    let attach = |seed| {
        let cfg =
            LoraConfig { seed, ..LoraConfig::new(4, 8.0, TargetModules::parse("all-linear")) };
        let (m, _) = attach_lora(base.clone(), &cfg).unwrap();
        m.linears()
            .iter()
            .map(|(_, l)| vals(l.lora.as_ref().unwrap().lora_a.val()))
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (attach(1), attach(1), attach(2));
    assert_eq!(a, b, "same seed, same adapters");
    assert_ne!(a, c);
    assert_ne!(a[0], a[1], "each layer has its own stream");
    let bound = 1.0 / 9f32.sqrt();
    assert!(a.iter().flatten().all(|v| v.abs() <= bound));
}

/// `set_base_dtype` keeps the layer's function: the frozen product runs in the weight's type and
/// comes back in the activation's, and the adapter's gradient flows through the casts. f64
/// weights under f32 activations exercise the same path as bf16 on CUDA (`--dtype bf16`) with an
/// error small enough to compare exactly.
#[test]
fn a_base_weight_in_another_float_type_gives_the_same_output_and_adapter_gradient() {
    use burn::tensor::DType;
    let mut reference = layer::<Ad>(6, 5, WeightLayout::Linear);
    reference.attach(2, 4.0, false, 3);
    let lora = reference.lora.take().unwrap();
    let b = rand::<Ad, 2>([2, 5]);
    reference.lora = Some(LoraAdapter::from_tensors(lora.lora_a.val(), b, lora.alpha, lora.rslora));
    let mut cast = reference.clone();
    cast.set_base_dtype(DType::F64);
    assert_eq!(cast.base.weight.val().dtype(), DType::F64);
    let x = rand::<Ad, 3>([2, 3, 6]);
    let run = |l: &LoraLinear<Ad>| {
        let y = l.forward(x.clone());
        assert_eq!(y.dtype(), DType::F32);
        let grads = y.clone().powf_scalar(2.0).sum().backward();
        let lora = l.lora.as_ref().unwrap();
        (vals(y), vals(lora.lora_a.grad(&grads).unwrap()), vals(lora.lora_b.grad(&grads).unwrap()))
    };
    let (y0, ga0, gb0) = run(&reference);
    let (y1, ga1, gb1) = run(&cast);
    assert!(max_diff(&y0, &y1) < 1e-4, "output {}", max_diff(&y0, &y1));
    assert!(
        max_diff(&ga0, &ga1) < 1e-3 && max_diff(&gb0, &gb1) < 1e-3,
        "grads {} {}",
        max_diff(&ga0, &ga1),
        max_diff(&gb0, &gb1)
    );
    // Merging adds the f32 update in the weight's own type.
    let mut merged = burn::module::AutodiffModule::valid(&cast);
    merged.merge();
    assert_eq!(merged.base.weight.val().dtype(), DType::F64);
    assert!(max_diff(&vals(merged.forward(x.inner())), &y0) < 1e-4);
}

/// An adapter_config.json whose rank disagrees with the tensors' is refused: PEFT would scale the
/// adapter by its alpha / r, not by the tensors' rank.
#[test]
fn an_adapter_whose_config_rank_disagrees_with_its_tensors_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved_toy(dir.path());
    let config = dir.path().join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let r = json["r"].as_u64().unwrap();
    json["r"] = serde_json::json!(r + 2);
    std::fs::write(&config, serde_json::to_string(&json).unwrap()).unwrap();
    let err = load_adapter(&mut Toy::<Nd>::new(4, WeightLayout::Linear), dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("has rank {r}"))
            && msg.contains(&format!("rank {}", r + 2))
            && msg.contains("adapter_config.json"),
        "{msg}"
    );
}
