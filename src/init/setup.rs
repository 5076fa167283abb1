//! The process setup shared by a container's init and its exec processes,
//! in runc's order: stdio and the hand-off fds in place and every other fd
//! closed, non-dumpable before joining anything, the cgroup joined, the
//! container's namespaces joined by path ([`crate::sys::ns::join`]), then (in the final process) the
//! working directory, rlimits, oom_score_adj, no_new_privs, the bounding
//! set, the user (setgroups, setgid, setuid with KEEPCAPS), the other
//! capability sets, and execve with the exact environment bytes.
//!
//! Runs only in processes forked from the single-threaded monitor.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, Signal};

use crate::init::error::{Error, io};
use crate::init::user::GroupsPolicy;
use crate::monitor::protocol::{Process, SeccompFilter as Filter};
use crate::monitor::sync::{Message, Step};
use crate::record::step::{TEST_PAUSE_ENV, TEST_PAUSE_SECS_ENV};
use crate::sys::caps;
use crate::sys::process::{
    SingleThreaded, default_signals, exit_immediately, install_fds, set_controlling_tty,
};

/// The standard streams a container process gets.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The process gets a terminal: the final process opens it from the
    /// container's devpts ([`terminal`]) and puts it on 0, 1, 2 in place
    /// of the three above (placeholders then).
    pub tty: bool,
}

/// The fd number the sync socket has in a forked setup process.
pub const SYNC_FD: RawFd = 3;

/// The sync socket with the monitor: one [`Message`] per line; the
/// monitor writes `start`.
pub struct Sync(std::fs::File);

impl Sync {
    pub fn send(&mut self, message: &Message) {
        let _ = self.0.write_all(message.encode().as_bytes());
    }

    /// Sends `message` with `fd` attached (SCM_RIGHTS).
    fn send_fd(&mut self, message: &Message, fd: &OwnedFd) -> Result<(), Error> {
        use std::os::fd::{AsFd, AsRawFd};
        let data = message.encode();
        let n = crate::sys::fds::send_with_fds(self.0.as_fd(), data.as_bytes(), &[fd.as_raw_fd()])
            .map_err(io("hand the terminal to the monitor"))?;
        self.0
            .write_all(&data.as_bytes()[n..])
            .map_err(io("hand the terminal to the monitor"))
    }

    /// Reports a failed step and ends the process.
    pub fn fail(&mut self, step: Step, message: &str) -> ! {
        self.send(&Message::Failed {
            step,
            message: message.to_string(),
        });
        exit_immediately(1)
    }

    /// Reports a step failed with `error` (and its sources) and ends the
    /// process.
    pub fn failed(&mut self, step: Step, error: &dyn std::error::Error) -> ! {
        self.fail(step, &crate::error::chain(error))
    }

    /// Blocks until the monitor says `start`; ends the process when the
    /// monitor goes away instead.
    pub fn wait_start(&mut self) {
        use std::io::Read;
        let mut buf = [0u8; 6];
        match self.0.read_exact(&mut buf) {
            Ok(()) if &buf == b"start\n" => {}
            _ => exit_immediately(1),
        }
    }
}

/// Test hook: the step a container's setup pauses at, right before it
/// reports ready, when [`TEST_PAUSE_ENV`] names it in the monitor's
/// environment (which the daemon passes on only when it has it itself:
/// never in production) and the container's own environment holds
/// `CRIUS_TEST_PAUSE_AT=container setup` too, so that one container of a
/// pod hangs. For [`TEST_PAUSE_SECS_ENV`] seconds (default 3600).
pub const TEST_PAUSE_SETUP: &str = "container setup";

