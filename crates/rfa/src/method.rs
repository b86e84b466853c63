//! The unlearning methods, by the names configs and the command line use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// RFA or one of the baselines (`crates/rfa/src/baselines.rs` documents their objectives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Method {
    Rfa,
    Finetune,
    GradAscent,
    RandomLabel,
    /// Also read as `neggrad+`.
    GradDiff,
    Scrub,
    L1Sparse,
    Salun,
    Npo,
}

/// A method name that is none of [`Method::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown unlearning method `{0}` (rfa, finetune, grad-ascent, random-label, grad-diff, neggrad+, scrub, l1-sparse, salun, npo)"
)]
pub struct UnknownMethod(pub String);

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 9] = [
        Self::Rfa,
        Self::Finetune,
        Self::GradAscent,
        Self::RandomLabel,
        Self::GradDiff,
        Self::Scrub,
        Self::L1Sparse,
        Self::Salun,
        Self::Npo,
    ];

    /// The name in configs, on the command line and of the result's folder.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rfa => "rfa",
            Self::Finetune => "finetune",
            Self::GradAscent => "grad-ascent",
            Self::RandomLabel => "random-label",
            Self::GradDiff => "grad-diff",
            Self::Scrub => "scrub",
            Self::L1Sparse => "l1-sparse",
            Self::Salun => "salun",
            Self::Npo => "npo",
        }
    }

    /// The name in reports: RFA in capitals, the baselines as they are spelt in configs.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Rfa => "RFA",
            other => other.name(),
        }
    }

    /// Methods that train on wrong labels and so need a classifier.
    pub fn relabels(self) -> bool {
        matches!(self, Self::RandomLabel | Self::Salun)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "neggrad+" {
            return Ok(Self::GradDiff);
        }
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

impl From<Method> for &'static str {
    fn from(m: Method) -> Self {
        m.name()
    }
}

impl TryFrom<String> for Method {
    type Error = UnknownMethod;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_neggrad_plus_is_grad_diff() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
        }
        assert_eq!("neggrad+".parse::<Method>(), Ok(Method::GradDiff));
        let e = "forget-everything".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("forget-everything") && e.contains("salun"), "{e}");
    }
}
