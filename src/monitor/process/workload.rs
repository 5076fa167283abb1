//! The monitor's containers and exec processes: forking them (the setup
//! itself is in src/init: [`crate::init::container`], [`crate::init::exec`]),
//! following their setup over a sync socket, releasing a created init,
//! and copying a container's stdout/stderr into its CRI log file.
//!
//! Log copying never waits for a container: the pipes are non-blocking
//! and read from the monitor's poll loop, at most [`ROUND`] bytes per
//! stream per round, formatted and appended at once; a failed write (a
//! full disk) drops the records instead of stalling the monitor.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::attach::{Attachment, DaemonEnds, Ended, MAX_ATTACHED, Stdin};
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

fn pipes(tty: bool, stdin: bool) -> Result<Pipes, String> {
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

/// The monitor's end of a setup's sync socket: lines, and the fds that
/// ride with them (the terminal master after a `pty` line).
struct SyncReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl SyncReader {
    fn new(sock: UnixStream) -> SyncReader {
        SyncReader {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Reads one line before `deadline`; `Ok(None)` at EOF.
    fn line(&mut self, deadline: Instant) -> Result<Option<String>, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into(),
                ));
            }
            if self.buf.len() > 64 << 10 || self.fds.len() > 4 {
                return Err("oversized message".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            let _ = self.sock.set_read_timeout(Some(left));
            match crate::sys::fds::recv_with_fds(&self.sock, &mut self.buf, &mut self.fds) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err("truncated message".into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err("timed out".into());
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

fn kill_and_reap(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
}

/// What a setup reported: the final process and, with a tty, the
/// terminal's master.
struct Followed {
    pid: i32,
    pty: Option<OwnedFd>,
}

/// Follows a forked setup: `pid N` from stage 1 (which is then reaped),
/// `pty` with the terminal's master (tty only), then `ready` (an init) or
/// EOF (an exec process that exec'ed). On failure every process is killed
/// and reaped.
fn follow(
    sync: &mut SyncReader,
    stage1: Pid,
    limit: Duration,
    expect_ready: bool,
) -> Result<Followed, Failure> {
    let deadline = Instant::now() + limit;
    let mut stage2: Option<i32> = None;
    let mut pty: Option<OwnedFd> = None;
    // Stage 2 runs while stage 1 is still writing its pid: its "ready" may
    // come first, and then the pid line is still to be read.
    let mut ready = false;
    let result = (|| loop {
        let line = match sync.line(deadline) {
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
            Some(Message::Pty) if pty.is_none() => match sync.fds.pop() {
                Some(fd) => pty = Some(fd),
                None => {
                    return Err(failure(Step::Terminal, "no terminal came with `pty`"));
                }
            },
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
    // Fds that came with no line asking for them are dropped.
    sync.fds.clear();
    match result {
        Ok(pid) => Ok(Followed { pid, pty }),
        Err(f) => {
            kill_and_reap(stage1.as_raw());
            if let Some(p) = stage2 {
                kill_and_reap(p);
            }
            Err(f)
        }
    }
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
        let (parent, child) =
            UnixStream::pair().map_err(|e| failure(Step::Create, e.to_string()))?;
        let stage1 = match fork_into(one, nix::sched::CloneFlags::empty()) {
            Ok(Forked::Child) => {
                drop(parent);
                crate::init::container::run(one, &launch, p.child, child.into())
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(e) => return Err(failure(Step::Create, crate::error::chain(&e))),
        };
        drop(child);
        drop(p.child);
        let mut sync = SyncReader::new(parent);
        let followed = follow(&mut sync, stage1, SETUP_LIMIT, true)?;
        let pid = followed.pid;
        let Some(init) = ProcRef::of(pid) else {
            kill_and_reap(pid);
            return Err(failure(Step::Create, "the init vanished"));
        };
        // With a tty, the master is both the output and (if asked) stdin.
        let (out, stdin) = match followed.pty {
            Some(master) => {
                let stdin = match launch.stdin {
                    true => match master.try_clone() {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            kill_and_reap(pid);
                            return Err(failure(Step::Terminal, format!("dup: {e}")));
                        }
                    },
                    false => None,
                };
                (Some(master), stdin)
            }
            None => (p.out, p.stdin),
        };
        if launch.tty && out.is_none() {
            kill_and_reap(pid);
            return Err(failure(Step::Terminal, "the init sent no terminal"));
        }
        for fd in out.iter().chain(&p.err) {
            set_nonblocking(fd);
        }
        Ok(Container {
            launch,
            init,
            sync: Some(sync),
            state: State::Created,
            out,
            err: p.err,
            stdin: Stdin::new(stdin),
            attached: Vec::new(),
            next_attach: 0,
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
        if sync.sock.write_all(b"start\n").is_err() {
            return Err(failure(Step::NotRunning, "the container's init has exited"));
        }
        match sync.line(Instant::now() + START_LIMIT) {
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
        let mut raw = Vec::new();
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
        if !out.is_empty()
            && let Some(log) = &mut self.log
        {
            // Dropped on error: logs are best effort.
            let _ = log.write(&out);
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
            .map_err(|e| failure(Step::Attach, e))?;
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
        let process = &self.launch.process;
        let p = pipes(launch.tty, launch.stdin).map_err(|e| failure(Step::Stdio, e))?;
        let (parent, child) = UnixStream::pair().map_err(|e| failure(Step::Exec, e.to_string()))?;
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
        let followed = follow(&mut SyncReader::new(parent), stage1, SETUP_LIMIT, false)?;
        let pid = followed.pid;
        // The process may already have ended; it is not reaped before the
        // caller registers it (reaping happens in the poll loop).
        let process = ProcRef::of(pid).unwrap_or(ProcRef { pid, start_time: 0 });
        let mut fds = Vec::new();
        fds.extend(p.stdin);
        fds.extend(followed.pty.or(p.out));
        fds.extend(p.err);
        if fds.is_empty() {
            kill_and_reap(pid);
            return Err(failure(Step::Terminal, "the exec process sent no terminal"));
        }
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
