//! ViT (`ViTForImageClassification`): pre-norm encoder over patch embeddings plus a CLS token,
//! classifier on the final-normed CLS state. Module tree and names as in Hugging Face's
//! `modeling_vit.py` (the checkpoint's names, which transformers 5 still writes).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use lora_core::{LoraLinear, LoraModel, ModuleNames, WeightLayout};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::activations::Activation;
use crate::attention::SelfAttention;
use crate::checkpoint::{Checkpoint, NewHead};
use crate::config::{check_divisible, check_sizes, read_config, sum_of_products};
use crate::layer_norm::LayerNorm;
use crate::outputs::ClassifierOutput;
use crate::precision::interior;
use crate::state_dict::StateDict;
use crate::taps::{TapSink, tapped};
use lora_core::{Taps, to_dtype};
use rfa_fused::FusedOps;

/// `config.json` of a ViT. Absent optional fields stay absent when written: transformers reads a
/// `null` `num_labels` as a value and fails.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Every other field of `config.json`, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn three() -> usize {
    3
}
fn gelu() -> String {
    "gelu".into()
}
fn eps() -> f64 {
    1e-12
}
fn yes() -> bool {
    true
}

impl VitConfig {
    /// A ViT of the given shape with `labels` classes named by `id2label`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        image_size: usize,
        patch_size: usize,
        num_channels: usize,
        hidden_size: usize,
        layers: usize,
        heads: usize,
        intermediate_size: usize,
        labels: &[String],
    ) -> Self {
        Self {
            image_size,
            patch_size,
            num_channels,
            hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size,
            hidden_act: gelu(),
            layer_norm_eps: eps(),
            qkv_bias: true,
            id2label: Some(
                labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect(),
            ),
            num_labels: None,
            extra: serde_json::Map::new(),
        }
    }

    /// `config.json` as Hugging Face writes it for `ViTForImageClassification`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        o.insert("model_type".into(), "vit".into());
        o.insert("architectures".into(), serde_json::json!(["ViTForImageClassification"]));
        if let Some(m) = &self.id2label {
            let label2id: serde_json::Map<String, serde_json::Value> =
                m.iter().map(|(k, v)| (v.clone(), k.parse::<u64>().unwrap_or(0).into())).collect();
            o.insert("label2id".into(), label2id.into());
        }
        v
    }

    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2)
    }

    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<Activation, ModelError> {
        let (h, i, l) = (self.hidden_size, self.intermediate_size, self.num_hidden_layers);
        check_sizes(
            path,
            &[
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
                ("num_channels", self.num_channels),
                ("hidden_size", h),
                ("num_hidden_layers", l),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", i),
            ],
            || {
                let patches = (self.image_size / self.patch_size).saturating_pow(2);
                let patch_in = self.patch_size.saturating_pow(2).saturating_mul(self.num_channels);
                sum_of_products(&[
                    &[l, 4, h, h],
                    &[l, 2, h, i],
                    &[patches.saturating_add(1), h],
                    &[patch_in, h],
                ])
            },
        )?;
        check_divisible(path, self.hidden_size, self.num_attention_heads)?;
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            });
        }
        Activation::parse(&self.hidden_act, path)
    }
}

/// `patch_embeddings.projection` is a `Conv2d` with stride = kernel = patch size, i.e. a linear
/// map of each flattened `[channels, p, p]` patch; it is kept as that linear layer.
#[derive(Module, Debug)]
pub struct VitEmbeddings<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    pub position_embeddings: Param<Tensor<B, 3>>,
    pub projection: LoraLinear<B>,
    pub patch_size: usize,
    pub num_channels: usize,
}

#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    /// `attention.attention`
    pub attention: SelfAttention<B>,
    /// `attention.output.dense`
    pub output: LoraLinear<B>,
}

#[derive(Module, Debug)]
pub struct VitLayer<B: Backend> {
    pub layernorm_before: LayerNorm<B>,
    pub attention: VitAttention<B>,
    pub layernorm_after: LayerNorm<B>,
    /// `intermediate.dense`
    pub intermediate: LoraLinear<B>,
    /// `output.dense`
    pub output: LoraLinear<B>,
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct VitModel<B: Backend> {
    pub embeddings: VitEmbeddings<B>,
    pub layer: Vec<VitLayer<B>>,
    pub layernorm: LayerNorm<B>,
}

pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// `preprocessor_config.json` for what rfa does to images when a checkpoint has none (ViT's
/// defaults): resize bilinearly to the model's size, scale by 1/255, normalise with mean = std =
/// 0.5 per channel. transformers' `AutoImageProcessor` reads it as a `ViTImageProcessor`.
pub fn default_preprocessor(cfg: &VitConfig) -> serde_json::Value {
    let c = cfg.num_channels;
    serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": { "height": cfg.image_size, "width": cfg.image_size },
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": vec![0.5; c],
        "image_std": vec![0.5; c],
    })
}

