//! Clients attached to a container's own stdio (CRI Attach), as the
//! monitor serves them: the monitor is the only reader of the container's
//! output and the only writer of its stdin, so attaching never competes
//! with the CRI log.
//!
//! Each attachment is a set of pipes whose other ends went to the daemon:
//! output (stdout, and stderr unless the container has a tty) is copied
//! to them as the monitor reads it for the log; a write that the pipe
//! cannot take whole at once means the reader fell behind by a full pipe
//! ([`PIPE_SIZE`]) and it is dropped, so a slow reader never stalls the
//! log or the monitor. The client's stdin arrives on a pipe of its own
//! and goes to the container through a bounded buffer ([`STDIN_BUF`]):
//! while it is full the monitor stops reading the clients' stdin. The
//! `end` pipe tells the daemon why the attachment ended (one byte, then
//! EOF), and its write end reports the daemon's detach (POLLERR once the
//! daemon closed its end).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;

use crate::monitor::process::log::Stream;
pub use crate::monitor::protocol::AttachEnd as Ended;

/// The pipe size asked for each attached output: how far a reader may
/// fall behind before it is dropped.
pub const PIPE_SIZE: i32 = 1 << 20;
/// Bytes of stdin held for a container that does not read it yet.
pub const STDIN_BUF: usize = 64 << 10;
/// Attachments one container serves at once.
pub const MAX_ATTACHED: usize = 32;

pub struct Attachment {
    pub id: u64,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// The client's stdin (read end), while it is open.
    pub input: Option<OwnedFd>,
    end: OwnedFd,
}

/// The daemon's ends of a new attachment, in the order they are sent.
pub struct DaemonEnds {
    pub end: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
}

impl DaemonEnds {
    pub fn into_fds(self) -> Vec<OwnedFd> {
        let mut v = vec![self.end, self.stdout];
        v.extend(self.stderr);
        v.extend(self.stdin);
        v
    }
}

/// Why an attachment could not be made.
#[derive(Debug, thiserror::Error)]
#[error("make a pipe for an attached client")]
pub struct Error(#[source] nix::Error);

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error)
}

fn nonblocking(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
}

/// An output pipe: (monitor's write end, non-blocking and enlarged; the
/// daemon's read end).
fn output() -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) = pipe()?;
    // Best effort: the default (64 KiB) still works, it only drops sooner.
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    nonblocking(&w);
    Ok((w, r))
}

