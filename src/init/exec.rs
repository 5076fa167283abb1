//! A process executed in a running container (ExecSync, Exec), forked by
//! the monitor: stage 1 joins the container's cgroup (a cgroup is not a
//! namespace) and its namespaces through its init's /proc/PID/ns files,
//! mount namespace last but for the pod's user namespace (if it has one); the PID namespace needs a new process, so it
//! clones stage 2 with CLONE_PARENT (the monitor reaps it), reports its
//! pid and exits. Stage 2 starts its own session and process group (a
//! timeout kills the whole group), enters the container's working
//! directory, takes the container's user, capabilities and environment and
//! execs. The sync socket is close-on-exec: EOF means the exec succeeded.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::monitor::protocol::Process;
use nix::sched::CloneFlags;

use super::setup::{self, Stdio, Sync};
use crate::monitor::sync::{Message, Step};
use crate::sys::ns::{self, Kind};
use crate::sys::process::{Forked, ProcRef, SingleThreaded, exit_immediately, fork_into};

/// What the exec process needs besides its stdio.
pub struct Exec<'a> {
    /// The container's init, whose namespaces are joined: the process, not
    /// only its pid (the monitor may reap it while this process starts).
    pub init: ProcRef,
    /// The container's process settings (user, capabilities, cwd, rlimits).
    pub process: &'a Process,
    pub args: &'a [String],
    pub env: &'a [Vec<u8>],
    pub user: &'a str,
    pub groups: crate::init::user::GroupsPolicy,
    /// The container's seccomp filter.
    pub seccomp: Option<&'a crate::monitor::protocol::SeccompFilter>,
    /// The container's cgroup files it joins through
    /// ([`setup::CgroupJoin`]), less any it was born in.
    pub cgroup_join: &'a [PathBuf],
    /// The host uid and gid of the pod's user namespace's root, if the
    /// container is in one: its stdio is given to them before joining.
    pub userns_root: Option<(u32, u32)>,
}

/// The namespaces joined, in order: the mount namespace last, since it
/// hides the others' paths.
const JOINED: [Kind; 6] = [
    Kind::Cgroup,
    Kind::Ipc,
    Kind::Uts,
    Kind::Net,
    Kind::Pid,
    Kind::Mnt,
];

/// Stage 1; never returns.
pub fn run(one: SingleThreaded, exec: &Exec, stdio: Stdio, sync: OwnedFd) -> ! {
    let tty = stdio.tty;
    let mut sync = setup::hand_off_fds(one, stdio, sync);
    setup::non_dumpable();
    if let Err(e) = setup::CgroupJoin::open(exec.cgroup_join).and_then(setup::CgroupJoin::join) {
        sync.failed(Step::JoinCgroup, &e);
    }
    let mut list: Vec<(PathBuf, Kind)> = JOINED
        .iter()
        .map(|&kind| (kind.proc_path(exec.init.pid), kind))
        .collect();
    // The pod's user namespace last (the others belong to the host's or
    // are joined with the host's privileges), when it is not ours.
    let user = Kind::User.proc_path(exec.init.pid);
    let own = ns::inode(std::path::Path::new("/proc/self/ns/user")).ok();
    let in_userns = ns::inode(&user).ok() != own;
    if in_userns {
        list.push((user, Kind::User));
        // The stdio pipes to the namespace's root, which maps no host
        // root: that root gives them to the container's user.
        if let Some((uid, gid)) = exec.userns_root {
            setup::stdio_to(uid, Some(gid));
        }
    }
    // The files opened are the container's only if its init is still the
    // same live process after they were opened: once the monitor reaped
    // it, its pid may name another process, whose namespaces are never
    // joined. A container that exited meanwhile is not running, nor is
    // one whose init is exiting: it releases its namespaces before it
    // becomes a zombie, and their files are gone (ENOENT) in between.
    let opened = ns::open(&list);
    if !exec.init.running() {
        sync.fail(Step::NotRunning, "the container's process has exited");
    }
    if let Err(e) = opened.and_then(ns::enter) {
        sync.fail(Step::JoinNamespaces, &crate::error::chain(&e));
    }
    if in_userns && let Err(e) = crate::sys::process::become_root_in_user_namespace() {
        sync.fail(Step::JoinUserNamespace, &e.to_string());
    }
    match fork_into(one, CloneFlags::CLONE_PARENT) {
        Ok(Forked::Child) => stage2(exec, tty, sync),
        Ok(Forked::Parent(pid)) => {
            sync.send(&Message::Pid(pid.as_raw()));
            exit_immediately(0)
        }
        Err(e) => sync.fail(Step::Fork, &crate::error::chain(&e)),
    }
}

fn stage2(exec: &Exec, tty: bool, mut sync: Sync) -> ! {
    let _ = nix::unistd::setsid();
    // The terminal comes from the container's devpts: the mount namespace
    // joined above is the container's.
    if tty && let Err(e) = setup::terminal(&mut sync) {
        sync.failed(Step::Terminal, &e);
    }
    if let Err(e) = setup::enter_cwd(&exec.process.cwd, false) {
        sync.failed(Step::Cwd, &e);
    }
    let prepared = match setup::finalize(
        exec.process,
        exec.args,
        exec.env,
        exec.user,
        exec.groups,
        exec.seccomp,
    ) {
        Ok(e) => e,
        Err((step, e)) => sync.failed(step, &e),
    };
    let err = setup::exec(&prepared);
    sync.send(&Message::Failed {
        step: Step::Exec,
        message: crate::error::chain(&err),
    });
    exit_immediately(127)
}
