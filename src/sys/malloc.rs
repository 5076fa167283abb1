//! glibc malloc tuning for the long-running daemon (mallopt(3),
//! mallinfo2(3), malloc_trim(3)).
//!
//! glibc gives a thread that meets contention an arena of its own, up to
//! eight per CPU, and every arena keeps what was freed in it. The daemon's
//! blocking-pool threads come and go with the load, so after a burst of pod
//! churn the process holds arenas no thread uses. glibc also raises its
//! mmap and trim thresholds (up to 32 MiB) each time a large mmapped block
//! is freed, after which freed memory is no longer returned. Fixed
//! thresholds and few arenas keep the resident set near what is in use.
//!
//! That still leaves the free chunks inside a heap: glibc returns only the
//! free space at a heap's top, so after a hostile client's 14 MiB request
//! of small labels, or thousands of connections, was freed, the pages
//! between live chunks stay resident. [`Trimmer`] hands them back
//! (malloc_trim(0) releases every free page, not only the top) when the
//! resident memory malloc does not account as in use has grown by
//! [`TRIM_SLACK`] since its last trim; the numbers behind this choice are
//! in README.md ("The daemon's memory").

use std::time::Duration;

/// Most arenas: the main one and one for the runtime's worker threads.
const ARENAS: i32 = 2;
/// Blocks from this size on are mmapped and unmapped at free. Above the
/// 408 KiB that hyper's HTTP/1 read buffer grows to: a pull receives every
/// byte into a fresh buffer of that size, and mmapped, each one was
/// faulted in page by page, zeroed and unmapped again (405 times in a
/// 160 MB pull, a fifth of the daemon's CPU in it); from the heap the
/// freed ones are reused.
const MMAP_THRESHOLD: i32 = 512 * 1024;
/// Free memory above a heap's top beyond this is returned to the kernel.
const TRIM_THRESHOLD: i32 = 128 * 1024;

/// Growth of the free space inside the heaps that makes [`Trimmer`] trim.
pub const TRIM_SLACK: usize = 4 << 20;
/// How often [`Trimmer::run`] looks.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Applies the settings above; call it before any thread starts.
pub fn tune_for_daemon() {
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENAS),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes allocator parameters; it takes no
        // pointers and glibc serialises it against allocations.
        let ok = unsafe { libc::mallopt(param, value) };
        if ok != 1 {
            tracing::debug!(param, value, "mallopt refused");
        }
    }
}

/// Resident memory that malloc does not account as in use: the process's
/// resident anonymous pages (/proc/self/statm: resident - shared) less
/// what is allocated (mallinfo2: in heaps + mmapped). Allocated pages never
/// touched are not resident, so this is a lower bound of what a trim can
/// release.
fn unused_resident() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().skip(1).map(str::parse::<usize>);
    let (resident, shared) = (fields.next()?.ok()?, fields.next()?.ok()?);
    let page = super::pages::page_size();
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct; it
    // locks each arena while it counts.
    let info = unsafe { libc::mallinfo2() };
    Some(
        resident
            .saturating_sub(shared)
            .saturating_mul(page)
            .saturating_sub(info.uordblks + info.hblkhd),
    )
}

/// Returns every free page inside glibc's heaps to the kernel; true when
/// any was released.
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes a size (padding kept at the top) and no
    // pointers; glibc locks each arena while it trims.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Decides when to trim. The mark is the unused resident memory right
/// after the last trim (or the least seen since): what a trim could not
/// release (stacks, malloc's own bookkeeping). Growth beyond it by
/// [`TRIM_SLACK`] is freed memory still resident: trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    mark: Option<usize>,
}

impl Trimmer {
    /// Whether to trim with `unused` bytes resident and not in use now.
    pub fn due(&mut self, unused: usize) -> bool {
        let mark = self.mark.map_or(unused, |m| m.min(unused));
        self.mark = Some(mark);
        unused - mark >= TRIM_SLACK
    }

    /// After a trim that began at `before` and left `after` unused: the
    /// new mark. A trim cannot add unused memory, so an `after` above
    /// `before` means memory was freed while it ran (the two readings are
    /// not atomic with the daemon's other threads); that memory is still
    /// resident, and marking it would hide it from every later look.
    pub fn trimmed(&mut self, before: usize, after: usize) {
        self.mark = Some(after.min(before));
    }

    /// Looks every [`TRIM_INTERVAL`] for the life of the runtime; trims
    /// on a blocking thread.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(unused) = unused_resident() else {
                continue;
            };
            if !self.due(unused) {
                continue;
            }
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(|| (trim(), unused_resident())).await {
                Ok((released, after)) => {
                    tracing::debug!(
                        unused_bytes = unused,
                        after_bytes = after,
                        released,
                        took_us = started.elapsed().as_micros() as u64,
                        "malloc_trim"
                    );
                    self.trimmed(unused, after.unwrap_or(unused));
                }
                Err(err) => tracing::warn!(?err, "malloc_trim task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_when_unused_resident_memory_grew_by_the_slack() {
        let mut t = Trimmer::default();
        assert!(!t.due(10 << 20), "the first look only sets the mark");
        assert!(!t.due(13 << 20));
        assert!(t.due(14 << 20));
        // What the trim could not release is the new mark.
        t.trimmed(14 << 20, 9 << 20);
        assert!(!t.due(12 << 20));
        // In use again (below the mark), then freed: trimmed again.
        assert!(!t.due(1 << 20));
        assert!(!t.due(4 << 20));
        assert!(t.due(5 << 20));
    }

    #[test]
    fn memory_freed_during_a_trim_is_trimmed_at_the_next_look() {
        // A 14 MiB request freed between the trim and its second reading:
        // 20 MiB unused before, 36 MiB after. The mark stays at 20 MiB,
        // so the freed memory still counts as growth.
        let mut t = Trimmer::default();
        assert!(!t.due(16 << 20));
        assert!(t.due(20 << 20));
        t.trimmed(20 << 20, 36 << 20);
        assert!(t.due(33 << 20), "33 MiB is 13 MiB over the mark");
        t.trimmed(33 << 20, 3 << 20);
        assert!(!t.due(4 << 20));
    }
}
