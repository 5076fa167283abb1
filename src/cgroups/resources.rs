//! The resources of a pod or container cgroup as a domain type, and their
//! translation into file writes for each hierarchy: cgroup v1
//! (Documentation/admin-guide/cgroup-v1/) or v2 (cgroup-v2.rst), with
//! runc's conversions (cpu shares -> cpu.weight, memory+swap -> swap).
//!
//! `None` (and an empty map) leaves a setting as it is; the CRI layer maps
//! its zero values to `None`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;
use super::layout::{Hierarchy, Layout};

/// cgroup v1's cpu.shares range and v2's cpu.weight maximum.
const SHARES_MAX: u64 = cgroups_rs::CPU_SHARES_V1_MAX;
const WEIGHT_MAX: u64 = cgroups_rs::CPU_WEIGHT_V2_MAX;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Relative CPU weight, v1 cpu.shares units (2..=262144); on v2 it
    /// becomes cpu.weight.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period; -1 is unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// cpuset lists, e.g. "0-2,7".
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes; -1 is unlimited.
    pub memory_limit: Option<i64>,
    /// CRI/OCI semantics: memory + swap, as v1's memory.memsw; -1 is
    /// unlimited. On v2 crius writes memory.swap.max = this - memory.
    pub memory_swap_limit: Option<i64>,
    /// Hugepage size as the kernel names it ("2MB", "1GB") -> bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// Maximum number of tasks; -1 is unlimited.
    pub pids_limit: Option<i64>,
    /// cgroup v2 files written verbatim ("memory.oom.group" -> "1").
    pub unified: BTreeMap<String, String>,
    /// The device policy ([`super::devices`]); `None` leaves it as it is
    /// (pods, updates). Set for containers when their cgroup is made.
    #[serde(default)]
    pub devices: Option<super::devices::DeviceRules>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// One file write of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Index into `Layout::hierarchies`.
    pub hierarchy: usize,
    pub file: String,
    pub value: String,
    /// A write that is skipped (with a debug log) when its file does not
    /// exist: hugetlb, whose controller may be absent or not enabled.
    pub optional: bool,
}

/// runc's (and cgroups-rs's) linear map of cpu.shares [2, 262144] onto
/// cpu.weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        s if s >= SHARES_MAX => WEIGHT_MAX,
        s => 1 + ((s - 2) * 9999) / 262142,
    }
}

/// v2's memory.swap.max from the CRI's memory+swap, as runc converts
/// (`ConvertMemorySwapToCgroupV2Value`): `None` leaves swap unset.
pub fn swap_for_v2(memory_swap: Option<i64>, memory: Option<i64>) -> Result<Option<i64>, Error> {
    let memory = memory.unwrap_or(0);
    match memory_swap.unwrap_or(0) {
        // Unlimited memory and swap not given: unlimited swap too.
        0 if memory == -1 => Ok(Some(-1)),
        0 => Ok(None),
        -1 => Ok(Some(-1)),
        s if memory == -1 => Ok(Some(s)),
        _ if memory == 0 => Err(Error::InvalidResources(
            "a memory+swap limit needs a memory limit".into(),
        )),
        s if s < memory => Err(Error::InvalidResources(format!(
            "memory+swap limit {s} is below the memory limit {memory}"
        ))),
        s => Ok(Some(s - memory)),
    }
}

