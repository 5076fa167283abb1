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
