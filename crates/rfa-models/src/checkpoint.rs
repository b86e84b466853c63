//! Reading a Hugging Face checkpoint into model modules, or drawing fresh weights in its place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use lora_core::{LoraLinear, TensorFile, WeightLayout};
use rfa_rng::SplitMix64;

use crate::ModelError;
use crate::layer_norm::LayerNorm;

/// A checkpoint being turned into a model: tensors are taken out by module path, so that the
/// keys left at the end are the unexpected ones.
///
/// Model paths are those of the full Hugging Face class (`transformer.h.0…` for
/// `GPT2LMHeadModel`); `base_prefix` (`transformer.`) is dropped when the checkpoint was saved
/// from the bare base model and its keys lack it.
pub struct Checkpoint<B: Backend> {
    pub file: TensorFile,
    base_prefix: String,
    strip_base: bool,
    device: B::Device,
    /// Set for [`Checkpoint::random`]: every requested tensor is drawn instead of read.
    random: Option<Normal>,
}

impl<B: Backend> Checkpoint<B> {
    pub fn open(dir: &Path, base_prefix: &str, device: &B::Device) -> Result<Self, ModelError> {
        let path = weights_path(dir)?;
        let file = TensorFile::open(&path)?;
        let strip_base =
            !base_prefix.is_empty() && !file.tensors.keys().any(|k| k.starts_with(base_prefix));
        Ok(Self {
            file,
            base_prefix: base_prefix.to_string(),
            strip_base,
            device: device.clone(),
            random: None,
        })
    }

    /// A source of freshly initialised weights, as Hugging Face initialises them: weights and
    /// embeddings N(0, std) (`initializer_range`, 0.02), biases 0, LayerNorm weights 1. Seeded
    /// on the host, so a seed gives the same model on every backend.
    pub fn random(std: f64, seed: u64, device: &B::Device) -> Self {
        let file = TensorFile {
            path: PathBuf::from("<random init>"),
            tensors: Default::default(),
            metadata: Default::default(),
        };
        Self {
            file,
            base_prefix: String::new(),
            strip_base: false,
            device: device.clone(),
            random: Some(Normal { rng: SplitMix64::new(seed), std }),
        }
    }

    /// Whether the checkpoint's keys carry the base model's prefix.
    pub fn has_base_prefix(&self) -> bool {
        !self.strip_base
    }

