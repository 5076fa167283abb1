//! The monitor process: startup (session, signals, subreaper), the pod's
//! setup, then one poll(2) loop over the socket, its connections and a
//! signalfd for SIGCHLD. Single-threaded by design: no tokio, no threads.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::proto::{self, Exit, Reply, Request, SetupReply};
use super::{INIT, PodDir, Spec, sandbox};
use crate::linux::process::{self, ProcRef};

/// Longest request line a monitor accepts.
const MAX_LINE: usize = 64 << 10;

/// `crius monitor <pod dir>`: never returns while the pod lives.
pub fn main(dir: &Path) -> ExitCode {
    let Some(pod_id) = dir.file_name().and_then(|n| n.to_str()) else {
        eprintln!("crius monitor: bad pod directory {}", dir.display());
        return ExitCode::FAILURE;
    };
    let state = dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    let pod = PodDir::new(state, pod_id);
    match run(&pod) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("crius monitor {pod_id}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(pod: &PodDir) -> Result<(), String> {
    // 1. Detach from the daemon: own session, immune to the terminal's
    //    SIGINT/SIGHUP, the reaper of every orphan below us.
    let _ = nix::unistd::setsid();
    process::ignore_signals(&[Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE])
        .map_err(|e| e.to_string())?;
    process::set_child_subreaper().map_err(|e| e.to_string())?;
    process::set_name("crius-monitor");
    let me = ProcRef::current();
    write_atomic(
        &pod.pid_file(),
        &serde_json::to_vec(&me).expect("serializable"),
    )
    .map_err(|e| format!("write {}: {e}", pod.pid_file().display()))?;

    // 2. SIGCHLD through a signalfd, blocked before any child exists.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block()
        .map_err(|e| format!("block SIGCHLD: {e}"))?;
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    std::fs::create_dir_all(pod.exits()).map_err(|e| format!("create exits dir: {e}"))?;

    // 3. The pod.
    let text = std::fs::read(pod.spec()).map_err(|e| format!("read spec: {e}"))?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| format!("parse spec: {e}"))?;
    let socket = pod.socket();
    let _ = std::fs::remove_file(&socket);
    let bound = super::socket_path(pod).and_then(|(dir, short)| {
        let l = UnixListener::bind(&short);
        drop(dir);
        l
    });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            report(&SetupReply::Failed {
                step: "start pod monitor".into(),
                message: format!("listen on {}: {e}", socket.display()),
            });
            return Err(format!("listen on {}: {e}", socket.display()));
        }
    };
    let sandbox = match sandbox::setup(pod, &spec) {
        Ok(s) => s,
        Err(e) => {
            report(&SetupReply::Failed {
                step: e.step.to_string(),
                message: e.message.clone(),
            });
            let _ = std::fs::remove_file(&socket);
            return Err(format!("{}: {}", e.step, e.message));
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let mut m = Monitor {
        pod: pod.clone(),
        me,
        children: HashMap::new(),
        init: sandbox.init,
        init_exit: None,
        conns: Vec::new(),
        shutting_down: false,
    };
    if let Some(init) = sandbox.init {
        m.children.insert(init.pid, INIT.to_string());
    }
    report(&SetupReply::Ready {
        monitor: me,
        init: sandbox.init,
    });
    m.serve(&listener, &sigfd);
    let _ = std::fs::remove_file(&socket);
    Ok(())
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
    stream: UnixStream,
    buf: Vec<u8>,
    greeted: bool,
}

struct Monitor {
    pod: PodDir,
    me: ProcRef,
    /// Children we started, by pid: the name of their exit file.
    children: HashMap<i32, String>,
    init: Option<ProcRef>,
    init_exit: Option<Exit>,
    conns: Vec<Conn>,
    shutting_down: bool,
}

impl Monitor {
    fn serve(&mut self, listener: &UnixListener, sigfd: &SignalFd) {
        // Children may have died during setup, before the loop.
        self.reap();
        while !self.shutting_down {
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                self.conns
                    .iter()
                    .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    eprintln!("poll: {e}");
                    continue;
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            // Reaping first: an exit file is written before anything else.
            if ready[0] {
                while sigfd.read_signal().ok().flatten().is_some() {}
                self.reap();
            }
            // Connections polled this round, last first: swap_remove moves
            // an already handled one into the hole.
            for i in (0..ready.len() - 2).rev() {
                if ready[2 + i] && !self.read_conn(i) {
                    self.conns.swap_remove(i);
                }
            }
            if ready[1] {
                self.accept(listener);
            }
        }
    }

    fn accept(&mut self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.conns.push(Conn {
                    stream,
                    buf: Vec::new(),
                    greeted: false,
                });
            }
        }
    }

    /// Reads what connection `i` sent and answers complete lines; `false`
    /// when it is closed or misbehaved.
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
            if self.conns[i].buf.len() > MAX_LINE {
                return false;
            }
        }
        while let Some(end) = self.conns[i].buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.conns[i].buf.drain(..=end).collect();
            let reply = match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(i, req),
                Err(e) => Reply::Error {
                    message: format!("unsupported request: {e}"),
                },
            };
            let mut out = serde_json::to_vec(&reply).expect("serializable");
            out.push(b'\n');
            // Replies are small; a client that does not read them is dropped.
            let stream = &self.conns[i].stream;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
            let sent = (&self.conns[i].stream).write_all(&out).is_ok();
            let _ = self.conns[i].stream.set_nonblocking(true);
            if !sent {
                return false;
            }
        }
        true
    }

    fn handle(&mut self, i: usize, req: Request) -> Reply {
        let greeted = self.conns[i].greeted;
        match req {
            Request::Hello { version } => {
                if version < proto::MIN_VERSION {
                    return Reply::Error {
                        message: format!(
                            "protocol version {version} is too old (monitor speaks {})",
                            proto::VERSION
                        ),
                    };
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
            Request::Shutdown => {
                self.shutdown();
                Reply::Ok
            }
        }
    }

    /// Kills every child, reaps each (writing its exit file) and ends the loop.
    fn shutdown(&mut self) {
        let pids: Vec<i32> = self.children.keys().copied().collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in pids {
            if let Ok(status) = waitpid(Pid::from_raw(pid), None) {
                self.record(status);
            }
        }
        self.reap();
        self.shutting_down = true;
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
        let Some(name) = self.children.remove(&pid.as_raw()) else {
            return; // an adopted orphan: reaped, nothing to record
        };
        let exit = Exit {
            pid: pid.as_raw(),
            exit_code,
            signal,
            finished_at: now_ns(),
        };
        let path = self.pod.exit_file(&name);
        if let Err(e) = write_atomic(&path, &serde_json::to_vec(&exit).expect("serializable")) {
            eprintln!("write exit file {}: {e}", path.display());
        }
        if name == INIT {
            self.init = None;
            self.init_exit = Some(exit);
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
