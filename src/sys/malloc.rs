//! glibc malloc tuning for the long-running daemon (mallopt(3)).
//!
//! glibc gives a thread that meets contention an arena of its own, up to
//! eight per CPU, and every arena keeps what was freed in it. The daemon's
//! blocking-pool threads come and go with the load, so after a burst of pod
//! churn the process holds arenas no thread uses. glibc also raises its
//! mmap and trim thresholds (up to 32 MiB) each time a large mmapped block
//! is freed, after which freed memory is no longer returned. Fixed
//! thresholds and few arenas keep the resident set near what is in use.

/// Most arenas: the main one and one for the runtime's worker threads.
const ARENAS: i32 = 2;
/// Blocks from this size on are mmapped and unmapped at free; free memory
/// above the heap's top beyond it is returned to the kernel.
const THRESHOLD: i32 = 128 * 1024;

/// Applies the settings above; call it before any thread starts.
pub fn tune_for_daemon() {
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENAS),
        (libc::M_MMAP_THRESHOLD, THRESHOLD),
        (libc::M_TRIM_THRESHOLD, THRESHOLD),
    ] {
        // SAFETY: mallopt only changes allocator parameters; it takes no
        // pointers and glibc serialises it against allocations.
        let ok = unsafe { libc::mallopt(param, value) };
        if ok != 1 {
            tracing::debug!(param, value, "mallopt refused");
        }
    }
}
