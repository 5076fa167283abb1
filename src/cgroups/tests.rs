//! The cgroup layer on fixture trees (v1, v2, hybrid) with a fake kernel
//! that fills new directories with interface files, and the systemd driver
//! against a recording fake: no privileges needed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::layout::tests::{hybrid_mountinfo, legacy_mountinfo, unified_mountinfo};
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cg: Cgroups,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    V1,
    V2,
    Hybrid,
}

fn fixture(kind: Kind) -> Fixture {
    fixture_with(kind, CgroupDriver::Cgroupfs, None)
}

fn fixture_with(kind: Kind, driver: CgroupDriver, units: Option<Box<dyn UnitManager>>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cgroup");
    let mountinfo = match kind {
        Kind::V1 => legacy_mountinfo(&root),
        Kind::V2 => unified_mountinfo(&root),
        Kind::Hybrid => hybrid_mountinfo(&root),
    };
    // The mounts' roots, as the kernel shows them.
    let text = &mountinfo;
    let parsed = Layout::parse(text, &root, |_| Ok(String::new())).unwrap();
    for h in &parsed.hierarchies {
        std::fs::create_dir_all(&h.mount).unwrap();
        fake_kernel::populate(&h.mount, h);
        if h.has("cpuset") {
            std::fs::write(h.mount.join("cpuset.cpus"), "0-3").unwrap();
            std::fs::write(h.mount.join("cpuset.mems"), "0").unwrap();
        }
    }
    if kind == Kind::Hybrid {
        std::fs::write(root.join("unified/cgroup.controllers"), "hugetlb").unwrap();
    }
    let mi = dir.path().join("mountinfo");
    std::fs::write(&mi, mountinfo).unwrap();
    let layout = Layout::detect(&mi, &root).unwrap();
    let mut cg = Cgroups::with_parts(driver, layout, units);
    cg.tree.fake_kernel = true;
    Fixture {
        _dir: dir,
        root,
        cg,
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
        .trim()
        .to_string()
}

fn limits() -> Resources {
    Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpuset_cpus: Some("1".into()),
        memory_limit: Some(64 << 20),
        memory_swap_limit: Some(96 << 20),
        hugepage_limits: [("2MB".to_string(), 2 << 20)].into(),
        pids_limit: Some(50),
        ..Default::default()
    }
}

#[test]
fn v1_pod_and_container_get_their_limits() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("", "p1").unwrap();
    assert_eq!(pod.path, "/crius/pod-p1");
    assert!(f.cg.create(&pod, &limits()).unwrap());
    let r = &f.root;
    assert_eq!(read(r.join("cpu,cpuacct/crius/pod-p1/cpu.shares")), "512");
    assert_eq!(
        read(r.join("cpu,cpuacct/crius/pod-p1/cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(
        read(r.join("memory/crius/pod-p1/memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(
        read(r.join("memory/crius/pod-p1/memory.memsw.limit_in_bytes")),
        "100663296"
    );
    assert_eq!(read(r.join("pids/crius/pod-p1/pids.max")), "50");
    assert_eq!(
        read(r.join("hugetlb/crius/pod-p1/hugetlb.2MB.limit_in_bytes")),
        "2097152"
    );
    // New v1 cpusets are seeded from their parent, then limited.
    assert_eq!(read(r.join("cpuset/crius/cpuset.cpus")), "0-3");
    assert_eq!(read(r.join("cpuset/crius/pod-p1/cpuset.cpus")), "1");
    assert_eq!(read(r.join("cpuset/crius/pod-p1/cpuset.mems")), "0");
    // Every hierarchy has the cgroup; freezer too.
    assert!(r.join("freezer/crius/pod-p1").is_dir());

    let c = f.cg.container_path(&pod, "c1").unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), std::process::id() as i32)
        .unwrap();
    assert_eq!(f.cg.procs_files(&c).len(), 7);
    for file in f.cg.procs_files(&c) {
        assert_eq!(read(file), std::process::id().to_string());
    }
    assert_eq!(f.cg.procs(&pod).unwrap(), vec![std::process::id() as i32]);
}

#[test]
fn existing_cgroup_is_left_as_kubelet_set_it() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("/kubepods/burstable/podu1", "p1").unwrap();
    assert!(f.cg.create(&pod, &Resources::default()).unwrap());
    let shares = f
        .root
        .join("cpu,cpuacct/kubepods/burstable/podu1/cpu.shares");
    assert_eq!(read(&shares), "1024");
    assert!(!f.cg.create(&pod, &limits()).unwrap());
    assert_eq!(read(&shares), "1024");
}

