#![allow(non_snake_case)] // `LayerNorm` fields keep Hugging Face's module names.

//! BERT (`BertModel`, `BertForSequenceClassification`): post-norm encoder with absolute
//! positions and token types. Module tree and names as in Hugging Face's `modeling_bert.py`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use lora_core::{LoraLinear, LoraModel, WeightLayout};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::activations::Activation;
use crate::attention::{SelfAttention, padding_bias};
use crate::checkpoint::{Checkpoint, NewHead};
use crate::config::{check_divisible, check_sizes, read_config, sum_of_products};
use crate::layer_norm::LayerNorm;
use crate::outputs::ClassifierOutput;
use crate::precision::interior;
use crate::state_dict::StateDict;
use crate::taps::{TapSink, tapped};
use lora_core::{Taps, to_dtype};
use rfa_fused::FusedOps;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Every other field of `config.json`, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn gelu() -> String {
    "gelu".into()
}
fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    /// A BERT config with Hugging Face's defaults for everything but the sizes (GELU, 2 token
    /// types, eps 1e-12, absolute positions, 2 labels).
    pub fn new(
        vocab_size: usize,
        max_position_embeddings: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size: 4 * hidden_size,
            hidden_act: gelu(),
            max_position_embeddings,
            type_vocab_size: two(),
            layer_norm_eps: eps(),
            pad_token_id: Some(0),
            position_embedding_type: absolute(),
            id2label: None,
            num_labels: None,
            architectures: None,
            extra: Default::default(),
        }
    }

    /// Hugging Face's `num_labels`: the size of `id2label`, else 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2)
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<Activation, ModelError> {
        let (h, i, l) = (self.hidden_size, self.intermediate_size, self.num_hidden_layers);
        let (v, p, t) = (self.vocab_size, self.max_position_embeddings, self.type_vocab_size);
        check_sizes(
            path,
            &[
                ("vocab_size", v),
                ("hidden_size", h),
                ("num_hidden_layers", l),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", i),
                ("max_position_embeddings", p),
                ("type_vocab_size", t),
            ],
            || sum_of_products(&[&[l, 4, h, h], &[l, 2, h, i], &[v, h], &[p, h], &[t, h]]),
        )?;
        check_divisible(path, self.hidden_size, self.num_attention_heads)?;
        if self.position_embedding_type != "absolute" {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "position_embedding_type `{}` is not supported (only `absolute`)",
                    self.position_embedding_type
                ),
            });
        }
        Activation::parse(&self.hidden_act, path)
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    #[allow(non_snake_case)]
    pub LayerNorm: LayerNorm<B>,
}

/// `attention.output`, `output`: dense, then LayerNorm of the residual sum.
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    pub dense: LoraLinear<B>,
    #[allow(non_snake_case)]
    pub LayerNorm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// Hugging Face's `attention.self` (`self` is a Rust keyword).
    pub self_: SelfAttention<B>,
    pub output: BertOutput<B>,
}

#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    pub dense: LoraLinear<B>,
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub intermediate: BertIntermediate<B>,
    pub output: BertOutput<B>,
}

#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    pub layer: Vec<BertLayer<B>>,
}

#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    pub dense: LoraLinear<B>,
}

/// `BertModel`. `prefix` is the module path it has inside its head class (`bert.`), empty when
/// it stands alone.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub encoder: BertEncoder<B>,
    pub pooler: Option<BertPooler<B>>,
    pub prefix: String,
    pub config: BertConfig,
}

/// Output of the bare encoder.
#[derive(Debug, Clone)]
pub struct BertModelOutput<B: Backend> {
    pub last_hidden_state: Tensor<B, 3>,
    /// `tanh(dense(h[:, 0]))` when the model has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
    pub hidden_states: Vec<Tensor<B, 3>>,
    pub taps: Taps<B>,
}

impl<B: FusedOps> BertOutput<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        taps: &mut TapSink<B>,
    ) -> Option<Tensor<B, 3>> {
        let dt = residual.dtype();
        Some(self.LayerNorm.forward(to_dtype(tapped(&self.dense, x, taps)?, dt) + residual))
    }
}

impl<B: FusedOps> BertLayer<B> {
    /// `None` once `taps` is full (the pass ends there).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Option<&Tensor<B, 4>>,
        taps: &mut TapSink<B>,
    ) -> Option<Tensor<B, 3>> {
        let ctx = self.attention.self_.forward(x.clone(), bias.cloned(), taps)?;
        let x = self.attention.output.forward(ctx, x, taps)?;
        let dense = &self.intermediate.dense;
        let mid = self.intermediate.act.forward(tapped(dense, interior(x.clone(), dense), taps)?);
        self.output.forward(mid, x, taps)
    }
}

