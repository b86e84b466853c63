//! Parity against reference outputs of Hugging Face transformers + peft.
//!
//! A fixture directory holds `model/` (config.json + model.safetensors), optionally `adapter/`
//! (a PEFT adapter) and `reference.safetensors` with the inputs (`input_ids`,
//! `attention_mask`, `token_type_ids` or `pixel_values`) and the outputs: `logits`,
//! `hidden.N`, `lora.logits`, `lora.hidden.N`, `merged.logits`, `loss` (GPT-2, labels =
//! input ids with padding ignored) and `rfa.retain_mse` (mean over blocks of
//! MSE(lora hidden, base hidden)). Whatever of these the file has is compared.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use lora_core::{HostTensor, TensorFile, load_adapter, merge_and_unload};

use crate::gpt2::causal_lm_loss;
use crate::{
    Architecture, BertForSequenceClassification, BertModel, Gpt2LmHeadModel, ModelError,
    VitForImageClassification,
};
use rfa_fused::FusedOps;

/// Tolerances of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Max abs error of logits and hidden states.
    pub abs: f32,
    /// Relative error of the loss and of the retain MSE.
    pub rel: f32,
    /// Multiply `abs` by `max(1, max |reference|)` per tensor: for reduced-precision matmuls
    /// (TF32 on CUDA) whose error grows with the values' magnitude.
    pub scale_by_magnitude: bool,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { abs: 1e-4, rel: 1e-5, scale_by_magnitude: false }
    }
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    /// Max abs error, or relative error for scalars.
    pub error: f32,
    pub relative: bool,
    pub tolerance: f32,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.error <= self.tolerance
    }
}

#[derive(Debug, Clone)]
pub struct ParityReport {
    pub dir: PathBuf,
    pub architecture: Architecture,
    pub comparisons: Vec<Comparison>,
}

impl ParityReport {
    pub fn ok(&self) -> bool {
        !self.comparisons.is_empty() && self.comparisons.iter().all(Comparison::ok)
    }

    pub fn failures(&self) -> Vec<&Comparison> {
        self.comparisons.iter().filter(|c| !c.ok()).collect()
    }
}

impl std::fmt::Display for ParityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({:?})", self.dir.display(), self.architecture)?;
        for c in &self.comparisons {
            let kind = if c.relative { "rel err" } else { "max abs err" };
            let verdict = if c.ok() { "ok" } else { "FAIL" };
            writeln!(
                f,
                "  {:<18} {kind:>11} {:.3e}  (tol {:.1e})  {verdict}",
                c.name, c.error, c.tolerance
            )?;
        }
        Ok(())
    }
}

/// One forward pass's outputs on the host.
struct Outputs {
    logits: HostTensor,
    hidden: Vec<HostTensor>,
}

/// The three architectures behind one interface, for code that takes any checkpoint.
pub enum AnyModel<B: Backend> {
    Gpt2(Gpt2LmHeadModel<B>),
    BertClassifier(BertForSequenceClassification<B>),
    Bert(BertModel<B>),
    Vit(VitForImageClassification<B>),
}

