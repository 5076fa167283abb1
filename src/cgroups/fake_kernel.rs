//! For tests on fixture trees: what the kernel would put in a new cgroup
//! directory, so the fs layer runs unchanged against a tempdir.

use std::path::Path;

use super::layout::Hierarchy;

/// The interface files a kernel would create in a new cgroup of `h`,
/// with its defaults.
pub fn populate(dir: &Path, h: &Hierarchy) {
    let mut files: Vec<(&str, &str)> = vec![("cgroup.procs", "")];
    if h.unified {
        files.extend([
            ("cgroup.controllers", "cpu cpuset memory pids hugetlb"),
            ("cgroup.subtree_control", ""),
            ("cgroup.freeze", "0"),
            ("cgroup.kill", ""),
            ("cgroup.events", "populated 0\nfrozen 0"),
        ]);
    } else {
        files.push(("tasks", ""));
    }
    for c in &h.controllers {
        let v1 = !h.unified;
        match c.as_str() {
            "cpu" if v1 => files.extend([
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "-1"),
            ]),
            "cpu" => files.extend([
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("cpu.stat", "usage_usec 7\nuser_usec 5"),
            ]),
            "cpuacct" => files.push(("cpuacct.usage", "12345")),
            "cpuset" => files.extend([("cpuset.cpus", ""), ("cpuset.mems", "")]),
            "memory" if v1 => files.extend([
                ("memory.limit_in_bytes", "9223372036854771712"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
                ),
                ("memory.usage_in_bytes", "4096"),
                ("memory.stat", "cache 0\ntotal_inactive_file 1024"),
            ]),
            "memory" => files.extend([
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("memory.oom.group", "0"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0"),
                ("memory.current", "8192"),
                ("memory.stat", "anon 0\ninactive_file 4096"),
            ]),
            "pids" => files.extend([("pids.max", "max"), ("pids.current", "0")]),
            "hugetlb" if v1 => files.push(("hugetlb.2MB.limit_in_bytes", "0")),
            "hugetlb" => files.push(("hugetlb.2MB.max", "max")),
            "freezer" => files.push(("freezer.state", "THAWED")),
            // Writes replace the content here: the last rule written.
            "devices" => files.extend([
                ("devices.allow", ""),
                ("devices.deny", ""),
                ("devices.list", "a *:* rwm"),
            ]),
            _ => {}
        }
    }
    for (f, v) in files {
        std::fs::write(dir.join(f), v).unwrap();
    }
}