impl<B: FusedOps> BertModel<B> {
    /// Reads `config.json` and `model.safetensors` (keys with or without `bert.`; a missing
    /// pooler is allowed, as sentence-transformers checkpoints drop it).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let cpath = dir.join("config.json");
        let cfg: BertConfig = read_config(&cpath)?;
        let act = cfg.validate(&cpath)?;
        let mut checkpoint = Checkpoint::<B>::open(dir, "bert.", device)?;
        ignore_foreign(&mut checkpoint);
        // A BertModel loaded from a classifier's checkpoint: the head is not ours.
        checkpoint.ignore(|k| k.starts_with("classifier."));
        let model = Self::from_checkpoint(&cfg, act, &mut checkpoint, "")?;
        checkpoint.finish()?;
        Ok(model)
    }

    pub fn from_checkpoint(
        cfg: &BertConfig,
        act: Activation,
        checkpoint: &mut Checkpoint<B>,
        prefix: &str,
    ) -> Result<Self, ModelError> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let lin = WeightLayout::Linear;
        let e = format!("{prefix}embeddings");
        let embeddings = BertEmbeddings {
            word_embeddings: checkpoint.embedding(
                &format!("{e}.word_embeddings"),
                cfg.vocab_size,
                d,
            )?,
            position_embeddings: checkpoint.embedding(
                &format!("{e}.position_embeddings"),
                cfg.max_position_embeddings,
                d,
            )?,
            token_type_embeddings: checkpoint.embedding(
                &format!("{e}.token_type_embeddings"),
                cfg.type_vocab_size,
                d,
            )?,
            LayerNorm: checkpoint.layer_norm(&format!("{e}.LayerNorm"), d, eps)?,
        };
        let mut layer = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{i}");
            let a = format!("{p}.attention");
            layer.push(BertLayer {
                attention: BertAttention {
                    self_: SelfAttention::load(
                        checkpoint,
                        &format!("{a}.self"),
                        d,
                        cfg.num_attention_heads,
                        true,
                    )?,
                    output: BertOutput {
                        dense: checkpoint.linear(&format!("{a}.output.dense"), d, d, true, lin)?,
                        LayerNorm: checkpoint.layer_norm(
                            &format!("{a}.output.LayerNorm"),
                            d,
                            eps,
                        )?,
                    },
                },
                intermediate: BertIntermediate {
                    dense: checkpoint.linear(
                        &format!("{p}.intermediate.dense"),
                        d,
                        cfg.intermediate_size,
                        true,
                        lin,
                    )?,
                    act,
                },
                output: BertOutput {
                    dense: checkpoint.linear(
                        &format!("{p}.output.dense"),
                        cfg.intermediate_size,
                        d,
                        true,
                        lin,
                    )?,
                    LayerNorm: checkpoint.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?,
                },
            });
        }
        let pooler_path = format!("{prefix}pooler.dense");
        let pooler = if checkpoint.contains(&format!("{pooler_path}.weight")) {
            Some(BertPooler { dense: checkpoint.linear(&pooler_path, d, d, true, lin)? })
        } else {
            None
        };
        Ok(Self {
            embeddings,
            encoder: BertEncoder { layer },
            pooler,
            prefix: prefix.to_string(),
            config: cfg.clone(),
        })
    }

    /// Embeddings, LayerNorms and every linear layer under this model's prefix.
    fn state_dict(&self, state_dict: &mut StateDict) -> Result<(), ModelError> {
        let (pre, e) = (&self.prefix, &self.embeddings);
        state_dict.embedding(&format!("{pre}embeddings.word_embeddings"), &e.word_embeddings);
        state_dict
            .embedding(&format!("{pre}embeddings.position_embeddings"), &e.position_embeddings);
        state_dict
            .embedding(&format!("{pre}embeddings.token_type_embeddings"), &e.token_type_embeddings);
        state_dict.layer_norm(&format!("{pre}embeddings.LayerNorm"), &e.LayerNorm);
        for (i, l) in self.encoder.layer.iter().enumerate() {
            state_dict.layer_norm(
                &format!("{pre}encoder.layer.{i}.attention.output.LayerNorm"),
                &l.attention.output.LayerNorm,
            );
            state_dict.layer_norm(
                &format!("{pre}encoder.layer.{i}.output.LayerNorm"),
                &l.output.LayerNorm,
            );
        }
        for (path, lin) in self.linears() {
            state_dict.linear(&path, lin)?;
        }
        Ok(())
    }

    fn config_json(&self, architecture: &str) -> Result<serde_json::Value, ModelError> {
        let mut cfg =
            serde_json::to_value(&self.config).map_err(|e| ModelError::Input(e.to_string()))?;
        cfg["model_type"] = "bert".into();
        cfg["architectures"] = serde_json::json!([architecture]);
        Ok(cfg)
    }

    /// Writes `config.json` + `model.safetensors` (keys without `bert.`, as `BertModel` saves
    /// them). Adapters must be merged first.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        let mut state_dict = StateDict::default();
        self.state_dict(&mut state_dict)?;
        state_dict.save(dir, &self.config_json("BertModel")?)
    }

    pub fn hidden_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.shape().dims::<2>()[1]
    }

    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.shape().dims::<2>()[0]
    }

    pub fn vocab_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.shape().dims::<2>()[0]
    }

    /// `input_ids`, `attention_mask` (1 = token, 0 = padding) and `token_type_ids`, all
    /// `[batch, seq]`; missing masks mean no padding, missing token types mean all 0.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> BertModelOutput<B> {
        let mut sink = TapSink::all();
        let (last_hidden_state, pooler_output, hidden_states) = self
            .run(input_ids, attention_mask, token_type_ids, &mut sink)
            .expect("a pass without a tap limit runs to the end");
        BertModelOutput { last_hidden_state, pooler_output, hidden_states, taps: sink.taps }
    }

    /// The encoder into `taps`; `None` where the sink filled up before the end.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        taps: &mut TapSink<B>,
    ) -> Option<(Tensor<B, 3>, Option<Tensor<B, 2>>, Vec<Tensor<B, 3>>)> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let e = &self.embeddings;
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([b, t], &device));
        let x = e.word_embeddings.forward(input_ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        let mut x = e.LayerNorm.forward(x);
        let bias = padding_bias(attention_mask);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.encoder.layer {
            x = layer.forward(x, bias.as_ref(), taps)?;
            hidden_states.push(x.clone());
        }
        let pooler_output = match &self.pooler {
            Some(p) => {
                let [_, _, d] = x.dims();
                let cls = x.clone().narrow(1, 0, 1);
                Some(tapped(&p.dense, cls, taps)?.tanh().reshape([b, d]))
            }
            None => None,
        };
        Some((x, pooler_output, hidden_states))
    }

    fn push_linears<'a>(&'a self, v: &mut Vec<(String, &'a LoraLinear<B>)>) {
        let pre = &self.prefix;
        for (i, l) in self.encoder.layer.iter().enumerate() {
            let p = format!("{pre}encoder.layer.{i}");
            l.attention.self_.push_linears(&format!("{p}.attention.self"), v);
            v.push((format!("{p}.attention.output.dense"), &l.attention.output.dense));
            v.push((format!("{p}.intermediate.dense"), &l.intermediate.dense));
            v.push((format!("{p}.output.dense"), &l.output.dense));
        }
        if let Some(pool) = &self.pooler {
            v.push((format!("{pre}pooler.dense"), &pool.dense));
        }
    }

    fn push_linears_mut<'a>(&'a mut self, v: &mut Vec<(String, &'a mut LoraLinear<B>)>) {
        let pre = self.prefix.clone();
        for (i, l) in self.encoder.layer.iter_mut().enumerate() {
            let p = format!("{pre}encoder.layer.{i}");
            l.attention.self_.push_linears_mut(&format!("{p}.attention.self"), v);
            v.push((format!("{p}.attention.output.dense"), &mut l.attention.output.dense));
            v.push((format!("{p}.intermediate.dense"), &mut l.intermediate.dense));
            v.push((format!("{p}.output.dense"), &mut l.output.dense));
        }
        if let Some(pool) = &mut self.pooler {
            v.push((format!("{pre}pooler.dense"), &mut pool.dense));
        }
    }
}

