//! The monitor process: startup (session, signals, subreaper), the pod's
//! setup, then one poll(2) loop over the socket, its connections, a
//! signalfd for SIGCHLD, the containers' output and stdin, and the sync
//! socket of every setup in progress ([`follow`]) and the pod's log writer
//! ([`logs`]). Single-threaded by design: no tokio, no threads; nothing in
//! the loop waits for a child or a disk.

mod ending;
mod follow;
mod logs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::logwriter::LogWriter;
use super::pending::Work;
use super::sandbox;
use super::workload::{Container, ExecProc, Failure, READ, State};
use crate::init::error::StepError;
use crate::monitor::process::log::Stream;
use crate::monitor::protocol::{self as proto, AttachEnd, Exit, Reply, Request, SetupReply};
use crate::monitor::sync::{Step, Subject};
use crate::monitor::{INIT, PodDir, Spec};
use crate::sys::pages::ZeroPages;
use crate::sys::process::{self, ProcRef, SingleThreaded};

/// `crius monitor <pod dir>`: never returns while the pod lives.
#[allow(unsafe_code)]
pub fn main(dir: &Path) -> ExitCode {
    // SAFETY: the monitor is a program of its own (crius-monitor) whose
    // main calls this first; it never starts a thread.
    let one = unsafe { SingleThreaded::new() };
    let Some(pod_id) = dir.file_name().and_then(|n| n.to_str()) else {
        eprintln!("crius monitor: bad pod directory {}", dir.display());
        return ExitCode::FAILURE;
    };
    let state = dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    let pod = PodDir::new(state, pod_id);
    match run(one, &pod) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius monitor {pod_id}: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Why the monitor could not serve its pod.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Sys(#[from] crate::sys::Error),
    #[error("parse the pod spec {}", path.display())]
    Spec {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The pod's setup failed (the daemon was told).
    #[error("{}: {}", .0.step, .0.message())]
    Setup(StepError),
}

fn run(one: SingleThreaded, pod: &PodDir) -> Result<(), Error> {
    let (mut m, listener, sigfd) = start(one, pod)?;
    m.serve(&listener, &sigfd);
    let _ = std::fs::remove_file(pod.socket());
    Ok(())
}

/// The monitor's start and the pod's setup, up to the `Ready` report. Not
/// inlined into [`run`]: its frame (the spec, the setup's state) is gone
/// once the loop runs, so the loop's idle release drops those stack pages.
#[inline(never)]
fn start(one: SingleThreaded, pod: &PodDir) -> Result<(Monitor, UnixListener, SignalFd), Error> {
    use crate::sys::{io, sys};
    // 1. Detach from the daemon: own session, immune to the terminal's
    //    SIGINT/SIGHUP, the reaper of every orphan below us.
    let _ = nix::unistd::setsid();
    process::ignore_signals(&[Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE])?;
    process::set_child_subreaper()?;
    process::set_name("crius-monitor");
    let me = ProcRef::current();
    write_atomic(
        &pod.pid_file(),
        &serde_json::to_vec(&me).expect("serializable"),
    )
    .map_err(io("write", pod.pid_file()))?;

    // 2. SIGCHLD through a signalfd, blocked before any child exists.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(sys("block SIGCHLD"))?;
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    std::fs::create_dir_all(pod.exits()).map_err(io("create", pod.exits()))?;
    let read_buf = ZeroPages::new(READ)?;

    // 3. The pod.
    let text = std::fs::read(pod.spec()).map_err(io("read", pod.spec()))?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|source| Error::Spec {
        path: pod.spec(),
        source,
    })?;
    let socket = pod.socket();
    let _ = std::fs::remove_file(&socket);
    let bound = crate::monitor::socket_path(pod).and_then(|(dir, short)| {
        // Only root (the daemon) may speak to the monitor: 0600 on the
        // socket, and every peer's credentials checked at accept.
        let l = UnixListener::bind(&short).and_then(|l| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))?;
            Ok(l)
        });
        drop(dir);
        l
    });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            report(&SetupReply::Failed {
                step: Step::StartMonitor,
                message: format!("listen on {}: {e}", socket.display()),
            });
            return Err(io("listen on", socket)(e).into());
        }
    };
    let sandbox = match sandbox::setup(one, pod, &spec) {
        Ok(s) => s,
        Err(e) => {
            report(&SetupReply::Failed {
                step: e.step.clone(),
                message: e.message(),
            });
            let _ = std::fs::remove_file(&socket);
            return Err(Error::Setup(e));
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(io("make non-blocking", &socket))?;
    let mut m = Monitor {
        one,
        pod: pod.clone(),
        me,
        children: HashMap::new(),
        init: sandbox.init,
        init_exit: None,
        conns: Vec::new(),
        next_conn: 0,
        containers: HashMap::new(),
        execs: HashMap::new(),
        outbox: Vec::new(),
        fds_out: Vec::new(),
        setups: follow::Setups::default(),
        logs: LogWriter::new(one),
        read_buf,
        next_slot: 0,
        endings: Default::default(),
        shutting_down: false,
        // The setup's pages go back once the loop is first idle.
        release_at: Some(Instant::now() + IDLE_RELEASE),
    };
    if let Some(init) = sandbox.init {
        m.children.insert(init.pid, Child::Init);
    }
    report(&SetupReply::Ready {
        monitor: me,
        init: sandbox.init,
    });
    Ok((m, listener, sigfd))
}

/// Prints the setup reply on stdout for the daemon, then points stdout at
/// /dev/null so a gone daemon can never block or kill us with SIGPIPE.
fn report(reply: &SetupReply) {
    let mut line = serde_json::to_vec(reply).expect("serializable");
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line);
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}

