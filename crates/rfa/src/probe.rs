//! RFA's stop rule without a retrained model: every few steps the model is measured on three
//! small probes — a sample of Df, a sample of Dr and the validation split of the test set (never
//! the reported Dt) — and unlearning stops once Df is forgotten while the retain accuracy holds.
//! The best adapter seen within the retain guard is kept; the run rolls back to it.
//!
//! - Class-wise: Df is forgotten once at most `forget_tolerance` % of it is predicted as the
//!   forgotten class (a model that never saw the class does not predict it).
//! - Random / ids: Df must look like unseen data. Its accuracy must fall to the validation
//!   probe's (plus `forget_accuracy_margin`): a retrained model classifies Df as it classifies
//!   the test set. And the loss-threshold membership AUC of Df against the validation probe must
//!   lie within one standard error of 50 under no signal (Hanley–McNeil with equal scores:
//!   √((m + n + 1) / (12 m n))), on either side: a Df forgotten "too well" is as visible as a
//!   remembered one. The AUC alone was not enough: on small probes M0's AUC is already within
//!   that band while M0 still classifies Df better than unseen data (docs/RESULTS.md).
//! - Both: the accuracy on the Dr probe may fall at most `max_retain_drop` points below M0's.

use anyhow::{Result, bail};
use rfa_eval::{Rows, accuracy, auc, predictions, true_label_confidence};
use rfa_models::FusedOps;
use rfa_rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::balance::Balance;
use crate::config::UnlearnConfig;
use crate::engine::logits_only;
use crate::engine_model::{EngineModel, Samples};
use crate::task::Task;

/// The sample indices the stop rule measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    /// A seeded sample of Df (training indices).
    pub forget: Vec<usize>,
    /// A seeded sample of Dr (training indices).
    pub retain: Vec<usize>,
    /// The validation probe (test indices, disjoint from the reported Dt).
    pub validation: Vec<usize>,
}

impl Probes {
    pub fn draw<D: Samples>(task: &Task<D>, samples: usize, seed: u64) -> Self {
        let sample = |set: &[usize], salt: u64| {
            let mut v = set.to_vec();
            if v.len() > samples {
                SplitMix64::new(seed ^ salt).shuffle(&mut v);
                v.truncate(samples);
                v.sort_unstable();
            }
            v
        };
        Self {
            forget: sample(&task.split.forget, 0x0f0f),
            retain: sample(&task.split.retain, 0x7e7e),
            validation: task.probe.clone(),
        }
    }
}

/// When the stop rule measures the model (steps taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSchedule {
    every: usize,
    /// Also at 5, 10, 20, … steps before the first regular check.
    early: bool,
}

impl CheckSchedule {
    /// The first early check: fewer steps rarely move the probes.
    const FIRST: usize = 5;

    /// `unlearn.check_every` steps apart; `0` means twice per pass over Df (`steps_per_pass`)
    /// and, for a class (`class_wise`) where that is more than 5 steps, also after 5, 10, 20, …
    /// steps: a class is often forgotten within ten steps, and on a large Df half a pass is a
    /// hundred steps or more, in which the retain accuracy can fall out of the guard for good.
    /// Random samples showed nothing at those checks that the later ones miss, so they are
    /// spared the cost (docs/RESULTS.md, "Third round").
    pub fn new(check_every: usize, steps_per_pass: usize, class_wise: bool) -> Self {
        match check_every {
            0 => Self { every: steps_per_pass.div_ceil(2).max(1), early: class_wise },
            n => Self { every: n, early: false },
        }
    }

    /// Whether the model is measured after `step` steps.
    pub fn is_check(&self, step: usize) -> bool {
        if step.is_multiple_of(self.every) {
            return true;
        }
        let early = step < self.every && step >= Self::FIRST && step.is_multiple_of(Self::FIRST);
        self.early && early && (step / Self::FIRST).is_power_of_two()
    }
}

