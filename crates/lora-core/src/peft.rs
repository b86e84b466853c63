//! PEFT's adapter format, both ways: `adapter_config.json` + `adapter_model.safetensors` with the
//! keys `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `.lora_B.weight`
//! (`[out, r]`). PEFT stores A and B in `torch.nn.Linear` layout whatever the base layer is;
//! `fan_in_fan_out` only says that the base weight (GPT-2's `Conv1D`) is stored `[in, out]`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::LoraError;
use crate::linear::{LoraAdapter, LoraLinear, WeightLayout};
use crate::model::{LoraModel, ModuleNames, TargetModules};
use crate::tensors::{HostTensor, TensorFile, write_atomic, write_safetensors};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";
/// The metadata key of `adapter_model.safetensors` that records which transformers generation's
/// module names the adapter uses ([`ModuleNames`]). It is kept out of `adapter_config.json`
/// because PEFT warns about any key its `LoraConfig` does not know, telling the user to upgrade.
pub const MODULE_NAMES_METADATA: &str = "rfa.module_names";

/// The fields of PEFT's `LoraConfig` that change what an adapter computes. Other fields are kept
/// in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f64>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn bias_none() -> String {
    "none".into()
}

impl PeftConfig {
    pub fn read(path: &Path) -> Result<Self, LoraError> {
        let text = crate::tensors::read_text_limited(path, crate::tensors::CONFIG_MAX_BYTES)
            .map_err(|e| LoraError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::parse(&text, path)
    }

    /// [`PeftConfig::read`] on text already read; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LoraError> {
        let cfg: Self = serde_json::from_str(text)
            .map_err(|e| LoraError::Json { path: path.to_path_buf(), reason: e.to_string() })?;
        let unsupported = |what: String| LoraError::Unsupported { path: path.to_path_buf(), what };
        if cfg.peft_type != "LORA" {
            return Err(unsupported(format!("peft_type {}", cfg.peft_type)));
        }
        if cfg.use_dora {
            return Err(unsupported("use_dora = true (DoRA)".into()));
        }
        if cfg.bias != "none" {
            return Err(unsupported(format!("bias = {:?} (trained biases)", cfg.bias)));
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(unsupported("modules_to_save (fully trained extra modules)".into()));
        }
        Ok(cfg)
    }

    /// PEFT's pattern lookup for `rank_pattern` / `alpha_pattern`: a key matches a module path
    /// when the path ends with it at a `.` boundary (keys may be regexes).
    fn pattern_value<T: Copy>(patterns: &HashMap<String, T>, path: &str) -> Option<T> {
        let mut keys: Vec<&String> = patterns.keys().collect();
        keys.sort();
        keys.into_iter()
            .find(|k| Regex::new(&format!(r"(^|.*\.){k}$")).is_ok_and(|re| re.is_match(path)))
            .map(|k| patterns[k])
    }

    pub fn alpha_for(&self, path: &str) -> f64 {
        Self::pattern_value(&self.alpha_pattern, path).unwrap_or(self.lora_alpha)
    }

    /// The rank the config gives the layer at `path`: `rank_pattern`'s, else `r`.
    pub fn rank_for(&self, path: &str) -> usize {
        Self::pattern_value(&self.rank_pattern, path).unwrap_or(self.r)
    }
}