/// ViT's linear layers below `vit.layers.N.` as transformers 5 names them in memory, beside the
/// checkpoint's names below `vit.encoder.layer.N.` (which every version reads).
const TRANSFORMERS5_LEAVES: [(&str, &str); 6] = [
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
];

#[derive(Module, Debug)]
pub struct VitForImageClassification<B: Backend> {
    pub vit: VitModel<B>,
    pub classifier: LoraLinear<B>,
    pub config: VitConfig,
    /// Hugging Face's `preprocessor_config.json` (`image_mean`, `image_std`, `size`, …) when the
    /// checkpoint has one; written back by `save_pretrained`.
    pub preprocessor: Option<serde_json::Value>,
}

impl<B: Backend> VitEmbeddings<B> {
    /// `[batch, channels, h, w]` → `[batch, 1 + patches, hidden]`.
    fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [b, c, gh, p, gw, p] → [b, gh, gw, c, p, p]: each row is one patch in the conv kernel's
        // order.
        let patches = pixels.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([
            b,
            gh * gw,
            c * p * p,
        ]);
        let x = self.projection.forward(patches);
        let [_, _, d] = x.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        Tensor::cat(vec![cls, x], 1) + self.position_embeddings.val()
    }
}

impl<B: FusedOps> VitLayer<B> {
    /// `None` once `taps` is full (the pass ends there).
    fn forward(&self, x: Tensor<B, 3>, taps: &mut TapSink<B>) -> Option<Tensor<B, 3>> {
        let dt = x.dtype();
        let ctx = self.attention.attention.forward(
            self.layernorm_before.forward(x.clone()),
            None,
            taps,
        )?;
        let x = x + to_dtype(tapped(&self.attention.output, ctx, taps)?, dt);
        let mid = self.act.forward(tapped(
            &self.intermediate,
            interior(self.layernorm_after.forward(x.clone()), &self.intermediate),
            taps,
        )?);
        Some(x + to_dtype(tapped(&self.output, mid, taps)?, dt))
    }
}