/// What "forgotten" and "held" mean for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// Class-wise: the forgotten class (else the membership AUC decides).
    pub forgotten_class: Option<usize>,
    /// Percent of Df predicted as the forgotten class at most.
    pub forget_tolerance: f64,
    /// The membership AUC (percent) at most, and at least `100 - auc_limit`.
    pub auc_limit: f64,
    /// Random / ids: Df's accuracy may exceed the validation probe's by this many points.
    pub forget_accuracy_margin: f64,
    /// Points the Dr-probe accuracy may fall below M0's.
    pub max_retain_drop: f64,
}

impl Criterion {
    pub fn new(cfg: &UnlearnConfig, forgotten_class: Option<usize>, probes: &Probes) -> Self {
        let (m, n) = (probes.forget.len() as f64, probes.validation.len() as f64);
        Self {
            forgotten_class,
            forget_tolerance: cfg.forget_tolerance,
            auc_limit: 50.0 + 100.0 * ((m + n + 1.0) / (12.0 * m * n)).sqrt(),
            forget_accuracy_margin: cfg.forget_accuracy_margin,
            max_retain_drop: cfg.max_retain_drop,
        }
    }
}

/// One measurement on the probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCheck {
    pub step: usize,
    /// Accuracy (percent) on the Df probe (absent in logs written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_accuracy: Option<f64>,
    /// Class-wise: percent of the Df probe predicted as the forgotten class.
    pub forgotten_class_share: Option<f64>,
    /// Loss-threshold membership AUC (percent) of the Df probe against the validation probe.
    pub membership_auc: f64,
    /// Accuracy (percent) on the Dr probe.
    pub retain_accuracy: f64,
    /// Accuracy (percent) on the validation probe.
    pub validation_accuracy: f64,
    /// Df counts as forgotten.
    pub forgotten: bool,
    /// The retain accuracy is within the guard.
    pub retain_held: bool,
    /// The forget weight in force for the steps before this check, as a multiple of
    /// `unlearn.lambda` (`unlearn.balance`; absent in logs written before it could change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_scale: Option<f64>,
}

impl ProbeCheck {
    /// How far from forgotten (lower is better): the forgotten class's share; or the AUC's
    /// distance from 50 plus the points by which Df's accuracy exceeds the validation probe's.
    fn distance(&self) -> f64 {
        self.forgotten_class_share.unwrap_or_else(|| {
            let excess =
                self.forget_accuracy.map_or(0.0, |f| (f - self.validation_accuracy).max(0.0));
            (self.membership_auc - 50.0).abs() + excess
        })
    }

    /// Whether this check is better to keep than `other`: within the guard first, then
    /// forgotten, then nearer to forgotten, then the higher retain accuracy.
    fn better_than(&self, other: &Self) -> bool {
        let key = |c: &Self| (c.retain_held, c.forgotten, -c.distance(), c.retain_accuracy);
        key(self).partial_cmp(&key(other)) == Some(std::cmp::Ordering::Greater)
    }
}

/// Measures `model` on the probes; `retain_floor` is the lowest retain accuracy the guard
/// accepts (`None` at the first check, which sets it from M0).
pub fn measure<B: FusedOps, M: EngineModel<B>>(
    model: &M,
    task: &Task<M::Data>,
    probes: &Probes,
    criterion: &Criterion,
    retain_floor: Option<f64>,
    step: usize,
    device: &B::Device,
) -> Result<ProbeCheck> {
    let Some(classes) = model.num_labels() else {
        bail!(
            "unlearn.stop = \"probe\" needs a classifier; a {} stops after unlearn.epochs",
            M::KIND
        )
    };
    let forget = logits_only(model, &task.train, &probes.forget, device)?;
    let retain = logits_only(model, &task.train, &probes.retain, device)?;
    let valid = logits_only(model, &task.test, &probes.validation, device)?;
    fn rows<'a>(
        what: &'static str,
        o: &'a crate::engine::Outputs,
        classes: usize,
    ) -> Result<Rows<'a>> {
        Ok(Rows::new(what, &o.logits, classes)?)
    }
    let (f, r, v) = (
        rows("Df probe logits", &forget, classes)?,
        rows("Dr probe logits", &retain, classes)?,
        rows("validation probe logits", &valid, classes)?,
    );
    // The loss attack's score, higher for members: the true label's probability (the loss is its
    // negative log, so the AUC is the same).
    let membership_auc =
        auc(&true_label_confidence(&f, &forget.labels), &true_label_confidence(&v, &valid.labels))?;
    let forgotten_class_share = criterion.forgotten_class.map(|c| {
        let p = predictions(&f);
        100.0 * p.iter().filter(|&&k| k == c).count() as f64 / p.len().max(1) as f64
    });
    let retain_accuracy = accuracy(&r, &retain.labels)?;
    let forget_accuracy = accuracy(&f, &forget.labels)?;
    let validation_accuracy = accuracy(&v, &valid.labels)?;
    let forgotten = match forgotten_class_share {
        Some(share) => share <= criterion.forget_tolerance,
        None => looks_unseen(criterion, membership_auc, forget_accuracy, validation_accuracy),
    };
    Ok(ProbeCheck {
        step,
        forget_accuracy: Some(forget_accuracy),
        forgotten_class_share,
        membership_auc,
        retain_accuracy,
        validation_accuracy,
        forgotten,
        retain_held: retain_floor.is_none_or(|floor| retain_accuracy >= floor),
        lambda_scale: None,
    })
}