/// Loads a PEFT adapter from `dir` into `model`'s matching layers (replacing adapters they had).
/// Every tensor must find its layer, with matching shapes; A and B must come in pairs.
pub fn load_adapter<B: Backend, M: LoraModel<B>>(
    model: &mut M,
    dir: &Path,
) -> Result<PeftConfig, LoraError> {
    let cfg = PeftConfig::read(&dir.join(ADAPTER_CONFIG))?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let mut file = TensorFile::open(&wpath)?;
    let device = model
        .linears()
        .first()
        .map(|(_, l)| l.base.weight.device())
        .ok_or_else(|| LoraError::Config("model has no linear layers".into()))?;

    // Group the keys by module path.
    let mut pairs: BTreeMap<String, (Option<HostTensor>, Option<HostTensor>)> = BTreeMap::new();
    for (key, t) in std::mem::take(&mut file.tensors) {
        let bad = |why: &str| LoraError::BadKey {
            path: wpath.clone(),
            key: key.clone(),
            reason: why.to_string(),
        };
        let rest = key
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| bad("does not start with `base_model.model.`"))?;
        let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(bad(
                "only `lora_A.weight` / `lora_B.weight` of linear layers are supported",
            ));
        };
        let slot = pairs.entry(model.canonical_path(module)).or_default();
        if which == 0 { slot.0 = Some(t) } else { slot.1 = Some(t) }
    }
    if pairs.is_empty() {
        return Err(LoraError::BadKey {
            path: wpath,
            key: String::new(),
            reason: "the adapter holds no tensors".into(),
        });
    }

    let rslora = cfg.use_rslora;
    let mut linears: HashMap<String, &mut LoraLinear<B>> =
        model.linears_mut().into_iter().collect();
    let available = || {
        let mut v: Vec<String> = linears.keys().cloned().collect();
        v.sort();
        v
    };
    let mut updates = Vec::new();
    for (module, (a, b)) in pairs {
        let Some(lin) = linears.get(&module) else {
            return Err(LoraError::UnknownModule {
                path: wpath.clone(),
                module,
                available: available(),
            });
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(LoraError::BadKey {
                path: wpath.clone(),
                key: module,
                reason: "lora_A and lora_B must both be present".into(),
            });
        };
        let (d_in, d_out) = (lin.d_in(), lin.d_out());
        let r = a.shape.first().copied().unwrap_or(0);
        let shape_err = |key: &str, expected: Vec<usize>, found: &Vec<usize>| LoraError::Shape {
            path: wpath.clone(),
            key: format!("{KEY_PREFIX}{module}.{key}"),
            expected,
            found: found.clone(),
        };
        if a.shape != [r, d_in] || r == 0 {
            return Err(shape_err("lora_A.weight", vec![r.max(1), d_in], &a.shape));
        }
        if b.shape != [d_out, r] {
            return Err(shape_err("lora_B.weight", vec![d_out, r], &b.shape));
        }
        // PEFT scales by the config's rank: tensors of another rank would be scaled differently
        // there than here.
        let configured = cfg.rank_for(&module);
        if r != configured {
            return Err(LoraError::BadKey {
                path: wpath.clone(),
                key: format!("{KEY_PREFIX}{module}.lora_A.weight"),
                reason: format!(
                    "has rank {r}, {} gives this layer rank {configured}",
                    dir.join(ADAPTER_CONFIG).display()
                ),
            });
        }
        // PEFT's [r, in] / [out, r] are the transposes of our A [in, r] / B [r, out].
        let ta = a.to_tensor::<B, 2>(&device).transpose();
        let tb = b.to_tensor::<B, 2>(&device).transpose();
        let alpha = cfg.alpha_for(&module);
        updates.push((module, LoraAdapter::from_tensors(ta, tb, alpha, rslora)));
    }
    for (module, adapter) in updates {
        let lin = linears.get_mut(&module).expect("checked above");
        lin.lora = Some(adapter);
        lin.merged = false;
    }
    Ok(cfg)
}

