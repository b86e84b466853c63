//! Tokenizer fixtures give identical ids; GPT-2's real BPE files load and round-trip.

mod common;

use common::fixtures;
use rfa_models::TextTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Encoding {
    text: String,
    ids: Vec<u32>,
}

fn check(name: &str) {
    let dir = fixtures().join("hf-parity").join(name).join("tokenizer");
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let encs: Vec<Encoding> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("encodings.json")).unwrap())
            .unwrap();
    assert!(!encs.is_empty());
    for e in encs {
        assert_eq!(tok.encode(&e.text, true).unwrap(), e.ids, "{name}: {:?}", e.text);
    }
}

#[test]
fn gpt2_byte_level_bpe_ids_match() {
    check("gpt2");
}

#[test]
fn bert_wordpiece_ids_match() {
    check("bert");
}

#[test]
fn gpt2_vocab_and_merges_files_load() {
    let dir = fixtures().join("gpt2-tokenizer");
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    // Known GPT-2 ids: "Hello" = 15496, " world" = 995.
    assert_eq!(tok.encode("Hello world", false).unwrap(), vec![15496, 995]);
    let text = "Unlearning: don't forget Ünïcödé & emoji 🙂!";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn batches_are_padded_dynamically_and_truncated() {
    let tok = TextTokenizer::from_dir(&fixtures().join("hf-parity/bert/tokenizer")).unwrap();
    let b = tok.encode_batch(&["the movie was a delight", "why"], 64).unwrap();
    let n0 = tok.encode("the movie was a delight", true).unwrap().len();
    assert_eq!((b.batch, b.seq, b.truncated), (2, n0, 0));
    let n1 = tok.encode("why", true).unwrap().len();
    assert_eq!(b.attention_mask[b.seq..].iter().sum::<i64>(), n1 as i64);
    assert!(b.ids[b.seq + n1..].iter().all(|&i| i == tok.pad_id as i64));
    let t = tok.encode_batch(&["the movie was a delight"], 3).unwrap();
    assert_eq!((t.seq, t.truncated), (3, 1));
    let full = tok.encode("the movie was a delight", true).unwrap();
    assert_eq!(tok.closing_id, full.last().copied(), "[SEP]");
    assert_eq!(t.ids[2], *full.last().unwrap() as i64, "a cut text keeps its closing [SEP]");
}

#[test]
fn tokenizer_vocabulary_must_fit_the_model() {
    let tok = TextTokenizer::from_dir(&fixtures().join("gpt2-tokenizer")).unwrap();
    let err = tok.check_fits(512).unwrap_err().to_string();
    assert!(err.contains("50257") && err.contains("512"), "{err}");
}

#[test]
fn missing_tokenizer_is_an_error_naming_the_path() {
    let err = TextTokenizer::from_dir(&fixtures().join("nope")).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");
}