impl<B: FusedOps> AnyModel<B> {
    /// Loads the model in `dir` by its `model_type`; a BERT checkpoint with a `classifier` loads
    /// as `BertForSequenceClassification`, one without as `BertModel`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        Ok(match Architecture::detect(dir)? {
            Architecture::Gpt2 => Self::Gpt2(Gpt2LmHeadModel::load(dir, device)?),
            Architecture::Vit => Self::Vit(VitForImageClassification::load(dir, device)?),
            Architecture::Bert => {
                let file = TensorFile::open(crate::checkpoint::weights_path(dir)?)?;
                if file.tensors.keys().any(|k| k.starts_with("classifier.")) {
                    Self::BertClassifier(BertForSequenceClassification::load(dir, device)?)
                } else {
                    Self::Bert(BertModel::load(dir, device)?)
                }
            }
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Gpt2(_) => Architecture::Gpt2,
            Self::BertClassifier(_) | Self::Bert(_) => Architecture::Bert,
            Self::Vit(_) => Architecture::Vit,
        }
    }

    pub fn load_adapter(&mut self, dir: &Path) -> Result<(), ModelError> {
        match self {
            Self::Gpt2(m) => load_adapter(m, dir),
            Self::BertClassifier(m) => load_adapter(m, dir),
            Self::Bert(m) => load_adapter(m, dir),
            Self::Vit(m) => load_adapter(m, dir),
        }?;
        Ok(())
    }

    pub fn merge_and_unload(&mut self) {
        match self {
            Self::Gpt2(m) => merge_and_unload(m),
            Self::BertClassifier(m) => merge_and_unload(m),
            Self::Bert(m) => merge_and_unload(m),
            Self::Vit(m) => merge_and_unload(m),
        }
    }

    fn run(&self, inputs: &TensorFile, device: &B::Device) -> Result<Outputs, ModelError> {
        let int = |k: &str| -> Result<Option<Tensor<B, 2, Int>>, ModelError> {
            inputs
                .tensors
                .get(k)
                .map(|t| check_rank(&inputs.path, k, t, 2).map(|_| t.to_int_tensor(device)))
                .transpose()
        };
        let host_all = |v: Vec<Tensor<B, 3>>| v.into_iter().map(HostTensor::from_tensor).collect();
        match self {
            Self::Gpt2(m) => {
                let ids = required(int("input_ids")?, &inputs.path, "input_ids")?;
                check_ids(&inputs.path, inputs.get("input_ids")?, m.vocab_size())?;
                let out = m.forward(ids, int("attention_mask")?);
                Ok(Outputs {
                    logits: HostTensor::from_tensor(out.logits),
                    hidden: host_all(out.hidden_states),
                })
            }
            Self::BertClassifier(m) => {
                let ids = required(int("input_ids")?, &inputs.path, "input_ids")?;
                check_ids(&inputs.path, inputs.get("input_ids")?, m.bert.vocab_size())?;
                let out = m.forward(ids, int("attention_mask")?, int("token_type_ids")?);
                Ok(Outputs {
                    logits: HostTensor::from_tensor(out.logits),
                    hidden: host_all(out.hidden_states),
                })
            }
            Self::Bert(m) => {
                let ids = required(int("input_ids")?, &inputs.path, "input_ids")?;
                check_ids(&inputs.path, inputs.get("input_ids")?, m.vocab_size())?;
                let out = m.forward(ids, int("attention_mask")?, int("token_type_ids")?);
                Ok(Outputs {
                    logits: HostTensor::from_tensor(out.last_hidden_state),
                    hidden: host_all(out.hidden_states),
                })
            }
            Self::Vit(m) => {
                let px = inputs.get("pixel_values")?;
                check_rank(&inputs.path, "pixel_values", px, 4)?;
                let c = m.vit.embeddings.num_channels;
                let [_, n, _] = m.vit.embeddings.position_embeddings.shape().dims::<3>();
                let side = ((n - 1) as f64).sqrt() as usize * m.vit.embeddings.patch_size;
                if px.shape[1..] != [c, side, side] {
                    return Err(ModelError::Input(format!(
                        "{}: pixel_values has shape {:?}, the model takes [batch, {c}, {side}, {side}]",
                        inputs.path.display(),
                        px.shape
                    )));
                }
                let out = m.forward(px.to_tensor(device));
                Ok(Outputs {
                    logits: HostTensor::from_tensor(out.logits),
                    hidden: host_all(out.hidden_states),
                })
            }
        }
    }
}

fn required<T>(v: Option<T>, path: &Path, key: &str) -> Result<T, ModelError> {
    v.ok_or_else(|| {
        lora_core::TensorFileError::Missing { path: path.to_path_buf(), key: key.to_string() }
            .into()
    })
}

fn check_rank(path: &Path, key: &str, t: &HostTensor, rank: usize) -> Result<(), ModelError> {
    if t.shape.len() != rank {
        return Err(ModelError::Input(format!(
            "{}: `{key}` has shape {:?}, expected rank {rank}",
            path.display(),
            t.shape
        )));
    }
    Ok(())
}

/// Token ids outside the embedding would index out of bounds inside the backend.
pub fn check_ids(path: &Path, ids: &HostTensor, vocab: usize) -> Result<(), ModelError> {
    if let Some(bad) = ids.to_i64().into_iter().find(|&i| i < 0 || i as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "{}: token id {bad} is outside the vocabulary of {vocab}",
            path.display()
        )));
    }
    Ok(())
}