/// Pauses here if the test hook asks it ([`TEST_PAUSE_SETUP`]).
pub fn test_pause(env: &[Vec<u8>]) {
    if !std::env::var(TEST_PAUSE_ENV).is_ok_and(|s| s == TEST_PAUSE_SETUP) {
        return;
    }
    let mine = format!("{TEST_PAUSE_ENV}={TEST_PAUSE_SETUP}");
    if env.iter().any(|e| e == mine.as_bytes()) {
        let secs = std::env::var(TEST_PAUSE_SECS_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600);
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

/// Puts `stdio` on 0, 1, 2 and `sync` on [`SYNC_FD`] (close-on-exec, so
/// the monitor sees EOF once execve succeeded), then closes every other fd
/// inherited from the monitor (its sockets, other containers' pipes).
pub fn hand_off_fds(one: SingleThreaded, stdio: Stdio, sync: OwnedFd) -> Sync {
    let fds = vec![stdio.stdin, stdio.stdout, stdio.stderr, sync];
    let mut fds = install_fds(one, fds).unwrap_or_else(|_| exit_immediately(1));
    let Some(sync) = fds.pop() else {
        exit_immediately(1)
    };
    let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
    if nix::fcntl::fcntl(&sync, cloexec).is_err() {
        exit_immediately(1);
    }
    // 0, 1 and 2 stay open for the program.
    for fd in fds {
        let _ = fd.into_raw_fd();
    }
    debug_assert_eq!(sync.as_raw_fd(), SYNC_FD);
    Sync(std::fs::File::from(sync))
}

/// Marks the process non-dumpable: a process of the container cannot
/// ptrace it or open its /proc files (runc's escape protections).
pub fn non_dumpable() {
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// Joins the user namespace `fd` and takes its ids 0 (ours, the host's
/// root ids, are not mapped there); the capabilities setns(2) grants in
/// the namespace are then narrowed by [`finalize`] as anywhere else.
pub fn join_user_namespace(fd: &OwnedFd) -> Result<(), Error> {
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io("setns user"))?;
    crate::sys::process::become_root_in_user_namespace()
        .map_err(io("take ids 0 in the user namespace"))
}

/// The cgroup files a process joins through, opened (host paths: before
/// any namespace or pivot_root) and written later, when it should move.
pub struct CgroupJoin(Vec<(PathBuf, std::fs::File)>);

impl CgroupJoin {
    /// Opens each file for writing, never creating one (a missing file is
    /// a missing cgroup) and never leaking one into the workload.
    pub fn open(files: &[PathBuf]) -> Result<Self, Error> {
        files
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map(|f| (p.clone(), f))
                    .map_err(io(format!("open {}", p.display())))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Moves the calling process into the cgroups, one hierarchy after the
    /// other: `0` names the writer itself, and in a v1 `tasks` file only
    /// the writing thread (all there is of this process), which the
    /// kernel moves without entering the writer mode of its thread-group
    /// lock (and so without waiting for an RCU grace period).
    pub fn join(self) -> Result<(), Error> {
        for (path, mut file) in self.0 {
            file.write_all(b"0")
                .map_err(io(format!("write {}", path.display())))?;
        }
        Ok(())
    }
}

/// The working directory: created when missing (`create`), entered, and
/// checked to be reachable from our root (a cwd outside the root reads as
/// "(unreachable)").
pub fn enter_cwd(cwd: &Path, create: bool) -> Result<(), Error> {
    if create {
        // 0755 whatever the umask (the rootfs setup runs with umask 0).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(cwd)
            .map_err(io(format!("create {}", cwd.display())))?;
    }
    nix::unistd::chdir(cwd).map_err(io(format!("chdir {}", cwd.display())))?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(Error::Refused(format!(
            "{} is outside the container's root",
            cwd.display()
        ))),
    }
}

fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn rlimits(process: &Process) -> Result<(), Error> {
    for r in &process.rlimits {
        let name = &r.resource;
        let res = rlimit_resource(name)
            .ok_or_else(|| Error::Refused(format!("unknown rlimit {name}")))?;
        setrlimit(res, r.soft, r.hard).map_err(io(format!("setrlimit {name}")))?;
    }
    Ok(())
}

/// The process's oom_score_adj; the daemon already raised a value below
/// its own when it lacks CAP_SYS_RESOURCE, so a refusal is an error.
fn oom_score_adj(process: &Process) -> Result<(), Error> {
    match process.oom_score_adj {
        Some(adj) => std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(io(format!("write {adj} to /proc/self/oom_score_adj"))),
        None => Ok(()),
    }
}

/// What the final execve needs, prepared before the process blocks.
pub struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// With no_new_privs the filter is loaded last, right before execve.
    late_seccomp: Option<Filter>,
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::Refused(format!("{what} holds a NUL byte")))
}

