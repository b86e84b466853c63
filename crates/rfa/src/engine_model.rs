//! What the engine needs of a model and of its data, so that one training loop, one RFA loop
//! and one evaluation serve ViT on images, BERT on text classification and GPT-2 as a language
//! model.

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use lora_core::LoraModel;
use lora_core::{Tap, Taps};
use rfa_data::text::TextDataset;
use rfa_data::{ImageDataset, Preprocess};
use rfa_models::tokenizer::TextTokenizer;
use rfa_models::{
    BertForSequenceClassification, FusedOps, Gpt2LmHeadModel, VitForImageClassification,
};

/// A labelled data set the engine can index.
pub trait Samples {
    fn len(&self) -> usize;
    fn labels(&self) -> &[usize];
    fn class_names(&self) -> &[String];
    fn source(&self) -> &str;
    /// What sample `i` is made of (pixels, token ids), for the digests of fingerprints.
    fn sample_bytes(&self, i: usize) -> Vec<u8>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Samples for ImageDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn class_names(&self) -> &[String] {
        &self.class_names
    }
    fn source(&self) -> &str {
        &self.source
    }
    fn sample_bytes(&self, i: usize) -> Vec<u8> {
        let size = self.channels * self.height * self.width;
        self.pixels[i * size..(i + 1) * size].to_vec()
    }
}

/// Texts tokenised once with the model's tokenizer; batches are padded to their longest row.
#[derive(Debug, Clone)]
pub struct TokenizedText {
    pub text: TextDataset,
    pub tokens: Vec<Vec<u32>>,
    pub pad_id: u32,
    pub max_len: usize,
    /// Texts longer than `max_len` tokens, cut to it.
    pub truncated: usize,
}

impl Samples for TokenizedText {
    fn len(&self) -> usize {
        self.tokens.len()
    }
    fn labels(&self) -> &[usize] {
        &self.text.labels
    }
    fn class_names(&self) -> &[String] {
        &self.text.class_names
    }
    fn source(&self) -> &str {
        &self.text.source
    }
    fn sample_bytes(&self, i: usize) -> Vec<u8> {
        self.tokens[i].iter().flat_map(|t| t.to_le_bytes()).collect()
    }
}

impl TokenizedText {
    /// Tokenises every text with special tokens (BERT's `[CLS] … [SEP]`), then `eos` when given
    /// (GPT-2's `<|endoftext|>`, so that a language model learns where a text ends); longer texts
    /// are cut as [`TextTokenizer::encode_truncated`] does.
    pub fn new(
        text: TextDataset,
        tok: &TextTokenizer,
        max_len: usize,
        eos: Option<u32>,
    ) -> Result<Self> {
        if max_len < 2 {
            bail!("data.max_len must be at least 2, not {max_len}");
        }
        let mut tokens = Vec::with_capacity(text.len());
        let mut truncated = 0;
        for t in &text.texts {
            let (mut ids, cut) = tok.encode_truncated(t, max_len, eos)?;
            truncated += usize::from(cut);
            if ids.is_empty() {
                ids.push(tok.pad_id);
            }
            tokens.push(ids);
        }
        Ok(Self { text, tokens, pad_id: tok.pad_id, max_len, truncated })
    }

    /// Right-padded `ids` and `attention_mask` of the samples `idx`.
    pub fn batch<B: Backend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
        let rows: Vec<&[u32]> = idx.iter().map(|&i| self.tokens[i].as_slice()).collect();
        let rfa_models::tokenizer::PaddedRows { ids, attention_mask: mask, seq } =
            rfa_models::tokenizer::pad_rows(&rows, self.pad_id);
        let shape = [idx.len(), seq];
        (
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(mask, shape), device),
        )
    }
}

/// A model's input for one batch.
#[derive(Debug, Clone)]
pub enum Input<B: Backend> {
    Pixels(Tensor<B, 4>),
    /// `ids` and `mask` (1 = token, 0 = padding), `[batch, seq]`.
    Tokens {
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    },
}

/// One batch: the input and the samples' labels.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    pub input: Input<B>,
    pub labels: Vec<usize>,
    /// Token batches: every real next-token prediction (host side).
    pub next: Option<NextTokens>,
}

