//! How hard RFA pushes the forget features, steered by the stop rule's checks.
//!
//! One λ does not suit every request: on some classes the retain and task terms pull Df back
//! towards its class faster than the forget term moves it (the share predicted as the class
//! falls, then rises again, while the retain accuracy sits above M0's); on others Df is
//! forgotten within ten steps and the retain accuracy stays a point or two below the guard for
//! the whole budget (docs/RESULTS.md, "An adaptive forget weight"). With `adaptive` balance the
//! forget term's weight follows the probes: each check that finds Df not yet forgotten with the
//! retain accuracy held multiplies it by [`Balance::FACTOR`]; each check that finds Df
//! forgotten with the retain accuracy below the guard divides it. A check that finds neither
//! leaves it (the retain dip that follows a large move recovers by itself). The weight stays
//! within [`Balance::RANGE`] times `unlearn.lambda`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::probe::ProbeCheck;

/// `unlearn.balance`: whether the forget term's weight follows the stop rule's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// λ stays `unlearn.lambda` (every run before this option).
    #[default]
    Fixed,
    /// λ follows the checks of the `probe` stop rule.
    Adaptive,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fixed => "fixed",
            Self::Adaptive => "adaptive",
        })
    }
}

impl Balance {
    /// The multiplier one check applies.
    pub const FACTOR: f64 = 2.0;
    /// The forget weight's bounds, as multiples of `unlearn.lambda`.
    pub const RANGE: (f64, f64) = (1.0 / 8.0, 8.0);

    /// The multiple of `unlearn.lambda` in force after `check`, from `scale` before it.
    pub fn next_scale(self, scale: f64, check: &ProbeCheck) -> f64 {
        if self == Self::Fixed || check.step == 0 {
            return scale;
        }
        let (low, high) = Self::RANGE;
        match (check.forgotten, check.retain_held) {
            (false, true) => (scale * Self::FACTOR).min(high),
            (true, false) => (scale / Self::FACTOR).max(low),
            _ => scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(step: usize, forgotten: bool, retain_held: bool) -> ProbeCheck {
        ProbeCheck {
            step,
            forget_accuracy: None,
            forgotten_class_share: Some(if forgotten { 0.0 } else { 50.0 }),
            membership_auc: 50.0,
            retain_accuracy: 90.0,
            validation_accuracy: 80.0,
            forgotten,
            retain_held,
            lambda_scale: None,
        }
    }

    #[test]
    fn the_weight_rises_while_df_resists_and_falls_while_dr_suffers() {
        let a = Balance::Adaptive;
        assert_eq!(a.next_scale(1.0, &check(0, false, true)), 1.0, "M0's check changes nothing");
        assert_eq!(a.next_scale(1.0, &check(5, false, true)), 2.0);
        assert_eq!(a.next_scale(2.0, &check(10, true, false)), 1.0);
        assert_eq!(a.next_scale(2.0, &check(10, false, false)), 2.0, "a dip waits");
        assert_eq!(a.next_scale(8.0, &check(15, false, true)), 8.0, "bounded above");
        assert_eq!(a.next_scale(0.125, &check(15, true, false)), 0.125, "bounded below");
        assert_eq!(Balance::Fixed.next_scale(1.0, &check(5, false, true)), 1.0);
    }

    #[test]
    fn names_are_the_configuration_spellings() {
        for b in [Balance::Fixed, Balance::Adaptive] {
            assert_eq!(serde_json::to_value(b).unwrap(), b.to_string().as_str());
        }
    }
}
