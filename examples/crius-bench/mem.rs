//! Memory readings from /proc: a process's resident set (VmRSS, VmHWM) and
//! the proportional footprint (Pss of smaps_rollup) of the processes that
//! appeared between two snapshots.

use std::collections::BTreeSet;

/// A `kB` field of /proc/<pid>/status, in MiB.
pub fn status_mib(pid: i32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_field(&text, field).map(|kb| kb as f64 / 1024.0)
}

fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Every pid now.
pub fn pids() -> BTreeSet<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pss of each process in `now` but not in `before`, summed, in MiB, and
/// how many there were (processes gone meanwhile count nothing).
pub fn new_processes_pss(before: &BTreeSet<i32>, now: &BTreeSet<i32>) -> (f64, usize) {
    let mut kb = 0;
    let mut n = 0;
    for pid in now.difference(before) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            && let Some(v) = kb_field(&text, "Pss")
        {
            kb += v;
            n += 1;
        }
    }
    (kb as f64 / 1024.0, n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields() {
        let t = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nPss:    77 kB\n";
        assert_eq!(super::kb_field(t, "VmRSS"), Some(1024));
        assert_eq!(super::kb_field(t, "VmHWM"), Some(2048));
        assert_eq!(super::kb_field(t, "Pss"), Some(77));
        assert_eq!(super::kb_field(t, "Vm"), None);
    }
}
