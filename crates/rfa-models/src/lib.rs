//! ViT, BERT and GPT-2 in burn, read from Hugging Face checkpoints, with every linear layer a
//! [`lora_core::LoraLinear`] so that adapters can be attached, tapped and merged.
//!
//! Every forward pass returns the logits, Hugging Face's `hidden_states`, the penultimate
//! feature and the taps `(p_l, r_l)` of the adapted layers. Taps come in forward order, which is
//! the order of [`lora_core::LoraModel::linears`] (per block: attention projections, attention
//! output, MLP in, MLP out; then pooler and classifier), restricted to adapted layers; their
//! paths are [`lora_core::adapted_paths`].
//!
//! Depends on burn, lora-core, rfa-fused (the fused operations) and rfa-rng; not on any
//! objective, data set or evaluation code, and has no command-line concerns (devices are
//! `rfa::DeviceSpec`).

mod activations;
mod attention;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod gpt2;
mod layer_norm;
pub mod memory;
mod outputs;
pub mod parity;
mod precision;
pub mod state_dict;
mod taps;
pub mod tokenizer;
pub mod vit;

use std::path::{Path, PathBuf};

pub use activations::Activation;
pub use attention::SelfAttention;
pub use bert::{BertConfig, BertForSequenceClassification, BertModel};
pub use checkpoint::Checkpoint;
pub use gpt2::{Gpt2Config, Gpt2LmHeadModel, causal_lm_loss};
pub use layer_norm::LayerNorm;
pub use outputs::{CausalLmOutput, ClassifierOutput};
pub use rfa_fused::{FusedAutodiff, FusedOps};
pub use state_dict::StateDict;
pub use tokenizer::TextTokenizer;
pub use vit::{VitConfig, VitForImageClassification};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: unknown model_type `{model_type}` (supported: gpt2, bert, vit)")]
    UnknownModelType { path: PathBuf, model_type: String },
    #[error(transparent)]
    Tensors(#[from] lora_core::TensorFileError),
    #[error("{path}: unexpected tensors that belong to no module of this model: {}", keys.join(", "))]
    UnexpectedTensors { path: PathBuf, keys: Vec<String> },
    #[error(transparent)]
    Lora(#[from] lora_core::LoraError),
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{0}")]
    Input(String),
}

/// The architectures this crate knows, from `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Gpt2,
    Bert,
    Vit,
}

#[derive(serde::Deserialize)]
pub(crate) struct ModelTypeOnly {
    model_type: Option<String>,
}

impl Architecture {
    pub fn detect(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        Self::of_config(config::read_config(&path)?, &path)
    }

    pub(crate) fn of_config(c: ModelTypeOnly, path: &Path) -> Result<Self, ModelError> {
        let path = path.to_path_buf();
        match c.model_type.as_deref() {
            Some("gpt2") => Ok(Self::Gpt2),
            Some("bert") => Ok(Self::Bert),
            Some("vit") => Ok(Self::Vit),
            other => Err(ModelError::UnknownModelType {
                path,
                model_type: other.unwrap_or("<missing>").to_string(),
            }),
        }
    }
}
