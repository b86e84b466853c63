//! The baselines: each runs, writes its result beside RFA's, and starts from the objective its
//! paper defines (checked at the first step, where the model still equals M0).

use std::path::Path;

use rfa::Run;
use rfa::config::RunConfig;

mod common;

use common::{AB, unlearn_log as log};

fn tiny(name: &str, runs: &Path) -> RunConfig {
    common::tiny(name, runs, 1)
}

#[test]
fn every_method_runs_and_the_report_compares_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let base = tiny("all", tmp.path());
    let run = Run::open(base.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    for method in rfa::Method::ALL {
        let m = method.name();
        let mut c = base.clone();
        c.unlearn.method = method;
        c.unlearn.lr = 1e-3;
        Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap_or_else(|e| panic!("{m}: {e:#}"));
        assert!(run.dir.join(m).join("adapter/adapter_model.safetensors").is_file(), "{m}");
        assert!(run.dir.join(m).join("merged/model.safetensors").is_file(), "{m}");
    }
    let report = run.eval::<AB>("cpu", &dev).unwrap();
    let names: Vec<&str> = report.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "original (M0)",
            "retrain (M*)",
            "RFA",
            "finetune",
            "grad-ascent",
            "random-label",
            "grad-diff",
            "scrub",
            "l1-sparse",
            "salun",
            "npo"
        ]
    );
    assert!(report.models.iter().all(|m| m.average_gap.is_some()));

    // At the first step the adapters are zero, so the model is M0 and each objective reduces
    // to what its definition says.
    let first = |m: &str| log(&run, m).steps[0].clone();
    let s = first("grad-diff");
    assert!((s.total - (s.retain - s.forget)).abs() < 1e-5, "{s:?}");
    let s = first("grad-ascent");
    assert!((s.total + s.forget).abs() < 1e-5 && s.retain == 0.0, "{s:?}");
    // SCRUB: KL(M0 ‖ M0) = 0 on both batches, so only γ·L(r) is left.
    let s = first("scrub");
    assert!((s.total - 0.99 * s.retain).abs() < 1e-4, "{s:?}");
    // NPO: log πθ = log πM0, so the term is −(2/β)·log σ(0) = (2/β)·ln 2.
    let s = first("npo");
    assert!((s.total - s.retain - 2.0 / 0.1 * 2f64.ln()).abs() < 1e-3, "{s:?}");
    // Finetune and l1-sparse pass over Dr: one epoch = |Dr| / batch steps.
    let (f, r) =
        (run.images().unwrap().split.forget.len(), run.images().unwrap().split.retain.len());
    assert_eq!(log(&run, "finetune").steps.len(), r.div_ceil(32));
    assert_eq!(log(&run, "grad-ascent").steps.len(), f.div_ceil(32));
}

#[test]
fn full_weight_baselines_and_salun_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut c = tiny("full", tmp.path());
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    c.unlearn.method = rfa::Method::Salun;
    c.unlearn.adapter = "full".into();
    c.unlearn.lr = 1e-3;
    c.unlearn.seed = Some(7);
    Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap();
    let out = run.dir.join("salun-s7");
    assert!(!out.join("adapter").exists() && out.join("merged/model.safetensors").is_file());
    let phase: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("phase.json")).unwrap()).unwrap();
    let total = lora_core::count_params(
        &rfa::model_init::Vit::<AB>::load(&run.dir.join("original"), &dev).unwrap(),
    )
    .total;
    assert_eq!(phase["trainable_params"].as_u64().unwrap() as usize, total);
    // Only about half of the weights may move (weight decay is off by default).
    let a = lora_core::TensorFile::open(&run.dir.join("original/model.safetensors")).unwrap();
    let b = lora_core::TensorFile::open(&out.join("merged/model.safetensors")).unwrap();
    let (mut changed, mut all) = (0usize, 0usize);
    for (key, x) in &a.tensors {
        let (x, y) = (x.to_f32(), b.get(key).unwrap().to_f32());
        all += x.len();
        changed += x.iter().zip(&y).filter(|(p, q)| p != q).count();
    }
    let share = changed as f64 / all as f64;
    assert!(share > 0.05 && share <= 0.5 + 1e-3, "{changed} of {all} weights changed");
}

#[test]
fn label_methods_refuse_language_models_and_unknown_methods_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("bad", tmp.path());
    // An unknown method is refused when the configuration is read, naming it and the known ones.
    let toml = c.to_toml().replace("method = \"rfa\"", "method = \"forget-everything\"");
    assert!(toml.contains("forget-everything"), "{toml}");
    let e = toml::from_str::<rfa::config::RunConfig>(&toml).unwrap_err().to_string();
    assert!(e.contains("forget-everything") && e.contains("salun"), "{e}");
}
