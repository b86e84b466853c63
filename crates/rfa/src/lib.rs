//! rfa: machine unlearning on pre-trained transformers by Residual Feature Alignment.
//!
//! The library behind the `rfa` command. A run lives in `runs/<name>/`:
//!
//! ```text
//! config.toml                   the resolved configuration
//! pretrained/                   `rfa pretrain`: a backbone (Hugging Face checkpoint, pretrain.json)
//! original/                     M0, trained on D (Hugging Face checkpoint, optimizer state,
//!                               train_state.json, fingerprint.json, phase.json)
//! retrain/                      M*, trained on Dr only (the gold standard)
//! <method>[-s<seed>]/adapter/   an unlearning adapter (rfa/, salun-s2/, …), PEFT format
//! <method>[-s<seed>]/merged/    M0 with the adapter merged, Hugging Face checkpoint
//! <method>[-s<seed>]/receipt.json  the request's receipt (receipt.salt, receipt.sig beside it)
//! <method>[-s<seed>]-reverted/  `rfa revert`: the reversal's receipt, chained to the request's
//! report/report.json, report.md metrics of M0, M*, every unlearning result
//! report/comparison.md, plots/  the methods side by side; per-class accuracy, norms, losses
//! ```
//!
//! Every folder above is written beside the old one and switched in whole by a rename, and each
//! phase's `phase.json` holds the SHA-256 of every file of its folder.
//!
//! The only crate that ties models, data, objectives and metrics together, and the only one
//! with opinions about run folders and devices; libraries below it must not depend on it.

pub mod alloc;
pub mod balance;
pub mod baselines;
pub mod chain;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod config_check;
pub mod confusable;
pub mod data_parallel;
pub mod device;
pub mod engine;
pub mod engine_model;
mod evaluation;
mod export;
pub mod fingerprint;
pub mod forget_selection;
pub mod head_check;
pub mod interrupt;
pub mod kernel_cache;
mod lm_evaluation;
pub mod measure;
pub mod merkle;
pub mod method;
pub mod model_init;
mod phase_record;
mod phases;
pub mod plots;
pub mod pretrain;
pub mod probe;
pub mod receipt;
pub mod report;
mod rfa_steps;
pub mod role;
mod run;
pub mod run_lock;
pub mod scenario;
pub mod signature;
mod staged_dir;
mod stats_sample;
pub mod task;
mod token_targets;
pub mod train;

pub use device::{DeviceList, DeviceSpec};
pub use evaluation::REPORT_DIR;
pub use method::Method;
pub use phase_record::{PHASE_RECORD, PhaseRecord};
pub use role::Role;
pub use run::{Data, Run, SetSizes};
pub use run_lock::RunLock;

/// The inference backend of an autodiff backend: evaluation runs on it.
type Inner<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