/// Keys of real BERT checkpoints that belong to no module here: the `position_ids` buffer and
/// the pre-training heads (`cls.*`).
fn ignore_foreign<B: Backend>(checkpoint: &mut Checkpoint<B>) {
    checkpoint.ignore(|k| k.ends_with("embeddings.position_ids") || k.starts_with("cls."));
}

impl<B: FusedOps> LoraModel<B> for BertModel<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        self.push_linears(&mut v);
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        self.push_linears_mut(&mut v);
        v
    }

    fn canonical_path(&self, path: &str) -> String {
        path.strip_prefix("bert.").unwrap_or(path).to_string()
    }
}

/// `BertForSequenceClassification`: the pooled output (or the CLS state without a pooler)
/// through a linear classifier.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    pub bert: BertModel<B>,
    pub classifier: LoraLinear<B>,
}

impl<B: FusedOps> BertForSequenceClassification<B> {
    /// Reads a fine-tuned classifier (the `classifier` tensors must be there).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_inner(dir, None, device)
    }

    /// Reads a pre-trained encoder (e.g. a `BertModel` checkpoint) and puts a freshly
    /// initialised classifier with `num_labels` outputs on top (N(0, 0.02) weights, zero bias,
    /// as Hugging Face initialises it); a classifier in the checkpoint is replaced.
    /// The head's weights are drawn from `seed`.
    pub fn load_with_new_head(
        dir: &Path,
        num_labels: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::load_inner(dir, Some(NewHead { num_labels, seed }), device)
    }

    fn load_inner(
        dir: &Path,
        new_head: Option<NewHead>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let cpath = dir.join("config.json");
        let cfg: BertConfig = read_config(&cpath)?;
        let act = cfg.validate(&cpath)?;
        let mut checkpoint = Checkpoint::<B>::open(dir, "bert.", device)?;
        ignore_foreign(&mut checkpoint);
        let bert = BertModel::from_checkpoint(&cfg, act, &mut checkpoint, "bert.")?;
        let classifier =
            checkpoint.classifier(cfg.hidden_size, cfg.num_labels(), new_head, device)?;
        checkpoint.finish()?;
        Ok(Self { bert, classifier })
    }

    /// A freshly initialised classifier (N(0, 0.02) weights, as Hugging Face's
    /// `initializer_range`; with a pooler), `cfg.num_labels()` outputs, every parameter trainable.
    pub fn init(cfg: &BertConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        let path = Path::new("<config>");
        let act = cfg.validate(path)?;
        let mut checkpoint = Checkpoint::<B>::random(0.02, seed, device);
        let bert = BertModel::from_checkpoint(cfg, act, &mut checkpoint, "bert.")?;
        let classifier = checkpoint.linear(
            "classifier",
            cfg.hidden_size,
            cfg.num_labels(),
            true,
            WeightLayout::Linear,
        )?;
        Ok(lora_core::unfreeze(Self { bert, classifier }))
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.d_out()
    }

    /// Writes `config.json` + `model.safetensors` with `BertForSequenceClassification`'s keys.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        let mut state_dict = StateDict::default();
        self.bert.state_dict(&mut state_dict)?;
        state_dict.linear("classifier", &self.classifier)?;
        let mut cfg = self.bert.config_json("BertForSequenceClassification")?;
        let n = self.num_labels();
        if self.bert.config.num_labels() != n {
            cfg["id2label"] = (0..n)
                .map(|i| (i.to_string(), serde_json::Value::from(format!("LABEL_{i}"))))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        state_dict.save(dir, &cfg)
    }

    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> ClassifierOutput<B> {
        let mut sink = TapSink::all();
        let (logits, hidden_states, features) = self
            .run(input_ids, attention_mask, token_type_ids, &mut sink)
            .expect("a pass without a tap limit runs to the end");
        ClassifierOutput { logits, hidden_states, features, taps: sink.taps }
    }

    /// Only the taps of the adapted layers: the pass stops after the last of them.
    pub fn forward_taps(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Taps<B> {
        let mut sink = TapSink::first(lora_core::adapted_paths(self).len());
        let _ = self.run(input_ids, attention_mask, token_type_ids, &mut sink);
        sink.taps
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        taps: &mut TapSink<B>,
    ) -> Option<(Tensor<B, 2>, Vec<Tensor<B, 3>>, Tensor<B, 2>)> {
        let (last, pooled, hidden_states) =
            self.bert.run(input_ids, attention_mask, token_type_ids, taps)?;
        let features = match pooled {
            Some(p) => p,
            None => {
                let [b, _, d] = last.dims();
                last.narrow(1, 0, 1).reshape([b, d])
            }
        };
        let logits =
            tapped(&self.classifier, features.clone().unsqueeze_dim(1), taps)?.squeeze_dim(1);
        Some((logits, hidden_states, features))
    }
}

impl<B: FusedOps> LoraModel<B> for BertForSequenceClassification<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        self.bert.push_linears(&mut v);
        v.push(("classifier".into(), &self.classifier));
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        self.bert.push_linears_mut(&mut v);
        v.push(("classifier".into(), &mut self.classifier));
        v
    }

    /// Adapters made on the bare `BertModel` lack `bert.`.
    fn canonical_path(&self, path: &str) -> String {
        if path.starts_with("encoder.")
            || path.starts_with("pooler.")
            || path.starts_with("embeddings.")
        {
            format!("bert.{path}")
        } else {
            path.to_string()
        }
    }

    fn output_layers(&self) -> Vec<String> {
        vec!["classifier".into()]
    }
}
