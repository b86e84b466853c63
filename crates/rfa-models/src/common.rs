//! Pieces the three architectures share: checkpoint reading with typed errors, activations,
//! attention, and the outputs of a forward pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::activation::{relu, sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};
pub(crate) use lora_core::to_dtype;
use lora_core::{LoraLinear, TensorFile, WeightLayout};
use serde::de::DeserializeOwned;

use crate::ModelError;
use crate::ops::{self, FusedOps, GeluKind};

/// One adapted layer's two features from a forward pass: `p_l` (frozen weights) and `r_l`
/// (adapter). Taps come in the order of [`lora_core::adapted_paths`].
#[derive(Debug, Clone)]
pub struct Tap<B: Backend> {
    pub pre: Tensor<B, 3>,
    pub residual: Tensor<B, 3>,
}

impl<B: Backend> Tap<B> {
    /// Applies `f` to both features (e.g. keeping one token, moving between backends).
    pub fn map<C: Backend>(self, f: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>) -> Tap<C> {
        Tap { pre: f(self.pre), residual: f(self.residual) }
    }

    /// Splits one pass over two concatenated batches into the taps of the first `n` rows and of
    /// the rest (the retain and the forget batch of an RFA step).
    pub fn split_rows(taps: &[Tap<B>], n: usize) -> (Vec<Tap<B>>, Vec<Tap<B>>) {
        let rows = |t: &Tap<B>, s: usize, l: usize| t.clone().map(|x| x.narrow(0, s, l));
        let total = taps.first().map(|t| t.pre.dims()[0]).unwrap_or(n);
        (taps.iter().map(|t| rows(t, 0, n)).collect(), taps.iter().map(|t| rows(t, n, total - n)).collect())
    }
}

/// Where a forward pass leaves the taps of its adapted layers.
pub type Taps<B> = Vec<Tap<B>>;

/// Collects the taps of a forward pass. With a limit the pass stops as soon as it holds that
/// many: nothing after the last adapted layer reaches an objective built from taps alone (RFA's),
/// so that work — most of the last block, the head — is skipped.
pub(crate) struct TapSink<B: Backend> {
    pub taps: Taps<B>,
    limit: usize,
}

impl<B: Backend> TapSink<B> {
    /// Every tap: the pass runs to the end.
    pub fn all() -> Self {
        Self { taps: Vec::new(), limit: usize::MAX }
    }

    /// The first `limit` taps.
    pub fn first(limit: usize) -> Self {
        Self { taps: Vec::new(), limit }
    }

    fn full(&self) -> bool {
        self.taps.len() >= self.limit
    }
}

/// `LoraLinear::forward` that also records `(p_l, r_l)` when the layer is adapted; `None` once
/// the sink is full, which ends the pass (callers write `tapped(..)?`). Taps are f32 whatever
/// the layer ran in: the objective is computed in f32 (bf16 interiors, [`interior`]).
pub(crate) fn tapped<B: Backend>(lin: &LoraLinear<B>, x: Tensor<B, 3>, sink: &mut TapSink<B>) -> Option<Tensor<B, 3>> {
    if sink.full() {
        return None;
    }
    let y = match lin.split(x) {
        (p, Some(r)) => {
            sink.taps.push(Tap { pre: to_dtype(p.clone(), DType::F32), residual: to_dtype(r.clone(), DType::F32) });
            p + r
        }
        (p, None) => p,
    };
    (!sink.full()).then_some(y)
}

/// The input of a block's projections (`lin` one of them) in the type the block's interior runs
/// in: the frozen weights' type where the backend runs bf16 activations
/// ([`FusedOps::bf16_activations`]), else unchanged. Cast once here, the projections sharing an
/// input (q, k, v) do not each cast it; their outputs stay in that type up to the residual add,
/// which takes them back with [`to_dtype`] — PyTorch's autocast, which keeps the residual stream
/// and the norms in f32 and everything between them in bf16.
pub(crate) fn interior<B: FusedOps, const D: usize>(x: Tensor<B, D>, lin: &LoraLinear<B>) -> Tensor<B, D> {
    if B::bf16_activations() { to_dtype(x, lin.weight_dtype()) } else { x }
}

