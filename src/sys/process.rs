//! Process handles that survive pid reuse: a pid together with its start
//! time (field 22 of /proc/PID/stat) names one process for good, and a pidfd
//! (pidfd_open(2)) lets the daemon watch and signal it without races.
//! Also the fork of a single-threaded helper into new namespaces (clone(2)
//! with namespace flags and no new stack, i.e. fork semantics).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{Error, Result, io, sys};

/// One process, for good: its pid and its start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcRef {
    /// The process `pid` as it is now; `None` when it does not exist.
    pub fn of(pid: i32) -> Option<ProcRef> {
        start_time(pid).map(|start_time| ProcRef { pid, start_time })
    }

    /// This process.
    pub fn current() -> ProcRef {
        let pid = std::process::id() as i32;
        ProcRef::of(pid).expect("/proc/self/stat is readable")
    }

    /// Whether this very process still exists (a zombie counts as gone).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start_time && runs(s.state))
    }

    /// Whether this very process still exists and is not exiting. A
    /// process in exit(2) releases its namespaces before it becomes a
    /// zombie: in between, [`Self::alive`] is still true, but its
    /// /proc/PID/ns files are gone (ENOENT).
    pub fn running(&self) -> bool {
        stat(self.pid).is_some_and(|s| {
            s.start == self.start_time && runs(s.state) && s.flags & PF_EXITING == 0
        })
    }

    /// A pidfd for this process, checked to be the same process (not a
    /// reused pid) after it was opened. `None` when it is gone.
    pub fn open(&self) -> Option<PidFd> {
        let fd = PidFd::open(self.pid).ok()?;
        (start_time(self.pid) == Some(self.start_time)).then_some(fd)
    }

    /// Sends `signal` if the process still exists; `true` when it was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        match self.open() {
            Some(fd) => fd.signal(signal).is_ok(),
            None => false,
        }
    }
}

/// The start time of `pid` (clock ticks since boot), `None` if it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// The parent of `pid`, `None` if it is gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.parent)
}

/// The process group of `pid` while it runs, `None` once it has exited.
pub fn live_group(pid: i32) -> Option<i32> {
    stat(pid).filter(|s| runs(s.state)).map(|s| s.group)
}

/// Whether `pid` has exited: no such process, or a zombie waiting for its
/// parent (it runs no more code).
pub fn has_exited(pid: i32) -> bool {
    !stat(pid).is_some_and(|s| runs(s.state))
}

/// A /proc/PID/stat state of a process that has not exited (not Z or X).
fn runs(state: char) -> bool {
    state != 'Z' && state != 'X'
}

/// The kernel's PF_EXITING in the flags of /proc/PID/stat: set when the
/// process enters exit(2), before it releases its namespaces.
const PF_EXITING: u32 = 0x4;

/// The fields of /proc/PID/stat that crius reads.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    parent: i32,
    group: i32,
    flags: u32,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // comm may hold spaces and parentheses: fields resume after the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    // After comm: state is field 3, ppid 4, pgrp 5, flags 9 (4 more),
    // starttime 22 (13 more).
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    let flags = fields.nth(3)?.parse().ok()?;
    let start = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        state,
        parent,
        group,
        flags,
        start,
    })
}

/// A pidfd: readable once the process has exited.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    pub fn open(pid: i32) -> Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(sys(format!("pidfd_open of pid {pid}"))(nix::Error::last()));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        // SAFETY: pidfd_send_signal with a valid fd, a signal number, no
        // siginfo (NULL) and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as i32,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(sys(format!("signal {signal} through a pidfd"))(
                nix::Error::last(),
            ));
        }
        Ok(())
    }

    /// Collects the exit status if the process is our exited child; `false`
    /// when it is still running or not our child (then there is nothing to
    /// reap: its own parent does that).
    pub fn try_reap(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with P_PIDFD on our fd writes into `info`, which
        // lives across the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.0.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is valid to read for SIGCHLD-style siginfo from waitid.
        rc == 0 && unsafe { info.si_pid() } != 0
    }
}