fn max_abs(name: &str, ours: &HostTensor, reference: &HostTensor, tol: Tolerance) -> Comparison {
    let tolerance = if tol.scale_by_magnitude {
        tol.abs * reference.to_f32().iter().fold(1.0f32, |m, v| m.max(v.abs()))
    } else {
        tol.abs
    };
    let error = if ours.shape != reference.shape {
        f32::INFINITY
    } else {
        ours.to_f32()
            .iter()
            .zip(reference.to_f32())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) })
    };
    Comparison {
        name: name.to_string(),
        error: if error.is_nan() { f32::INFINITY } else { error },
        relative: false,
        tolerance,
    }
}

fn rel(name: &str, ours: f32, reference: f32, tol: f32) -> Comparison {
    let error = ((ours - reference).abs() / reference.abs().max(1e-12)).min(f32::MAX);
    Comparison {
        name: name.to_string(),
        error: if error.is_nan() { f32::INFINITY } else { error },
        relative: true,
        tolerance: tol,
    }
}

fn mean_block_mse(a: &[HostTensor], b: &[HostTensor]) -> f32 {
    let blocks = a.len().min(b.len()).saturating_sub(1);
    let sum: f64 = (1..=blocks)
        .map(|l| {
            let (x, y) = (a[l].to_f32(), b[l].to_f32());
            x.iter().zip(&y).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>() / x.len() as f64
        })
        .sum();
    (sum / blocks.max(1) as f64) as f32
}

/// Checks one fixture directory on backend `B`.
pub fn check_dir<B: FusedOps>(
    dir: &Path,
    tol: Tolerance,
    device: &B::Device,
) -> Result<ParityReport, ModelError> {
    let reference = TensorFile::open(dir.join("reference.safetensors"))?;
    let mut model = AnyModel::<B>::load(&dir.join("model"), device)?;
    let mut comparisons = Vec::new();
    let compare_outputs = |prefix: &str, out: &Outputs, comparisons: &mut Vec<Comparison>| {
        let key = |k: &str| format!("{prefix}{k}");
        if let Some(r) = reference.tensors.get(&key("logits")) {
            comparisons.push(max_abs(&key("logits"), &out.logits, r, tol));
        }
        for (i, h) in out.hidden.iter().enumerate() {
            if let Some(r) = reference.tensors.get(&key(&format!("hidden.{i}"))) {
                comparisons.push(max_abs(&key(&format!("hidden.{i}")), h, r, tol));
            }
        }
    };

    let base = model.run(&reference, device)?;
    compare_outputs("", &base, &mut comparisons);

    if let (AnyModel::Gpt2(_), Some(r)) = (&model, reference.tensors.get("loss")) {
        let ids = reference.get("input_ids")?;
        let mask = reference.tensors.get("attention_mask").map(HostTensor::to_i64);
        let labels: Vec<i64> = ids
            .to_i64()
            .iter()
            .enumerate()
            .map(|(i, &t)| if mask.as_ref().is_some_and(|m| m[i] == 0) { -100 } else { t })
            .collect();
        let labels =
            HostTensor { shape: ids.shape.clone(), data: lora_core::HostData::I64(labels) };
        let logits: Tensor<B, 3> = base.logits.to_tensor(device);
        let loss = HostTensor::from_tensor(causal_lm_loss(logits, labels.to_int_tensor(device)))
            .to_f32()[0];
        comparisons.push(rel("loss", loss, r.to_f32()[0], tol.rel));
    }

    let adapter = dir.join("adapter");
    if adapter.is_dir() {
        model.load_adapter(&adapter)?;
        let lora = model.run(&reference, device)?;
        compare_outputs("lora.", &lora, &mut comparisons);
        if let Some(r) = reference.tensors.get("rfa.retain_mse") {
            comparisons.push(rel(
                "rfa.retain_mse",
                mean_block_mse(&lora.hidden, &base.hidden),
                r.to_f32()[0],
                tol.rel,
            ));
        }
        model.merge_and_unload();
        let merged = model.run(&reference, device)?;
        if let Some(r) = reference.tensors.get("merged.logits") {
            comparisons.push(max_abs("merged.logits", &merged.logits, r, tol));
        }
    }
    Ok(ParityReport { dir: dir.to_path_buf(), architecture: model.architecture(), comparisons })
}