/// Output of a sequence or image classifier (ViT, BERT).
#[derive(Debug, Clone)]
pub struct ClassifierOutput<B: Backend> {
    /// `[batch, num_labels]`
    pub logits: Tensor<B, 2>,
    /// Hugging Face's `hidden_states`: the embeddings, then the output of every block.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The classifier's input: ViT's final-normed CLS token, BERT's pooled output.
    pub features: Tensor<B, 2>,
    pub taps: Taps<B>,
}

/// Output of a causal language model (GPT-2).
#[derive(Debug, Clone)]
pub struct CausalLmOutput<B: Backend> {
    /// `[batch, seq, vocab]`
    pub logits: Tensor<B, 3>,
    /// The embeddings, then the output of every block; the last one after `ln_f`, as in
    /// Hugging Face.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The last hidden state (after `ln_f`), `[batch, seq, hidden]`.
    pub features: Tensor<B, 3>,
    pub taps: Taps<B>,
}

/// The element-wise activations Hugging Face configs name (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
    Silu,
    QuickGelu,
    Tanh,
}

impl Activation {
    pub fn parse(name: &str, config: &Path) -> Result<Self, ModelError> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            "tanh" => Self::Tanh,
            other => {
                return Err(ModelError::Config { path: config.to_path_buf(), reason: format!("unsupported activation `{other}`") });
            }
        })
    }

    /// The GELUs run as fused ops ([`crate::ops`]): one kernel and the analytic derivative
    /// instead of burn's `gelu` / `gelu_approximate`, whose backward is wrong for the exact GELU
    /// and, with the rest of the element-wise chain, costs several passes over memory.
    pub fn forward<B: FusedOps, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Gelu => ops::gelu(x, GeluKind::Erf),
            Self::GeluTanh => ops::gelu(x, GeluKind::Tanh),
            Self::Relu => relu(x),
            Self::Silu => silu(x),
            Self::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
            Self::Tanh => x.tanh(),
        }
    }
}

/// LayerNorm over the last dimension, Hugging Face's `weight` / `bias` as burn's `gamma` / `beta`.
/// burn's `nn::LayerNorm` keeps its epsilon private and is always differentiated op by op; this
/// one runs [`ops::layer_norm`], which libtorch and the GPU backends train as one op
/// ([`crate::FusedOps::layer_norm_as_one_node`]).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub epsilon: f64,
}

impl<B: FusedOps> LayerNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        ops::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}

/// Additive attention bias `[batch, 1, 1, seq]` from a 0/1 padding mask `[batch, seq]`
/// ([`ops::MASK_BIAS`] on padding); `None` without a mask or when the mask pads nothing, as
/// transformers' SDPA path drops an all-ones mask: the attention then runs without a bias (on
/// libtorch PyTorch's flash kernel, which takes none; elsewhere one addition less per layer), with
/// the same result. Costs one read of the mask's minimum back from the device per pass.
pub(crate) fn padding_bias<B: Backend>(mask: Option<Tensor<B, 2, Int>>) -> Option<Tensor<B, 4>> {
    let mask = mask.filter(|m| m.clone().min().into_scalar().elem::<i64>() < 1)?;
    let [b, t] = mask.dims();
    let keep = mask.float();
    Some(keep.neg().add_scalar(1.0).mul_scalar(ops::MASK_BIAS).reshape([b, 1, 1, t]))
}

/// Multi-head scaled dot-product attention over `[batch, seq, hidden]` projections.
pub(crate) fn attention<B: FusedOps>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    n_heads: usize,
    scale: f64,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    ops::attention(q, k, v, bias, false, n_heads, scale)
}

/// Self-attention with separate `query`, `key`, `value` projections (BERT's `attention.self`,
/// ViT's `attention.attention`); the output projection belongs to the caller.
#[derive(burn::module::Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: LoraLinear<B>,
    pub key: LoraLinear<B>,
    pub value: LoraLinear<B>,
    pub num_heads: usize,
}