#[test]
fn v2_enables_controllers_and_converts() {
    let f = fixture(Kind::V2);
    assert!(f.cg.is_unified());
    let pod = f.cg.pod_path("/kubepods/podu2", "p").unwrap();
    let mut res = limits();
    res.unified.insert("memory.oom.group".into(), "1".into());
    assert!(f.cg.create(&pod, &res).unwrap());
    let d = f.root.join("kubepods/podu2");
    assert_eq!(read(d.join("cpu.weight")), "20");
    assert_eq!(read(d.join("cpu.max")), "50000 100000");
    assert_eq!(read(d.join("memory.max")), "67108864");
    assert_eq!(read(d.join("memory.swap.max")), "33554432");
    assert_eq!(read(d.join("hugetlb.2MB.max")), "2097152");
    assert_eq!(read(d.join("pids.max")), "50");
    assert_eq!(read(d.join("memory.oom.group")), "1");
    assert_eq!(read(d.join("cpuset.cpus")), "1");
    // Every ancestor delegates its controllers down.
    for anc in [f.root.clone(), f.root.join("kubepods")] {
        let sc = read(anc.join("cgroup.subtree_control"));
        assert!(sc.contains("+memory") && sc.contains("+cpu"), "{sc}");
    }
}

#[test]
fn hybrid_host_writes_hugetlb_to_the_unified_mount() {
    let f = fixture(Kind::Hybrid);
    assert!(!f.cg.is_unified());
    assert_eq!(f.cg.layout().mode, Mode::Hybrid);
    let pod = f.cg.pod_path("", "h").unwrap();
    assert!(f.cg.create(&pod, &limits()).unwrap());
    assert_eq!(
        read(f.root.join("unified/crius/pod-h/hugetlb.2MB.max")),
        "2097152"
    );
    assert_eq!(read(f.root.join("cpu/crius/pod-h/cpu.shares")), "512");
    assert_eq!(
        read(f.root.join("unified/cgroup.subtree_control")),
        "+hugetlb"
    );
    // The process joins the unified hierarchy too.
    let c = f.cg.container_path(&pod, "c").unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), 7).unwrap();
    assert_eq!(
        read(f.root.join("unified/crius/pod-h/crius-c/cgroup.procs")),
        "7"
    );
}

#[test]
fn a_process_joins_v1_through_tasks_and_v2_through_cgroup_procs() {
    for (kind, v1, v2) in [(Kind::V1, 7, 0), (Kind::Hybrid, 8, 1), (Kind::V2, 0, 1)] {
        let f = fixture(kind);
        let pod = f.cg.pod_path("", "j").unwrap();
        f.cg.create(&pod, &Resources::default()).unwrap();
        let c = f.cg.container_path(&pod, "c").unwrap();
        f.cg.create(&c, &Resources::default()).unwrap();
        let files = f.cg.join_files(&c);
        assert_eq!(files.len(), f.cg.procs_files(&c).len());
        let named = |n: &str| files.iter().filter(|p| p.file_name().unwrap() == n).count();
        assert_eq!((named("tasks"), named("cgroup.procs")), (v1, v2));
        // Each is an interface file of the container's own directory.
        for file in &files {
            assert!(file.is_file(), "{}", file.display());
            assert!(
                file.parent().unwrap().ends_with("crius-c"),
                "{}",
                file.display()
            );
        }
        // The unified one is the last (it is the one a process is cloned into).
        if v2 == 1 {
            assert!(files.last().unwrap().starts_with(f.root.join(match kind {
                Kind::Hybrid => "unified",
                _ => "",
            })));
        }
    }
}