/// Random / ids: whether Df looks like unseen data on the probes (all in percent).
fn looks_unseen(criterion: &Criterion, auc: f64, forget_acc: f64, validation_acc: f64) -> bool {
    let band = criterion.auc_limit - 50.0;
    (auc - 50.0).abs() <= band && forget_acc <= validation_acc + criterion.forget_accuracy_margin
}

/// Why unlearning stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// Df was forgotten with the retain accuracy within the guard.
    Forgotten,
    /// `unlearn.epochs` ran out with the last adapter outside the retain guard: rolled back to
    /// the best one within it.
    RetainGuard,
    /// `unlearn.epochs` ran out with the last adapter within the guard, Df not forgotten.
    Budget,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forgotten => "Df forgotten within the retain guard",
            Self::RetainGuard => "unlearn.epochs ran out outside the retain guard",
            Self::Budget => "unlearn.epochs ran out before Df looked forgotten",
        })
    }
}

/// The stop rule's record, for the log and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRecord {
    pub reason: StopReason,
    /// The step after which unlearning stopped (steps taken).
    pub stopped_after_step: usize,
    /// The step whose adapter was kept (0 = M0's, the adapter at zero).
    pub kept_step: usize,
    /// M0's retain accuracy on the Dr probe less `max_retain_drop`.
    pub retain_floor: f64,
    pub auc_limit: f64,
    pub checks: Vec<ProbeCheck>,
    pub check_seconds: f64,
}

/// The stop rule's state over one unlearning: the checks so far, the best model seen and the
/// forget weight the checks steer ([`Balance`]).
pub struct StopState<M> {
    criterion: Criterion,
    balance: Balance,
    lambda_scale: f64,
    retain_floor: Option<f64>,
    checks: Vec<ProbeCheck>,
    best: Option<(ProbeCheck, M)>,
    pub check_seconds: f64,
}

/// What the loop does after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Df is forgotten within the guard.
    Stop,
}

/// A check's outcome for the step loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checked {
    pub verdict: Verdict,
    /// The forget weight for the next steps, as a multiple of `unlearn.lambda`.
    pub lambda_scale: f64,
}

impl<M: Clone> StopState<M> {
    pub fn new(criterion: Criterion, balance: Balance) -> Self {
        Self {
            criterion,
            balance,
            lambda_scale: 1.0,
            retain_floor: None,
            checks: Vec::new(),
            best: None,
            check_seconds: 0.0,
        }
    }

    /// The forget weight for the steps after the last check, as a multiple of `unlearn.lambda`.
    pub fn lambda_scale(&self) -> f64 {
        self.lambda_scale
    }

    pub fn criterion(&self) -> &Criterion {
        &self.criterion
    }

    pub fn retain_floor(&self) -> Option<f64> {
        self.retain_floor
    }

