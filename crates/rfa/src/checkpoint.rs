//! Training checkpoints: after each epoch the whole state of a training phase — model, AdamW's
//! moments, the epoch log and the files the caller adds (fingerprint, tokenizer) — is written
//! into a fresh folder and switched in whole, so that a kill at any point leaves either the
//! previous epoch's complete state or the new one, and a resumed training continues bit for bit.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use lora_core::{AdamWState, ForeachAdamW};
use rfa_models::FusedAutodiff;

use crate::engine_model::EngineModel;
use crate::staged_dir::StagedDir;
use crate::train::EpochLog;

/// The epoch log: one entry per completed epoch.
pub const TRAIN_STATE: &str = "train_state.json";
/// AdamW's moments and step count after the last completed epoch.
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";

/// Where and how a training saves its state after each epoch.
pub struct Checkpoints<'a> {
    /// The phase's folder (`original/`, `retrain/`).
    pub dir: &'a Path,
    /// Continue from the state in `dir`; false starts over (the old state stays until the first
    /// epoch's state replaces it).
    pub resume: bool,
    /// Writes the files every state of the folder carries besides the model, the optimizer and
    /// the log, into the folder it is given.
    pub extras: &'a dyn Fn(&Path) -> Result<()>,
}

/// A training state read back from its folder.
pub struct Resumed<M> {
    pub model: M,
    pub log: Vec<EpochLog>,
}

impl Checkpoints<'_> {
    /// The state to continue from, if resuming and `dir` holds one; the optimizer is restored.
    pub fn resume<B: FusedAutodiff, M: EngineModel<B> + AutodiffModule<B>>(
        &self,
        optimizer: &mut ForeachAdamW<B>,
        device: &B::Device,
    ) -> Result<Option<Resumed<M>>> {
        let state_path = self.dir.join(TRAIN_STATE);
        if !self.resume || !state_path.is_file() {
            return Ok(None);
        }
        let log: Vec<EpochLog> = serde_json::from_str(
            &std::fs::read_to_string(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?,
        )
        .with_context(|| format!("reading {}", state_path.display()))?;
        let model = lora_core::unfreeze(<M as EngineModel<B>>::load(self.dir, device)?);
        let optim_path = self.dir.join(OPTIMIZER_STATE);
        if optim_path.is_file() {
            let state = AdamWState::load(&optim_path)?;
            optimizer
                .restore(state)
                .with_context(|| format!("resuming from {}", optim_path.display()))?;
        } else if !log.is_empty() {
            // Folders written before the optimizer was kept: the moments restart.
            eprintln!(
                "warning: {} has no {OPTIMIZER_STATE}: resuming with fresh optimizer moments, so the \
                 result will differ from an uninterrupted training",
                self.dir.display()
            );
        }
        Ok(Some(Resumed { model, log }))
    }

    /// Writes the state after an epoch into a fresh folder and switches it in whole.
    pub fn save<B: FusedAutodiff, M: EngineModel<B>>(
        &self,
        model: &M,
        optimizer: &ForeachAdamW<B>,
        log: &[EpochLog],
    ) -> Result<()> {
        let staged = StagedDir::new(self.dir)?;
        let out = staged.path();
        (self.extras)(out)?;
        model.save(out)?;
        optimizer.state().save(&out.join(OPTIMIZER_STATE))?;
        lora_core::tensors::write_atomic(
            &out.join(TRAIN_STATE),
            serde_json::to_string_pretty(log)?.as_bytes(),
        )?;
        staged.commit()
    }
}
