//! Fault injection for the crash-safety tests. Built with the `fault-injection` feature (test
//! builds only), `RFA_FAULT_AT_WRITE=N` aborts the process at its N-th write point — no
//! destructor runs and nothing is cleaned up, as under a kill. A write point is each place where
//! rfa is about to put bytes into a file or switch something in by a rename, so N = 1, 2, … kills
//! a phase between every pair of its writes. Without the feature every call is empty.

use std::path::Path;

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static AT: OnceLock<Option<usize>> = OnceLock::new();
    static SEEN: AtomicUsize = AtomicUsize::new(0);

    pub fn write_point(what: &str, path: &Path) {
        let at = AT.get_or_init(|| {
            std::env::var("RFA_FAULT_AT_WRITE").ok().and_then(|v| v.trim().parse().ok())
        });
        let n = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
        if *at == Some(n) {
            eprintln!("fault injection: killed at write point {n} ({what} {})", path.display());
            std::process::abort();
        }
    }
}

/// Marks a write point: `what` is about to happen to `path`.
#[inline]
pub fn write_point(what: &str, path: &Path) {
    #[cfg(feature = "fault-injection")]
    enabled::write_point(what, path);
    #[cfg(not(feature = "fault-injection"))]
    let _ = (what, path);
}
