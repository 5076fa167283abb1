//! The monitor's containers and exec processes: forking them (the setup
//! itself is in src/init: [`crate::init::container`], [`crate::init::exec`];
//! the monitor follows it without waiting, [`super::pending`]), making the
//! container or exec process from what the setup reported, releasing a
//! created init, and copying a container's stdout/stderr into its CRI log
//! file.
//!
//! Log copying never waits for a container: the pipes are non-blocking
//! and read from the monitor's poll loop, at most [`ROUND`] bytes per
//! stream per round, formatted and handed to the pod's log writer
//! ([`super::logwriter`]), which never makes the monitor wait either.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;

use super::attach::{Attachment, DaemonEnds, Ended, MAX_ATTACHED, Stdin};
use super::logwriter::LogWriter;
use super::pending::{Followed, SyncReader};
use crate::init::setup::Stdio;
use crate::monitor::process::log::{Formatter, LogFile, Stream};
use crate::monitor::protocol::Exit;
use crate::monitor::protocol::{ContainerLaunch, ExecLaunch};
use crate::monitor::sync::Step;
use crate::sys::process::{Forked, ProcRef, SingleThreaded, fork_into};

/// Most bytes read from one stream in one poll round.
pub const ROUND: usize = 256 << 10;
/// Most bytes one read of a container's output takes: the size of the
/// monitor's read buffer ([`Container::copy`]).
pub const READ: usize = 64 << 10;
/// How long a create or an exec may spend in its setup.
pub const SETUP_LIMIT: Duration = Duration::from_secs(55);
/// How long execve may take once released.
pub const START_LIMIT: Duration = Duration::from_secs(10);

/// A failed request: the step and why.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub message: String,
}

pub fn failure(step: Step, message: impl Into<String>) -> Failure {
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
    sync: Option<SyncReader>,
    pub state: State,
    /// stdout (or the pty master) and stderr, non-blocking.
    pub out: Option<OwnedFd>,
    pub err: Option<OwnedFd>,
    /// The container's stdin (pipe or pty master), when it has one.
    pub stdin: Stdin,
    /// Clients attached to its stdio.
    pub attached: Vec<Attachment>,
    next_attach: u64,
    fmt: Formatter,
    log: Option<LogFile>,
    /// The container's slot at the log writer.
    pub slot: u64,
    /// Log records dropped (the writer stuck or gone, a write that failed).
    pub dropped: u64,
    /// The exit, reaped but not yet told (exit file, waiters): it waits
    /// for the writer's marker `token` (the last records written) until
    /// `deadline`.
    pub unpublished: Option<Unpublished>,
    /// Connections waiting for the exit.
    pub waiters: Vec<u64>,
}

/// A reaped exit held back until its container's last records are written.
#[derive(Debug, Clone, Copy)]
pub struct Unpublished {
    pub token: u64,
    pub deadline: std::time::Instant,
}

pub struct ExecProc {
    pub container: String,
    pub process: ProcRef,
    pub exit: Option<Exit>,
    pub waiters: Vec<u64>,
}

/// A forked setup: stage 1's pid and the monitor's end of its sync socket.
pub struct Setup {
    pub stage1: i32,
    pub sync: SyncReader,
}

/// A container's init being set up: what becomes the [`Container`] once
/// it reports ready.
pub struct Creating {
    pub launch: ContainerLaunch,
    log: Option<LogFile>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
}

impl Creating {
    /// The container, from what its setup reported. On error the caller
    /// kills the init (still its child: never reaped before this).
    pub fn finish(
        self,
        followed: Followed,
        sync: SyncReader,
        slot: u64,
    ) -> Result<Container, Failure> {
        let pid = followed.pid;
        let init = ProcRef::of(pid).ok_or_else(|| failure(Step::Create, "the init vanished"))?;
        let launch = self.launch;
        // With a tty, the master is both the output and (if asked) stdin.
        let (out, stdin) = match followed.pty {
            Some(master) => {
                let stdin = match launch.stdin {
                    true => Some(
                        master
                            .try_clone()
                            .map_err(|e| failure(Step::Terminal, format!("dup: {e}")))?,
                    ),
                    false => None,
                };
                (Some(master), stdin)
            }
            None => (self.out, self.stdin),
        };
        if launch.tty && out.is_none() {
            return Err(failure(Step::Terminal, "the init sent no terminal"));
        }
        for fd in out.iter().chain(&self.err) {
            set_nonblocking(fd);
        }
        Ok(Container {
            launch,
            init,
            sync: Some(sync),
            state: State::Created,
            out,
            err: self.err,
            stdin: Stdin::new(stdin),
            attached: Vec::new(),
            next_attach: 0,
            fmt: Formatter::default(),
            log: self.log,
            slot,
            dropped: 0,
            unpublished: None,
            waiters: Vec::new(),
        })
    }
}

