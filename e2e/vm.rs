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
