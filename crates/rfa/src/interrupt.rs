//! Stopping a run from outside the loops, as Python's Ctrl-C (KeyboardInterrupt) does: a flag
//! that training, the pass over Dr and unlearning check before every step. A stopped phase writes
//! nothing more; what it wrote before stays whole (each phase is switched in as one folder), so a
//! stopped training resumes from its last epoch's checkpoint. The flag is process-wide: every run
//! of the process stops.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error a stopped phase returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interrupted: {during} stopped before its next step; earlier results are intact")]
pub struct Interrupted {
    pub during: String,
}

/// Asks every running phase to stop before its next step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Lets phases run again (call before starting one).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err` once [`request`] was called; `during` names the phase in the error.
pub fn check(during: &str) -> Result<(), Interrupted> {
    if REQUESTED.load(Ordering::SeqCst) {
        return Err(Interrupted { during: during.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stops_checks_until_cleared() {
        clear();
        assert_eq!(check("training"), Ok(()));
        request();
        let e = check("training").unwrap_err();
        assert!(e.to_string().starts_with("interrupted: training stopped"), "{e}");
        clear();
        assert_eq!(check("training"), Ok(()));
    }
}
