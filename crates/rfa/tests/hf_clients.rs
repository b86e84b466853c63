//! What transformers and peft must find in rfa's folders, computed by rfa: tiny runs of each
//! family (ViT, BERT, GPT-2), unlearned by every method that applies (LoRA adapters) and by one
//! full-weight method, with the logits of every saved model on the run's own inputs, the token
//! ids of the run's texts and the greedy continuations of the report's prompts.
//!
//! With `RFA_HF_CLIENT_DIR` set, the runs and `<family>/cases.json` are kept there for the real
//! clients (`tests/python/test_hf_clients.py` beside this file, run by `.ci/run`); otherwise they
//! go to a temporary folder. Either way this test checks what rfa can check alone: base + adapter
//! gives the merged model's logits, and every adapter moves them.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor};
use lora_core::HostTensor;
use lora_core::tensors::write_safetensors;
use rfa::Run;
use rfa::config::RunConfig;
use rfa::engine_model::{EngineModel, Input};
use rfa::model_init::{Bert, Gpt2, Vit};
use serde::Serialize;

use common::AB;
use common::text::{bert_config, eli5, gpt2_config, imdb};

type I = burn::backend::NdArray<f32>;

/// One saved model for the clients: `original` alone, or with `adapter`, and the `merged` model
/// that must equal both together.
#[derive(Serialize)]
struct Case {
    method: String,
    original: PathBuf,
    adapter: Option<PathBuf>,
    merged: Option<PathBuf>,
    /// Keys in `expected.safetensors`.
    adapted_logits: Option<String>,
    merged_logits: Option<String>,
}

/// `<family>/cases.json`.
#[derive(Serialize)]
struct Manifest {
    family: &'static str,
    /// `pixel_values` and `images`, or `input_ids` + `attention_mask`; `original_logits` and
    /// the cases' logits (all f32).
    expected: PathBuf,
    cases: Vec<Case>,
    /// Texts whose rfa token ids the saved tokenizer must reproduce.
    tokenized: Vec<Tokenized>,
    /// `<|endoftext|>`, where generation stops.
    eos: Option<u32>,
    generations: Vec<Generated>,
}

#[derive(Serialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

/// rfa's greedy continuation of `prompt_ids` by the model in `model`: at most `max_new_tokens`,
/// ending after `<|endoftext|>` when it comes.
#[derive(Serialize)]
struct Generated {
    model: PathBuf,
    max_new_tokens: usize,
    prompt_ids: Vec<u32>,
    continuation_ids: Vec<u32>,
}