impl<B: FusedOps> VitForImageClassification<B> {
    /// Reads a fine-tuned classifier from `config.json` + `model.safetensors` (keys with or
    /// without `vit.`; a `pooler`, which this head does not use, is ignored).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_inner(dir, None, device)
    }

    /// Reads a pre-trained encoder and puts a fresh classifier with `num_labels` outputs on it.
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
        let mut cfg: VitConfig = read_config(&cpath)?;
        let act = cfg.validate(&cpath)?;
        let mut checkpoint = Checkpoint::<B>::open(dir, "vit.", device)?;
        checkpoint.ignore(|k| k.contains("pooler."));
        let vit = VitModel::from_checkpoint(&cfg, act, &mut checkpoint)?;
        let classifier =
            checkpoint.classifier(cfg.hidden_size, cfg.num_labels(), new_head, device)?;
        if let Some(h) = new_head.filter(|h| h.num_labels != cfg.num_labels()) {
            cfg.id2label =
                Some((0..h.num_labels).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect());
        }
        checkpoint.finish()?;
        let pp = dir.join(PREPROCESSOR_CONFIG);
        let preprocessor =
            if pp.is_file() { Some(read_config::<serde_json::Value>(&pp)?) } else { None };
        Ok(Self { vit, classifier, config: cfg, preprocessor })
    }

    /// A freshly initialised model (N(0, 0.02) weights, as Hugging Face's `initializer_range`),
    /// every parameter trainable.
    pub fn init(cfg: &VitConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        let act = cfg.validate(Path::new("<config>"))?;
        let mut checkpoint = Checkpoint::<B>::random(0.02, seed, device);
        let vit = VitModel::from_checkpoint(cfg, act, &mut checkpoint)?;
        let classifier = checkpoint.linear(
            "classifier",
            cfg.hidden_size,
            cfg.num_labels(),
            true,
            WeightLayout::Linear,
        )?;
        Ok(lora_core::unfreeze(Self { vit, classifier, config: cfg.clone(), preprocessor: None }))
    }

    /// Writes `config.json` + `model.safetensors` under the checkpoint's key names, as
    /// `save_pretrained` does. Adapters must be merged first.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        let mut state_dict = StateDict::default();
        let e = &self.vit.embeddings;
        let [pd, d] = e.projection.base.weight.dims();
        let p = e.patch_size;
        let c = pd / (p * p);
        state_dict.tensor("vit.embeddings.cls_token", e.cls_token.val());
        state_dict.tensor("vit.embeddings.position_embeddings", e.position_embeddings.val());
        if e.projection.lora.is_some() && !e.projection.merged {
            return Err(ModelError::Input("patch projection carries an unmerged adapter".into()));
        }
        state_dict.tensor(
            "vit.embeddings.patch_embeddings.projection.weight",
            e.projection.base.weight.val().transpose().reshape([d, c, p, p]),
        );
        if let Some(b) = &e.projection.base.bias {
            state_dict.tensor("vit.embeddings.patch_embeddings.projection.bias", b.val());
        }
        for (i, l) in self.vit.layer.iter().enumerate() {
            let k = format!("vit.encoder.layer.{i}");
            state_dict.layer_norm(&format!("{k}.layernorm_before"), &l.layernorm_before);
            state_dict.layer_norm(&format!("{k}.layernorm_after"), &l.layernorm_after);
        }
        state_dict.layer_norm("vit.layernorm", &self.vit.layernorm);
        for (path, lin) in self.linears() {
            state_dict.linear(&path, lin)?;
        }
        state_dict.save(dir, &self.config.to_json())?;
        // A checkpoint without one was fed with ViT's defaults: the file says so to other tools.
        let pp = self.preprocessor.clone().unwrap_or_else(|| default_preprocessor(&self.config));
        let json =
            serde_json::to_string_pretty(&pp).map_err(|e| ModelError::Input(e.to_string()))?;
        lora_core::tensors::write_atomic(&dir.join(PREPROCESSOR_CONFIG), json.as_bytes())?;
        Ok(())
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.d_out()
    }

    /// Per-channel normalisation `(mean, std)` from `preprocessor_config.json` (when it asks for
    /// normalisation), else ViT's default 0.5 / 0.5.
    pub fn normalisation(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.config.num_channels;
        let get = |k: &str| -> Option<Vec<f32>> {
            let v = self.preprocessor.as_ref()?.get(k)?;
            match v {
                serde_json::Value::Array(a) => {
                    a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
                }
                serde_json::Value::Number(n) => n.as_f64().map(|f| vec![f as f32; c]),
                _ => None,
            }
        };
        let off = self
            .preprocessor
            .as_ref()
            .and_then(|p| p.get("do_normalize"))
            .and_then(|v| v.as_bool())
            == Some(false);
        if off {
            return (vec![0.0; c], vec![1.0; c]);
        }
        match (get("image_mean"), get("image_std")) {
            (Some(m), Some(s)) if m.len() == c && s.len() == c => (m, s),
            _ => (vec![0.5; c], vec![0.5; c]),
        }
    }

    /// `pixel_values [batch, channels, image_size, image_size]`, already normalised.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> ClassifierOutput<B> {
        let mut sink = TapSink::all();
        let (logits, hidden_states, features) =
            self.run(pixel_values, &mut sink).expect("a pass without a tap limit runs to the end");
        ClassifierOutput { logits, hidden_states, features, taps: sink.taps }
    }

    /// Only the taps of the adapted layers: the pass stops after the last of them.
    pub fn forward_taps(&self, pixel_values: Tensor<B, 4>) -> Taps<B> {
        let mut sink = TapSink::first(lora_core::adapted_paths(self).len());
        let _ = self.run(pixel_values, &mut sink);
        sink.taps
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        pixel_values: Tensor<B, 4>,
        taps: &mut TapSink<B>,
    ) -> Option<(Tensor<B, 2>, Vec<Tensor<B, 3>>, Tensor<B, 2>)> {
        let mut x = self.vit.embeddings.forward(pixel_values);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.vit.layer {
            x = layer.forward(x, taps)?;
            hidden_states.push(x.clone());
        }
        let x = self.vit.layernorm.forward(x);
        let [b, _, d] = x.dims();
        let cls = x.narrow(1, 0, 1);
        let logits = tapped(&self.classifier, cls.clone(), taps)?.reshape([b, self.num_labels()]);
        Some((logits, hidden_states, cls.reshape([b, d])))
    }
}

