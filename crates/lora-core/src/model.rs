//! Models that expose their linear layers by Hugging Face module path, and what can be done to
//! all of them at once: attach adapters by pattern, merge, count parameters.

use burn::module::Module;
use burn::tensor::backend::Backend;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::LoraError;
use crate::linear::LoraLinear;

/// A model whose linear layers are [`LoraLinear`]s, listed by the module path that Hugging Face
/// gives them in memory (`transformer.h.0.attn.c_attn`,
/// `bert.encoder.layer.0.attention.self.query`).
///
/// Both lists are in forward order; the taps of a forward pass come in the same order.
pub trait LoraModel<B: Backend> {
    fn linears(&self) -> Vec<(String, &LoraLinear<B>)>;
    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)>;

    /// Maps a module path written by another version of the reference code (or for the bare
    /// base model, without the head's prefix) to this model's path. The default strips or adds
    /// nothing.
    fn canonical_path(&self, path: &str) -> String {
        path.to_string()
    }

    /// The path that transformers of the generation `names` gives the module at `path` (one of
    /// [`LoraModel::linears`]' paths) in memory: the name a PEFT adapter must use to load there.
    /// The default is the same path for every generation.
    fn module_path(&self, path: &str, names: ModuleNames) -> String {
        let _ = names;
        path.to_string()
    }

    /// Module paths that `all-linear` leaves out (the output head), as PEFT does.
    fn output_layers(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Which generation of transformers' module names an adapter is written for. transformers 5
/// renamed some modules in memory while still reading the older checkpoint keys (ViT's
/// `encoder.layer.N.attention.attention.query` became `layers.N.attention.q_proj`); PEFT looks
/// adapters up by the in-memory name, so an adapter loads only into the generation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ModuleNames {
    /// transformers 4's names, which are also the checkpoint keys of every version.
    #[serde(rename = "transformers-4")]
    Transformers4,
    /// transformers 5's names (the version the parity fixtures and CI pin).
    #[default]
    #[serde(rename = "transformers-5")]
    Transformers5,
}

impl std::fmt::Display for ModuleNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleNames::Transformers4 => "transformers-4",
            ModuleNames::Transformers5 => "transformers-5",
        })
    }
}

/// PEFT's `target_modules`: a list of names (a module matches when its path equals a name or
/// ends with `.name`), a regular expression that must match the whole path, or `all-linear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Pattern(String),
}

impl TargetModules {
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        Self::List(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Parses a comma-separated list (`query,value`), or a regex / `all-linear` when there is a
    /// single entry with regex characters.
    pub fn parse(spec: &str) -> Self {
        let spec = spec.trim();
        if spec == "all-linear" || spec.chars().any(|c| "^$*+?()[]|\\".contains(c)) {
            Self::Pattern(spec.to_string())
        } else {
            Self::List(
                spec.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            )
        }
    }

    pub fn matcher(&self) -> Result<Matcher, LoraError> {
        Ok(match self {
            Self::List(names) => Matcher::Names(names.clone()),
            Self::Pattern(p) if p == "all-linear" => Matcher::AllLinear,
            Self::Pattern(p) => Matcher::Regex(
                Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| LoraError::Config(format!("target_modules `{p}`: {e}")))?,
            ),
        })
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::List(v) => write!(f, "{}", v.join(",")),
            Self::Pattern(p) => write!(f, "{p}"),
        }
    }
}

pub enum Matcher {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

impl Matcher {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Names(names) => {
                names.iter().any(|n| path == n || path.ends_with(&format!(".{n}")))
            }
            Self::Regex(re) => re.is_match(path),
            Self::AllLinear => true,
        }
    }
}

/// What to attach: rank, alpha, targets, rsLoRA scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    /// Seed of the A matrices (each layer gets its own stream, derived from its position).
    #[serde(default)]
    pub seed: u64,
}

impl LoraConfig {
    pub fn new(r: usize, alpha: f64, target_modules: TargetModules) -> Self {
        Self { r, alpha, target_modules, use_rslora: false, seed: 0 }
    }
}

/// Attaches fresh adapters (B = 0) to every linear layer that `config.target_modules` selects
/// and freezes everything else. Returns the adapted paths in forward order; selecting nothing is
/// an error (PEFT raises too), since an adapter that trains nothing is always a mistake.
pub fn attach_lora<B: Backend, M: LoraModel<B> + Module<B>>(
    model: M,
    config: &LoraConfig,
) -> Result<(M, Vec<String>), LoraError> {
    if config.r == 0 {
        return Err(LoraError::Config("LoRA rank r must be at least 1".into()));
    }
    let matcher = config.target_modules.matcher()?;
    let mut model = model.no_grad();
    let skip =
        if matches!(matcher, Matcher::AllLinear) { model.output_layers() } else { Vec::new() };
    let mut adapted = Vec::new();
    for (i, (path, lin)) in model.linears_mut().into_iter().enumerate() {
        if matcher.matches(&path) && !skip.contains(&path) {
            let seed = config.seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(i as u64 + 1);
            lin.attach(config.r, config.alpha, config.use_rslora, seed);
            adapted.push(path);
        }
    }
    if adapted.is_empty() {
        let available: Vec<String> = model.linears().into_iter().map(|(p, _)| p).collect();
        return Err(LoraError::NoTarget { targets: config.target_modules.to_string(), available });
    }
    Ok((model, adapted))
}

/// Makes every parameter trainable (full fine-tuning, or training from scratch): the opposite
/// of `Module::no_grad`, which [`attach_lora`] applies before adding adapters.
pub fn unfreeze<B: Backend, M: Module<B>>(model: M) -> M {
    struct Unfreeze;
    impl<B: Backend> burn::module::ModuleMapper<B> for Unfreeze {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
            param.set_require_grad(true)
        }
    }
    model.map(&mut Unfreeze)
}

/// Paths of the layers that carry an adapter, in forward order.
pub fn adapted_paths<B: Backend, M: LoraModel<B>>(model: &M) -> Vec<String> {
    model.linears().into_iter().filter(|(_, l)| l.lora.is_some()).map(|(p, _)| p).collect()
}

pub fn merge<B: Backend, M: LoraModel<B>>(model: &mut M) {
    model.linears_mut().into_iter().for_each(|(_, l)| l.merge());
}

pub fn unmerge<B: Backend, M: LoraModel<B>>(model: &mut M) {
    model.linears_mut().into_iter().for_each(|(_, l)| l.unmerge());
}

/// Merges every adapter into its base weight and drops the adapters.
pub fn merge_and_unload<B: Backend, M: LoraModel<B>>(model: &mut M) {
    model.linears_mut().into_iter().for_each(|(_, l)| l.merge_and_unload());
}

/// Stores every frozen base weight of the linear layers in `dtype` (`--dtype bf16`): their
/// products then run in that type while activations, adapters, norms and the loss stay in the
/// backend's float type (see [`LoraLinear::set_base_dtype`]).
pub fn set_base_dtype<B: Backend, M: LoraModel<B>>(model: &mut M, dtype: burn::tensor::DType) {
    model.linears_mut().into_iter().for_each(|(_, l)| l.set_base_dtype(dtype));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    pub total: usize,
    pub trainable: usize,
}

/// Total parameters (base + adapters) and trainable ones (the adapters).
pub fn count_params<B: Backend, M: LoraModel<B> + Module<B>>(model: &M) -> ParamCount {
    let trainable = model
        .linears()
        .iter()
        .filter_map(|(_, l)| l.lora.as_ref())
        .map(|a| a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements())
        .sum();
    ParamCount { total: model.num_params(), trainable }
}
