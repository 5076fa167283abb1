//! Readings from /proc: a process's resident set (VmRSS, VmHWM), the
//! machine's CPU time (/proc/stat), and
//! the proportional footprint (Pss of smaps_rollup) of the processes that
//! appeared between two snapshots.

use anyhow::Context;
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

/// The machine's CPU time so far (/proc/stat, all CPUs): (busy, total) in
/// clock ticks; busy is everything but idle and iowait.
pub fn cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(v.len() >= 5, "/proc/stat: no cpu line");
    let total: u64 = v.iter().sum();
    Ok((total - v[3] - v[4], total))
}

/// A process's CPU time so far (/proc/<pid>/stat), in clock ticks: its own
/// threads' (utime + stime) and its waited-for children's (cutime +
/// cstime, which include their own waited-for children).
pub fn proc_cpu_ticks(pid: i32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces: state is
    // field 3, utime field 14.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(f.len() == 4, "/proc/{pid}/stat: too few fields");
    Ok((f[0] + f[1], f[2] + f[3]))
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK)).
pub fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}
