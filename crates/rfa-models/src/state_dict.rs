//! Host copies of a model's weights under their Hugging Face keys: what `save_pretrained` writes.

use std::path::Path;

use burn::nn::Embedding;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use lora_core::{LoraLinear, WeightLayout};

use crate::ModelError;
use crate::layer_norm::LayerNorm;

/// Host copies of a model's weights under their Hugging Face keys, for `save_pretrained`.
#[derive(Default)]
pub struct StateDict(pub std::collections::BTreeMap<String, lora_core::HostTensor>);

impl StateDict {
    pub fn tensor<B: Backend, const D: usize>(&mut self, key: &str, t: Tensor<B, D>) {
        self.0.insert(key.to_string(), lora_core::HostTensor::from_tensor(t));
    }

    /// `path.weight` in the checkpoint's layout (`[out, in]` for `nn.Linear`, `[in, out]` for
    /// `Conv1D`) and `path.bias`. An adapter that is not merged is refused: its update would
    /// silently be lost.
    pub fn linear<B: Backend>(
        &mut self,
        path: &str,
        lin: &LoraLinear<B>,
    ) -> Result<(), ModelError> {
        if lin.lora.is_some() && !lin.merged {
            return Err(ModelError::Input(format!(
                "{path} carries an unmerged LoRA adapter: merge it first (merge_and_unload) or save the adapter with save_adapter"
            )));
        }
        let w = lin.base.weight.val();
        match lin.layout {
            WeightLayout::Linear => self.tensor(&format!("{path}.weight"), w.transpose()),
            WeightLayout::Conv1D => self.tensor(&format!("{path}.weight"), w),
        }
        if let Some(b) = &lin.base.bias {
            self.tensor(&format!("{path}.bias"), b.val());
        }
        Ok(())
    }

    pub fn layer_norm<B: Backend>(&mut self, path: &str, ln: &LayerNorm<B>) {
        self.tensor(&format!("{path}.weight"), ln.gamma.val());
        self.tensor(&format!("{path}.bias"), ln.beta.val());
    }

    pub fn embedding<B: Backend>(&mut self, path: &str, e: &Embedding<B>) {
        self.tensor(&format!("{path}.weight"), e.weight.val());
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, each atomically.
    pub fn save(&self, dir: &Path, config: &serde_json::Value) -> Result<(), ModelError> {
        let werr = |e: lora_core::TensorFileError| ModelError::Tensors(e);
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        lora_core::tensors::write_safetensors(&dir.join("model.safetensors"), &self.0, Some(meta))
            .map_err(werr)?;
        let json =
            serde_json::to_string_pretty(config).map_err(|e| ModelError::Input(e.to_string()))?;
        lora_core::tensors::write_atomic(&dir.join("config.json"), json.as_bytes()).map_err(werr)
    }
}
