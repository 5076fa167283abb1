//! Usage counters of a cgroup, as the CRI stats and cAdvisor report them:
//! CPU time, memory (usage, working set, RSS, page faults, limit), swap,
//! tasks and pressure stall information (PSI), on cgroup v1 and v2.
//!
//! Sources (Documentation/admin-guide/cgroup-v1/{cpuacct,memory}.rst,
//! cgroup-v2.rst, accounting/psi.rst):
//!
//! | value | v1 | v2 |
//! |---|---|---|
//! | CPU ns | `cpuacct.usage`, `cpuacct.usage_{user,sys}` | `cpu.stat` `{usage,user,system}_usec` × 1000 |
//! | CFS throttling | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_time` | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec` |
//! | memory usage | `memory.usage_in_bytes` | `memory.current` |
//! | working set | usage − `total_inactive_file` | usage − `inactive_file` |
//! | RSS | `total_rss` | `anon` |
//! | page faults | `total_pgfault`, `total_pgmajfault` | `pgfault`, `pgmajfault` |
//! | cache, mapped | `total_cache`, `total_mapped_file` | `file`, `file_mapped` |
//! | kernel | `memory.kmem.usage_in_bytes` | `kernel` (or `kernel_stack` + `slab` + `sock`) |
//! | limit hits, peak | `memory.failcnt`, `memory.max_usage_in_bytes` | `memory.events` `max`, `memory.peak` |
//! | limit | `memory.limit_in_bytes` | `memory.max` |
//! | swap | `memory.memsw.*` − `memory.*` | `memory.swap.current`, `memory.swap.max` |
//! | tasks | `pids.current` | `pids.current` |
//! | PSI | (none) | `{cpu,memory,io}.pressure` of the cgroup2 mount |
//!
//! The working set is what kubelet evicts on: usage minus the page cache the
//! kernel can drop at once. A limit at or above 2^62 is "unlimited" (v1
//! shows PAGE_COUNTER_MAX × page size, v2 writes `max`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Error;
use super::fs::{Tree, key_value, parse_u64, read_trimmed};

/// Limits at or above this are no limit.
const UNLIMITED: u64 = 1 << 62;

/// Usage counters of a cgroup; `None` where the controller is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub swap: Option<Swap>,
    /// Number of tasks.
    pub pids: Option<u64>,
    /// Pressure stall information (cgroup v2 only).
    pub psi: Psi,
}

/// CPU time (nanoseconds) and CFS bandwidth throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub usage_bytes: u64,
    /// Usage minus inactive file cache.
    pub working_set_bytes: u64,
    /// Anonymous memory (and swap cache).
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Page cache and the part of it mapped into processes.
    pub cache_bytes: u64,
    pub mapped_file_bytes: u64,
    /// Kernel memory charged to the cgroup (0 where not accounted).
    pub kernel_bytes: u64,
    /// Times usage hit the limit.
    pub failcnt: u64,
    /// Peak usage (0 where the kernel does not record it).
    pub max_usage_bytes: u64,
    /// The limit, `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

impl Memory {
    /// What is left below the limit: limit − working set (0 when over).
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|l| l.saturating_sub(self.working_set_bytes))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub usage_bytes: u64,
    /// The swap limit, `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

impl Swap {
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes.map(|l| l.saturating_sub(self.usage_bytes))
    }
}