impl PidFd {
    /// Waits until the process has ended, then reaps it if it is our child.
    pub async fn exited(self) {
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        // SAFETY: the AsyncFd takes ownership of the PidFd, which owns its
        // fd; nothing else can close that fd while it is registered.
        match unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) } {
            Ok(fd) => {
                let _ = fd.readable().await;
                fd.get_ref().try_reap();
            }
            Err(e) => {
                // Not registrable (no reactor): poll.
                let (fd, _) = e.into_parts();
                while !fd.try_reap() && !fd.ended() {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Whether the process has ended (poll(2) on the pidfd, no wait).
    pub fn ended(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Proof that the process has a single thread: [`fork_into`] and
/// [`close_fds_from`] demand it, so the multi-threaded daemon cannot call
/// them. Created (unsafely) only by the entry point of a single-threaded
/// program, the monitor's `main`; a forked child inherits its parent's. Not `Send`: it cannot reach another thread.
#[derive(Debug, Clone, Copy)]
pub struct SingleThreaded(std::marker::PhantomData<*const ()>);

impl SingleThreaded {
    /// # Safety
    /// The calling process has exactly one thread and starts none while a
    /// copy of the token lives.
    pub unsafe fn new() -> SingleThreaded {
        SingleThreaded(std::marker::PhantomData)
    }
}

/// Which side of [`fork_into`] we are on.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Forks the calling process into the new namespaces `flags` names (any of
/// CLONE_NEWNET, NEWIPC, NEWUTS, NEWPID): clone(2) without a new stack has
/// fork semantics. With CLONE_NEWPID the child is PID 1 of a new PID namespace.
///
/// Only for single-threaded processes (the monitor, hence the token): the
/// child of a multi-threaded process may find locks held by threads that do
/// not exist.
pub fn fork_into(_: SingleThreaded, flags: CloneFlags) -> Result<Forked> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone with a NULL stack duplicates the calling process like
    // fork(2). The caller is single-threaded (the token), so the
    // child's copy of the address space has no lock held by a missing thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match rc {
        -1 => Err(sys(format!("clone with flags {flags:#x}"))(
            nix::Error::last(),
        )),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// clone3(2)'s argument (`struct clone_args`, its size 88 of Linux 5.7,
/// which added `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// CLONE_INTO_CGROUP (Linux 5.7; not in libc's Linux constants for glibc).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`fork_into`], the child born in the cgroup v2 directory `cgroup`
/// (clone3 with CLONE_INTO_CGROUP): it never migrates there, so it waits
/// for none of the grace periods a migration can cost. An error leaves no
/// child: a kernel before 5.7 (ENOSYS, E2BIG), a directory that is not a
/// cgroup2 one (EBADF), or the cgroup refusing a process; the caller may
/// fork and join instead.
pub fn fork_into_cgroup(
    _: SingleThreaded,
    flags: CloneFlags,
    cgroup: BorrowedFd<'_>,
) -> Result<Forked> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no stack (0, size 0) and without CLONE_VM
    // duplicates the calling process like fork(2); `args` is a valid
    // clone_args of the size passed, read by the kernel during the call
    // only. The caller is single-threaded (the token), as for `fork_into`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => Err(sys("clone3 into a cgroup")(nix::Error::last())),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Puts `fds` at 0, 1, …, n-1 (a forked setup process's stdio and its
/// hand-off fds; dup2 clears close-on-exec, so they survive execve), then
/// closes every other fd, and returns them, owned. Single-threaded only
/// (the token): another thread could hold one of those numbers.
pub fn install_fds(one: SingleThreaded, fds: Vec<OwnedFd>) -> Result<Vec<OwnedFd>> {
    // Everything above the targets first, so that no dup2 clobbers a source.
    let floor = fds.len().max(16) as i32;
    let high = fds
        .into_iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(&fd, floor))
        .collect::<std::result::Result<Vec<OwnedFd>, _>>()
        .map_err(|e| sys("move fds above their targets")(nix::Error::from_raw(e.raw_os_error())))?;
    let mut placed = Vec::with_capacity(high.len());
    for (target, fd) in high.iter().enumerate() {
        let target = target as i32;
        // SAFETY: dup2 onto a number below `floor`; with one thread (the
        // token) nothing else in this process owns that number, so the
        // new OwnedFd is its only owner.
        let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
        if rc < 0 {
            return Err(sys(format!("dup2 onto fd {target}"))(nix::Error::last()));
        }
        // SAFETY: `target` was just created by dup2 and is owned by no one else.
        placed.push(unsafe { OwnedFd::from_raw_fd(target) });
    }
    drop(high);
    close_fds_from(one, placed.len() as u32);
    Ok(placed)
}

/// Makes the terminal on `fd` the controlling terminal of the calling
/// process's session (TIOCSCTTY, after setsid).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(sys("TIOCSCTTY")(nix::Error::last()));
    }
    Ok(())
}

/// Closes every fd from `first` up (close_range(2)), e.g. in a forked
/// child that must not hold its parent's sockets. Single-threaded only (the
/// token): another thread could be using one of them.
pub fn close_fds_from(_: SingleThreaded, first: u32) {
    // SAFETY: close_range only closes descriptors; with one thread (the
    // token) the caller owns every fd >= first and does not use them
    // afterwards.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, u32::MAX, 0);
    }
}

/// Takes ids 0 of the (mapped) user namespace the process is in: a process
/// that entered one holding the host's root ids has ids the namespace does
/// not map, and an execve with them keeps no capability there.
pub fn become_root_in_user_namespace() -> nix::Result<()> {
    use nix::unistd::{Gid, Uid};
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)
}

/// Makes this process the reaper of its orphaned descendants.
pub fn set_child_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("prctl(PR_SET_CHILD_SUBREAPER)"))
}