/// The positions of a `[batch, seq]` token batch that predict a real next token: row `row[i]`,
/// flat index `flat[i]` = row · seq + t, predicting `target[i]` = the id at t + 1. Padding
/// predicts nothing, so a language model's head only runs here.
#[derive(Debug, Clone, Default)]
pub struct NextTokens {
    pub row: Vec<usize>,
    pub flat: Vec<i64>,
    pub target: Vec<i64>,
}

impl NextTokens {
    fn new(rows: &[&[u32]], seq: usize) -> Self {
        let mut n = Self::default();
        for (r, toks) in rows.iter().enumerate() {
            for t in 0..toks.len().saturating_sub(1) {
                n.row.push(r);
                n.flat.push((r * seq + t) as i64);
                n.target.push(toks[t + 1] as i64);
            }
        }
        n
    }
}

impl<B: Backend> Batch<B> {
    /// The padding mask as floats, `[batch, seq]` (None for images: every patch is real).
    pub fn token_mask(&self) -> Option<Tensor<B, 2>> {
        match &self.input {
            Input::Pixels(_) => None,
            Input::Tokens { mask, .. } => Some(mask.clone().float()),
        }
    }
}

/// What a model produces for a batch.
#[derive(Debug, Clone)]
pub enum Logits<B: Backend> {
    /// `[batch, classes]`
    Classes(Tensor<B, 2>),
    /// A language model's last hidden state `[batch, seq, d]` and its head's weight
    /// `[vocab, d]`: the logits are made only where a real next token is predicted.
    Tokens { hidden: Tensor<B, 3>, head: Tensor<B, 2> },
}

