//! `save_pretrained`: a saved model reloads to the same outputs under the checkpoint's own key
//! names; a merged LoRA model exports as a plain Hugging Face checkpoint.

mod common;

use common::{B, device, fixtures};
use lora_core::{HostTensor, TensorFile};
use rfa_models::{VitConfig, VitForImageClassification};

fn logits(m: &VitForImageClassification<B>) -> HostTensor {
    let px = TensorFile::open(fixtures().join("hf-parity/vit/reference.safetensors")).unwrap();
    HostTensor::from_tensor(m.forward(px.get("pixel_values").unwrap().to_tensor(&device())).logits)
}

#[test]
fn vit_checkpoint_round_trips_with_the_same_keys() {
    let src = fixtures().join("hf-parity/vit/model");
    let m = VitForImageClassification::<B>::load(&src, &device()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    m.save_pretrained(tmp.path()).unwrap();
    let a = TensorFile::open(src.join("model.safetensors")).unwrap();
    let b = TensorFile::open(tmp.path().join("model.safetensors")).unwrap();
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    assert_eq!(a.tensors, b.tensors, "bit-exact weights");
    let back = VitForImageClassification::<B>::load(tmp.path(), &device()).unwrap();
    assert_eq!(logits(&m), logits(&back));
}

#[test]
fn merged_lora_model_exports_as_a_plain_checkpoint() {
    let dir = fixtures().join("hf-parity/vit");
    let mut m = VitForImageClassification::<B>::load(&dir.join("model"), &device()).unwrap();
    lora_core::load_adapter(&mut m, &dir.join("adapter")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = m.save_pretrained(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("unmerged LoRA adapter"), "{err}");
    assert!(!tmp.path().join("model.safetensors").exists(), "nothing half-written");
    lora_core::merge_and_unload(&mut m);
    m.save_pretrained(tmp.path()).unwrap();
    let back = VitForImageClassification::<B>::load(tmp.path(), &device()).unwrap();
    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    let want = reference.get("merged.logits").unwrap().to_f32();
    let got = logits(&back).to_f32();
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{err}");
}

#[test]
fn fresh_vit_is_seeded_trainable_and_saves() {
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let cfg = VitConfig::new(32, 4, 3, 64, 2, 4, 128, &names);
    let a = VitForImageClassification::<B>::init(&cfg, 1, &device()).unwrap();
    let b = VitForImageClassification::<B>::init(&cfg, 1, &device()).unwrap();
    let c = VitForImageClassification::<B>::init(&cfg, 2, &device()).unwrap();
    assert_eq!(logits(&a), logits(&b));
    assert_ne!(logits(&a), logits(&c));
    let t = VitForImageClassification::<common::AB>::init(&cfg, 1, &device()).unwrap();
    assert!(
        t.classifier.base.weight.is_require_grad()
            && t.vit.layer[0].intermediate.base.weight.is_require_grad()
    );
    let loaded = VitForImageClassification::<common::AB>::load(
        &fixtures().join("hf-parity/vit/model"),
        &device(),
    )
    .unwrap();
    assert!(!loaded.classifier.base.weight.is_require_grad(), "loaded checkpoints start frozen");
    let tmp = tempfile::tempdir().unwrap();
    a.save_pretrained(tmp.path()).unwrap();
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["model_type"], "vit");
    assert_eq!(cfg_json["id2label"]["3"], "c3");
    assert_no_nulls(&cfg_json);
    let back = VitForImageClassification::<B>::load(tmp.path(), &device()).unwrap();
    assert_eq!(logits(&a), logits(&back));
}

/// transformers takes a `null` field (`"num_labels": null`) as a value and fails on it: a field
/// rfa does not know is left out instead.
fn assert_no_nulls(v: &serde_json::Value) {
    match v {
        serde_json::Value::Null => panic!("a null field in a written config.json"),
        serde_json::Value::Array(a) => a.iter().for_each(assert_no_nulls),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                assert!(!x.is_null(), "config.json writes `{k}`: null");
                assert_no_nulls(x);
            }
        }
        _ => {}
    }
}

#[test]
fn written_configs_add_no_null_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let src = |m: &str| fixtures().join("hf-parity").join(m).join("model");
    VitForImageClassification::<B>::load(&src("vit"), &device())
        .unwrap()
        .save_pretrained(&tmp.path().join("vit"))
        .unwrap();
    rfa_models::BertForSequenceClassification::<B>::load(&src("bert"), &device())
        .unwrap()
        .save_pretrained(&tmp.path().join("bert"))
        .unwrap();
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    for m in ["vit", "bert"] {
        // Fields rfa does not model pass through as transformers wrote them, nulls included.
        let (before, after) =
            (read(src(m).join("config.json")), read(tmp.path().join(m).join("config.json")));
        for (k, v) in after.as_object().unwrap() {
            assert!(
                !v.is_null() || before[k].is_null() && before.get(k).is_some(),
                "{m}: `{k}`: null added"
            );
        }
    }
}

