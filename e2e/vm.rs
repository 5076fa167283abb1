//! The VM tier's own checks (hack/vm-e2e.sh, hack/vm/tests.list): that the
//! guest is what the other tests there rely on (cgroup v2 alone at
//! /sys/fs/cgroup with its controllers; in the systemd mode, systemd as PID 1
//! and the system bus), and that crius reports the guest mode's cgroup driver
//! when its config file names it. They need the guest: elsewhere (no
//! CRIUS_VM_MODE in the environment) they say so and return.

use crius::cri::proto::*;

use crate::harness::TestDaemon;

/// The guest mode (`cgroupfs` or `systemd`), or None outside the VM tier.
fn vm_mode() -> Option<String> {
    match std::env::var("CRIUS_VM_MODE") {
        Ok(mode) => Some(mode),
        Err(_) => {
            eprintln!("skipped: runs only in the VM tier (hack/vm-e2e.sh sets CRIUS_VM_MODE)");
            None
        }
    }
}

#[test]
fn guest_has_cgroup2_alone_with_its_controllers() {
    let Some(mode) = vm_mode() else { return };
    let fs = nix::sys::statfs::statfs("/sys/fs/cgroup").unwrap();
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::CGROUP2_SUPER_MAGIC,
        "/sys/fs/cgroup is cgroup2"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.split(' ').nth(2) == Some("cgroup")),
        "no cgroup v1 hierarchy is mounted:\n{mounts}"
    );
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap();
    for c in ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "controller {c} available: {controllers}"
        );
    }
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap();
    match mode.as_str() {
        "systemd" => {
            assert_eq!(comm.trim(), "systemd", "PID 1");
            let bus = std::path::Path::new("/run/dbus/system_bus_socket");
            assert!(bus.exists(), "the system bus listens at {}", bus.display());
            // systemd runs its units in their own cgroups: ours too.
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            assert!(own.contains(".service"), "a unit's cgroup: {own}");
        }
        "cgroupfs" => assert_ne!(comm.trim(), "systemd", "PID 1 is a plain init"),
        other => panic!("unknown CRIUS_VM_MODE {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_config_reports_the_guest_driver_from_the_config_file() {
    let Some(mode) = vm_mode() else { return };
    let want = match mode.as_str() {
        "systemd" => CgroupDriver::Systemd,
        "cgroupfs" => CgroupDriver::Cgroupfs,
        other => panic!("unknown CRIUS_VM_MODE {other}"),
    };
    let d = TestDaemon::start(&format!("[cgroup]\ndriver = \"{mode}\"\n")).await;
    let r = d
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap();
    assert_eq!(r.into_inner().linux.unwrap().cgroup_driver, want as i32);
}

/// Stops what a test's pod left when the test fails midway: the systemd
/// unit (systemd removes its cgroup) or the cgroupfs directories.
struct PodCgroupGuard {
    path: String,
    unit: Option<String>,
}

impl Drop for PodCgroupGuard {
    fn drop(&mut self) {
        if let Some(unit) = &self.unit {
            let _ = std::process::Command::new("systemctl")
                .args(["stop", unit])
                .status();
        }
        crate::harness::remove_cgroup_tree(&self.path);
    }
}

fn unit_state(unit: &str) -> String {
    let out = std::process::Command::new("systemctl")
        .args(["show", "-p", "ActiveState", "--value", unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A pod at a kubelet-style parent, with the guest mode's driver: its
/// cgroup where kubelet expects it (a `kubepods-burstable-pod<uid>.slice`
/// that systemd knows, with the systemd driver), the pod init in a leaf
/// below it, and both gone after Stop and Remove.
#[tokio::test(flavor = "multi_thread")]
async fn pod_cgroup_at_kubelets_parent_with_the_guest_driver() {
    let Some(mode) = vm_mode() else { return };
    let tag = &crius::ids::new_id()[..10];
    let (parent, want_path, unit) = match mode.as_str() {
        "systemd" => {
            let slice = format!("kubepods-burstable-pod{tag}.slice");
            let path = format!("/kubepods.slice/kubepods-burstable.slice/{slice}");
            (slice.clone(), path, Some(slice))
        }
        "cgroupfs" => {
            let p = format!("/kubepods/burstable/pod{tag}");
            (p.clone(), p, None)
        }
        other => panic!("unknown CRIUS_VM_MODE {other}"),
    };
    let _guard = PodCgroupGuard {
        path: want_path.clone(),
        unit: unit.clone(),
    };
    let d = TestDaemon::start(&format!("[cgroup]\ndriver = \"{mode}\"\n")).await;
    let mut rt = d.runtime().await;
    let mut c = crate::pod::config(&format!("vm{tag}"));
    c.linux.as_mut().unwrap().cgroup_parent = parent;
    let id = crate::pod::run(&mut rt, c).await.unwrap();

    let (_, info) = crate::pod::status(&mut rt, &id).await;
    assert_eq!(info["cgroupPath"], want_path.as_str(), "{info}");
    let dir = std::path::Path::new("/sys/fs/cgroup").join(want_path.trim_start_matches('/'));
    assert!(dir.is_dir(), "{} exists", dir.display());
    let init_cg = info["initCgroupPath"].as_str().expect("a pod init leaf");
    assert!(init_cg.starts_with(&format!("{want_path}/")), "{info}");
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup{init_cg}/cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "the pod init is in its leaf");
    if let Some(unit) = &unit {
        assert_eq!(unit_state(unit), "active", "systemd knows the pod slice");
        let scope = init_cg.rsplit('/').next().unwrap();
        assert!(
            scope.ends_with(".scope"),
            "the init leaf is a scope: {init_cg}"
        );
        assert_eq!(unit_state(scope), "active", "systemd knows {scope}");
    }

    crate::pod::stop_remove(&mut rt, &id).await;
    crate::pod::wait_for(
        "the pod cgroup to go",
        std::time::Duration::from_secs(20),
        || !dir.exists(),
    )
    .await;
    if let Some(unit) = &unit {
        assert_ne!(unit_state(unit), "active", "the pod slice is stopped");
    }
}

/// Stops the transient service a test ran crius in, and the monitors'
/// scope, even when the test fails midway.
struct UnitGuard(Vec<String>);

impl Drop for UnitGuard {
    fn drop(&mut self) {
        for unit in &self.0 {
            let _ = std::process::Command::new("systemctl")
                .args(["stop", unit])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `crius serve` with `d`'s config and dirs as the transient service
/// `unit` (KillMode=control-group, systemd's default: stopping the unit
/// kills every process in its cgroup) and waits until it answers.
async fn serve_as_unit(d: &TestDaemon, unit: &str) {
    let log = d.dir.path().join("crius.log");
    let out = std::process::Command::new("systemd-run")
        .arg(format!("--unit={unit}"))
        .args(["--collect", "--property=KillMode=control-group"])
        .arg(format!(
            "--property=StandardOutput=append:{}",
            log.display()
        ))
        .arg(format!("--property=StandardError=append:{}", log.display()))
        .arg(crate::harness::BIN)
        .args(d.serve_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(ch) = crate::harness::connect(&d.socket).await
            && crius::cri::proto::runtime_service_client::RuntimeServiceClient::new(ch)
                .version(VersionRequest::default())
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "crius in {unit} did not answer ({}):\n{}",
            unit_state(unit),
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// With the systemd driver, pod monitors live in a scope of their own,
/// `<default slice prefix>-monitors.scope` beside the default slice,
/// started over D-Bus with the first monitor and joined by the next: not
/// in crius's service. Stopping crius's unit (which kills everything in
/// its cgroup) leaves the monitors and their pods running; crius started
/// again finds the pods READY, and the scope goes once the last pod is
/// removed.
#[tokio::test(flavor = "multi_thread")]
async fn monitors_have_their_own_scope_and_outlive_crius_unit() {
    let Some(mode) = vm_mode() else { return };
    if mode != "systemd" {
        eprintln!("skipped: the monitors' scope is the systemd driver's (cgroupfs: pod::)");
        return;
    }
    let tag = &crius::ids::new_id()[..10];
    let service = format!("criusvm{tag}.service");
    let scope = format!("criusvm{tag}-monitors.scope");
    let mut d = TestDaemon::start(&format!(
        "[cgroup]\ndriver = \"systemd\"\ndefault_parent = \"criusvm{tag}.slice\"\n"
    ))
    .await;
    // Dropped before `d`: the unit stops before the harness cleans up.
    let _units = UnitGuard(vec![service.clone(), scope.clone()]);
    d.cgroup_parent = Some(format!("/criusvm{tag}.slice"));
    d.monitors_cgroup = Some(format!("/{scope}"));
    // The harness's own process gives way to the unit.
    d.signal_and_wait(15, std::time::Duration::from_secs(10))
        .expect("crius stops on SIGTERM");
    serve_as_unit(&d, &service).await;

    let mut rt = d.runtime().await;
    let mut pods = Vec::new();
    for name in ["first", "second"] {
        let id = crate::pod::run(&mut rt, crate::pod::config(&format!("{name}{tag}")))
            .await
            .unwrap();
        let (_, info) = crate::pod::status(&mut rt, &id).await;
        let monitor = info["monitorPid"].as_i64().unwrap() as i32;
        assert_eq!(
            crate::cgroup::of_pid(monitor, "memory").as_deref(),
            Some(format!("/{scope}").as_str()),
            "the {name} pod's monitor is in the monitors' scope"
        );
        pods.push((id, crius::sys::process::ProcRef::of(monitor).unwrap()));
    }
    assert_eq!(unit_state(&scope), "active", "systemd knows {scope}");
    let main_pid = std::process::Command::new("systemctl")
        .args(["show", "-p", "MainPID", "--value", &service])
        .output()
        .unwrap();
    let main_pid: i32 = String::from_utf8_lossy(&main_pid.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        crate::cgroup::of_pid(main_pid, "memory"),
        Some(format!("/system.slice/{service}")),
        "crius itself runs in its unit"
    );

    drop(rt);
    let stop = std::process::Command::new("systemctl")
        .args(["stop", &service])
        .status()
        .unwrap();
    assert!(stop.success(), "systemctl stop {service}");
    assert!(
        crius::sys::process::ProcRef::of(main_pid).is_none_or(|p| !p.alive()),
        "crius stopped with its unit"
    );
    for (id, monitor) in &pods {
        assert!(monitor.alive(), "the monitor of {id} outlives crius's unit");
    }
    assert_eq!(unit_state(&scope), "active", "{scope} after the stop");

    serve_as_unit(&d, &service).await;
    let mut rt = d.runtime().await;
    for (id, _) in &pods {
        let (st, _) = crate::pod::status(&mut rt, id).await;
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{id}");
    }
    for (id, monitor) in &pods {
        crate::pod::stop_remove(&mut rt, id).await;
        crate::pod::wait_for(
            "the monitor to exit",
            std::time::Duration::from_secs(20),
            || !monitor.alive(),
        )
        .await;
    }
    crate::pod::wait_for(
        "systemd to drop the empty scope",
        std::time::Duration::from_secs(20),
        || unit_state(&scope) != "active",
    )
    .await;
    crate::pod::assert_no_trace(&d);
}