/// The writes that apply `r` in `layout`, in order. Everything is checked
/// here, before anything is written.
pub fn plan(layout: &Layout, r: &Resources) -> Result<Vec<Write>, Error> {
    validate(r)?;
    let mut plan = Plan {
        layout,
        writes: Vec::new(),
    };

    // cpu: shares/weight, then period before quota (the kernel checks the
    // quota against the period).
    if r.cpu_shares.is_some() || r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let h = plan.need("cpu")?;
        let unified = layout.hierarchies[h].unified;
        if let Some(shares) = r.cpu_shares {
            if unified {
                plan.push(h, "cpu.weight", shares_to_weight(shares).to_string());
            } else {
                plan.push(h, "cpu.shares", shares.to_string());
            }
        }
        if unified {
            if r.cpu_quota.is_some() || r.cpu_period.is_some() {
                let quota = match r.cpu_quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                let value = match r.cpu_period {
                    Some(p) => format!("{quota} {p}"),
                    None => quota,
                };
                plan.push(h, "cpu.max", value);
            }
        } else {
            if let Some(p) = r.cpu_period {
                plan.push(h, "cpu.cfs_period_us", p.to_string());
            }
            if let Some(q) = r.cpu_quota {
                plan.push(h, "cpu.cfs_quota_us", q.to_string());
            }
        }
    }

    if r.cpuset_cpus.is_some() || r.cpuset_mems.is_some() {
        let h = plan.need("cpuset")?;
        // mems first: a task needs both non-empty, and v1 checks cpus
        // against the parent's mems too.
        if let Some(m) = &r.cpuset_mems {
            plan.push(h, "cpuset.mems", m.clone());
        }
        if let Some(c) = &r.cpuset_cpus {
            plan.push(h, "cpuset.cpus", c.clone());
        }
    }

    if r.memory_limit.is_some() || r.memory_swap_limit.is_some() {
        let h = plan.need("memory")?;
        if layout.hierarchies[h].unified {
            if let Some(swap) = swap_for_v2(r.memory_swap_limit, r.memory_limit)? {
                plan.push(h, "memory.swap.max", max_or(swap));
            }
            if let Some(m) = r.memory_limit {
                plan.push(h, "memory.max", max_or(m));
            }
        } else {
            // v1 keeps memsw >= memory at every step; the apply step orders
            // these two from the current values (see `order_v1_memory`).
            if let Some(m) = r.memory_limit {
                plan.push(h, "memory.limit_in_bytes", m.to_string());
            }
            let memsw = match (r.memory_swap_limit, r.memory_limit) {
                (Some(s), _) => Some(s),
                // Unlimited memory without a swap value: unlimited memsw too,
                // or the memory write could not exceed the old memsw.
                (None, Some(-1)) => Some(-1),
                _ => None,
            };
            if let Some(s) = memsw {
                plan.push(h, "memory.memsw.limit_in_bytes", s.to_string());
            }
        }
    }

    if !r.hugepage_limits.is_empty() {
        match layout.controller("hugetlb") {
            None => tracing::debug!("no hugetlb controller: hugepage limits skipped"),
            Some(hier) => {
                let h = index(layout, hier);
                for (size, limit) in &r.hugepage_limits {
                    let file = if hier.unified {
                        format!("hugetlb.{size}.max")
                    } else {
                        format!("hugetlb.{size}.limit_in_bytes")
                    };
                    plan.writes.push(Write {
                        hierarchy: h,
                        file,
                        value: limit.to_string(),
                        optional: true,
                    });
                }
            }
        }
    }

    if let Some(p) = r.pids_limit {
        let h = plan.need("pids")?;
        plan.push(h, "pids.max", max_or(p));
    }

    if !r.unified.is_empty() {
        let Some(u) = layout.unified() else {
            return Err(Error::InvalidResources(
                "unified (cgroup v2) resources on a host without cgroup v2".into(),
            ));
        };
        let h = index(layout, u);
        for (key, value) in &r.unified {
            let controller = key.split('.').next().unwrap_or_default();
            // On a hybrid host a key works only for a controller on the
            // cgroup2 mount (and the core "cgroup.*" files).
            if controller != "cgroup" && !u.has(controller) {
                return Err(Error::InvalidResources(format!(
                    "unified resource {key}: controller {controller:?} is not on the cgroup v2 \
                     hierarchy"
                )));
            }
            plan.push(h, key, value.clone());
        }
    }
    Ok(plan.writes)
}

/// The largest CPU or memory node number a cpuset list may name: the
/// kernel's own limit (NR_CPUS at most 8192 on x86_64, fewer nodes).
const CPU_LIST_MAX: u32 = 8191;

