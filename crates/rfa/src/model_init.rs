//! Which model a run trains, and how it starts: a preset from scratch, a `config.json` from
//! scratch, or a Hugging Face checkpoint (with a fresh head for classifiers).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rfa_models::tokenizer::TextTokenizer;
use rfa_models::{
    Architecture, BertForSequenceClassification, FusedOps, Gpt2Config, Gpt2LmHeadModel, VitConfig,
    VitForImageClassification,
};

use crate::config::ModelConfig;

pub type Vit<B> = VitForImageClassification<B>;
pub type Bert<B> = BertForSequenceClassification<B>;
pub type Gpt2<B> = Gpt2LmHeadModel<B>;

#[derive(serde::Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

/// The architecture the model section names.
pub fn architecture(model: &ModelConfig) -> Result<Architecture> {
    if let Some(p) = &model.path {
        return Ok(Architecture::detect(p)?);
    }
    if let Some(c) = &model.config {
        let t: ModelType = rfa_models::config::read_config(c)?;
        return match t.model_type.as_deref() {
            Some("vit") => Ok(Architecture::Vit),
            Some("gpt2") => Ok(Architecture::Gpt2),
            Some("bert") => bail!(
                "{}: BERT is fine-tuned from a pre-trained checkpoint: set model.path",
                c.display()
            ),
            other => bail!("{}: model_type {other:?} is not one of vit, gpt2", c.display()),
        };
    }
    match model.preset.as_str() {
        p if p.starts_with("vit-") => Ok(Architecture::Vit),
        p if p.starts_with("gpt2-") => Ok(Architecture::Gpt2),
        other => bail!(
            "unknown model preset `{other}` (vit-tiny, vit-small, gpt2-tiny, gpt2-small, or set model.path)"
        ),
    }
}

/// A ViT preset, sized for the data's classes and channels.
pub fn vit_preset(model: &ModelConfig, classes: &[String], channels: usize) -> Result<VitConfig> {
    Ok(match model.preset.as_str() {
        "vit-tiny" => VitConfig::new(28, 7, channels, 64, 2, 4, 128, classes),
        "vit-small" => VitConfig::new(32, 4, channels, 128, 4, 4, 256, classes),
        other => bail!("unknown ViT preset `{other}` (vit-tiny, vit-small)"),
    })
}

/// A GPT-2 preset for a tokenizer of `vocab` tokens.
pub fn gpt2_preset(model: &ModelConfig, vocab: usize, eos: Option<u32>) -> Result<Gpt2Config> {
    let mut c = match model.preset.as_str() {
        "gpt2-tiny" => Gpt2Config::new(vocab, 512, 128, 2, 4),
        "gpt2-small" => Gpt2Config::new(vocab, 1024, 768, 12, 12),
        other => bail!("unknown GPT-2 preset `{other}` (gpt2-tiny, gpt2-small)"),
    };
    c.bos_token_id = eos;
    c.eos_token_id = eos;
    Ok(c)
}

/// The ViT to train as the original (and as the retrained gold standard).
pub fn initial_vit<B: FusedOps>(
    model: &ModelConfig,
    classes: &[String],
    channels: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Vit<B>> {
    Ok(match (&model.path, &model.config) {
        (Some(p), _) => {
            let c: VitConfig = rfa_models::config::read_config(&p.join("config.json"))?;
            // Grey images are repeated over a colour model's channels; nothing makes colour
            // images grey.
            if c.num_channels != channels && !(channels == 1 && c.num_channels == 3) {
                bail!(
                    "model.path = {}: the checkpoint takes {}-channel images (num_channels), the data set has {channels}",
                    p.display(),
                    c.num_channels
                );
            }
            lora_core::unfreeze(Vit::load_with_new_head(p, classes.len(), seed, device)?)
        }
        (None, Some(c)) => {
            let mut cfg: VitConfig = rfa_models::config::read_config(c)?;
            cfg.id2label =
                Some(classes.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone())).collect());
            cfg.num_labels = None;
            Vit::init(&cfg, seed, device)?
        }
        (None, None) => Vit::init(&vit_preset(model, classes, channels.max(1))?, seed, device)?,
    })
}

/// A pre-trained BERT with a fresh classification head.
pub fn initial_bert<B: FusedOps>(
    model: &ModelConfig,
    classes: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Bert<B>> {
    let p = model.path.as_ref().context("BERT needs model.path: a pre-trained checkpoint")?;
    Ok(lora_core::unfreeze(Bert::load_with_new_head(p, classes, seed, device)?))
}

/// The language model to train: a checkpoint to continue, a `config.json` or a preset.
pub fn initial_gpt2<B: FusedOps>(
    model: &ModelConfig,
    tok: &TextTokenizer,
    seed: u64,
    device: &B::Device,
) -> Result<Gpt2<B>> {
    let eos = eos_id(tok);
    let m = match (&model.path, &model.config) {
        (Some(p), _) => lora_core::unfreeze(Gpt2::load(p, device)?),
        (None, Some(c)) => Gpt2::init(&rfa_models::config::read_config(c)?, seed, device)?,
        (None, None) => Gpt2::init(&gpt2_preset(model, tok.vocab_size(), eos)?, seed, device)?,
    };
    tok.check_fits(m.vocab_size())?;
    Ok(m)
}

/// GPT-2's end-of-text token, where the tokenizer has one.
pub fn eos_id(tok: &TextTokenizer) -> Option<u32> {
    tok.inner.token_to_id("<|endoftext|>")
}

/// The tokenizer of a text run: `model.tokenizer`, else the checkpoint's own. Where both exist
/// they must be the same vocabulary: a backbone reads its own token ids.
pub fn tokenizer(model: &ModelConfig) -> Result<(TextTokenizer, PathBuf)> {
    let dir = model.tokenizer.clone().or_else(|| model.path.clone()).context(
        "text needs a tokenizer: set model.tokenizer (or model.path to a checkpoint that has one)",
    )?;
    let tok = TextTokenizer::from_dir(&dir)?;
    if let (Some(t), Some(p)) = (&model.tokenizer, &model.path)
        && t != p
        && let Ok(own) = TextTokenizer::from_dir(p)
        && own.inner.get_vocab(true) != tok.inner.get_vocab(true)
    {
        bail!(
            "model.tokenizer = {} is not the tokenizer of model.path = {} ({} and {} tokens, or other ids): the backbone was trained on its own; drop model.tokenizer or name the same one",
            t.display(),
            p.display(),
            tok.vocab_size(),
            own.vocab_size()
        );
    }
    Ok((tok, dir))
}

/// Copies the tokenizer's files next to a saved model, so that the folder is a complete
/// Hugging Face checkpoint (OpenAI's `encoder.json` / `vocab.bpe` under Hugging Face's names).
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    let names = [
        ("tokenizer.json", "tokenizer.json"),
        ("tokenizer_config.json", "tokenizer_config.json"),
        ("special_tokens_map.json", "special_tokens_map.json"),
        ("vocab.txt", "vocab.txt"),
        ("vocab.json", "vocab.json"),
        ("merges.txt", "merges.txt"),
        ("encoder.json", "vocab.json"),
        ("vocab.bpe", "merges.txt"),
    ];
    for (src, dst) in names {
        let s = from.join(src);
        if s.is_file() && from != to {
            std::fs::copy(&s, to.join(dst))
                .with_context(|| format!("copying {} to {}", s.display(), to.display()))?;
        }
    }
    Ok(())
}
