//! `rfa export`: the unlearning result's adapter (PEFT) and merged model (Hugging Face), copied
//! out of the run folder once its phase record vouches for them.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::Run;
use crate::phase_record::verify_phase;
use crate::run_lock::RunLock;
use crate::staged_dir::StagedDir;

impl Run {
    /// Copies `adapter/` and `merged/` of the configured method's result into `out`. Each is
    /// switched in whole, and only from a complete result whose files are the ones its
    /// `phase.json` lists.
    pub fn export(&self, out: &Path) -> Result<()> {
        let _lock = RunLock::shared(&self.dir)?;
        let result = self.dir.join(self.cfg.unlearn.out_dir());
        if !result.is_dir() {
            bail!("{} holds no unlearning result (run `rfa unlearn` first)", result.display());
        }
        verify_phase(&result)
            .with_context(|| format!("{} holds no complete unlearning result", result.display()))?;
        let parts: Vec<&str> =
            ["adapter", "merged"].into_iter().filter(|p| result.join(p).is_dir()).collect();
        if parts.is_empty() {
            bail!("{} holds neither adapter/ nor merged/", result.display());
        }
        for part in parts {
            let staged = StagedDir::new(&out.join(part))?;
            let from = result.join(part);
            for e in
                std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?
            {
                let e = e.with_context(|| format!("reading {}", from.display()))?;
                let to = staged.path().join(e.file_name());
                lora_core::fault::write_point("copying", &to);
                std::fs::copy(e.path(), &to).with_context(|| {
                    format!("copying {} to {}", e.path().display(), to.display())
                })?;
            }
            staged.commit()?;
        }
        Ok(())
    }
}