/// Writes the model's adapters to `dir` in PEFT's format, with module paths as the transformers
/// generation `names` has them (the generation is recorded in the weights file's metadata under
/// [`MODULE_NAMES_METADATA`]). `base_model_name_or_path` goes into the config as PEFT writes it.
/// Both files are written atomically.
pub fn save_adapter<B: Backend, M: LoraModel<B>>(
    model: &M,
    dir: &Path,
    base_model_name_or_path: Option<&str>,
    names: ModuleNames,
) -> Result<PeftConfig, LoraError> {
    let mut tensors = BTreeMap::new();
    let mut ranks: BTreeMap<String, usize> = BTreeMap::new();
    let mut alphas: BTreeMap<String, f64> = BTreeMap::new();
    let mut leaves = Vec::new();
    let mut fan_in_fan_out = None;
    let mut rslora = None;
    for (path, lin) in model.linears() {
        let Some(lora) = &lin.lora else { continue };
        let path = model.module_path(&path, names);
        let a = HostTensor::from_tensor(lora.lora_a.val().transpose());
        let b = HostTensor::from_tensor(lora.lora_b.val().transpose());
        tensors.insert(format!("{KEY_PREFIX}{path}.lora_A.weight"), a);
        tensors.insert(format!("{KEY_PREFIX}{path}.lora_B.weight"), b);
        ranks.insert(path.clone(), lora.r);
        alphas.insert(path.clone(), lora.alpha);
        let is_rslora = lora.rslora;
        if rslora.replace(is_rslora).is_some_and(|prev| prev != is_rslora) {
            return Err(LoraError::Config(
                "adapters mix rsLoRA and plain LoRA scaling: PEFT cannot express that".into(),
            ));
        }
        let fan = lin.layout == WeightLayout::Conv1D;
        if fan_in_fan_out.replace(fan).is_some_and(|prev| prev != fan) {
            return Err(LoraError::Config(
                "adapters on both Linear and Conv1D layers: PEFT's single fan_in_fan_out flag cannot express that".into(),
            ));
        }
        let leaf = path.rsplit('.').next().unwrap_or(&path).to_string();
        if !leaves.contains(&leaf) {
            leaves.push(leaf);
        }
    }
    if tensors.is_empty() {
        return Err(LoraError::Config("the model has no adapters to save".into()));
    }
    // The most common rank / alpha become the defaults, the others go into the patterns.
    let mode = |vals: Vec<String>| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        vals.into_iter().for_each(|v| *counts.entry(v).or_default() += 1);
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(v, _)| v).unwrap_or_default()
    };
    let r: usize = mode(ranks.values().map(|v| v.to_string()).collect()).parse().unwrap_or(8);
    let lora_alpha: f64 =
        mode(alphas.values().map(|v| v.to_string()).collect()).parse().unwrap_or(16.0);
    let rank_pattern = ranks
        .into_iter()
        .filter(|(_, v)| *v != r)
        .map(|(p, v)| (format!("^{}$", regex::escape(&p)), v))
        .collect();
    let alpha_pattern = alphas
        .into_iter()
        .filter(|(_, v)| *v != lora_alpha)
        .map(|(p, v)| (format!("^{}$", regex::escape(&p)), v))
        .collect();
    leaves.sort();
    let mut extra = serde_json::Map::new();
    extra.insert("inference_mode".into(), true.into());
    extra.insert("init_lora_weights".into(), true.into());
    extra.insert("layers_to_transform".into(), serde_json::Value::Null);
    extra.insert("layers_pattern".into(), serde_json::Value::Null);
    extra.insert("revision".into(), serde_json::Value::Null);
    let cfg = PeftConfig {
        peft_type: lora_type(),
        r,
        lora_alpha,
        target_modules: Some(TargetModules::List(leaves)),
        fan_in_fan_out: fan_in_fan_out.unwrap_or(false),
        use_rslora: rslora.unwrap_or(false),
        use_dora: false,
        bias: bias_none(),
        rank_pattern,
        alpha_pattern,
        modules_to_save: None,
        base_model_name_or_path: base_model_name_or_path.map(str::to_string),
        task_type: None,
        lora_dropout: 0.0,
        extra,
    };
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| LoraError::Config(e.to_string()))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(MODULE_NAMES_METADATA.to_string(), names.to_string());
    write_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors, Some(meta))?;
    write_atomic(&dir.join(ADAPTER_CONFIG), json.as_bytes())?;
    Ok(cfg)
}

/// The adapter's files in `dir`, for messages.
pub fn adapter_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(ADAPTER_CONFIG), dir.join(ADAPTER_WEIGHTS))
}
