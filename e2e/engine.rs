//! The container engine against the real kernel, driven through a real pod
//! monitor (no daemon): a one-layer busybox "image" built from Debian's
//! busybox-static, containers created blocked and started, their logs,
//! exit codes, PID namespace modes, namespaces, mounts (file binds,
//! propagation both ways, a read-only rootfs), exec and signals.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius::container::spec::{
    self, BindMount, ContainerConfig, ImageConfig, PidNamespace, PodContext, Propagation,
};
use crius::init::rootfs::Overlay;
use crius::monitor::client::container::{Error, ExecLaunch, Launch, PodMonitor};
use crius::monitor::client::{self, Started};
use crius::monitor::sync::Step;
use crius::monitor::{PodDir, Spec};
use crius::sys::ns::Kind;

use crate::harness::{MONITOR_BIN, children_of, unmount_under};

/// A pod with its own monitor in a tempdir, an image layer and a cgroup.
pub struct TestPod {
    pub base: tempfile::TempDir,
    pub pod: PodDir,
    pub monitor: PodMonitor,
    pub started: Started,
    pub layer: PathBuf,
    /// The containers' cgroup: its directory in the pids and memory
    /// hierarchies (v1), or its one directory (v2); `cgroups[0]` lists
    /// the processes.
    pub cgroups: Vec<PathBuf>,
}

