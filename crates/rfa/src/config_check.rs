//! The resolved configuration checked as a whole before any work starts: every field a phase
//! reads, with an error that names the field, the value and what it may be.

use crate::config::{RunConfig, UnlearnConfig};

/// A configuration field whose value no phase can run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {expected}")]
pub struct InvalidField {
    /// The dotted key, as `--set` takes it (`unlearn.lr`).
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn invalid(field: &'static str, value: impl ToString, expected: &'static str) -> InvalidField {
    InvalidField { field, value: value.to_string(), expected }
}

fn at_least_one(field: &'static str, v: usize) -> Result<(), InvalidField> {
    if v == 0 { Err(invalid(field, v, "must be at least 1")) } else { Ok(()) }
}

fn positive(field: &'static str, v: f64) -> Result<(), InvalidField> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, v, "must be a finite number > 0"))
    }
}

fn non_negative(field: &'static str, v: f64) -> Result<(), InvalidField> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, v, "must be a finite number >= 0"))
    }
}

/// A share in percent strictly between 0 and 100.
fn open_percent(field: &'static str, v: f64) -> Result<(), InvalidField> {
    if v.is_finite() && v > 0.0 && v < 100.0 {
        Ok(())
    } else {
        Err(invalid(field, v, "must lie strictly between 0 and 100"))
    }
}

/// A finite number in `range` (inclusive).
fn within(
    field: &'static str,
    v: f64,
    range: std::ops::RangeInclusive<f64>,
    expected: &'static str,
) -> Result<(), InvalidField> {
    if v.is_finite() && range.contains(&v) { Ok(()) } else { Err(invalid(field, v, expected)) }
}

fn one_of(
    field: &'static str,
    v: &str,
    allowed: &[&str],
    expected: &'static str,
) -> Result<(), InvalidField> {
    if allowed.contains(&v) { Ok(()) } else { Err(invalid(field, format!("\"{v}\""), expected)) }
}

/// A run name: one path component of letters, digits, `.`, `_` and `-`, not starting with `.` or
/// `-` (so never `.`, `..`, a hidden folder or a flag), at most 128 characters.
pub fn check_run_name(name: &str) -> Result<(), InvalidField> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(safe)
        && !name.starts_with('.')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?}"),
            "a run name is one folder name of letters, digits, '.', '_' and '-', not starting with '.' or '-' (at most 128 characters)",
        ))
    }
}

impl RunConfig {
    /// Every field a phase reads, checked; the first bad one is named.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_run_name(&self.name)?;
        let d = &self.data;
        if d.dataset.is_empty() {
            return Err(invalid("data.dataset", "\"\"", "name a data set"));
        }
        at_least_one("data.max_len", d.max_len)?;
        at_least_one("data.n_categories", d.n_categories)?;
        at_least_one("data.per_category", d.per_category)?;
        if let crate::scenario::Auto::Set(p) = d.probe_percent {
            open_percent("data.probe_percent", p)?;
        }
        open_percent("data.test_percent", d.test_percent)?;
        let t = &self.train;
        if let Some(p) = &self.pretrain {
            if p.dataset.is_empty() {
                return Err(invalid("pretrain.dataset", "\"\"", "name the source corpus"));
            }
            at_least_one("pretrain.epochs", p.epochs)?;
            positive("pretrain.lr", p.lr)?;
            at_least_one("pretrain.batch_size", p.batch_size)?;
            non_negative("pretrain.weight_decay", p.weight_decay)?;
            at_least_one("pretrain.max_len", p.max_len)?;
        }
        at_least_one("train.epochs", t.epochs)?;
        positive("train.lr", t.lr)?;
        at_least_one("train.batch_size", t.batch_size)?;
        non_negative("train.weight_decay", t.weight_decay)?;
        self.unlearn.validate()?;
        let e = &self.eval;
        if !(e.min_k_percent.is_finite() && e.min_k_percent > 0.0 && e.min_k_percent <= 100.0) {
            return Err(invalid("eval.min_k_percent", e.min_k_percent, "must lie in (0, 100]"));
        }
        Ok(())
    }
}