#[test]
fn update_is_all_or_nothing() {
    let f = fixture(Kind::V2);
    let pod = f.cg.pod_path("", "u").unwrap();
    f.cg.create(&pod, &limits()).unwrap();
    let d = f.root.join("crius/pod-u");

    // A file that cannot be read mid-way: what was written is restored.
    std::fs::write(d.join("pids.max"), [0xff, 0xfe]).unwrap();
    let res = Resources {
        cpu_shares: Some(2048),
        memory_limit: Some(32 << 20),
        pids_limit: Some(10),
        ..Default::default()
    };
    let e = f.cg.update(&pod, &res).unwrap_err();
    assert!(e.to_string().contains("pids.max"), "{e}");
    assert_eq!(read(d.join("cpu.weight")), "20");
    assert_eq!(read(d.join("memory.max")), "67108864");

    // A missing file is found before anything is written.
    std::fs::remove_file(d.join("pids.max")).unwrap();
    let e = f.cg.update(&pod, &res).unwrap_err();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert_eq!(read(d.join("cpu.weight")), "20");

    // Bad values are refused before anything is written.
    let e =
        f.cg.update(
            &pod,
            &Resources {
                cpu_shares: Some(2048),
                cpu_quota: Some(5),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        crate::error::Classify::kind(&e),
        crate::error::Kind::InvalidArgument
    );
    assert_eq!(read(d.join("cpu.weight")), "20");

    std::fs::write(d.join("pids.max"), "50").unwrap();
    f.cg.update(&pod, &res).unwrap();
    assert_eq!(read(d.join("cpu.weight")), "79");
    assert_eq!(read(d.join("memory.max")), "33554432");
    assert_eq!(read(d.join("pids.max")), "10");

    let gone = f.cg.pod_path("", "gone").unwrap();
    let e = f.cg.update(&gone, &res).unwrap_err();
    assert!(e.to_string().contains("pod-gone"), "{e}");
}

#[test]
fn v1_memory_order_follows_the_current_memsw() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("", "m").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    let d = f.root.join("memory/crius/pod-m");
    let writes = resources::plan(
        f.cg.layout(),
        &Resources {
            memory_limit: Some(100),
            memory_swap_limit: Some(200),
            ..Default::default()
        },
    )
    .unwrap();
    // memsw currently unlimited: memory may go first.
    f.cg.tree.apply(&pod.path, &writes).unwrap();
    assert_eq!(read(d.join("memory.memsw.limit_in_bytes")), "200");
    // Raising both above the current memsw: the plan order would write
    // memory 300 > memsw 200 first; the kernel refuses that, so crius
    // raises memsw first. Seen through a file that records the order.
    let raise = resources::plan(
        f.cg.layout(),
        &Resources {
            memory_limit: Some(300),
            memory_swap_limit: Some(400),
            ..Default::default()
        },
    )
    .unwrap();
    let mut todo: Vec<(PathBuf, &resources::Write)> =
        raise.iter().map(|w| (d.join(&w.file), w)).collect();
    super::fs::order_v1_memory(&mut todo);
    assert_eq!(todo[0].1.file, "memory.memsw.limit_in_bytes");
}

#[test]
fn kill_all_kills_every_process_on_v1() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("", "k").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    let c = f.cg.container_path(&pod, "c").unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), child.id() as i32)
        .unwrap();
    f.cg.kill_all(&pod).unwrap();
    // It has exited when kill_all returns: only its parent's wait is left.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    assert!(stat.contains(") Z "), "{stat}");
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
}

#[test]
fn kill_all_uses_cgroup_kill_on_v2() {
    let f = fixture(Kind::V2);
    let pod = f.cg.pod_path("", "k").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    f.cg.kill_all(&pod).unwrap();
    assert_eq!(read(f.root.join("crius/pod-k/cgroup.kill")), "1");
}

