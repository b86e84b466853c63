//! GPT-2 (`GPT2LMHeadModel`): pre-norm decoder, `Conv1D` projections stored `[in, out]`, LM head
//! tied to `wte`. Module tree and names as in Hugging Face's `modeling_gpt2.py`.

use std::path::Path;

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use lora_core::{LoraLinear, LoraModel, WeightLayout};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::activations::Activation;
use crate::attention::padding_bias;
use crate::checkpoint::Checkpoint;
use crate::config::{check_divisible, check_sizes, read_config, sum_of_products};
use crate::layer_norm::LayerNorm;
use crate::outputs::CausalLmOutput;
use crate::precision::interior;
use crate::state_dict::StateDict;
use crate::taps::{TapSink, tapped};
use lora_core::{Taps, to_dtype};
use rfa_fused::FusedOps;
use rfa_rng::SplitMix64;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Every other field of `config.json`, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    /// Everything loading checks before allocating: sizes, heads, activation, a tied head.
    pub(crate) fn validate(&self, path: &Path) -> Result<Activation, ModelError> {
        self.check_sizes(path)?;
        check_divisible(path, self.n_embd, self.n_head)?;
        let act = Activation::parse(&self.activation_function, path)?;
        if !self.tie_word_embeddings {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                reason: "untied GPT-2 LM heads are not supported".into(),
            });
        }
        Ok(act)
    }

    /// Every size at least 1 and the parameter count under the cap, before any allocation.
    fn check_sizes(&self, path: &Path) -> Result<(), ModelError> {
        let (v, p, e, l) = (self.vocab_size, self.n_positions, self.n_embd, self.n_layer);
        let inner = self.n_inner.unwrap_or(e.saturating_mul(4));
        check_sizes(
            path,
            &[
                ("vocab_size", v),
                ("n_positions", p),
                ("n_embd", e),
                ("n_layer", l),
                ("n_head", self.n_head),
                ("n_inner", inner),
            ],
            || sum_of_products(&[&[l, 4, e, e], &[l, 2, e, inner], &[v, e], &[p, e]]),
        )
    }

    /// A GPT-2 of the given shape with GPT-2's defaults otherwise (gelu_new, eps 1e-5, tied head).
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_act(),
            layer_norm_epsilon: default_eps(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra: serde_json::Map::new(),
        }
    }

    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    pub c_attn: LoraLinear<B>,
    pub c_proj: LoraLinear<B>,
    pub n_head: usize,
    pub scale: f64,
}

#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    pub c_fc: LoraLinear<B>,
    pub c_proj: LoraLinear<B>,
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Gpt2Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Gpt2Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub h: Vec<Gpt2Block<B>>,
    pub ln_f: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Gpt2LmHeadModel<B: Backend> {
    pub transformer: Gpt2Model<B>,
    pub n_positions: usize,
    pub config: Gpt2Config,
}

impl<B: FusedOps> Gpt2Block<B> {
    /// `None` once `taps` is full (the pass ends there).
    /// `bias`: padding, if any; the causal mask is the attention op's own.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Option<&Tensor<B, 4>>,
        taps: &mut TapSink<B>,
    ) -> Option<Tensor<B, 3>> {
        let (a, dt) = (&self.attn, x.dtype());
        let qkv = tapped(&a.c_attn, interior(self.ln_1.forward(x.clone()), &a.c_attn), taps)?;
        let ctx = rfa_fused::attention_packed(qkv, bias.cloned(), true, a.n_head, a.scale);
        let x = x + to_dtype(tapped(&a.c_proj, ctx, taps)?, dt);
        let m = &self.mlp;
        let hmid =
            m.act.forward(tapped(&m.c_fc, interior(self.ln_2.forward(x.clone()), &m.c_fc), taps)?);
        Some(x + to_dtype(tapped(&m.c_proj, hmid, taps)?, dt))
    }
}

