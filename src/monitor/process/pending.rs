//! Setups the monitor follows without waiting for them: a container's init
//! or an exec process being set up by its forked stages, and a created init
//! released to execve. Each reports over a sync socket of its own, which
//! the poll loop watches next to everything else; the reply to the daemon
//! goes out when the child reports ready or failed, or when its bound
//! expires, so one setup that hangs (a slow mount, a stuck filesystem)
//! never delays another container's logs, exits or execs.
//!
//! [`SyncReader`] is the monitor's end of a sync socket (non-blocking:
//! lines and the fds that ride with them); [`Follow`] the state machine of
//! one setup, pure (lines in, an outcome out) so it is tested without
//! processes; [`released`] what the answer to `start` means.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use std::time::Instant;

use super::workload::{Creating, Execing, Failure, failure};
use crate::monitor::protocol::Exit;
use crate::monitor::sync::{Message, Step};

/// Why a sync socket could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("read the sync socket")]
    Read(#[source] std::io::Error),
    #[error(
        "the setup sent {bytes} bytes without a newline or {fds} fds (at most {MAX_BUFFERED}, {MAX_FDS})"
    )]
    Oversized { bytes: usize, fds: usize },
    #[error("write start to the sync socket")]
    Start(#[source] std::io::Error),
}

/// Most bytes a setup may send without ending a line.
const MAX_BUFFERED: usize = 64 << 10;
/// Most fds a setup may send (it sends one: a terminal's master).
const MAX_FDS: usize = 4;

/// The monitor's end of a setup's sync socket: lines, and the fds that
/// ride with them (the terminal master after a `pty` line).
pub struct SyncReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    eof: bool,
}

impl SyncReader {
    /// Makes the socket non-blocking: it is only read when poll says so.
    pub fn new(sock: UnixStream) -> SyncReader {
        let _ = sock.set_nonblocking(true);
        SyncReader {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
            eof: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether the other end has closed (every stage exec'ed or ended).
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Reads everything the socket holds now, never waiting.
    pub fn fill(&mut self) -> Result<(), SyncError> {
        while !self.eof {
            match crate::sys::fds::recv_with_fds(&self.sock, &mut self.buf, &mut self.fds) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(SyncError::Read(e)),
            }
            if self.buf.len() > MAX_BUFFERED || self.fds.len() > MAX_FDS {
                return Err(SyncError::Oversized {
                    bytes: self.buf.len(),
                    fds: self.fds.len(),
                });
            }
        }
        Ok(())
    }

    /// The next complete line, without its newline.
    fn line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line[..line.len() - 1]).into())
    }

    /// Writes `start` to a created init (a few bytes into an empty socket
    /// buffer: never waits).
    pub fn send_start(&self) -> Result<(), SyncError> {
        use std::io::Write;
        (&self.sock).write_all(b"start\n").map_err(SyncError::Start)
    }

    /// Drops fds that came with no line asking for them.
    fn forget_fds(&mut self) {
        self.fds.clear();
    }
}

/// What a pending setup makes once it is done.
pub enum Work {
    Create(Box<Creating>),
    Exec { id: String, execing: Execing },
}

/// A setup the poll loop follows; the reply goes to connection `conn`.
pub struct Pending {
    pub conn: u64,
    pub work: Work,
    pub sync: SyncReader,
    pub follow: Follow,
    pub deadline: Instant,
    /// Whether stage 2's pid has been registered as a child (or found
    /// already reaped).
    pub stage2_known: bool,
    /// Stage 2's exit, when it was reaped during the setup.
    pub exit: Option<Exit>,
}

/// A failed setup whose processes were killed: the reply waits until
/// they are reaped (so the daemon's cleanup finds no process in the
/// container's cgroup) or `deadline`. `conn` is `None` once the
/// requester has gone.
pub struct Failing {
    pub conn: Option<u64>,
    pub failure: Failure,
    pub deadline: Instant,
}

/// A created init released to execve; `ok` or its failure goes to `conn`.
pub struct Starting {
    pub conn: u64,
    pub sync: SyncReader,
    pub deadline: Instant,
}