/// Log-softmax over the vocabulary at each real next-token position of rows `rows`
/// (`[positions, vocab]`), the target ids (`[positions, 1]`) and each position's row. Runs the
/// LM head on those positions only (no `[batch, seq, vocab]` tensor). None when the rows
/// predict no token.
pub fn next_token_log_softmax<B: Backend>(
    hidden: &Tensor<B, 3>,
    head: &Tensor<B, 2>,
    next: &NextTokens,
    rows: Range<usize>,
) -> Option<(Tensor<B, 2>, Tensor<B, 2, Int>, Vec<usize>)> {
    let [b, t, d] = hidden.dims();
    let keep: Vec<usize> = (0..next.row.len()).filter(|&i| rows.contains(&next.row[i])).collect();
    if keep.is_empty() {
        return None;
    }
    let device = hidden.device();
    let n = keep.len();
    let flat = Tensor::<B, 1, Int>::from_data(
        TensorData::new(keep.iter().map(|&i| next.flat[i]).collect::<Vec<_>>(), [n]),
        &device,
    );
    let target = Tensor::<B, 2, Int>::from_data(
        TensorData::new(keep.iter().map(|&i| next.target[i]).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    let h = hidden.clone().reshape([b * t, d]).select(0, flat);
    let lp = log_softmax(h.matmul(head.clone().transpose()), 1);
    Some((lp, target, keep.iter().map(|&i| next.row[i]).collect()))
}

/// The log-probability of each real next token of rows `rows`, `[positions]`, and the row of
/// each position.
pub fn next_token_logprobs<B: Backend>(
    hidden: &Tensor<B, 3>,
    head: &Tensor<B, 2>,
    next: &NextTokens,
    rows: Range<usize>,
) -> (Option<Tensor<B, 1>>, Vec<usize>) {
    match next_token_log_softmax(hidden, head, next, rows) {
        Some((lp, target, row)) => {
            let n = row.len();
            (Some(lp.gather(1, target).reshape([n])), row)
        }
        None => (None, Vec::new()),
    }
}

/// One forward pass: logits when asked for, a feature vector per sample (the classifier's
/// input; for a language model the mean of the last hidden state over real tokens) and the
/// adapted layers' taps.
#[derive(Debug, Clone)]
pub struct Pass<B: Backend> {
    pub logits: Option<Logits<B>>,
    pub features: Tensor<B, 2>,
    pub taps: Vec<Tap<B>>,
}

/// The task's loss (cross-entropy on the class, or the causal-LM loss) on rows `rows` of a pass.
pub fn task_loss<B: Backend>(
    logits: &Logits<B>,
    batch: &Batch<B>,
    rows: Range<usize>,
) -> Tensor<B, 1> {
    task_loss_terms(logits, batch, rows).0
}

/// [`task_loss`] and the number of terms it averages (rows of a classifier, real next tokens of a
/// language model): what a share of a batch weighs in the batch's mean (data-parallel training).
pub fn task_loss_terms<B: Backend>(
    logits: &Logits<B>,
    batch: &Batch<B>,
    rows: Range<usize>,
) -> (Tensor<B, 1>, usize) {
    let n = rows.end - rows.start;
    match logits {
        Logits::Classes(l) => {
            let y: Vec<i64> = batch.labels[rows.clone()].iter().map(|&c| c as i64).collect();
            let device = l.device();
            let y = Tensor::from_data(TensorData::new(y, [n]), &device);
            let loss = CrossEntropyLossConfig::new()
                .init(&device)
                .forward(l.clone().narrow(0, rows.start, n), y);
            (loss, n)
        }
        // Mean over the rows' real next tokens, as Hugging Face's causal-LM loss.
        Logits::Tokens { hidden, head } => {
            match next_token_logprobs(hidden, head, batch.next.as_ref().expect("token batch"), rows)
            {
                (Some(lp), positions) => (lp.mean().neg(), positions.len()),
                (None, _) => (hidden.clone().sum().mul_scalar(0.0), 0),
            }
        }
    }
}

/// A model the engine can train, unlearn and evaluate.
pub trait EngineModel<B: FusedOps>: Module<B> + LoraModel<B> + Sized {
    /// Shared by the replicas of a data-parallel training.
    type Data: Samples + Sync;
    /// `image classifier`, `text classifier` or `language model`, for messages.
    const KIND: &'static str;

    fn batch(&self, data: &Self::Data, idx: &[usize], device: &B::Device) -> Result<Batch<B>>;
    /// With `logits = false` a model may skip its output layer (GPT-2's LM head, the largest
    /// matmul) when only features and taps are needed.
    fn pass(&self, input: &Input<B>, logits: bool) -> Pass<B>;
    /// Only the taps of the adapted layers: the pass stops after the last of them (what an
    /// objective made of taps alone needs — RFA's with no task term).
    fn taps(&self, input: &Input<B>) -> Taps<B>;
    fn load(dir: &Path, device: &B::Device) -> Result<Self>;
    fn save(&self, dir: &Path) -> Result<()>;
    /// Classes of a classifier's head; None for a language model.
    fn num_labels(&self) -> Option<usize>;
    /// A classifier's head applied to features as [`Pass::features`] holds them (`[n, d]` →
    /// `[n, classes]`); None for a language model.
    fn classify(&self, features: Tensor<B, 2>) -> Option<Tensor<B, 2>>;
}

impl<B: FusedOps> EngineModel<B> for VitForImageClassification<B> {
    type Data = ImageDataset;
    const KIND: &'static str = "image classifier";

    fn batch(&self, data: &ImageDataset, idx: &[usize], device: &B::Device) -> Result<Batch<B>> {
        let c = &self.config;
        let (mean, std) = self.normalisation();
        // Resize to the model's image size, its channel count and the checkpoint's
        // normalisation (`preprocessor_config.json`, else ViT's 0.5 / 0.5).
        let pre = Preprocess { size: c.image_size, channels: c.num_channels, mean, std };
        let x = pre.apply(data, idx)?;
        let t = Tensor::from_data(
            TensorData::new(x, [idx.len(), pre.channels, pre.size, pre.size]),
            device,
        );
        Ok(Batch {
            input: Input::Pixels(t),
            labels: idx.iter().map(|&i| data.labels[i]).collect(),
            next: None,
        })
    }

    fn pass(&self, input: &Input<B>, _logits: bool) -> Pass<B> {
        let Input::Pixels(x) = input else { panic!("ViT takes pixels") };
        let out = self.forward(x.clone());
        Pass { logits: Some(Logits::Classes(out.logits)), features: out.features, taps: out.taps }
    }

    fn taps(&self, input: &Input<B>) -> Taps<B> {
        let Input::Pixels(x) = input else { panic!("ViT takes pixels") };
        self.forward_taps(x.clone())
    }

    fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Ok(Self::load(dir, device)?)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        Ok(self.save_pretrained(dir)?)
    }

    fn num_labels(&self) -> Option<usize> {
        Some(VitForImageClassification::num_labels(self))
    }

    fn classify(&self, features: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        Some(self.classifier.forward(features))
    }
}

fn token_batch<B: Backend>(
    data: &TokenizedText,
    idx: &[usize],
    vocab: usize,
    device: &B::Device,
) -> Result<Batch<B>> {
    if let Some((i, &t)) = idx
        .iter()
        .flat_map(|&i| data.tokens[i].iter().map(move |t| (i, t)))
        .find(|&(_, &t)| t as usize >= vocab)
    {
        bail!(
            "sample {i} has token id {t}, beyond the model's vocabulary of {vocab}: the tokenizer does not belong to this model"
        );
    }
    let (ids, mask) = data.batch(idx, device);
    let rows: Vec<&[u32]> = idx.iter().map(|&i| data.tokens[i].as_slice()).collect();
    let next = NextTokens::new(&rows, ids.dims()[1]);
    Ok(Batch {
        input: Input::Tokens { ids, mask },
        labels: idx.iter().map(|&i| data.text.labels[i]).collect(),
        next: Some(next),
    })
}

impl<B: FusedOps> EngineModel<B> for BertForSequenceClassification<B> {
    type Data = TokenizedText;
    const KIND: &'static str = "text classifier";

    fn batch(&self, data: &TokenizedText, idx: &[usize], device: &B::Device) -> Result<Batch<B>> {
        if data.max_len > self.bert.max_positions() {
            bail!(
                "data.max_len = {} exceeds the model's {} positions",
                data.max_len,
                self.bert.max_positions()
            );
        }
        token_batch(data, idx, self.bert.vocab_size(), device)
    }

    fn pass(&self, input: &Input<B>, _logits: bool) -> Pass<B> {
        let Input::Tokens { ids, mask } = input else { panic!("BERT takes tokens") };
        let out = self.forward(ids.clone(), Some(mask.clone()), None);
        Pass { logits: Some(Logits::Classes(out.logits)), features: out.features, taps: out.taps }
    }

    fn taps(&self, input: &Input<B>) -> Taps<B> {
        let Input::Tokens { ids, mask } = input else { panic!("BERT takes tokens") };
        self.forward_taps(ids.clone(), Some(mask.clone()), None)
    }

    fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Ok(Self::load(dir, device)?)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        Ok(self.save_pretrained(dir)?)
    }

    fn num_labels(&self) -> Option<usize> {
        Some(BertForSequenceClassification::num_labels(self))
    }

    fn classify(&self, features: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        Some(self.classifier.forward(features))
    }
}

