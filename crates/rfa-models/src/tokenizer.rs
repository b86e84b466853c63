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
    /// The special token that closes every encoded text (BERT's `[SEP]`), if there is one.
    pub closing_id: Option<u32>,
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
        let pad_id = ["[PAD]", "<pad>", "<|endoftext|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        Self::with(inner, path, pad_id)
    }

    /// GPT-2's byte-level BPE from its vocabulary and merges files.
    pub fn gpt2(vocab: &Path, merges: &Path) -> Result<Self, ModelError> {
        for p in [vocab, merges] {
            if !p.is_file() {
                return Err(ModelError::Tokenizer {
                    path: p.to_path_buf(),
                    reason: "file not found".into(),
                });
            }
        }
        let err = |reason: String| ModelError::Tokenizer { path: vocab.to_path_buf(), reason };
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let pad_id = inner.token_to_id("<|endoftext|>").unwrap_or(0);
        Self::with(inner, vocab, pad_id)
    }

    fn with(inner: Tokenizer, source: &Path, pad_id: u32) -> Result<Self, ModelError> {
        let mut tok = Self { inner, source: source.to_path_buf(), pad_id, closing_id: None };
        // What the tokenizer wraps around an empty text: `[CLS] [SEP]` for BERT, nothing for GPT-2.
        tok.closing_id = match tok.encode("", true)?.as_slice() {
            [_, .., last] => Some(*last),
            _ => None,
        };
        Ok(tok)
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
                reason: format!(
                    "vocabulary of {} tokens does not fit the model's embedding of {model_vocab} rows",
                    self.vocab_size()
                ),
            });
        }
        Ok(())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| {
            ModelError::Tokenizer { path: self.source.clone(), reason: e.to_string() }
        })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer { path: self.source.clone(), reason: e.to_string() })
    }

    /// Encodes with special tokens, then `eos` when given. A text longer than `max_len` keeps
    /// its start and its closing special token (`[SEP]`) and gets no `eos` (it did not end
    /// there). Returns the ids and whether the text was cut.
    pub fn encode_truncated(
        &self,
        text: &str,
        max_len: usize,
        eos: Option<u32>,
    ) -> Result<(Vec<u32>, bool), ModelError> {
        let mut ids = self.encode(text, true)?;
        ids.extend(eos);
        let cut = ids.len() > max_len;
        if cut {
            ids.truncate(max_len.saturating_sub(usize::from(self.closing_id.is_some())));
            ids.extend(self.closing_id);
        }
        Ok((ids, cut))
    }

    /// Encodes and right-pads to the longest input (at most `max_len`; longer inputs are cut as
    /// [`Self::encode_truncated`] does, and counted in `truncated`).
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<TokenBatch, ModelError> {
        let mut rows = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for t in texts {
            let (ids, cut) = self.encode_truncated(t, max_len, None)?;
            truncated += usize::from(cut);
            rows.push(ids);
        }
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let PaddedRows { ids, attention_mask, seq } = pad_rows(&rows, self.pad_id);
        Ok(TokenBatch {
            token_type_ids: vec![0; ids.len()],
            ids,
            attention_mask,
            batch: rows.len(),
            seq,
            truncated,
        })
    }
}

/// Token rows right-padded to one length, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedRows {
    pub ids: Vec<i64>,
    /// 1 = token, 0 = padding.
    pub attention_mask: Vec<i64>,
    /// The padded length: the longest row's, at least 1.
    pub seq: usize,
}

/// Right-pads token rows to the longest (at least 1).
pub fn pad_rows(rows: &[&[u32]], pad_id: u32) -> PaddedRows {
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(rows.len() * seq);
    let mut mask = Vec::with_capacity(rows.len() * seq);
    for r in rows {
        ids.extend(r.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad_id as i64, seq - r.len()));
        mask.extend(std::iter::repeat_n(1i64, r.len()));
        mask.extend(std::iter::repeat_n(0i64, seq - r.len()));
    }
    PaddedRows { ids, attention_mask: mask, seq }
}