struct Conn {
    id: u64,
    stream: UnixStream,
    buf: Vec<u8>,
    greeted: bool,
    /// A setup's reply is due: later requests wait (replies stay in order).
    busy: bool,
}

/// What a child of ours is.
#[derive(Debug, Clone, PartialEq)]
enum Child {
    /// The pod init (exit file `init`).
    Init,
    /// A container's init (exit file `<container id>`).
    Container(String),
    /// An exec process (exit kept in memory until waited for).
    Exec(String),
    /// A stage of a setup in progress (by its key in [`follow::Setups`]).
    Setup(u64),
}

/// What one poll slot watches.
#[derive(Clone)]
enum Slot {
    Signals,
    Listener,
    Conn(u64),
    Output(String, Stream),
    /// An attached client's end pipe (POLLERR: the daemon detached).
    Detach(String, u64),
    /// An attached client's stdin.
    Input(String, u64),
    /// A container's stdin can take what is buffered for it.
    Stdin(String),
    /// A setup's sync socket.
    Setup(u64),
    /// A released init's sync socket.
    Start(String),
    /// The log writer's socket.
    Logs,
}

struct Monitor {
    one: SingleThreaded,
    pod: PodDir,
    me: ProcRef,
    /// Children we started, by pid.
    children: HashMap<i32, Child>,
    init: Option<ProcRef>,
    init_exit: Option<Exit>,
    conns: Vec<Conn>,
    next_conn: u64,
    containers: HashMap<String, Container>,
    execs: HashMap<String, ExecProc>,
    /// Deferred replies (answers to waits and setups) with their fds, by
    /// connection id.
    outbox: Vec<(u64, Reply, Vec<std::os::fd::OwnedFd>)>,
    /// Fds to attach to the reply being sent.
    fds_out: Vec<std::os::fd::OwnedFd>,
    /// Setups in progress, failed ones awaiting their reap, released inits.
    setups: follow::Setups,
    /// The pod's log writer.
    logs: LogWriter,
    /// What the containers' output is read through ([`Container::copy`]).
    read_buf: ZeroPages,
    /// The last log writer slot given to a container.
    next_slot: u64,
    /// Removals and a shutdown whose kills await their reap.
    endings: ending::Endings,
    shutting_down: bool,
    /// When the loop, quiet since the last event, releases what its work
    /// left resident ([`Monitor::release_idle`]); `None`: released.
    release_at: Option<Instant>,
}

/// How long the loop waits without an event before it releases the pages
/// its last work left behind.
const IDLE_RELEASE: Duration = Duration::from_millis(500);

fn failed(f: Failure) -> Reply {
    Reply::Failed {
        step: f.step,
        message: f.message,
    }
}

fn unknown(what: Subject, id: &str) -> Reply {
    let name = match what {
        Subject::Container => "container",
        Subject::Exec => "exec",
    };
    Reply::Failed {
        step: Step::Unknown(what),
        message: format!("no {name} {id:?} in this pod"),
    }
}