impl<B: FusedOps> EngineModel<B> for Gpt2LmHeadModel<B> {
    type Data = TokenizedText;
    const KIND: &'static str = "language model";

    fn batch(&self, data: &TokenizedText, idx: &[usize], device: &B::Device) -> Result<Batch<B>> {
        if data.max_len > self.config.n_positions {
            bail!(
                "data.max_len = {} exceeds the model's n_positions = {}",
                data.max_len,
                self.config.n_positions
            );
        }
        token_batch(data, idx, self.vocab_size(), device)
    }

    fn pass(&self, input: &Input<B>, logits: bool) -> Pass<B> {
        let Input::Tokens { ids, mask } = input else { panic!("GPT-2 takes tokens") };
        let (mut hs, taps) = self.forward_hidden(ids.clone(), Some(mask.clone()));
        let hidden = hs.pop().expect("hidden states");
        // The head is tied to the token embedding.
        let logits = logits.then(|| Logits::Tokens {
            hidden: hidden.clone(),
            head: self.transformer.wte.weight.val(),
        });
        let [b, t, d] = hidden.dims();
        let m = mask.clone().float().reshape([b, t, 1]);
        let features =
            (hidden * m.clone()).sum_dim(1).reshape([b, d]) / m.sum_dim(1).reshape([b, 1]);
        Pass { logits, features, taps }
    }

    fn taps(&self, input: &Input<B>) -> Taps<B> {
        let Input::Tokens { ids, mask } = input else { panic!("GPT-2 takes tokens") };
        self.forward_taps(ids.clone(), Some(mask.clone()))
    }

    fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Ok(Self::load(dir, device)?)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        Ok(self.save_pretrained(dir)?)
    }

    fn num_labels(&self) -> Option<usize> {
        None
    }

    fn classify(&self, _features: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }
}
