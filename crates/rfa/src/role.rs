//! What a model is in a run: the original M0, the retrained gold standard M*, or an unlearning
//! result.

use std::path::{Path, PathBuf};

use crate::method::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// M0, trained on all of D (`original/`).
    Original,
    /// M*, trained on Dr only (`retrain/`): the gold standard.
    Retrained,
    /// `<method>/` or `<method>-s<seed>/`.
    Unlearned { method: Method, seed: Option<u64> },
}

impl Role {
    /// The name in reports: `original (M0)`, `retrain (M*)`, `RFA`, `salun (seed 2)`.
    pub fn name(self) -> String {
        match self {
            Self::Original => "original (M0)".into(),
            Self::Retrained => "retrain (M*)".into(),
            Self::Unlearned { method, seed: None } => method.display_name().into(),
            Self::Unlearned { method, seed: Some(s) } => {
                format!("{} (seed {s})", method.display_name())
            }
        }
    }

    /// The folder inside the run.
    pub fn folder(self) -> String {
        match self {
            Self::Original => "original".into(),
            Self::Retrained => "retrain".into(),
            Self::Unlearned { method, seed: None } => method.to_string(),
            Self::Unlearned { method, seed: Some(s) } => format!("{method}-s{s}"),
        }
    }

    pub fn dir(self, run: &Path) -> PathBuf {
        run.join(self.folder())
    }

    /// The role a folder of a run holds, from its name; `None` for other folders.
    pub fn of_folder(name: &str) -> Option<Self> {
        match name {
            "original" => return Some(Self::Original),
            "retrain" => return Some(Self::Retrained),
            _ => {}
        }
        let (method, seed) = match name.rsplit_once("-s") {
            Some((m, s)) if s.parse::<u64>().is_ok() => (m, s.parse().ok()),
            _ => (name, None),
        };
        Some(Self::Unlearned { method: method.parse().ok()?, seed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_names_round_trip() {
        let roles = [
            Role::Original,
            Role::Retrained,
            Role::Unlearned { method: Method::Rfa, seed: None },
            Role::Unlearned { method: Method::Salun, seed: Some(2) },
        ];
        for r in roles {
            assert_eq!(Role::of_folder(&r.folder()), Some(r));
        }
        assert_eq!(
            roles.map(Role::name),
            ["original (M0)", "retrain (M*)", "RFA", "salun (seed 2)"]
        );
        assert_eq!(
            Role::of_folder("neggrad+-s1"),
            Some(Role::Unlearned { method: Method::GradDiff, seed: Some(1) })
        );
        assert_eq!(Role::of_folder("plots"), None);
    }
}