/// Finds `name` as execvp would, in the PATH of `env`.
fn look_path(name: &str, env: &[Vec<u8>]) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(Error::Refused(format!("{name}: permission denied")))
        } else {
            Err(Error::Refused(format!("{name}: no such file or directory")))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(|&b| b == b':') {
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        let p = Path::new(OsStr::from_bytes(dir)).join(name);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(Error::Refused(format!(
        "{name}: executable file not found in $PATH"
    )))
}

/// Asks for the AppArmor profile `name` at the coming execve, through the
/// process's own attr file, checked to be procfs (a container mount could
/// cover /proc with something that swallows the write).
fn apparmor_on_exec(name: &str) -> Result<(), Error> {
    use std::io::Write as _;
    let path = [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/thread-self/attr/exec",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .ok_or_else(|| Error::Refused("no AppArmor attr file under /proc/thread-self".into()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(format!("open {path}")))?;
    let fs = nix::sys::statfs::fstatfs(&f).map_err(io(format!("statfs {path}")))?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(Error::Refused(format!("{path} is not on procfs")));
    }
    f.write_all(format!("exec {name}").as_bytes())
        .map_err(io(format!("write {path}")))
}

/// The credentials and capabilities of the container's process, applied to
/// the calling process, with the seccomp filter in runc's order (without
/// no_new_privs loading it needs CAP_SYS_ADMIN, so it goes before the
/// capabilities are dropped; with it, last, in [`exec`]); returns what
/// execve needs. Errors name their step.
pub fn finalize(
    process: &Process,
    args: &[String],
    env: &[Vec<u8>],
    user: &str,
    groups: GroupsPolicy,
    seccomp: Option<&Filter>,
) -> Result<Exec, (Step, Error)> {
    rlimits(process).map_err(|e| (Step::Rlimits, e))?;
    oom_score_adj(process).map_err(|e| (Step::OomScoreAdj, e))?;
    let id = crate::init::user::resolve(Path::new("/"), user, &process.additional_gids, groups)
        .map_err(|e| (Step::User, e.into()))?;
    if let Some(profile) = &process.apparmor_profile {
        apparmor_on_exec(profile).map_err(|e| (Step::AppArmor, e))?;
    }
    let no_new_privs = process.no_new_privileges;
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| (Step::NoNewPrivs, io("no_new_privs")(e)))?;
    }
    if let Some(f) = seccomp.filter(|_| !no_new_privs) {
        crate::sys::seccomp::load(&f.program, f.flags).map_err(|e| (Step::Seccomp, e.into()))?;
    }
    let sets = process.capabilities.held_only();
    caps::apply_bounding(sets.bounding).map_err(|e| (Step::Capabilities, e.into()))?;
    caps::keep_caps(true).map_err(|e| (Step::Capabilities, e.into()))?;
    stdio_to(id.uid, None);
    let groups: Vec<nix::unistd::Gid> = id
        .additional_gids
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| (Step::User, io("setgroups")(e)))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(id.gid))
        .map_err(|e| (Step::User, io(format!("setgid {}", id.gid))(e)))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(id.uid))
        .map_err(|e| (Step::User, io(format!("setuid {}", id.uid))(e)))?;
    caps::keep_caps(false).map_err(|e| (Step::Capabilities, e.into()))?;
    caps::apply(&sets).map_err(|e| (Step::Capabilities, e.into()))?;

    let mut env: Vec<Vec<u8>> = env.to_vec();
    if !env.iter().any(|e| e.starts_with(b"HOME=")) {
        env.push(format!("HOME={}", id.home).into_bytes());
    }
    let first = args
        .first()
        .ok_or_else(|| (Step::Exec, Error::Refused("no command".into())))?;
    let path = look_path(first, &env).map_err(|e| (Step::Exec, e))?;
    Ok(Exec {
        path: cstring(path.as_os_str().as_bytes(), "the command").map_err(|e| (Step::Exec, e))?,
        args: args
            .iter()
            .map(|a| cstring(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()
            .map_err(|e| (Step::Exec, e))?,
        env: env
            .iter()
            .map(|e| cstring(e, "the environment"))
            .collect::<Result<_, _>>()
            .map_err(|e| (Step::Exec, e))?,
        late_seccomp: seccomp.filter(|_| no_new_privs).cloned(),
    })
}

/// The process's terminal, from the devpts instance of the mount namespace
/// it is in (the container's, never the host's): the master goes to the
/// monitor over the sync socket (line `pty`), the slave becomes stdin,
/// stdout, stderr and the controlling terminal of the (new) session.
pub fn terminal(sync: &mut Sync) -> Result<(), Error> {
    let pty = crate::sys::pty::open(Path::new("/dev/pts/ptmx"))?;
    sync.send_fd(&Message::Pty, &pty.master)?;
    drop(pty.master);
    nix::unistd::dup2_stdin(&pty.slave)
        .and_then(|()| nix::unistd::dup2_stdout(&pty.slave))
        .and_then(|()| nix::unistd::dup2_stderr(&pty.slave))
        .map_err(io("terminal onto stdio"))?;
    drop(pty.slave);
    controlling_tty()
}

/// Gives the process's stdio to its user, as runc's fixStdioPermissions
/// does, so a non-root process can reopen them by path (`/dev/pts/N` of
/// its terminal, `/proc/self/fd/1` of a pipe): only the owner changes (the
/// devpts group stays), and /dev/null and what the user owns already are
/// left alone. Runs before setuid, while the process may still chown.
/// Best effort like runc's: EPERM and EINVAL (an owner or group not mapped
/// in the user namespace) and EROFS leave the fd as it is.
///
/// With `gid` (before a pod's user namespace is joined, from the host):
/// the owner and group both, to the host ids of the namespace's root (as
/// runc's createStdioPipes does), so that root may later give them to the
/// container's user: the monitor's pipes belong to host root, which the
/// namespace does not map.
pub fn stdio_to(uid: u32, gid: Option<u32>) {
    let null = nix::sys::stat::stat("/dev/null").ok().map(|s| s.st_rdev);
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    for fd in [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()] {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        let is_null = st.st_mode & libc::S_IFMT == libc::S_IFCHR && Some(st.st_rdev) == null;
        if (st.st_uid == uid && gid.is_none_or(|g| st.st_gid == g)) || is_null {
            continue;
        }
        let _ = nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(uid)),
            gid.map(nix::unistd::Gid::from_raw),
        );
    }
}

/// Makes stdin the controlling terminal of the (new) session.
fn controlling_tty() -> Result<(), Error> {
    Ok(set_controlling_tty(std::io::stdin().as_fd())?)
}

/// Restores what the monitor changed and a program expects at its start
/// (the signal mask, ignored signals, the umask), then execve. Returns
/// only on failure.
pub fn exec(e: &Exec) -> Error {
    let _ = SigSet::all().thread_unblock();
    default_signals(&[Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE]);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if let Some(f) = &e.late_seccomp
        && let Err(err) = crate::sys::seccomp::load(&f.program, f.flags)
    {
        return err.into();
    }
    let err = nix::unistd::execve(&e.path, &e.args, &e.env).unwrap_err();
    io(e.path.to_string_lossy())(err)
}