impl UnlearnConfig {
    pub fn validate(&self) -> Result<(), InvalidField> {
        at_least_one("unlearn.epochs", self.epochs)?;
        positive("unlearn.lr", self.lr)?;
        at_least_one("unlearn.batch_size", self.batch_size)?;
        at_least_one("unlearn.rank", self.rank)?;
        positive("unlearn.alpha", self.alpha)?;
        if self.targets.trim().is_empty() {
            return Err(invalid(
                "unlearn.targets",
                "\"\"",
                "name the layers to adapt (e.g. \"query,value\" or \"all-linear\")",
            ));
        }
        non_negative("unlearn.lambda", self.lambda)?;
        if let Some(w) = self.layer_weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(invalid(
                "unlearn.layer_weights",
                w,
                "every weight must be a finite number >= 0",
            ));
        }
        if let Some(w) = self.retain_task_weight {
            non_negative("unlearn.retain_task_weight", w)?;
        }
        within("unlearn.confusable_share", self.confusable_share, 0.0..=1.0, "must lie in [0, 1]")?;
        non_negative("unlearn.max_retain_drop", self.max_retain_drop)?;
        within(
            "unlearn.forget_tolerance",
            self.forget_tolerance,
            0.0..=100.0,
            "must lie in [0, 100] (percent)",
        )?;
        within(
            "unlearn.forget_accuracy_margin",
            self.forget_accuracy_margin,
            -100.0..=100.0,
            "must lie in [-100, 100] (points)",
        )?;
        at_least_one("unlearn.probe_samples", self.probe_samples)?;
        within(
            "unlearn.stats_precision",
            self.stats_precision,
            0.0..=1.0,
            "must lie in [0, 1] (0 = read all of Dr)",
        )?;
        non_negative("unlearn.retain_cls_weight", self.retain_cls_weight)?;
        non_negative("unlearn.weight_decay", self.weight_decay)?;
        one_of(
            "unlearn.forget_tokens",
            &self.forget_tokens,
            &["all", "cls"],
            "must be \"all\" or \"cls\"",
        )?;
        one_of(
            "unlearn.adapter",
            &self.adapter,
            &["lora", "full"],
            "must be \"lora\" or \"full\"",
        )?;
        one_of("unlearn.dtype", &self.dtype, &["f32", "bf16"], "must be \"f32\" or \"bf16\"")?;
        non_negative("unlearn.forget_weight", self.forget_weight)?;
        non_negative("unlearn.scrub_alpha", self.scrub_alpha)?;
        non_negative("unlearn.scrub_gamma", self.scrub_gamma)?;
        non_negative("unlearn.l1_weight", self.l1_weight)?;
        if !(self.salun_ratio.is_finite() && self.salun_ratio > 0.0 && self.salun_ratio <= 1.0) {
            return Err(invalid("unlearn.salun_ratio", self.salun_ratio, "must lie in (0, 1]"));
        }
        positive("unlearn.npo_beta", self.npo_beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid() {
        RunConfig::demo().validate().unwrap();
    }

    /// Every configuration the repository ships parses and validates.
    #[test]
    fn the_shipped_configurations_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let cfg = RunConfig::read(&p).unwrap();
                cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 6, "{n} configurations");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any text as `--config`: an error naming the file, never a panic (also fuzzed).
        #[test]
        fn any_toml_text_is_an_answer(text in "\\PC{0,300}") {
            match RunConfig::parse(&text, std::path::Path::new("run.toml")) {
                Ok(cfg) => { let _ = cfg.validate(); }
                Err(e) => proptest::prop_assert!(e.to_string().contains("run.toml"), "{}", e),
            }
        }

        /// The resolved configuration a run records reads back as it was, for any seed and
        /// learning rate.
        #[test]
        fn a_recorded_configuration_reads_back(seed in proptest::prelude::any::<u64>(), lr in 1e-7f64..1.0, rank in 1usize..64) {
            let mut cfg = RunConfig::demo();
            cfg.seed = seed;
            cfg.unlearn.lr = lr;
            cfg.unlearn.rank = rank;
            let back = RunConfig::parse(&cfg.to_toml(), std::path::Path::new("config.toml")).unwrap();
            proptest::prop_assert_eq!(back, cfg);
        }
    }

    #[test]
    fn run_names_are_one_safe_path_component() {
        for ok in ["demo", "imdb-minilm", "run_2.b", "A1"] {
            check_run_name(ok).unwrap();
        }
        for bad in
            ["", ".", "..", "../x", "/abs", "a/b", ".hidden", "-flag", "a b", "ü", &"x".repeat(129)]
        {
            let e = check_run_name(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
    }

    /// Each bad value is refused, naming its field.
    #[test]
    fn bad_values_name_their_field() {
        type Edit = fn(&mut RunConfig);
        let cases: [(&str, Edit); 16] = [
            ("train.epochs", |c| c.train.epochs = 0),
            ("train.lr", |c| c.train.lr = f64::NAN),
            ("train.batch_size", |c| c.train.batch_size = 0),
            ("unlearn.epochs", |c| c.unlearn.epochs = 0),
            ("unlearn.lr", |c| c.unlearn.lr = f64::INFINITY),
            ("unlearn.lr", |c| c.unlearn.lr = -1e-3),
            ("unlearn.batch_size", |c| c.unlearn.batch_size = 0),
            ("unlearn.rank", |c| c.unlearn.rank = 0),
            ("unlearn.alpha", |c| c.unlearn.alpha = -16.0),
            ("unlearn.lambda", |c| c.unlearn.lambda = f64::NAN),
            ("unlearn.layer_weights", |c| c.unlearn.layer_weights = vec![1.0, f64::NEG_INFINITY]),
            ("unlearn.forget_tokens", |c| c.unlearn.forget_tokens = "some".into()),
            ("unlearn.adapter", |c| c.unlearn.adapter = "half".into()),
            ("unlearn.salun_ratio", |c| c.unlearn.salun_ratio = 1.5),
            ("data.test_percent", |c| c.data.test_percent = 100.0),
            ("name", |c| c.name = "../elsewhere".into()),
        ];
        for (field, edit) in cases {
            let mut c = RunConfig::demo();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }
}