/// A one-layer busybox image: /bin/busybox and a symlink per applet.
pub fn busybox_layer(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in ["etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

fn kill_tree(pid: i32) {
    for child in children_of(pid) {
        kill_tree(child);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl TestPod {
    /// A pod with its own IPC and UTS namespaces, the host network, and a
    /// pod init (PID mode POD) when `pid_ns`.
    pub async fn start(tag: &str, pid_ns: bool) -> TestPod {
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        let pod_id = format!("enginetest{tag}");
        let pod = PodDir::new(&state, &pod_id);
        std::fs::create_dir_all(&pod.dir).unwrap();
        let spec = Spec {
            pod_id: pod_id.clone(),
            ns_root: state.join("ns"),
            namespaces: vec![Kind::Ipc, Kind::Uts],
            pid_namespace: pid_ns,
            hostname: Some(format!("pod-{tag}")),
            sysctls: vec![],
            shm_size: Some(64 << 20),
            user: None,
        };
        let started = client::start(Path::new(MONITOR_BIN), &pod, &spec, Duration::from_secs(10))
            .await
            .unwrap();
        let layer = base.path().join("layers/1");
        busybox_layer(&layer);
        let path = format!("/crius-enginetest-{tag}-{}", std::process::id());
        let cgroups = crate::cgroup::dirs(&path, &["pids", "memory"]);
        for dir in &cgroups {
            std::fs::create_dir_all(dir).unwrap();
        }
        TestPod {
            monitor: PodMonitor::new(pod.clone()),
            base,
            pod,
            started,
            layer,
            cgroups,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    /// The launch of container `id` running `config` in PID mode `pid`.
    pub fn launch(&self, id: &str, config: &ContainerConfig, pid: PidNamespace) -> Launch {
        let dir = self.path(&format!("containers/{id}"));
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let ctx = PodContext {
            net_ns: None,
            ipc_ns: Some(self.pod.ns(Kind::Ipc)),
            uts_ns: Some(self.pod.ns(Kind::Uts)),
            pid,
            shm: self.pod.shm(),
            hostname_file: None,
            resolv_conf: None,
            cgroup_path: "/crius-enginetest".into(),
            cgroup_v2: crate::cgroup::unified(),
            cgroup_writable: false,
            user_ns: None,
        };
        let built =
            spec::build(config, &ImageConfig::default(), &ctx, &dir.join("rootfs")).unwrap();
        Launch {
            id: id.into(),
            spec: built.spec,
            env: built.env,
            user: built.user,
            groups: Default::default(),
            seccomp: None,
            overlay: Overlay {
                layers: vec![self.layer.clone()],
                upper: dir.join("upper"),
                work: dir.join("work"),
            },
            volumes: Vec::new(),
            // The files the daemon sends (Cgroups::join_files): cgroup v2's
            // cgroup.procs, v1's tasks.
            cgroup_procs: self
                .cgroups
                .iter()
                .map(|c| match crate::cgroup::unified() {
                    true => c.join("cgroup.procs"),
                    false => c.join("tasks"),
                })
                .collect(),
            log_path: Some(dir.join("log")),
            log_dir: Some(dir.clone()),
            tty: false,
            stdin: false,
            stdin_once: false,
        }
    }

    pub fn pod_pid_ns(&self) -> PidNamespace {
        let init = self.started.init.expect("a pod init");
        PidNamespace::Pod(format!("/proc/{}/ns/pid", init.pid).into())
    }

    /// Creates, starts and waits for a container; returns (exit code, log).
    pub async fn run(
        &self,
        id: &str,
        config: &ContainerConfig,
        pid: PidNamespace,
    ) -> (i32, String) {
        let launch = self.launch(id, config, pid);
        self.monitor.create_container(&launch).await.unwrap();
        self.monitor.start_container(id).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(20), self.monitor.wait_container(id))
            .await
            .expect("container exits")
            .unwrap();
        let log = std::fs::read_to_string(launch.log_path.unwrap()).unwrap_or_default();
        (exit.exit_code, log)
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        kill_tree(self.started.monitor.pid);
        // The monitor is our child (client::start spawned it): reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.started.monitor.pid), None);
        for _ in 0..50 {
            let empty = self.cgroups.iter().all(|c| {
                std::fs::read_to_string(c.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
            });
            if empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in &self.cgroups {
            let _ = std::fs::remove_dir(c);
        }
        unmount_under(self.base.path());
    }
}

pub fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// The (stream, content) of each CRI log line.
pub fn log_lines(log: &str) -> Vec<(String, String)> {
    log.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts:?}");
            let stream = f.next().unwrap().to_string();
            assert_eq!(f.next(), Some("F"), "{l}");
            (stream, f.next().unwrap_or("").to_string())
        })
        .collect()
}

fn ns_inode(pid: i32, kind: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_container_logs_and_exit_code_pid1_in_container_mode() {
    let p = TestPod::start("logs", true).await;
    let (code, log) = p
        .run(
            "c1",
            &sh("echo hi; echo pid=$$; echo oops >&2; exit 3"),
            PidNamespace::Container,
        )
        .await;
    assert_eq!(code, 3, "{log}");
    let lines = log_lines(&log);
    assert!(lines.contains(&("stdout".into(), "hi".into())), "{log}");
    assert!(lines.contains(&("stdout".into(), "pid=1".into())), "{log}");
    assert!(lines.contains(&("stderr".into(), "oops".into())), "{log}");
    let exit = crius::monitor::read_exit(&p.pod.exit_file("c1")).expect("exit file");
    assert_eq!(exit.exit_code, 3);
    // A wait after the exit answers at once.
    let again = p.monitor.wait_container("c1").await.unwrap();
    assert_eq!(again, exit);
    p.monitor.remove_container("c1").await.unwrap();
    assert!(!p.pod.exit_file("c1").exists());
    p.monitor.remove_container("c1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_namespaces_in_pod_and_container_modes() {
    let p = TestPod::start("ns", true).await;
    let init = p.started.init.unwrap().pid;
    let sleep = sh("sleep 1000");
    let a = p.launch("a", &sleep, p.pod_pid_ns());
    let b = p.launch("b", &sleep, PidNamespace::Container);
    let ra = p.monitor.create_container(&a).await.unwrap();
    let rb = p.monitor.create_container(&b).await.unwrap();
    for (r, mode_pod) in [(ra, true), (rb, false)] {
        assert_eq!(
            ns_inode(r.pid, "ipc"),
            crius::sys::ns::inode(&p.pod.ns(Kind::Ipc)).unwrap()
        );
        assert_eq!(
            ns_inode(r.pid, "uts"),
            crius::sys::ns::inode(&p.pod.ns(Kind::Uts)).unwrap()
        );
        let me = std::process::id() as i32;
        assert_eq!(ns_inode(r.pid, "net"), ns_inode(me, "net"), "host network");
        assert_ne!(ns_inode(r.pid, "mnt"), ns_inode(init, "mnt"));
        assert_eq!(ns_inode(r.pid, "pid") == ns_inode(init, "pid"), mode_pod);
        // Blocked before execve: still crius code, not sleep.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.pid)).unwrap();
        assert!(!stat.contains("(sleep)"), "{stat}");
    }
    assert_ne!(ns_inode(ra.pid, "mnt"), ns_inode(rb.pid, "mnt"));
    // In the cgroup before they run: born in it (cgroup v2) or joined in
    // their setup when they get a cgroup namespace, else joined between
    // the start and their execve (not before the start).
    let in_cgroup = |pid: i32| {
        p.cgroups.iter().all(|c| {
            let procs = std::fs::read_to_string(c.join("cgroup.procs")).unwrap();
            procs.lines().any(|l| l == pid.to_string())
        })
    };
    // (the launches ask for a cgroup namespace on cgroup v2 alone)
    let early = crate::cgroup::unified();
    assert_eq!((in_cgroup(ra.pid), in_cgroup(rb.pid)), (early, early));
    p.monitor.start_container("a").await.unwrap();
    p.monitor.start_container("b").await.unwrap();
    assert!(in_cgroup(ra.pid) && in_cgroup(rb.pid), "joined at start");
    // In POD mode the pod init is PID 1; in CONTAINER mode the entrypoint.
    let (code, log) = p.run("c", &sh("cat /proc/1/comm"), p.pod_pid_ns()).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(log_lines(&log), [("stdout".into(), "crius-init".into())]);
    let (_, log) = p
        .run(
            "d",
            &sh("cat /proc/1/comm; exit 0"),
            PidNamespace::Container,
        )
        .await;
    assert_eq!(log_lines(&log), [("stdout".into(), "sh".into())]);
    // The POD-mode container's processes are visible to a sibling.
    let (_, log) = p
        .run("e", &sh("ps -o comm | grep -c sleep"), p.pod_pid_ns())
        .await;
    assert_eq!(
        log_lines(&log),
        [("stdout".into(), "1".into())],
        "only a's sleep"
    );
    // signal + wait
    p.monitor.signal_container("b", 9).await.unwrap();
    let exit = p.monitor.wait_container("b").await.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert!(p.monitor.signal_container("b", 9).await.is_err());
    p.monitor.remove_container("a").await.unwrap();
    assert!(!crius::sys::process::ProcRef::alive(&ra));
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_failed_create_names_the_step_and_leaves_nothing() {
    let p = TestPod::start("fail", false).await;
    let before = children_of(p.started.monitor.pid);
    let launch = p.launch("bad", &sh("exit 0"), PidNamespace::Node);
    let mut missing = launch.clone();
    missing
        .spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["/no/such/binary".into()]));
    let err = p.monitor.create_container(&missing).await.unwrap_err();
    match &err {
        Error::Failed { step, message } => {
            assert_eq!(*step, Step::Exec);
            assert!(message.contains("no such file"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut bad_user = launch.clone();
    bad_user.user = "nosuchuser".into();
    let err = p.monitor.create_container(&bad_user).await.unwrap_err();
    assert!(
        matches!(&err, Error::Failed { step, .. } if *step == Step::User),
        "{err}"
    );
    assert_eq!(
        children_of(p.started.monitor.pid),
        before,
        "no process left"
    );
    assert!(!p.pod.exit_file("bad").exists(), "no exit file");
    let rootfs = launch.spec.root().as_ref().unwrap().path().clone();
    assert!(
        crius::sys::mount::mounts_under(&rootfs).is_empty(),
        "no mount"
    );
    // The same id works afterwards.
    let (code, _) = p.run("bad", &sh("exit 0"), PidNamespace::Node).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_mounts_file_bind_readonly_root_and_propagation() {
    let p = TestPod::start("mounts", false).await;
    // A file bind, read-only.
    let file = p.path("hostfile");
    std::fs::write(&file, "from the host\n").unwrap();
    // A shared mount on the host for the propagation cases.
    let shared = p.path("shared");
    mount_tmpfs(&shared, nix::mount::MsFlags::MS_SHARED);
    std::fs::create_dir_all(shared.join("sub")).unwrap();

    let mut config = sh(
        "cat /etc/hostfile; echo x > /etc/hostfile || echo refused; touch /newfile || echo rofs",
    );
    config.mounts.push(BindMount {
        container_path: "/etc/hostfile".into(),
        host_path: file.clone(),
        readonly: true,
        propagation: Propagation::Private,
        ..Default::default()
    });
    config.security.readonly_rootfs = true;
    let (code, log) = p.run("files", &config, PidNamespace::Node).await;
    assert_eq!(code, 0, "{log}");
    let out: Vec<String> = log_lines(&log).into_iter().map(|(_, l)| l).collect();
    assert!(out.contains(&"from the host".to_string()), "{log}");
    assert!(out.contains(&"refused".to_string()), "{log}");
    assert!(out.contains(&"rofs".to_string()), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "from the host\n");

    // host-to-container: a mount made on the host after the start shows
    // up inside.
    let launch = p.launch("slave", &watcher("sub", &shared), PidNamespace::Node);
    p.monitor.create_container(&launch).await.unwrap();
    p.monitor.start_container("slave").await.unwrap();
    let sub = shared.join("sub");
    mount_tmpfs(&sub, nix::mount::MsFlags::empty());
    std::fs::write(sub.join("marker"), "").unwrap();
    let exit = p.monitor.wait_container("slave").await.unwrap();
    assert_eq!(
        exit.exit_code,
        0,
        "{}",
        std::fs::read_to_string(launch.log_path.unwrap()).unwrap()
    );
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).unwrap();

    // bidirectional: a mount made inside shows up on the host.
    let mut both = sh(
        "mkdir -p /data/inner && mount -t tmpfs tmpfs /data/inner && touch /data/inner/made && sleep 1000",
    );
    both.security.privileged = true;
    both.mounts.push(BindMount {
        container_path: "/data".into(),
        host_path: shared.clone(),
        readonly: false,
        propagation: Propagation::Bidirectional,
        ..Default::default()
    });
    let launch = p.launch("shared", &both, PidNamespace::Node);
    let init = p.monitor.create_container(&launch).await.unwrap();
    p.monitor.start_container("shared").await.unwrap();
    let made = shared.join("inner/made");
    for _ in 0..100 {
        if made.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        made.exists(),
        "the container's mount propagated to the host: {} {} HOST {}",
        std::fs::read_to_string(launch.log_path.as_ref().unwrap()).unwrap(),
        std::fs::read_to_string(format!("/proc/{}/mountinfo", init.pid)).unwrap_or_default(),
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains("shared"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(crius::sys::mount::mounts_under(&shared).contains(&shared.join("inner")));
    p.monitor.remove_container("shared").await.unwrap();
    unmount_under(&shared);

    // A host-to-container mount of a private source is refused: the
    // mount would silently never propagate.
    let private = p.path("private");
    mount_tmpfs(&private, nix::mount::MsFlags::MS_PRIVATE);
    let err = p
        .monitor
        .create_container(&p.launch("refused", &watcher("sub", &private), PidNamespace::Node))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a shared or slave mount"),
        "{err}"
    );
    nix::mount::umount2(&private, nix::mount::MntFlags::MNT_DETACH).unwrap();

    // A plain directory takes the propagation of the mount it lives on:
    // private under a plain init (refused as above); shared where systemd
    // made / and every mount below it shared (mount(8), "shared subtree"),
    // and there a user gets what they asked for: host mounts made later
    // show up inside.
    let plain = p.path("plain");
    std::fs::create_dir_all(plain.join("late")).unwrap();
    let receives = mount_receives_propagation(&plain);
    let launch = p.launch("plain", &watcher("late", &plain), PidNamespace::Node);
    let created = p.monitor.create_container(&launch).await;
    if !receives {
        let err = created.unwrap_err();
        assert!(
            err.to_string().contains("not a shared or slave mount"),
            "{err}"
        );
        return;
    }
    created.unwrap_or_else(|e| panic!("{} is on a shared mount: {e}", plain.display()));
    p.monitor.start_container("plain").await.unwrap();
    let late = plain.join("late");
    mount_tmpfs(&late, nix::mount::MsFlags::empty());
    std::fs::write(late.join("marker"), "").unwrap();
    let exit = p.monitor.wait_container("plain").await.unwrap();
    let _ = nix::mount::umount2(&late, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(
        exit.exit_code,
        0,
        "a mount on a shared host path reaches the container: {}",
        std::fs::read_to_string(launch.log_path.unwrap()).unwrap()
    );
}

/// A tmpfs mounted on `dir` (made if missing), with `propagation`
/// (MS_SHARED, MS_PRIVATE; empty: what it inherits).
fn mount_tmpfs(dir: &Path, propagation: nix::mount::MsFlags) {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir).unwrap();
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    if !propagation.is_empty() {
        mount(None::<&str>, dir, None::<&str>, propagation, None::<&str>).unwrap();
    }
}

/// A container that waits (10 s) for `/data/<name>/marker`, with `source`
/// at /data mounted host-to-container (rslave).
fn watcher(name: &str, source: &Path) -> ContainerConfig {
    let mut c = sh(&format!(
        "for i in $(seq 100); do [ -e /data/{name}/marker ] && {{ echo seen; exit 0; }}; sleep 0.1; done; exit 1"
    ));
    c.mounts.push(BindMount {
        container_path: "/data".into(),
        host_path: source.to_path_buf(),
        readonly: false,
        propagation: Propagation::HostToContainer,
        ..Default::default()
    });
    c
}

/// Whether the mount holding `path` (the longest mount point above it in
/// /proc/self/mountinfo) is shared or a slave, i.e. receives host mounts.
fn mount_receives_propagation(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut best: Option<(usize, bool)> = None;
    for line in text.lines() {
        let Some((pre, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = pre.split(' ').collect();
        let Some(point) = fields.get(4).map(Path::new) else {
            continue;
        };
        if !path.starts_with(point) {
            continue;
        }
        let len = point.as_os_str().len();
        let receives = fields[6..]
            .iter()
            .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
        // The last of equal mount points is the one on top.
        if best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, receives));
        }
    }
    best.is_some_and(|(_, r)| r)
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_exec_output_exit_code_and_process_group_kill() {
    use std::io::Read;
    let p = TestPod::start("exec", true).await;
    let launch = p.launch("box", &sh("sleep 1000"), PidNamespace::Container);
    let init = p.monitor.create_container(&launch).await.unwrap();
    let exec = ExecLaunch {
        exec_id: "x1".into(),
        container_id: "box".into(),
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo out $$; readlink /proc/self/ns/mnt; echo err >&2; exit 7".into(),
        ],
        tty: false,
        stdin: false,
        cgroup_procs: Vec::new(),
    };
    // Not started yet: refused.
    assert!(p.monitor.exec(&exec).await.is_err());
    p.monitor.start_container("box").await.unwrap();
    let h = p.monitor.exec(&exec).await.unwrap();
    let mut out = String::new();
    std::fs::File::from(h.stdout)
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    std::fs::File::from(h.stderr.unwrap())
        .read_to_string(&mut err)
        .unwrap();
    let exit = p.monitor.wait_exec("x1").await.unwrap();
    assert_eq!(exit.exit_code, 7);
    assert_eq!(err, "err\n");
    let mnt = format!("mnt:[{}]", ns_inode(init.pid, "mnt"));
    assert!(out.contains(&mnt), "{out} vs {mnt}");
    assert!(!out.starts_with("out 1\n"), "not PID 1: {out}");
    // A timed-out exec: its whole group (the shell and its sleep) dies.
    let slow = ExecLaunch {
        exec_id: "x2".into(),
        args: vec!["sh".into(), "-c".into(), "sleep 1000 & sleep 1000".into()],
        ..exec.clone()
    };
    let h = p.monitor.exec(&slow).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.monitor.signal_exec("x2", 9).await.unwrap();
    let exit = p.monitor.wait_exec("x2").await.unwrap();
    assert_eq!(exit.signal, Some(9));
    drop(h);
    // SIGKILLed processes leave the cgroup once the kernel has run their
    // exit, which under load can take a moment: wait for it, bounded.
    let count_sleeps = || {
        let procs = std::fs::read_to_string(p.cgroups[0].join("cgroup.procs")).unwrap();
        let sleeps = procs
            .split_whitespace()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count();
        (sleeps, procs)
    };
    crate::pod::wait_for("the killed sleeps to leave", Duration::from_secs(5), || {
        count_sleeps().0 <= 1
    })
    .await;
    let (sleeps, procs) = count_sleeps();
    assert_eq!(sleeps, 1, "only the container's own sleep is left: {procs}");
    assert!(
        p.monitor.wait_exec("x2").await.is_err(),
        "forgotten once waited"
    );
}

/// A field of /proc/PID/smaps_rollup, KiB.
fn smaps_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_monitor_memory_with_ten_containers() {
    let p = TestPod::start("mem", true).await;
    let monitor = p.started.monitor.pid;
    let idle = smaps_kib(monitor, "Anonymous:");
    let idle_pss = smaps_kib(monitor, "Pss:");
    for i in 0..10 {
        let id = format!("m{i}");
        let launch = p.launch(&id, &sh("echo started; sleep 1000"), p.pod_pid_ns());
        p.monitor.create_container(&launch).await.unwrap();
        p.monitor.start_container(&id).await.unwrap();
    }
    let busy = smaps_kib(monitor, "Anonymous:");
    let busy_pss = smaps_kib(monitor, "Pss:");
    eprintln!(
        "monitor PSS: {idle_pss} KiB idle, {busy_pss} KiB with 10 containers; \
         anonymous memory {idle} KiB -> {busy} KiB"
    );
    // Each container costs the monitor its bookkeeping (pipes, a log file,
    // its Spec and heap growth), bounded here at 512 KiB each in a debug
    // build; it must never be a copy of the monitor. Anonymous memory, not
    // PSS: PSS moves whenever other processes sharing the binary's pages
    // come and go (other tests' monitors), which made this test flaky.
    assert!(busy < idle + 10 * 512, "{idle} KiB -> {busy} KiB");
    for i in 0..10 {
        p.monitor.remove_container(&format!("m{i}")).await.unwrap();
    }
}

/// The per-pod programs are linked statically (hack/rustc-wrapper.sh): no
/// program interpreter, no shared library; and the monitor starts (a
/// static-pie link that names any shared library crashes in `_init`,
/// before main, which is how the first try at this failed).
#[test]
fn per_pod_binaries_are_static() {
    for bin in [MONITOR_BIN, env!("CARGO_BIN_EXE_crius-pod-init")] {
        let out = std::process::Command::new("readelf")
            .args(["--program-headers", "--dynamic", "--wide", bin])
            .output()
            .expect("readelf (binutils) runs");
        assert!(out.status.success(), "readelf {bin}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("LOAD"), "readelf lists {bin}'s segments");
        assert!(
            !text.contains("INTERP"),
            "{bin} names a program interpreter"
        );
        assert!(!text.contains("(NEEDED)"), "{bin} needs a shared library");
    }
    // Without arguments the monitor prints its usage and exits with 2.
    let out = std::process::Command::new(MONITOR_BIN)
        .output()
        .expect("the monitor runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: crius-monitor"));
}

/// The pod init (no std, no libc, its own `_start` and relocation) run
/// by hand: without privileges it refuses to run (exit 125, the failed
/// step on stderr); in a user namespace that maps 1000 ids (0 to host 0,
/// 1-999 to host 100001-100999) it takes the highest one, 999, because
/// 65535 is not mapped there, and still isolates itself (no capability
/// in any set, fds beyond stdio closed, non-dumpable, alive); with a map
/// of id 0 alone it refuses (exit 125) instead of running as root.
#[test]
fn pod_init_refuses_without_privilege_and_takes_the_highest_mapped_id() {
    use std::os::unix::process::CommandExt;
    let bin = env!("CARGO_BIN_EXE_crius-pod-init");
    let out = std::process::Command::new(bin)
        .uid(1000)
        .gid(1000)
        .output()
        .expect("the pod init runs");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "crius-init: unshare the mount namespace: EPERM (errno 1)\n"
    );

    // A map of 1000 ids without 65535: the highest one, isolated.
    let status = match pod_init_in_userns(bin, "0 0 1\n1 100001 999\n") {
        Ok(status) => status,
        Err(ended) => panic!("the pod init ended: {ended}"),
    };
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..].trim().to_string()
    };
    assert_eq!(field("Name:"), "crius-init");
    assert_eq!(field("Uid:"), "100999\t100999\t100999\t100999");
    assert_eq!(field("Gid:"), "100999\t100999\t100999\t100999");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    assert_eq!(field("CapAmb:"), "0000000000000000");

    // A map that holds only id 0: no unprivileged id, so it refuses
    // rather than run as root with its capabilities.
    match pod_init_in_userns(bin, "0 0 1\n") {
        Ok(status) => panic!("the pod init runs with a map of id 0 only:\n{status}"),
        Err(ended) => assert!(
            ended.contains("exit status: 125")
                && ended.contains("crius-init: no unprivileged gid in the map 0: EPERM (errno 1)"),
            "{ended}"
        ),
    }
}

/// Runs the pod init as root of a new user namespace with `map` as its
/// uid and gid maps, and an extra fd (5) open. `Ok`: /proc/PID/status once
/// it has isolated itself (NoNewPrivs), after checking its mounts, its fds
/// and that it stays non-dumpable and alive; `Err`: how it ended, with
/// its stderr.
fn pod_init_in_userns(bin: &str, map: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    // A shell in a new user namespace waits for its maps, then execs the
    // pod init as root of that namespace.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "read go && exec \"$0\"", bin])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    #[allow(unsafe_code)]
    // SAFETY: unshare(2) and dup2(2) are async-signal-safe and touch no
    // memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 || libc::dup2(0, 5) != 5 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("sh in a user namespace");
    let pid = child.id();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), map).unwrap();
    }
    stdin.write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(end)) = child.0.try_wait() {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            return Err(format!("{end}: {err}"));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.contains("NoNewPrivs:\t1") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mountinfo.lines().count(), 1, "{mountinfo}");
    assert!(mountinfo.contains(" / / ro,"), "{mountinfo}");
    // Non-dumpable (set right after no_new_privs): its /proc files belong
    // to its namespace's root (host 0), not to its own uid.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let owner = std::fs::metadata(format!("/proc/{pid}/status"))
            .unwrap()
            .uid();
        if owner == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still dumpable: /proc/{pid} owned by {owner}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only its stdio is left: the inherited fd 5 is closed.
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the pod init ended after isolating itself"
    );
    Ok(status)
}

/// The monitor binary carries none of the daemon's crates: no async
/// runtime, gRPC, HTTP, CLI or TOML code (its symbols, as `nm` lists them).
#[test]
fn monitor_binary_links_no_daemon_crate() {
    let out = std::process::Command::new("nm")
        .args(["-C", MONITOR_BIN])
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm {MONITOR_BIN}");
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(
        symbols.contains("crius::monitor::process"),
        "the check sees the monitor's own code"
    );
    for krate in [
        "tokio::",
        "tonic::",
        "hyper::",
        "clap::",
        "toml::",
        "prost::",
        "tracing::",
        // The launch is compact (protocol 6): no OCI Spec in the monitor.
        "oci_spec::",
    ] {
        let n = symbols.lines().filter(|l| l.contains(krate)).count();
        assert_eq!(n, 0, "{MONITOR_BIN} links {n} symbols of {krate}");
    }
}

/// A v1 freezer cgroup of the test's own: thawed and removed on drop, so a
/// failing test leaves nothing frozen.
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        for _ in 0..100 {
            let empty = std::fs::read_to_string(self.0.join("cgroup.procs"))
                .is_ok_and(|s| s.trim().is_empty());
            if empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// RemoveContainer of a container that cannot die yet (frozen in a v1
/// freezer cgroup, where SIGKILL waits for the thaw) never holds the
/// monitor's loop: an exec into another container answers meanwhile, the
/// remove fails at the monitor's bound and the container stays, and once
/// it can die a second remove succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn engine_remove_of_a_container_that_cannot_die_never_blocks_the_monitor() {
    let freezer = Path::new("/sys/fs/cgroup/freezer");
    if !freezer.join("cgroup.procs").exists() {
        eprintln!(
            "skipped: needs the cgroup v1 freezer (a frozen v2 process dies of SIGKILL at once)"
        );
        return;
    }
    let p = TestPod::start("frozen", true).await;
    let mut inits = Vec::new();
    for id in ["stuck", "other"] {
        let launch = p.launch(id, &sh("sleep 1000"), PidNamespace::Container);
        inits.push(p.monitor.create_container(&launch).await.unwrap());
        p.monitor.start_container(id).await.unwrap();
    }
    let frozen = Frozen(freezer.join(format!("crius-enginetest-frozen-{}", std::process::id())));
    std::fs::create_dir_all(&frozen.0).unwrap();
    std::fs::write(frozen.0.join("cgroup.procs"), inits[0].pid.to_string()).unwrap();
    std::fs::write(frozen.0.join("freezer.state"), "FROZEN").unwrap();
    crate::pod::wait_for("the freezer to freeze", Duration::from_secs(5), || {
        std::fs::read_to_string(frozen.0.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
    })
    .await;
    let monitor = p.monitor.clone();
    let remove = tokio::spawn(async move { monitor.remove_container("stuck").await });
    // The remove is pending in the monitor (SIGKILL sent, no reap).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!remove.is_finished(), "a frozen container cannot have died");
    let exec = ExecLaunch {
        exec_id: "x".into(),
        container_id: "other".into(),
        args: vec!["true".into()],
        tty: false,
        stdin: false,
        cgroup_procs: Vec::new(),
    };
    let t = std::time::Instant::now();
    let h = tokio::time::timeout(Duration::from_secs(3), p.monitor.exec(&exec))
        .await
        .expect("the exec answers while the remove waits")
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(3), p.monitor.wait_exec("x"))
        .await
        .expect("the exec's exit is told while the remove waits")
        .unwrap();
    assert_eq!(exit.exit_code, 0);
    drop(h);
    let exec_took = t.elapsed();
    let err = remove
        .await
        .unwrap()
        .expect_err("the remove cannot succeed while frozen");
    assert!(
        crius::error::chain(&err).contains("did not exit"),
        "{}",
        crius::error::chain(&err)
    );
    eprintln!("exec answered in {exec_took:?} while the remove waited");
    drop(frozen); // thawed: the SIGKILL takes effect
    p.monitor.remove_container("stuck").await.unwrap();
    p.monitor.remove_container("other").await.unwrap();
}
