//! A container's init, forked by the monitor and blocked before execve
//! until StartContainer (runc create / start).
//!
//! Stage 1 (a child of the monitor, in the host's namespaces, and born in
//! the container's cgroup v2 directory when the kernel can clone into
//! one): stdio and the sync socket in place, every other fd closed,
//! non-dumpable, the container's other cgroup files opened (cgroup v1
//! `tasks`) and joined when it gets a cgroup namespace of its own, else
//! by stage 2 between `start` and execve
//! ([`ContainerLaunch::joins_cgroup_in_setup`]), the pod's net/IPC/UTS namespaces joined by
//! their pinned paths (and the PID namespace in POD and TARGET mode), then
//! a clone into a new mount namespace (and a new PID namespace in CONTAINER
//! mode: entering one needs a new process) with CLONE_PARENT, so the
//! monitor is the parent of stage 2. Stage 1 reports stage 2's pid and
//! exits.
//!
//! Stage 2 (the container's init): its own session, the rootfs plan
//! ([`super::rootfs`], made by the daemon and carried by the launch), the pod's user namespace if it has one (joined
//! last: the mounts, idmapped ones included, are made from the host's, so
//! the container's mount namespace, and a PID or cgroup namespace of its
//! own, belong to the host's user namespace), the working directory, the process settings
//! ([`super::setup::finalize`]), `ready`, then it blocks until `start`,
//! joins the cgroups stage 1 left to it and execs the entrypoint. Any failure is reported as a failed [`Step`]
//! and ends the process, whose mount namespace takes every mount with it.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;

use super::setup::{self, CgroupJoin, Stdio, Sync};
use crate::monitor::protocol::ContainerLaunch;
use crate::monitor::sync::{Message, Step};
use crate::sys::ns;
use crate::sys::process::{Forked, SingleThreaded, exit_immediately, fork_into};

/// Stage 1; never returns. `join`: the container's cgroup files this
/// process joins through (those of `init.cgroup_procs` it was not born
/// in: the monitor clones it into a cgroup v2 directory when it can).
pub fn run(
    one: SingleThreaded,
    init: &ContainerLaunch,
    join: &[PathBuf],
    stdio: Stdio,
    sync: OwnedFd,
) -> ! {
    let tty = stdio.tty;
    let mut sync = setup::hand_off_fds(one, stdio, sync);
    setup::non_dumpable();
    // Opened now: they are host paths. Joined now when the cgroup
    // namespace made below must be rooted there, else just before the
    // workload execs, so that CreateContainer waits for no migration.
    let join = match CgroupJoin::open(join) {
        Ok(j) => j,
        Err(e) => sync.failed(Step::JoinCgroup, &e),
    };
    let join = match init.joins_cgroup_in_setup() {
        true => match join.join() {
            Ok(()) => None,
            Err(e) => sync.failed(Step::JoinCgroup, &e),
        },
        false => Some(join),
    };
    // The mount namespace is always the container's own.
    let new = init
        .create
        .iter()
        .fold(CloneFlags::CLONE_NEWNS, |flags, kind| {
            flags | kind.clone_flag()
        });
    if let Err(e) = ns::join(&init.join) {
        sync.fail(Step::JoinNamespaces, &crate::error::chain(&e));
    }
    match fork_into(one, new | CloneFlags::CLONE_PARENT) {
        Ok(Forked::Child) => stage2(init, join, tty, sync),
        Ok(Forked::Parent(pid)) => {
            sync.send(&Message::Pid(pid.as_raw()));
            exit_immediately(0)
        }
        Err(e) => sync.fail(Step::CreateNamespaces, &crate::error::chain(&e)),
    }
}

fn stage2(init: &ContainerLaunch, join: Option<CgroupJoin>, tty: bool, mut sync: Sync) -> ! {
    let _ = nix::unistd::setsid();
    // Device nodes get exactly the modes asked for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    // The pod's user namespace, opened now (its pin is a host path) and
    // joined once the mounts are done: making idmapped mounts needs the
    // host's user namespace.
    let userns = match &init.userns {
        Some(pin) => match std::fs::File::open(pin) {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => sync.fail(
                Step::JoinUserNamespace,
                &format!("open {}: {e}", pin.display()),
            ),
        },
        None => None,
    };
    if let Err(e) = super::rootfs::apply::execute(&init.root, &init.rootfs, userns.as_ref()) {
        let message = e.message();
        sync.fail(e.step, &message);
    }
    // The stdio pipes to the namespace's root, which maps no host root.
    if let (Some(_), Some((uid, gid))) = (&userns, init.userns_root) {
        setup::stdio_to(uid, Some(gid));
    }
    if let Some(fd) = &userns
        && let Err(e) = setup::join_user_namespace(fd)
    {
        sync.failed(Step::JoinUserNamespace, &e);
    }
    // After pivot_root: the terminal comes from the container's own devpts.
    if tty && let Err(e) = setup::terminal(&mut sync) {
        sync.failed(Step::Terminal, &e);
    }
    let process = &init.process;
    if let Err(e) = setup::enter_cwd(&process.cwd, true) {
        sync.failed(Step::Cwd, &e);
    }
    let exec = match setup::finalize(
        process,
        &process.args,
        &init.env,
        &init.user,
        init.groups,
        init.seccomp.as_ref(),
    ) {
        Ok(e) => e,
        Err((step, e)) => sync.failed(step, &e),
    };
    setup::test_pause(&init.env);
    sync.send(&Message::Ready);
    sync.wait_start();
    if let Some(join) = join
        && let Err(e) = join.join()
    {
        sync.failed(Step::JoinCgroup, &e);
    }
    let err = setup::exec(&exec);
    sync.send(&Message::Failed {
        step: Step::Exec,
        message: crate::error::chain(&err),
    });
    exit_immediately(127)
}