#[test]
fn oom_counters_and_stats() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("", "o").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    assert_eq!(f.cg.oom_kills(&pod).unwrap(), 0);
    std::fs::write(
        f.root.join("memory/crius/pod-o/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(f.cg.oom_kills(&pod).unwrap(), 3);
    let s = f.cg.stats(&pod).unwrap();
    assert_eq!(s.cpu.unwrap().usage_ns, 12345);
    assert_eq!(s.memory.unwrap().working_set_bytes, 4096 - 1024);
    assert_eq!(s.pids, Some(0));

    let f = fixture(Kind::V2);
    let pod = f.cg.pod_path("", "o").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    std::fs::write(
        f.root.join("crius/pod-o/memory.events"),
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(f.cg.oom_kills(&pod).unwrap(), 2);
    let s = f.cg.stats(&pod).unwrap();
    assert_eq!(s.cpu.unwrap().usage_ns, 7000);
    let m = s.memory.unwrap();
    assert_eq!(m.usage_bytes, 8192);
    assert_eq!(m.working_set_bytes, 4096);
}

#[test]
fn stats_v1_memory_swap_and_limit() {
    let f = fixture(Kind::V1);
    let pod = f.cg.pod_path("", "s").unwrap();
    let res = Resources {
        memory_limit: Some(64 << 20),
        ..Default::default()
    };
    f.cg.create(&pod, &res).unwrap();
    let mem = f.root.join("memory/crius/pod-s");
    std::fs::write(mem.join("memory.usage_in_bytes"), "10485760").unwrap();
    std::fs::write(
        mem.join("memory.stat"),
        "rss 1\ntotal_rss 6291456\ntotal_cache 3145728\ntotal_mapped_file 4096\ntotal_inactive_file 2097152\ntotal_pgfault 900\ntotal_pgmajfault 3\n",
    )
    .unwrap();
    std::fs::write(mem.join("memory.memsw.usage_in_bytes"), "11534336").unwrap();
    std::fs::write(
        f.root.join("cpu,cpuacct/crius/pod-s/cpu.stat"),
        "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
    )
    .unwrap();
    std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "100663296").unwrap();
    let s = f.cg.stats(&pod).unwrap();
    let cpu = s.cpu.unwrap();
    assert_eq!(cpu.usage_ns, 12345);
    assert_eq!(
        (cpu.periods, cpu.throttled_periods, cpu.throttled_ns),
        (10, 4, 5000)
    );
    let m = s.memory.clone().unwrap();
    assert_eq!(m.usage_bytes, 10 << 20);
    assert_eq!(m.working_set_bytes, 8 << 20);
    assert_eq!(m.rss_bytes, 6 << 20);
    assert_eq!((m.page_faults, m.major_page_faults), (900, 3));
    assert_eq!((m.cache_bytes, m.mapped_file_bytes), (3 << 20, 4096));
    assert_eq!(
        m.max_usage_bytes, 0,
        "no memory.max_usage_in_bytes in the fixture"
    );
    assert_eq!(m.limit_bytes, Some(64 << 20));
    assert_eq!(m.available_bytes(), Some(56 << 20));
    let swap = s.swap.clone().unwrap();
    assert_eq!(swap.usage_bytes, 1 << 20);
    assert_eq!(swap.limit_bytes, Some(32 << 20));
    assert_eq!(swap.available_bytes(), Some(31 << 20));
    assert_eq!(s.psi, stats::Psi::default(), "no PSI on v1");
}

#[test]
fn stats_v2_memory_swap_pids_and_psi() {
    let f = fixture(Kind::V2);
    let pod = f.cg.pod_path("", "s").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    let dir = f.root.join("crius/pod-s");
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2500000\nuser_usec 2000000\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.current"), "20971520").unwrap();
    std::fs::write(
        dir.join("memory.stat"),
        "anon 12582912\nfile 8388608\nfile_mapped 4096\nkernel 8192\ninactive_file 4194304\npgfault 77\npgmajfault 2\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.swap.current"), "4096").unwrap();
    std::fs::write(dir.join("pids.current"), "4").unwrap();
    std::fs::write(
        dir.join("cpu.pressure"),
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=5000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=10\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 5\noom 0\noom_kill 0\n",
    )
    .unwrap();
    let s = f.cg.stats(&pod).unwrap();
    let cpu = s.cpu.unwrap();
    assert_eq!(cpu.usage_ns, 2_500_000_000);
    assert_eq!(cpu.user_ns, 2_000_000_000);
    let m = s.memory.clone().unwrap();
    assert_eq!(m.working_set_bytes, 16 << 20);
    assert_eq!(m.rss_bytes, 12 << 20);
    assert_eq!((m.page_faults, m.major_page_faults), (77, 2));
    assert_eq!(
        (m.cache_bytes, m.mapped_file_bytes, m.kernel_bytes),
        (8 << 20, 4096, 8192)
    );
    assert_eq!(m.failcnt, 5);
    assert_eq!(m.limit_bytes, None, "memory.max is max");
    assert_eq!(m.available_bytes(), None);
    let swap = s.swap.clone().unwrap();
    assert_eq!((swap.usage_bytes, swap.limit_bytes), (4096, None));
    assert_eq!(s.pids, Some(4));
    let cpu = s.psi.cpu.clone().unwrap();
    assert_eq!(cpu.some.total_us, 5000);
    assert_eq!(cpu.some.avg10, 12.5);
    assert_eq!(cpu.full.total_us, 10);
    assert_eq!(s.psi.memory, None, "no memory.pressure file in the fixture");
}

