//! The monitor's containers and exec processes: forking them (the setup
//! itself is in src/init: [`crate::init::container`], [`crate::init::exec`]),
//! following their setup over a sync socket, releasing a created init,
//! and copying a container's stdout/stderr into its CRI log file.
//!
//! Log copying never waits for a container: the pipes are non-blocking
//! and read from the monitor's poll loop, at most [`ROUND`] bytes per
//! stream per round, formatted and appended at once; a failed write (a
//! full disk) drops the records instead of stalling the monitor.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::init::setup::Stdio;
use crate::monitor::process::log::{Formatter, LogFile, Stream};
use crate::monitor::protocol::Exit;
use crate::monitor::protocol::{ContainerLaunch, ExecLaunch};
use crate::monitor::sync::{Message, Step};
use crate::sys::process::{Forked, ProcRef, SingleThreaded, fork_into};

/// Most bytes read from one stream in one poll round.
pub const ROUND: usize = 256 << 10;
/// How long a create may spend in the init's setup.
const SETUP_LIMIT: Duration = Duration::from_secs(55);
/// How long execve may take once released.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A failed request: the step and why.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub message: String,
}

fn failure(step: Step, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Blocked before execve.
    Created,
    Running,
    Exited(Exit),
}

pub struct Container {
    pub launch: ContainerLaunch,
    pub init: ProcRef,
    sync: Option<UnixStream>,
    pub state: State,
    /// stdout (or the pty master) and stderr, non-blocking.
    pub out: Option<OwnedFd>,
    pub err: Option<OwnedFd>,
    fmt: Formatter,
    log: Option<LogFile>,
    /// Connections waiting for the exit.
    pub waiters: Vec<u64>,
}

pub struct ExecProc {
    pub container: String,
    pub process: ProcRef,
    pub exit: Option<Exit>,
    pub waiters: Vec<u64>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn dev_null() -> Result<OwnedFd, String> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| format!("open /dev/null: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
}

fn set_cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// The ends of a process's stdio: the child's, and the monitor's (stdin
/// writer if asked, stdout or pty master, stderr unless a tty).
struct Pipes {
    child: Stdio,
    stdin: Option<OwnedFd>,
    out: OwnedFd,
    err: Option<OwnedFd>,
}

fn pipes(tty: bool, stdin: bool) -> Result<Pipes, String> {
    if tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        set_cloexec(&pty.master);
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        return Ok(Pipes {
            child: Stdio {
                stdin: dup(&slave)?,
                stdout: dup(&slave)?,
                stderr: slave,
                tty: true,
            },
            stdin: None,
            out: pty.master,
            err: None,
        });
    }
    let (in_r, in_w) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Pipes {
        child: Stdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
            tty: false,
        },
        stdin: in_w,
        out: out_r,
        err: Some(err_r),
    })
}

/// Reads one line from the sync socket before `deadline`; `Ok(None)` at EOF.
fn read_line(sock: &mut UnixStream, deadline: Instant) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let _ = sock.set_read_timeout(Some(left));
        match sock.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => return Err("truncated message".into()),
            Ok(_) if byte[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into())),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err("timed out".into());
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn kill_and_reap(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
}

/// Follows a forked setup: `pid N` from stage 1 (which is then reaped),
/// then what `until` accepts. On failure every process is killed and
/// reaped.
fn follow(
    sock: &mut UnixStream,
    stage1: Pid,
    limit: Duration,
    expect_ready: bool,
) -> Result<i32, Failure> {
    let deadline = Instant::now() + limit;
    let mut stage2: Option<i32> = None;
    // Stage 2 runs while stage 1 is still writing its pid: its "ready" may
    // come first, and then the pid line is still to be read.
    let mut ready = false;
    let result = (|| loop {
        let line = match read_line(sock, deadline) {
            Ok(Some(line)) => line,
            // EOF: stage 2 exec'ed (exec processes) or everything ended.
            Ok(None) => match stage2 {
                Some(pid) if !expect_ready => return Ok(pid),
                _ => return Err(failure(Step::Create, "the process ended during setup")),
            },
            Err(e) => return Err(failure(Step::Create, e)),
        };
        match Message::decode(&line) {
            Some(Message::Pid(pid)) => {
                stage2 = Some(pid);
                let _ = nix::sys::wait::waitpid(stage1, None);
                if ready {
                    return Ok(pid);
                }
            }
            Some(Message::Failed { step, message }) => return Err(Failure { step, message }),
            Some(Message::Ready) if expect_ready => match stage2 {
                Some(pid) => return Ok(pid),
                None => ready = true,
            },
            _ => {
                return Err(failure(
                    Step::Create,
                    format!("unexpected message {line:?}"),
                ));
            }
        }
    })();
    if result.is_err() {
        kill_and_reap(stage1.as_raw());
        if let Some(p) = stage2 {
            kill_and_reap(p);
        }
    }
    result
}

