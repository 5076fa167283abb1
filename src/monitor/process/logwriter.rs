//! The pod's log writer: a child of the monitor that does the writes to
//! the containers' CRI log files, so that a slow or stuck disk stalls it,
//! never the monitor's loop (a write to a regular file cannot be made
//! non-blocking, and the monitor has no threads).
//!
//! The monitor formats records ([`super::log::Formatter`]) and hands them
//! over a SOCK_SEQPACKET socket, one message per chunk of whole records,
//! through a bounded queue ([`LogWriter`]). While the writer keeps up the
//! queue stays short; when it falls [`HIGH_WATER`] bytes behind the monitor
//! stops reading the containers' output (their pipes fill and they wait, as
//! with a slow disk before) as long as the writer still makes progress.
//! Once the writer has taken nothing for [`STALL`] (a stuck disk) the
//! monitor reads again and drops what does not fit under [`HARD_LIMIT`],
//! counting the records; a write the writer sees fail (a full disk) drops
//! and counts its records too ([`Event::Dropped`]). A sync marker
//! ([`LogWriter::sync`]) comes back once everything before it is written:
//! the monitor publishes a container's exit after its last records.
//!
//! Messages, monitor to writer: `O slot` with the file's fd (SCM_RIGHTS),
//! `C slot`, `W slot records`, `S slot token`; writer to monitor:
//! `S slot token`, `D slot count`. Slots and numbers are u64, little-endian.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use crate::sys::process::{Forked, SingleThreaded, exit_immediately, fork_into};

/// Bytes queued for the writer above which the monitor stops reading the
/// containers' output (while the writer makes progress).
pub const HIGH_WATER: usize = 1 << 20;
/// Bytes queued above which records are dropped.
pub const HARD_LIMIT: usize = 2 * HIGH_WATER;
/// How long the writer may take nothing before it counts as stuck.
pub const STALL: Duration = Duration::from_secs(2);
/// Largest message: whole records up to this size (a record is at most
/// 16 KiB plus its header, [`super::log::MAX_LINE`]).
const CHUNK: usize = 64 << 10;
/// Largest message the writer reads.
const MAX_MESSAGE: usize = CHUNK + (32 << 10);

/// What the writer reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Everything queued for `slot` before marker `token` is written.
    Synced { slot: u64, token: u64 },
    /// `count` records of `slot` could not be written.
    Dropped { slot: u64, count: u64 },
}

fn header(kind: u8, slot: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(17);
    m.push(kind);
    m.extend_from_slice(&slot.to_le_bytes());
    m
}