impl<B: FusedOps> SelfAttention<B> {
    /// Reads `path.{query,key,value}` of a `d × d` attention.
    pub fn load(ck: &mut Checkpoint<B>, path: &str, d: usize, heads: usize, bias: bool) -> Result<Self, ModelError> {
        let mut lin = |name: &str| ck.linear(&format!("{path}.{name}"), d, d, bias, WeightLayout::Linear);
        Ok(Self { query: lin("query")?, key: lin("key")?, value: lin("value")?, num_heads: heads })
    }

    /// The attention context (before the output projection), tapping q, k, v in that order.
    pub(crate) fn forward(&self, x: Tensor<B, 3>, bias: Option<Tensor<B, 4>>, taps: &mut TapSink<B>) -> Option<Tensor<B, 3>> {
        let x = interior(x, &self.query);
        let q = tapped(&self.query, x.clone(), taps)?;
        let k = tapped(&self.key, x.clone(), taps)?;
        let v = tapped(&self.value, x.clone(), taps)?;
        let d = x.dims()[2];
        let scale = 1.0 / ((d / self.num_heads) as f64).sqrt();
        Some(attention(q, k, v, self.num_heads, scale, bias))
    }

    pub fn push_linears<'a>(&'a self, path: &str, v: &mut Vec<(String, &'a LoraLinear<B>)>) {
        v.push((format!("{path}.query"), &self.query));
        v.push((format!("{path}.key"), &self.key));
        v.push((format!("{path}.value"), &self.value));
    }

    pub fn push_linears_mut<'a>(&'a mut self, path: &str, v: &mut Vec<(String, &'a mut LoraLinear<B>)>) {
        v.push((format!("{path}.query"), &mut self.query));
        v.push((format!("{path}.key"), &mut self.key));
        v.push((format!("{path}.value"), &mut self.value));
    }
}

/// Reads a `config.json` into a config struct, naming the file in every error.
pub fn read_config<C: DeserializeOwned>(path: &Path) -> Result<C, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.to_path_buf(), reason: e.to_string() })
}

pub(crate) fn check_divisible(path: &Path, hidden: usize, heads: usize) -> Result<(), ModelError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            reason: format!("hidden size {hidden} is not divisible by the number of attention heads {heads}"),
        });
    }
    Ok(())
}

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
        let strip_base = !base_prefix.is_empty() && !file.tensors.keys().any(|k| k.starts_with(base_prefix));
        Ok(Self { file, base_prefix: base_prefix.to_string(), strip_base, device: device.clone(), random: None })
    }

    /// A source of freshly initialised weights, as Hugging Face initialises them: weights and
    /// embeddings N(0, std) (`initializer_range`, 0.02), biases 0, LayerNorm weights 1. Seeded
    /// on the host, so a seed gives the same model on every backend.
    pub fn random(std: f64, seed: u64, device: &B::Device) -> Self {
        let file = TensorFile { path: PathBuf::from("<random init>"), tensors: Default::default(), metadata: Default::default() };
        Self {
            file,
            base_prefix: String::new(),
            strip_base: false,
            device: device.clone(),
            random: Some(Normal { rng: SplitMix64(seed), std }),
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

    pub fn tensor<const D: usize>(&mut self, path: &str, shape: [usize; D]) -> Result<Tensor<B, D>, ModelError> {
        if let Some(rng) = &mut self.random {
            let n: usize = shape.iter().product();
            let leaf = path.rsplit('.').nth(1).unwrap_or("").to_ascii_lowercase();
            let v: Vec<f32> = if path.ends_with(".bias") {
                vec![0.0; n]
            } else if path.ends_with(".weight") && (leaf.contains("layernorm") || leaf.starts_with("ln_")) {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.sample()).collect()
            };
            return Ok(Tensor::from_data(TensorData::new(v, shape), &self.device));
        }
        let key = self.key(path);
        Ok(self.file.take(&key, &shape)?.to_tensor(&self.device))
    }

    pub fn frozen<const D: usize>(&mut self, path: &str, shape: [usize; D]) -> Result<Param<Tensor<B, D>>, ModelError> {
        Ok(Param::from_tensor(self.tensor(path, shape)?).set_require_grad(false))
    }

    /// A linear layer `path.weight` / `path.bias`. `torch.nn.Linear` stores `[out, in]`;
    /// GPT-2's `Conv1D` already stores `[in, out]`, burn's layout, and is not transposed.
    pub fn linear(&mut self, path: &str, d_in: usize, d_out: usize, bias: bool, layout: WeightLayout) -> Result<LoraLinear<B>, ModelError> {
        let w = match layout {
            WeightLayout::Linear => self.tensor(&format!("{path}.weight"), [d_out, d_in])?.transpose(),
            WeightLayout::Conv1D => self.tensor(&format!("{path}.weight"), [d_in, d_out])?,
        };
        let b = if bias { Some(self.tensor(&format!("{path}.bias"), [d_out])?) } else { None };
        Ok(LoraLinear::from_weights(w, b, layout))
    }

    pub fn layer_norm(&mut self, path: &str, d: usize, eps: f64) -> Result<LayerNorm<B>, ModelError> {
        Ok(LayerNorm {
            gamma: self.frozen(&format!("{path}.weight"), [d])?,
            beta: self.frozen(&format!("{path}.bias"), [d])?,
            epsilon: eps,
        })
    }

    pub fn embedding(&mut self, path: &str, n: usize, d: usize) -> Result<Embedding<B>, ModelError> {
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
        Err(ModelError::UnexpectedTensors { path: self.file.path, keys: keys.into_iter().collect() })
    }
}