impl Container {
    /// Forks the container's init and follows its setup until it blocks
    /// before execve. The caller registers `init.pid` as a child.
    pub fn create(one: SingleThreaded, launch: ContainerLaunch) -> Result<Container, Failure> {
        let log = match launch.log_file() {
            Some(p) => Some(LogFile::open(&p).map_err(|e| failure(Step::OpenLog, e.to_string()))?),
            None => None,
        };
        let p = pipes(launch.tty, launch.stdin).map_err(|e| failure(Step::Stdio, e))?;
        let (mut parent, child) =
            UnixStream::pair().map_err(|e| failure(Step::Create, e.to_string()))?;
        let stage1 = match fork_into(one, nix::sched::CloneFlags::empty()) {
            Ok(Forked::Child) => {
                drop(parent);
                let init = crate::init::container::Init {
                    spec: &launch.spec,
                    env: &launch.env,
                    user: &launch.user,
                    groups: launch.groups,
                    seccomp: launch.seccomp.as_ref(),
                    overlay: &launch.overlay,
                    volumes: &launch.volumes,
                    cgroup_procs: &launch.cgroup_procs,
                };
                crate::init::container::run(one, &init, p.child, child.into())
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(e) => return Err(failure(Step::Create, crate::error::chain(&e))),
        };
        drop(child);
        drop(p.child);
        let pid = follow(&mut parent, stage1, SETUP_LIMIT, true)?;
        let Some(init) = ProcRef::of(pid) else {
            kill_and_reap(pid);
            return Err(failure(Step::Create, "the init vanished"));
        };
        set_nonblocking(&p.out);
        if let Some(e) = &p.err {
            set_nonblocking(e);
        }
        Ok(Container {
            launch,
            init,
            sync: Some(parent),
            state: State::Created,
            out: Some(p.out),
            err: p.err,
            fmt: Formatter::default(),
            log,
            waiters: Vec::new(),
        })
    }

    /// Releases the init to execve; an exec failure is reported (the init
    /// then exits 127 and is reaped as usual).
    pub fn start(&mut self) -> Result<(), Failure> {
        if self.state != State::Created {
            return Err(failure(
                Step::NotCreated,
                "the container was already started",
            ));
        }
        let Some(mut sync) = self.sync.take() else {
            return Err(failure(
                Step::NotCreated,
                "the container was already started",
            ));
        };
        use std::io::Write;
        if sync.write_all(b"start\n").is_err() {
            return Err(failure(Step::NotRunning, "the container's init has exited"));
        }
        match read_line(&mut sync, Instant::now() + START_LIMIT) {
            Ok(None) => {
                self.state = State::Running;
                Ok(())
            }
            Ok(Some(line)) => Err(match Message::decode(&line) {
                Some(Message::Failed { step, message }) => Failure { step, message },
                _ => failure(Step::Exec, line),
            }),
            Err(e) => Err(failure(Step::Exec, e)),
        }
    }

    /// Copies what the container wrote on `which` (at most [`ROUND`] bytes)
    /// into its log. `false` once the stream has ended.
    pub fn copy(&mut self, which: Stream, limit: usize) -> bool {
        let fd = match which {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        let Some(fd) = fd else { return false };
        let mut buf = vec![0u8; 64 << 10];
        let mut out = Vec::new();
        let mut total = 0;
        let mut open = true;
        while total < limit {
            match nix::unistd::read(fd.as_fd(), &mut buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.fmt.feed(which, &buf[..n], SystemTime::now(), &mut out);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                // EIO: a pty whose last slave closed.
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        if !open {
            self.fmt.finish(which, SystemTime::now(), &mut out);
            match which {
                Stream::Stdout => self.out = None,
                Stream::Stderr => self.err = None,
            }
        }
        if !out.is_empty()
            && let Some(log) = &mut self.log
        {
            // Dropped on error: logs are best effort.
            let _ = log.write(&out);
        }
        open
    }

    /// Everything still buffered in the pipes, before the exit is told.
    pub fn drain(&mut self) {
        while self.out.is_some() && self.copy(Stream::Stdout, ROUND) {
            if !self.readable(Stream::Stdout) {
                break;
            }
        }
        while self.err.is_some() && self.copy(Stream::Stderr, ROUND) {
            if !self.readable(Stream::Stderr) {
                break;
            }
        }
    }

    fn readable(&self, which: Stream) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let fd = match which {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        let Some(fd) = fd else { return false };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    pub fn reopen_log(&mut self) -> Result<(), Failure> {
        if matches!(self.state, State::Exited(_)) {
            return Err(failure(Step::NotRunning, "the container is not running"));
        }
        match &mut self.log {
            Some(log) => log
                .reopen()
                .map_err(|e| failure(Step::ReopenLog, e.to_string())),
            None => Err(failure(Step::ReopenLog, "the container has no log file")),
        }
    }

    /// Starts `launch` inside this (running) container; returns the
    /// process and the daemon's ends of its stdio.
    pub fn exec(
        &self,
        one: SingleThreaded,
        launch: &ExecLaunch,
    ) -> Result<(ExecProc, Vec<OwnedFd>), Failure> {
        if self.state != State::Running {
            return Err(failure(Step::NotRunning, "the container is not running"));
        }
        let process = self
            .launch
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| failure(Step::Exec, "the container has no process"))?;
        let p = pipes(launch.tty, launch.stdin).map_err(|e| failure(Step::Stdio, e))?;
        let (mut parent, child) =
            UnixStream::pair().map_err(|e| failure(Step::Exec, e.to_string()))?;
        let stage1 = match fork_into(one, nix::sched::CloneFlags::empty()) {
            Ok(Forked::Child) => {
                drop(parent);
                let exec = crate::init::exec::Exec {
                    init_pid: self.init.pid,
                    process,
                    args: &launch.args,
                    env: &self.launch.env,
                    user: &self.launch.user,
                    groups: self.launch.groups,
                    seccomp: self.launch.seccomp.as_ref(),
                    cgroup_procs: if launch.cgroup_procs.is_empty() {
                        &self.launch.cgroup_procs
                    } else {
                        &launch.cgroup_procs
                    },
                };
                crate::init::exec::run(one, &exec, p.child, child.into())
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(e) => return Err(failure(Step::Exec, crate::error::chain(&e))),
        };
        drop(child);
        drop(p.child);
        let pid = follow(&mut parent, stage1, SETUP_LIMIT, false)?;
        // The process may already have ended; it is not reaped before the
        // caller registers it (reaping happens in the poll loop).
        let process = ProcRef::of(pid).unwrap_or(ProcRef { pid, start_time: 0 });
        let mut fds = Vec::new();
        fds.extend(p.stdin);
        fds.push(p.out);
        fds.extend(p.err);
        Ok((
            ExecProc {
                container: self.launch.id.clone(),
                process,
                exit: None,
                waiters: Vec::new(),
            },
            fds,
        ))
    }

    /// Raw fds of the open output streams, for poll.
    pub fn outputs(&self) -> impl Iterator<Item = (Stream, std::os::fd::BorrowedFd<'_>)> {
        let out = self.out.as_ref().map(|f| (Stream::Stdout, f.as_fd()));
        let err = self.err.as_ref().map(|f| (Stream::Stderr, f.as_fd()));
        out.into_iter().chain(err)
    }
}