/// PSI of the three resources, where the kernel gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// One `*.pressure` file: `some` and `full` lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub some: PressureLine,
    pub full: PressureLine,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureLine {
    /// Total stall time, microseconds (as the kernel counts it).
    pub total_us: u64,
    /// Percent of time stalled over the last 10, 60 and 300 seconds.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

impl Tree {
    /// The cumulative CPU time of `path` alone (one file): what a stats
    /// RPC reads fresh while the rest comes from the sampler's cache.
    pub fn cpu_usage(&self, path: &str) -> Result<Option<u64>, Error> {
        if let Some(h) = self.layout.controller("cpuacct") {
            return parse_u64(&h.dir(path).join("cpuacct.usage")).map(Some);
        }
        match self.layout.controller("cpu").filter(|h| h.unified) {
            Some(h) => {
                let stat = read_trimmed(&h.dir(path).join("cpu.stat"))?;
                Ok(key_value(&stat, "usage_usec").map(|us| us.saturating_mul(1000)))
            }
            None => Ok(None),
        }
    }

    /// Usage counters of `path` (each `None` when its controller is absent).
    pub fn stats(&self, path: &str) -> Result<Stats, Error> {
        let mut s = Stats::default();
        if let Some(h) = self.layout.controller("cpuacct") {
            let dir = h.dir(path);
            let throttling = match self.layout.controller("cpu") {
                Some(cpu) => read_optional(&cpu.dir(path).join("cpu.stat"))?,
                None => String::new(),
            };
            let get = |k| key_value(&throttling, k).unwrap_or(0);
            s.cpu = Some(Cpu {
                usage_ns: parse_u64(&dir.join("cpuacct.usage"))?,
                user_ns: optional_u64(&dir.join("cpuacct.usage_user"))?,
                system_ns: optional_u64(&dir.join("cpuacct.usage_sys"))?,
                periods: get("nr_periods"),
                throttled_periods: get("nr_throttled"),
                throttled_ns: get("throttled_time"),
            });
        } else if let Some(h) = self.layout.controller("cpu").filter(|h| h.unified) {
            let stat = read_trimmed(&h.dir(path).join("cpu.stat"))?;
            let us = |k| key_value(&stat, k).unwrap_or(0).saturating_mul(1000);
            s.cpu = Some(Cpu {
                usage_ns: us("usage_usec"),
                user_ns: us("user_usec"),
                system_ns: us("system_usec"),
                periods: key_value(&stat, "nr_periods").unwrap_or(0),
                throttled_periods: key_value(&stat, "nr_throttled").unwrap_or(0),
                throttled_ns: us("throttled_usec"),
            });
        }
        if let Some(h) = self.layout.controller("memory") {
            let dir = h.dir(path);
            let (memory, swap) = if h.unified {
                memory_v2(&dir)?
            } else {
                memory_v1(&dir)?
            };
            s.memory = Some(memory);
            s.swap = swap;
        }
        if let Some(h) = self.layout.controller("pids") {
            s.pids = Some(parse_u64(&h.dir(path).join("pids.current"))?);
        }
        if let Some(h) = self.layout.unified() {
            let dir = h.dir(path);
            s.psi = Psi {
                cpu: pressure(&dir.join("cpu.pressure"))?,
                memory: pressure(&dir.join("memory.pressure"))?,
                io: pressure(&dir.join("io.pressure"))?,
            };
        }
        Ok(s)
    }
}

fn memory_v1(dir: &Path) -> Result<(Memory, Option<Swap>), Error> {
    let usage = parse_u64(&dir.join("memory.usage_in_bytes"))?;
    let stat = read_trimmed(&dir.join("memory.stat"))?;
    let get = |k| key_value(&stat, k).unwrap_or(0);
    let limit = limit(parse_u64(&dir.join("memory.limit_in_bytes"))?);
    let memory = Memory {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("total_inactive_file")),
        rss_bytes: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        cache_bytes: get("total_cache"),
        mapped_file_bytes: get("total_mapped_file"),
        kernel_bytes: optional_u64(&dir.join("memory.kmem.usage_in_bytes"))?,
        failcnt: optional_u64(&dir.join("memory.failcnt"))?,
        max_usage_bytes: optional_u64(&dir.join("memory.max_usage_in_bytes"))?,
        limit_bytes: limit,
    };
    // memsw counts memory + swap; it exists only with swap accounting.
    let memsw = dir.join("memory.memsw.usage_in_bytes");
    let swap = if memsw.exists() {
        let both = parse_u64(&memsw)?;
        let both_limit = limit_of(&dir.join("memory.memsw.limit_in_bytes"))?;
        Some(Swap {
            usage_bytes: both.saturating_sub(usage),
            limit_bytes: both_limit.zip(limit).map(|(b, m)| b.saturating_sub(m)),
        })
    } else {
        None
    };
    Ok((memory, swap))
}

