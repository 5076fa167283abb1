//! A container's init, forked by the monitor and blocked before execve
//! until StartContainer (runc create / start).
//!
//! Stage 1 (a child of the monitor, in the host's namespaces): stdio and
//! the sync socket in place, every other fd closed, non-dumpable, the
//! container's cgroup joined, the pod's net/IPC/UTS namespaces joined by
//! their pinned paths (and the PID namespace in POD and TARGET mode), then
//! a clone into a new mount namespace (and a new PID namespace in CONTAINER
//! mode: entering one needs a new process) with CLONE_PARENT, so the
//! monitor is the parent of stage 2. Stage 1 reports stage 2's pid and
//! exits.
//!
//! Stage 2 (the container's init): its own session, the rootfs plan
//! ([`super::rootfs`]), the pod's user namespace if it has one (joined
//! last: the mounts, idmapped ones included, are made from the host's, so
//! the container's mount namespace, and a PID or cgroup namespace of its
//! own, belong to the host's user namespace), the working directory, the process settings
//! ([`super::setup::finalize`]), `ready`, then it blocks until `start` and
//! execs the entrypoint. Any failure is reported as a failed [`Step`]
//! and ends the process, whose mount namespace takes every mount with it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::setup::{self, Stdio, Sync};
use crate::init::rootfs::{self, Overlay};
use crate::monitor::sync::{Message, Step};
use crate::sys::ns::{self, Kind};
use crate::sys::process::{Forked, SingleThreaded, exit_immediately, fork_into};

/// What the init needs besides its stdio.
pub struct Init<'a> {
    pub spec: &'a Spec,
    pub env: &'a [Vec<u8>],
    pub user: &'a str,
    pub groups: crate::init::user::GroupsPolicy,
    pub seccomp: Option<&'a crate::monitor::protocol::SeccompFilter>,
    pub overlay: &'a Overlay,
    pub volumes: &'a [rootfs::ImageVolume],
    pub cgroup_procs: &'a [PathBuf],
}

/// The kind of an OCI namespace entry joined or created in stage 1 (the
/// user namespace is joined by stage 2, after its mounts; crius does not
/// use time namespaces).
fn kind(t: LinuxNamespaceType) -> Option<Kind> {
    Some(match t {
        LinuxNamespaceType::Network => Kind::Net,
        LinuxNamespaceType::Ipc => Kind::Ipc,
        LinuxNamespaceType::Uts => Kind::Uts,
        LinuxNamespaceType::Pid => Kind::Pid,
        LinuxNamespaceType::Mount => Kind::Mnt,
        LinuxNamespaceType::Cgroup => Kind::Cgroup,
        _ => return None,
    })
}

/// Namespaces of the Spec: (to join by path, to create).
pub fn namespaces(spec: &Spec) -> (Vec<(PathBuf, Kind)>, CloneFlags) {
    let mut join = Vec::new();
    let mut new = CloneFlags::empty();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let Some(kind) = kind(ns.typ()) else {
            continue;
        };
        match ns.path() {
            Some(p) => join.push((p.clone(), kind)),
            None => new |= kind.clone_flag(),
        }
    }
    // The mount namespace is always the container's own.
    (join, new | CloneFlags::CLONE_NEWNS)
}

/// Stage 1; never returns.
pub fn run(one: SingleThreaded, init: &Init, stdio: Stdio, sync: OwnedFd) -> ! {
    let tty = stdio.tty;
    let mut sync = setup::hand_off_fds(one, stdio, sync);
    setup::non_dumpable();
    if let Err(e) = setup::join_cgroup(init.cgroup_procs) {
        sync.fail(Step::JoinCgroup, &e);
    }
    let (join, new) = namespaces(init.spec);
    if let Err(e) = ns::join(&join) {
        sync.fail(Step::JoinNamespaces, &crate::error::chain(&e));
    }
    match fork_into(one, new | CloneFlags::CLONE_PARENT) {
        Ok(Forked::Child) => stage2(init, tty, sync),
        Ok(Forked::Parent(pid)) => {
            sync.send(&Message::Pid(pid.as_raw()));
            exit_immediately(0)
        }
        Err(e) => sync.fail(Step::CreateNamespaces, &crate::error::chain(&e)),
    }
}

fn stage2(init: &Init, tty: bool, mut sync: Sync) -> ! {
    let _ = nix::unistd::setsid();
    // Device nodes get exactly the modes asked for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let root = init
        .spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let is_dir = |p: &Path| p.is_dir() || !p.exists();
    let steps = match rootfs::plan(init.spec, init.overlay, init.volumes, &is_dir) {
        Ok(s) => s,
        Err(e) => sync.fail(Step::RootfsPlan, &e.to_string()),
    };
    // The pod's user namespace, opened now (its pin is a host path) and
    // joined once the mounts are done: making idmapped mounts needs the
    // host's user namespace.
    let userns = match rootfs::in_user_namespace(init.spec) {
        Some(pin) => match std::fs::File::open(&pin) {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => sync.fail(
                Step::JoinUserNamespace,
                &format!("open {}: {e}", pin.display()),
            ),
        },
        None => None,
    };
    if let Err(e) = super::rootfs::apply::execute(&root, &steps, userns.as_ref()) {
        sync.fail(e.step, &e.message);
    }
    if let Some(fd) = &userns
        && let Err(e) = setup::join_user_namespace(fd)
    {
        sync.fail(Step::JoinUserNamespace, &e);
    }
    // After pivot_root: the terminal comes from the container's own devpts.
    if tty && let Err(e) = setup::terminal(&mut sync) {
        sync.fail(Step::Terminal, &e);
    }
    let Some(process) = init.spec.process() else {
        sync.fail(Step::Exec, "the spec has no process")
    };
    if let Err(e) = setup::enter_cwd(process.cwd(), true) {
        sync.fail(Step::Cwd, &e);
    }
    let args = process.args().clone().unwrap_or_default();
    let exec = match setup::finalize(
        process,
        &args,
        init.env,
        init.user,
        init.groups,
        init.seccomp,
    ) {
        Ok(e) => e,
        Err((step, e)) => sync.fail(step, &e),
    };
    setup::test_pause(init.env);
    sync.send(&Message::Ready);
    sync.wait_start();
    let err = setup::exec(&exec);
    sync.send(&Message::Failed {
        step: Step::Exec,
        message: err,
    });
    exit_immediately(127)
}
