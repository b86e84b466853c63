//! Bad checkpoints and adapters give typed errors that name the file, the key and the shapes.
//! Each case edits a copy of a parity fixture in a temporary folder.

mod common;

use std::path::{Path, PathBuf};

use common::{B, device, fixtures};
use lora_core::tensors::write_safetensors;
use lora_core::{HostTensor, LoraError, ModuleNames, TensorFile};
use rfa_models::parity::{AnyModel, Tolerance, check_dir};
use rfa_models::{
    BertForSequenceClassification, Gpt2LmHeadModel, ModelError, VitForImageClassification,
};

fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy_dir(&fixtures().join("hf-parity").join(name), &dst);
    (tmp, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
            let mut p = std::fs::metadata(&to).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            std::fs::set_permissions(&to, p).unwrap();
        }
    }
}

fn edit_weights(
    file: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, lora_core::HostTensor>),
) {
    let mut f = TensorFile::open(file).unwrap();
    edit(&mut f.tensors);
    write_safetensors(file, &f.tensors, None).unwrap();
}

fn load_err(dir: &Path) -> String {
    match AnyModel::<B>::load(dir, &device()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_name_the_path() {
    let (_t, dir) = copy_fixture("gpt2");
    std::fs::remove_file(dir.join("model/model.safetensors")).unwrap();
    let e = load_err(&dir.join("model"));
    assert!(e.contains("model.safetensors") && e.contains("not found"), "{e}");
    std::fs::remove_file(dir.join("model/config.json")).unwrap();
    let e = load_err(&dir.join("model"));
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn unknown_model_type_is_rejected() {
    let (_t, dir) = copy_fixture("bert");
    let c = dir.join("model/config.json");
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("\"model_type\": \"bert\"", "\"model_type\": \"llama\"");
    std::fs::write(&c, text).unwrap();
    let e = AnyModel::<B>::load(&dir.join("model"), &device()).err().unwrap();
    assert!(matches!(e, ModelError::UnknownModelType { .. }), "{e}");
    assert!(e.to_string().contains("llama") && e.to_string().contains("config.json"));
}

#[test]
fn config_that_does_not_match_the_weights_names_key_and_shapes() {
    let (_t, dir) = copy_fixture("bert");
    let c = dir.join("model/config.json");
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(&c, text).unwrap();
    let e = load_err(&dir.join("model"));
    assert!(
        e.contains("bert.encoder.layer.0.intermediate.dense.weight")
            && e.contains("[96, 64]")
            && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn invalid_config_values_are_rejected() {
    let (_t, dir) = copy_fixture("vit");
    let c = dir.join("model/config.json");
    let orig = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, orig.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"))
        .unwrap();
    assert!(load_err(&dir.join("model")).contains("not divisible"));
    std::fs::write(&c, orig.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"mystery\""))
        .unwrap();
    assert!(load_err(&dir.join("model")).contains("mystery"));
    std::fs::write(&c, "{ \"model_type\": \"vit\" ").unwrap();
    assert!(load_err(&dir.join("model")).contains("config.json"));
}

#[test]
fn missing_and_extra_tensors_are_named() {
    let (_t, dir) = copy_fixture("vit");
    let w = dir.join("model/model.safetensors");
    edit_weights(&w, |t| {
        t.remove("vit.encoder.layer.1.layernorm_after.bias");
    });
    let e = load_err(&dir.join("model"));
    assert!(e.contains("vit.encoder.layer.1.layernorm_after.bias") && e.contains("missing"), "{e}");

    let (_t2, dir) = copy_fixture("gpt2");
    let w = dir.join("model/model.safetensors");
    edit_weights(&w, |t| {
        let v = t["transformer.ln_f.bias"].clone();
        t.insert("transformer.h.7.mystery.weight".into(), v);
    });
    let e = Gpt2LmHeadModel::<B>::load(&dir.join("model"), &device()).err().unwrap();
    assert!(matches!(e, ModelError::UnexpectedTensors { .. }), "{e}");
    assert!(e.to_string().contains("transformer.h.7.mystery.weight"));
}

#[test]
fn truncated_or_foreign_weight_files_are_errors_not_panics() {
    let (_t, dir) = copy_fixture("bert");
    let w = dir.join("model/model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&dir.join("model"));
    assert!(e.contains("not a valid safetensors file") && e.contains("model.safetensors"), "{e}");
    std::fs::write(&w, b"PK\x03\x04 this is a zip, as pytorch_model.bin would be").unwrap();
    let e = load_err(&dir.join("model"));
    assert!(e.contains("not a valid safetensors file"), "{e}");
    std::fs::write(&w, b"").unwrap();
    assert!(load_err(&dir.join("model")).contains("not a valid safetensors file"));
}

#[test]
fn adapter_targeting_a_missing_module_is_rejected() {
    let (_t, dir) = copy_fixture("bert");
    edit_weights(&dir.join("adapter/adapter_model.safetensors"), |t| {
        let v = t["base_model.model.bert.pooler.dense.lora_A.weight"].clone();
        let b = t["base_model.model.bert.pooler.dense.lora_B.weight"].clone();
        t.insert(
            "base_model.model.bert.encoder.layer.9.attention.self.query.lora_A.weight".into(),
            v,
        );
        t.insert(
            "base_model.model.bert.encoder.layer.9.attention.self.query.lora_B.weight".into(),
            b,
        );
    });
    let mut m = AnyModel::<B>::load(&dir.join("model"), &device()).ok().unwrap();
    let e = m.load_adapter(&dir.join("adapter")).unwrap_err();
    assert!(matches!(e, ModelError::Lora(LoraError::UnknownModule { .. })), "{e}");
    assert!(e.to_string().contains("bert.encoder.layer.9.attention.self.query"));
}

#[test]
fn checkpoints_without_the_head_prefix_and_with_buffers_load_the_same() {
    // GPT-2 as the Hub's `gpt2` is saved: bare GPT2Model keys plus the causal-mask buffers.
    let (_t, dir) = copy_fixture("gpt2");
    edit_weights(&dir.join("model/model.safetensors"), |t| {
        let all = std::mem::take(t);
        for (k, v) in all {
            t.insert(k.strip_prefix("transformer.").unwrap().to_string(), v);
        }
        let buf = lora_core::HostTensor::f32(vec![1, 1, 4, 4], vec![1.0; 16]);
        t.insert("h.0.attn.bias".into(), buf.clone());
        t.insert("h.1.attn.masked_bias".into(), lora_core::HostTensor::f32(vec![], vec![-1e4]));
    });
    let report = check_dir::<B>(&dir, Tolerance::default(), &device()).unwrap();
    assert!(report.ok(), "{report}");

    // BERT with `bert.` stripped, plus the position_ids buffer.
    let (_t, dir) = copy_fixture("bert");
    edit_weights(&dir.join("model/model.safetensors"), |t| {
        let all = std::mem::take(t);
        for (k, v) in all {
            t.insert(k.strip_prefix("bert.").unwrap_or(&k).to_string(), v);
        }
        t.insert(
            "embeddings.position_ids".into(),
            lora_core::HostTensor::f32(vec![1, 64], (0..64).map(|i| i as f32).collect()),
        );
    });
    let report = check_dir::<B>(&dir, Tolerance::default(), &device()).unwrap();
    assert!(report.ok(), "{report}");
    assert!(BertForSequenceClassification::<B>::load(&dir.join("model"), &device()).is_ok());
}

#[test]
fn vit_adapters_with_either_module_naming_load_the_same() {
    // The fixture's adapter uses transformers 5 names (vit.layers.N.attention.q_proj); rewrite it
    // with the checkpoint's names (transformers 4) and compare.
    let (_t, dir) = copy_fixture("vit");
    let v5 = check_dir::<B>(&dir, Tolerance::default(), &device()).unwrap();
    assert!(v5.ok(), "{v5}");
    edit_weights(&dir.join("adapter/adapter_model.safetensors"), |t| {
        let all = std::mem::take(t);
        for (k, v) in all {
            let k = k
                .replace("vit.layers.", "vit.encoder.layer.")
                .replace("attention.q_proj", "attention.attention.query")
                .replace("attention.v_proj", "attention.attention.value");
            t.insert(k, v);
        }
    });
    let v4 = check_dir::<B>(&dir, Tolerance::default(), &device()).unwrap();
    assert!(v4.ok(), "{v4}");

    // Export: transformers 5's names give back peft's own file (same keys, same tensors, same
    // target_modules); transformers 4's give the checkpoint's names. Each records its names.
    let fixture = fixtures().join("hf-parity/vit/adapter");
    let mut m = VitForImageClassification::<B>::load(&dir.join("model"), &device()).unwrap();
    lora_core::load_adapter(&mut m, &dir.join("adapter")).unwrap();
    let peft_cfg = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    for (names, prefix, targets) in [
        (ModuleNames::Transformers5, "base_model.model.vit.layers.", ["q_proj", "v_proj"]),
        (ModuleNames::Transformers4, "base_model.model.vit.encoder.layer.", ["query", "value"]),
    ] {
        let out = dir.join(format!("exported-{names}"));
        lora_core::save_adapter(&m, &out, None, names).unwrap();
        let f = TensorFile::open(out.join("adapter_model.safetensors")).unwrap();
        assert!(f.tensors.keys().all(|k| k.starts_with(prefix)), "{names}: {:?}", f.tensors.keys());
        assert_eq!(
            f.metadata.get(lora_core::peft::MODULE_NAMES_METADATA),
            Some(&names.to_string())
        );
        assert_eq!(peft_cfg(&out)["target_modules"], serde_json::json!(targets), "{names}");
        if names == ModuleNames::Transformers5 {
            let theirs = TensorFile::open(fixture.join("adapter_model.safetensors")).unwrap();
            assert_eq!(f.tensors, theirs.tensors, "peft's keys and tensors, bit for bit");
            assert_eq!(peft_cfg(&out)["target_modules"], peft_cfg(&fixture)["target_modules"]);
        }
        let mut back = VitForImageClassification::<B>::load(&dir.join("model"), &device()).unwrap();
        lora_core::load_adapter(&mut back, &out).unwrap();
        let adapters = |m: &VitForImageClassification<B>| -> Vec<(String, HostTensor, HostTensor)> {
            lora_core::LoraModel::linears(m)
                .into_iter()
                .filter_map(|(p, l)| {
                    let a = l.lora.as_ref()?;
                    Some((
                        p,
                        HostTensor::from_tensor(a.lora_a.val()),
                        HostTensor::from_tensor(a.lora_b.val()),
                    ))
                })
                .collect()
        };
        assert_eq!(adapters(&back), adapters(&m), "{names}: reloads to the same adapters");
    }
}

#[test]
fn gpt2_export_keeps_fan_in_fan_out_and_reloads_exactly() {
    let dir = fixtures().join("hf-parity/gpt2");
    let mut m = Gpt2LmHeadModel::<B>::load(&dir.join("model"), &device()).unwrap();
    let cfg = lora_core::load_adapter(&mut m, &dir.join("adapter")).unwrap();
    assert!(cfg.fan_in_fan_out);
    let tmp = tempfile::tempdir().unwrap();
    let written = lora_core::save_adapter(
        &m,
        tmp.path(),
        Some("gpt2-tiny"),
        lora_core::ModuleNames::default(),
    )
    .unwrap();
    assert!(written.fan_in_fan_out);
    let a = TensorFile::open(dir.join("adapter/adapter_model.safetensors")).unwrap();
    let b = TensorFile::open(tmp.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(a.tensors, b.tensors, "export must reproduce peft's file tensor for tensor");
}

/// Zero or absurd sizes (a divide by zero, terabytes of weights) are refused from config.json
/// before anything is allocated, naming the file and the sizes.
#[test]
fn zero_and_absurd_sizes_are_errors_before_allocation() {
    for (fixture, field, value) in [
        ("vit", "hidden_size", "64"),
        ("vit", "image_size", "32"),
        ("bert", "num_hidden_layers", "2"),
        ("gpt2", "n_embd", "64"),
        ("gpt2", "vocab_size", "512"),
    ] {
        let (_t, dir) = copy_fixture(fixture);
        let c = dir.join("model/config.json");
        let orig = std::fs::read_to_string(&c).unwrap();
        let from = format!("\"{field}\": {value}");
        assert!(orig.contains(&from), "{fixture}: {from} not in its config");
        for bad in ["0", "1000000000000"] {
            std::fs::write(&c, orig.replace(&from, &format!("\"{field}\": {bad}"))).unwrap();
            let e = load_err(&dir.join("model"));
            assert!(
                e.contains("config.json") && e.contains(&format!("{field} = {bad}")),
                "{fixture} {field}={bad}: {e}"
            );
        }
    }
}

mod config_text {
    use super::*;
    use proptest::prelude::*;
    use rfa_models::config::check_config_text;

    fn fixture_config(name: &str) -> serde_json::Value {
        let p = fixtures().join("hf-parity").join(name).join("model/config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any text: an error naming config.json, never a panic (also fuzzed: scripts/fuzz.sh).
        #[test]
        fn any_text_is_an_answer(text in "\\PC{0,200}") {
            if let Err(e) = check_config_text(&text, Path::new("config.json")) {
                prop_assert!(e.to_string().contains("config.json"), "{}", e);
            }
        }

        /// A real config with one size set to anything, zero and absurd values included: accepted
        /// only if every size is sane, never a panic or an allocation.
        #[test]
        fn any_size_in_a_real_config(model in prop_oneof![Just("vit"), Just("bert"), Just("gpt2")], pick in any::<prop::sample::Index>(), size in prop_oneof![Just(0u64), 1u64..4096, Just(u64::MAX), Just(1u64 << 40)]) {
            let mut cfg = fixture_config(model);
            let keys: Vec<String> = cfg.as_object().unwrap().iter()
                .filter(|(_, v)| v.is_u64())
                // Sizes the model is built from: not token ids, nor fields it ignores (the pooler).
                .filter(|(k, _)| !k.starts_with("pooler") && ["size", "layer", "head", "positions", "embd", "inner", "channels"].iter().any(|w| k.contains(w)))
                .map(|(k, _)| k.clone())
                .collect();
            let key = pick.get(&keys).clone();
            cfg[&key] = size.into();
            let text = serde_json::to_string(&cfg).unwrap();
            match check_config_text(&text, Path::new("config.json")) {
                Ok(_) => prop_assert!(size > 0 && size < (1 << 40), "{} = {} accepted", key, size),
                Err(e) => prop_assert!(e.to_string().contains("config.json"), "{}", e),
            }
        }
    }

    #[test]
    fn the_fixtures_pass() {
        for m in ["vit", "bert", "gpt2"] {
            check_config_text(&fixture_config(m).to_string(), Path::new("config.json")).unwrap();
        }
    }
}