fn memory_v2(dir: &Path) -> Result<(Memory, Option<Swap>), Error> {
    let usage = parse_u64(&dir.join("memory.current"))?;
    let stat = read_trimmed(&dir.join("memory.stat"))?;
    let get = |k| key_value(&stat, k).unwrap_or(0);
    let memory = Memory {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("inactive_file")),
        rss_bytes: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        cache_bytes: get("file"),
        mapped_file_bytes: get("file_mapped"),
        // "kernel" since Linux 5.18; before, its main parts.
        kernel_bytes: key_value(&stat, "kernel")
            .unwrap_or_else(|| get("kernel_stack") + get("slab") + get("sock")),
        failcnt: key_value(&read_optional(&dir.join("memory.events"))?, "max").unwrap_or(0),
        max_usage_bytes: optional_u64(&dir.join("memory.peak"))?,
        limit_bytes: limit_of(&dir.join("memory.max"))?,
    };
    // memory.swap.* are absent without swap accounting (or at the root).
    let current = dir.join("memory.swap.current");
    let swap = if current.exists() {
        Some(Swap {
            usage_bytes: parse_u64(&current)?,
            limit_bytes: limit_of(&dir.join("memory.swap.max"))?,
        })
    } else {
        None
    };
    Ok((memory, swap))
}

/// A file the kernel may lack (older kernel, accounting off): "" then.
fn read_optional(file: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(Error::Io {
            op: "read",
            path: file.into(),
            source,
        }),
    }
}

/// A number in a file the kernel may lack: 0 then.
fn optional_u64(file: &Path) -> Result<u64, Error> {
    let text = read_optional(file)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|_| Error::Parse {
        path: file.into(),
        text: text.into(),
    })
}

/// A limit file (`max` or a number): `None` when unlimited.
fn limit_of(file: &Path) -> Result<Option<u64>, Error> {
    let text = read_trimmed(file)?;
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(limit).map_err(|_| Error::Parse {
        path: file.into(),
        text,
    })
}

fn limit(value: u64) -> Option<u64> {
    (value < UNLIMITED).then_some(value)
}

/// Reads a PSI file; `None` when the kernel has none (PSI disabled, or no
/// cgroup2 mount for this cgroup).
fn pressure(file: &Path) -> Result<Option<Pressure>, Error> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::Unsupported
            ) || e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: file.into(),
                source,
            });
        }
    };
    parse_pressure(&text).map(Some).ok_or_else(|| Error::Parse {
        path: file.into(),
        text,
    })
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` (and a `full` line;
/// a kernel without one for cpu leaves it zero).
fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut seen_some = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let target = match words.next()? {
            "some" => {
                seen_some = true;
                &mut p.some
            }
            "full" => &mut p.full,
            _ => continue,
        };
        for word in words {
            let (k, v) = word.split_once('=')?;
            match k {
                "avg10" => target.avg10 = v.parse().ok()?,
                "avg60" => target.avg60 = v.parse().ok()?,
                "avg300" => target.avg300 = v.parse().ok()?,
                "total" => target.total_us = v.parse().ok()?,
                _ => {}
            }
        }
    }
    seen_some.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_lines() {
        let p = parse_pressure(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        assert_eq!(p.some.total_us, 1234);
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.avg60, 0.25);
        assert_eq!(p.full.total_us, 7);
        assert!(parse_pressure("").is_none());
        assert!(parse_pressure("some avg10=x total=1").is_none());
    }

    #[test]
    fn limits_and_available() {
        assert_eq!(limit(9223372036854771712), None);
        assert_eq!(limit(64 << 20), Some(64 << 20));
        let m = Memory {
            working_set_bytes: 10,
            limit_bytes: Some(64),
            ..Default::default()
        };
        assert_eq!(m.available_bytes(), Some(54));
        let over = Memory {
            working_set_bytes: 100,
            limit_bytes: Some(64),
            ..Default::default()
        };
        assert_eq!(over.available_bytes(), Some(0));
        assert_eq!(Memory::default().available_bytes(), None);
    }
}