impl<B: FusedOps> Gpt2LmHeadModel<B> {
    /// Reads `config.json` and `model.safetensors` from `dir` (keys with or without `transformer.`;
    /// the causal-mask buffers `attn.bias` / `attn.masked_bias` of old checkpoints and a stored
    /// `lm_head.weight`, which is tied to `wte`, are ignored).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let cpath = dir.join("config.json");
        let cfg: Gpt2Config = read_config(&cpath)?;
        let act = cfg.validate(&cpath)?;
        let mut checkpoint = Checkpoint::<B>::open(dir, "transformer.", device)?;
        checkpoint.ignore(|k| {
            k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias") || k == "lm_head.weight"
        });
        let model = Self::from_checkpoint(&cfg, act, &mut checkpoint)?;
        checkpoint.finish()?;
        Ok(model)
    }

    pub fn from_checkpoint(
        cfg: &Gpt2Config,
        act: Activation,
        checkpoint: &mut Checkpoint<B>,
    ) -> Result<Self, ModelError> {
        let (d, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let conv = WeightLayout::Conv1D;
        let mut h = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            let mut scale =
                if cfg.scale_attn_weights { 1.0 / ((d / cfg.n_head) as f64).sqrt() } else { 1.0 };
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            h.push(Gpt2Block {
                ln_1: checkpoint.layer_norm(&format!("{p}.ln_1"), d, eps)?,
                attn: Gpt2Attention {
                    c_attn: checkpoint.linear(&format!("{p}.attn.c_attn"), d, 3 * d, true, conv)?,
                    c_proj: checkpoint.linear(&format!("{p}.attn.c_proj"), d, d, true, conv)?,
                    n_head: cfg.n_head,
                    scale,
                },
                ln_2: checkpoint.layer_norm(&format!("{p}.ln_2"), d, eps)?,
                mlp: Gpt2Mlp {
                    c_fc: checkpoint.linear(
                        &format!("{p}.mlp.c_fc"),
                        d,
                        cfg.inner(),
                        true,
                        conv,
                    )?,
                    c_proj: checkpoint.linear(
                        &format!("{p}.mlp.c_proj"),
                        cfg.inner(),
                        d,
                        true,
                        conv,
                    )?,
                    act,
                },
            });
        }
        Ok(Self {
            transformer: Gpt2Model {
                wte: checkpoint.embedding("transformer.wte", cfg.vocab_size, d)?,
                wpe: checkpoint.embedding("transformer.wpe", cfg.n_positions, d)?,
                h,
                ln_f: checkpoint.layer_norm("transformer.ln_f", d, eps)?,
            },
            n_positions: cfg.n_positions,
            config: cfg.clone(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.transformer.wte.weight.shape().dims::<2>()[0]
    }

    /// Writes `config.json` + `model.safetensors` with `GPT2LMHeadModel`'s keys (`transformer.…`,
    /// `Conv1D` weights `[in, out]`, head tied so not stored). Adapters must be merged first.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        let mut state_dict = StateDict::default();
        let t = &self.transformer;
        state_dict.embedding("transformer.wte", &t.wte);
        state_dict.embedding("transformer.wpe", &t.wpe);
        for (i, b) in t.h.iter().enumerate() {
            state_dict.layer_norm(&format!("transformer.h.{i}.ln_1"), &b.ln_1);
            state_dict.layer_norm(&format!("transformer.h.{i}.ln_2"), &b.ln_2);
        }
        state_dict.layer_norm("transformer.ln_f", &t.ln_f);
        for (path, lin) in self.linears() {
            state_dict.linear(&path, lin)?;
        }
        let mut cfg =
            serde_json::to_value(&self.config).map_err(|e| ModelError::Input(e.to_string()))?;
        cfg["model_type"] = "gpt2".into();
        cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        state_dict.save(dir, &cfg)
    }

    /// `input_ids [batch, seq]`, `attention_mask [batch, seq]` (1 = token, 0 = padding).
    /// Sequences longer than `n_positions` must be truncated by the caller.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> CausalLmOutput<B> {
        let (hidden_states, taps) = self.forward_hidden(input_ids, attention_mask);
        let x = hidden_states.last().expect("embeddings").clone();
        let wte = self.transformer.wte.weight.val().transpose().unsqueeze::<3>();
        let logits = x.clone().matmul(wte);
        CausalLmOutput { logits, hidden_states, features: x, taps }
    }

    /// The forward pass without the LM head: hidden states (the last after `ln_f`) and taps.
    /// For objectives that need no logits (RFA's feature terms), this skips the largest matmul.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> (Vec<Tensor<B, 3>>, Taps<B>) {
        let mut sink = TapSink::all();
        let hidden_states = self
            .run(input_ids, attention_mask, &mut sink)
            .expect("a pass without a tap limit runs to the end");
        (hidden_states, sink.taps)
    }

    /// Only the taps of the adapted layers: the pass stops after the last of them.
    pub fn forward_taps(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Taps<B> {
        let mut sink = TapSink::first(lora_core::adapted_paths(self).len());
        let _ = self.run(input_ids, attention_mask, &mut sink);
        sink.taps
    }

    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        taps: &mut TapSink<B>,
    ) -> Option<Vec<Tensor<B, 3>>> {
        let [_, t] = input_ids.dims();
        let device = input_ids.device();
        let tr = &self.transformer;
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let mut x = tr.wte.forward(input_ids) + tr.wpe.forward(positions);
        let bias = padding_bias(attention_mask);
        let mut hidden_states = vec![x.clone()];
        for block in &tr.h {
            x = block.forward(x, bias.as_ref(), taps)?;
            hidden_states.push(x.clone());
        }
        *hidden_states.last_mut().expect("embeddings") = tr.ln_f.forward(x);
        Some(hidden_states)
    }

    /// A freshly initialised model (N(0, 0.02) weights, as Hugging Face's `initializer_range`),
    /// every parameter trainable.
    pub fn init(cfg: &Gpt2Config, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        let path = Path::new("<config>");
        cfg.check_sizes(path)?;
        check_divisible(path, cfg.n_embd, cfg.n_head)?;
        let act = Activation::parse(&cfg.activation_function, path)?;
        let mut checkpoint = Checkpoint::<B>::random(0.02, seed, device);
        Ok(lora_core::unfreeze(Self::from_checkpoint(cfg, act, &mut checkpoint)?))
    }

    /// Greedy (`top_k = None` or `Some(1)`) or top-k sampling (`temperature`, `seed`) of `max_new`
    /// tokens after `prompt`; stops at `eos`. Returns the new tokens only.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        top_k: Option<usize>,
        temperature: f64,
        eos: Option<u32>,
        seed: u64,
    ) -> Vec<u32> {
        let device = self.transformer.wte.weight.device();
        let mut ids: Vec<u32> = prompt.to_vec();
        let mut out = Vec::new();
        let mut rng = SplitMix64::new(seed);
        for _ in 0..max_new {
            let start = ids.len().saturating_sub(self.n_positions);
            let window: Vec<i64> = ids[start..].iter().map(|&x| x as i64).collect();
            let n = window.len();
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(window, [1, n]), &device);
            // Only the last position's logits are needed: run the head there alone.
            let (hs, _) = self.forward_hidden(input, None);
            let last = hs
                .last()
                .expect("hidden states")
                .clone()
                .narrow(1, n - 1, 1)
                .reshape([1, self.config.n_embd]);
            let logits = last
                .matmul(self.transformer.wte.weight.val().transpose())
                .reshape([self.vocab_size()]);
            let logits: Vec<f32> =
                logits.into_data().convert::<f32>().into_vec().expect("f32 logits");
            let next = pick(&logits, top_k, temperature, &mut rng);
            ids.push(next);
            out.push(next);
            if Some(next) == eos {
                break;
            }
        }
        out
    }
}