    /// Takes a check of `model` (the first one: M0's, which sets the retain floor): stops once
    /// Df is forgotten within the guard. A check outside the guard does not stop the run: while
    /// the forget features move the retain accuracy dips, and the retain and task terms pull it
    /// back within a few passes (docs/RESULTS.md); `unlearn.epochs` bounds the wait.
    pub fn observe(&mut self, mut check: ProbeCheck, model: &M) -> Verdict {
        check.lambda_scale = Some(self.lambda_scale);
        self.lambda_scale = self.balance.next_scale(self.lambda_scale, &check);
        if self.retain_floor.is_none() {
            self.retain_floor = Some(check.retain_accuracy - self.criterion.max_retain_drop);
        }
        let verdict = if check.retain_held && check.forgotten && check.step > 0 {
            // The adapter that reached the goal is kept, even where M0 itself already looked
            // forgotten on the probes (no measurable membership signal).
            self.best = Some((check.clone(), model.clone()));
            Verdict::Stop
        } else {
            if self.best.as_ref().is_none_or(|(b, _)| check.better_than(b)) {
                self.best = Some((check.clone(), model.clone()));
            }
            Verdict::Continue
        };
        self.checks.push(check);
        verdict
    }

    /// The model to keep (the best one measured within the guard; `last` where that is the
    /// best) and the record; `steps` were taken, the last of them checked.
    pub fn finish(self, steps: usize, last: M) -> (M, StopRecord) {
        let reason = match self.checks.last() {
            Some(c) if c.retain_held && c.forgotten && c.step > 0 => StopReason::Forgotten,
            Some(c) if !c.retain_held => StopReason::RetainGuard,
            _ => StopReason::Budget,
        };
        let (kept_step, model) = match self.best {
            Some((b, m)) if b.step != steps => (b.step, m),
            _ => (steps, last),
        };
        let record = StopRecord {
            reason,
            stopped_after_step: steps,
            kept_step,
            retain_floor: self.retain_floor.unwrap_or(0.0),
            auc_limit: self.criterion.auc_limit,
            checks: self.checks,
            check_seconds: self.check_seconds,
        };
        (model, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn criterion() -> Criterion {
        Criterion {
            forgotten_class: Some(3),
            forget_tolerance: 1.0,
            auc_limit: 55.0,
            forget_accuracy_margin: 0.0,
            max_retain_drop: 1.0,
        }
    }

    /// A class-wise check; `retain_held` as [`measure`] would set it against a floor of 89.
    fn check(step: usize, share: f64, retain: f64) -> ProbeCheck {
        ProbeCheck {
            step,
            forget_accuracy: None,
            forgotten_class_share: Some(share),
            membership_auc: 50.0,
            retain_accuracy: retain,
            validation_accuracy: 0.0,
            forgotten: share <= 1.0,
            retain_held: step == 0 || retain >= 89.0,
            lambda_scale: None,
        }
    }

    #[test]
    fn it_stops_once_forgotten_within_the_guard_and_keeps_that_model() {
        let mut s = StopState::<usize>::new(criterion(), Balance::Fixed);
        assert_eq!(s.observe(check(0, 95.0, 90.0), &0), Verdict::Continue);
        assert_eq!(s.retain_floor(), Some(89.0));
        // Forgotten, but the retain accuracy dipped: go on.
        assert_eq!(s.observe(check(5, 0.5, 80.0), &5), Verdict::Continue);
        assert_eq!(s.observe(check(10, 0.0, 89.5), &10), Verdict::Stop);
        let (kept, record) = s.finish(10, 10);
        assert_eq!((kept, record.kept_step, record.stopped_after_step), (10, 10, 10));
        assert_eq!(record.reason, StopReason::Forgotten);
        assert_eq!(record.checks.len(), 3);
    }

    #[test]
    fn a_run_ending_outside_the_guard_rolls_back_to_the_best_model_within_it() {
        let mut s = StopState::<usize>::new(criterion(), Balance::Fixed);
        s.observe(check(0, 95.0, 90.0), &0);
        assert_eq!(s.observe(check(4, 40.0, 89.5), &4), Verdict::Continue);
        // Forgotten, but the retain accuracy collapsed and stays down.
        for (step, retain) in [(8, 50.0), (12, 40.0), (16, 30.0)] {
            assert_eq!(s.observe(check(step, 0.0, retain), &step), Verdict::Continue);
        }
        let (kept, record) = s.finish(16, 16);
        assert_eq!((kept, record.kept_step), (4, 4), "the best check within the guard");
        assert_eq!(record.reason, StopReason::RetainGuard);
    }

    #[test]
    fn a_recovering_retain_accuracy_is_given_time() {
        let mut s = StopState::<usize>::new(criterion(), Balance::Fixed);
        s.observe(check(0, 95.0, 90.0), &0);
        for (step, retain) in [(2, 70.0), (4, 75.0), (6, 80.0), (8, 85.0)] {
            assert_eq!(s.observe(check(step, 30.0, retain), &step), Verdict::Continue);
        }
        // The budget ends below the floor: nothing after M0 held, so M0 is kept.
        let (kept, record) = s.finish(8, 8);
        assert_eq!((kept, record.kept_step, record.reason), (0, 0, StopReason::RetainGuard));
    }

    #[test]
    fn random_forgetting_needs_unseen_accuracy_and_an_auc_near_chance_on_both_sides() {
        let c = Criterion { forgotten_class: None, ..criterion() };
        // M0 on a small probe: the AUC shows nothing, but Df is classified better than unseen data.
        assert!(!looks_unseen(&c, 51.0, 88.0, 80.0));
        assert!(looks_unseen(&c, 51.0, 80.0, 80.0));
        assert!(looks_unseen(&c, 46.0, 70.0, 80.0));
        // Forgotten "too well": members now score below unseen data.
        assert!(!looks_unseen(&c, 40.0, 50.0, 80.0));
        assert!(!looks_unseen(&c, 56.0, 80.0, 80.0));
        let lenient = Criterion { forget_accuracy_margin: 10.0, ..c.clone() };
        assert!(looks_unseen(&lenient, 51.0, 88.0, 80.0));
        // The kept adapter is the nearest to unseen: the accuracy excess counts.
        let random = |step, auc, acc| ProbeCheck {
            forgotten_class_share: None,
            membership_auc: auc,
            forget_accuracy: Some(acc),
            validation_accuracy: 80.0,
            forgotten: false,
            ..check(step, 0.0, 90.0)
        };
        assert!(random(5, 52.0, 82.0).better_than(&random(0, 51.0, 88.0)));
        assert!(random(5, 52.0, 79.0).better_than(&random(10, 50.0, 84.0)));
    }

    #[test]
    fn checks_come_twice_a_pass_and_early_for_a_class_on_a_large_forget_set() {
        let steps = |s: CheckSchedule| (1..=200).filter(|&k| s.is_check(k)).collect::<Vec<_>>();
        // The demo: 10 steps a pass, a check every 5 (as before the early checks).
        let demo = CheckSchedule::new(0, 10, true);
        assert_eq!(steps(demo), (1..=40).map(|k| 5 * k).collect::<Vec<_>>());
        let nine = CheckSchedule::new(0, 9, true);
        assert_eq!(steps(nine), (1..=40).map(|k| 5 * k).collect::<Vec<_>>());
        // Full-size Fashion-MNIST: 188 steps a pass; early checks for a class only.
        assert_eq!(steps(CheckSchedule::new(0, 188, true)), vec![5, 10, 20, 40, 80, 94, 188]);
        assert_eq!(steps(CheckSchedule::new(0, 188, false)), vec![94, 188]);
        let three = CheckSchedule::new(0, 3, true);
        assert_eq!(steps(three), (1..=100).map(|k| 2 * k).collect::<Vec<_>>());
        let thirty = CheckSchedule::new(30, 188, true);
        assert_eq!(steps(thirty), vec![30, 60, 90, 120, 150, 180]);
    }

    #[test]
    fn the_auc_limit_is_one_null_standard_error_above_chance() {
        let p = Probes { forget: vec![0; 300], retain: vec![0; 10], validation: vec![0; 100] };
        let cfg = crate::config::RunConfig::demo().unlearn;
        let c = Criterion::new(&cfg, None, &p);
        let se = ((300.0 + 100.0 + 1.0) / (12.0 * 300.0 * 100.0f64)).sqrt();
        approx::assert_abs_diff_eq!(c.auc_limit, 50.0 + 100.0 * se, epsilon = 1e-12);
    }
}