/// A cpuset list as the kernel reads it: ranges `a` or `a-b` (a <= b),
/// separated by commas, numbers up to [`CPU_LIST_MAX`].
fn is_cpu_list(l: &str) -> bool {
    let number = |n: &str| {
        !n.is_empty()
            && n.len() <= 5
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.parse::<u32>().is_ok_and(|n| n <= CPU_LIST_MAX)
    };
    l.split(',').all(|range| match range.split_once('-') {
        None => number(range),
        Some((a, b)) => number(a) && number(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
    })
}

fn validate(r: &Resources) -> Result<(), Error> {
    let bad = |what: String| Err(Error::InvalidResources(what));
    if let Some(s) = r.cpu_shares
        && !(2..=SHARES_MAX).contains(&s)
    {
        return bad(format!("cpu shares {s} outside 2..={SHARES_MAX}"));
    }
    if let Some(q) = r.cpu_quota
        && q != -1
        && q < 1000
    {
        return bad(format!(
            "cpu quota {q}us: must be -1 (unlimited) or at least 1000"
        ));
    }
    if let Some(p) = r.cpu_period
        && !(1000..=1_000_000).contains(&p)
    {
        return bad(format!("cpu period {p}us outside 1000..=1000000"));
    }
    for (name, list) in [("cpus", &r.cpuset_cpus), ("mems", &r.cpuset_mems)] {
        if let Some(l) = list
            && !is_cpu_list(l)
        {
            return bad(format!(
                "cpuset {name} {l:?} is not a list like 0-2,7 of numbers up to {CPU_LIST_MAX}"
            ));
        }
    }
    for (name, v) in [
        ("memory limit", r.memory_limit),
        ("memory+swap limit", r.memory_swap_limit),
        ("pids limit", r.pids_limit),
    ] {
        if let Some(v) = v
            && v < -1
        {
            return bad(format!("{name} {v} is negative"));
        }
    }
    if let (Some(m), Some(s)) = (r.memory_limit, r.memory_swap_limit)
        && m > 0
        && s > 0
        && s < m
    {
        return bad(format!(
            "memory+swap limit {s} is below the memory limit {m}"
        ));
    }
    for size in r.hugepage_limits.keys() {
        let ok = size.is_ascii()
            && size.len() > 2
            && size[..size.len() - 2].chars().all(|c| c.is_ascii_digit())
            && ["KB", "MB", "GB", "TB", "PB"].contains(&&size[size.len() - 2..]);
        if !ok {
            return bad(format!("hugepage size {size:?} is not like 2MB or 1GB"));
        }
    }
    for key in r.unified.keys() {
        if key.is_empty()
            || key.contains('/')
            || key.starts_with('.')
            || !key.contains('.')
            || key == "cgroup.procs"
            || key == "cgroup.threads"
            || key == "cgroup.subtree_control"
        {
            return bad(format!(
                "unified resource name {key:?} is not a cgroup file"
            ));
        }
    }
    Ok(())
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

fn index(layout: &Layout, h: &Hierarchy) -> usize {
    layout
        .hierarchies
        .iter()
        .position(|x| std::ptr::eq(x, h))
        .expect("hierarchy of this layout")
}

struct Plan<'a> {
    layout: &'a Layout,
    writes: Vec<Write>,
}

impl Plan<'_> {
    fn need(&self, controller: &str) -> Result<usize, Error> {
        match self.layout.controller(controller) {
            Some(h) => Ok(index(self.layout, h)),
            None => Err(Error::InvalidResources(format!(
                "the {controller} controller is not available on this host"
            ))),
        }
    }

    fn push(&mut self, hierarchy: usize, file: &str, value: String) {
        self.writes.push(Write {
            hierarchy,
            file: file.into(),
            value,
            optional: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::layout::tests::{hybrid_mountinfo, legacy_mountinfo, unified_mountinfo};
    use std::path::Path;

    fn layout(mountinfo: fn(&Path) -> String, v2: &str) -> Layout {
        let root = Path::new("/cg");
        Layout::parse(&mountinfo(root), root, |_| Ok(v2.into())).unwrap()
    }

    fn files(l: &Layout, w: &[Write]) -> Vec<String> {
        w.iter()
            .map(|w| {
                format!(
                    "{}/{}={}",
                    l.hierarchies[w.hierarchy].mount.display(),
                    w.file,
                    w.value
                )
            })
            .collect()
    }

    fn full() -> Resources {
        Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            memory_limit: Some(100 << 20),
            memory_swap_limit: Some(150 << 20),
            hugepage_limits: [("2MB".to_string(), 4 << 20)].into(),
            pids_limit: Some(64),
            unified: BTreeMap::new(),
            devices: None,
        }
    }

    #[test]
    fn weights_follow_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(100), 4);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(shares_to_weight(262143), 9999);
    }

    #[test]
    fn swap_conversion_follows_runc() {
        assert_eq!(swap_for_v2(None, Some(-1)).unwrap(), Some(-1));
        assert_eq!(swap_for_v2(Some(-1), None).unwrap(), Some(-1));
        assert_eq!(swap_for_v2(None, None).unwrap(), None);
        assert_eq!(swap_for_v2(Some(100), Some(-1)).unwrap(), Some(100));
        assert!(swap_for_v2(Some(100), None).is_err());
        assert!(swap_for_v2(Some(50), Some(100)).is_err());
        assert_eq!(swap_for_v2(Some(200), Some(100)).unwrap(), Some(100));
        // memory == memory+swap: no swap at all.
        assert_eq!(swap_for_v2(Some(100), Some(100)).unwrap(), Some(0));
    }

    #[test]
    fn v1_files() {
        let l = layout(legacy_mountinfo, "");
        let w = plan(&l, &full()).unwrap();
        assert_eq!(
            files(&l, &w),
            [
                "/cg/cpu,cpuacct/cpu.shares=512",
                "/cg/cpu,cpuacct/cpu.cfs_period_us=100000",
                "/cg/cpu,cpuacct/cpu.cfs_quota_us=50000",
                "/cg/cpuset/cpuset.mems=0",
                "/cg/cpuset/cpuset.cpus=0-1",
                "/cg/memory/memory.limit_in_bytes=104857600",
                "/cg/memory/memory.memsw.limit_in_bytes=157286400",
                "/cg/hugetlb/hugetlb.2MB.limit_in_bytes=4194304",
                "/cg/pids/pids.max=64",
            ]
        );
        assert!(
            w.iter()
                .filter(|w| w.optional)
                .all(|w| w.file.starts_with("hugetlb"))
        );
    }

    #[test]
    fn v2_files() {
        let l = layout(unified_mountinfo, "cpuset cpu io memory hugetlb pids");
        let mut r = full();
        r.unified.insert("memory.oom.group".into(), "1".into());
        let w = plan(&l, &r).unwrap();
        assert_eq!(
            files(&l, &w),
            [
                "/cg/cpu.weight=20",
                "/cg/cpu.max=50000 100000",
                "/cg/cpuset.mems=0",
                "/cg/cpuset.cpus=0-1",
                "/cg/memory.swap.max=52428800",
                "/cg/memory.max=104857600",
                "/cg/hugetlb.2MB.max=4194304",
                "/cg/pids.max=64",
                "/cg/memory.oom.group=1",
            ]
        );
    }

    #[test]
    fn v2_unlimited_values() {
        let l = layout(unified_mountinfo, "cpu memory pids");
        let r = Resources {
            cpu_quota: Some(-1),
            cpu_period: Some(100_000),
            memory_limit: Some(-1),
            pids_limit: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            files(&l, &plan(&l, &r).unwrap()),
            [
                "/cg/cpu.max=max 100000",
                "/cg/memory.swap.max=max",
                "/cg/memory.max=max",
                "/cg/pids.max=max"
            ]
        );
    }

    #[test]
    fn hybrid_host_puts_hugetlb_on_unified_and_skips_it_when_absent() {
        let l = layout(hybrid_mountinfo, "hugetlb");
        let w = plan(&l, &full()).unwrap();
        let f = files(&l, &w);
        assert!(
            f.contains(&"/cg/unified/hugetlb.2MB.max=4194304".to_string()),
            "{f:?}"
        );
        assert!(f.contains(&"/cg/cpu/cpu.shares=512".to_string()), "{f:?}");
        let l = layout(hybrid_mountinfo, "");
        let f = files(&l, &plan(&l, &full()).unwrap());
        assert!(!f.iter().any(|f| f.contains("hugetlb")), "{f:?}");
    }

    #[test]
    fn unified_map_needs_v2_for_its_controller() {
        let mut r = Resources::default();
        r.unified.insert("memory.oom.group".into(), "1".into());
        let e = plan(&layout(legacy_mountinfo, ""), &r).unwrap_err();
        assert!(e.to_string().contains("without cgroup v2"), "{e}");
        let e = plan(&layout(hybrid_mountinfo, "hugetlb"), &r).unwrap_err();
        assert!(e.to_string().contains("memory.oom.group"), "{e}");
        let mut r = Resources::default();
        r.unified.insert("hugetlb.2MB.max".into(), "0".into());
        assert!(plan(&layout(hybrid_mountinfo, "hugetlb"), &r).is_ok());
    }

    #[test]
    fn bad_values_are_refused_before_planning() {
        let l = layout(unified_mountinfo, "cpu memory pids cpuset hugetlb");
        let cases: Vec<(Resources, &str)> = vec![
            (
                Resources {
                    cpu_shares: Some(1),
                    ..Default::default()
                },
                "shares",
            ),
            (
                Resources {
                    cpu_quota: Some(10),
                    ..Default::default()
                },
                "quota",
            ),
            (
                Resources {
                    cpu_period: Some(10),
                    ..Default::default()
                },
                "period",
            ),
            (
                Resources {
                    cpuset_cpus: Some("0;rm".into()),
                    ..Default::default()
                },
                "cpus",
            ),
            (
                // The hostile campaign's value: the kernel said EOVERFLOW.
                Resources {
                    cpuset_cpus: Some("16008264327340398184".into()),
                    ..Default::default()
                },
                "cpus",
            ),
            (
                Resources {
                    cpuset_mems: Some("3-1".into()),
                    ..Default::default()
                },
                "mems",
            ),
            (
                Resources {
                    cpuset_cpus: Some("0,,1".into()),
                    ..Default::default()
                },
                "cpus",
            ),
            (
                Resources {
                    memory_limit: Some(-5),
                    ..Default::default()
                },
                "memory",
            ),
            (
                Resources {
                    memory_limit: Some(100),
                    memory_swap_limit: Some(50),
                    ..Default::default()
                },
                "below",
            ),
            (
                Resources {
                    hugepage_limits: [("2XB".to_string(), 1)].into(),
                    ..Default::default()
                },
                "hugepage",
            ),
            (
                Resources {
                    unified: [("../x".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "../x",
            ),
            (
                Resources {
                    unified: [("cgroup.procs".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "cgroup.procs",
            ),
        ];
        for (r, want) in cases {
            let e = plan(&l, &r).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn missing_controller_is_named() {
        let l = layout(unified_mountinfo, "memory");
        let r = Resources {
            pids_limit: Some(5),
            ..Default::default()
        };
        let e = plan(&l, &r).unwrap_err().to_string();
        assert!(e.contains("pids"), "{e}");
    }

    #[test]
    fn cpu_lists_are_parsed_as_the_kernel_reads_them() {
        for ok in ["0", "0-1", "0-2,7", "3,1", "8191", "0-8191"] {
            assert!(super::is_cpu_list(ok), "{ok}");
        }
        for bad in [
            "", "-", "1-", "-1", "2-1", "0,", ",0", "8192", "99999999", "0 1", "0x1",
        ] {
            assert!(!super::is_cpu_list(bad), "{bad}");
        }
    }

    #[test]
    fn a_value_the_kernel_refuses_is_an_invalid_argument() {
        use crate::error::{Classify, Kind};
        let refused = |errno| crate::cgroups::Error::Write {
            path: "/sys/fs/cgroup/cpuset/x/cpuset.cpus".into(),
            value: "9".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EINVAL, libc::ERANGE, libc::EOVERFLOW] {
            assert!(matches!(refused(errno).kind(), Kind::InvalidArgument));
        }
        assert!(matches!(refused(libc::EIO).kind(), Kind::Internal));
        // The hostile campaign's pod with a 4 KiB memory limit: the kernel
        // cannot charge a child cgroup to it (mkdir says ENOMEM).
        assert!(matches!(
            refused(libc::ENOMEM).kind(),
            Kind::ResourceExhausted
        ));
        let mkdir = crate::cgroups::Error::Io {
            op: "create cgroup",
            path: "/sys/fs/cgroup/memory/pod/crius-init_x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert!(matches!(mkdir.kind(), Kind::ResourceExhausted));
        // The campaign's UpdatePodSandboxResources with a 24-byte memory
        // limit: the pod uses more and the kernel cannot reclaim it.
        let below_usage = crate::cgroups::Error::Write {
            path: "/sys/fs/cgroup/memory/pod/memory.limit_in_bytes".into(),
            value: "24".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(matches!(below_usage.kind(), Kind::FailedPrecondition));
        // EBUSY elsewhere (cgroup.procs, subtree_control) is crius's own
        // mistake.
        let procs = crate::cgroups::Error::Write {
            path: "/sys/fs/cgroup/pod/cgroup.procs".into(),
            value: "1".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(matches!(procs.kind(), Kind::Internal));
    }

    #[test]
    fn empty_resources_write_nothing() {
        let l = layout(legacy_mountinfo, "");
        assert!(plan(&l, &Resources::default()).unwrap().is_empty());
        assert!(Resources::default().is_empty());
    }
}
