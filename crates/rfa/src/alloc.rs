//! The binaries' allocator policy. Tensors of tens of MiB are freed and allocated again on every
//! step; an allocator that hands them back to the OS pays to fault and zero the pages each time:
//! glibc (over 32 MiB) at once, mimalloc after its `purge_delay` (1 s in mimalloc 3, 10 ms in
//! 2). On the GPT-2-small flex step that was 8 % (glibc) and 14 % (mimalloc) of the time in the
//! kernel's `clear_page`; with purging off the step went from 3.6–4.4 s to 3.1–3.7 s (medians of
//! interleaved runs, this 2-core machine). The cost: the process keeps its peak memory until exit.

/// `mi_option_purge_delay` in mimalloc 2.x and 3.x's `mi_option_e` (libmimalloc-sys names no
/// constant for it); a test checks that the index still holds the option's default.
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. Call first thing in `main`, in a binary
/// whose global allocator is mimalloc.
pub fn keep_freed_memory() {
    // SAFETY: sets a global option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_has_its_documented_default_then_is_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads a global option.
            let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            // 1000 ms in mimalloc 3 (what libmimalloc-sys builds by default), 10 ms in 2.
            assert!(
                default == 1000 || default == 10,
                "index 15 is not purge_delay (reads {default})"
            );
        }
        keep_freed_memory();
        // SAFETY: reads a global option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
