//! `rfa pretrain` → fine-tune → unlearn: a rotation-pre-trained ViT and an IMDB-pre-trained
//! GPT-2 become the backbones of tiny runs; the backbone checkpoint reads back to the model it
//! was (its recorded held-out accuracy, recomputed); a resume on another corpus is refused with
//! nothing overwritten; a backbone that does not fit the task or its tokenizer is named.

mod common;

use std::path::Path;

use common::AB;
use common::text::{eli5, fixture, gpt2_config, imdb};
use rfa::Run;
use rfa::config::{PretrainConfig, PretrainObjective, RunConfig};
use rfa::engine::outputs;
use rfa::engine_model::EngineModel;
use rfa::model_init::Vit;
use rfa::pretrain::{PretrainRecord, rotations};

type Inner = burn::backend::NdArray<f32>;

fn pretrain_section(dataset: &str, path: &Path, objective: PretrainObjective) -> PretrainConfig {
    PretrainConfig {
        dataset: dataset.into(),
        path: path.to_path_buf(),
        objective,
        max_samples: 60,
        max_held_out: 20,
        max_len: 32,
        epochs: 1,
        lr: 2e-3,
        batch_size: 16,
        weight_decay: 0.01,
    }
}

fn sha(p: &Path) -> String {
    rfa::fingerprint::sha256_file(p).unwrap()
}

#[test]
fn a_rotation_pretrained_vit_is_fine_tuned_and_unlearned() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut backbone = common::tiny("backbone", tmp.path(), 1);
    backbone.pretrain =
        Some(pretrain_section("fashion-mnist", Path::new(""), PretrainObjective::Rotation));
    let out = Run::pretrain::<AB>(&backbone, Some("test"), false, &dev).unwrap();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "pretrain.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let record = PretrainRecord::read(&out).unwrap();
    assert_eq!((record.samples, record.held_out_samples), (240, 80), "four turns each");
    // Round trip: the saved backbone gives the held-out accuracy its record states.
    let model = <Vit<Inner> as EngineModel<Inner>>::load(&out, &dev).unwrap();
    let (_, held) = rfa::task::embedded_fashion_mnist().unwrap();
    let keep = rfa::task::balanced(&held.labels, 10, 20, 1);
    let held = rotations(&held.subset(&keep)).unwrap();
    let o = outputs(&model, &held, &(0..held.len()).collect::<Vec<_>>(), &dev).unwrap();
    let rows = rfa_eval::Rows::new("logits", &o.logits, 4).unwrap();
    assert_eq!(rfa_eval::accuracy(&rows, &o.labels).unwrap(), record.held_out_accuracy.unwrap());

    // Fine-tuned with a fresh head, unlearned, evaluated; the report names the backbone.
    let mut cfg = common::tiny("fine-tuned", tmp.path(), 1);
    cfg.model.path = Some(out.clone());
    let mut run = Run::open(cfg).unwrap();
    run.backend = Some("test".into());
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let report = run.eval::<AB>("test", &dev).unwrap();
    let b = report.backbone.as_ref().expect("the report names the backbone");
    assert_eq!(b.sha256, sha(&out.join("model.safetensors")));
    assert_eq!(b.pretrain.as_ref().unwrap().objective, PretrainObjective::Rotation);
    assert!(report.markdown().contains("pre-trained by rfa (rotation"), "{}", report.markdown());

    // Resumed on another corpus: refused, the backbone untouched; --force starts over.
    let before = sha(&out.join("model.safetensors"));
    let mut other = backbone.clone();
    other.pretrain.as_mut().unwrap().max_samples = 80;
    let e = Run::pretrain::<AB>(&other, None, false, &dev).unwrap_err().to_string();
    assert!(e.contains("pretrain.max_samples = 60") && e.contains("--force"), "{e}");
    assert_eq!(sha(&out.join("model.safetensors")), before);
    Run::pretrain::<AB>(&other, None, true, &dev).unwrap();
    assert_eq!(PretrainRecord::read(&out).unwrap().samples, 320);

    // A backbone with an objective that does not train it, or for other data, is named.
    let mut wrong = backbone.clone();
    wrong.pretrain.as_mut().unwrap().objective = PretrainObjective::CausalLm;
    let e = Run::pretrain::<AB>(&wrong, None, false, &dev).unwrap_err().to_string();
    assert!(e.contains("pretrain.objective = \"causal-lm\""), "{e}");
}

#[test]
fn an_imdb_pretrained_gpt2_continues_on_eli5() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let data = eli5(tmp.path());
    let mut backbone: RunConfig = gpt2_config("gpt2-backbone", tmp.path(), &data);
    backbone.pretrain =
        Some(pretrain_section("imdb", &imdb(tmp.path()), PretrainObjective::CausalLm));
    let out = Run::pretrain::<AB>(&backbone, Some("test"), false, &dev).unwrap();
    let record = PretrainRecord::read(&out).unwrap();
    assert_eq!((record.samples, record.held_out_samples), (12, 12));
    assert!(record.held_out_perplexity.unwrap().is_finite());
    assert!(out.join("tokenizer.json").is_file(), "the backbone carries its tokenizer");

    let mut cfg = gpt2_config("eli5-on-backbone", tmp.path(), &data);
    cfg.model.config = None;
    cfg.model.tokenizer = None;
    cfg.model.path = Some(out.clone());
    let mut run = Run::open(cfg.clone()).unwrap();
    run.backend = Some("test".into());
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let report = run.eval::<AB>("test", &dev).unwrap();
    assert!(report.markdown().contains("backbone's held-out pre-training text"));
    let before = report.backbone.unwrap().pretrain.unwrap().held_out_perplexity.unwrap();
    // Every model on the backbone's held-out IMDB texts, after fine-tuning on ELI5.
    let lm = report.language_model.unwrap();
    let corpus = lm.backbone_corpus.unwrap();
    assert!(corpus.starts_with("12 reviews of") && corpus.ends_with("aclImdb/test"), "{corpus}");
    for m in &lm.models {
        let after = m.ppl_backbone_corpus.unwrap();
        assert!(after.is_finite() && after != before, "{}: {after} vs {before}", m.name);
    }

    // Another tokenizer than the backbone's, and a language model for images: named.
    let mut bad = cfg.clone();
    bad.model.tokenizer = Some(fixture("hf-parity/bert/tokenizer"));
    let e = Run::open(bad).err().unwrap().to_string();
    assert!(e.contains("is not the tokenizer of model.path"), "{e}");
    let mut images = common::tiny("images-on-gpt2", tmp.path(), 1);
    images.model.path = Some(out.clone());
    let e = Run::open(images).err().unwrap().to_string();
    assert!(e.contains("must be a ViT") && e.contains("model.path ="), "{e}");
}