/// An exec process being set up: its stdio, the daemon's once it runs.
pub struct Execing {
    container: String,
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
}

impl Execing {
    /// The exec process (which may already have ended: `exit`) and the
    /// daemon's ends of its stdio. On error the caller kills the process.
    pub fn finish(
        self,
        followed: Followed,
        exit: Option<Exit>,
    ) -> Result<(ExecProc, Vec<OwnedFd>), Failure> {
        let pid = followed.pid;
        // An exit already collected means the pid may be another's now.
        let gone = ProcRef { pid, start_time: 0 };
        let process = match exit {
            Some(_) => gone,
            None => ProcRef::of(pid).unwrap_or(gone),
        };
        let mut fds = Vec::new();
        fds.extend(self.stdin);
        fds.extend(followed.pty.or(self.out));
        fds.extend(self.err);
        if fds.is_empty() {
            return Err(failure(Step::Terminal, "the exec process sent no terminal"));
        }
        Ok((
            ExecProc {
                container: self.container,
                process,
                exit,
                waiters: Vec::new(),
            },
            fds,
        ))
    }
}

/// Why a process's stdio could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("make a pipe for the stdio")]
    Pipe(#[source] nix::Error),
    #[error("open /dev/null")]
    DevNull(#[source] std::io::Error),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

fn dev_null() -> Result<OwnedFd, StdioError> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(StdioError::DevNull)
}

fn set_nonblocking(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
}

/// The ends of a process's stdio: the child's, and the monitor's (stdin
/// writer if asked, stdout, stderr). With a tty the child gets /dev/null
/// placeholders and opens its terminal itself from the container's devpts
/// ([`crate::init::setup::terminal`]); the master arrives over the sync
/// socket.
struct Pipes {
    child: Stdio,
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
}

fn pipes(tty: bool, stdin: bool) -> Result<Pipes, StdioError> {
    if tty {
        return Ok(Pipes {
            child: Stdio {
                stdin: dev_null()?,
                stdout: dev_null()?,
                stderr: dev_null()?,
                tty: true,
            },
            stdin: None,
            out: None,
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
        out: Some(out_r),
        err: Some(err_r),
    })
}

/// Forks a stage 1 that joins the cgroup files `join` (v1 `tasks`, v2
/// `cgroup.procs`: [`crate::cgroups::Cgroups::join_files`]): born in the
/// cgroup v2 directory when there is one and the kernel can clone into it
/// (CLONE_INTO_CGROUP), else a plain fork. The files it is left to join
/// itself come back with it.
fn fork_joining(
    one: SingleThreaded,
    join: &[PathBuf],
) -> (crate::sys::Result<Forked>, Vec<PathBuf>) {
    let none = nix::sched::CloneFlags::empty();
    let v2 = join
        .iter()
        .position(|f| f.file_name().is_some_and(|n| n == "cgroup.procs"));
    let fd = v2.and_then(|i| join[i].parent()).and_then(|d| {
        rustix::fs::open(
            d,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
    });
    if let (Some(i), Some(fd)) = (v2, fd)
        && let Ok(forked) = crate::sys::process::fork_into_cgroup(one, none, fd.as_fd())
    {
        let mut rest = join.to_vec();
        rest.remove(i);
        return (Ok(forked), rest);
    }
    (fork_into(one, none), join.to_vec())
}

impl Container {
    /// Forks the container's init; the monitor follows its setup on the
    /// returned sync socket ([`super::pending`]) and, once it reports
    /// ready, makes the container with [`Creating::finish`]. The caller
    /// registers `stage1` as a child.
    pub fn fork(
        one: SingleThreaded,
        launch: ContainerLaunch,
    ) -> Result<(Creating, Setup), Failure> {
        let log = match launch.log_file() {
            Some(p) => Some(
                LogFile::open(&p).map_err(|e| failure(Step::OpenLog, crate::error::chain(&e)))?,
            ),
            None => None,
        };
        let p = pipes(launch.tty, launch.stdin)
            .map_err(|e| failure(Step::Stdio, crate::error::chain(&e)))?;
        let (parent, child) = UnixStream::pair()
            .map_err(|e| failure(Step::Create, format!("sync socketpair: {e}")))?;
        let (forked, join) = fork_joining(one, &launch.cgroup_procs);
        let stage1 = match forked {
            Ok(Forked::Child) => {
                drop(parent);
                crate::init::container::run(one, &launch, &join, p.child, child.into())
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(e) => return Err(failure(Step::Create, crate::error::chain(&e))),
        };
        drop(child);
        drop(p.child);
        Ok((
            Creating {
                launch,
                log,
                out: p.out,
                err: p.err,
                stdin: p.stdin,
            },
            Setup {
                stage1: stage1.as_raw(),
                sync: SyncReader::new(parent),
            },
        ))
    }

    /// Releases the init to execve: writes `start` and hands back the
    /// sync socket, whose EOF (or failure line) the monitor waits for
    /// ([`super::pending::released`]).
    pub fn release(&mut self) -> Result<SyncReader, Failure> {
        let already = || failure(Step::NotCreated, "the container was already started");
        if self.state != State::Created {
            return Err(already());
        }
        let sync = self.sync.take().ok_or_else(already)?;
        if sync.send_start().is_err() {
            return Err(failure(Step::NotRunning, "the container's init has exited"));
        }
        Ok(sync)
    }

    /// The released init exec'ed its entrypoint (unless it already ended).
    pub fn started(&mut self) {
        if self.state == State::Created {
            self.state = State::Running;
        }
    }

    /// Copies what the container wrote on `which` (at most [`ROUND`] bytes)
    /// into its log, reading through `buf` (the monitor's one read
    /// buffer, mapped pages: resident only as far as reads reached, where
    /// a heap buffer made per call stayed in the heap whole). `false` once
    /// the stream has ended.
    pub fn copy(&mut self, which: Stream, logs: &mut LogWriter, buf: &mut [u8]) -> bool {
        let fd = match which {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        let Some(fd) = fd else { return false };
        let mut out = Vec::new();
        let mut raw = Vec::new();
        let mut total = 0;
        let mut open = true;
        while total < ROUND {
            match nix::unistd::read(fd.as_fd(), &mut *buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.fmt.feed(which, &buf[..n], SystemTime::now(), &mut out);
                    if !self.attached.is_empty() {
                        raw.extend_from_slice(&buf[..n]);
                    }
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
        // To the log writer; what it has no room for is dropped, counted.
        if !out.is_empty() && self.log.as_ref().is_some_and(LogFile::is_open) {
            let dropped = logs.write(self.slot, &out);
            self.count_dropped(dropped);
        }
        self.fan_out(which, &raw);
        open
    }

    /// Copies output to every attached client; one that cannot take it
    /// now is dropped (never waited for).
    fn fan_out(&mut self, which: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.attached.len() {
            if self.attached[i].offer(which, data) {
                i += 1;
            } else {
                self.attached.swap_remove(i).finish(Ended::TooSlow);
            }
        }
    }

    /// Attaches a client: pipes for its output and (when the container has
    /// a stdin and the client asked) its input.
    pub fn attach(&mut self, stdin: bool) -> Result<DaemonEnds, Failure> {
        if self.state != State::Running {
            return Err(failure(Step::NotRunning, "the container is not running"));
        }
        if self.attached.len() >= MAX_ATTACHED {
            return Err(failure(
                Step::AttachLimit,
                format!("{MAX_ATTACHED} clients are attached to this container already"),
            ));
        }
        self.next_attach += 1;
        let stdin = stdin && self.stdin.is_open();
        let (a, ends) = Attachment::new(self.next_attach, self.launch.tty, stdin)
            .map_err(|e| failure(Step::Attach, crate::error::chain(&e)))?;
        self.attached.push(a);
        Ok(ends)
    }

    /// Ends attachment `id` (the daemon detached): with stdin_once, a
    /// client that had stdin closes the container's.
    pub fn detach(&mut self, id: u64) {
        if let Some(i) = self.attached.iter().position(|a| a.id == id) {
            let a = self.attached.swap_remove(i);
            if a.input.is_some() {
                self.input_ended();
            }
        }
    }

    /// Moves what attached client `id` typed towards the container.
    pub fn read_input(&mut self, id: u64) {
        let Some(a) = self.attached.iter_mut().find(|a| a.id == id) else {
            return;
        };
        let Some(input) = &a.input else { return };
        if !self.stdin.take_from(input) {
            a.input = None;
            self.input_ended();
        }
    }

    /// A client's stdin ended (EOF or detach).
    fn input_ended(&mut self) {
        if self.launch.stdin_once {
            self.stdin.end_input();
        }
    }

    /// Ends every attachment, telling each why.
    pub fn end_attachments(&mut self, why: Ended) {
        for a in self.attached.drain(..) {
            a.finish(why);
        }
    }

    /// Sets the terminal size of a tty container.
    pub fn resize(&self, width: u16, height: u16) -> Result<(), Failure> {
        match (&self.out, self.launch.tty) {
            (Some(master), true) => crate::sys::pty::resize(master, width, height)
                .map_err(|e| failure(Step::Resize, crate::error::chain(&e))),
            _ => Err(failure(Step::Resize, "the container has no terminal")),
        }
    }

    /// Everything still buffered in the pipes, before the exit is told.
    pub fn drain(&mut self, logs: &mut LogWriter, buf: &mut [u8]) {
        while self.out.is_some() && self.copy(Stream::Stdout, logs, buf) {
            if !self.readable(Stream::Stdout) {
                break;
            }
        }
        while self.err.is_some() && self.copy(Stream::Stderr, logs, buf) {
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

    /// Reopens the log file after kubelet's rotation and hands the new
    /// file to the writer (records queued before go to the old one).
    pub fn reopen_log(&mut self, logs: &mut LogWriter) -> Result<(), Failure> {
        if matches!(self.state, State::Exited(_)) {
            return Err(failure(Step::NotRunning, "the container is not running"));
        }
        let Some(log) = &mut self.log else {
            return Err(failure(Step::ReopenLog, "the container has no log file"));
        };
        let reopened = log.reopen();
        // Closed on failure: its records are dropped and counted.
        match log.file() {
            Some(file) => logs.open(self.slot, file),
            None => logs.close(self.slot),
        }
        reopened.map_err(|e| failure(Step::ReopenLog, crate::error::chain(&e)))
    }

    /// Hands the log file (if any) to the writer as this container's slot.
    pub fn open_log(&self, logs: &mut LogWriter) {
        if let Some(file) = self.log.as_ref().and_then(LogFile::file) {
            logs.open(self.slot, file);
        }
    }

    /// Whether the output goes to a log file (then the exit waits for the
    /// writer to have written it).
    pub fn has_log(&self) -> bool {
        self.log.as_ref().is_some_and(LogFile::is_open)
    }

    /// Counts records dropped on their way to the log.
    pub fn count_dropped(&mut self, n: u64) {
        if n > 0 && self.dropped == 0 {
            eprintln!("container {}: dropping log records", self.launch.id);
        }
        self.dropped += n;
    }

    /// Forks `launch` inside this (running) container; the monitor follows
    /// its setup and, at its EOF, makes the [`ExecProc`] with
    /// [`Execing::finish`]. The caller registers `stage1` as a child.
    pub fn fork_exec(
        &self,
        one: SingleThreaded,
        launch: &ExecLaunch,
    ) -> Result<(Execing, Setup), Failure> {
        if self.state != State::Running {
            return Err(failure(Step::NotRunning, "the container is not running"));
        }
        let process = &self.launch.process;
        let p = pipes(launch.tty, launch.stdin)
            .map_err(|e| failure(Step::Stdio, crate::error::chain(&e)))?;
        let (parent, child) =
            UnixStream::pair().map_err(|e| failure(Step::Exec, format!("sync socketpair: {e}")))?;
        let files = match launch.cgroup_procs.is_empty() {
            true => &self.launch.cgroup_procs,
            false => &launch.cgroup_procs,
        };
        let (forked, join) = fork_joining(one, files);
        let stage1 = match forked {
            Ok(Forked::Child) => {
                drop(parent);
                let exec = crate::init::exec::Exec {
                    init: self.init,
                    process,
                    args: &launch.args,
                    env: &self.launch.env,
                    user: &self.launch.user,
                    groups: self.launch.groups,
                    seccomp: self.launch.seccomp.as_ref(),
                    cgroup_join: &join,
                    userns_root: self.launch.userns_root,
                };
                crate::init::exec::run(one, &exec, p.child, child.into())
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(e) => return Err(failure(Step::Exec, crate::error::chain(&e))),
        };
        drop(child);
        drop(p.child);
        Ok((
            Execing {
                container: self.launch.id.clone(),
                stdin: p.stdin,
                out: p.out,
                err: p.err,
            },
            Setup {
                stage1: stage1.as_raw(),
                sync: SyncReader::new(parent),
            },
        ))
    }

    /// Raw fds of the open output streams, for poll.
    pub fn outputs(&self) -> impl Iterator<Item = (Stream, std::os::fd::BorrowedFd<'_>)> {
        let out = self.out.as_ref().map(|f| (Stream::Stdout, f.as_fd()));
        let err = self.err.as_ref().map(|f| (Stream::Stderr, f.as_fd()));
        out.into_iter().chain(err)
    }
}