impl<B: FusedOps> VitModel<B> {
    pub fn from_checkpoint(
        cfg: &VitConfig,
        act: Activation,
        checkpoint: &mut Checkpoint<B>,
    ) -> Result<Self, ModelError> {
        let (d, eps, lin) = (cfg.hidden_size, cfg.layer_norm_eps, WeightLayout::Linear);
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let conv = checkpoint
            .tensor::<4>("vit.embeddings.patch_embeddings.projection.weight", [d, c, p, p])?;
        let conv_b =
            checkpoint.tensor::<1>("vit.embeddings.patch_embeddings.projection.bias", [d])?;
        let embeddings = VitEmbeddings {
            cls_token: checkpoint.frozen("vit.embeddings.cls_token", [1, 1, d])?,
            position_embeddings: checkpoint
                .frozen("vit.embeddings.position_embeddings", [1, cfg.num_patches() + 1, d])?,
            projection: LoraLinear::from_weights(
                conv.reshape([d, c * p * p]).transpose(),
                Some(conv_b),
                lin,
            ),
            patch_size: p,
            num_channels: c,
        };
        let mut layer = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("vit.encoder.layer.{i}");
            let a = format!("{l}.attention");
            layer.push(VitLayer {
                layernorm_before: checkpoint.layer_norm(
                    &format!("{l}.layernorm_before"),
                    d,
                    eps,
                )?,
                attention: VitAttention {
                    attention: SelfAttention::load(
                        checkpoint,
                        &format!("{a}.attention"),
                        d,
                        cfg.num_attention_heads,
                        cfg.qkv_bias,
                    )?,
                    output: checkpoint.linear(&format!("{a}.output.dense"), d, d, true, lin)?,
                },
                layernorm_after: checkpoint.layer_norm(&format!("{l}.layernorm_after"), d, eps)?,
                intermediate: checkpoint.linear(
                    &format!("{l}.intermediate.dense"),
                    d,
                    cfg.intermediate_size,
                    true,
                    lin,
                )?,
                output: checkpoint.linear(
                    &format!("{l}.output.dense"),
                    cfg.intermediate_size,
                    d,
                    true,
                    lin,
                )?,
                act,
            });
        }
        Ok(Self { embeddings, layer, layernorm: checkpoint.layer_norm("vit.layernorm", d, eps)? })
    }
}

impl<B: FusedOps> LoraModel<B> for VitForImageClassification<B> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, l) in self.vit.layer.iter().enumerate() {
            let p = format!("vit.encoder.layer.{i}");
            l.attention.attention.push_linears(&format!("{p}.attention.attention"), &mut v);
            v.push((format!("{p}.attention.output.dense"), &l.attention.output));
            v.push((format!("{p}.intermediate.dense"), &l.intermediate));
            v.push((format!("{p}.output.dense"), &l.output));
        }
        v.push(("classifier".into(), &self.classifier));
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, l) in self.vit.layer.iter_mut().enumerate() {
            let p = format!("vit.encoder.layer.{i}");
            l.attention.attention.push_linears_mut(&format!("{p}.attention.attention"), &mut v);
            v.push((format!("{p}.attention.output.dense"), &mut l.attention.output));
            v.push((format!("{p}.intermediate.dense"), &mut l.intermediate));
            v.push((format!("{p}.output.dense"), &mut l.output));
        }
        v.push(("classifier".into(), &mut self.classifier));
        v
    }

    /// Key map for adapters saved by transformers 5, which names ViT's modules differently in
    /// memory than in its checkpoint ([`TRANSFORMERS5_LEAVES`]). Paths of the bare `ViTModel`
    /// (without `vit.`) are accepted too.
    fn canonical_path(&self, path: &str) -> String {
        let path = if path.starts_with("encoder.")
            || path.starts_with("layers.")
            || path.starts_with("embeddings.")
        {
            format!("vit.{path}")
        } else {
            path.to_string()
        };
        let Some(rest) = path.strip_prefix("vit.layers.") else { return path };
        let Some((n, leaf)) = rest.split_once('.') else { return path };
        let mapped = TRANSFORMERS5_LEAVES
            .iter()
            .find(|(v5, _)| *v5 == leaf)
            .map_or(leaf, |(_, checkpoint)| *checkpoint);
        format!("vit.encoder.layer.{n}.{mapped}")
    }

    fn module_path(&self, path: &str, names: ModuleNames) -> String {
        if names == ModuleNames::Transformers4 {
            return path.to_string();
        }
        let Some(rest) = path.strip_prefix("vit.encoder.layer.") else { return path.to_string() };
        let Some((n, leaf)) = rest.split_once('.') else { return path.to_string() };
        match TRANSFORMERS5_LEAVES.iter().find(|(_, checkpoint)| *checkpoint == leaf) {
            Some((v5, _)) => format!("vit.layers.{n}.{v5}"),
            None => path.to_string(),
        }
    }

    fn output_layers(&self) -> Vec<String> {
        vec!["classifier".into()]
    }
}