/// Sets this thread's name as `ps` shows it (15 bytes at most).
pub fn set_name(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Sets `signals` to be ignored (SIG_IGN), e.g. SIGINT and SIGHUP in a
/// monitor that must outlive a Ctrl-C on the daemon's terminal.
pub fn ignore_signals(signals: &[Signal]) -> Result<()> {
    use nix::sys::signal::{SigHandler, signal};
    for &s in signals {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal
        // safety question arises.
        unsafe { signal(s, SigHandler::SigIgn) }.map_err(sys(format!("ignore {s}")))?;
    }
    Ok(())
}

/// Restores the default action of `signals` (in a child before it execs or
/// becomes an init).
pub fn default_signals(signals: &[Signal]) {
    use nix::sys::signal::{SigHandler, signal};
    for &s in signals {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
}

/// Ends the calling process at once (_exit(2)): no atexit handlers, no
/// flushing of stdio buffers copied from a parent by fork.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Reads the kernel's boot id: it changes at every boot, so a state dir
/// that is not on tmpfs can tell it survived a reboot.
pub fn boot_id() -> Result<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    Ok(text.trim().to_string())
}

/// Checks that an error from a syscall is "no such process".
pub fn is_gone(err: &Error) -> bool {
    err.errno() == Some(nix::Error::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup2 directory of the test's own under the first cgroup2
    /// mount, and a child of the test in it: both gone on drop.
    struct Leaf(std::path::PathBuf, Option<i32>);

    impl Drop for Leaf {
        fn drop(&mut self) {
            if let Some(pid) = self.1 {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn a_child_is_born_in_a_cgroup2_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making a cgroup needs root");
            return;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4))?
        }) else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let name = format!("crius-test-born-{}", std::process::id());
        let mut leaf = Leaf(std::path::Path::new(mount).join(&name), None);
        std::fs::create_dir(&leaf.0).unwrap();
        let dir = std::fs::File::open(&leaf.0).unwrap();
        // SAFETY (test): the child only calls pause(2) until it is killed,
        // touching no lock another thread of the test could hold.
        let one = unsafe { SingleThreaded::new() };
        match fork_into_cgroup(one, CloneFlags::empty(), dir.as_fd()) {
            Ok(Forked::Child) => loop {
                // SAFETY: pause(2) has no arguments.
                unsafe { libc::pause() };
            },
            Ok(Forked::Parent(pid)) => leaf.1 = Some(pid.as_raw()),
            Err(e) => panic!("{e}"),
        }
        let pid = leaf.1.unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let v2 = cgroup.lines().find(|l| l.starts_with("0::")).unwrap();
        assert!(v2.ends_with(&format!("/{name}")), "{cgroup}");
        let procs = std::fs::read_to_string(leaf.0.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string());
        // Not a cgroup2 directory: refused, no child.
        let tmp = tempfile::tempdir().unwrap();
        let not = std::fs::File::open(tmp.path()).unwrap();
        match fork_into_cgroup(one, CloneFlags::empty(), not.as_fd()) {
            Err(_) => {}
            Ok(Forked::Child) => exit_immediately(0),
            Ok(Forked::Parent(p)) => {
                let _ = nix::sys::wait::waitpid(p, None);
                panic!("cloned into a directory that is not a cgroup")
            }
        }
    }

    #[test]
    fn current_process_is_alive_and_stable() {
        let me = ProcRef::current();
        assert!(me.alive());
        assert_eq!(ProcRef::of(me.pid), Some(me));
        let other = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive(), "a different start time is another process");
    }

    #[test]
    fn stat_fields_and_an_exiting_process() {
        // A process named "a) b" in exit(2): flags 0x40404c has PF_EXITING.
        let line = "4242 (a) b) R 1 4242 4242 0 -1 4210764 175 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 2723840 219 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'R',
                parent: 1,
                group: 4242,
                flags: 4210764,
                start: 987654
            }
        );
        assert_ne!(s.flags & PF_EXITING, 0);
        assert_eq!(parse_stat("4242 (x"), None);
        assert_eq!(parse_stat("4242 (x) R 1"), None);
        // This process is neither exiting nor gone, and its start time
        // is the one ProcRef::of reads.
        let me = ProcRef::current();
        let own = stat(me.pid).unwrap();
        assert_eq!(own.flags & PF_EXITING, 0);
        assert_eq!(own.start, me.start_time);
        assert!(me.running());
        let other = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !other.running(),
            "a different start time is another process"
        );
    }

    #[test]
    fn the_parent_comes_from_stat() {
        let me = std::process::id() as i32;
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw()));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(parent_of(child.id() as i32), Some(me));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_of(child.id() as i32), None, "reaped: gone");
    }

    #[test]
    fn a_reaped_child_is_gone_and_cannot_be_signalled() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let r = ProcRef::of(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!r.alive());
        assert!(!r.signal(Signal::SIGKILL));
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd, the point of the test
    fn pidfd_reaps_our_exited_child() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !fd.try_reap() {
            assert!(std::time::Instant::now() < deadline, "child never reaped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(ProcRef::of(child.id() as i32).is_none());
    }

    #[test]
    fn boot_id_is_a_uuid() {
        assert_eq!(boot_id().unwrap().len(), 36);
    }
}