#[test]
fn remove_is_recursive_and_idempotent() {
    let f = fixture(Kind::Hybrid);
    let pod = f.cg.pod_path("", "r").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    let c = f.cg.container_path(&pod, "c").unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), 1).unwrap();
    f.cg.remove(&pod).unwrap();
    for h in &f.cg.layout().hierarchies {
        assert!(!h.dir(&pod.path).exists(), "{}", h.mount.display());
        assert!(h.dir("/crius").exists());
    }
    f.cg.remove(&pod).unwrap();
    let root = CgroupPath {
        path: "/".into(),
        unit: None,
    };
    assert!(f.cg.remove(&root).is_err());
}

#[test]
fn create_with_pid_refuses_an_existing_leaf() {
    let f = fixture(Kind::V2);
    let pod = f.cg.pod_path("", "e").unwrap();
    let c = f.cg.container_path(&pod, "c").unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), 5).unwrap();
    let e =
        f.cg.create_with_pid(&c, &Resources::default(), 6)
            .unwrap_err();
    assert_eq!(
        crate::error::Classify::kind(&e),
        crate::error::Kind::AlreadyExists
    );
}

#[test]
fn default_parent_is_checked_per_driver() {
    let f = fixture(Kind::V2);
    assert!(
        Cgroups::with_parts(CgroupDriver::Cgroupfs, f.cg.layout().clone(), None)
            .with_default_parent("relative")
            .is_err()
    );
    let cg = Cgroups::with_parts(CgroupDriver::Cgroupfs, f.cg.layout().clone(), None)
        .with_default_parent("/other")
        .unwrap();
    assert_eq!(cg.pod_path("", "x").unwrap().path, "/other/pod-x");
}

/// What systemd would do: records calls, and makes a started unit's cgroup.
#[derive(Debug, Default)]
struct FakeSystemd {
    calls: Mutex<Vec<String>>,
    units: Mutex<Vec<String>>,
}

#[derive(Debug)]
struct Shared(Arc<FakeSystemd>);

impl UnitManager for Shared {
    fn start(&self, unit: &Unit, res: &Resources, pid: Option<i32>) -> Result<(), Error> {
        let s = &self.0;
        s.calls.lock().unwrap().push(format!(
            "start {} in {} pid {pid:?} props {}",
            unit.name,
            unit.slice,
            systemd::start_properties(unit, res, pid, true)?.len()
        ));
        s.units.lock().unwrap().push(unit.name.clone());
        Ok(())
    }

    fn exists(&self, unit: &Unit) -> Result<bool, Error> {
        Ok(self.0.units.lock().unwrap().contains(&unit.name))
    }

    fn set_resources(&self, unit: &Unit, res: &Resources) -> Result<(), Error> {
        let n = systemd::resource_properties(res, true)?.len();
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("set {} {n}", unit.name));
        Ok(())
    }

    fn stop(&self, unit: &Unit) -> Result<(), Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("stop {}", unit.name));
        self.0.units.lock().unwrap().retain(|u| *u != unit.name);
        Ok(())
    }

    fn attach(&self, unit: &Unit, pid: i32) -> Result<(), Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("attach {} pid {pid}", unit.name));
        if self.0.units.lock().unwrap().contains(&unit.name) {
            Ok(())
        } else {
            Err(Error::SystemdJob {
                op: "attach a process to",
                unit: unit.name.clone(),
                result: "no such unit".into(),
            })
        }
    }
}