impl Monitor {
    #[inline(never)]
    fn serve(&mut self, listener: &UnixListener, sigfd: &SignalFd) {
        // Children may have died during setup, before the loop.
        self.reap();
        while !self.shutting_down {
            let mut slots = vec![Slot::Signals, Slot::Listener];
            slots.extend(self.conns.iter().map(|c| Slot::Conn(c.id)));
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                self.conns
                    .iter()
                    .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
            );
            // Output waits while the log writer is behind but moving.
            let reading = self.logs.accepting();
            for (id, c) in &self.containers {
                for (s, fd) in c.outputs().filter(|_| reading) {
                    slots.push(Slot::Output(id.clone(), s));
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
                for a in &c.attached {
                    // No events asked: a pipe's write end reports POLLERR
                    // once its reader is gone.
                    slots.push(Slot::Detach(id.clone(), a.id));
                    fds.push(PollFd::new(a.end_fd(), PollFlags::empty()));
                    // Input waits while the container's buffer is full.
                    if let Some(input) = &a.input
                        && c.stdin.wants_input()
                    {
                        slots.push(Slot::Input(id.clone(), a.id));
                        fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
                    }
                }
                if let Some(fd) = c.stdin.pending() {
                    slots.push(Slot::Stdin(id.clone()));
                    fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                }
            }
            for (key, p) in &self.setups.pending {
                slots.push(Slot::Setup(*key));
                fds.push(PollFd::new(p.sync.fd(), PollFlags::POLLIN));
            }
            for (id, s) in &self.setups.starts {
                slots.push(Slot::Start(id.clone()));
                fds.push(PollFd::new(s.sync.fd(), PollFlags::POLLIN));
            }
            if let Some(fd) = self.logs.fd() {
                slots.push(Slot::Logs);
                let out = match self.logs.pending() {
                    true => PollFlags::POLLOUT,
                    false => PollFlags::empty(),
                };
                fds.push(PollFd::new(fd, PollFlags::POLLIN | out));
            }
            // Woken for the next bound of a setup or an exit, else only by
            // events.
            let next = [
                self.setups.next_deadline(),
                self.logs_deadline(),
                self.endings.next_deadline(),
                self.release_at,
            ];
            let timeout = match next.into_iter().flatten().min() {
                Some(at) => {
                    let left = at.saturating_duration_since(std::time::Instant::now());
                    let ms = left.as_millis().saturating_add(1).min(60_000) as u16;
                    PollTimeout::from(ms)
                }
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    eprintln!("poll: {e}");
                    continue;
                }
            }
            let ready: Vec<Slot> = fds
                .iter()
                .zip(slots)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, s)| s)
                .collect();
            drop(fds);
            if !ready.is_empty() {
                self.release_at = Some(Instant::now() + IDLE_RELEASE);
            } else if self.release_at.is_some_and(|at| at <= Instant::now()) {
                self.release_idle();
            }
            // Output first, so a container's last words precede its exit.
            for slot in &ready {
                if let Slot::Output(id, stream) = slot
                    && let Some(c) = self.containers.get_mut(id)
                {
                    c.copy(*stream, &mut self.logs, &mut self.read_buf);
                }
            }
            for slot in &ready {
                match slot {
                    Slot::Input(id, a) => {
                        if let Some(c) = self.containers.get_mut(id) {
                            c.read_input(*a);
                        }
                    }
                    Slot::Stdin(id) => {
                        if let Some(c) = self.containers.get_mut(id) {
                            c.stdin.flush();
                        }
                    }
                    Slot::Detach(id, a) => {
                        if let Some(c) = self.containers.get_mut(id) {
                            c.detach(*a);
                        }
                    }
                    _ => {}
                }
            }
            // Setups before reaping: a pid a setup tells is registered
            // before its exit is collected.
            for slot in &ready {
                match slot {
                    Slot::Setup(key) => self.advance_setup(*key),
                    Slot::Start(id) => self.advance_start(id),
                    _ => {}
                }
            }
            // Reaping next: an exit file is written before anything else.
            if ready.iter().any(|s| matches!(s, Slot::Signals)) {
                while sigfd.read_signal().ok().flatten().is_some() {}
                self.reap();
            }
            self.expire();
            self.setups.tidy();
            // The writer last: the markers of the exits just reaped.
            self.log_events();
            self.expire_exits();
            for slot in &ready {
                if let Slot::Conn(id) = slot
                    && let Some(i) = self.conns.iter().position(|c| c.id == *id)
                    && !self.read_conn(i)
                {
                    self.drop_conn(i);
                }
            }
            // Kills answered once reaped (a shutdown's ends the loop).
            self.settle_kills();
            self.flush_outbox();
            if ready.iter().any(|s| matches!(s, Slot::Listener)) {
                self.accept(listener);
            }
        }
    }

    /// Quiet since [`IDLE_RELEASE`]: hands back what the work since the
    /// last release left resident and nothing uses now: the connections'
    /// spare buffer space, the stack below the loop (deep frames of
    /// requests, setups, forks), the program's code and read-only data
    /// pages (mapped again as they run; `sys::idle`), then malloc's free
    /// pages. Called from the loop's own frame, never inlined (the stack
    /// release keeps everything above its caller).
    #[inline(never)]
    fn release_idle(&mut self) {
        self.release_at = None;
        for c in &mut self.conns {
            c.buf.shrink_to_fit();
        }
        crate::sys::idle::release_stack_below_here();
        crate::sys::idle::release_image_pages();
        crate::sys::malloc::trim();
    }

    /// Sends the deferred replies whose connection is still there; a
    /// connection that waited for one reads its next requests.
    fn flush_outbox(&mut self) {
        while !self.outbox.is_empty() {
            for (id, reply, fds) in std::mem::take(&mut self.outbox) {
                let Some(i) = self.conns.iter().position(|c| c.id == id) else {
                    continue;
                };
                self.fds_out = fds;
                if !self.send(i, &reply) {
                    self.drop_conn(i);
                    continue;
                }
                self.conns[i].busy = false;
                if !self.answer_lines(i) {
                    self.drop_conn(i);
                }
            }
        }
    }

    /// Forgets connection `i`; setups it asked for are cancelled.
    fn drop_conn(&mut self, i: usize) {
        let id = self.conns.swap_remove(i).id;
        self.conn_closed(id);
    }

    /// Writes one reply line (with `fds_out` attached); `false` when the
    /// client does not take it.
    fn send(&mut self, i: usize, reply: &Reply) -> bool {
        let mut out = serde_json::to_vec(reply).expect("serializable");
        out.push(b'\n');
        // Replies are small; a client that does not read them is dropped.
        let stream = &self.conns[i].stream;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
        let fds = std::mem::take(&mut self.fds_out);
        let sent = if fds.is_empty() {
            (&self.conns[i].stream).write_all(&out).is_ok()
        } else {
            use std::os::fd::AsRawFd;
            let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match crate::sys::fds::send_with_fds(stream.as_fd(), &out, &raw) {
                Ok(n) => (&self.conns[i].stream).write_all(&out[n..]).is_ok(),
                Err(_) => false,
            }
        };
        drop(fds);
        let _ = self.conns[i].stream.set_nonblocking(true);
        sent
    }

    fn accept(&mut self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            if !peer_is_trusted(&stream) {
                continue;
            }
            if stream.set_nonblocking(true).is_ok() {
                self.next_conn += 1;
                self.conns.push(Conn {
                    id: self.next_conn,
                    stream,
                    buf: Vec::new(),
                    greeted: false,
                    busy: false,
                });
            }
        }
    }

    /// Reads what connection `i` sent and answers complete lines; `false`
    /// when it is closed or misbehaved. Not inlined: its read buffer is on
    /// the stack only while it runs, not in the loop's frame.
    #[inline(never)]
    fn read_conn(&mut self, i: usize) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.conns[i].stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.conns[i].buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if self.conns[i].buf.len() > proto::MAX_REQUEST {
                return false;
            }
        }
        self.answer_lines(i)
    }

    /// Answers the complete lines connection `i` sent, until one needs a
    /// reply that comes later from a setup; `false` when it is closed.
    fn answer_lines(&mut self, i: usize) -> bool {
        while !self.conns[i].busy
            && let Some(end) = self.conns[i].buf.iter().position(|&b| b == b'\n')
        {
            let line: Vec<u8> = self.conns[i].buf.drain(..=end).collect();
            let reply = match serde_json::from_slice::<Request<'static>>(&line) {
                Ok(req) => self.handle(i, req),
                Err(e) => Some(Reply::Error {
                    message: format!("unsupported request: {e}"),
                }),
            };
            // None: answered later (a wait).
            if let Some(reply) = reply
                && !self.send(i, &reply)
            {
                return false;
            }
        }
        true
    }

    fn handle(&mut self, i: usize, req: Request<'static>) -> Option<Reply> {
        let greeted = self.conns[i].greeted;
        let conn = self.conns[i].id;
        Some(match req {
            Request::Hello { version } => {
                if version < proto::MIN_VERSION {
                    return Some(Reply::Error {
                        message: format!(
                            "protocol version {version} is too old (monitor speaks {})",
                            proto::VERSION
                        ),
                    });
                }
                self.conns[i].greeted = true;
                Reply::Hello {
                    version: proto::VERSION,
                    monitor: self.me,
                }
            }
            _ if !greeted => Reply::Error {
                message: "hello first".into(),
            },
            Request::Status => Reply::Status {
                init: self.init,
                init_exit: self.init_exit,
            },
            // Answered once every child is reaped (or at the bound).
            Request::Shutdown => return self.shutdown(i),
            Request::CreateContainer { .. } | Request::Exec { .. }
                if self.endings.shutting_down() =>
            {
                Reply::Failed {
                    step: Step::Create,
                    message: "the pod is shutting down".into(),
                }
            }
            Request::CreateContainer { launch } => {
                if self.containers.contains_key(&launch.id) || self.setups.creating(&launch.id) {
                    return Some(Reply::Failed {
                        step: Step::AlreadyExists,
                        message: format!("container {:?} exists in this pod", launch.id),
                    });
                }
                // Replied to when the init reports ready (or fails).
                match Container::fork(self.one, launch.into_owned()) {
                    Ok((creating, setup)) => {
                        self.follow(i, Work::Create(Box::new(creating)), setup, true);
                        return None;
                    }
                    Err(f) => failed(f),
                }
            }
            Request::StartContainer { id } => match self.containers.get_mut(&id) {
                // Replied to at the init's execve (or its failure).
                Some(c) => match c.release() {
                    Ok(sync) => {
                        self.follow_start(i, id, sync);
                        return None;
                    }
                    Err(f) => failed(f),
                },
                None => unknown(Subject::Container, &id),
            },
            Request::SignalContainer { id, signal } => match self.containers.get(&id) {
                Some(c) if !matches!(c.state, State::Exited(_)) => {
                    // Not reaped yet, so the pid cannot have been reused.
                    match Signal::try_from(signal) {
                        Ok(sig) => match nix::sys::signal::kill(Pid::from_raw(c.init.pid), sig) {
                            Ok(()) => Reply::Ok,
                            Err(e) => Reply::Failed {
                                step: Step::Signal,
                                message: format!("signal {sig} to pid {}: {e}", c.init.pid),
                            },
                        },
                        Err(_) => Reply::Failed {
                            step: Step::Signal,
                            message: format!("invalid signal {signal}"),
                        },
                    }
                }
                Some(_) => Reply::Failed {
                    step: Step::NotRunning,
                    message: format!("container {id:?} has exited"),
                },
                None => unknown(Subject::Container, &id),
            },
            Request::WaitContainer { id } => match self.containers.get_mut(&id) {
                Some(c) => match c.state {
                    State::Exited(exit) if c.unpublished.is_none() => Reply::Exited { exit },
                    _ => {
                        c.waiters.push(conn);
                        return None;
                    }
                },
                None => unknown(Subject::Container, &id),
            },
            Request::ReopenContainerLog { id } => match self.containers.get_mut(&id) {
                Some(c) => match c.reopen_log(&mut self.logs) {
                    Ok(()) => Reply::Ok,
                    Err(f) => failed(f),
                },
                None => unknown(Subject::Container, &id),
            },
            // A running one: answered once reaped (or at the bound).
            Request::RemoveContainer { id } => return self.remove_container(i, &id),
            Request::Exec { launch } => {
                if self.execs.contains_key(&launch.exec_id) || self.setups.execing(&launch.exec_id)
                {
                    return Some(Reply::Failed {
                        step: Step::AlreadyExists,
                        message: format!("exec {:?} exists in this pod", launch.exec_id),
                    });
                }
                let Some(c) = self.containers.get(&launch.container_id) else {
                    return Some(unknown(Subject::Container, &launch.container_id));
                };
                // Replied to when the process exec'ed (or failed).
                match c.fork_exec(self.one, &launch) {
                    Ok((execing, setup)) => {
                        let id = launch.exec_id.clone();
                        self.follow(i, Work::Exec { id, execing }, setup, false);
                        return None;
                    }
                    Err(f) => failed(f),
                }
            }
            Request::WaitExec { id } => match self.execs.get_mut(&id) {
                Some(e) => match e.exit {
                    Some(exit) => {
                        self.execs.remove(&id);
                        Reply::Exited { exit }
                    }
                    None => {
                        e.waiters.push(conn);
                        return None;
                    }
                },
                None => unknown(Subject::Exec, &id),
            },
            Request::AttachContainer { id, stdin } => match self.containers.get_mut(&id) {
                Some(c) => match c.attach(stdin) {
                    Ok(ends) => {
                        let stdin = ends.stdin.is_some();
                        let fds = ends.into_fds();
                        let n = fds.len();
                        self.fds_out = fds;
                        Reply::Attached {
                            fds: n,
                            stdin,
                            tty: c.launch.tty,
                        }
                    }
                    Err(f) => failed(f),
                },
                None => unknown(Subject::Container, &id),
            },
            Request::ResizeContainer { id, width, height } => match self.containers.get(&id) {
                Some(c) => match c.resize(width, height) {
                    Ok(()) => Reply::Ok,
                    Err(f) => failed(f),
                },
                None => unknown(Subject::Container, &id),
            },
            Request::SignalExec { id, signal } => match self.execs.get(&id) {
                Some(e) if e.exit.is_none() => match Signal::try_from(signal) {
                    // Its own process group (setsid): children go too.
                    Ok(sig) => match nix::sys::signal::killpg(Pid::from_raw(e.process.pid), sig) {
                        Ok(()) | Err(nix::Error::ESRCH) => Reply::Ok,
                        Err(err) => Reply::Failed {
                            step: Step::Signal,
                            message: format!("signal {sig} to group {}: {err}", e.process.pid),
                        },
                    },
                    Err(_) => Reply::Failed {
                        step: Step::Signal,
                        message: format!("invalid signal {signal}"),
                    },
                },
                Some(_) => Reply::Ok,
                None => unknown(Subject::Exec, &id),
            },
        })
    }

    /// Reaps every child that has ended (ours and adopted orphans).
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => self.record(status),
                Err(nix::Error::EINTR) => continue,
                Err(_) => break, // ECHILD: nothing left
            }
        }
    }

    /// Writes the exit file of a child we started.
    fn record(&mut self, status: WaitStatus) {
        let (pid, exit_code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, None),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
            _ => return,
        };
        let exit = Exit {
            pid: pid.as_raw(),
            exit_code,
            signal,
            finished_at: now_ns(),
        };
        // A log writer: one that ended idle was let go, one that died is
        // replaced when its socket's hangup is read.
        if self.logs.reaped(pid.as_raw()) {
            return;
        }
        let Some(child) = self.children.remove(&pid.as_raw()) else {
            // An adopted orphan, or a setup's stage 2 whose pid is not
            // known yet: kept while a setup may claim it.
            self.setups.unknown_exit(exit);
            return;
        };
        match child {
            Child::Setup(key) => self.setup_exited(key, exit),
            Child::Init => {
                let path = self.pod.exit_file(INIT);
                let json = serde_json::to_vec(&exit).expect("serializable");
                if let Err(e) = write_atomic(&path, &json) {
                    eprintln!("write exit file {}: {e}", path.display());
                }
                self.init = None;
                self.init_exit = Some(exit);
            }
            Child::Container(id) => {
                let Some(c) = self.containers.get_mut(&id) else {
                    return;
                };
                // Its last output first, so a waiter sees complete logs;
                // attached clients get it too, then their end. The exit
                // file and waiters follow once the writer has written it.
                c.drain(&mut self.logs, &mut self.read_buf);
                c.end_attachments(AttachEnd::Exited);
                c.stdin.close();
                self.exit_container(&id, exit);
            }
            Child::Exec(id) => {
                let Some(e) = self.execs.get_mut(&id) else {
                    return;
                };
                e.exit = Some(exit);
                if !e.waiters.is_empty() {
                    for w in e.waiters.drain(..) {
                        self.outbox.push((w, Reply::Exited { exit }, Vec::new()));
                    }
                    self.execs.remove(&id);
                }
            }
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes `data` to a temporary file next to `path` and renames it over
/// `path`: a reader never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// A peer may drive the monitor only as root or as the monitor's own user
/// (SO_PEERCRED): the socket's mode is the first fence, this the second.
fn peer_is_trusted(stream: &std::os::unix::net::UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}
