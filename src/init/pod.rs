//! The pod init: PID 1 of a pod's PID namespace, the monitor's forked
//! child. It only reaps: processes of the pod's containers that are
//! orphaned inside the namespace are re-parented to it. When it dies the
//! kernel kills every process of the namespace, so the sandbox is READY
//! only while it lives.
//!
//! Every container of a POD-mode pod sees it as PID 1, so a container with
//! CAP_SYS_PTRACE can read its /proc/1/root, /proc/1/mountinfo and its
//! memory. Before it starts reaping it therefore gives everything up
//! ([`isolate`]): its own mount namespace pivoted into an empty read-only
//! tmpfs, no capabilities (bounding set emptied), uid/gid 65535 with no
//! supplementary groups, no_new_privs, non-dumpable.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Uid};

use crate::sys::process::{SingleThreaded, close_fds_from, exit_immediately, set_name};
use crate::sys::sys;

/// The unprivileged ids the pod init runs as (the "nobody" of 16-bit ids,
/// as CRI-O's pinns and the pause image use).
pub const UID: u32 = 65535;
pub const GID: u32 = 65535;

/// Where the empty root is built, inside the init's own mount namespace
/// only: any directory every host has; the host's view is unchanged.
const SCRATCH: &str = "/proc";

/// Runs the init loop forever. SIGCHLD is blocked (inherited from the
/// monitor), so a child that exits between the reap and the wait is never
/// missed: its signal stays pending for `sigwait`.
#[allow(unsafe_code)]
pub fn run() -> ! {
    // SAFETY: the pod init is a program of its own (crius-pod-init) whose
    // main calls this first; it never starts a thread.
    let one = unsafe { SingleThreaded::new() };
    set_name("crius-init");
    close_fds_from(one, 3);
    if let Err(e) = isolate() {
        // The monitor sees the init end and marks the sandbox NOTREADY; a
        // pod init that could not shed root must not run.
        eprintln!("crius-init: {}", crate::error::chain(&e));
        exit_immediately(125);
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_block();
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let _ = chld.wait();
    }
}

/// `want` if the id map (/proc/self/uid_map or gid_map text) maps it, else
/// the highest id it maps (a pod's user namespace may hold fewer than
/// 65536 ids); `want` when the text cannot be read.
fn unprivileged_id(map: &str, want: u32) -> u32 {
    let mut highest = None;
    for line in map.lines() {
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [inside, _, len] = v[..] else { continue };
        if len == 0 {
            continue;
        }
        if (inside..inside + len).contains(&u64::from(want)) {
            return want;
        }
        let top = inside + len - 1;
        highest = Some(highest.map_or(top, |h: u64| h.max(top)));
    }
    highest.map_or(want, |h| u32::try_from(h).unwrap_or(want))
}

/// Gives up the host's view and every privilege (see the module doc), in
/// the order that keeps the needed privilege until its last use: mounts,
/// then the bounding set (needs CAP_SETPCAP), then the ids (which clear
/// the permitted and effective sets), then no_new_privs and dumpable.
pub fn isolate() -> Result<(), crate::sys::Error> {
    // 1. A mount namespace of its own, detached from the host's.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("unshare the mount namespace"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make mounts private"))?;
    // 2. An empty tmpfs becomes the root; the old root is detached.
    let scratch = Path::new(SCRATCH);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("crius-init"),
        scratch,
        Some("tmpfs"),
        flags,
        Some("size=4k,mode=0555"),
    )
    .map_err(sys("mount an empty root"))?;
    nix::unistd::chdir(scratch).map_err(sys("enter the empty root"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys("make the empty root read-only"))?;
    // 3. No capability can ever come back.
    crate::sys::caps::apply_bounding(0)?;
    // 4. Unprivileged ids: setuid away from 0 clears the permitted,
    //    effective and ambient sets.
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let gid = unprivileged_id(&read("/proc/self/gid_map"), GID);
    let uid = unprivileged_id(&read("/proc/self/uid_map"), UID);
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(g, g, g).map_err(sys(format!("setresgid {gid}")))?;
    nix::unistd::setresuid(u, u, u).map_err(sys(format!("setresuid {uid}")))?;
    // 5. Nothing gained by exec, nothing readable through ptrace or /proc.
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(sys("non-dumpable"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unprivileged_id;

    #[test]
    fn the_pod_init_takes_65535_or_the_highest_mapped_id() {
        assert_eq!(unprivileged_id("0 0 4294967295\n", 65535), 65535);
        assert_eq!(unprivileged_id("0 100000 65536\n", 65535), 65535);
        assert_eq!(unprivileged_id("0 100000 1000\n", 65535), 999);
        assert_eq!(unprivileged_id("", 65535), 65535);
    }
}