/// Small deterministic generator (SplitMix64), the same on every machine and backend.
pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Uniform in (0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// A freshly initialised classification head `d → n` (N(0, 0.02) weights, zero bias, as Hugging
/// Face initialises it), seeded so that fine-tuning runs are reproducible.
pub(crate) fn fresh_head<B: Backend>(d: usize, n: usize, seed: u64, device: &B::Device) -> LoraLinear<B> {
    let mut ck = Checkpoint::<B>::random(0.02, seed, device);
    let head = ck.linear("classifier", d, n, true, WeightLayout::Linear).expect("random weights have the requested shapes");
    lora_core::unfreeze(head)
}

/// Seeded normal samples (Box–Muller).
struct Normal {
    rng: SplitMix64,
    std: f64,
}

impl Normal {
    fn sample(&mut self) -> f32 {
        let (u, v) = (self.rng.next_f64(), self.rng.next_f64());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * self.std) as f32
    }
}

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
    pub fn linear<B: Backend>(&mut self, path: &str, lin: &LoraLinear<B>) -> Result<(), ModelError> {
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
        lora_core::tensors::write_safetensors(&dir.join("model.safetensors"), &self.0, Some(meta)).map_err(werr)?;
        let json = serde_json::to_string_pretty(config).map_err(|e| ModelError::Input(e.to_string()))?;
        lora_core::tensors::write_atomic(&dir.join("config.json"), json.as_bytes()).map_err(werr)
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn a_mask_that_pads_nothing_gives_no_bias() {
        let device = Default::default();
        let mask = |v: Vec<i64>| Some(Tensor::<NdArray<f32>, 2, Int>::from_data(TensorData::new(v, [2, 3]), &device));
        assert!(padding_bias::<NdArray<f32>>(None).is_none());
        assert!(padding_bias(mask(vec![1; 6])).is_none());
        let bias = padding_bias(mask(vec![1, 1, 1, 1, 1, 0])).expect("a padded position");
        assert_eq!(bias.dims(), [2, 1, 1, 3]);
        let v = bias.into_data().to_vec::<f32>().unwrap();
        assert_eq!(&v[..5], &[0.0; 5]);
        assert_eq!(v[5], ops::MASK_BIAS);
    }
}
