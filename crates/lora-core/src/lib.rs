//! LoRA adapters for burn models.
//!
//! - [`LoraLinear`]: a frozen linear layer plus an optional adapter `s · B A`;
//!   [`LoraLinear::split`] gives the pre-trained and the residual feature separately ([`Tap`]).
//! - [`LoraModel`]: a model that lists its linear layers by Hugging Face module path, so that
//!   adapters can be attached by pattern ([`attach_lora`]), merged, counted, and read or written
//!   in PEFT's format ([`peft`]).
//! - [`ForeachAdamW`]: AdamW over all adapter tensors at once (one flat update per step).
//!
//! Depends on burn and rfa-rng only; knows no model, data set or objective.

pub mod fault;
pub mod linear;
pub mod model;
pub mod optim;
pub mod optim_state;
pub mod peft;
pub mod tap;
pub mod tensors;

use std::path::PathBuf;

pub use linear::{LoraAdapter, LoraLinear, WeightLayout, to_dtype};
pub use model::{
    LoraConfig, LoraModel, ModuleNames, ParamCount, TargetModules, adapted_paths, attach_lora,
    count_params, merge, merge_and_unload, set_base_dtype, unfreeze, unmerge,
};
pub use optim::{ForeachAdamW, OptimError};
pub use optim_state::AdamWState;
pub use peft::{PeftConfig, load_adapter, save_adapter};
pub use tap::{Tap, Taps};
pub use tensors::{HostData, HostTensor, TensorFile, TensorFileError};

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: key `{key}`: {reason}")]
    BadKey { path: PathBuf, key: String, reason: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: the adapter targets module `{module}`, which this model does not have (its linear layers: {})", available.join(", "))]
    UnknownModule { path: PathBuf, module: String, available: Vec<String> },
    #[error("target_modules `{targets}` selects no linear layer (this model has: {})", available.join(", "))]
    NoTarget { targets: String, available: Vec<String> },
    #[error("{0}")]
    Config(String),
}