/// `$RFA_HF_CLIENT_DIR` (without the `family`'s run and files of an earlier pass), else a
/// temporary folder.
fn output_root(family: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("RFA_HF_CLIENT_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            for old in [d.join("runs").join(family), d.join(family)] {
                if old.exists() {
                    std::fs::remove_dir_all(&old).unwrap();
                }
            }
            std::fs::create_dir_all(&d).unwrap();
            (None, std::fs::canonicalize(d).unwrap())
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// Trains M0, then unlearns with each of `methods`; `full` names a method that updates every
/// weight (`unlearn.adapter = "full"`), written under seed 1 beside its adapter version. With
/// `evaluate`, also retrains M* and writes the report.
fn run_methods(cfg: &RunConfig, methods: &[rfa::Method], full: rfa::Method, evaluate: bool) -> Run {
    let dev = Default::default();
    let run = Run::open(cfg.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    if evaluate {
        run.train::<AB>(true, &dev).unwrap();
    }
    for &method in methods {
        let mut c = cfg.clone();
        c.unlearn.method = method;
        Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap_or_else(|e| panic!("{method}: {e:#}"));
    }
    let mut c = cfg.clone();
    c.unlearn.method = full;
    c.unlearn.adapter = "full".into();
    c.unlearn.seed = Some(1);
    Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap_or_else(|e| panic!("full {full}: {e:#}"));
    if evaluate {
        run.eval::<AB>("cpu", &dev).unwrap();
    }
    run
}

fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.to_f32().iter().zip(b.to_f32()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits of the run's original model, of each method's adapter on it and of its merged model,
/// on `input`; writes them with the input into `expected.safetensors` and returns the cases.
/// Checks base + adapter = merged to 1e-4.
fn logit_cases<M>(
    run: &Run,
    input: &Input<I>,
    load: impl Fn(&Path) -> M,
    logits: impl Fn(&M, &Input<I>) -> HostTensor,
    tensors: &mut std::collections::BTreeMap<String, HostTensor>,
) -> Vec<Case>
where
    M: lora_core::LoraModel<I>,
{
    let original = run.dir.join("original");
    let base = load(&original);
    tensors.insert("original_logits".into(), logits(&base, input));
    let mut cases = Vec::new();
    for role in run.unlearned() {
        let dir = role.dir(&run.dir);
        let method = dir.file_name().unwrap().to_string_lossy().into_owned();
        let adapter = dir.join("adapter");
        let merged = dir.join("merged");
        let mut case = Case {
            method: method.clone(),
            original: original.clone(),
            adapter: None,
            merged: None,
            adapted_logits: None,
            merged_logits: None,
        };
        let mut adapted = None;
        if adapter.is_dir() {
            let mut m = load(&original);
            lora_core::load_adapter(&mut m, &adapter).unwrap();
            let key = format!("{method}/adapted_logits");
            let l = logits(&m, input);
            // An adapter that moved nothing would let a client that ignores it pass.
            let moved = max_abs_diff(&l, &tensors["original_logits"]);
            assert!(moved > 1e-3, "{method}: the adapter changes the logits by only {moved}");
            tensors.insert(key.clone(), l.clone());
            adapted = Some(l);
            case.adapter = Some(adapter);
            case.adapted_logits = Some(key);
        }
        if merged.is_dir() {
            let key = format!("{method}/merged_logits");
            let l = logits(&load(&merged), input);
            if let Some(a) = &adapted {
                let err = max_abs_diff(a, &l);
                assert!(err < 1e-4, "{method}: base + adapter vs merged: {err}");
            }
            tensors.insert(key.clone(), l);
            case.merged = Some(merged);
            case.merged_logits = Some(key);
        }
        assert!(case.adapter.is_some() || case.merged.is_some(), "{method}: nothing saved");
        cases.push(case);
    }
    cases
}

fn write_manifest(root: &Path, family: &'static str, mut manifest: Manifest) {
    let dir = root.join(family);
    std::fs::create_dir_all(&dir).unwrap();
    manifest.expected = dir.join("expected.safetensors");
    let text = serde_json::to_string_pretty(&manifest).unwrap();
    std::fs::write(dir.join("cases.json"), text).unwrap();
}

fn token_input(ids: &[Vec<u32>], pad: u32) -> (Input<I>, HostTensor, HostTensor) {
    let t = ids.iter().map(Vec::len).max().unwrap();
    let mut flat = Vec::new();
    let mut mask = Vec::new();
    for row in ids {
        for j in 0..t {
            flat.push(row.get(j).copied().unwrap_or(pad) as f32);
            mask.push(if j < row.len() { 1.0 } else { 0.0 });
        }
    }
    let shape = vec![ids.len(), t];
    let ids_h = HostTensor::f32(shape.clone(), flat);
    let mask_h = HostTensor::f32(shape, mask);
    let dev = Default::default();
    let input = Input::Tokens {
        ids: ids_h.to_int_tensor::<I, 2>(&dev),
        mask: mask_h.to_int_tensor::<I, 2>(&dev),
    };
    (input, ids_h, mask_h)
}

/// The first training texts with the ids rfa's tokenizer gives them (special tokens added, not
/// cut to the run's length, no `<|endoftext|>` appended).
fn tokenized(run: &Run) -> Vec<Tokenized> {
    let (tok, _) = rfa::model_init::tokenizer(&run.cfg.model).unwrap();
    let texts = &run.text().unwrap().train.text.texts;
    let v: Vec<Tokenized> = texts
        .iter()
        .take(8)
        .map(|t| Tokenized { text: t.clone(), ids: tok.encode(t, true).unwrap() })
        .collect();
    assert!(v.iter().all(|t| !t.ids.is_empty()));
    v
}

fn tokens(input: &Input<I>) -> (Tensor<I, 2, Int>, Tensor<I, 2, Int>) {
    let Input::Tokens { ids, mask } = input else { panic!("token input") };
    (ids.clone(), mask.clone())
}

#[test]
fn vit_folders_for_transformers_and_peft() {
    let (_keep, root) = output_root("vit");
    let mut cfg = common::tiny("vit", &root.join("runs"), 1);
    // Every method's adapter must move the model (RFA's stop rule may keep M0 on so small a run).
    cfg.unlearn.stop = rfa::scenario::Auto::Set(rfa::scenario::StopRule::Epochs);
    cfg.unlearn.lr = 1e-3;
    let run = run_methods(&cfg, &rfa::Method::ALL, rfa::Method::Finetune, false);
    let task = run.images().unwrap();
    let dev = Default::default();
    let idx: Vec<usize> = (0..16).collect();
    let m0 = Vit::<I>::load(&run.dir.join("original"), &dev).unwrap();
    let batch = m0.batch(&task.test, &idx, &dev).unwrap();
    let Input::Pixels(px) = &batch.input else { panic!("pixels") };
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("pixel_values".into(), HostTensor::from_tensor(px.clone()));
    // The same images as stored (`[n, channels, height, width]`, 0–255): what a user would hand
    // the image processor that `preprocessor_config.json` describes.
    let ds = &task.test;
    let raw = idx.iter().flat_map(|&i| ds.image(i).iter().map(|&p| p as f32)).collect();
    tensors.insert(
        "images".into(),
        HostTensor::f32(vec![idx.len(), ds.channels, ds.height, ds.width], raw),
    );
    let cases = logit_cases(
        &run,
        &batch.input,
        |d| Vit::<I>::load(d, &dev).unwrap(),
        |m, input| {
            let Input::Pixels(px) = input else { panic!("pixels") };
            HostTensor::from_tensor(m.forward(px.clone()).logits)
        },
        &mut tensors,
    );
    assert_eq!(cases.len(), rfa::Method::ALL.len() + 1);
    std::fs::create_dir_all(root.join("vit")).unwrap();
    write_safetensors(&root.join("vit/expected.safetensors"), &tensors, None).unwrap();
    let manifest = Manifest {
        family: "vit",
        expected: PathBuf::new(),
        cases,
        tokenized: Vec::new(),
        eos: None,
        generations: Vec::new(),
    };
    write_manifest(&root, "vit", manifest);
}

#[test]
fn bert_folders_for_transformers_and_peft() {
    let (_keep, root) = output_root("bert");
    let data = imdb(&root.join("bert-data"));
    let mut cfg = bert_config("bert", &root.join("runs"), &data);
    // Enough for every adapter to move the tiny model's logits.
    cfg.unlearn.lr = 1e-2;
    cfg.unlearn.targets = "all-linear".into();
    cfg.unlearn.epochs = 3;
    let run = run_methods(&cfg, &rfa::Method::ALL, rfa::Method::GradDiff, false);
    let t = run.text().unwrap();
    let dev = Default::default();
    let idx: Vec<usize> = (0..t.test.tokens.len().min(8)).collect();
    let rows: Vec<Vec<u32>> = idx.iter().map(|&i| t.test.tokens[i].clone()).collect();
    let (input, ids, mask) = token_input(&rows, t.test.pad_id);
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("input_ids".into(), ids);
    tensors.insert("attention_mask".into(), mask);
    let cases = logit_cases(
        &run,
        &input,
        |d| Bert::<I>::load(d, &dev).unwrap(),
        |m, input| {
            let (ids, mask) = tokens(input);
            HostTensor::from_tensor(m.forward(ids, Some(mask), None).logits)
        },
        &mut tensors,
    );
    std::fs::create_dir_all(root.join("bert")).unwrap();
    write_safetensors(&root.join("bert/expected.safetensors"), &tensors, None).unwrap();
    let tokenized = tokenized(&run);
    let manifest = Manifest {
        family: "bert",
        expected: PathBuf::new(),
        cases,
        tokenized,
        eos: None,
        generations: Vec::new(),
    };
    write_manifest(&root, "bert", manifest);
}

#[test]
fn gpt2_folders_for_transformers_and_peft() {
    let (_keep, root) = output_root("gpt2");
    std::fs::create_dir_all(root.join("gpt2-data")).unwrap();
    std::fs::create_dir_all(root.join("runs")).unwrap();
    let data = eli5(&root.join("gpt2-data"));
    let cfg = gpt2_config("gpt2", &root.join("runs"), &data);
    // Every method that applies to a language model (random-label and SalUn relabel classes).
    let methods: Vec<rfa::Method> =
        rfa::Method::ALL.into_iter().filter(|m| !m.relabels()).collect();
    let run = run_methods(&cfg, &methods, rfa::Method::Npo, true);
    let t = run.text().unwrap();
    let dev = Default::default();
    let idx: Vec<usize> = (0..t.test.tokens.len().min(4)).collect();
    let rows: Vec<Vec<u32>> = idx.iter().map(|&i| t.test.tokens[i].clone()).collect();
    let (input, ids, mask) = token_input(&rows, t.test.pad_id);
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("input_ids".into(), ids);
    tensors.insert("attention_mask".into(), mask.clone());
    let mask = mask.to_f32();
    let cases = logit_cases(
        &run,
        &input,
        |d| Gpt2::<I>::load(d, &dev).unwrap(),
        |m, input| {
            let (ids, attention) = tokens(input);
            // Padding positions predict nothing; zero them so that only real tokens compare.
            let l = HostTensor::from_tensor(m.forward(ids, Some(attention)).logits);
            let v = l.shape[2];
            let data = l
                .to_f32()
                .chunks(v)
                .zip(&mask)
                .flat_map(|(row, &k)| row.iter().map(move |x| x * k))
                .collect();
            HostTensor::f32(l.shape.clone(), data)
        },
        &mut tensors,
    );
    std::fs::create_dir_all(root.join("gpt2")).unwrap();
    write_safetensors(&root.join("gpt2/expected.safetensors"), &tensors, None).unwrap();

    let (tok, _) = rfa::model_init::tokenizer(&run.cfg.model).unwrap();
    let eos = rfa::model_init::eos_id(&tok);
    let tokenized = tokenized(&run);
    // The report's prompts and rfa's greedy continuations of them, by M0 and by each merged model.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.dir.join("report/report.json")).unwrap())
            .unwrap();
    let prompts: Vec<String> = report["language_model"]["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["prompt"].as_str().unwrap().to_string())
        .collect();
    assert!(!prompts.is_empty());
    let mut generations = Vec::new();
    let mut models = vec![run.dir.join("original")];
    models.extend(cases.iter().filter_map(|c| c.merged.clone()));
    for dir in models {
        let m = Gpt2::<I>::load(&dir, &dev).unwrap();
        for p in &prompts {
            let prompt_ids = tok.encode(p, false).unwrap();
            let new = m.generate(&prompt_ids, run.cfg.eval.generate_tokens, None, 1.0, eos, 0);
            generations.push(Generated {
                model: dir.clone(),
                max_new_tokens: run.cfg.eval.generate_tokens,
                prompt_ids,
                continuation_ids: new,
            });
        }
    }
    let manifest =
        Manifest { family: "gpt2", expected: PathBuf::new(), cases, tokenized, eos, generations };
    write_manifest(&root, "gpt2", manifest);
}