/// Causal-LM loss as Hugging Face computes it: logits at `t` predict `labels[t + 1]`, labels
/// equal to -100 are ignored, mean over the rest. Returns a one-element tensor.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits.narrow(1, 0, t - 1), 2);
    let target = labels.narrow(1, 1, t - 1);
    let valid = target.clone().greater_equal_elem(0);
    let safe = target.mask_fill(valid.clone().bool_not(), 0);
    let picked = logp.gather(2, safe.reshape([b, t - 1, 1])).reshape([b, t - 1]);
    let validf = valid.float();
    let n = validf.clone().sum();
    (picked * validf).sum().neg().div(n)
}

fn pick(logits: &[f32], top_k: Option<usize>, temperature: f64, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    let k = match top_k {
        None | Some(0) | Some(1) => return argmax(),
        Some(k) => k.min(logits.len()),
    };
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    let t = temperature.max(1e-6);
    let m = logits[idx[0]] as f64;
    let w: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - m) / t).exp()).collect();
    let mut u = rng.next_open01() * w.iter().sum::<f64>();
    for (j, wj) in w.iter().enumerate() {
        if u < *wj {
            return idx[j] as u32;
        }
        u -= wj;
    }
    idx[k - 1] as u32
}

impl<B: FusedOps> LoraModel<B> for Gpt2LmHeadModel<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, b) in self.transformer.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            v.push((format!("{p}.attn.c_attn"), &b.attn.c_attn));
            v.push((format!("{p}.attn.c_proj"), &b.attn.c_proj));
            v.push((format!("{p}.mlp.c_fc"), &b.mlp.c_fc));
            v.push((format!("{p}.mlp.c_proj"), &b.mlp.c_proj));
        }
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, b) in self.transformer.h.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}");
            v.push((format!("{p}.attn.c_attn"), &mut b.attn.c_attn));
            v.push((format!("{p}.attn.c_proj"), &mut b.attn.c_proj));
            v.push((format!("{p}.mlp.c_fc"), &mut b.mlp.c_fc));
            v.push((format!("{p}.mlp.c_proj"), &mut b.mlp.c_proj));
        }
        v
    }

    /// Adapters made on the bare `GPT2Model` lack `transformer.`.
    fn canonical_path(&self, path: &str) -> String {
        if path.starts_with("h.") { format!("transformer.{path}") } else { path.to_string() }
    }
}