/// What a finished setup reported: the final process and, with a tty, the
/// terminal's master.
#[derive(Debug)]
pub struct Followed {
    pub pid: i32,
    pub pty: Option<OwnedFd>,
}

/// Where a setup stands after what it said so far.
#[derive(Debug)]
pub enum Progress {
    /// Nothing decided yet: wait for more.
    Waiting,
    Done(Followed),
    Failed(Failure),
}

/// One setup: `pid N` from stage 1, `pty` with the terminal's master (tty
/// only), then `ready` (a container's init, blocked before execve) or EOF
/// (an exec process that exec'ed). Stage 2 runs while stage 1 is still
/// writing its pid: its `ready` may come first.
#[derive(Debug)]
pub struct Follow {
    expect_ready: bool,
    stage2: Option<i32>,
    ready: bool,
    pty: Option<OwnedFd>,
}

impl Follow {
    /// `expect_ready`: a container's init (which blocks after `ready`);
    /// else an exec process, done at EOF.
    pub fn new(expect_ready: bool) -> Follow {
        Follow {
            expect_ready,
            stage2: None,
            ready: false,
            pty: None,
        }
    }

    /// Stage 2's pid, once stage 1 told it.
    pub fn stage2(&self) -> Option<i32> {
        self.stage2
    }

    /// Consumes what `sync` holds (after [`SyncReader::fill`]).
    pub fn advance(&mut self, sync: &mut SyncReader) -> Progress {
        while let Some(line) = sync.line() {
            match Message::decode(&line) {
                Some(Message::Pid(pid)) if self.stage2.is_none() && pid > 0 => {
                    self.stage2 = Some(pid);
                    if self.ready {
                        return self.done(sync, pid);
                    }
                }
                Some(Message::Pty) if self.pty.is_none() => match sync.fds.pop() {
                    Some(fd) => self.pty = Some(fd),
                    None => {
                        return Progress::Failed(failure(
                            Step::Terminal,
                            "no terminal came with `pty`",
                        ));
                    }
                },
                Some(Message::Failed { step, message }) => {
                    return Progress::Failed(Failure { step, message });
                }
                Some(Message::Ready) if self.expect_ready && !self.ready => match self.stage2 {
                    Some(pid) => return self.done(sync, pid),
                    None => self.ready = true,
                },
                _ => {
                    return Progress::Failed(failure(
                        Step::Create,
                        format!("unexpected message {line:?}"),
                    ));
                }
            }
        }
        if !sync.at_eof() {
            return Progress::Waiting;
        }
        if !sync.buf.is_empty() {
            return Progress::Failed(failure(Step::Create, "truncated message"));
        }
        match self.stage2 {
            // EOF: stage 2 exec'ed (exec processes).
            Some(pid) if !self.expect_ready => self.done(sync, pid),
            _ => Progress::Failed(failure(Step::Create, "the process ended during setup")),
        }
    }

    fn done(&mut self, sync: &mut SyncReader, pid: i32) -> Progress {
        sync.forget_fds();
        Progress::Done(Followed {
            pid,
            pty: self.pty.take(),
        })
    }
}