fn number(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn records(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

struct Message {
    data: Vec<u8>,
    fd: Option<OwnedFd>,
    /// Counts against the queue's bound (records; not control messages).
    bulk: bool,
}

/// How many writers one monitor starts over its life (a writer that keeps
/// dying is not restarted for ever).
const MAX_SPAWNS: u32 = 10;

/// The monitor's side: the socket, the queue, the writer's pid. The writer
/// is forked when the first log file is handed over (by then the daemon
/// has put the monitor in its cgroup, which the writer shares).
pub struct LogWriter {
    /// `None` in unit tests, which never fork.
    one: Option<SingleThreaded>,
    sock: Option<OwnedFd>,
    pub pid: i32,
    spawns: u32,
    queue: VecDeque<Message>,
    queued: usize,
    /// When the writer last took a message (or the queue was empty).
    progress: Instant,
    next_token: u64,
    /// The writer's socket has closed (it died): nothing is queued any more.
    gone: bool,
}

impl LogWriter {
    /// No writer yet: [`LogWriter::open`] starts one.
    pub fn new(one: SingleThreaded) -> LogWriter {
        let mut w = LogWriter::idle();
        w.one = Some(one);
        w
    }

    fn idle() -> LogWriter {
        LogWriter {
            one: None,
            sock: None,
            pid: 0,
            spawns: 0,
            queue: VecDeque::new(),
            queued: 0,
            progress: Instant::now(),
            next_token: 0,
            gone: false,
        }
    }

    /// Starts a writer if none runs (and not too many did).
    fn ensure(&mut self) {
        if self.sock.is_some() || self.spawns >= MAX_SPAWNS {
            return;
        }
        let Some(one) = self.one else { return };
        self.spawns += 1;
        match spawn(one) {
            Ok((sock, pid)) => self.attach(sock, pid),
            Err(e) => eprintln!(
                "start the log writer: {}; log records are dropped",
                crate::error::chain(&e)
            ),
        }
    }

    fn attach(&mut self, sock: OwnedFd, pid: i32) {
        let flags = nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_SETFL(flags));
        self.sock = Some(sock);
        self.pid = pid;
        self.gone = false;
        self.progress = Instant::now();
    }

    /// Forgets a writer that has gone (after [`LogWriter::take_queued`]):
    /// the next [`LogWriter::open`] starts another.
    pub fn reset(&mut self) {
        self.sock = None;
        self.gone = false;
        self.queue.clear();
        self.queued = 0;
    }
}

/// Forks the writer. Its only fds: /dev/null on 0 and 1, the monitor's
/// stderr (monitor.log) on 2, its socket on 3.
fn spawn(one: SingleThreaded) -> crate::sys::Result<(OwnedFd, i32)> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(crate::sys::sys("log writer socketpair"))?;
    let null = File::open("/dev/null").map_err(crate::sys::io("open", "/dev/null"))?;
    let pid = match fork_into(one, nix::sched::CloneFlags::empty())? {
        Forked::Child => {
            drop(mine);
            let fds = (|| {
                let out = null.try_clone()?;
                let err = std::io::stderr().as_fd().try_clone_to_owned()?;
                Ok::<_, std::io::Error>(vec![OwnedFd::from(null), OwnedFd::from(out), err, theirs])
            })();
            let Ok(fds) = fds else { exit_immediately(1) };
            let Ok(mut fds) = crate::sys::process::install_fds(one, fds) else {
                exit_immediately(1)
            };
            let sock = fds.pop().unwrap_or_else(|| exit_immediately(1));
            crate::sys::process::set_name("crius-logwriter");
            serve(&sock);
            exit_immediately(0)
        }
        Forked::Parent(pid) => pid.as_raw(),
    };
    drop(theirs);
    Ok((mine, pid))
}