#[test]
fn systemd_driver_starts_slices_and_scopes() {
    let fake = Arc::new(FakeSystemd::default());
    let f = fixture_with(
        Kind::V2,
        CgroupDriver::Systemd,
        Some(Box::new(Shared(fake.clone()))),
    );
    let pod =
        f.cg.pod_path("kubepods-burstable-podu9.slice", "p")
            .unwrap();
    assert!(f.cg.create(&pod, &limits()).unwrap());
    let d = f
        .root
        .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu9.slice");
    assert_eq!(read(d.join("memory.max")), "67108864");
    // A unit that exists is kubelet's.
    assert!(!f.cg.create(&pod, &limits()).unwrap());

    let c = f.cg.container_path(&pod, "c1").unwrap();
    let e = f.cg.create(&c, &Resources::default()).unwrap_err();
    assert!(matches!(e, Error::NeedsProcess(_)), "{e}");
    f.cg.create_with_pid(
        &c,
        &Resources {
            pids_limit: Some(9),
            ..Default::default()
        },
        77,
    )
    .unwrap();
    assert_eq!(read(d.join("crius-c1.scope/pids.max")), "9");
    assert_eq!(read(d.join("crius-c1.scope/cgroup.procs")), "77");
    f.cg.update(
        &c,
        &Resources {
            pids_limit: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(read(d.join("crius-c1.scope/pids.max")), "10");
    f.cg.remove(&c).unwrap();
    assert!(!d.join("crius-c1.scope").exists());
    f.cg.remove(&pod).unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            "start kubepods-burstable-podu9.slice in kubepods-burstable.slice pid None props 12",
            "start crius-c1.scope in kubepods-burstable-podu9.slice pid Some(77) props 9",
            "set crius-c1.scope 1",
            "stop crius-c1.scope",
            "stop kubepods-burstable-podu9.slice",
        ]
    );
}

#[test]
fn systemd_failed_create_stops_the_unit_and_leaves_nothing() {
    let fake = Arc::new(FakeSystemd::default());
    let f = fixture_with(
        Kind::V2,
        CgroupDriver::Systemd,
        Some(Box::new(Shared(fake.clone()))),
    );
    let pod = f.cg.pod_path("", "p").unwrap();
    assert_eq!(pod.path, "/crius.slice/crius-podp.slice");
    // A file this (fake) kernel lacks.
    let res = Resources {
        unified: [("memory.high".to_string(), "1000".to_string())].into(),
        ..Default::default()
    };
    let e = f.cg.create(&pod, &res).unwrap_err();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(!f.root.join("crius.slice").exists());
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            "start crius-podp.slice in crius.slice pid None props 6",
            "stop crius-podp.slice"
        ]
    );
}

#[test]
fn monitors_join_their_cgroup_beside_the_default_parent() {
    for kind in [Kind::V1, Kind::V2] {
        let f = fixture(kind);
        let m = f.cg.join_monitors(3).unwrap();
        assert_eq!(m.path, "/crius-monitors");
        assert_eq!(f.cg.join_monitors(4).unwrap(), m);
        for file in f.cg.procs_files(&m) {
            // The fake kernel's cgroup.procs keeps the last write.
            assert_eq!(read(file), "4");
        }
    }
}

#[test]
fn monitors_scope_is_started_once_then_attached_to() {
    let fake = Arc::new(FakeSystemd::default());
    let f = fixture_with(
        Kind::V2,
        CgroupDriver::Systemd,
        Some(Box::new(Shared(fake.clone()))),
    );
    let m = f.cg.join_monitors(7).unwrap();
    assert_eq!(m.path, "/crius-monitors.scope");
    f.cg.join_monitors(8).unwrap();
    // The scope went away with its last monitor: started again.
    fake.units.lock().unwrap().clear();
    f.cg.join_monitors(9).unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            "attach crius-monitors.scope pid 7",
            "start crius-monitors.scope in -.slice pid Some(7) props 8",
            "attach crius-monitors.scope pid 8",
            "attach crius-monitors.scope pid 9",
            "start crius-monitors.scope in -.slice pid Some(9) props 8",
        ]
    );
    assert_eq!(read(f.root.join("crius-monitors.scope/cgroup.procs")), "9");
}

#[test]
fn monitors_and_reconcile_listing() {
    let f = fixture(Kind::V2);
    let m = f.cg.join_monitors(3).unwrap();
    let pod = f.cg.pod_path("", "p1").unwrap();
    f.cg.create(&pod, &Resources::default()).unwrap();
    let c = f.cg.container_path(&pod, "c1").unwrap();
    f.cg.create_with_pid(&c, &Resources::default(), 4).unwrap();
    std::fs::create_dir(f.root.join("crius/not-ours")).unwrap();
    let root = f.cg.default_parent_path().unwrap();
    // The monitors' cgroup is a sibling of the default parent, not a child.
    assert_eq!(m.path, "/crius-monitors");
    assert_eq!(f.cg.children(&root).unwrap(), vec![pod.clone()]);
    assert_eq!(f.cg.children(&pod).unwrap(), vec![c]);
    let gone = f.cg.pod_path("", "gone").unwrap();
    assert!(f.cg.children(&gone).unwrap().is_empty());
}

