//! Tokenizers: Hugging Face's `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`
//! (equally `encoder.json` + `vocab.bpe`, OpenAI's names for the same files).
//!
//! Padding and truncation stored in a `tokenizer.json` (sentence-transformers fixes padding to
//! 128) are switched off: batches are padded dynamically by [`TextTokenizer::encode_batch`].

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::ModelError;

/// A padded batch: `ids`, `attention_mask` (1 = token) and `token_type_ids`, each
/// `batch × max_len` in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// How many inputs were cut to `max_len`.
    pub truncated: usize,
}

pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub source: PathBuf,
    pub pad_id: u32,
}

impl TextTokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let err = |reason: String| ModelError::Tokenizer { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| err(e.to_string()))?;
        let pad_id = ["[PAD]", "<pad>", "<|endoftext|>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        Ok(Self { inner, source: path.to_path_buf(), pad_id })
    }

    /// GPT-2's byte-level BPE from its vocabulary and merges files.
    pub fn gpt2(vocab: &Path, merges: &Path) -> Result<Self, ModelError> {
        for p in [vocab, merges] {
            if !p.is_file() {
                return Err(ModelError::Tokenizer { path: p.to_path_buf(), reason: "file not found".into() });
            }
        }
        let err = |reason: String| ModelError::Tokenizer { path: vocab.to_path_buf(), reason };
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy()).build().map_err(|e| err(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let pad_id = inner.token_to_id("<|endoftext|>").unwrap_or(0);
        Ok(Self { inner, source: vocab.to_path_buf(), pad_id })
    }

    /// Reads what `dir` holds: `tokenizer.json`, else `vocab.json` + `merges.txt`, else
    /// `encoder.json` + `vocab.bpe`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let tj = dir.join("tokenizer.json");
        if tj.is_file() {
            return Self::from_file(&tj);
        }
        for (v, m) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
            if dir.join(v).is_file() {
                return Self::gpt2(&dir.join(v), &dir.join(m));
            }
        }
        Err(ModelError::Tokenizer {
            path: dir.to_path_buf(),
            reason: "no tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe".into(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Fails when the tokenizer can produce ids the model's embedding has no row for.
    pub fn check_fits(&self, model_vocab: usize) -> Result<(), ModelError> {
        if self.vocab_size() > model_vocab {
            return Err(ModelError::Tokenizer {
                path: self.source.clone(),
                reason: format!("vocabulary of {} tokens does not fit the model's embedding of {model_vocab} rows", self.vocab_size()),
            });
        }
        Ok(())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer { path: self.source.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, true).map_err(|e| ModelError::Tokenizer { path: self.source.clone(), reason: e.to_string() })
    }

    /// Encodes and right-pads to the longest input (at most `max_len`; longer inputs are cut,
    /// keeping the start, and counted in `truncated`).
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<TokenBatch, ModelError> {
        let mut rows = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for t in texts {
            let mut ids = self.encode(t, true)?;
            if ids.len() > max_len {
                ids.truncate(max_len);
                truncated += 1;
            }
            rows.push(ids);
        }
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(rows.len() * seq),
            attention_mask: Vec::with_capacity(rows.len() * seq),
            token_type_ids: vec![0; rows.len() * seq],
            batch: rows.len(),
            seq,
            truncated,
        };
        for r in rows {
            let n = r.len();
            batch.ids.extend(r.iter().map(|&x| x as i64));
            batch.ids.extend(std::iter::repeat_n(self.pad_id as i64, seq - n));
            batch.attention_mask.extend(std::iter::repeat_n(1, n));
            batch.attention_mask.extend(std::iter::repeat_n(0, seq - n));
        }
        Ok(batch)
    }
}