impl LogWriter {
    /// The writer's socket while one runs.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd())
    }

    /// Whether messages wait for room in the socket (poll POLLOUT).
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the monitor should read the containers' output now: the
    /// queue is short, or the writer is stuck (then records are dropped).
    pub fn accepting(&self) -> bool {
        self.queued < HIGH_WATER || self.stalled()
    }

    fn stalled(&self) -> bool {
        self.gone || (self.pending() && self.progress.elapsed() >= STALL)
    }

    /// When the loop must look again whether the writer is stuck.
    pub fn stall_deadline(&self) -> Option<Instant> {
        (self.queued >= HIGH_WATER && !self.stalled()).then(|| self.progress + STALL)
    }

    fn push(&mut self, m: Message) {
        if self.gone || self.sock.is_none() {
            return;
        }
        if m.bulk {
            self.queued += m.data.len();
        }
        if self.queue.is_empty() {
            self.progress = Instant::now();
        }
        self.queue.push_back(m);
        self.flush();
    }

    /// Hands `file` to the writer as `slot` (replacing what it had),
    /// starting the writer if none runs.
    pub fn open(&mut self, slot: u64, file: &File) {
        self.ensure();
        match file.as_fd().try_clone_to_owned() {
            Ok(fd) => self.push(Message {
                data: header(b'O', slot),
                fd: Some(fd),
                bulk: false,
            }),
            Err(e) => eprintln!("log writer: dup log fd: {e}"),
        }
    }

    /// The writer closes `slot`.
    pub fn close(&mut self, slot: u64) {
        self.push(Message {
            data: header(b'C', slot),
            fd: None,
            bulk: false,
        });
    }

    /// Queues `data` (whole records) for `slot`; returns how many records
    /// were dropped for want of room.
    pub fn write(&mut self, slot: u64, mut data: &[u8]) -> u64 {
        let mut dropped = 0;
        while !data.is_empty() {
            // Whole records up to CHUNK (a record is never longer).
            let cut = match data.len() <= CHUNK {
                true => data.len(),
                false => data[..CHUNK]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(CHUNK, |i| i + 1),
            };
            let (chunk, rest) = data.split_at(cut);
            data = rest;
            if self.gone || self.sock.is_none() || self.queued + chunk.len() > HARD_LIMIT {
                dropped += records(chunk);
                continue;
            }
            let mut m = header(b'W', slot);
            m.extend_from_slice(chunk);
            self.push(Message {
                data: m,
                fd: None,
                bulk: true,
            });
        }
        dropped
    }

    /// Queues a marker; [`Event::Synced`] with the returned token comes
    /// back once everything queued before it is written.
    pub fn sync(&mut self, slot: u64) -> u64 {
        self.next_token += 1;
        let mut m = header(b'S', slot);
        m.extend_from_slice(&self.next_token.to_le_bytes());
        self.push(Message {
            data: m,
            fd: None,
            bulk: false,
        });
        self.next_token
    }

    /// Sends what the socket takes now.
    pub fn flush(&mut self) {
        let Some(sock) = &self.sock else { return };
        while !self.gone
            && let Some(m) = self.queue.front()
        {
            let fds: Vec<i32> = m.fd.iter().map(|f| f.as_raw_fd()).collect();
            match crate::sys::fds::send_with_fds(sock.as_fd(), &m.data, &fds) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // The writer is gone: the queue waits for take_queued.
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
            if let Some(m) = self.queue.pop_front()
                && m.bulk
            {
                self.queued -= m.data.len();
            }
            self.progress = Instant::now();
        }
    }

    /// Records still queued per slot, dropped when the writer is replaced.
    pub fn take_queued(&mut self) -> Vec<(u64, u64)> {
        let mut lost: Vec<(u64, u64)> = Vec::new();
        for m in self.queue.drain(..) {
            if m.bulk
                && let Some(slot) = number(&m.data[1..])
            {
                lost.push((slot, records(&m.data[9..])));
            }
        }
        self.queued = 0;
        lost
    }

    /// What the writer reported since last asked; `gone` is set when the
    /// socket has closed (the writer died).
    pub fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut buf = [0u8; 64];
        let Some(sock) = &self.sock else {
            return events;
        };
        while !self.gone {
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.gone = true;
                    break;
                }
                Ok(n) => {
                    if let Some(e) = decode_event(&buf[..n]) {
                        events.push(e);
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                Err(_) => {
                    self.gone = true;
                    break;
                }
            }
        }
        events
    }

    /// Whether the writer's socket has closed.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// At the monitor's end: sends what is queued, waiting at most
    /// `limit` for room.
    pub fn finish(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.pending() && !self.gone && Instant::now() < until {
            self.flush();
            if self.pending()
                && let Some(sock) = &self.sock
            {
                let mut fds = [nix::poll::PollFd::new(
                    sock.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            }
        }
    }
}

fn decode_event(m: &[u8]) -> Option<Event> {
    let slot = number(m.get(1..)?)?;
    let n = number(m.get(9..)?)?;
    match m.first()? {
        b'S' => Some(Event::Synced { slot, token: n }),
        b'D' => Some(Event::Dropped { slot, count: n }),
        _ => None,
    }
}

/// The writer's loop, on its end of the socket (blocking): every message
/// in order; returns when the monitor has gone (EOF) and all is written.
pub fn serve(sock: &OwnedFd) {
    let mut files: Vec<(u64, File)> = Vec::new();
    // Drop counts not yet told (the monitor's socket was full).
    let mut untold: Vec<(u64, u64)> = Vec::new();
    // Mapped, not allocated: a page costs memory only once a message
    // reached it, so the writer keeps what its largest message needed, not
    // MAX_MESSAGE (a zeroed heap buffer made every writer hold 96 KiB).
    let Ok(mut buf) = crate::sys::pages::ZeroPages::new(MAX_MESSAGE) else {
        return;
    };
    let mut fds = Vec::new();
    loop {
        fds.clear();
        let data = match crate::sys::fds::recv_into(sock, &mut buf, &mut fds) {
            Ok(0) => return,
            Ok(n) => &buf[..n],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let (Some(&kind), Some(slot)) = (data.first(), number(data.get(1..).unwrap_or(&[]))) else {
            continue;
        };
        match kind {
            b'O' => {
                files.retain(|(s, _)| *s != slot);
                if let Some(fd) = fds.pop() {
                    files.push((slot, File::from(fd)));
                }
            }
            b'C' => files.retain(|(s, _)| *s != slot),
            b'W' => {
                let recs = &data[9..];
                let written = match files.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, f)) => f.write_all(recs).is_ok(),
                    None => false,
                };
                if !written {
                    match untold.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, n)) => *n += records(recs),
                        None => untold.push((slot, records(recs))),
                    }
                }
            }
            b'S' => {
                let Some(token) = number(data.get(9..).unwrap_or(&[])) else {
                    continue;
                };
                let mut m = header(b'S', slot);
                m.extend_from_slice(&token.to_le_bytes());
                // A lost marker only makes the monitor wait its bound.
                let _ = nix::sys::socket::send(sock.as_raw_fd(), &m, MsgFlags::MSG_DONTWAIT);
            }
            _ => {}
        }
        untold.retain(|&(slot, count)| {
            let mut m = header(b'D', slot);
            m.extend_from_slice(&count.to_le_bytes());
            nix::sys::socket::send(sock.as_raw_fd(), &m, MsgFlags::MSG_DONTWAIT).is_err()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer served on a thread of the test (the process's own fork is
    /// the monitor's business).
    fn writer() -> (LogWriter, std::thread::JoinHandle<()>) {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let t = std::thread::spawn(move || serve(&theirs));
        let mut w = LogWriter::idle();
        w.attach(mine, 0);
        (w, t)
    }

    fn wait_for(w: &mut LogWriter, want: Event) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            w.flush();
            if w.events().contains(&want) {
                return;
            }
            assert!(Instant::now() < until, "no {want:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn records_reach_their_files_in_order_and_a_marker_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = File::create(dir.path().join("a.log")).unwrap();
        let b = File::create(dir.path().join("b.log")).unwrap();
        let (mut w, t) = writer();
        w.open(1, &a);
        w.open(2, &b);
        let mut big = Vec::new();
        for i in 0..20_000 {
            big.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        assert_eq!(w.write(1, &big), 0);
        assert_eq!(w.write(2, b"b one\nb two\n"), 0);
        let token = w.sync(1);
        wait_for(&mut w, Event::Synced { slot: 1, token });
        assert_eq!(std::fs::read(dir.path().join("a.log")).unwrap(), big);
        assert_eq!(
            std::fs::read(dir.path().join("b.log")).unwrap(),
            b"b one\nb two\n"
        );
        // Records of a closed slot are counted, not written.
        w.close(2);
        w.write(2, b"late\n");
        wait_for(&mut w, Event::Dropped { slot: 2, count: 1 });
        drop(w);
        t.join().unwrap();
    }

    #[test]
    fn a_full_disk_drops_and_counts() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let (mut w, t) = writer();
        w.open(7, &full);
        w.write(7, b"a\nb\nc\n");
        wait_for(&mut w, Event::Dropped { slot: 7, count: 3 });
        drop(w);
        t.join().unwrap();
    }

    /// A writer stuck on its disk (here: a pipe nobody reads): the queue
    /// holds at most HARD_LIMIT, the monitor never waits, records beyond
    /// are dropped and counted, and output is read again after STALL.
    #[test]
    fn a_stuck_writer_never_blocks_the_monitor() {
        let (_reader, stuck) = std::io::pipe().unwrap();
        let (mut w, _t) = writer();
        w.open(1, &File::from(OwnedFd::from(stuck)));
        let chunk = vec![b'x'; 1000]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        let began = Instant::now();
        let mut dropped = 0;
        let mut sent = 0u64;
        while dropped == 0 {
            dropped += w.write(1, &chunk);
            sent += 1;
            assert!(sent < 100_000, "never dropped");
        }
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
        assert!(w.queued <= HARD_LIMIT);
        assert!(!w.accepting(), "the queue is over its high water");
        // The writer takes a little more until the pipe is full, then
        // nothing: STALL after that, output is read (and dropped) again.
        let until = Instant::now() + 4 * STALL;
        while !w.accepting() {
            assert!(Instant::now() < until, "still held back");
            std::thread::sleep(Duration::from_millis(100));
            w.flush();
        }
        assert!(w.stalled());
        // The thread stays blocked on the pipe; the test process ends it.
    }
}