/// What a released init said after `start`: `None` while undecided, `Ok`
/// at EOF (execve succeeded: the socket is close-on-exec), the failure it
/// reported otherwise.
pub fn released(sync: &mut SyncReader) -> Option<Result<(), Failure>> {
    if let Some(line) = sync.line() {
        return Some(Err(match Message::decode(&line) {
            Some(Message::Failed { step, message }) => Failure { step, message },
            _ => failure(Step::Exec, line),
        }));
    }
    if !sync.at_eof() {
        return None;
    }
    if sync.buf.is_empty() {
        Some(Ok(()))
    } else {
        Some(Err(failure(Step::Exec, "truncated message")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn pair() -> (SyncReader, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (SyncReader::new(a), b)
    }

    fn say(w: &mut UnixStream, m: &Message) {
        w.write_all(m.encode().as_bytes()).unwrap();
    }

    fn step(f: &mut Follow, r: &mut SyncReader) -> Progress {
        r.fill().unwrap();
        f.advance(r)
    }

    #[test]
    fn an_init_is_done_at_ready_and_pid_in_either_order() {
        for pid_first in [true, false] {
            let (mut r, mut w) = pair();
            let mut f = Follow::new(true);
            assert!(matches!(step(&mut f, &mut r), Progress::Waiting));
            let (first, second) = if pid_first {
                (Message::Pid(42), Message::Ready)
            } else {
                (Message::Ready, Message::Pid(42))
            };
            say(&mut w, &first);
            assert!(matches!(step(&mut f, &mut r), Progress::Waiting));
            say(&mut w, &second);
            match step(&mut f, &mut r) {
                Progress::Done(d) => {
                    assert_eq!(d.pid, 42);
                    assert!(d.pty.is_none());
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(f.stage2(), Some(42));
        }
    }

    #[test]
    fn an_exec_is_done_at_eof_after_its_pid_and_brings_its_terminal() {
        let (mut r, mut w) = pair();
        let mut f = Follow::new(false);
        say(&mut w, &Message::Pid(7));
        let (pty, _keep) = std::io::pipe().unwrap();
        crate::sys::fds::send_with_fds(w.as_fd(), b"pty\n", &[pty.as_raw_fd()]).unwrap();
        assert!(matches!(step(&mut f, &mut r), Progress::Waiting));
        drop(w);
        match step(&mut f, &mut r) {
            Progress::Done(d) => {
                assert_eq!(d.pid, 7);
                assert!(d.pty.is_some(), "the terminal came along");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_end_the_setup_with_their_step() {
        // A failed step, as the init reports it.
        let (mut r, mut w) = pair();
        let mut f = Follow::new(true);
        say(&mut w, &Message::Pid(3));
        say(
            &mut w,
            &Message::Failed {
                step: Step::Mount("/data".into()),
                message: "no such file".into(),
            },
        );
        match step(&mut f, &mut r) {
            Progress::Failed(e) => assert_eq!(e.step, Step::Mount("/data".into())),
            other => panic!("{other:?}"),
        }
        // EOF before ready: the process ended.
        let (mut r, mut w) = pair();
        let mut f = Follow::new(true);
        say(&mut w, &Message::Pid(3));
        drop(w);
        match step(&mut f, &mut r) {
            Progress::Failed(e) => assert!(e.message.contains("ended during setup"), "{e:?}"),
            other => panic!("{other:?}"),
        }
        // EOF before stage 1 told the pid, for an exec.
        let (mut r, w) = pair();
        let mut f = Follow::new(false);
        drop(w);
        assert!(matches!(step(&mut f, &mut r), Progress::Failed(_)));
        // Garbage, a half line at EOF, `pty` without its fd.
        for bytes in [&b"hello\n"[..], b"pid 3\nrea", b"pty\n", b"pid 3\npid 4\n"] {
            let (mut r, mut w) = pair();
            let mut f = Follow::new(true);
            w.write_all(bytes).unwrap();
            drop(w);
            assert!(
                matches!(step(&mut f, &mut r), Progress::Failed(_)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn a_setup_that_says_too_much_is_refused() {
        let (mut r, mut w) = pair();
        let chunk = vec![b'x'; 16 << 10];
        w.set_nonblocking(true).unwrap();
        let mut sent = 0;
        while sent <= MAX_BUFFERED {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let mut failed = false;
        for _ in 0..64 {
            if r.fill().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "{sent} bytes without a newline were taken");
    }

    #[test]
    fn a_release_is_ok_at_eof_and_fails_with_what_the_init_said() {
        let (mut r, w) = pair();
        r.fill().unwrap();
        assert!(released(&mut r).is_none(), "undecided while open");
        drop(w);
        r.fill().unwrap();
        assert!(matches!(released(&mut r), Some(Ok(()))));

        let (mut r, mut w) = pair();
        say(
            &mut w,
            &Message::Failed {
                step: Step::Exec,
                message: "no such file".into(),
            },
        );
        r.fill().unwrap();
        match released(&mut r) {
            Some(Err(e)) => assert_eq!((e.step, e.message.as_str()), (Step::Exec, "no such file")),
            other => panic!("{other:?}"),
        }
    }
}
