//! When the probe stop rule measures the model: every `check_every` steps, except, class-wise,
//! while the last step still predicted the class for most of its forgotten samples (before its
//! update). Such a check cannot find the class forgotten (its tolerance is a few
//! percent of Df), and a check costs about as much as the steps between two checks. The retain
//! guard is then measured at the next check that runs, and always after the last step; the
//! adapter kept is still the best one measured within the guard.

/// The check schedule of one unlearning.
#[derive(Debug, Clone)]
pub struct CheckSchedule {
    every: usize,
    forgotten_class: Option<usize>,
    /// The last step's forget rows, and how many it predicted as the class.
    seen: usize,
    as_class: usize,
    /// Steps after which the model was measured (0: M0).
    last_checked: Option<usize>,
    /// Scheduled checks left out because the steps still predicted the class.
    pub skipped: usize,
}

impl CheckSchedule {
    pub fn new(every: usize, forgotten_class: Option<usize>) -> Self {
        Self {
            every: every.max(1),
            forgotten_class,
            seen: 0,
            as_class: 0,
            last_checked: None,
            skipped: 0,
        }
    }

    /// The classes a step's forward pass predicted for its forget rows (before its update); only
    /// the latest step's count.
    pub fn observe_forget_predictions(&mut self, predicted: impl IntoIterator<Item = usize>) {
        (self.seen, self.as_class) = (0, 0);
        for p in predicted {
            self.seen += 1;
            self.as_class += usize::from(Some(p) == self.forgotten_class);
        }
    }

    /// Whether to measure after `steps` steps.
    pub fn due(&mut self, steps: usize) -> bool {
        if steps % self.every != 0 {
            return false;
        }
        let still_the_class = self.forgotten_class.is_some() && 2 * self.as_class > self.seen;
        (self.seen, self.as_class) = (0, 0);
        if still_the_class {
            self.skipped += 1;
        }
        !still_the_class
    }

    /// Records a measurement after `steps` steps.
    pub fn checked(&mut self, steps: usize) {
        self.last_checked = Some(steps);
    }

    /// Whether the model after `steps` steps, the last, still needs measuring.
    pub fn last_unmeasured(&self, steps: usize) -> bool {
        self.last_checked != Some(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_wait_while_the_steps_still_predict_the_class() {
        let mut s = CheckSchedule::new(2, Some(3));
        s.observe_forget_predictions([3, 3, 1]);
        assert!(!s.due(1), "not a check step");
        s.observe_forget_predictions([3, 3, 0]);
        assert!(!s.due(2), "the last step: 2 of 3 still the class: left out");
        s.observe_forget_predictions([3, 3, 3, 3]);
        s.observe_forget_predictions([3, 0, 1, 2]);
        assert!(s.due(4), "the last step: 1 of 4: measured");
        s.checked(4);
        assert!(!s.last_unmeasured(4) && s.last_unmeasured(5));
        assert_eq!(s.skipped, 1);
    }

    #[test]
    fn without_a_class_or_predictions_every_check_runs() {
        let mut s = CheckSchedule::new(3, None);
        s.observe_forget_predictions([0, 0, 0]);
        assert!(s.due(3));
        let mut s = CheckSchedule::new(3, Some(0));
        assert!(s.due(3), "no predictions seen (no task term): measured");
        assert_eq!(s.skipped, 0);
    }
}
