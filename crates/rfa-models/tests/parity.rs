//! Our ports against Hugging Face transformers + peft: logits, every hidden state, with the
//! adapter, merged, GPT-2's loss and the RFA retain MSE (fixtures/hf-parity, made by
//! fixtures/make_hf_parity.py).

mod common;

use common::{B, device, fixtures};
use rfa_models::parity::{Tolerance, check_dir};

fn check(name: &str, expected: &[&str]) {
    let report =
        check_dir::<B>(&fixtures().join("hf-parity").join(name), Tolerance::default(), &device())
            .unwrap();
    println!("{report}");
    let names: Vec<&str> = report.comparisons.iter().map(|c| c.name.as_str()).collect();
    for e in expected {
        assert!(names.contains(e), "{name}: `{e}` was not compared (compared: {names:?})");
    }
    assert!(report.ok(), "{name}: over tolerance: {:?}", report.failures());
}

const COMMON: &[&str] = &[
    "logits",
    "hidden.0",
    "hidden.1",
    "hidden.2",
    "lora.logits",
    "lora.hidden.0",
    "lora.hidden.1",
    "lora.hidden.2",
    "merged.logits",
    "rfa.retain_mse",
];

#[test]
fn gpt2_matches_transformers() {
    let mut e = COMMON.to_vec();
    e.push("loss");
    check("gpt2", &e);
}

#[test]
fn bert_matches_transformers() {
    check("bert", COMMON);
}

#[test]
fn vit_matches_transformers() {
    check("vit", COMMON);
}

/// A backward pass through the adapted GPT-2 gives gradients for every adapter matrix, finite
/// and not all zero (B starts non-zero in the fixture, so A's gradients are non-zero too).
#[test]
fn lora_backward_reaches_every_adapter() {
    let (loss, grads) = common::gpt2_lora_grads::<common::AB>(&device(), None);
    assert!(loss.is_finite() && loss > 0.0);
    assert_eq!(grads.len(), 2 * 2 * 4, "A and B of 4 adapted layers in 2 blocks");
    for g in &grads {
        assert!(g.iter().all(|v| v.is_finite()));
        assert!(g.iter().any(|&v| v != 0.0));
    }
}

/// The same checks on burn's `flex` backend with threads and SIMD (`rfa --device cpu-flex`).
#[test]
fn all_three_match_transformers_on_flex() {
    for name in ["gpt2", "bert", "vit"] {
        let report = check_dir::<burn::backend::Flex>(
            &fixtures().join("hf-parity").join(name),
            Tolerance::default(),
            &Default::default(),
        )
        .unwrap();
        println!("flex {report}");
        assert!(report.ok(), "{name} on flex: over tolerance: {:?}", report.failures());
    }
}