/// Load, save, compare the files key by key, and check the merged export against peft's
/// `merge_and_unload` logits.
fn round_trip_and_merged<M>(
    name: &str,
    load: impl Fn(&std::path::Path) -> M,
    save: impl Fn(&M, &std::path::Path),
    logits: impl Fn(&M) -> Vec<f32>,
) where
    M: lora_core::LoraModel<B>,
{
    let dir = fixtures().join("hf-parity").join(name);
    let m = load(&dir.join("model"));
    let tmp = tempfile::tempdir().unwrap();
    save(&m, tmp.path());
    let a = TensorFile::open(dir.join("model/model.safetensors")).unwrap();
    let b = TensorFile::open(tmp.path().join("model.safetensors")).unwrap();
    assert_eq!(a.tensors, b.tensors, "{name}: bit-exact weights under the same keys");
    assert_eq!(logits(&m), logits(&load(tmp.path())));

    let mut m = load(&dir.join("model"));
    lora_core::load_adapter(&mut m, &dir.join("adapter")).unwrap();
    lora_core::merge_and_unload(&mut m);
    let out = tmp.path().join("merged");
    save(&m, &out);
    let want = TensorFile::open(dir.join("reference.safetensors"))
        .unwrap()
        .get("merged.logits")
        .unwrap()
        .to_f32();
    let got = logits(&load(&out));
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{name}: merged export {err}");
}

#[test]
fn gpt2_and_bert_checkpoints_round_trip_and_export_merged() {
    let reference = |name: &str| {
        TensorFile::open(fixtures().join("hf-parity").join(name).join("reference.safetensors"))
            .unwrap()
    };
    let g = reference("gpt2");
    round_trip_and_merged(
        "gpt2",
        |p| rfa_models::Gpt2LmHeadModel::<B>::load(p, &device()).unwrap(),
        |m, p| m.save_pretrained(p).unwrap(),
        |m| {
            let ids = g.get("input_ids").unwrap().to_int_tensor(&device());
            let mask = g.get("attention_mask").unwrap().to_int_tensor(&device());
            HostTensor::from_tensor(m.forward(ids, Some(mask)).logits).to_f32()
        },
    );
    let b = reference("bert");
    round_trip_and_merged(
        "bert",
        |p| rfa_models::BertForSequenceClassification::<B>::load(p, &device()).unwrap(),
        |m, p| m.save_pretrained(p).unwrap(),
        |m| {
            let get = |k: &str| b.get(k).unwrap().to_int_tensor(&device());
            HostTensor::from_tensor(
                m.forward(
                    get("input_ids"),
                    Some(get("attention_mask")),
                    Some(get("token_type_ids")),
                )
                .logits,
            )
            .to_f32()
        },
    );
}

#[test]
fn vit_reads_and_keeps_preprocessor_config() {
    let src = fixtures().join("hf-parity/vit/model");
    let m = VitForImageClassification::<B>::load(&src, &device()).unwrap();
    assert_eq!(
        m.normalisation(),
        (vec![0.5; 3], vec![0.5; 3]),
        "ViT's default without preprocessor_config.json"
    );
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let pp = r#"{"do_normalize": true, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"height": 32, "width": 32}}"#;
    std::fs::write(tmp.path().join("preprocessor_config.json"), pp).unwrap();
    let m = VitForImageClassification::<B>::load(tmp.path(), &device()).unwrap();
    assert_eq!(m.normalisation(), (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]));
    let out = tmp.path().join("saved");
    m.save_pretrained(&out).unwrap();
    let back: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(back["image_std"][2], 0.225);
    std::fs::write(tmp.path().join("preprocessor_config.json"), r#"{"do_normalize": false}"#)
        .unwrap();
    let m = VitForImageClassification::<B>::load(tmp.path(), &device()).unwrap();
    assert_eq!(m.normalisation(), (vec![0.0; 3], vec![1.0; 3]));
}

#[test]
fn new_heads_are_seeded() {
    let dir = fixtures().join("hf-parity/vit/model");
    let head = |seed| {
        let m =
            VitForImageClassification::<B>::load_with_new_head(&dir, 3, seed, &device()).unwrap();
        assert_eq!(m.num_labels(), 3);
        HostTensor::from_tensor(m.classifier.base.weight.val())
    };
    assert_eq!(head(3), head(3));
    assert_ne!(head(3), head(4));
    let bert = fixtures().join("hf-parity/bert/model");
    let b = |seed| {
        HostTensor::from_tensor(
            rfa_models::BertForSequenceClassification::<B>::load_with_new_head(
                &bert,
                5,
                seed,
                &device(),
            )
            .unwrap()
            .classifier
            .base
            .weight
            .val(),
        )
    };
    assert_eq!(b(1), b(1));
}
