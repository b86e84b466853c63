//! Reading a model's `config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::ModelError;

/// Reads a `config.json` into a config struct, naming the file in every error.
pub fn read_config<C: DeserializeOwned>(path: &Path) -> Result<C, ModelError> {
    let text = lora_core::tensors::read_text_limited(path, lora_core::tensors::CONFIG_MAX_BYTES)
        .map_err(|e| ModelError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    parse_config(&text, path)
}

/// [`read_config`] on text already read; `path` names it in errors.
pub fn parse_config<C: DeserializeOwned>(text: &str, path: &Path) -> Result<C, ModelError> {
    serde_json::from_str(text)
        .map_err(|e| ModelError::Config { path: path.to_path_buf(), reason: e.to_string() })
}

/// What loading checks of a `config.json` before any weight is allocated, on its text: the
/// architecture from `model_type`, then that architecture's fields and sizes. The parser a user
/// may be handed a hostile file for (fuzzed: `fuzz/`).
pub fn check_config_text(text: &str, path: &Path) -> Result<crate::Architecture, ModelError> {
    let arch = crate::Architecture::of_config(parse_config(text, path)?, path)?;
    match arch {
        crate::Architecture::Vit => {
            parse_config::<crate::vit::VitConfig>(text, path)?.validate(path)?;
        }
        crate::Architecture::Bert => {
            parse_config::<crate::BertConfig>(text, path)?.validate(path)?;
        }
        crate::Architecture::Gpt2 => {
            parse_config::<crate::Gpt2Config>(text, path)?.validate(path)?;
        }
    }
    Ok(arch)
}

pub(crate) fn check_divisible(path: &Path, hidden: usize, heads: usize) -> Result<(), ModelError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "hidden size {hidden} is not divisible by the number of attention heads {heads}"
            ),
        });
    }
    Ok(())
}

/// The most parameters a model may have before any weight is allocated: `RFA_MAX_PARAMS`, by
/// default 2·10¹⁰ (80 GB in f32, more than any machine rfa runs on holds for training).
pub fn max_params() -> u64 {
    std::env::var("RFA_MAX_PARAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000_000)
}

/// A model's sizes checked before anything is allocated: each named size at least 1, and the
/// parameter count `params` (computed with checked arithmetic: `None` when it overflows) under
/// [`max_params`]. Errors name the file and the sizes.
pub(crate) fn check_sizes(
    path: &Path,
    sizes: &[(&str, usize)],
    params: impl FnOnce() -> Option<u64>,
) -> Result<(), ModelError> {
    let err = |reason: String| ModelError::Config { path: path.to_path_buf(), reason };
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(err(format!("{name} = 0: every size must be at least 1")));
    }
    let named = || sizes.iter().map(|(n, v)| format!("{n} = {v}")).collect::<Vec<_>>().join(", ");
    let cap = max_params();
    match params() {
        Some(p) if p <= cap => Ok(()),
        Some(p) => Err(err(format!(
            "{}: about {p} parameters, more than RFA_MAX_PARAMS = {cap} (raise it if the machine holds them)",
            named()
        ))),
        None => Err(err(format!("{}: the parameter count overflows 64 bits", named()))),
    }
}

/// `Σ Π factors` over u64 with overflow checks.
pub(crate) fn sum_of_products(terms: &[&[usize]]) -> Option<u64> {
    terms.iter().try_fold(0u64, |acc, factors| {
        let product = factors.iter().try_fold(1u64, |p, &f| p.checked_mul(f as u64))?;
        acc.checked_add(product)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_absurd_sizes_are_refused_before_allocation() {
        let p = Path::new("config.json");
        check_sizes(p, &[("hidden_size", 64)], || Some(1000)).unwrap();
        let e = check_sizes(p, &[("hidden_size", 0)], || Some(0)).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("hidden_size = 0"), "{e}");
        let huge = 1_000_000usize;
        let params = sum_of_products(&[&[huge, huge]]);
        let e = check_sizes(p, &[("vocab_size", huge)], || params).unwrap_err().to_string();
        assert!(e.contains("vocab_size = 1000000") && e.contains("RFA_MAX_PARAMS"), "{e}");
        assert_eq!(sum_of_products(&[&[usize::MAX, usize::MAX]]), None);
        let e = check_sizes(p, &[("n", 2)], || None).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        assert_eq!(sum_of_products(&[&[2, 3], &[4]]), Some(10));
    }
}