    pub fn key(&self, path: &str) -> String {
        match (self.strip_base, path.strip_prefix(&self.base_prefix)) {
            (true, Some(rest)) => rest.to_string(),
            _ => path.to_string(),
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.random.is_some() || self.file.contains(&self.key(path))
    }

    pub fn tensor<const D: usize>(
        &mut self,
        path: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, ModelError> {
        if let Some(rng) = &mut self.random {
            let n: usize = shape.iter().product();
            let leaf = path.rsplit('.').nth(1).unwrap_or("").to_ascii_lowercase();
            let v: Vec<f32> = if path.ends_with(".bias") {
                vec![0.0; n]
            } else if path.ends_with(".weight")
                && (leaf.contains("layernorm") || leaf.starts_with("ln_"))
            {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.sample()).collect()
            };
            return Ok(Tensor::from_data(TensorData::new(v, shape), &self.device));
        }
        let key = self.key(path);
        Ok(self.file.take(&key, &shape)?.to_tensor(&self.device))
    }

    pub fn frozen<const D: usize>(
        &mut self,
        path: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<B, D>>, ModelError> {
        Ok(Param::from_tensor(self.tensor(path, shape)?).set_require_grad(false))
    }

    /// A linear layer `path.weight` / `path.bias`. `torch.nn.Linear` stores `[out, in]`;
    /// GPT-2's `Conv1D` already stores `[in, out]`, burn's layout, and is not transposed.
    pub fn linear(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        layout: WeightLayout,
    ) -> Result<LoraLinear<B>, ModelError> {
        let w = match layout {
            WeightLayout::Linear => {
                self.tensor(&format!("{path}.weight"), [d_out, d_in])?.transpose()
            }
            WeightLayout::Conv1D => self.tensor(&format!("{path}.weight"), [d_in, d_out])?,
        };
        let b = if bias { Some(self.tensor(&format!("{path}.bias"), [d_out])?) } else { None };
        Ok(LoraLinear::from_weights(w, b, layout))
    }

    pub fn layer_norm(
        &mut self,
        path: &str,
        d: usize,
        eps: f64,
    ) -> Result<LayerNorm<B>, ModelError> {
        Ok(LayerNorm {
            gamma: self.frozen(&format!("{path}.weight"), [d])?,
            beta: self.frozen(&format!("{path}.bias"), [d])?,
            epsilon: eps,
        })
    }

    pub fn embedding(
        &mut self,
        path: &str,
        n: usize,
        d: usize,
    ) -> Result<Embedding<B>, ModelError> {
        let mut emb = EmbeddingConfig::new(n, d).init(&self.device);
        emb.weight = self.frozen(&format!("{path}.weight"), [n, d])?;
        Ok(emb)
    }

    /// Drops keys that are buffers or belong to heads this class does not have.
    pub fn ignore(&mut self, pred: impl Fn(&str) -> bool) {
        self.file.tensors.retain(|k, _| !pred(k));
    }

    /// Fails if any tensor was not used.
    pub fn finish(self) -> Result<(), ModelError> {
        if self.file.tensors.is_empty() {
            return Ok(());
        }
        let keys: BTreeSet<String> = self.file.tensors.keys().cloned().collect();
        Err(ModelError::UnexpectedTensors {
            path: self.file.path,
            keys: keys.into_iter().collect(),
        })
    }
}

/// A classifier head to put on a pre-trained encoder instead of reading one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewHead {
    pub num_labels: usize,
    /// Seeds the head's weights.
    pub seed: u64,
}

impl<B: Backend> Checkpoint<B> {
    /// A classifier's `classifier` head `d → num_labels`: read from the checkpoint, or, with a
    /// [`NewHead`], freshly initialised (a head in the checkpoint is then dropped).
    pub fn classifier(
        &mut self,
        d: usize,
        num_labels: usize,
        new_head: Option<NewHead>,
        device: &B::Device,
    ) -> Result<LoraLinear<B>, ModelError> {
        match new_head {
            Some(h) => {
                self.ignore(|k| k.starts_with("classifier."));
                Ok(fresh_head(d, h.num_labels, h.seed, device))
            }
            None => self.linear("classifier", d, num_labels, true, WeightLayout::Linear),
        }
    }
}

/// A freshly initialised classification head `d → n` (N(0, 0.02) weights, zero bias, as Hugging
/// Face initialises it), seeded so that fine-tuning runs are reproducible.
pub(crate) fn fresh_head<B: Backend>(
    d: usize,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> LoraLinear<B> {
    let mut checkpoint = Checkpoint::<B>::random(0.02, seed, device);
    let head = checkpoint
        .linear("classifier", d, n, true, WeightLayout::Linear)
        .expect("random weights have the requested shapes");
    lora_core::unfreeze(head)
}

/// Seeded normal samples (Box–Muller).
struct Normal {
    rng: SplitMix64,
    std: f64,
}

impl Normal {
    fn sample(&mut self) -> f32 {
        let (u, v) = (self.rng.next_open01(), self.rng.next_open01());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * self.std) as f32
    }
}

/// `model.safetensors` in `dir`. Sharded and pickle checkpoints get a clear error.
pub fn weights_path(dir: &Path) -> Result<PathBuf, ModelError> {
    let p = dir.join("model.safetensors");
    if p.is_file() {
        return Ok(p);
    }
    let reason = if dir.join("model.safetensors.index.json").is_file() {
        "sharded checkpoints (model.safetensors.index.json) are not supported yet".to_string()
    } else if dir.join("pytorch_model.bin").is_file() {
        "only safetensors checkpoints are read; convert pytorch_model.bin with save_pretrained(safe_serialization=True)".to_string()
    } else {
        "file not found".to_string()
    };
    Err(ModelError::Io { path: p, reason })
}
