#![allow(dead_code)] // helpers used by some test files only
//! The harness's view of cgroups, whatever the machine's layout: cgroup v1
//! (one hierarchy per controller, as on the development host), hybrid, or
//! v2 alone (the VM tier's guests, with either driver). The hierarchies come
//! from /proc/self/mountinfo and a process's cgroup from /proc/PID/cgroup
//! (cgroups(7)); each check then reads the v1 or the v2 file of what it
//! wants to know (memory.limit_in_bytes or memory.max, cpu.shares or
//! cpu.weight, ...). Paths are "/"-rooted as crius reports them
//! (`cgroupPath` in a verbose status): the tests run in the initial cgroup
//! namespace, where those are the paths below each mount.

use std::path::PathBuf;

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    /// v1: the controllers bound to it (its super options); empty for v2.
    controllers: Vec<String>,
    unified: bool,
}

/// The cgroup mounts of /proc/self/mountinfo, in its order.
fn hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines().filter_map(parse_mount).collect()
}

/// `ID PARENT MAJ:MIN ROOT MOUNT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER`
fn parse_mount(line: &str) -> Option<Hierarchy> {
    let (pre, post) = line.split_once(" - ")?;
    let mount = pre.split(' ').nth(4)?;
    let mut post = post.split(' ');
    let fstype = post.next()?;
    let superopts = post.nth(1).unwrap_or("");
    let unified = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return None,
    };
    let controllers = if unified {
        Vec::new()
    } else {
        superopts
            .split(',')
            .filter(|o| {
                !matches!(
                    *o,
                    "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode"
                ) && !o.contains('=')
            })
            .map(String::from)
            .collect()
    };
    Some(Hierarchy {
        mount: PathBuf::from(mount),
        controllers,
        unified,
    })
}

/// cgroup v2 alone: no v1 hierarchy carries a controller.
pub fn unified() -> bool {
    let all = hierarchies();
    all.iter().any(|h| h.unified) && all.iter().all(|h| h.unified || h.controllers.is_empty())
}

/// The hierarchy holding `controller`: its v1 hierarchy, else cgroup2.
fn hierarchy(controller: &str) -> Hierarchy {
    let all = hierarchies();
    all.iter()
        .find(|h| h.controllers.iter().any(|c| c == controller))
        .or_else(|| all.iter().find(|h| h.unified))
        .cloned()
        .unwrap_or_else(|| panic!("no cgroup hierarchy holds {controller}"))
}

/// The directory of cgroup `path` in the hierarchy of `controller`.
pub fn dir(path: &str, controller: &str) -> PathBuf {
    hierarchy(controller)
        .mount
        .join(path.trim_start_matches('/'))
}

/// The distinct directories of `path` for `controllers`: one per v1
/// hierarchy, a single one on v2 (a process written to each ends up in
/// every one of them).
pub fn dirs(path: &str, controllers: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for c in controllers {
        let d = dir(path, c);
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// The cgroup of process `pid` in the hierarchy of `controller`, from
/// /proc/PID/cgroup (`ID:CONTROLLERS:PATH`; v2's line is `0::PATH`).
pub fn of_pid(pid: i32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let h = hierarchy(controller);
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        let ours = if h.unified {
            ctls.is_empty()
        } else {
            ctls.split(',').any(|c| c == controller)
        };
        ours.then(|| path.to_string())
    })
}

/// The processes directly in `path` (its cgroup.procs in the pids
/// hierarchy, or v2's); none when the cgroup is gone.
pub fn procs(path: &str) -> Vec<i32> {
    std::fs::read_to_string(dir(path, "pids").join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroups directly below `path` (their names).
pub fn children(path: &str, controller: &str) -> Vec<String> {
    std::fs::read_dir(dir(path, controller))
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `file` of `path` in the hierarchy of `controller`, trimmed.
pub fn read(path: &str, controller: &str, file: &str) -> String {
    let f = dir(path, controller).join(file);
    std::fs::read_to_string(&f)
        .unwrap_or_else(|e| panic!("read {}: {e}", f.display()))
        .trim()
        .to_string()
}

/// The memory limit of `path`, None when unlimited (v1
/// memory.limit_in_bytes, v2 memory.max).
pub fn memory_limit(path: &str) -> Option<u64> {
    if unified() {
        match read(path, "memory", "memory.max").as_str() {
            "max" => None,
            v => Some(v.parse().expect("memory.max")),
        }
    } else {
        // "Unlimited" is the largest page multiple below i64::MAX.
        let v: u64 = read(path, "memory", "memory.limit_in_bytes")
            .parse()
            .expect("memory.limit_in_bytes");
        (v < 1 << 62).then_some(v)
    }
}

/// The CPU weight of `path`: v1 cpu.shares, v2 cpu.weight. Compare with
/// [`weight_of_shares`].
pub fn cpu_weight(path: &str) -> u64 {
    let file = if unified() {
        "cpu.weight"
    } else {
        "cpu.shares"
    };
    read(path, "cpu", file).parse().expect(file)
}

/// What a CRI `cpu_shares` becomes in this layout's weight file: the same
/// on v1; on v2 runc's (and kubelet's) map of [2, 262144] onto [1, 10000].
pub fn weight_of_shares(shares: u64) -> u64 {
    if unified() {
        1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
    } else {
        shares
    }
}

/// The CFS quota of `path` in microseconds per period, None without one
/// (v1 cpu.cfs_quota_us -1, v2 cpu.max `max PERIOD`).
pub fn cpu_quota(path: &str) -> Option<u64> {
    if unified() {
        let max = read(path, "cpu", "cpu.max");
        match max.split_whitespace().next() {
            Some("max") => None,
            Some(v) => Some(v.parse().expect("cpu.max")),
            None => panic!("empty cpu.max in {path}"),
        }
    } else {
        match read(path, "cpu", "cpu.cfs_quota_us").as_str() {
            "-1" => None,
            v => Some(v.parse().expect("cpu.cfs_quota_us")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_of_both_versions() {
        let v1 = parse_mount(
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory",
        )
        .unwrap();
        assert_eq!(
            (v1.mount, v1.controllers, v1.unified),
            (
                "/sys/fs/cgroup/memory".into(),
                vec!["memory".to_string()],
                false
            )
        );
        let named = parse_mount(
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        )
        .unwrap();
        assert!(named.controllers.is_empty(), "{named:?}");
        let v2 =
            parse_mount("25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate").unwrap();
        assert!(v2.unified && v2.controllers.is_empty());
        assert!(parse_mount("26 20 0:23 / /tmp rw - tmpfs tmpfs rw").is_none());
    }
}