#[test]
fn oom_follow_reads_the_layouts_counter() {
    for kind in [Kind::V1, Kind::V2] {
        let f = fixture(kind);
        let pod = f.cg.pod_path("", "w").unwrap();
        f.cg.create(&pod, &Resources::default()).unwrap();
        let leaf = f.cg.container_path(&pod, "c").unwrap();
        f.cg.create(&leaf, &Resources::default()).unwrap();
        let wake = f.cg.oom_follow("c", &leaf).unwrap();
        assert_eq!(wake.as_fd().is_some(), kind == Kind::V2);
        let file = match kind {
            Kind::V2 => f.root.join("crius/pod-w/crius-c/memory.events"),
            _ => f.root.join("memory/crius/pod-w/crius-c/memory.oom_control"),
        };
        std::fs::write(file, "oom_kill 5\n").unwrap();
        assert_eq!(f.cg.oom_refresh("c"), 5);
        f.cg.remove(&leaf).unwrap();
        assert_eq!(f.cg.oom_finish("c", &leaf, true), 5);
        f.cg.remove(&pod).unwrap();
    }
}

/// A cgroup v1 fixture tree with the fake kernel, for other modules' unit
/// tests (the container service): keep the TempDir alive while using it.
pub(crate) fn fake_v1() -> (tempfile::TempDir, PathBuf, Cgroups) {
    let f = fixture(Kind::V1);
    (f._dir, f.root, f.cg)
}

#[test]
fn warming_moves_the_caller_to_its_own_cgroup_in_the_first_listed_hierarchy() {
    // Hybrid: cpu is the layout's first hierarchy; the named systemd
    // hierarchy is no hierarchy of the layout.
    let f = fixture(Kind::Hybrid);
    std::fs::create_dir_all(f.root.join("cpu/svc")).unwrap();
    std::fs::write(f.root.join("cpu/svc/cgroup.procs"), "").unwrap();
    let own = "9:name=systemd:/x\n4:memory:/mem\n1:cpu:/svc\n0::/\n";
    assert_eq!(
        warm::target(f.cg.layout(), own),
        Some(f.root.join("cpu/svc/cgroup.procs"))
    );
    assert!(f.cg.warm_from(own).unwrap());
    let procs = |p: &str| std::fs::read_to_string(f.root.join(p)).unwrap();
    assert_eq!(procs("cpu/svc/cgroup.procs"), "0");
    assert_eq!(procs("memory/cgroup.procs"), "", "one hierarchy only");
    // Co-mounted controllers in another order than the mount's.
    let v1 = fixture(Kind::V1);
    assert_eq!(
        warm::target(v1.cg.layout(), "3:cpuacct,cpu:/a/b\n"),
        Some(v1.root.join("cpu,cpuacct/a/b/cgroup.procs"))
    );
    // cgroup v2: the line with no controllers.
    let v2 = fixture(Kind::V2);
    assert_eq!(
        warm::target(v2.cg.layout(), "0::/system.slice/crius.service\n"),
        Some(v2.root.join("system.slice/crius.service/cgroup.procs"))
    );
    assert_eq!(warm::target(v2.cg.layout(), "1:name=systemd:/\n"), None);
}

#[test]
fn warming_never_creates_the_file_and_is_skipped_with_favordynmods() {
    let f = fixture(Kind::V2);
    let e = f.cg.warm_from("0::/gone\n").unwrap_err();
    assert!(e.to_string().contains("gone/cgroup.procs"), "{e}");
    assert!(!f.root.join("gone").exists());
    let root = Path::new("/sys/fs/cgroup");
    let favor = unified_mountinfo(root).replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
    let layout = Layout::parse(&favor, root, |_| Ok("memory pids".into())).unwrap();
    assert!(layout.favor_dynmods);
    assert_eq!(warm::target(&layout, "0::/\n"), None);
    let plain = Layout::parse(&unified_mountinfo(root), root, |_| Ok(String::new())).unwrap();
    assert!(!plain.favor_dynmods);
}