impl Attachment {
    /// New pipes for a client: stderr unless `tty`, stdin if `stdin`.
    pub fn new(id: u64, tty: bool, stdin: bool) -> Result<(Attachment, DaemonEnds), Error> {
        let (end_r, end_w) = pipe()?;
        nonblocking(&end_w);
        let (out_w, out_r) = output()?;
        let (err_w, err_r) = if tty {
            (None, None)
        } else {
            let (w, r) = output()?;
            (Some(w), Some(r))
        };
        let (in_r, in_w) = if stdin {
            let (r, w) = pipe()?;
            nonblocking(&r);
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        Ok((
            Attachment {
                id,
                out: Some(out_w),
                err: err_w,
                input: in_r,
                end: end_w,
            },
            DaemonEnds {
                end: end_r,
                stdout: out_r,
                stderr: err_r,
                stdin: in_w,
            },
        ))
    }

    /// Hands `data` to the client's stream; `false` when the client cannot
    /// take it all now (too slow) or has gone: then it must be dropped.
    pub fn offer(&mut self, which: Stream, data: &[u8]) -> bool {
        let fd = match which {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        let Some(fd) = fd else { return true };
        let mut rest = data;
        while !rest.is_empty() {
            match nix::unistd::write(fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// The `end` pipe, polled for the daemon's detach (POLLERR).
    pub fn end_fd(&self) -> BorrowedFd<'_> {
        self.end.as_fd()
    }

    /// Tells the daemon why, then closes every pipe.
    pub fn finish(self, why: Ended) {
        let _ = nix::unistd::write(&self.end, &[why as u8]);
    }
}

/// The container's stdin as the monitor writes it: a pipe's write end, or
/// the terminal's master.
pub struct Stdin {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    /// Close once `buf` is written (stdin_once, or every client left).
    closing: bool,
}

impl Stdin {
    pub fn new(fd: Option<OwnedFd>) -> Stdin {
        if let Some(fd) = &fd {
            nonblocking(fd);
        }
        Stdin {
            fd,
            buf: Vec::new(),
            closing: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Room for more input from the clients.
    pub fn wants_input(&self) -> bool {
        self.fd.is_some() && !self.closing && self.buf.len() < STDIN_BUF
    }

    /// The fd to poll for POLLOUT while input waits.
    pub fn pending(&self) -> Option<BorrowedFd<'_>> {
        match &self.fd {
            Some(fd) if !self.buf.is_empty() => Some(fd.as_fd()),
            _ => None,
        }
    }

    /// Reads what the client sent on `input` (at most the free room);
    /// `false` at its EOF.
    pub fn take_from(&mut self, input: &OwnedFd) -> bool {
        let room = STDIN_BUF.saturating_sub(self.buf.len());
        if room == 0 {
            return true;
        }
        let mut chunk = vec![0u8; room.min(32 << 10)];
        let open = loop {
            match nix::unistd::read(input, &mut chunk) {
                Ok(0) => break false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    break true;
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break true,
                Err(_) => break false,
            }
        };
        self.flush();
        open
    }

    /// Writes what the container takes now; closes stdin when asked and
    /// everything is written, or when the container closed its end.
    pub fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.buf.clear();
            return;
        };
        while !self.buf.is_empty() {
            match nix::unistd::write(fd, &self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return,
                Err(_) => {
                    // EPIPE: nobody reads the container's stdin any more.
                    self.buf.clear();
                    self.fd = None;
                    return;
                }
            }
        }
        if self.closing {
            self.fd = None;
        }
    }

    /// stdin_once's end of input, once what is buffered is written. A pipe
    /// is closed. A terminal cannot be (its master is the output too), so
    /// its EOF character (VEOF as the program's termios has it, ^D by
    /// default) is written last, as a user typing ^D: in canonical mode the
    /// program's next read at a line's start returns 0; in raw mode (a line
    /// editor) it reads the character. Later clients get no stdin either way.
    /// containerd leaves a terminal's input open (it closes stdin on
    /// detach only without a tty) and conmon closes its own copy of the
    /// master, which the program never sees; crius follows the CRI's
    /// stdin_once ("close stdin after the first attach") for terminals too.
    pub fn end_input(&mut self) {
        if self.closing {
            return;
        }
        if let Some(fd) = &self.fd
            && let Ok(t) = rustix::termios::tcgetattr(fd)
        {
            let eof = t.special_codes[rustix::termios::SpecialCodeIndex::VEOF];
            // 0 is _POSIX_VDISABLE: the program turned the character off.
            if eof != 0 {
                self.buf.push(eof);
            }
        }
        self.close();
    }

    /// Closes the container's stdin once what is buffered is written.
    pub fn close(&mut self) {
        self.closing = true;
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_a_full_pipe_behind_is_dropped() {
        let (mut a, ends) = Attachment::new(1, false, false).unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut offered = 0;
        while a.offer(Stream::Stdout, &chunk) {
            offered += chunk.len();
            assert!(offered <= 16 << 20, "never dropped");
        }
        assert!(offered >= 64 << 10, "took at least one pipe's worth");
        a.finish(Ended::TooSlow);
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&ends.end, &mut b).unwrap(), 1);
        assert_eq!(Ended::from_byte(b[0]), Some(Ended::TooSlow));
        assert_eq!(nix::unistd::read(&ends.end, &mut b).unwrap(), 0, "then EOF");
    }

    #[test]
    fn stdin_is_buffered_bounded_and_closed_after_the_last_byte() {
        let (r, w) = pipe().unwrap();
        let mut stdin = Stdin::new(Some(w));
        let (mut a, ends) = Attachment::new(1, true, true).unwrap();
        assert!(ends.stderr.is_none());
        let input = a.input.take().unwrap();
        nix::unistd::write(ends.stdin.as_ref().unwrap(), b"hello").unwrap();
        assert!(stdin.take_from(&input));
        drop(ends.stdin);
        assert!(!stdin.take_from(&input), "EOF of the client's stdin");
        stdin.close();
        assert!(!stdin.is_open());
        let mut buf = [0u8; 16];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 0, "closed");
    }

    #[test]
    fn a_terminals_input_ends_with_its_eof_character() {
        // The host's devpts stands in for a container's.
        let Ok(pty) = crate::sys::pty::open(std::path::Path::new("/dev/pts/ptmx")) else {
            eprintln!("skipped: /dev/pts/ptmx cannot be opened here");
            return;
        };
        let mut stdin = Stdin::new(Some(pty.master.try_clone().unwrap()));
        let (mut a, ends) = Attachment::new(1, true, true).unwrap();
        let input = a.input.take().unwrap();
        nix::unistd::write(ends.stdin.as_ref().unwrap(), b"line\n").unwrap();
        assert!(stdin.take_from(&input));
        stdin.end_input();
        assert!(!stdin.is_open(), "no more input after stdin_once");
        // Canonical mode (a new terminal's): the line, then a read of 0.
        let mut buf = [0u8; 16];
        assert_eq!(nix::unistd::read(&pty.slave, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"line\n");
        assert_eq!(nix::unistd::read(&pty.slave, &mut buf).unwrap(), 0, "EOF");
        // The terminal itself stays open: the program can still write.
        assert_eq!(nix::unistd::write(&pty.slave, b"out").unwrap(), 3);
    }
}
